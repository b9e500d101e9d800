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


# --- the agent's typed chat errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "code, wait, status, retry_after",
    [
        ("llm_rate_limited", "30", 429, "30"),
        ("llm_rate_limited", "0", 429, "10"),  # the endpoint did not say: a default wait
        ("llm_connection", "0", 503, None),
        ("llm_upstream", "0", 502, None),
        ("llm_auth", "0", 502, None),
        ("llm_bad_request", "0", 502, None),
        ("llm_timeout", "0", 504, None),
        ("tool_timeout", "0", 504, None),
        ("sandbox_unavailable", "0", 503, None),
        ("history_unavailable", "0", 503, None),
    ],
)
async def test_typed_agent_errors_keep_their_code(client, error_shape, code, wait, status, retry_after):
    r = await client.post("/api/chat", json={"message": f"typed:{code}:{wait}:the {code} message"})
    error = error_shape(r, status, code)
    assert error["message"] == f"the {code} message"  # the agent's message, written for callers
    assert r.headers.get("retry-after") == retry_after


async def test_an_untyped_internal_failure_stays_generic(client, error_shape):
    r = await client.post("/api/chat", json={"message": "typed:internal:0:internal error"})
    error_shape(r, 502, "upstream_error")


async def test_the_gateways_own_deadline_is_the_generic_504(gateway, error_shape):
    """Only an agent that does not answer at all gets `timeout` "agent did not answer in time"."""
    async with gateway(chat_timeout=0.3) as c:
        error = error_shape(await c.post("/api/chat", json={"message": "slow"}), 504, "timeout")
        assert error["message"] == "agent did not answer in time"


async def test_session_store_outage_is_named(client, error_shape, upstreams):
    r = await client.post("/api/chat", json={"message": "typed:session_store_unavailable:0:the session store is unavailable"})
    error_shape(r, 503, "session_store_unavailable")


# --- the same on the stream -------------------------------------------------------------------


async def test_a_stream_refused_at_once_is_a_plain_http_error(client, error_shape):
    r = await client.post("/api/chat/stream", json={"message": "error-first:history_unavailable", "session_id": "known"})
    error = error_shape(r, 503, "history_unavailable")
    assert error["message"] == "history_unavailable now"


async def test_a_stream_that_fails_later_ends_with_the_typed_error_event(client, sse):
    r = await client.post("/api/chat/stream", json={"message": "error-late:llm_rate_limited:7", "session_id": "known"})
    assert r.status_code == 200
    events = sse(r.text)
    assert [name for name, _ in events] == ["status", "error"]  # never `done`
    assert events[-1][1] == {
        "session_id": "known", "code": "llm_rate_limited", "message": "llm_rate_limited late", "retry_after": 7,
    }


async def test_a_typed_abort_midway_becomes_the_typed_event(client, sse):
    r = await client.post("/api/chat/stream", json={"message": "typed:llm_upstream:0:malformed"})
    error = r.json()["error"]  # before the first event: a plain error
    assert r.status_code == 502 and error == {"code": "llm_upstream", "message": "malformed"}


# --- warnings -----------------------------------------------------------------------------------


async def test_an_answer_not_saved_says_so(client, sse):
    r = await client.post("/api/chat", json={"message": "unsaved"})
    assert r.status_code == 200
    assert r.headers["x-fsagent-warnings"] == "history_not_saved"
    [warning] = r.json()["warnings"]
    assert warning["code"] == "history_not_saved" and warning["component"] == "cache"
    assert "not saved" in warning["message"]
    r = await client.post("/api/chat/stream", json={"message": "unsaved"})
    done = sse(r.text)[-1]
    assert done[0] == "done" and [w["code"] for w in done[1]["warnings"]] == ["history_not_saved"]
