"""Shared fixtures for the offline deployment checks (chart, manifests, monitoring, skaffold).

Tools come from .tools/bin (scripts/install_tools.sh, which `make test` runs first) or PATH; a test
that needs a missing tool is skipped with the reason, never silently passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fsagent"
CI_VALUES = CHART / "ci"
TOOLS_BIN = REPO / ".tools" / "bin"
K8S_VERSION = "1.34.0"  # the Kubernetes version manifests are validated against (kubectl 1.34 too)
MONITORING_API = "monitoring.coreos.com/v1"
RELEASE = "fsagent"
NAMESPACE = "fsagent"

# Value combinations every chart-level check runs over: name -> values files (relative to helm/fsagent/ci).
COMBINATIONS: dict[str, list[str]] = {
    "defaults": [],
    "everything": ["everything-values.yaml"],
    "read-only": ["read-only-values.yaml"],
    "external-langfuse": ["external-langfuse-values.yaml"],
    "existing-secret": ["existing-secret-values.yaml"],
    "in-cluster-langfuse+monitoring": ["langfuse-values.yaml", "monitoring-values.yaml"],
    "dev": ["dev-values.yaml"],
}


def find_tool(name: str) -> str | None:
    local = TOOLS_BIN / name
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found in .tools/bin or PATH (run scripts/install_tools.sh)")
    return path


def run(cmd: list[str], *, cwd: Path | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Rendered:
    """One `helm template` output, split into objects."""

    docs: list[dict[str, Any]]
    text: str
    notes: str = ""
    by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for doc in self.docs:
            self.by_kind.setdefault(doc["kind"], []).append(doc)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return self.by_kind.get(kind, [])

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.kind(kind):
            if doc["metadata"]["name"] == name:
                return doc
        raise KeyError(f"no {kind} named {name}; have {[d['metadata']['name'] for d in self.kind(kind)]}")

    def workloads(self) -> list[dict[str, Any]]:
        return self.kind("Deployment") + self.kind("StatefulSet")


class Helm:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._cache: dict[tuple, Rendered] = {}

    def template(self, values: Iterable[str] = (), sets: Iterable[str] = (), *, monitoring_api: bool = True,
                 extra: Iterable[str] = ()) -> Rendered:
        key = (tuple(values), tuple(sets), monitoring_api, tuple(extra))
        if key not in self._cache:
            cmd = [self.binary, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                   "--kube-version", K8S_VERSION]
            if monitoring_api:
                cmd += ["--api-versions", MONITORING_API]
            for v in values:
                cmd += ["-f", str(CI_VALUES / v) if not os.path.isabs(v) else v]
            for s in sets:
                cmd += ["--set", s]
            cmd += list(extra)
            out = run(cmd).stdout
            docs = [d for d in yaml.safe_load_all(out) if d]
            self._cache[key] = Rendered(docs=docs, text=out)
        return self._cache[key]

    def template_fails(self, values: Iterable[str] = (), sets: Iterable[str] = ()) -> str:
        cmd = [self.binary, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for v in values:
            cmd += ["-f", str(CI_VALUES / v)]
        for s in sets:
            cmd += ["--set", s]
        proc = run(cmd, check=False)
        assert proc.returncode != 0, f"expected helm template to fail for {sets or values}"
        return proc.stderr


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(require_tool("helm"))


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool("kubectl")


@pytest.fixture(scope="session")
def catalogue() -> dict[str, Any]:
    return yaml.safe_load((REPO / "monitoring" / "catalogue.yaml").read_text())


@pytest.fixture(params=sorted(COMBINATIONS), scope="session")
def combination(request, helm: Helm) -> tuple[str, Rendered]:
    return request.param, helm.template(COMBINATIONS[request.param])


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container_env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", []) or []}


@pytest.fixture(scope="session")
def lib():
    """Module-level helpers and constants (test modules cannot import conftest under importlib mode)."""
    import types

    return types.SimpleNamespace(
        REPO=REPO, CHART=CHART, CI_VALUES=CI_VALUES, K8S_VERSION=K8S_VERSION, MONITORING_API=MONITORING_API,
        RELEASE=RELEASE, NAMESPACE=NAMESPACE, COMBINATIONS=COMBINATIONS, run=run, find_tool=find_tool,
        require_tool=require_tool, pod_spec=pod_spec, container_env_names=container_env_names,
    )


class PromQL:
    """Just enough PromQL lexing to list the metric and label names an expression uses (promtool does
    the real parsing: see test_dashboards.py and test_monitoring.py)."""

    KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "atan2", "inf", "nan"}
    GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "${__range}": "1h",
                    "$namespace": ".*"}

    def __init__(self, catalogue: dict[str, Any]) -> None:
        self.metrics: dict[str, dict[str, Any]] = {}
        for section in ("metrics", "default_collectors", "synthetic"):
            for m in catalogue.get(section, []):
                self.metrics[m["name"]] = m
        self.known_labels = {"le", "__name__", *catalogue["target_labels"]}
        for m in self.metrics.values():
            self.known_labels.update(m["labels"])

    def substitute(self, expr: str) -> str:
        for var, value in self.GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        return expr

    def known_metric(self, name: str) -> bool:
        if name in self.metrics:
            return self.metrics[name]["type"] != "histogram"
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if base != name and self.metrics.get(base, {}).get("type") == "histogram":
                return True
        return False

    def names(self, expr: str) -> tuple[set[str], set[str]]:
        import re

        e = self.substitute(expr)
        labels: set[str] = set()
        for block in re.findall(r"\{([^}]*)\}", e):
            labels.update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", block))
        e = re.sub(r"\{[^}]*\}", " ", e)
        group = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
        for names in re.findall(group, e):
            labels.update(n.strip() for n in names.split(",") if n.strip())
        e = re.sub(group, " ", e)
        e = re.sub(r"\[[^\]]*\]", " ", e)
        e = re.sub(r'"(?:[^"\\]|\\.)*"', " ", e)
        metrics = set()
        for m in re.finditer(r"(?<![0-9.a-zA-Z_:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
            word, call = m.group(1), m.group(2)
            if call or word.lower() in self.KEYWORDS:
                continue
            metrics.add(word)
        return metrics, labels


@pytest.fixture(scope="session")
def promql(catalogue) -> PromQL:
    return PromQL(catalogue)
