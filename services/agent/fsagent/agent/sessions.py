"""Chat sessions, kept by the cache service so that neither the gateway nor the agent holds state.

A session stores the user's questions and the final answers (not the tool chatter), newest
`FSAGENT_SESSION_MAX_MESSAGES` kept, for `FSAGENT_SESSION_TTL`. The store is an optimisation for the
chat itself: when the cache is down the turn is answered without history and not saved (counted in
`fsagent_session_errors_total`); only the explicit session API reports the outage.
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


class SessionStore:
    def __init__(self, cache: cache_pb2_grpc.CacheStub, settings: Settings) -> None:
        self.cache = cache
        self.max_messages = settings.session_max_messages
        self.ttl = settings.session_ttl

    async def history(self, session_id: str) -> list[Message]:
        """The session's messages for the model; empty when new or when the store is down."""
        try:
            record = await self.cache.GetSession(
                cache_pb2.GetSessionRequest(session_id=session_id), timeout=SESSION_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            metrics.SESSION_ERRORS.labels("load").inc()
            log.warning("session history unavailable; answering without it", extra={"grpc_code": exc.code().name})
            return []
        return [m for m in (history_message(raw) for raw in record.messages_json) if m is not None]

    async def save_turn(self, session_id: str, question: str, answer: str, details: dict[str, Any]) -> None:
        """Append the question and the answer; `details` travel with the answer for clients."""
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
                timeout=SESSION_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            metrics.SESSION_ERRORS.labels("save").inc()
            log.warning("session not saved", extra={"grpc_code": exc.code().name})
            return
        metrics.SESSION_MESSAGES.observe(len(record.messages_json))

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
