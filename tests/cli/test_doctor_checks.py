"""fsagent doctor's checks on objects as the API server serves them (a fake cluster: no network),
for what the real-API-server tests (tests/k8s/test_doctor.py) do not inject: recent restarts and
OOM kills, unscheduled pods, unbound claims, the Grafana sidecar's label and namespaces, Prometheus
targets down, Langfuse URLs, the report's text, JSON and exit codes."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from fsagent.cli.doctor.checks import dashboards, endpoints, langfuse, monitoring, rollout
from fsagent.cli.doctor.context import Context, Options
from fsagent.cli.doctor.kube import Forbidden, NotFound
from fsagent.cli.doctor.report import FAIL, PASS, WARN, Check, Report

NS = "app"
SEL = {"app.kubernetes.io/name": "fsagent", "app.kubernetes.io/instance": "fs", "app.kubernetes.io/component": "agent"}


class FakeKube:
    def __init__(self, objects: dict[str, list[dict[str, Any]]], forbidden: set[str] = frozenset()) -> None:
        self.objects, self.forbidden = objects, forbidden

    def list(self, kind, namespace=None, labels=None):
        if (kind, namespace) in self.forbidden or kind in self.forbidden:
            raise Forbidden(403, "forbidden", f"list {kind}")
        items = [o for o in self.objects.get(kind, []) if namespace is None or o["metadata"].get("namespace", NS) == namespace]
        if labels:
            want = dict(x.split("=", 1) for x in labels.split(","))
            items = [o for o in items if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())]
        return items

    def get(self, kind, name, namespace=None):
        for o in self.objects.get(kind, []):
            if o["metadata"]["name"] == name:
                return o
        raise NotFound(404, "not found", f"get {kind}/{name}")

    def served(self, group):
        return True


def ctx_with(**objects) -> Context:
    return Context(FakeKube(objects), Options(namespace=NS, release="fs", identity="admin"))


def deployment(ready=2, desired=2, **status) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": "fs-fsagent-agent", "namespace": NS, "generation": 3, "labels": SEL},
            "spec": {"replicas": desired, "selector": {"matchLabels": SEL}, "template": {"spec": {}}},
            "status": {"observedGeneration": 3, "readyReplicas": ready, "updatedReplicas": desired,
                       "availableReplicas": ready, **status}}


def pod(name, ready=True, **cs) -> dict[str, Any]:
    status = {"name": "agent", "ready": ready, "restartCount": 0, "state": {"running": {}}}
    status.update(cs)
    return {"metadata": {"name": name, "namespace": NS, "labels": SEL},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [status]}}


def iso(delta: timedelta) -> str:
    return (datetime.now(timezone.utc) - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_rollout_healthy_recent_restart_old_restart_and_oom():
    ok = rollout.workload_check(ctx_with(pods=[pod("a"), pod("b")]), deployment())
    assert ok.status == PASS and "2/2 ready" in ok.detail
    recent = pod("b", restartCount=3, lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                                                "finishedAt": iso(timedelta(minutes=5))}})
    check = rollout.workload_check(ctx_with(pods=[pod("a"), recent]), deployment())
    assert check.status == WARN and "3 restarts; last terminated: OOMKilled (exit 137) 5m ago" in check.detail
    assert "memory limit" in check.fix
    old = pod("b", restartCount=1, lastState={"terminated": {"reason": "Error", "exitCode": 1,
                                                             "finishedAt": iso(timedelta(days=2))}})
    assert rollout.workload_check(ctx_with(pods=[pod("a"), old]), deployment()).status == PASS


def test_rollout_failures():
    pull = pod("b", ready=False, state={"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}})
    check = rollout.workload_check(ctx_with(pods=[pod("a"), pull]), deployment(ready=1))
    assert check.status == FAIL and "ImagePullBackOff" in check.detail and "pull access denied" in check.detail
    assert check.fix == f"kubectl -n {NS} describe pod b"
    pending = {"metadata": {"name": "c", "namespace": NS, "labels": SEL}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}}
    check = rollout.workload_check(ctx_with(pods=[pending]), deployment(ready=0, desired=1))
    assert check.status == FAIL and "not scheduled: Unschedulable" in check.detail
    stuck = deployment(ready=2, conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "timed out"}])
    assert rollout.workload_check(ctx_with(pods=[pod("a"), pod("b")]), stuck).status == FAIL
    assert rollout.workload_check(ctx_with(pods=[]), deployment(ready=0, desired=0)).status == WARN
    rolling = deployment()
    rolling["status"]["observedGeneration"] = 2
    assert rollout.workload_check(ctx_with(pods=[pod("a"), pod("b")]), rolling).status == WARN


def test_claims():
    ctx = ctx_with()
    bound = {"metadata": {"name": "d"}, "spec": {"resources": {"requests": {"storage": "5Gi"}}},
             "status": {"phase": "Bound", "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"]}}
    assert rollout.claim_check(ctx, bound).status == PASS
    pending = {"metadata": {"name": "d"}, "spec": {"resources": {"requests": {"storage": "5Gi"}}}, "status": {"phase": "Pending"}}
    check = rollout.claim_check(ctx, pending)
    assert check.status == FAIL and "storageClass" in check.fix


def test_endpoint_counts():
    slices = [{"ports": [{"name": "grpc"}, {"name": "metrics"}],
               "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                             {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                             {"addresses": ["10.0.0.3"]}]}]  # ready unset = ready
    ready, not_ready = endpoints.ready_by_port(slices)
    assert ready == {"grpc": 2, "metrics": 2} and not_ready == {"grpc": 1, "metrics": 1}


def grafana(label="grafana_dashboard", value="1", namespaces="ALL") -> dict[str, Any]:
    env = [{"name": "LABEL", "value": label}, {"name": "NAMESPACE", "value": namespaces}]
    if value is not None:
        env.append({"name": "LABEL_VALUE", "value": value})
    return {"metadata": {"name": "grafana", "namespace": "monitoring"}, "spec": {"template": {"spec": {"containers": [
        {"name": "grafana-sc-dashboard", "image": "quay.io/kiwigrid/k8s-sidecar:1.30.3", "env": env},
        {"name": "grafana-sc-datasources", "image": "quay.io/kiwigrid/k8s-sidecar:1.30.3",
         "env": [{"name": "LABEL", "value": "grafana_datasource"}]},
        {"name": "grafana", "image": "grafana/grafana"}]}}}}


def dashboard(label=("grafana_dashboard", "1"), namespace=NS) -> dict[str, Any]:
    labels = {"app.kubernetes.io/part-of": "fsagent", "app.kubernetes.io/instance": "fs"}
    if label:
        labels[label[0]] = label[1]
    return {"metadata": {"name": "fs-fsagent-dashboard-api", "namespace": namespace, "labels": labels}}


def test_dashboards_follow_the_sidecar_settings():
    (ok,) = dashboards.run(ctx_with(configmaps=[dashboard()], deployments=[grafana()]))
    assert ok.status == PASS and "grafana_dashboard=1" in ok.detail
    (other,) = dashboards.run(ctx_with(configmaps=[dashboard()], deployments=[grafana(label="dashboards", value="yes")]))
    assert other.status == FAIL and "dashboards=yes" in other.detail
    assert 'dashboards.labels={"dashboards":"yes"}' in other.fix
    (any_value,) = dashboards.run(ctx_with(configmaps=[dashboard(("grafana_dashboard", "x"))], deployments=[grafana(value=None)]))
    assert any_value.status == PASS
    (elsewhere,) = dashboards.run(ctx_with(configmaps=[dashboard()], deployments=[grafana(namespaces="monitoring")]))
    assert elsewhere.status == FAIL and "dashboards.namespace=monitoring" in elsewhere.fix
    (none,) = dashboards.run(ctx_with(configmaps=[dashboard()], deployments=[]))
    assert none.status == WARN
    forbidden = Context(FakeKube({"configmaps": [dashboard()]}, forbidden={("deployments", None)}),
                        Options(namespace=NS, release="fs", in_cluster=True))
    (cannot,) = dashboards.run(forbidden)
    assert cannot.status == WARN and "helmTest.clusterRead=true" in cannot.fix


@pytest.mark.parametrize("url, expected", [
    ("http://langfuse-web:3000", (NS, "langfuse-web", 3000)),
    ("http://langfuse-web.langfuse:3000", ("langfuse", "langfuse-web", 3000)),
    ("http://langfuse-web.langfuse.svc.cluster.local:3000", ("langfuse", "langfuse-web", 3000)),
    ("http://web.obs.svc", ("obs", "web", 80)),
    ("https://cloud.langfuse.com", None),
    ("https://langfuse.example.com", None),
    ("http://localhost:3000", None),
])
def test_langfuse_url_to_service(url, expected):
    assert langfuse.cluster_service(url, NS) == expected


def test_targets_down_and_missing():
    ctx = ctx_with()
    body = {"data": {"activeTargets": [
        {"scrapePool": f"serviceMonitor/{NS}/fs-fsagent-agent/0", "health": "up", "labels": {"job": "fsagent-agent"}},
        {"scrapePool": f"serviceMonitor/{NS}/fs-fsagent-gateway/0", "health": "down", "labels": {"job": "fsagent-gateway"},
         "scrapeUrl": "http://10.0.0.9:9104/metrics", "lastError": "context deadline exceeded"},
        {"scrapePool": "serviceMonitor/other/fs-fsagent-cache/0", "health": "up", "labels": {"job": "fsagent-cache"}}]}}
    check = monitoring.evaluate_targets(ctx, "monitoring/kps", "monitoring/prometheus-operated:web", body,
                                        ["fs-fsagent-agent", "fs-fsagent-gateway"])
    assert check.status == FAIL and "fsagent-agent 1/1 up" in check.detail and "context deadline exceeded" in check.detail
    check = monitoring.evaluate_targets(ctx, "monitoring/kps", "x", body, ["fs-fsagent-agent", "fs-fsagent-cache"])
    assert check.status == FAIL and "no target discovered for fs-fsagent-cache" in check.detail
    assert monitoring.evaluate_targets(ctx, "monitoring/kps", "x", body, ["fs-fsagent-agent"]).status == PASS


def test_report_text_json_and_exit_codes():
    report = Report(namespace=NS, release="fs", server="https://k", identity="me")
    report.add(Check("a", PASS, "fine", "ignored for PASS"), Check("b", WARN, "hm", "do x"))
    assert report.exit_code() == 1 and report.exit_code(warnings_ok=True) == 0
    data = report.to_json()
    assert data["checks"][0] == {"name": "a", "status": "PASS", "detail": "fine", "fix": ""}
    assert data["summary"] == {"pass": 1, "warn": 1, "fail": 0} and data["exit_code"] == 1
    report.add(Check("c", FAIL, "broken", "do y"))
    assert report.exit_code(warnings_ok=True) == 2
    out = io.StringIO()
    report.print_text(out)
    text = out.getvalue()
    assert "PASS  a  fine" in text and "FAIL  c  broken" in text and "fix: do y" in text
    assert text.rstrip().endswith("1 passed, 1 warnings, 1 failed")
    json.loads(json.dumps(report.to_json()))
    with pytest.raises(ValueError):
        Check("x", "SKIP", "")
