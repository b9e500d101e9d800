"""`fsagent-gateway` as a real process: binds, serves /metrics on its own port only, logs JSON lines,
stops cleanly on SIGTERM, and refuses a busy metrics port with one line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(upstreams, port: int, metrics_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "FSAGENT_BIND_HOST": "127.0.0.1",
        "FSAGENT_GATEWAY_PORT": str(port),
        "FSAGENT_GATEWAY_METRICS_PORT": str(metrics_port),
        "FSAGENT_AGENT_ADDR": upstreams.agent_addr,
        "FSAGENT_SANDBOX_ADDR": upstreams.sandbox_addr,
        "FSAGENT_API_KEYS": "",
        "FSAGENT_LOG_FORMAT": "json",
        "FSAGENT_SHUTDOWN_GRACE": "5",
        # fsagent.common.grpcutil's stream-call done callbacks call the aio call's code() without
        # awaiting it; that warning is the shared package's (reported), not the gateway's.
        "PYTHONWARNINGS": "ignore:coroutine 'Call.code' was never awaited:RuntimeWarning",
    }


async def _scrape_until(client: httpx.AsyncClient, url: str, *wanted: str, **kwargs) -> httpx.Response:
    # A request is recorded after its last byte is sent: the scrape may come a moment before.
    deadline = time.monotonic() + 10
    while True:
        r = await client.get(url, **kwargs)
        if all(w in r.text for w in wanted) or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.05)


async def test_process_serves_and_drains_on_sigterm(upstreams, tmp_path):
    port, metrics_port = _free_port(), _free_port()
    while metrics_port == port:
        metrics_port = _free_port()
    env = _env(upstreams, port, metrics_port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fsagent.gateway", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(200):
                try:
                    r = await client.get("/ready")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert r.status_code == 200, r.text
            r = await client.get("/api/documents/dir/b.md")
            assert r.status_code == 200
            trace_id = r.headers["x-trace-id"]
            # /metrics is on the metrics port only; the public port answers 404 in the error shape.
            r = await client.get("/metrics")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            wanted = ('fsagent_http_requests_total{method="GET",route="/api/documents/{path:path}",status="200"}',
                      'fsagent_http_requests_total{method="GET",route="unmatched",status="404"}',
                      'fsagent_build_info{component="gateway",')
            text = (await _scrape_until(client, metrics_url, *wanted)).text
            for series in wanted:
                assert series in text, series
            r = await _scrape_until(client, metrics_url, f'trace_id="{trace_id}"',
                                    headers={"accept": "application/openmetrics-text; version=1.0.0"})
            assert r.headers["content-type"].startswith("application/openmetrics-text")
            assert f'trace_id="{trace_id}"' in r.text  # the exemplar of the request above
            # SIGTERM while an answer is being streamed: the stream is allowed to finish.
            events = []
            async with client.stream("POST", "/api/chat/stream", json={"message": "linger"}) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("event:"):
                        events.append(line.split(":", 1)[1].strip())
                        if len(events) == 1:
                            proc.send_signal(signal.SIGTERM)
            assert events[0] == "status" and events[-1] == "done", events
        # uvicorn drains, runs the lifespan shutdown, then re-raises the signal it caught.
        assert await asyncio.wait_for(proc.wait(), 10) in (0, -signal.SIGTERM)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert lines and all(line["service"] == "gateway" for line in lines)
    assert any(line["msg"].startswith("Finished server process") for line in lines), stderr
    [access] = [line for line in lines if line.get("route") == "/api/documents/{path:path}"]
    assert access["trace_id"] == trace_id and access["status"] == 200
    assert not [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")
                and "chttp2" not in line and "GOAWAY" not in line.upper()], stderr


async def test_busy_metrics_port_exits_with_one_line_naming_the_variable(upstreams, tmp_path):
    port = _free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fsagent.gateway", env=_env(upstreams, port, busy), cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            code = await asyncio.wait_for(proc.wait(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    stderr = (await proc.stderr.read()).decode()
    assert code == 1, stderr
    [line] = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert "FSAGENT_GATEWAY_METRICS_PORT" in line and f"127.0.0.1:{busy}" in line, stderr
    assert "Traceback" not in stderr
