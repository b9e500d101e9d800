"""The `fsagent.v1.Agent` gRPC service: Chat, ChatStream, GetSession, ClearSession.

Chat and ChatStream run the same loop (`Agent.run`). Chat returns the final response, or aborts
with UNAVAILABLE (LLM endpoint down, timed out, rate limited), FAILED_PRECONDITION (credentials or
request rejected) or DEADLINE_EXCEEDED (FSAGENT_CHAT_TIMEOUT); ChatStream sends those as a last
`error` event instead. Every event carries the session id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, NoReturn

import grpc

from fsagent.agent.loop import Agent
from fsagent.agent.sessions import new_session_id
from fsagent.common.identifiers import is_session_id
from fsagent.common.settings import Settings
from fsagent.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)


_UNAVAILABLE = {"llm_connection", "llm_timeout", "llm_rate_limited", "llm_upstream"}
_PRECONDITION = {"llm_auth", "llm_bad_request"}
CHAT_TIMEOUT_CODE = "timeout"


def status_for(error_code: str) -> grpc.StatusCode:
    """The gRPC status a Chat error event becomes."""
    if error_code in _UNAVAILABLE:
        return grpc.StatusCode.UNAVAILABLE
    if error_code in _PRECONDITION:
        return grpc.StatusCode.FAILED_PRECONDITION
    if error_code == CHAT_TIMEOUT_CODE:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.INTERNAL


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, agent: Agent, settings: Settings) -> None:
        self.agent = agent
        self.settings = settings

    # --- input checks ------------------------------------------------------------------------

    @staticmethod
    async def _invalid(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

    async def _check_session_id(self, session_id: str, context: grpc.aio.ServicerContext, required: bool) -> None:
        if not session_id and not required:
            return
        if not is_session_id(session_id):
            await self._invalid(context, "session_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")

    async def _check_chat(self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext) -> None:
        if not request.message.strip():
            await self._invalid(context, "message must not be empty")
        if len(request.message) > self.settings.max_message_chars:
            await self._invalid(context, f"message is longer than {self.settings.max_message_chars} characters")
        await self._check_session_id(request.session_id, context, required=False)

    # --- chat --------------------------------------------------------------------------------

    async def _events(self, request: agent_pb2.ChatRequest, *, stream: bool) -> AsyncIterator[agent_pb2.ChatEvent]:
        """The loop's events under FSAGENT_CHAT_TIMEOUT (a timeout becomes a last error event)."""
        session_id = request.session_id or new_session_id()
        events = self.agent.run(request.message, session_id, request.user_id, stream=stream)
        deadline = asyncio.get_running_loop().time() + self.settings.chat_timeout
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    log.warning("chat turn timed out", extra={"timeout_seconds": self.settings.chat_timeout})
                    yield agent_pb2.ChatEvent(
                        session_id=session_id,
                        error=agent_pb2.ErrorEvent(
                            code=CHAT_TIMEOUT_CODE,
                            message=f"the chat took longer than {self.settings.chat_timeout:g}s",
                        ),
                    )
                    return
                yield event
        finally:
            await events.aclose()

    async def Chat(self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext) -> agent_pb2.ChatResponse:
        await self._check_chat(request, context)
        last: agent_pb2.ChatEvent | None = None
        async for event in self._events(request, stream=False):
            last = event
        if last is not None and last.HasField("done"):
            return last.done
        error = last.error if last is not None else agent_pb2.ErrorEvent(code="internal", message="no answer")
        await context.abort(status_for(error.code), error.message)

    async def ChatStream(
        self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.ChatEvent]:
        await self._check_chat(request, context)
        async for event in self._events(request, stream=True):
            yield event

    # --- sessions ----------------------------------------------------------------------------

    async def GetSession(
        self, request: agent_pb2.AgentSessionRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentSession:
        await self._check_session_id(request.session_id, context, required=True)
        try:
            return await self.agent.sessions.get(request.session_id)
        except grpc.aio.AioRpcError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the session store is unavailable")

    async def ClearSession(
        self, request: agent_pb2.AgentSessionRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ClearSessionResponse:
        await self._check_session_id(request.session_id, context, required=True)
        try:
            deleted = await self.agent.sessions.delete(request.session_id)
        except grpc.aio.AioRpcError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the session store is unavailable")
        return agent_pb2.ClearSessionResponse(deleted=deleted)

