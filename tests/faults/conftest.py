"""Fault tests: the four services as real processes (LocalStack), the real `openai` client against
the scripted OpenAI-compatible server told to misbehave, services killed or frozen on purpose.

What every test here checks, as a user would see it: the HTTP status, the body's error code, the
headers (Retry-After, X-Fsagent-Warnings), how long it took against the chat's time limit, that a
failed turn saved nothing, and that no service logged a traceback for it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from fsagent.cli.localstack import LocalStack
from tests.integration.test_e2e_offline import parse_sse

__all__ = ["parse_sse", "error_of", "history", "wait_for_ready", "log_tracebacks", "stream_events", "LogMark"]


def error_of(reply: httpx.Response) -> dict[str, str]:
    """The one error shape, with nothing internal in it."""
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    for leak in ("Traceback", "File \"", "127.0.0.1", "sk-test", "debug_error_string"):
        assert leak not in reply.text, reply.text
    return body["error"]


def history(stack: LocalStack, session_id: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{stack.base_url}/api/chat/sessions/{session_id}/history", timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def stream_events(stack: LocalStack, payload: dict[str, Any], timeout: float = 30) -> tuple[httpx.Response, list[tuple[str, dict[str, Any]]]]:
    with httpx.stream("POST", f"{stack.base_url}/api/chat/stream", json=payload, timeout=timeout) as reply:
        text = reply.read().decode()
    events = parse_sse(text) if reply.headers.get("content-type", "").startswith("text/event-stream") else []
    return reply, events


def wait_for_ready(stack: LocalStack, want: dict[str, str] | None = None, timeout: float = 30) -> dict[str, Any]:
    """Poll /ready until every dependency (or those in `want`) is in the wanted state."""
    want = want or {"agent": "serving", "sandbox": "serving", "cache": "serving"}
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{stack.base_url}/ready", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            body = {}
        if all(body.get("dependencies", {}).get(k) == v for k, v in want.items()):
            return body
        time.sleep(0.2)
    raise AssertionError(f"/ready never showed {want}: {body}")


class LogMark:
    """Where each service's log ended when the mark was taken, to read only what came after."""

    def __init__(self, stack: LocalStack, services: tuple[str, ...] = ("gateway", "agent")) -> None:
        self.stack = stack
        self.offsets = {s: self._size(s) for s in services}

    def _path(self, service: str) -> Path:
        path = self.stack.log_path(service)
        assert path is not None, "the stack must log to files"
        return path

    def _size(self, service: str) -> int:
        path = self._path(service)
        return path.stat().st_size if path.exists() else 0

    def since(self, service: str) -> list[dict[str, Any]]:
        path = self._path(service)
        with path.open("rb") as f:
            f.seek(self.offsets[service])
            lines = f.read().decode(errors="replace").splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append({"message": line})
        return records


def log_tracebacks(mark: LogMark) -> list[str]:
    """Log lines since `mark` that carry a traceback (JSON `exc_info`, or a plain Traceback line)."""
    found = []
    for service in mark.offsets:
        for record in mark.since(service):
            text = json.dumps(record)
            if "Traceback" in text or record.get("exc"):
                found.append(f"{service}: {text[:300]}")
    return found
