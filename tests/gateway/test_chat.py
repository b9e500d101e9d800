"""POST /api/chat, /api/chat/stream and the session routes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fsagent.common import propagation

TOOL_RESULT_KEYS = {
    "success", "stdout", "stderr", "return_code", "command", "error", "cached", "truncated", "duration",
}
CHAT_KEYS = {
    "response", "session_id", "tool_calls", "tool_results", "iterations", "usage", "trace_id", "model",
    "warnings",
}


async def test_chat_reply_has_the_documented_shape(client, upstreams):
    r = await client.post("/api/chat", json={"message": "what does the handbook say?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == CHAT_KEYS
    assert body["response"] == "The handbook says hello."
    assert body["session_id"] == "s-new"
    assert body["tool_calls"] == [
        {"id": "c1", "name": "grep", "arguments": {"pattern": "hello", "path": "."}},
        {"id": "c2", "name": "cat", "arguments": "not json"},  # unparseable: the raw string
    ]
    [result] = body["tool_results"]
    assert result["tool_call_id"] == "c1" and result["tool_name"] == "grep"
    assert set(result["result"]) == TOOL_RESULT_KEYS
    assert result["result"] == {
        "success": True, "stdout": "a.md:1:hello", "stderr": "", "return_code": 0,
        "command": "rg -- hello .", "error": "", "cached": True, "truncated": False, "duration": 0.25,
    }
    assert body["iterations"] == 2
    assert body["usage"] == {"input_tokens": 120, "output_tokens": 30}
    assert body["model"] == "offline"
    assert body["warnings"] == [] and "x-fsagent-warnings" not in r.headers
    # One trace id: the header, the body, and the one the agent ran under.
    assert body["trace_id"] == r.headers["x-trace-id"] == upstreams.agent.trace_ids[-1]
    assert len(r.headers["x-request-id"]) >= 16
    sent = upstreams.agent.requests[-1]
    assert sent.message == "what does the handbook say?" and sent.session_id == "" and sent.user_id == ""


async def test_callers_traceparent_is_continued(client, upstreams):
    trace_id, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = await client.post(
        "/api/chat", json={"message": "hi", "session_id": "known"},
        headers={"traceparent": f"00-{trace_id}-{parent_span}-01", "x-request-id": "req-123"},
    )
    assert r.status_code == 200
    assert r.headers["x-trace-id"] == trace_id and r.json()["trace_id"] == trace_id
    assert r.headers["x-request-id"] == "req-123"
    seen = propagation.parse_traceparent(upstreams.agent.traceparents[-1])
    assert seen is not None and seen.trace_id == trace_id
    assert seen.span_id != parent_span  # the gateway is a span of its own
    assert upstreams.agent.requests[-1].session_id == "known"


@pytest.mark.parametrize("header", ["garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", ""])
async def test_invalid_traceparent_starts_a_new_trace(client, upstreams, header):
    r = await client.post(
        "/api/chat", json={"message": "hi"}, headers={"traceparent": header, "x-request-id": "bad id!"}
    )
    assert r.status_code == 200
    trace_id = r.headers["x-trace-id"]
    assert len(trace_id) == 32 and trace_id != "0" * 32
    assert r.json()["trace_id"] == trace_id == upstreams.agent.trace_ids[-1]
    assert r.headers["x-request-id"] != "bad id!"


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"message": ""}, "message"),
        ({"message": "x" * 201}, "message"),  # over max_message_chars (200 in these tests)
        ({}, "message"),
        ({"message": "hi", "session_id": "has space"}, "session_id"),
        ({"message": "hi", "session_id": "x" * 129}, "session_id"),
        ({"message": 5}, "message"),
    ],
)
async def test_chat_validation(client, upstreams, error_shape, payload, field):
    r = await client.post("/api/chat", json=payload)
    error = error_shape(r, 422, "validation_error")
    assert f"'{field}'" in error["message"]
    assert "x" * 50 not in error["message"]  # the input is not echoed
    assert upstreams.agent.requests == []


async def test_malformed_json_is_422(client, error_shape):
    r = await client.post("/api/chat", content=b"{not json", headers={"content-type": "application/json"})
    error_shape(r, 422, "validation_error")


async def test_stream_events_in_order_each_with_session_id(client, sse):
    r = await client.post("/api/chat/stream", json={"message": "hi", "session_id": "known"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert [name for name, _ in events] == ["status", "tool_call", "tool_result", "token", "token", "done"]
    assert all(data["session_id"] == "known" for _, data in events)  # even when the agent left it out
    assert events[0][1] == {"session_id": "known", "message": "thinking", "iteration": 1}
    assert events[1][1]["arguments"] == {"pattern": "hello", "path": "."}
    assert set(events[2][1]["result"]) >= {"success", "stdout", "duration"}
    assert "".join(data["text"] for name, data in events if name == "token") == "The handbook says hello."
    done = events[-1][1]
    assert done["response"] == "The handbook says hello."
    assert done["trace_id"] == r.headers["x-trace-id"]
    assert {"tool_calls", "tool_results", "usage", "iterations", "model"} <= set(done)


async def test_stream_failure_before_first_event_is_a_plain_error(client, error_shape):
    r = await client.post("/api/chat/stream", json={"message": "fail:NOT_FOUND:no such session"})
    assert error_shape(r, 404, "not_found")["message"] == "no such session"


async def test_stream_failure_midway_is_an_error_event(client, sse):
    r = await client.post("/api/chat/stream", json={"message": "break", "session_id": "known"})
    assert r.status_code == 200
    events = sse(r.text)
    assert [name for name, _ in events] == ["status", "error"]
    assert events[-1][1] == {"session_id": "known", "code": "unavailable", "message": "agent unavailable"}
    assert "10.1.2.3" not in r.text


async def test_client_disconnect_cancels_the_agent_call(client, upstreams):
    async with client.stream("POST", "/api/chat/stream", json={"message": "hang"}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                break  # got the status event; now walk away
    await asyncio.wait_for(upstreams.agent.stream_cancelled.wait(), 5)


async def test_client_leaving_a_plain_chat_cancels_the_agent_call(client, upstreams):
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/api/chat", json={"message": "hang"}, timeout=0.5)  # the client gives up
    await asyncio.wait_for(upstreams.agent.chat_cancelled.wait(), 5)


async def test_session_routes(client, upstreams, error_shape):
    r = await client.get("/api/chat/sessions/known")
    assert r.status_code == 200
    body = r.json()
    assert body["session_id"] == "known" and body["message_count"] == 2
    assert body["created"] == 1.0 and body["updated"] == 2.0
    assert body["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

    r = await client.get("/api/chat/sessions/known/history")
    assert r.status_code == 200 and r.json() == body["messages"]

    r = await client.delete("/api/chat/sessions/known")
    assert r.status_code == 200 and r.json() == {"session_id": "known", "deleted": True}
    for method, url in [
        ("GET", "/api/chat/sessions/known"),
        ("GET", "/api/chat/sessions/known/history"),
        ("DELETE", "/api/chat/sessions/known"),
    ]:
        error_shape(await client.request(method, url), 404, "not_found")
    error_shape(await client.get("/api/chat/sessions/bad%20id"), 422, "validation_error")
