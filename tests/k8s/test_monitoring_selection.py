"""kube-prometheus-stack's Prometheus, with its default selectors, picks up the chart's
ServiceMonitors and PrometheusRule when the documented value is set, and the real operator turns
them into scrape jobs and rule files; `kubectl apply --server-side` of k8s/ is accepted."""

from __future__ import annotations

import yaml

from tests.k8s.conftest import CHART, REPO, ControlPlane
from tests.k8s.prometheus import generated_config, kube_prometheus_stack_prometheus, rule_files, service_monitor_jobs

COMPONENTS = ("gateway", "agent", "sandbox", "cache")


def test_default_install_is_selected_by_a_default_kube_prometheus_stack(control_plane: ControlPlane):
    cp = control_plane
    monitoring = cp.namespace("monitoring")
    ns = cp.namespace("app")
    prometheus = kube_prometheus_stack_prometheus(monitoring)
    cp.apply(prometheus)
    # Defaults only: monitoring.release is kube-prometheus-stack, the release name its docs install.
    cp.helm("install", "fs", str(CHART), "-n", ns)

    config = generated_config(cp, prometheus, namespace=ns, jobs=4)
    jobs = service_monitor_jobs(config, ns)
    assert sorted(jobs) == sorted(f"serviceMonitor/{ns}/fs-fsagent-{c}/0" for c in COMPONENTS)
    for job in config["scrape_configs"]:
        if f"/{ns}/" not in job["job_name"]:
            continue
        # Service discovery is confined to our namespace, the endpoint port is `metrics`, and the
        # job label is the release-independent one the alerts and dashboards use.
        (sd,) = job["kubernetes_sd_configs"]
        assert sd["namespaces"]["names"] == [ns]
        keep_port = [r for r in job["relabel_configs"] if r.get("action") == "keep" and r.get("regex") == "metrics"]
        assert keep_port, job["job_name"]
        component = job["job_name"].split("/")[2].removeprefix("fs-fsagent-")
        assert any(r.get("target_label") == "job" and r.get("replacement") == f"fsagent-{component}"
                   for r in job["relabel_configs"])

    files = rule_files(cp, prometheus, namespace=ns)
    ours = [body for name, body in files.items() if name.startswith(f"{ns}-fs-fsagent-")]
    assert len(ours) == 1, sorted(files)
    groups = {g["name"]: g for g in yaml.safe_load(ours[0])["groups"]}
    assert {"fsagent.recording", "fsagent.alerts"} <= set(groups)
    assert any(r.get("alert") == "FsagentServiceDown" for r in groups["fsagent.alerts"]["rules"])


def test_another_release_name_needs_the_one_value(control_plane: ControlPlane):
    """A kube-prometheus-stack installed as `kps` ignores a default install; `monitoring.release=kps` fixes it."""
    cp = control_plane
    monitoring = cp.namespace("monitoring")
    ns = cp.namespace("app")
    prometheus = kube_prometheus_stack_prometheus(monitoring, release="kps")
    cp.apply(prometheus)
    cp.helm("install", "fs", str(CHART), "-n", ns)
    other = cp.namespace("app")
    cp.helm("install", "fs", str(CHART), "-n", other, "--set", "monitoring.release=kps")

    config = generated_config(cp, prometheus, namespace=other, jobs=4)
    assert len(service_monitor_jobs(config, other)) == 4
    assert not service_monitor_jobs(config, ns), "selected without the release label"
    files = rule_files(cp, prometheus, namespace=other)
    assert [n for n in files if n.startswith(f"{other}-")] and not [n for n in files if n.startswith(f"{ns}-")]


def test_k8s_manifests_apply_server_side(control_plane: ControlPlane):
    cp = control_plane
    cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fsagent"}})
    for overlay in ("base", "monitoring"):
        out = cp.kubectl("apply", "--server-side", "--field-manager", "fsagent-tests", "-k", str(REPO / "k8s" / overlay)).stdout
        assert out.strip() and all(("serverside-applied" in line) for line in out.strip().splitlines()), out
    kinds = {
        "deployments": {"fsagent-gateway", "fsagent-agent", "fsagent-sandbox"},
        "statefulsets": {"fsagent-cache"},
        "persistentvolumeclaims": {"fsagent-data", "fsagent-cache"},
        "servicemonitors.monitoring.coreos.com": {f"fsagent-{c}" for c in COMPONENTS},
        "prometheusrules.monitoring.coreos.com": {"fsagent"},
    }
    for kind, names in kinds.items():
        assert {o["metadata"]["name"] for o in cp.get(kind, namespace="fsagent")["items"]} == names, kind
    # A second apply is a no-op for the API server (no field conflicts with itself).
    cp.kubectl("apply", "--server-side", "--field-manager", "fsagent-tests", "-k", str(REPO / "k8s" / "base"))
