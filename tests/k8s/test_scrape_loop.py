"""The whole monitoring loop without a kubelet: the chart installed on the real API server, its four
Services pointed by EndpointSlices at a local `fsagent run` (the pods stood in for by local
processes), the operator's generated configuration run by a real Prometheus that discovers the
targets through the API server, and the chart's rules loaded and evaluated by it."""

from __future__ import annotations

import signal
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fsagent.cli.localstack import LocalStack, Ports
from tests.fakes.prometheus_server import PrometheusServer
from tests.k8s.conftest import CHART, CP_BIN, REPO, ControlPlane
from tests.k8s.prometheus import generated_config, kube_prometheus_stack_prometheus, rule_files

pytestmark = pytest.mark.integration

COMPONENTS = ("gateway", "agent", "sandbox", "cache")
RELEASE = "fs"
# The API server refuses loopback endpoint addresses, so the stand-in pods get an address from
# TEST-NET-1 (never routed) and the local Prometheus maps it to 127.0.0.1, where the processes are.
POD_IP = "192.0.2.10"


# Debian's prometheus (2.42) is built without Kubernetes service discovery and is older than the
# operator supports: scripts/control-plane.sh builds the Prometheus the operator is made for.
PROMETHEUS = CP_BIN / "prometheus"


def _prometheus_version() -> str:
    import subprocess

    out = subprocess.run([str(PROMETHEUS), "--version"], capture_output=True, text=True, check=True).stdout
    return "v" + out.split()[2]  # "prometheus, version 3.13.1 (branch: ...)" -> v3.13.1


def _endpoint_slice(ns: str, component: str, ports: Ports) -> dict[str, Any]:
    """What the EndpointSlice controller writes for a Service with one ready pod (our local process)."""
    serving = {"gateway": ("http", ports.gateway), "agent": ("grpc", ports.agent),
               "sandbox": ("grpc", ports.sandbox), "cache": ("grpc", ports.cache)}[component]
    metrics = getattr(ports, f"{component}_metrics")
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{RELEASE}-fsagent-{component}-local", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": f"{RELEASE}-fsagent-{component}",
                                "endpointslice.kubernetes.io/managed-by": "fsagent-tests"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [POD_IP], "conditions": {"ready": True, "serving": True, "terminating": False},
                       "targetRef": {"kind": "Pod", "namespace": ns, "name": f"{RELEASE}-fsagent-{component}-local"}}],
        "ports": [{"name": serving[0], "port": serving[1], "protocol": "TCP"},
                  {"name": "metrics", "port": metrics, "protocol": "TCP"}],
    }


def _run_locally(config: dict[str, Any], kubeconfig: Path, rules: dict[str, str], rules_dir: Path) -> dict[str, Any]:
    """The operator's configuration as a local Prometheus can run it: service discovery through our
    kubeconfig instead of the pod's in-cluster account, the stand-in pod address mapped to loopback
    (after every relabelling of the operator's), rule files from the operator's ConfigMaps."""
    for job in config.get("scrape_configs") or []:
        for sd in job.get("kubernetes_sd_configs") or []:
            sd["kubeconfig_file"] = str(kubeconfig)
        job.setdefault("relabel_configs", []).append({
            "source_labels": ["__address__"], "regex": POD_IP.replace(".", r"\.") + ":(\\d+)",
            "target_label": "__address__", "replacement": "127.0.0.1:$1", "action": "replace"})
    rules_dir.mkdir(parents=True, exist_ok=True)
    for name, body in rules.items():
        (rules_dir / name).write_text(body)
    config["rule_files"] = [str(rules_dir / "*.yaml")]
    # What prometheus-config-reloader does in the pod before Prometheus reads the file: expand the
    # $(VAR) references to the pod's environment (shard 0 of one, the first replica).
    text = yaml.safe_dump(config).replace("$(SHARD)", "0").replace("$(POD_NAME)", "prometheus-local-0")
    return yaml.safe_load(text)


