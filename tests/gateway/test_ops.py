"""Probes, metrics, access logs, API keys and the OpenAPI docs."""

from __future__ import annotations

import logging
import re

import pytest

from fsagent.common import grpcutil


async def test_health(client):
    r = await client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_ready_when_both_serve(client):
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "dependencies": {"agent": "serving", "sandbox": "serving"}}


async def test_not_ready_when_a_dependency_is_not_serving(client, upstreams):
    await grpcutil.set_serving(upstreams.sandbox_health, ["fsagent.v1.Sandbox"], False)
    try:
        r = await client.get("/ready")
    finally:
        await grpcutil.set_serving(upstreams.sandbox_health, ["fsagent.v1.Sandbox"], True)
    assert r.status_code == 503
    assert r.json() == {"status": "not_ready", "dependencies": {"agent": "serving", "sandbox": "unavailable"}}


async def test_not_ready_when_a_dependency_is_down(gateway, dead_addr):
    async with gateway(agent_addr=dead_addr) as c:
        r = await c.get("/ready")
        assert r.status_code == 503
        assert r.json()["dependencies"] == {"agent": "unavailable", "sandbox": "serving"}
        assert r.elapsed.total_seconds() < 2.5  # 1 s per check, run concurrently
        r = await c.get("/health")
        assert r.status_code == 200  # alive even when a dependency is not


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


async def test_metrics_use_route_templates_never_raw_paths(client):
    await client.get("/api/documents/dir/b.md")
    await client.get("/api/documents/nope.md")
    await client.get("/not/a/route/at/all")
    await client.get("/api/stream/file/a.md")
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    requests = _samples(text, "fsagent_http_requests_total")
    assert 'fsagent_http_requests_total{method="GET",route="/api/documents/{path:path}",status="200"}' in text
    assert 'fsagent_http_requests_total{method="GET",route="/api/documents/{path:path}",status="404"}' in text
    assert 'fsagent_http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert any('route="/api/stream/file/{path:path}"' in line for line in requests)
    for family in ("fsagent_http_requests_total", "fsagent_http_request_duration_seconds_bucket",
                   "fsagent_http_request_size_bytes_bucket", "fsagent_http_response_size_bytes_bucket",
                   "fsagent_http_requests_in_progress"):
        lines = _samples(text, family)
        assert lines, family
        for line in lines:
            route = re.search(r'route="([^"]*)"', line).group(1)
            assert route == "unmatched" or route.startswith("/"), line
            assert "b.md" not in line and "nope.md" not in line and "/not/a/route" not in line, line
    assert 'fsagent_http_requests_in_progress{method="GET",route="/metrics"} 1.0' in text
    assert 'fsagent_build_info{component="gateway",' in text
    assert "fsagent_grpc_client_handled_total" in text  # the shared gRPC client metrics


async def test_metrics_openmetrics_has_trace_exemplars(client):
    r = await client.get("/api/documents/dir/b.md")
    trace_id = r.headers["x-trace-id"]
    r = await client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")
    exemplars = [
        line for line in r.text.splitlines()
        if line.startswith("fsagent_http_request_duration_seconds_bucket")
        and 'route="/api/documents/{path:path}"' in line and "# {" in line
    ]
    assert any(f'trace_id="{trace_id}"' in line for line in exemplars), exemplars


async def test_one_access_log_line_per_request(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="fsagent.gateway.access"):
        r = await client.get("/api/documents/dir/b.md", headers={"x-request-id": "abc-1"})
        await client.get("/health")
    lines = [rec for rec in caplog.records if rec.name == "fsagent.gateway.access"]
    assert len(lines) == 2
    first = lines[0]
    assert first.levelno == logging.INFO
    assert (first.method, first.route, first.path, first.status) == (
        "GET", "/api/documents/{path:path}", "/api/documents/dir/b.md", 200
    )
    assert first.request_id == "abc-1" and first.response_bytes == len(r.content)
    assert first.duration_ms >= 0
    assert lines[1].route == "/health" and lines[1].levelno == logging.DEBUG  # probes stay quiet


async def test_access_log_is_json_with_trace_id(client, capsys):
    from fsagent.common.logs import JsonFormatter
    import json

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter("gateway"))
    logger = logging.getLogger("fsagent.gateway.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        r = await client.get("/api/documents/dir/b.md")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    assert line["msg"] == "request" and line["service"] == "gateway"
    assert line["trace_id"] == r.headers["x-trace-id"] and line["status"] == 200


@pytest.mark.parametrize("use_bearer", [True, False])
async def test_api_keys(gateway, upstreams, error_shape, use_bearer):
    async with gateway(api_keys="first-key, second-key") as c:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"},
                        {"authorization": "Basic Zmlyc3Qta2V5"}):
            r = await c.get("/api/documents", headers=headers)
            error_shape(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        error_shape(await c.post("/api/chat", json={}), 401, "unauthorized")  # before validation
        error_shape(await c.get("/api/stream/file/a.md"), 401, "unauthorized")
        r = await c.post("/api/documents/upload", files={"file": ("u.md", b"x" * 100_000)})
        error_shape(r, 401, "unauthorized")
        assert upstreams.sandbox.uploads == []  # refused before the body was read

        headers = {"authorization": "Bearer first-key"} if use_bearer else {"x-api-key": "second-key"}
        assert (await c.get("/api/documents", headers=headers)).status_code == 200
        r = await c.post("/api/chat", json={"message": "hi"}, headers=headers)
        assert r.status_code == 200
        user_id = upstreams.agent.requests[-1].user_id
        assert user_id.startswith("key-") and "key" not in user_id[4:]

        for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
            assert (await c.get(path)).status_code == 200, path


async def test_no_keys_means_open(client):
    assert (await client.get("/api/documents")).status_code == 200


async def test_openapi_describes_the_api(client):
    r = await client.get("/openapi.json")
    spec = r.json()
    assert spec["info"]["title"] == "fsagent" and spec["info"]["version"]
    assert {"/api/chat", "/api/chat/stream", "/api/documents/upload", "/api/documents/{path}", "/ready"} <= set(
        spec["paths"]
    )
    upload = spec["paths"]["/api/documents/upload"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    error_ref = spec["paths"]["/api/chat"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert error_ref == {"$ref": "#/components/schemas/ErrorBody"}
    assert "/metrics" not in spec["paths"]


async def test_cors_when_origins_are_configured(gateway):
    async with gateway(cors_origins="https://ui.example") as c:
        r = await c.options("/api/chat", headers={
            "origin": "https://ui.example", "access-control-request-method": "POST",
        })
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = await c.get("/api/documents", headers={"origin": "https://ui.example"})
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        assert "x-trace-id" in r.headers["access-control-expose-headers"].lower()
        r = await c.get("/api/documents", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
