"""The fsagent.v1.Cache service over real gRPC (grpc.aio on 127.0.0.1, a temporary directory)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

import grpc
import pytest
from prometheus_client import REGISTRY

from fsagent.cache import metrics as cache_metrics
from fsagent.cache.store import CacheStore
from fsagent.v1 import cache_pb2 as pb

if TYPE_CHECKING:  # conftest is not importable as a module; the fixtures provide these objects
    from conftest import Running

R = pb.CacheGetResponse
StoreFactory = Callable[..., CacheStore]
ServerFactory = Callable[[CacheStore], Awaitable["Running"]]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def put(cache: Running, key: str, value: bytes = b"v", fp: bytes = b"fp", ns: str = "content",
              scopes: tuple[str, ...] = (), ttl: float = 0) -> pb.CachePutResponse:
    return await cache.stub.Put(pb.CachePutRequest(
        namespace=ns, key=key, value=value, fingerprint=fp, scopes=list(scopes), ttl_seconds=ttl))


async def get(cache: Running, key: str, fp: bytes = b"fp", ns: str = "content") -> pb.CacheGetResponse:
    return await cache.stub.Get(pb.CacheGetRequest(namespace=ns, key=key, fingerprint=fp))


async def test_hit_miss_stale(cache: Running) -> None:
    assert (await get(cache, "grep:foo")).result == R.MISS
    assert (await put(cache, "grep:foo", b"matches", b"fp-1", ns="search", scopes=("docs",))).stored
    reply = await get(cache, "grep:foo", b"fp-1", ns="search")
    assert (reply.result, reply.value) == (R.HIT, b"matches")
    assert (await get(cache, "grep:foo", b"fp-2", ns="search")).result == R.STALE
    assert (await get(cache, "grep:foo", b"fp-1", ns="search")).result == R.MISS  # dropped when stale


async def test_ttl_expiry(make_store: StoreFactory, make_server: ServerFactory) -> None:
    cache = await make_server(make_store(ttl_content=0.3))
    await put(cache, "default-ttl")  # the namespace default: 0.3 s
    await put(cache, "long", ttl=60)  # overridden per Put
    await put(cache, "short", ns="search", ttl=0.3)
    assert (await get(cache, "default-ttl")).result == R.HIT
    await asyncio.sleep(0.5)
    assert (await get(cache, "default-ttl")).result == R.MISS
    assert (await get(cache, "short", ns="search")).result == R.MISS
    assert (await get(cache, "long")).result == R.HIT


async def test_lru_eviction_under_small_limit(make_store: StoreFactory, make_server: ServerFactory) -> None:
    limit = 200 * 1024
    cache = await make_server(make_store(size_limit=limit))
    for i in range(100):
        assert (await put(cache, f"k{i}", bytes([i % 256]) * 10_240)).stored
    stats = await cache.stub.Stats(pb.StatsRequest())
    assert stats.size_limit_bytes == limit
    assert 0 < stats.volume_bytes <= limit
    content = {ns.namespace: ns for ns in stats.namespaces}["content"]
    assert 0 < content.entries < 20 and content.bytes < limit
    assert (await get(cache, "k0")).result == R.MISS
    assert (await get(cache, "k99")).value == bytes([99]) * 10_240


async def test_restart_persistence(make_store: StoreFactory, make_server: ServerFactory, cache_dir: Path) -> None:
    first = await make_server(make_store())
    await put(first, "k", b"survives", scopes=("a.md",))
    await first.stub.AppendSession(pb.AppendSessionRequest(session_id="s1", messages_json=['{"role":"user"}']))
    await first.stop()  # closes the store too

    second = await make_server(make_store(cache_dir))
    assert (await get(second, "k")).value == b"survives"
    session = await second.stub.GetSession(pb.GetSessionRequest(session_id="s1"))
    assert session.exists and list(session.messages_json) == ['{"role":"user"}']


async def test_invalidate_by_prefix(cache: Running) -> None:
    entries = {
        "file": ("docs/a.md",),  # the changed file itself
        "dir-search": ("docs",),  # a search over its directory (ancestor scope)
        "root-search": (".",),  # a search over everything
        "nested": ("./docs/a.md/",),  # same file, written untidily
        "multi": ("other/x.md", "docs/a.md"),  # any one matching scope is enough
        "sub-dir": ("docs/sub",),  # another branch of docs/
        "sibling": ("docsx/a.md",),  # shares the string prefix only
        "other": ("other/b.md",),
    }
    for key, scopes in entries.items():
        await put(cache, key, ns="search" if "search" in key else "content", scopes=scopes)
    await cache.stub.AppendSession(pb.AppendSessionRequest(session_id="keep", messages_json=["{}"]))

    before = sample("fsagent_cache_invalidations_total", reason="document_write")
    reply = await cache.stub.Invalidate(pb.InvalidateRequest(path_prefix="docs/a.md", reason="document_write"))
    assert reply.removed == 5
    assert sample("fsagent_cache_invalidations_total", reason="document_write") - before == 5

    async def alive(key: str) -> bool:
        return (await get(cache, key, ns="search" if "search" in key else "content")).result == R.HIT

    assert [k for k in entries if await alive(k)] == ["sub-dir", "sibling", "other"]

    # A descendant scope goes when its directory is deleted.
    assert (await cache.stub.Invalidate(pb.InvalidateRequest(path_prefix="docs/", reason="document_delete"))).removed == 1
    assert not await alive("sub-dir") and await alive("sibling")

    # Root prefix: every content/search entry, but never the sessions.
    before_other = sample("fsagent_cache_invalidations_total", reason="other")
    assert (await cache.stub.Invalidate(pb.InvalidateRequest(path_prefix="", reason="made-up"))).removed == 2
    assert sample("fsagent_cache_invalidations_total", reason="other") - before_other == 2  # unknown reason
    assert (await cache.stub.GetSession(pb.GetSessionRequest(session_id="keep"))).exists


async def test_sessions_append_trim_delete(cache: Running) -> None:
    msgs = [json.dumps({"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"}) for i in range(7)]
    missing = await cache.stub.GetSession(pb.GetSessionRequest(session_id="chat-1"))
    assert not missing.exists and missing.session_id == "chat-1" and not missing.messages_json

    first = await cache.stub.AppendSession(pb.AppendSessionRequest(session_id="chat-1", messages_json=msgs[:4]))
    assert first.exists and list(first.messages_json) == msgs[:4] and first.created == first.updated
    second = await cache.stub.AppendSession(
        pb.AppendSessionRequest(session_id="chat-1", messages_json=msgs[4:], max_messages=5)
    )
    assert list(second.messages_json) == msgs[2:]  # the newest five
    assert second.created == first.created and second.updated >= first.updated
    read = await cache.stub.GetSession(pb.GetSessionRequest(session_id="chat-1"))
    assert list(read.messages_json) == msgs[2:]

    assert (await cache.stub.DeleteSession(pb.DeleteSessionRequest(session_id="chat-1"))).deleted
    assert not (await cache.stub.GetSession(pb.GetSessionRequest(session_id="chat-1"))).exists
    assert not (await cache.stub.DeleteSession(pb.DeleteSessionRequest(session_id="chat-1"))).deleted


async def test_concurrent_appends_lose_nothing(cache: Running) -> None:
    await asyncio.gather(*(
        cache.stub.AppendSession(pb.AppendSessionRequest(session_id="busy", messages_json=[json.dumps({"n": i})]))
        for i in range(40)
    ))
    session = await cache.stub.GetSession(pb.GetSessionRequest(session_id="busy"))
    assert sorted(json.loads(m)["n"] for m in session.messages_json) == list(range(40))


async def test_clear_per_namespace(cache: Running) -> None:
    for i in range(3):
        await put(cache, f"c{i}")
    for i in range(2):
        await put(cache, f"s{i}", ns="search")
    await cache.stub.AppendSession(pb.AppendSessionRequest(session_id="s", messages_json=["{}"]))

    assert (await cache.stub.Clear(pb.ClearRequest(namespace="search"))).removed == 2
    assert (await get(cache, "s0", ns="search")).result == R.MISS
    assert (await get(cache, "c0")).result == R.HIT
    assert (await cache.stub.Clear(pb.ClearRequest(namespace="sessions"))).removed == 1
    assert not (await cache.stub.GetSession(pb.GetSessionRequest(session_id="s"))).exists
    assert (await cache.stub.Clear(pb.ClearRequest())).removed == 3
    stats = await cache.stub.Stats(pb.StatsRequest())
    assert all(ns.entries == 0 for ns in stats.namespaces)


async def test_stats(cache: Running) -> None:
    await put(cache, "a", b"x" * 100)
    await put(cache, "b", b"y" * 200)
    await put(cache, "s", b"z" * 50, ns="search")
    await cache.stub.AppendSession(pb.AppendSessionRequest(session_id="s1", messages_json=["{}"]))
    await get(cache, "a")  # hit
    await get(cache, "b")  # hit
    await get(cache, "nope")  # miss
    await get(cache, "b", b"other")  # stale: counts as a miss
    await get(cache, "s", ns="search")  # hit
    await cache.stub.GetSession(pb.GetSessionRequest(session_id="s1"))  # hit
    await cache.stub.GetSession(pb.GetSessionRequest(session_id="s2"))  # miss

    stats = await cache.stub.Stats(pb.StatsRequest())
    by_ns = {ns.namespace: ns for ns in stats.namespaces}
    assert list(by_ns) == ["content", "search", "sessions"]
    assert (by_ns["content"].entries, by_ns["content"].hits, by_ns["content"].misses) == (1, 2, 2)
    assert 100 < by_ns["content"].bytes < 300  # "a": its value, key and header (b was dropped)
    assert (by_ns["search"].entries, by_ns["search"].hits, by_ns["search"].misses) == (1, 1, 0)
    assert (by_ns["sessions"].entries, by_ns["sessions"].hits, by_ns["sessions"].misses) == (1, 1, 1)
    assert stats.hit_ratio == pytest.approx(4 / 7)
    assert stats.size_limit_bytes == cache.store.size_limit
    assert stats.volume_bytes > 0
    assert stats.directory == str(cache.store.directory)


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        ("Get", pb.CacheGetRequest(namespace="bogus", key="k"), "unknown namespace"),
        ("Get", pb.CacheGetRequest(namespace="", key="k"), "namespace is required"),
        ("Get", pb.CacheGetRequest(namespace="sessions", key="k"), "GetSession"),
        ("Get", pb.CacheGetRequest(namespace="content", key=""), "key must not be empty"),
        ("Put", pb.CachePutRequest(namespace="search", key="k" * 1025), "longer than 1024"),
        ("Put", pb.CachePutRequest(namespace="content", key="k", scopes=["/etc/passwd"]), "relative"),
        ("Put", pb.CachePutRequest(namespace="content", key="k", scopes=["../up"]), "'..'"),
        ("Put", pb.CachePutRequest(namespace="content", key="k", ttl_seconds=-1), "ttl_seconds"),
        ("Put", pb.CachePutRequest(namespace="content", key="k", ttl_seconds=float("nan")), "ttl_seconds"),
        ("Invalidate", pb.InvalidateRequest(path_prefix="/abs"), "relative"),
        ("Clear", pb.ClearRequest(namespace="everything"), "unknown namespace"),
        ("GetSession", pb.GetSessionRequest(session_id=""), "session_id"),
        ("GetSession", pb.GetSessionRequest(session_id="has space"), "session_id"),
        ("DeleteSession", pb.DeleteSessionRequest(session_id="x" * 129), "session_id"),
        ("AppendSession", pb.AppendSessionRequest(session_id="ok/no"), "session_id"),
        ("AppendSession", pb.AppendSessionRequest(session_id="s", messages_json=["not json"]), "messages_json[0]"),
        ("AppendSession", pb.AppendSessionRequest(session_id="s", messages_json=["{}", "[1]"]), "messages_json[1]"),
        ("AppendSession", pb.AppendSessionRequest(session_id="s", max_messages=-2), "max_messages"),
    ],
)
async def test_invalid_arguments(cache: Running, method: str, request_: object, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(cache.stub, method)(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


async def test_valid_session_id_characters(cache: Running) -> None:
    sid = "Ab0._:-" + "z" * 121  # every allowed character class, 128 long
    reply = await cache.stub.AppendSession(pb.AppendSessionRequest(session_id=sid, messages_json=["{}"]))
    assert reply.exists and reply.session_id == sid


async def test_metrics_move(cache: Running) -> None:
    def op(operation: str, namespace: str, result: str) -> float:
        return sample("fsagent_cache_operations_total", operation=operation, cache_namespace=namespace, result=result)

    ops = [("put", "content", "stored"), ("get", "content", "hit"), ("get", "content", "miss"),
           ("get", "content", "stale"), ("session_append", "sessions", "stored"),
           ("session_get", "sessions", "hit"), ("session_get", "sessions", "miss"),
           ("session_delete", "sessions", "ok"), ("clear", "search", "ok"), ("invalidate", "all", "ok")]
    before = {o: op(*o) for o in ops}
    duration_before = sample("fsagent_cache_operation_duration_seconds_count", operation="get", cache_namespace="content")

    await put(cache, "m")
    await get(cache, "m")
    await get(cache, "absent")
    await get(cache, "m", b"changed")
    await cache.stub.AppendSession(pb.AppendSessionRequest(session_id="m", messages_json=["{}"]))
    await cache.stub.GetSession(pb.GetSessionRequest(session_id="m"))
    await cache.stub.GetSession(pb.GetSessionRequest(session_id="absent"))
    await cache.stub.DeleteSession(pb.DeleteSessionRequest(session_id="m"))
    await cache.stub.Clear(pb.ClearRequest(namespace="search"))
    await cache.stub.Invalidate(pb.InvalidateRequest(path_prefix="x", reason="manual"))

    assert {o: op(*o) - before[o] for o in ops} == {o: 1.0 for o in ops}
    assert sample("fsagent_cache_operation_duration_seconds_count", operation="get", cache_namespace="content") - duration_before == 3
    # The shared interceptor counts gRPC codes, including refusals.
    refused = sample("fsagent_grpc_server_handled_total", grpc_service="fsagent.v1.Cache", grpc_method="Get",
                     grpc_code="INVALID_ARGUMENT")
    with pytest.raises(grpc.aio.AioRpcError):
        await get(cache, "k", ns="nope")
    assert sample("fsagent_grpc_server_handled_total", grpc_service="fsagent.v1.Cache", grpc_method="Get",
                  grpc_code="INVALID_ARGUMENT") - refused == 1


async def test_size_gauges_at_scrape_time(cache: Running) -> None:
    cache_metrics.bind_store(cache.store)
    try:
        await put(cache, "g1", b"x" * 1000)
        await put(cache, "g2", b"x" * 1000, ns="search")
        await cache.stub.AppendSession(pb.AppendSessionRequest(session_id="g", messages_json=["{}"]))
        cache_metrics.GAUGES.bind(cache.store)  # drop the remembered snapshot
        assert sample("fsagent_cache_entries", cache_namespace="content") == 1
        assert sample("fsagent_cache_entries", cache_namespace="search") == 1
        assert sample("fsagent_sessions_active") == 1
        assert sample("fsagent_cache_size_bytes", cache_namespace="content") > 1000
        assert sample("fsagent_cache_size_limit_bytes") == cache.store.size_limit
        assert sample("fsagent_cache_volume_bytes") > 0
    finally:
        cache_metrics.bind_store(None)
    assert REGISTRY.get_sample_value("fsagent_cache_size_limit_bytes") is None


async def test_get_hit_latency(cache: Running) -> None:
    """p50 of a Get hit over loopback gRPC (printed; run with -s to see it)."""
    await put(cache, "bench", b"r" * 2048)
    for _ in range(50):  # warm up the channel and the worker threads
        await get(cache, "bench")
    samples = []
    for _ in range(1000):
        started = time.perf_counter()
        reply = await get(cache, "bench")
        samples.append(time.perf_counter() - started)
        assert reply.result == R.HIT
    samples.sort()
    p50, p99 = statistics.median(samples), samples[int(len(samples) * 0.99)]
    print(f"\nCache.Get hit over gRPC: p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms (n=1000)")
    assert p50 < 0.05
