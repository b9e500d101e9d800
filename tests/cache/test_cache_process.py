"""`python -m fsagent.cache` as a real process: serves, reports health and metrics, stops on SIGTERM,
and a second process on the same directory finds what the first one stored."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from fsagent.common import grpcutil
from fsagent.v1 import cache_pb2 as pb
from fsagent.v1 import cache_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CacheProcess:
    def __init__(self, cache_dir: Path, log_path: Path) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        env = {
            **os.environ,
            "FSAGENT_CACHE_DIR": str(cache_dir),
            "FSAGENT_CACHE_SIZE_LIMIT": str(8 * 1024 * 1024),
            "FSAGENT_CACHE_ADDR": f"127.0.0.1:{self.port}",
            "FSAGENT_CACHE_METRICS_PORT": str(self.metrics_port),
            "FSAGENT_BIND_HOST": "127.0.0.1",
            "FSAGENT_SHUTDOWN_GRACE": "2",
        }
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fsagent.cache"], env=env, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=cache_dir.parent,
        )
        self.address = f"127.0.0.1:{self.port}"

    async def wait_serving(self, timeout: float = 20.0) -> None:
        channel = grpcutil.channel(self.address)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while not await grpcutil.check_health(channel, timeout=0.5, service="fsagent.v1.Cache"):
                assert self.proc.poll() is None, self.log_path.read_text()
                assert asyncio.get_running_loop().time() < deadline, "cache never became SERVING"
                await asyncio.sleep(0.1)
        finally:
            await channel.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


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
