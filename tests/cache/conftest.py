"""Fixtures for the cache service: a store on a temporary directory and a real grpc.aio server."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import pytest

from fsagent.cache.server import CacheServicer, add_to_server
from fsagent.cache.store import CacheStore
from fsagent.common import grpcutil
from fsagent.v1 import cache_pb2_grpc

MiB = 1024 * 1024


@dataclasses.dataclass
class Running:
    server: grpc.aio.Server
    servicer: CacheServicer
    channel: grpc.aio.Channel
    stub: cache_pb2_grpc.CacheStub
    store: CacheStore
    address: str

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(None)
        await self.servicer.close()


async def start_server(store: CacheStore) -> Running:
    """The real service stack: shared interceptors, the servicer, a loopback port chosen by the OS."""
    server = grpcutil.server()
    servicer = add_to_server(server, store)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    channel = grpcutil.channel(address)
    return Running(server, servicer, channel, cache_pb2_grpc.CacheStub(channel), store, address)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_store(cache_dir: Path) -> Iterator[Callable[..., CacheStore]]:
    stores: list[CacheStore] = []

    def make(directory: Path | None = None, **kwargs: object) -> CacheStore:
        kwargs.setdefault("size_limit", 50 * MiB)
        store = CacheStore(directory or cache_dir, **kwargs)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[[CacheStore], Awaitable[Running]]]:
    running: list[Running] = []

    async def make(store: CacheStore) -> Running:
        r = await start_server(store)
        running.append(r)
        return r

    yield make
    for r in running:
        try:
            await r.stop()
        except Exception:  # noqa: BLE001 - already stopped by the test
            pass


@pytest.fixture
async def cache(
    make_store: Callable[..., CacheStore], make_server: Callable[[CacheStore], Awaitable[Running]]
) -> Running:
    return await make_server(make_store())
