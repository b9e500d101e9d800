"""The `fsagent.v1.Agent` gRPC service: Chat, ChatStream, GetSession, ClearSession, CheckDependencies.

Chat and ChatStream run the same loop (`Agent.run`) under one deadline: what is left of the
caller's gRPC deadline, at most FSAGENT_CHAT_TIMEOUT, less a margin (budget.py), so the agent's own
typed error reaches the gateway before the gateway's generic one. Chat returns the final response
or aborts with a status for the error (`status_for`) and the typed code in the trailing metadata
`fsagent-error-code` (a rate limit's wait in `fsagent-retry-after`); ChatStream sends the same as a
last `error` event instead. Every event carries the session id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import AsyncIterator, Mapping, NoReturn

import grpc

from fsagent.agent.budget import LLM, TOOLS, Budget
from fsagent.agent.loop import Agent
from fsagent.agent.sessions import new_session_id
from fsagent.common import grpcutil
from fsagent.common.errorcodes import ERROR_CODE_KEY, RETRY_AFTER_KEY
from fsagent.common.identifiers import is_session_id
from fsagent.common.settings import Settings
from fsagent.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)


_UNAVAILABLE = {
    "llm_connection", "llm_rate_limited", "llm_upstream", "sandbox_unavailable", "history_unavailable",
    "session_store_unavailable",
}
_PRECONDITION = {"llm_auth", "llm_bad_request"}
_DEADLINE = {"llm_timeout", "tool_timeout", "timeout"}
CHAT_TIMEOUT_CODE = "timeout"
DEPENDENCY_CHECK_TIMEOUT = 0.5  # seconds; the gateway's /ready waits 1 s for the whole answer


def status_for(error_code: str) -> grpc.StatusCode:
    """The gRPC status a Chat error event becomes."""
    if error_code in _UNAVAILABLE:
        return grpc.StatusCode.UNAVAILABLE
    if error_code in _PRECONDITION:
        return grpc.StatusCode.FAILED_PRECONDITION
    if error_code in _DEADLINE:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.INTERNAL


def error_metadata(code: str, retry_after: float = 0.0) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries a typed error code (and a wait, in whole seconds)."""
    metadata: tuple[tuple[str, str], ...] = ((ERROR_CODE_KEY, code),)
    if retry_after > 0:
        metadata += ((RETRY_AFTER_KEY, str(math.ceil(retry_after))),)
    return metadata


_DOING = {"history": "reading the session history", LLM: "waiting for the LLM", TOOLS: "running tools",
          "save": "saving the session"}


def _timeout_code(phase: str) -> str:
    return {LLM: "llm_timeout", TOOLS: "tool_timeout"}.get(phase, CHAT_TIMEOUT_CODE)


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(
        self, agent: Agent, settings: Settings, dependencies: Mapping[str, grpc.aio.Channel] | None = None
    ) -> None:
        self.agent = agent
        self.settings = settings
        # name -> channel whose grpc.health.v1 answer is that dependency's state (cache, sandbox)
        self.dependencies = dict(dependencies or {})

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

    async def _events(
        self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext, *, stream: bool
    ) -> AsyncIterator[agent_pb2.ChatEvent]:
        """The loop's events under the turn's deadline (running out becomes a last error event)."""
        session_id = request.session_id or new_session_id()
        remaining = context.time_remaining()
        budget = Budget.start(
            self.settings.chat_timeout, remaining if remaining is not None and math.isfinite(remaining) else None
        )
        events = self.agent.run(
            request.message, session_id, request.user_id, stream=stream, budget=budget,
            new_session=not request.session_id,
        )
        loop = asyncio.get_running_loop()
        hard_deadline = loop.time() + (budget.hard_deadline - time.monotonic())
        try:
            while True:
                try:
                    async with asyncio.timeout_at(hard_deadline):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    code = _timeout_code(budget.phase)
                    log.warning(
                        "chat turn timed out",
                        extra={"timeout_seconds": round(budget.total, 3), "phase": budget.phase, "code": code},
                    )
                    yield agent_pb2.ChatEvent(
                        session_id=session_id,
                        error=agent_pb2.ErrorEvent(
                            code=code,
                            message=f"the chat took longer than its time limit of {budget.total:.3g}s "
                                    f"(FSAGENT_CHAT_TIMEOUT) while {_DOING.get(budget.phase, 'working')}",
                        ),
                    )
                    return
                yield event
        finally:
            await events.aclose()

    async def Chat(self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext) -> agent_pb2.ChatResponse:
        await self._check_chat(request, context)
        last: agent_pb2.ChatEvent | None = None
        async for event in self._events(request, context, stream=False):
            last = event
        if last is not None and last.HasField("done"):
            return last.done
        error = last.error if last is not None else agent_pb2.ErrorEvent(code="internal", message="no answer")
        await context.abort(
            status_for(error.code), error.message, error_metadata(error.code, error.retry_after_seconds)
        )

    async def ChatStream(
        self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.ChatEvent]:
        await self._check_chat(request, context)
        async for event in self._events(request, context, stream=True):
            yield event

    # --- dependencies ------------------------------------------------------------------------

    async def CheckDependencies(
        self, request: agent_pb2.CheckDependenciesRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.CheckDependenciesResponse:
        names = list(self.dependencies)
        serving = await asyncio.gather(
            *(grpcutil.check_health(self.dependencies[name], DEPENDENCY_CHECK_TIMEOUT) for name in names)
        )
        return agent_pb2.CheckDependenciesResponse(dependencies=[
            agent_pb2.DependencyState(name=name, state="serving" if up else "unavailable")
            for name, up in zip(names, serving)
        ])

    # --- sessions ----------------------------------------------------------------------------

    @staticmethod
    async def _store_unavailable(context: grpc.aio.ServicerContext) -> NoReturn:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "the session store is unavailable",
            error_metadata("session_store_unavailable"),
        )

    async def GetSession(
        self, request: agent_pb2.AgentSessionRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentSession:
        await self._check_session_id(request.session_id, context, required=True)
        try:
            return await self.agent.sessions.get(request.session_id)
        except grpc.aio.AioRpcError:
            await self._store_unavailable(context)

    async def ClearSession(
        self, request: agent_pb2.AgentSessionRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ClearSessionResponse:
        await self._check_session_id(request.session_id, context, required=True)
        try:
            deleted = await self.agent.sessions.delete(request.session_id)
        except grpc.aio.AioRpcError:
            await self._store_unavailable(context)
        return agent_pb2.ClearSessionResponse(deleted=deleted)

