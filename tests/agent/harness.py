"""The agent in-process behind real grpc.aio servers: the real Agent servicer, the real sandbox
servicer on the sample documents, and a small in-memory Cache servicer for sessions."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
from prometheus_client import REGISTRY

from fsagent.agent.llm import build_provider
from fsagent.agent.llm.base import LLMProvider
from fsagent.agent.loop import Agent
from fsagent.agent.server import AgentServicer
from fsagent.common import grpcutil
from fsagent.common.settings import Settings
from fsagent.sandbox.server import SandboxServicer
from fsagent.v1 import agent_pb2_grpc, cache_pb2, cache_pb2_grpc, sandbox_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test: no .env file, no provider keys from the developer's shell."""
    values: dict[str, Any] = {
        "llm_provider": "offline",
        "openai_api_key": None,
        "openai_base_url": None,
        "azure_openai_api_key": None,
        "azure_openai_endpoint": None,
        "langfuse_public_key": None,
        "langfuse_secret_key": None,
        "data_root": DATA,
        "llm_max_retries": 0,
        "llm_timeout": 10.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def dead_address() -> str:
    """A loopback address nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class MemoryCache(cache_pb2_grpc.CacheServicer):
    """Sessions in a dict (the tool-result namespaces always miss)."""

    sessions: dict[str, list[str]] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    appends: list[cache_pb2.AppendSessionRequest] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)  # method names that answer UNAVAILABLE (a full disk)

    async def _maybe_fail(self, method: str, context: Any) -> None:
        if method in self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "cache store busy, try again")

    def _record(self, session_id: str) -> cache_pb2.SessionRecord:
        messages = self.sessions.get(session_id)
        if messages is None:
            return cache_pb2.SessionRecord(session_id=session_id, exists=False)
        return cache_pb2.SessionRecord(
            session_id=session_id, exists=True, messages_json=messages,
            created=self.created[session_id], updated=time.time(),
        )

    async def Get(self, request: Any, context: Any) -> cache_pb2.CacheGetResponse:
        return cache_pb2.CacheGetResponse(result=cache_pb2.CacheGetResponse.MISS)

    async def Put(self, request: Any, context: Any) -> cache_pb2.CachePutResponse:
        return cache_pb2.CachePutResponse(stored=False)

    async def GetSession(self, request: cache_pb2.GetSessionRequest, context: Any) -> cache_pb2.SessionRecord:
        await self._maybe_fail("GetSession", context)
        return self._record(request.session_id)

    async def AppendSession(self, request: cache_pb2.AppendSessionRequest, context: Any) -> cache_pb2.SessionRecord:
        await self._maybe_fail("AppendSession", context)
        self.appends.append(request)
        messages = self.sessions.setdefault(request.session_id, [])
        self.created.setdefault(request.session_id, time.time())
        messages.extend(request.messages_json)
        if request.max_messages:
            del messages[: max(0, len(messages) - request.max_messages)]
        return self._record(request.session_id)

    async def DeleteSession(self, request: cache_pb2.DeleteSessionRequest, context: Any) -> cache_pb2.DeleteSessionResponse:
        existed = self.sessions.pop(request.session_id, None) is not None
        return cache_pb2.DeleteSessionResponse(deleted=existed)


@dataclass
class Harness:
    stub: agent_pb2_grpc.AgentStub
    cache: MemoryCache
    llm: LLMProvider
    settings: Settings
    address: str


@contextlib.asynccontextmanager
async def running_agent(
    settings: Settings,
    *,
    llm: LLMProvider | None = None,
    sandbox_address: str | None = None,
    cache_address: str | None = None,
) -> AsyncIterator[Harness]:
    """One grpc.aio server hosting Agent, Sandbox and Cache; the agent reaches the other two
    over real channels (or over `*_address` when given, e.g. a dead one)."""
    server = grpcutil.server()
    port = server.add_insecure_port("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    cache = MemoryCache()
    cache_pb2_grpc.add_CacheServicer_to_server(cache, server)
    sandbox_pb2_grpc.add_SandboxServicer_to_server(SandboxServicer(settings), server)
    llm = llm or build_provider(settings)
    sandbox_channel = grpcutil.channel(sandbox_address or address)
    cache_channel = grpcutil.channel(cache_address or address)
    agent = Agent(settings, llm, sandbox_pb2_grpc.SandboxStub(sandbox_channel), cache_pb2_grpc.CacheStub(cache_channel))
    agent_pb2_grpc.add_AgentServicer_to_server(
        AgentServicer(agent, settings, {"cache": cache_channel, "sandbox": sandbox_channel}), server
    )
    health = grpcutil.add_health(server, ["fsagent.v1.Agent", "fsagent.v1.Sandbox", "fsagent.v1.Cache"])
    await server.start()
    await grpcutil.set_serving(health, ["fsagent.v1.Agent", "fsagent.v1.Sandbox", "fsagent.v1.Cache"], True)
    client = grpc.aio.insecure_channel(address)
    try:
        yield Harness(agent_pb2_grpc.AgentStub(client), cache, llm, settings, address)
    finally:
        await client.close()
        await server.stop(None)
        await sandbox_channel.close()
        await cache_channel.close()
        await llm.aclose()
