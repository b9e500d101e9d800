"""A real cache and sandbox (processes, real gRPC) over a copy of the sample documents, and a
helper that runs the `fsagent` command as a subprocess against them."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from fsagent.cli.localstack import LocalStack, Ports
from fsagent.common import grpcutil

REPO = Path(__file__).resolve().parents[2]
SIZE_LIMIT = 64 * 1024 * 1024


@dataclass
class Services:
    stack: LocalStack
    data: Path

    @property
    def sandbox_addr(self) -> str:
        return f"127.0.0.1:{self.stack.ports.sandbox}"

    @property
    def cache_addr(self) -> str:
        return f"127.0.0.1:{self.stack.ports.cache}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FSAGENT_")}
        env.update(FSAGENT_SANDBOX_ADDR=self.sandbox_addr, FSAGENT_CACHE_ADDR=self.cache_addr,
                   FSAGENT_LOG_LEVEL="WARNING")
        return env


def run_cli(*args: str, env: dict[str, str], stdin: int | None = subprocess.DEVNULL,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsagent.cli", *args], env=env, stdin=stdin, capture_output=True, text=True,
        timeout=timeout,
    )


async def _wait_serving(address: str, timeout: float = 30.0) -> None:
    channel = grpcutil.channel(address)
    try:
        deadline = time.monotonic() + timeout
        while not await grpcutil.check_health(channel, timeout=0.5):
            assert time.monotonic() < deadline, f"{address} never became SERVING"
            await asyncio.sleep(0.1)
    finally:
        await channel.close()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    tmp = tmp_path_factory.mktemp("cli")
    data = tmp / "data"
    shutil.copytree(REPO / "data", data)
    stack = LocalStack(
        data_root=data, cache_dir=tmp / "cache", ports=Ports.free(), log_dir=tmp / "logs",
        extra_env={"FSAGENT_LOG_LEVEL": "WARNING", "FSAGENT_CACHE_SIZE_LIMIT": str(SIZE_LIMIT)},
    )
    try:
        for service in ("cache", "sandbox"):
            stack.start_service(service)
        asyncio.run(_wait_serving(f"127.0.0.1:{stack.ports.cache}"))
        asyncio.run(_wait_serving(f"127.0.0.1:{stack.ports.sandbox}"))
        yield Services(stack, data)
    finally:
        stack.stop()
