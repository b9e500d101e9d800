"""Chat sessions, kept by the cache service so that neither the gateway nor the agent holds state.

A session stores the user's questions and the final answers (not the tool chatter), newest
`FSAGENT_SESSION_MAX_MESSAGES` kept, for `FSAGENT_SESSION_TTL`. When the cache cannot be reached
nothing is hidden: a turn that continues a session whose history cannot be read is refused
(`SessionStoreUnavailable`; answering without the context would be silently wrong), and a turn
whose answer cannot be saved says so (`save_turn` returns False, the reply carries a
`history_not_saved` warning). Both are counted in `fsagent_session_errors_total`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import grpc

from fsagent.agent import metrics
from fsagent.agent.llm.base import Message
from fsagent.common import propagation
from fsagent.common.settings import Settings
from fsagent.v1 import agent_pb2, cache_pb2, cache_pb2_grpc

log = logging.getLogger(__name__)

SESSION_TIMEOUT = 2.0  # seconds for one session call to the cache
HISTORY_ROLES = ("user", "assistant")


def new_session_id() -> str:
    return uuid.uuid4().hex


def history_message(raw: str) -> Message | None:
    """A stored session message as a clean chat message for the model (None if unusable)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("role") not in HISTORY_ROLES:
        return None
    content = data.get("content")
    if not isinstance(content, str):
        return None
    return {"role": data["role"], "content": content}


def session_message(raw: str) -> agent_pb2.SessionMessage:
    """A stored session message for the session API (role and content, plus the raw JSON)."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return agent_pb2.SessionMessage(json=raw)
    content = data.get("content")
    return agent_pb2.SessionMessage(
        role=str(data.get("role") or ""),
        content=content if isinstance(content, str) else "",
        json=raw,
    )


class SessionStoreUnavailable(Exception):
    """The cache did not answer a session call (down, hung, full, read-only)."""

    def __init__(self, grpc_code: str) -> None:
        super().__init__(f"the session store is unavailable ({grpc_code})")
        self.grpc_code = grpc_code


class SessionStore:
    def __init__(self, cache: cache_pb2_grpc.CacheStub, settings: Settings) -> None:
        self.cache = cache
        self.max_messages = settings.session_max_messages
        self.ttl = settings.session_ttl

    async def history(self, session_id: str, timeout: float = SESSION_TIMEOUT) -> list[Message]:
        """The session's messages for the model (empty for a session the store does not have);
        raises SessionStoreUnavailable when the store does not answer."""
        try:
            record = await self.cache.GetSession(
                cache_pb2.GetSessionRequest(session_id=session_id), timeout=min(timeout, SESSION_TIMEOUT)
            )
        except grpc.aio.AioRpcError as exc:
            metrics.SESSION_ERRORS.labels("load").inc()
            log.warning("session history unavailable", extra={"grpc_code": exc.code().name})
            raise SessionStoreUnavailable(exc.code().name) from None
        return [m for m in (history_message(raw) for raw in record.messages_json) if m is not None]

    async def save_turn(
        self, session_id: str, question: str, answer: str, details: dict[str, Any], timeout: float = SESSION_TIMEOUT
    ) -> bool:
        """Append the question and the answer; `details` travel with the answer for clients.
        False when the store did not take them."""
        user = {"role": "user", "content": question}
        assistant = {
            "role": "assistant",
            "content": answer,
            # Not part of the chat format (the model only ever sees role and content): for clients.
            "fsagent": {**details, "trace_id": propagation.current_trace_id() or "", "created": time.time()},
        }
        try:
            record = await self.cache.AppendSession(
                cache_pb2.AppendSessionRequest(
                    session_id=session_id,
                    messages_json=[json.dumps(user, ensure_ascii=False), json.dumps(assistant, ensure_ascii=False)],
                    max_messages=self.max_messages,
                    ttl_seconds=self.ttl,
                ),
                timeout=min(timeout, SESSION_TIMEOUT),
            )
        except grpc.aio.AioRpcError as exc:
            metrics.SESSION_ERRORS.labels("save").inc()
            log.warning("session not saved", extra={"grpc_code": exc.code().name})
            return False
        metrics.SESSION_MESSAGES.observe(len(record.messages_json))
        return True

    async def get(self, session_id: str) -> agent_pb2.AgentSession:
        """The whole session for the API; raises AioRpcError when the store is unreachable."""
        record = await self.cache.GetSession(cache_pb2.GetSessionRequest(session_id=session_id), timeout=SESSION_TIMEOUT)
        return agent_pb2.AgentSession(
            session_id=session_id,
            exists=record.exists,
            messages=[session_message(raw) for raw in record.messages_json],
            created=record.created,
            updated=record.updated,
        )

    async def delete(self, session_id: str) -> bool:
        reply = await self.cache.DeleteSession(
            cache_pb2.DeleteSessionRequest(session_id=session_id), timeout=SESSION_TIMEOUT
        )
        return reply.deleted
