"""Run a real Prometheus server (the Debian package's binary) against local targets, for tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class PrometheusServer:
    workdir: Path
    targets: dict[str, str]  # job -> "host:port" (path /metrics)
    scrape_interval: str = "1s"
    rule_files: list[Path] = field(default_factory=list)
    target_labels: dict[str, str] = field(default_factory=dict)  # added to every target (e.g. namespace)
    extra_args: list[str] = field(default_factory=list)  # e.g. --enable-feature=exemplar-storage
    config: dict[str, Any] | None = None  # a whole configuration instead of targets (e.g. the operator's)
    binary: str | None = None  # another build than the one on PATH
    port: int = 0
    host: str = "127.0.0.1"  # the address to listen on
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        binary = self.binary or prometheus_binary()
        if binary is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        self.port = self.port or _free_port(self.host)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.config or {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target], "labels": dict(self.target_labels)}]}
                for job, target in self.targets.items()
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address={self.host}:{self.port}", "--log.level=warn", *self.extra_args],
            stdout=(self.workdir / "prometheus.log").open("wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.workdir / "prometheus.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("prometheus did not become ready")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            body = json.load(reply)
        if body.get("status") != "success":
            raise RuntimeError(body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def wait_for_targets_up(self, timeout: float = 30.0, scrapes: int = 2) -> None:
        """Wait until every target has been scraped successfully `scrapes` times."""
        deadline = time.monotonic() + timeout
        seen: dict[str, set[str]] = {}
        while time.monotonic() < deadline:
            active = self.api("targets")["activeTargets"]
            for target in active:
                if target["health"] == "up":
                    seen.setdefault(target["labels"]["job"], set()).add(target["lastScrape"])
            if len(active) == len(self.targets) and all(len(seen.get(j, ())) >= scrapes for j in self.targets):
                return
            time.sleep(0.3)
        raise TimeoutError(f"targets not up: {self.api('targets')['activeTargets']}")
