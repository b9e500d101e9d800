"""A real in-process grpc.aio sandbox server over a tmp data root (and a fake cache, see helpers)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
import pytest

from fsagent.common import grpcutil
from fsagent.common.settings import Settings
from fsagent.sandbox.server import SERVICE_NAME, make_setup
from fsagent.v1 import cache_pb2_grpc, sandbox_pb2, sandbox_pb2_grpc
from tests.sandbox.helpers import FakeCache, build_tree


@dataclass
class Sandbox:
    root: Path
    outside: Path
    address: str
    channel: grpc.aio.Channel
    stub: sandbox_pb2_grpc.SandboxStub
    settings: Settings
    cache: FakeCache | None = None

    async def execute(self, tool: str, no_cache: bool = False, raw: str | None = None, **args: Any) -> Any:
        arguments = raw if raw is not None else json.dumps(args)
        return await self.stub.Execute(
            sandbox_pb2.ExecuteRequest(tool=tool, arguments_json=arguments, no_cache=no_cache), timeout=30
        )


@dataclass
class _Servers:
    servers: list[grpc.aio.Server] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for chan in self.channels:
            await chan.close()
        for server in self.servers:
            await server.stop(0)
        for cleanup in self.cleanups:
            await cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_cache(servers: _Servers) -> tuple[FakeCache, str]:
    fake = FakeCache()
    server = grpcutil.server()
    cache_pb2_grpc.add_CacheServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servers.servers.append(server)
    return fake, f"127.0.0.1:{port}"


async def start_sandbox(
    servers: _Servers, root: Path, *, cache: FakeCache | None = None, cache_addr: str = "", **overrides: Any
) -> Sandbox:
    settings = Settings(data_root=root, cache_addr=cache_addr, **overrides)
    server = grpcutil.server()
    health = grpcutil.add_health(server, [SERVICE_NAME])
    servers.cleanups.extend(await make_setup(settings)(server))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await grpcutil.set_serving(health, [SERVICE_NAME], True)
    servers.servers.append(server)
    address = f"127.0.0.1:{port}"
    channel = grpcutil.channel(address)
    servers.channels.append(channel)
    return Sandbox(root, root.parent / "outside", address, channel, sandbox_pb2_grpc.SandboxStub(channel), settings, cache)


@pytest.fixture(scope="session")
async def _session_servers() -> AsyncIterator[_Servers]:
    servers = _Servers()
    yield servers
    await servers.close()


@pytest.fixture(scope="session")
async def sandbox(tmp_path_factory: pytest.TempPathFactory, _session_servers: _Servers) -> Sandbox:
    """A shared sandbox without a cache over a tree nobody writes to (read-only tests)."""
    root = build_tree(tmp_path_factory.mktemp("shared"))
    return await start_sandbox(_session_servers, root)


@pytest.fixture
async def make_sandbox(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Sandbox]]]:
    """Start a sandbox of one's own: make_sandbox(with_cache=True, read_only=True, tool_timeout=...)."""
    servers = _Servers()
    built = {"n": 0}

    async def make(*, with_cache: bool = False, cache_addr: str = "", **overrides: Any) -> Sandbox:
        built["n"] += 1
        root = build_tree(tmp_path / f"t{built['n']}")
        fake = None
        if with_cache:
            fake, cache_addr = await start_cache(servers)
        return await start_sandbox(servers, root, cache=fake, cache_addr=cache_addr, **overrides)

    yield make
    await servers.close()
