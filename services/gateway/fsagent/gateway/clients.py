"""The gateway's only state: a long-lived gRPC channel and stub per upstream, for all requests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

import grpc
from fastapi import Depends, Request

from fsagent.common import grpcutil
from fsagent.common.settings import Settings
from fsagent.v1 import agent_pb2, agent_pb2_grpc, sandbox_pb2_grpc

# Deadlines for calls whose length the settings do not already bound (chat uses chat_timeout).
UNARY_TIMEOUT = 30.0  # document list/read/write/delete
STREAM_TIMEOUT = 300.0  # file and search streams, uploads


@dataclass(frozen=True)
class Clients:
    agent_channel: grpc.aio.Channel
    sandbox_channel: grpc.aio.Channel
    agent: agent_pb2_grpc.AgentStub
    sandbox: sandbox_pb2_grpc.SandboxStub

    @classmethod
    def connect(cls, settings: Settings) -> "Clients":
        """Open the channels (lazily connecting); call inside the running event loop."""
        agent_channel = grpcutil.channel(settings.agent_addr)
        sandbox_channel = grpcutil.channel(settings.sandbox_addr)
        return cls(
            agent_channel,
            sandbox_channel,
            agent_pb2_grpc.AgentStub(agent_channel),
            sandbox_pb2_grpc.SandboxStub(sandbox_channel),
        )

    async def ready(self, timeout: float = 1.0) -> dict[str, str]:
        """The state of each dependency, all asked at once within `timeout`: the agent and the
        sandbox from their grpc.health.v1 answers ("serving", "unavailable"), the cache as the
        agent sees it (the gateway never talks to the cache; "unknown" when the agent cannot say)."""
        agent, sandbox, behind_agent = await asyncio.gather(
            grpcutil.check_health(self.agent_channel, timeout),
            grpcutil.check_health(self.sandbox_channel, timeout),
            self._agent_dependencies(timeout),
        )
        return {
            "agent": "serving" if agent else "unavailable",
            "sandbox": "serving" if sandbox else "unavailable",
            "cache": behind_agent.get("cache", "unknown") if agent else "unknown",
        }

    async def _agent_dependencies(self, timeout: float) -> dict[str, str]:
        try:
            reply = await self.agent.CheckDependencies(agent_pb2.CheckDependenciesRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return {}
        return {d.name: d.state for d in reply.dependencies}

    async def close(self, grace: float | None = None) -> None:
        await asyncio.gather(self.agent_channel.close(grace), self.sandbox_channel.close(grace))


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_clients(request: Request) -> Clients:
    return request.app.state.clients


# The stub dependencies also record which upstream the request talks to, so a failed call is
# reported as "agent unavailable" or "sandbox unavailable" (never with the peer's address).
def get_agent(request: Request) -> agent_pb2_grpc.AgentStub:
    request.state.upstream = "agent"
    return get_clients(request).agent


def get_sandbox(request: Request) -> sandbox_pb2_grpc.SandboxStub:
    request.state.upstream = "sandbox"
    return get_clients(request).sandbox


SettingsDep = Annotated[Settings, Depends(app_settings)]
ClientsDep = Annotated[Clients, Depends(get_clients)]
AgentDep = Annotated[agent_pb2_grpc.AgentStub, Depends(get_agent)]
SandboxDep = Annotated[sandbox_pb2_grpc.SandboxStub, Depends(get_sandbox)]
