"""Every failure is `{"error": {"code", "message"}}` with the right status and nothing internal."""

from __future__ import annotations

import logging

import pytest


@pytest.mark.parametrize(
    "method, url, json, status, code",
    [
        ("GET", "/api/documents/secret/keys.md", None, 403, "permission_denied"),
        ("GET", "/api/documents/..%2Fetc%2Fpasswd", None, 400, "invalid_argument"),
        ("GET", "/api/documents/nope.md", None, 404, "not_found"),
        ("POST", "/api/documents/a.md", {"content": "x"}, 409, "already_exists"),
        ("PUT", "/api/documents/a.md", {"content": "x" * 100_001}, 413, "payload_too_large"),
        ("GET", "/api/documents/pic.png", None, 415, "unsupported_media_type"),
        ("POST", "/api/chat", {"message": "fail:FAILED_PRECONDITION:session is busy"}, 400, "failed_precondition"),
        ("POST", "/api/chat", {"message": "fail:INVALID_ARGUMENT:bad session"}, 400, "invalid_argument"),
        ("POST", "/api/chat", {"message": "fail:UNAVAILABLE:connect to 10.1.2.3:50052 failed"}, 503, "unavailable"),
        ("POST", "/api/chat", {"message": "fail:DEADLINE_EXCEEDED:llm"}, 504, "timeout"),
        ("POST", "/api/chat", {"message": "fail:UNAUTHENTICATED:llm key rejected"}, 502, "upstream_error"),
        ("POST", "/api/chat", {"message": "crash"}, 502, "upstream_error"),
        ("GET", "/api/nothing/here", None, 404, "not_found"),
        ("PATCH", "/api/documents/a.md", None, 405, "method_not_allowed"),
    ],
)
async def test_error_mapping(client, error_shape, method, url, json, status, code):
    r = await client.request(method, url, json=json)
    error = error_shape(r, status, code)
    assert r.headers["x-trace-id"] and r.headers["x-request-id"]
    if code == "unavailable":
        assert error["message"] == "agent unavailable"
    if code == "upstream_error":
        assert "llm key" not in error["message"] and "exploded" not in error["message"]


async def test_caller_facing_details_pass_through(client, error_shape):
    error = error_shape(await client.get("/api/documents/nope.md"), 404)
    assert error["message"] == "nope.md: no such document"


async def test_upstream_down_says_which_one(gateway, dead_addr, error_shape):
    async with gateway(agent_addr=dead_addr) as c:
        error = error_shape(await c.post("/api/chat", json={"message": "hi"}), 503, "unavailable")
        assert error["message"] == "agent unavailable"
        error = error_shape(await c.post("/api/chat/stream", json={"message": "hi"}), 503, "unavailable")
        assert error["message"] == "agent unavailable"
    async with gateway(sandbox_addr=dead_addr) as c:
        error = error_shape(await c.get("/api/documents"), 503, "unavailable")
        assert error["message"] == "sandbox unavailable"
        assert dead_addr.split(":")[1] not in error["message"]


async def test_chat_deadline_is_504(gateway, error_shape):
    async with gateway(chat_timeout=0.3) as c:
        error = error_shape(await c.post("/api/chat", json={"message": "slow"}), 504, "timeout")
        assert error["message"] == "agent did not answer in time"


async def test_unexpected_exception_is_a_generic_500(client, monkeypatch, error_shape, caplog):
    from fsagent.gateway.routes import chat

    def broken(reply):
        raise RuntimeError("cannot open /srv/secret/config.yaml")

    monkeypatch.setattr(chat, "chat_json", broken)
    with caplog.at_level(logging.INFO):
        r = await client.post("/api/chat", json={"message": "hi"})
    error = error_shape(r, 500, "internal_error")
    assert error["message"] == "internal server error"
    assert r.headers["x-trace-id"]
    # The traceback went to the log, with the request's trace id.
    [record] = [rec for rec in caplog.records if rec.getMessage() == "unhandled error"]
    assert record.exc_info and "config.yaml" in str(record.exc_info[1])
    [access] = [rec for rec in caplog.records if rec.name == "fsagent.gateway.access"]
    assert access.status == 500 and access.route == "/api/chat"
