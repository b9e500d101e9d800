"""Start the four services as local processes on loopback, wait until they are ready, stop them.

Used by `fsagent run` (and `make run`) and by the integration tests, so both exercise exactly the
same start-up path: real processes, real gRPC, real ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Callable

# Dependencies first: the gateway is ready only when the agent and the sandbox are.
START_ORDER = ("cache", "sandbox", "agent", "gateway")


@dataclass(frozen=True)
class Ports:
    gateway: int = 8000
    agent: int = 50051
    sandbox: int = 50052
    cache: int = 50053
    agent_metrics: int = 9101
    sandbox_metrics: int = 9102
    cache_metrics: int = 9103
    gateway_metrics: int = 9104  # never the gateway's public port

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> "Ports":
        """Distinct free ports, one per field (for tests running beside anything else)."""
        sockets, numbers = [], []
        try:
            for _ in fields(cls):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((host, 0))
                sockets.append(sock)
                numbers.append(sock.getsockname()[1])
        finally:
            for sock in sockets:
                sock.close()
        return cls(*numbers)

    def metrics_urls(self, host: str = "127.0.0.1") -> dict[str, str]:
        return {
            "gateway": f"http://{host}:{self.gateway_metrics}/metrics",
            "agent": f"http://{host}:{self.agent_metrics}/metrics",
            "sandbox": f"http://{host}:{self.sandbox_metrics}/metrics",
            "cache": f"http://{host}:{self.cache_metrics}/metrics",
        }


@dataclass
class LocalStack:
    data_root: Path
    cache_dir: Path
    ports: Ports = field(default_factory=Ports)
    host: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None  # None: forward output to our stderr with a service prefix
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _log_files: dict[str, IO[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.ports.gateway}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FSAGENT_BIND_HOST=self.host,
            FSAGENT_DATA_ROOT=str(self.data_root),
            FSAGENT_CACHE_DIR=str(self.cache_dir),
            FSAGENT_GATEWAY_PORT=str(self.ports.gateway),
            FSAGENT_AGENT_ADDR=f"{self.host}:{self.ports.agent}",
            FSAGENT_SANDBOX_ADDR=f"{self.host}:{self.ports.sandbox}",
            FSAGENT_CACHE_ADDR=f"{self.host}:{self.ports.cache}",
            FSAGENT_GATEWAY_METRICS_PORT=str(self.ports.gateway_metrics),
            FSAGENT_AGENT_METRICS_PORT=str(self.ports.agent_metrics),
            FSAGENT_SANDBOX_METRICS_PORT=str(self.ports.sandbox_metrics),
            FSAGENT_CACHE_METRICS_PORT=str(self.ports.cache_metrics),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def log_path(self, service: str) -> Path | None:
        return self.log_dir / f"{service}.log" if self.log_dir else None

    def start_service(self, service: str) -> None:
        if service in self.processes and self.processes[service].poll() is None:
            raise RuntimeError(f"{service} is already running")
        argv = [sys.executable, "-m", f"fsagent.{service}"]
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path(service), "ab")  # noqa: SIM115 - closed in stop_service
            self._log_files[service] = log
            proc = subprocess.Popen(argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        else:
            proc = subprocess.Popen(argv, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            threading.Thread(target=_forward, args=(service, proc), daemon=True).start()
        self.processes[service] = proc

    def start(self, timeout: float = 60.0, on_progress: Callable[[str], None] | None = None) -> None:
        """Start all four and wait until ready; on any failure, stop what was started and re-raise."""
        try:
            for service in START_ORDER:
                self.start_service(service)
            self.wait_ready(timeout, on_progress)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60.0, on_progress: Callable[[str], None] | None = None) -> None:
        """Block until the gateway's /ready says every dependency answers, or raise."""
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            for service, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{service} exited with code {proc.returncode} during start-up" + self._tail(service))
            try:
                with urllib.request.urlopen(f"{self.base_url}/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                try:
                    last = json.loads(exc.read() or b"{}").get("dependencies", exc.code)
                except ValueError:
                    last = str(exc.code)
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            if on_progress:
                on_progress(f"waiting for services: {last}")
            time.sleep(0.2)
        raise TimeoutError(f"services not ready after {timeout:.0f}s: {last}")

    def stop_service(self, service: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        proc = self.processes.get(service)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log = self._log_files.pop(service, None)
        if log:
            log.close()
        return proc.returncode

    def stop(self, timeout: float = 15.0) -> dict[str, int | None]:
        codes = {}
        for service in reversed(START_ORDER):
            if service in self.processes:
                codes[service] = self.stop_service(service, timeout=timeout)
        return codes

    def _tail(self, service: str, lines: int = 20) -> str:
        path = self.log_path(service)
        if path is None or not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(text)


def _forward(service: str, proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    prefix = f"{service:>8} | ".encode()
    for line in proc.stdout:
        sys.stderr.buffer.write(prefix + line)
        sys.stderr.buffer.flush()
