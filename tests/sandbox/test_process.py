"""`fsagent-sandbox` as a real process: start-up checks, health, a call, /metrics, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fsagent.v1 import sandbox_pb2, sandbox_pb2_grpc
from tests.sandbox.conftest import free_port
from tests.sandbox.helpers import build_tree


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSAGENT_")}
    env.update(FSAGENT_LOG_LEVEL="INFO", **extra)
    return env


def test_missing_data_root_exits_with_a_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fsagent.sandbox"],
        env=_env(FSAGENT_DATA_ROOT=str(tmp_path / "nope")),
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "data root" in proc.stderr and "FSAGENT_DATA_ROOT" in proc.stderr


def test_serves_and_stops(tmp_path: Path) -> None:
    root = build_tree(tmp_path)
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsagent.sandbox"],
        env=_env(
            FSAGENT_DATA_ROOT=str(root),
            FSAGENT_SANDBOX_ADDR=f"127.0.0.1:{port}",
            FSAGENT_SANDBOX_METRICS_PORT=str(metrics_port),
            FSAGENT_CACHE_ADDR=f"127.0.0.1:{free_port()}",  # nobody there: calls still succeed
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service="fsagent.v1.Sandbox"), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "sandbox did not start"
            time.sleep(0.1)
        stub = sandbox_pb2_grpc.SandboxStub(channel)
        resp = stub.Execute(sandbox_pb2.ExecuteRequest(tool="grep", arguments_json='{"pattern": "Rotate"}'), timeout=10)
        assert resp.error_code == "" and resp.stdout == "policies/password.md:4:Rotate passwords every 90 days.\n"
        blocked = stub.Execute(sandbox_pb2.ExecuteRequest(tool="cat", arguments_json='{"path": "../outside/secret.txt"}'), timeout=10)
        assert blocked.error_code == "path_outside_root"
        channel.close()
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'fsagent_sandbox_executions_total{status="success",tool="grep"} 1.0' in text
        assert 'fsagent_sandbox_security_blocks_total{block_type="path_outside_root"} 1.0' in text
        assert 'fsagent_sandbox_cache_lookups_total{result="error"}' in text
        assert "fsagent_sandbox_execution_duration_seconds_bucket" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err[-2000:]
    assert '"ripgrep available"' in err or "ripgrep (rg) not found" in err
    assert str(root) not in "".join(line for line in err.splitlines() if '"tool executed"' in line)
