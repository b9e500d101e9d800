"""A real cache service and a real sandbox, in-process over real gRPC, on a loop in its own thread.

Hypothesis drives examples from plain (sync) test functions; the servers live on a background
event loop for the whole module, and `Harness.run(coro)` runs a coroutine there. `reference()`
runs the tool code directly (tools.prepare + tools.run, no cache anywhere): what the tool answers
at that moment, to compare cached answers with.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

import grpc

from fsagent.cache.server import CacheServicer, add_to_server
from fsagent.cache.store import CacheStore
from fsagent.common import grpcutil, toolspec
from fsagent.common.settings import Settings
from fsagent.sandbox import paths, tools
from fsagent.sandbox.server import SERVICE_NAME, make_setup
from fsagent.v1 import cache_pb2, cache_pb2_grpc, sandbox_pb2, sandbox_pb2_grpc

T = TypeVar("T")
MiB = 1024 * 1024
COMPARED = ("stdout", "stderr", "exit_code", "truncated", "error", "error_code", "output_bytes")


@dataclass
class CacheServer:
    server: grpc.aio.Server
    servicer: CacheServicer
    store: CacheStore
    address: str

    async def stop(self) -> None:
        await self.server.stop(None)
        await self.servicer.close()


async def start_cache(directory: Path, size_limit: int = 64 * MiB, port: int = 0) -> CacheServer:
    store = CacheStore(directory, size_limit=size_limit)
    server = grpcutil.server()
    servicer = add_to_server(server, store)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return CacheServer(server, servicer, store, f"127.0.0.1:{bound}")


@dataclass
class SandboxServer:
    root: Path
    address: str
    settings: Settings
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    stub: sandbox_pb2_grpc.SandboxStub
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    ctx: tools.Context | None = None

    async def execute(self, tool: str, no_cache: bool = False, **args: Any) -> sandbox_pb2.ExecuteResponse:
        return await self.stub.Execute(
            sandbox_pb2.ExecuteRequest(tool=tool, arguments_json=json.dumps(args), no_cache=no_cache), timeout=30
        )

    async def reference(self, tool: str, **args: Any) -> sandbox_pb2.ExecuteResponse:
        """The tool run now, directly, with no cache in the way; shaped like an ExecuteResponse."""
        if self.ctx is None:
            s = self.settings
            self.ctx = tools.Context.create(s.data_root, s.max_output_bytes, s.tool_timeout)
        ctx = self.ctx
        try:
            parsed = toolspec.parse_arguments(tool, json.dumps(args))
        except toolspec.ToolArgumentError as exc:
            return sandbox_pb2.ExecuteResponse(exit_code=tools.EXIT_REFUSED, error=exc.message, error_code="invalid_arguments")
        try:
            prepared = tools.prepare(ctx, tool, parsed)
        except paths.PathError as exc:
            return sandbox_pb2.ExecuteResponse(exit_code=tools.EXIT_REFUSED, error=exc.message, error_code=exc.code)
        out = await tools.run(ctx, prepared)
        return sandbox_pb2.ExecuteResponse(
            stdout=out.stdout, stderr=out.stderr, exit_code=out.exit_code, truncated=out.truncated,
            error=out.error, error_code=out.error_code, command=out.command,
            output_bytes=len(out.stdout.encode("utf-8", "surrogateescape")),
        )

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(None)
        for cleanup in self.cleanups:
            await cleanup()


async def start_sandbox(root: Path, cache_address: str, **overrides: Any) -> SandboxServer:
    overrides.setdefault("cache_timeout", 2.0)
    settings = Settings(data_root=root, cache_addr=cache_address, **overrides)
    server = grpcutil.server()
    health = grpcutil.add_health(server, [SERVICE_NAME])
    cleanups = list(await make_setup(settings)(server))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await grpcutil.set_serving(health, [SERVICE_NAME], True)
    address = f"127.0.0.1:{port}"
    channel = grpcutil.channel(address)
    return SandboxServer(root, address, settings, server, channel, sandbox_pb2_grpc.SandboxStub(channel), cleanups)


def same_answer(cached: sandbox_pb2.ExecuteResponse, fresh: sandbox_pb2.ExecuteResponse) -> bool:
    return all(getattr(cached, f) == getattr(fresh, f) for f in COMPARED)


def diff(cached: sandbox_pb2.ExecuteResponse, fresh: sandbox_pb2.ExecuteResponse) -> str:
    return "; ".join(
        f"{f}: cached={getattr(cached, f)!r} now={getattr(fresh, f)!r}" for f in COMPARED
        if getattr(cached, f) != getattr(fresh, f)
    )


async def cache_stats(address: str) -> cache_pb2.StatsResponse:
    async with grpcutil.channel(address) as channel:
        return await cache_pb2_grpc.CacheStub(channel).Stats(cache_pb2.StatsRequest(), timeout=10)


class LoopThread:
    """An event loop running in a daemon thread; run(coro) blocks until the coroutine is done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cache-props-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
