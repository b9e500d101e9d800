"""Failure of a dependency: the cache is an optimisation, chat must survive without it."""

from __future__ import annotations

import signal
import time
from typing import Iterator

import httpx
import pytest

from fsagent.cli.localstack import LocalStack
from tests.integration.conftest import start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = start_stack(tmp_path_factory.mktemp("resilience"))
    yield s
    s.stop()


def test_chat_answers_with_the_cache_killed_and_recovers(stack: LocalStack) -> None:
    url = f"{stack.base_url}/api/chat"
    assert httpx.post(url, json={"message": "What is the VPN host name?"}, timeout=30).status_code == 200
    stack.stop_service("cache", sig=signal.SIGKILL)
    started = time.monotonic()
    reply = httpx.post(url, json={"message": "What is the VPN host name?"}, timeout=30)
    elapsed = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    assert "vpn.northwind.example.com" in reply.json()["response"]
    assert elapsed < 10, f"chat without cache took {elapsed:.1f}s"
    stack.start_service("cache")
    deadline = time.monotonic() + 20
    cached = False
    while time.monotonic() < deadline and not cached:
        body = httpx.post(url, json={"message": "What is the VPN host name?"}, timeout=30).json()
        cached = any(r["result"]["cached"] for r in body["tool_results"])
        time.sleep(0.3)
    assert cached, "the sandbox did not start using the cache again after it came back"


def test_sigterm_stops_every_service_cleanly(tmp_path_factory: pytest.TempPathFactory) -> None:
    s = start_stack(tmp_path_factory.mktemp("shutdown"))
    codes = s.stop(timeout=20)
    assert codes == {"gateway": 0, "agent": 0, "sandbox": 0, "cache": 0}
