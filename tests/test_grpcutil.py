"""The shared gRPC plumbing: cancellation passes through the interceptors, and calls are counted."""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client import REGISTRY

from fsagent.common import grpcutil
from fsagent.v1 import agent_pb2, agent_pb2_grpc


class SlowAgent(agent_pb2_grpc.AgentServicer):
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def Chat(self, request, context):  # type: ignore[no-untyped-def]
        if request.message == "quick":
            return agent_pb2.ChatResponse(response="ok")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return agent_pb2.ChatResponse()


def client_count(code: str) -> float:
    value = REGISTRY.get_sample_value(
        "fsagent_grpc_client_handled_total",
        {"grpc_service": "fsagent.v1.Agent", "grpc_method": "Chat", "grpc_code": code},
    )
    return value or 0.0


async def test_a_cancelled_unary_call_is_cancelled_on_the_server_and_counted() -> None:
    agent = SlowAgent()
    server = grpcutil.server()
    agent_pb2_grpc.add_AgentServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpcutil.channel(f"127.0.0.1:{port}")
    try:
        stub = agent_pb2_grpc.AgentStub(channel)
        ok_before, cancelled_before = client_count("OK"), client_count("CANCELLED")
        assert (await stub.Chat(agent_pb2.ChatRequest(message="quick"), timeout=5)).response == "ok"

        call = stub.Chat(agent_pb2.ChatRequest(message="slow"), timeout=60)
        await asyncio.sleep(0.2)
        call.cancel()
        try:
            await call
            raise AssertionError("the call was not cancelled")
        except asyncio.CancelledError:
            pass
        await asyncio.wait_for(agent.cancelled.wait(), 5)  # the server-side work stopped too
        await asyncio.sleep(0.05)  # the outcome is recorded from a done-callback
        assert client_count("OK") == ok_before + 1
        assert client_count("CANCELLED") == cancelled_before + 1
    finally:
        await channel.close()
        await server.stop(None)
