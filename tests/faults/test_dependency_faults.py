"""The sandbox or the cache killed or frozen under a running stack (real processes, offline model).

Before: with the sandbox down, chats answered 200 with text built on `ERROR [sandbox_unavailable]`;
with the cache down, chats answered 200 and the turn was silently not saved (76 turns lost in one
kill test); /ready said ready throughout.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import httpx
import pytest

from fsagent.cli.localstack import LocalStack
from tests.faults.conftest import LogMark, error_of, history, log_tracebacks, stream_events, wait_for_ready
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.integration

QUESTION = "What is the VPN host name?"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = start_stack(tmp_path_factory.mktemp("dependency-faults"), {"FSAGENT_CHAT_TIMEOUT": "10", "FSAGENT_CHAT_RATE_LIMIT": ""})  # load from one address
    yield s
    s.stop()


@pytest.fixture
def healthy(stack: LocalStack) -> Iterator[LocalStack]:
    """The stack with every service running, before and after the test."""
    for service in ("cache", "sandbox"):
        proc = stack.processes.get(service)
        if proc is None or proc.poll() is not None:
            stack.start_service(service)
    wait_for_ready(stack)
    yield stack
    for service in ("cache", "sandbox"):
        proc = stack.processes.get(service)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a test that froze it
        else:
            stack.start_service(service)
    wait_for_ready(stack)


def chat(stack: LocalStack, **payload: Any) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/api/chat", json={"message": QUESTION, **payload}, timeout=30)


def new_session(stack: LocalStack) -> str:
    reply = chat(stack)
    assert reply.status_code == 200 and reply.json()["warnings"] == [], reply.text
    return reply.json()["session_id"]


def ready(stack: LocalStack) -> httpx.Response:
    return httpx.get(f"{stack.base_url}/ready", timeout=10)


# --- the sandbox ------------------------------------------------------------------------------


def test_sandbox_down_is_503_never_an_answer_built_on_the_failure(healthy: LocalStack) -> None:
    stack = healthy
    session = new_session(stack)
    mark = LogMark(stack)
    stack.stop_service("sandbox", sig=signal.SIGKILL)

    started = time.monotonic()
    reply = chat(stack, session_id=session)
    elapsed = time.monotonic() - started
    assert reply.status_code == 503, reply.text
    error = error_of(reply)
    assert error["code"] == "sandbox_unavailable" and "sandbox is unavailable" in error["message"]
    assert elapsed < 5, elapsed

    reply, events = stream_events(stack, {"message": QUESTION, "session_id": session})
    names = [name for name, _ in events]
    assert names == ["status", "tool_call", "tool_result", "error"], names  # the failed call, then the error
    assert events[2][1]["result"]["success"] is False
    assert events[-1][1]["code"] == "sandbox_unavailable"

    assert len(history(stack, session)) == 2  # neither failed turn was saved
    r = ready(stack)
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and r.json()["dependencies"]["sandbox"] == "unavailable"
    assert log_tracebacks(mark) == []


# --- the cache --------------------------------------------------------------------------------


def test_cache_down_answers_with_a_warning_and_refuses_to_continue_blind(healthy: LocalStack) -> None:
    stack = healthy
    session = new_session(stack)
    mark = LogMark(stack)
    stack.stop_service("cache", sig=signal.SIGKILL)

    # /ready: still serving chats, so still in the Service, but degraded.
    body = wait_for_ready(stack, {"cache": "unavailable"})
    assert body["status"] == "degraded"
    assert ready(stack).status_code == 200

    # A new conversation is answered, and says it was not saved.
    started = time.monotonic()
    reply = chat(stack)
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - started < 6
    assert "vpn.northwind.example.com" in reply.json()["response"]
    [warning] = reply.json()["warnings"]
    assert warning["code"] == "history_not_saved" and warning["component"] == "cache"
    assert reply.headers["x-fsagent-warnings"] == "history_not_saved"
    unsaved = reply.json()["session_id"]

    # The same on the stream: `done` carries the warning.
    _, events = stream_events(stack, {"message": QUESTION})
    assert events[-1][0] == "done" and [w["code"] for w in events[-1][1]["warnings"]] == ["history_not_saved"]

    # Continuing a conversation whose history cannot be read is refused (no silent fresh start).
    reply = chat(stack, session_id=session)
    assert reply.status_code == 503
    assert error_of(reply)["code"] == "history_unavailable"
    reply, events = stream_events(stack, {"message": QUESTION, "session_id": session})
    assert reply.status_code == 503 and error_of(reply)["code"] == "history_unavailable"

    # The session API names the store, not the agent.
    reply = httpx.get(f"{stack.base_url}/api/chat/sessions/{session}", timeout=10)
    assert reply.status_code == 503 and error_of(reply)["code"] == "session_store_unavailable"

    stack.start_service("cache")
    wait_for_ready(stack)
    assert ready(stack).json()["status"] == "ready"
    assert len(history(stack, session)) == 2  # the refused turn saved nothing
    assert httpx.get(f"{stack.base_url}/api/chat/sessions/{unsaved}", timeout=10).status_code == 404
    reply = chat(stack, session_id=session)
    assert reply.status_code == 200 and reply.json()["warnings"] == []
    assert len(history(stack, session)) == 4
    assert log_tracebacks(mark) == []


def test_a_frozen_cache_is_a_warning_within_the_time_limit(healthy: LocalStack) -> None:
    """A hung cache (SIGSTOP: connections open, no answers) costs at most the session timeout."""
    stack = healthy
    cache = stack.processes["cache"]
    os.kill(cache.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = chat(stack)
        elapsed = time.monotonic() - started
    finally:
        os.kill(cache.pid, signal.SIGCONT)
    assert reply.status_code == 200, reply.text
    assert [w["code"] for w in reply.json()["warnings"]] == ["history_not_saved"]
    assert elapsed < 8, elapsed


def test_no_turn_is_lost_silently_when_the_cache_is_killed_under_load(healthy: LocalStack) -> None:
    """The issue's kill test: every 200 without a warning must be in its session afterwards; a turn
    that was not saved must have said so."""
    stack = healthy
    replies: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int) -> None:
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                reply = client.post("/api/chat", json={"message": f"{QUESTION} ({n}.{i})"})
                with lock:
                    replies.append((reply.status_code, reply.json()))
                i += 1

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(worker, n) for n in range(4)]
        time.sleep(1.5)
        stack.stop_service("cache", sig=signal.SIGKILL)
        time.sleep(2.0)
        stack.start_service("cache")
        wait_for_ready(stack)
        time.sleep(1.0)
        stop.set()
        for future in futures:
            future.result()

    assert all(status == 200 for status, _ in replies), [r for r in replies if r[0] != 200][:3]
    reported = [body for _, body in replies if body["warnings"]]
    clean = [body for _, body in replies if not body["warnings"]]
    assert reported, "the cache was down for 2 s: some turns must have reported history_not_saved"
    assert clean, "turns before the kill and after the restart were saved"
    assert {w["code"] for body in reported for w in body["warnings"]} == {"history_not_saved"}
    lost = [body["session_id"] for body in clean
            if httpx.get(f"{stack.base_url}/api/chat/sessions/{body['session_id']}", timeout=10).status_code != 200]
    assert lost == [], f"{len(lost)} turns answered as saved are missing"
