"""`python -m fsagent.cache` as a real process, for the tests that need one (restart, repair)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fsagent.common import grpcutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CacheProcess:
    def __init__(self, cache_dir: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.cache_dir = cache_dir
        full_env = {
            **os.environ,
            "FSAGENT_CACHE_DIR": str(cache_dir),
            "FSAGENT_CACHE_SIZE_LIMIT": str(8 * 1024 * 1024),
            "FSAGENT_CACHE_ADDR": f"127.0.0.1:{self.port}",
            "FSAGENT_CACHE_METRICS_PORT": str(self.metrics_port),
            "FSAGENT_BIND_HOST": "127.0.0.1",
            "FSAGENT_SHUTDOWN_GRACE": "2",
            **(env or {}),
        }
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fsagent.cache"], env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=cache_dir.parent,
        )
        self.address = f"127.0.0.1:{self.port}"

    async def wait_serving(self, timeout: float = 20.0) -> float:
        """Seconds until the process reported SERVING."""
        channel = grpcutil.channel(self.address)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while not await grpcutil.check_health(channel, timeout=0.5, service="fsagent.v1.Cache"):
                assert self.proc.poll() is None, self.log_path.read_text()
                assert loop.time() - started < timeout, "cache never became SERVING"
                await asyncio.sleep(0.05)
        finally:
            await channel.close()
        return loop.time() - started

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

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text

    def metric(self, name: str, **labels: str) -> float | None:
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]
