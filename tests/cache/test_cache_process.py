"""`python -m fsagent.cache` as a real process: serves, reports health and metrics, stops on SIGTERM,
and a second process on the same directory finds what the first one stored."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from fsagent.common import grpcutil
from fsagent.v1 import cache_pb2 as pb
from fsagent.v1 import cache_pb2_grpc
from tests.cache.processes import CacheProcess


async def test_service_process_serves_and_survives_restart(tmp_path: Path) -> None:
    cache_dir = tmp_path / "store"
    first = CacheProcess(cache_dir, tmp_path / "first.log")
    try:
        await first.wait_serving()
        async with grpcutil.channel(first.address) as channel:
            stub = cache_pb2_grpc.CacheStub(channel)
            put = pb.CachePutRequest(namespace="content", key="cat:a.md", value=b"body", fingerprint=b"f",
                                     scopes=["a.md"])
            assert (await stub.Put(put)).stored
            assert (await stub.Get(pb.CacheGetRequest(namespace="content", key="cat:a.md", fingerprint=b"f"))).result \
                == pb.CacheGetResponse.HIT
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{first.metrics_port}/metrics")).text
        assert 'fsagent_cache_operations_total{cache_namespace="content",operation="get",result="hit"} 1.0' in text
        assert 'fsagent_cache_entries{cache_namespace="content"} 1.0' in text
        assert "fsagent_cache_size_limit_bytes 8.388608e+06" in text
        assert first.stop() == 0
    finally:
        first.kill()
    lines = [json.loads(line) for line in first.log_path.read_text().splitlines() if line.startswith("{")]
    opened = next(line for line in lines if line["msg"] == "cache store open")
    assert opened["directory"] == str(cache_dir.resolve()) and opened["size_limit_bytes"] == 8 * 1024 * 1024
    assert any(line["msg"] == "cache store closed" for line in lines)

    second = CacheProcess(cache_dir, tmp_path / "second.log")
    try:
        await second.wait_serving()
        async with grpcutil.channel(second.address) as channel:
            stub = cache_pb2_grpc.CacheStub(channel)
            reply = await stub.Get(pb.CacheGetRequest(namespace="content", key="cat:a.md", fingerprint=b"f"))
            assert (reply.result, reply.value) == (pb.CacheGetResponse.HIT, b"body")
        assert second.stop() == 0
    finally:
        second.kill()