def _wait(what: str, check, timeout: float = 60.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def _our_targets(prom: PrometheusServer, ns: str) -> dict[str, dict[str, Any]]:
    return {t["labels"]["job"]: t for t in prom.api("targets")["activeTargets"] if t["labels"].get("namespace") == ns}


def _active_alerts(prom: PrometheusServer, name: str) -> list[dict[str, Any]]:
    return [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == name]


@pytest.fixture
def local_stack(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(REPO / "data", data)
    stack = LocalStack(data_root=data, cache_dir=tmp_path / "cache", ports=Ports.free(), log_dir=tmp_path / "logs")
    stack.start(timeout=60)
    try:
        yield stack
    finally:
        stack.stop()


def test_prometheus_discovers_scrapes_and_alerts_through_the_api_server(control_plane: ControlPlane, local_stack, tmp_path):
    cp = control_plane
    monitoring, ns = cp.namespace("monitoring"), cp.namespace("loop")
    # kube-prometheus-stack's defaults, with the version of the Prometheus that runs here (the
    # operator writes a configuration for that version), EndpointSlice discovery and a fast
    # evaluation for the test.
    prometheus = kube_prometheus_stack_prometheus(
        monitoring, version=_prometheus_version(), serviceDiscoveryRole="EndpointSlice",
        scrapeInterval="1s", evaluationInterval="1s")
    cp.apply(prometheus)
    cp.helm("install", RELEASE, str(CHART), "-n", ns, "--set", "serviceMonitor.interval=1s",
            "--set", "serviceMonitor.scrapeTimeout=1s")
    cp.apply([_endpoint_slice(ns, c, local_stack.ports) for c in COMPONENTS])

    config = generated_config(cp, prometheus, namespace=ns, jobs=4)
    rules = rule_files(cp, prometheus, namespace=ns)
    assert [n for n in rules if n.startswith(f"{ns}-")], sorted(rules)
    prom = PrometheusServer(workdir=tmp_path / "prometheus", targets={}, binary=str(PROMETHEUS),
                            config=_run_locally(config, cp.kubeconfig, rules, tmp_path / "rules"))
    prom.start()
    try:
        # 1. All four discovered through the API server and up, with the labels the rules expect.
        targets = _wait("four targets up", lambda: (t := _our_targets(prom, ns)) and len(t) == 4
                        and all(x["health"] == "up" for x in t.values()) and t)
        assert set(targets) == {f"fsagent-{c}" for c in COMPONENTS}
        assert targets["fsagent-gateway"]["scrapeUrl"] == f"http://127.0.0.1:{local_stack.ports.gateway_metrics}/metrics"
        assert all(t["labels"]["service"] == f"{RELEASE}-fsagent-{j.removeprefix('fsagent-')}" for j, t in targets.items())

        # 2. Every recording and alerting rule of the PrometheusRule loads and evaluates cleanly.
        def evaluated():
            groups = [g for g in prom.api("rules")["groups"] if g["file"].endswith(".yaml")]
            rules_ = [r for g in groups for r in g["rules"]]
            return rules_ if rules_ and all(r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok"
                                            and not r["lastEvaluation"].startswith("0001") for r in rules_) else None
        evaluated_rules = _wait("every rule evaluated", evaluated)
        names = {r.get("name") for r in evaluated_rules}
        assert {"FsagentServiceDown", "FsagentServiceAbsent", "fsagent:chat_error_ratio:rate5m"} <= names
        assert not _active_alerts(prom, "FsagentServiceDown")

        # 3. A killed service: its target goes down and FsagentServiceDown becomes active for it.
        local_stack.stop_service("cache", sig=signal.SIGKILL)
        alert = _wait("FsagentServiceDown for the cache", lambda: [
            a for a in _active_alerts(prom, "FsagentServiceDown")
            if a["labels"]["job"] == "fsagent-cache" and a["labels"]["namespace"] == ns])
        assert alert[0]["state"] in {"pending", "firing"} and alert[0]["labels"]["severity"] == "critical"

        # 4. A job with no target at all (its endpoints gone): FsagentServiceAbsent becomes active.
        cp.kubectl("delete", "endpointslice", f"{RELEASE}-fsagent-sandbox-local", "-n", ns)
        _wait("the sandbox target dropped", lambda: "fsagent-sandbox" not in _our_targets(prom, ns))
        absent = _wait("FsagentServiceAbsent for the sandbox", lambda: [
            a for a in _active_alerts(prom, "FsagentServiceAbsent") if a["labels"]["job"] == "fsagent-sandbox"])
        assert absent[0]["state"] in {"pending", "firing"}
    finally:
        prom.stop()
