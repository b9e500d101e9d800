"""Tool batches over real gRPC: bounded concurrency, request order, failures as results."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import pytest

from fsagent.agent.llm.base import ToolCallRequest
from fsagent.agent.orchestrator import ToolOrchestrator, model_content
from fsagent.common import grpcutil
from fsagent.v1 import agent_pb2, sandbox_pb2, sandbox_pb2_grpc
from tests.agent.harness import dead_address, make_settings

TOOLS = ["grep", "cat"]


class SlowSandbox(sandbox_pb2_grpc.SandboxServicer):
    """Echoes the arguments after a pause, and records how many calls ran at once."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.running = 0
        self.peak = 0

    async def Execute(self, request: sandbox_pb2.ExecuteRequest, context: Any) -> sandbox_pb2.ExecuteResponse:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.pause)
        finally:
            self.running -= 1
        if request.arguments_json == "fail":
            return sandbox_pb2.ExecuteResponse(exit_code=2, error="no such file: x", error_code="not_found")
        return sandbox_pb2.ExecuteResponse(stdout=request.arguments_json, stderr="warning: slow disk\n", cached=True)


@pytest.fixture
async def slow_sandbox() -> AsyncIterator[tuple[SlowSandbox, sandbox_pb2_grpc.SandboxStub]]:
    servicer = SlowSandbox(pause=0.2)
    server = grpcutil.server()
    sandbox_pb2_grpc.add_SandboxServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpcutil.channel(f"127.0.0.1:{port}")
    yield servicer, sandbox_pb2_grpc.SandboxStub(channel)
    await channel.close()
    await server.stop(None)


def calls(n: int) -> list[ToolCallRequest]:
    return [ToolCallRequest(f"call_{i}", "grep", f'{{"pattern": "p{i}"}}') for i in range(n)]


async def test_calls_run_concurrently_up_to_the_limit_in_request_order(slow_sandbox: Any) -> None:
    servicer, stub = slow_sandbox
    orchestrator = ToolOrchestrator(stub, make_settings(max_concurrent_tools=2), TOOLS)
    started = time.perf_counter()
    runs = await orchestrator.run_batch(calls(5))
    elapsed = time.perf_counter() - started
    assert servicer.peak == 2
    assert 0.55 < elapsed < 1.5  # three waves of 0.2 s, not five
    assert [run.call.id for run in runs] == [f"call_{i}" for i in range(5)]
    assert [run.outcome.stdout for run in runs] == [f'{{"pattern": "p{i}"}}' for i in range(5)]
    assert all(run.outcome.success and run.outcome.cached for run in runs)


async def test_a_single_call_takes_the_same_path(slow_sandbox: Any) -> None:
    _, stub = slow_sandbox
    (run,) = await ToolOrchestrator(stub, make_settings(), TOOLS).run_batch(calls(1))
    assert run.outcome.success
    assert run.to_message() == {
        "role": "tool", "tool_call_id": "call_0", "content": '{"pattern": "p0"}\n[stderr]\nwarning: slow disk',
    }


async def test_a_refused_call_is_shown_to_the_model(slow_sandbox: Any) -> None:
    _, stub = slow_sandbox
    (run,) = await ToolOrchestrator(stub, make_settings(), TOOLS).run_batch([ToolCallRequest("c", "cat", "fail")])
    assert not run.outcome.success and run.outcome.return_code == 2
    assert run.content.startswith("ERROR [not_found]: no such file: x")
    assert run.to_result().tool_name == "cat"


async def test_a_slow_sandbox_hits_the_per_call_deadline(slow_sandbox: Any) -> None:
    servicer, stub = slow_sandbox
    servicer.pause = 2.0
    orchestrator = ToolOrchestrator(stub, make_settings(), TOOLS)
    orchestrator.deadline = 0.2
    (run,) = await orchestrator.run_batch(calls(1))
    assert not run.outcome.success
    assert run.outcome.error == "sandbox unavailable: no answer within 0.2s"


async def test_sandbox_down_gives_each_call_an_error_result() -> None:
    channel = grpcutil.channel(dead_address())
    try:
        orchestrator = ToolOrchestrator(sandbox_pb2_grpc.SandboxStub(channel), make_settings(), TOOLS)
        runs = await orchestrator.run_batch(calls(3))
    finally:
        await channel.close()
    assert len(runs) == 3
    for run in runs:
        assert not run.outcome.success and run.outcome.error_code == "sandbox_unavailable"
        assert run.outcome.error == "sandbox unavailable: the sandbox service cannot be reached"
        assert run.content.startswith("ERROR [sandbox_unavailable]: sandbox unavailable")


def test_model_content_for_empty_output() -> None:
    assert model_content(agent_pb2.ToolOutcome(success=True)) == "(no output)"
    assert model_content(agent_pb2.ToolOutcome(success=True, return_code=1)) == "(no output; exit code 1)"
    assert model_content(agent_pb2.ToolOutcome(success=False)) == "ERROR: the tool call failed"

