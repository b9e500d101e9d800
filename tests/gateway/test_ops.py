"""Probes, metrics, access logs, API keys and the OpenAPI docs.

The gateway's /metrics is on its own port (FSAGENT_GATEWAY_METRICS_PORT), never on the public one:
`metrics` below is that server, started the way `fsagent-gateway` starts it (on a free port), serving
the registry the in-process gateway records into.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import AsyncIterator, Iterator

import httpx
import pytest

from fsagent.common import grpcutil
from fsagent.gateway import main as gateway_main


async def test_health(client):
    r = await client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_ready_when_every_dependency_serves(client):
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready", "dependencies": {"agent": "serving", "sandbox": "serving", "cache": "serving"},
    }


async def test_not_ready_when_a_dependency_is_not_serving(client, upstreams):
    await grpcutil.set_serving(upstreams.sandbox_health, ["fsagent.v1.Sandbox"], False)
    try:
        r = await client.get("/ready")
    finally:
        await grpcutil.set_serving(upstreams.sandbox_health, ["fsagent.v1.Sandbox"], True)
    assert r.status_code == 503
    assert r.json() == {
        "status": "unavailable", "dependencies": {"agent": "serving", "sandbox": "unavailable", "cache": "serving"},
    }


async def test_a_cache_outage_is_degraded_but_still_ready(client, upstreams):
    """Chats are still answered (not saved): the gateway stays in the Service."""
    upstreams.agent.dependencies["cache"] = "unavailable"
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {
        "status": "degraded", "dependencies": {"agent": "serving", "sandbox": "serving", "cache": "unavailable"},
    }


async def test_not_ready_when_a_dependency_is_down(gateway, dead_addr):
    async with gateway(agent_addr=dead_addr) as c:
        r = await c.get("/ready")
        assert r.status_code == 503
        assert r.json() == {
            "status": "unavailable", "dependencies": {"agent": "unavailable", "sandbox": "serving", "cache": "unknown"},
        }
        assert r.elapsed.total_seconds() < 2.5  # 1 s per check, run concurrently
        r = await c.get("/health")
        assert r.status_code == 200  # alive even when a dependency is not


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


@pytest.fixture(scope="session")
def metrics_url(upstreams) -> Iterator[str]:
    """The gateway's metrics server on a free port (as `fsagent-gateway` starts it on 9104)."""
    server = gateway_main.start_metrics_server(upstreams.settings(gateway_metrics_port=0, bind_host="127.0.0.1"))
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def scrape(metrics_url) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=metrics_url, timeout=10) as c:
        yield c


async def scrape_until(scrape: httpx.AsyncClient, *wanted: str, headers: dict[str, str] | None = None,
                       timeout: float = 10.0) -> httpx.Response:
    """Scrape until every `wanted` text is there: the gateway records a request after its last byte
    is sent, so a scrape (another thread) can arrive a moment before the series moves."""
    deadline = time.monotonic() + timeout
    while True:
        r = await scrape.get("", headers=headers or {})
        if all(w in r.text for w in wanted) or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.05)


async def test_metrics_are_not_served_on_the_public_port(client, gateway, scrape, error_shape):
    for headers in ({}, {"accept": "application/openmetrics-text; version=1.0.0"}):
        r = await client.get("/metrics", headers=headers)
        error_shape(r, 404, "not_found")
        assert "fsagent_" not in r.text and "# TYPE" not in r.text
    error_shape(await client.get("/metrics/"), 404, "not_found")
    async with gateway(api_keys="k") as c:  # 404, not 401: there is nothing behind it to protect
        error_shape(await c.get("/metrics"), 404, "not_found")
    # ...and the series are on the metrics port, the public port's 404 counted as unmatched.
    unmatched = 'fsagent_http_requests_total{method="GET",route="unmatched",status="404"}'
    text = (await scrape_until(scrape, unmatched)).text
    assert unmatched in text
    assert 'route="/metrics"' not in text
    assert 'fsagent_build_info{component="gateway",' in text


def test_busy_metrics_port_is_one_clear_line(upstreams, metrics_url):
    busy = int(metrics_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(SystemExit) as exc:
        gateway_main.start_metrics_server(upstreams.settings(gateway_metrics_port=busy, bind_host="127.0.0.1"))
    message = str(exc.value.code)
    assert "FSAGENT_GATEWAY_METRICS_PORT" in message and f"127.0.0.1:{busy}" in message, message
    assert "\n" not in message
    with pytest.raises(SystemExit) as exc:
        gateway_main.start_metrics_server(upstreams.settings(gateway_port=8123, gateway_metrics_port=8123))
    assert "FSAGENT_GATEWAY_METRICS_PORT" in str(exc.value.code)


async def test_metrics_use_route_templates_never_raw_paths(client, scrape):
    await client.get("/api/documents/dir/b.md")
    await client.get("/api/documents/nope.md")
    await client.get("/not/a/route/at/all")
    await client.get("/api/stream/file/a.md")
    wanted = ('fsagent_http_requests_total{method="GET",route="/api/documents/{path:path}",status="200"}',
              'fsagent_http_requests_total{method="GET",route="/api/documents/{path:path}",status="404"}',
              'fsagent_http_requests_total{method="GET",route="unmatched",status="404"}',
              'fsagent_http_requests_total{method="GET",route="/api/stream/file/{path:path}",status="200"}')
    r = await scrape_until(scrape, *wanted)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for series in wanted:
        assert series in text, series
    for family in ("fsagent_http_requests_total", "fsagent_http_request_duration_seconds_bucket",
                   "fsagent_http_request_size_bytes_bucket", "fsagent_http_response_size_bytes_bucket",
                   "fsagent_http_requests_in_progress"):
        lines = _samples(text, family)
        assert lines, family
        for line in lines:
            route = re.search(r'route="([^"]*)"', line).group(1)
            assert route == "unmatched" or route.startswith("/"), line
            assert "b.md" not in line and "nope.md" not in line and "/not/a/route" not in line, line
    assert 'fsagent_http_requests_in_progress{method="GET",route="/api/documents/{path:path}"} 0.0' in text
    assert 'fsagent_build_info{component="gateway",' in text
    assert "fsagent_grpc_client_handled_total" in text  # the shared gRPC client metrics


async def test_metrics_openmetrics_has_trace_exemplars(client, scrape):
    r = await client.get("/api/documents/dir/b.md")
    trace_id = r.headers["x-trace-id"]
    r = await scrape_until(scrape, f'trace_id="{trace_id}"',
                           headers={"accept": "application/openmetrics-text; version=1.0.0"})
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

        for path in ("/health", "/ready", "/docs", "/openapi.json"):
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
