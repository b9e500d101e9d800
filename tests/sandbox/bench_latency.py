"""Latency of Sandbox.Execute over gRPC against a real `fsagent-sandbox` process (not a test).

    uv run python tests/sandbox/bench_latency.py [--rounds 200]

Prints p50/p90/p99 for: cat of a 2 KB file, grep over 200 files, both without the cache
(FSAGENT_CACHE_ADDR empty) and, for reference, a grep with the cache reachable but no_cache set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fsagent.v1 import sandbox_pb2, sandbox_pb2_grpc

WORDS = "policy deploy incident review budget travel laptop password office contract vendor audit".split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_data(root: Path, files: int = 200, size: int = 2048) -> None:
    rnd = random.Random(1)
    for i in range(files):
        folder = root / f"dept-{i % 10}" / f"team-{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        lines, total = [], 0
        while total < size:
            line = " ".join(rnd.choice(WORDS) for _ in range(8)) + "\n"
            lines.append(line)
            total += len(line)
        (folder / f"doc-{i:03d}.md").write_text("".join(lines)[:size])


def percentiles(samples: list[float]) -> str:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000  # noqa: E731
    return f"p50={statistics.median(s) * 1000:.2f} ms  p90={pick(0.9):.2f} ms  p99={pick(0.99):.2f} ms  (n={len(s)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_data(root)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FSAGENT_")}
        env.update(
            FSAGENT_DATA_ROOT=str(root), FSAGENT_SANDBOX_ADDR=f"127.0.0.1:{port}",
            FSAGENT_SANDBOX_METRICS_PORT=str(free_port()), FSAGENT_CACHE_ADDR="", FSAGENT_LOG_LEVEL="WARNING",
        )
        proc = subprocess.Popen([sys.executable, "-m", "fsagent.sandbox"], env=env)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    time.sleep(0.1)
            stub = sandbox_pb2_grpc.SandboxStub(channel)

            def measure(tool: str, args: dict) -> list[float]:
                request = sandbox_pb2.ExecuteRequest(tool=tool, arguments_json=json.dumps(args), no_cache=True)
                for _ in range(10):
                    stub.Execute(request, timeout=10)
                samples = []
                for _ in range(opts.rounds):
                    started = time.perf_counter()
                    reply = stub.Execute(request, timeout=10)
                    samples.append(time.perf_counter() - started)
                    assert reply.error_code == "" and not reply.cached, reply.error
                return samples

            print("cat 2 KB file       ", percentiles(measure("cat", {"path": "dept-3/team-3/doc-003.md"})))
            print("grep over 200 files ", percentiles(measure("grep", {"pattern": "incident"})))
            print("grep -l, 200 files  ", percentiles(measure("grep", {"pattern": "incident", "files_with_matches": True})))
            print("find *.md           ", percentiles(measure("find", {"name": "*.md"})))
            print("tree                ", percentiles(measure("tree", {})))
            channel.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
