"""Run the tool calls of one model turn through the sandbox.

Every tool is read-only, so the calls of a turn run concurrently (at most
`FSAGENT_MAX_CONCURRENT_TOOLS` at once) and come back in request order; a single call takes the
same path. A call that fails at the gRPC level becomes that call's error result, never an
exception: `sandbox_unavailable` (the sandbox down or not answering within its deadline) or
`tool_timeout` (the turn's deadline, which caps every call, ran out first). The loop decides what
such results mean for the turn.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import grpc

from fsagent.agent import metrics
from fsagent.agent.llm.base import TOOL_ERROR_PREFIX, ToolCallRequest
from fsagent.agent.tracing import AgentTracer
from fsagent.common.metrics import exemplar
from fsagent.common.settings import Settings
from fsagent.v1 import agent_pb2, sandbox_pb2, sandbox_pb2_grpc

# The sandbox enforces tool_timeout on the command itself; the margin covers the hop and the cache.
DEADLINE_MARGIN = 5.0
UNKNOWN_TOOL = "unknown"
# error_code of a call that never reached the sandbox, and of one the turn's deadline cut short.
SANDBOX_UNAVAILABLE = "sandbox_unavailable"
TOOL_TIMEOUT = "tool_timeout"
MIN_CALL_SECONDS = 0.05
# A call refused with UNAVAILABLE is tried once more, waiting this long for the channel to connect:
# a restarted sandbox is reached again within the channel's reconnect backoff (2 s at most,
# grpcutil.CHANNEL_OPTIONS). Every tool is read-only, so a second try is harmless.
RECONNECT_WAIT = 2.0


@dataclass(slots=True)
class ToolRun:
    """One executed call: the request, the outcome, and what the model is shown."""

    call: ToolCallRequest
    outcome: agent_pb2.ToolOutcome

    @property
    def content(self) -> str:
        return model_content(self.outcome)

    def to_result(self) -> agent_pb2.ToolResult:
        return agent_pb2.ToolResult(tool_call_id=self.call.id, tool_name=self.call.name, result=self.outcome)

    def to_message(self) -> dict[str, str]:
        return {"role": "tool", "tool_call_id": self.call.id, "content": self.content}


def model_content(outcome: agent_pb2.ToolOutcome) -> str:
    """The tool message for the model: stdout, a short error line on failure, stderr when present."""
    parts: list[str] = []
    if not outcome.success:
        code = f" [{outcome.error_code}]" if outcome.error_code else ""
        parts.append(f"{TOOL_ERROR_PREFIX}{code}: {outcome.error or 'the tool call failed'}")
    if outcome.stdout:
        parts.append(outcome.stdout)
    elif outcome.success:
        parts.append("(no output)" if outcome.return_code == 0 else f"(no output; exit code {outcome.return_code})")
    if outcome.stderr.strip():
        parts.append(f"[stderr]\n{outcome.stderr.strip()}")
    return "\n".join(parts)


class ToolOrchestrator:
    def __init__(
        self, stub: sandbox_pb2_grpc.SandboxStub, settings: Settings, tool_names: Iterable[str],
        tracer: AgentTracer | None = None,
    ) -> None:
        self.stub = stub
        self.tracer = tracer or AgentTracer(settings)
        self.deadline = settings.tool_timeout + DEADLINE_MARGIN
        self.semaphore = asyncio.Semaphore(settings.max_concurrent_tools)
        self.tool_names = frozenset(tool_names)

    def _label(self, name: str) -> str:
        # The model picks the name: only names from the schema become label values.
        return name if name in self.tool_names else UNKNOWN_TOOL

    async def run_batch(self, calls: Sequence[ToolCallRequest], deadline: float | None = None) -> list[ToolRun]:
        """Run one turn's calls concurrently; results in request order. No call runs past
        `deadline` (time.monotonic())."""
        if not calls:
            return []
        metrics.TOOL_BATCHES.labels("parallel" if len(calls) > 1 else "sequential").inc()
        return list(await asyncio.gather(*(self._run_one(call, deadline) for call in calls)))

    async def _run_one(self, call: ToolCallRequest, deadline: float | None = None) -> ToolRun:
        with self.tracer.tool(name=call.name, arguments=_arguments(call.arguments_json)) as observation:
            run = await self._execute(call, deadline)
            outcome = run.outcome
            observation.update(
                output=run.content,
                metadata={
                    "exit_code": outcome.return_code, "output_bytes": len(outcome.stdout.encode()),
                    "cached": outcome.cached, "truncated": outcome.truncated,
                    "duration_seconds": round(outcome.duration_seconds, 6), "command": outcome.command,
                    **({"block_reason": outcome.error_code} if outcome.error_code else {}),
                },
                **({} if outcome.success else {"level": "WARNING", "status_message": outcome.error_code or "error"}),
            )
            return run

    async def _execute(self, call: ToolCallRequest, deadline: float | None = None) -> ToolRun:
        async with self.semaphore:
            started = time.perf_counter()
            timeout, cut, reconnecting = self.deadline, False, False
            if deadline is not None and deadline - time.monotonic() < timeout:
                timeout, cut = max(0.0, deadline - time.monotonic()), True
            try:
                if timeout < MIN_CALL_SECONDS:
                    raise _NoTimeLeft
                request = sandbox_pb2.ExecuteRequest(tool=call.name, arguments_json=call.arguments_json)
                try:
                    reply = await self.stub.Execute(request, timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    left = timeout - (time.perf_counter() - started)
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or left < MIN_CALL_SECONDS:
                        raise
                    reconnecting = True
                    reply = await self.stub.Execute(request, timeout=min(RECONNECT_WAIT, left), wait_for_ready=True)
                outcome = agent_pb2.ToolOutcome(
                    success=not reply.error,
                    stdout=reply.stdout,
                    stderr=reply.stderr,
                    return_code=reply.exit_code,
                    command=reply.command,
                    error=reply.error,
                    error_code=reply.error_code,
                    cached=reply.cached,
                    truncated=reply.truncated,
                    duration_seconds=reply.duration_seconds,
                )
            except (grpc.aio.AioRpcError, _NoTimeLeft) as exc:
                if reconnecting:  # refused, then not reachable again in time
                    error, code = "sandbox unavailable: the sandbox service cannot be reached", SANDBOX_UNAVAILABLE
                elif isinstance(exc, _NoTimeLeft) or (cut and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                    error, code = "the chat's time limit ran out before the tool finished", TOOL_TIMEOUT
                else:
                    error, code = f"sandbox unavailable: {_rpc_reason(exc, timeout)}", SANDBOX_UNAVAILABLE
                outcome = agent_pb2.ToolOutcome(
                    success=False,
                    error=error,
                    error_code=code,
                    return_code=-1,
                    duration_seconds=time.perf_counter() - started,
                )
        label = self._label(call.name)
        elapsed = time.perf_counter() - started
        metrics.TOOL_EXECUTIONS.labels(label, "success" if outcome.success else "error").inc()
        metrics.TOOL_EXECUTION_DURATION.labels(label).observe(elapsed, exemplar=exemplar())
        return ToolRun(call, outcome)


class _NoTimeLeft(Exception):
    """The turn's deadline left no time to start the call."""


def _arguments(arguments_json: str) -> object:
    try:
        return json.loads(arguments_json)
    except ValueError:
        return arguments_json


def _rpc_reason(exc: grpc.aio.AioRpcError, deadline: float) -> str:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {deadline:g}s"
    if code == grpc.StatusCode.UNAVAILABLE:
        return "the sandbox service cannot be reached"
    details = (exc.details() or "").splitlines()[0][:200] if exc.details() else ""
    return f"{code.name.lower()}" + (f" ({details})" if details else "")

