"""The offline model through all four real services: answers, citations, sessions, streaming."""

from __future__ import annotations

import json
import re
import time

import httpx

from fsagent.cli.localstack import LocalStack


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events, name, data = [], None, []
    for line in text.splitlines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data.append(line.split(":", 1)[1].strip())
        elif not line.strip() and data:
            events.append((name or "message", json.loads("\n".join(data))))
            name, data = None, []
    if data:
        events.append((name or "message", json.loads("\n".join(data))))
    return events


def test_password_question_is_answered_with_citations(client: httpx.Client) -> None:
    reply = client.post("/api/chat", json={"message": "What are the password rules?"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "at least 14 characters" in body["response"]
    assert re.search(r"policies/password-policy\.md:\d+", body["response"])
    assert body["tool_calls"] and body["tool_calls"][0]["name"] == "grep"
    assert {c["name"] for c in body["tool_calls"][1:]} <= {"cat", "head", "preview"}
    assert len(body["tool_results"]) == len(body["tool_calls"])
    assert all(r["result"]["success"] for r in body["tool_results"])
    assert body["iterations"] == 3
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    assert re.fullmatch(r"[0-9a-f]{32}", body["trace_id"])
    assert reply.headers["x-trace-id"] == body["trace_id"]
    assert body["model"] == "fsagent-offline"


def test_caller_traceparent_is_continued(client: httpx.Client) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    reply = client.post(
        "/api/chat",
        json={"message": "What is the VPN host name?"},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["trace_id"] == trace_id == reply.headers["x-trace-id"]
    assert "vpn.northwind.example.com" in reply.json()["response"]


def test_session_keeps_history(client: httpx.Client) -> None:
    first = client.post("/api/chat", json={"message": "How many vacation days do employees get?"}).json()
    session = first["session_id"]
    assert "25 vacation days" in first["response"]
    second = client.post("/api/chat", json={"message": "What is the meal expense limit?", "session_id": session})
    assert second.status_code == 200 and second.json()["session_id"] == session
    history = client.get(f"/api/chat/sessions/{session}/history")
    assert history.status_code == 200
    messages = history.json()
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert "vacation" in messages[0]["content"]
    assert client.delete(f"/api/chat/sessions/{session}").status_code in (200, 204)
    assert client.get(f"/api/chat/sessions/{session}").status_code == 404


def test_stream_yields_events_in_order(client: httpx.Client) -> None:
    with client.stream("POST", "/api/chat/stream", json={"message": "What are the password rules?"}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = "".join(reply.iter_text())
    events = parse_sse(text)
    names = [name for name, _ in events]
    assert names[0] == "status"
    assert names[-1] == "done"
    assert "tool_call" in names and "tool_result" in names and "token" in names
    assert names.index("tool_call") < names.index("tool_result") < names.index("token")
    session_ids = {data["session_id"] for _, data in events}
    assert len(session_ids) == 1 and "" not in session_ids
    done = events[-1][1]
    assert re.fullmatch(r"[0-9a-f]{32}", done["trace_id"])
    streamed = "".join(data["text"] for name, data in events if name == "token")
    assert streamed == done["response"]


def test_documents_round_trip(client: httpx.Client) -> None:
    path = "notes/round-trip.md"
    assert client.post(f"/api/documents/{path}", json={"content": "first version\n"}).status_code == 201
    again = client.post(f"/api/documents/{path}", json={"content": "other\n"})
    assert again.status_code == 409 and again.json()["error"]["code"]
    assert client.get(f"/api/documents/{path}").json()["content"] == "first version\n"
    assert client.put(f"/api/documents/{path}", json={"content": "second version\n"}).status_code == 200
    assert client.get(f"/api/documents/{path}").json()["content"] == "second version\n"
    listing = client.get("/api/documents", params={"path": "notes", "recursive": "true"}).json()
    assert path in json.dumps(listing)
    upload = client.post("/api/documents/upload", files={"file": ("up.txt", b"uploaded line\n")},
                         data={"path": "notes"})
    assert upload.status_code in (200, 201), upload.text
    assert client.get("/api/documents/notes/up.txt").json()["content"] == "uploaded line\n"
    assert client.delete(f"/api/documents/{path}").status_code in (200, 204)
    missing = client.get(f"/api/documents/{path}")
    assert missing.status_code == 404
    assert set(missing.json()) == {"error"} and "Traceback" not in missing.text


def test_a_changed_document_is_seen_by_the_next_tool_call(client: httpx.Client) -> None:
    path = "notes/zebra.md"
    client.delete(f"/api/documents/{path}")
    assert client.post(f"/api/documents/{path}", json={"content": "The zebra access code is 4242.\n"}).status_code == 201
    first = client.post("/api/chat", json={"message": "What is the zebra access code?"}).json()
    assert "4242" in first["response"]
    assert client.put(f"/api/documents/{path}", json={"content": "The zebra access code is 9876.\n"}).status_code == 200
    second = client.post("/api/chat", json={"message": "What is the zebra access code?"}).json()
    assert "9876" in second["response"] and "4242" not in second["response"]


def test_bad_input_gets_the_error_shape(client: httpx.Client) -> None:
    for reply, status in [
        (client.post("/api/chat", json={"message": ""}), 422),
        (client.post("/api/chat", json={"message": "hi", "session_id": "../../etc"}), 422),
        (client.post("/api/chat", content=b"{not json", headers={"content-type": "application/json"}), 422),
        (client.get("/api/documents/../../etc/passwd"), None),
        (client.get("/api/documents/no/such/file.md"), 404),
    ]:
        if status:
            assert reply.status_code == status, reply.text
        assert reply.status_code >= 400
        assert set(reply.json()) == {"error"}
        assert {"code", "message"} <= set(reply.json()["error"])
        assert "Traceback" not in reply.text and "/tmp/" not in reply.text


def test_health_ready_docs_metrics(client: httpx.Client, offline_stack: LocalStack) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    assert client.get("/docs").status_code == 200
    # Metrics never on the public port: 404 in the one error shape there, the series on the metrics port.
    public = client.get("/metrics")
    assert public.status_code == 404 and public.json()["error"]["code"] == "not_found", public.text
    assert "fsagent_" not in public.text
    urls = offline_stack.ports.metrics_urls()
    assert urls["gateway"] != f"{offline_stack.base_url}/metrics"
    wanted = ('fsagent_http_requests_total{method="GET",route="/ready",status="200"}',
              'fsagent_http_requests_total{method="GET",route="unmatched",status="404"}')
    deadline = time.monotonic() + 10  # a request is recorded after its last byte: poll a moment
    gateway = httpx.get(urls["gateway"], timeout=5).text
    while not all(w in gateway for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.05)
        gateway = httpx.get(urls["gateway"], timeout=5).text
    for series in wanted:
        assert series in gateway, series
    for service, url in urls.items():
        assert f'fsagent_build_info{{component="{service}",' in httpx.get(url, timeout=5).text, service
