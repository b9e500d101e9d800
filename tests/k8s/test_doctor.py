"""`fsagent doctor` and the chart's `helm test` against the real API server.

One release is installed and made healthy the way a cluster would: local processes stand in for the
pods (the four fsagent services, a Langfuse stand-in, a real Prometheus running the operator's
generated configuration), listening on one of this machine's own non-loopback addresses; the tests
write what a kubelet and the controllers would (pods from the workloads' templates, running and
ready at that address; workload status; EndpointSlices and Endpoints; claims bound; the replica
count the HPAs set). The API server's service and pod proxies then reach those processes exactly as
they would reach pods. The doctor runs the way the helm test pod runs it: in-cluster (the same
loader, a ServiceAccount token from the TokenRequest API, the CA, the namespace file), with the
arguments of the installed test hook, as the chart's least-privilege ServiceAccount, never as
cluster-admin. Then each named fault is injected, shown to fail exactly its check with its fix, and
undone."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from fsagent.cli.localstack import LocalStack, Ports
from fsagent.cli.main import main as cli_main
from tests.fakes.langfuse_server import FakeLangfuse
from tests.fakes.prometheus_server import PrometheusServer
from tests.k8s.conftest import CHART, CP_BIN, REPO, ControlPlane, bind_claims
from tests.k8s.controllers import (
    container_statuses, delete_endpoints, local_address, run_pods, set_pod_ready, workload_status, write_endpoints,
)
from tests.k8s.prometheus import generated_config, kube_prometheus_stack_prometheus

pytestmark = pytest.mark.integration

RELEASE = "fs"
PROMETHEUS = CP_BIN / "prometheus"
LANGFUSE_KEYS = {"LANGFUSE_PUBLIC_KEY": "pk-lf-doctor", "LANGFUSE_SECRET_KEY": "sk-lf-doctor"}
HPA_REPLICAS = {"gateway": 2, "agent": 2}  # the chart's autoscaling.minReplicas, which the HPA controller sets
SA = f"{RELEASE}-fsagent-doctor"
ARTIFACTS = REPO / ".tools" / "doctor"  # the reports, for docs/operations.md


@dataclass
class World:
    cp: ControlPlane
    ns: str
    monitoring: str
    ip: str
    stack: LocalStack
    prometheus: dict[str, Any]
    kps_release: str
    sa_dir: Path
    test_args: list[str]
    tmp: Path
    reports: dict[str, str] = field(default_factory=dict)

    def doctor(self, *extra: str, as_admin: bool = False, text: bool = False, args: list[str] | None = None,
               process: bool = False) -> tuple[int, Any]:
        """Run `fsagent doctor` as the helm test pod does (in-cluster, the chart's ServiceAccount), or
        from a kubeconfig as cluster-admin. process=True: as its own process (the console script's
        exit code); otherwise the same main() in this process (no interpreter start-up per run)."""
        env: dict[str, str | None] = {"KUBECONFIG": None}
        if as_admin:
            argv = ["doctor", "--kubeconfig", str(self.cp.kubeconfig), "-n", self.ns, "--release", RELEASE]
        else:
            env.update(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=self.cp.server.rsplit(":", 1)[1],
                       FSAGENT_SERVICEACCOUNT_DIR=str(self.sa_dir))
            argv = list(args if args is not None else self.test_args)
        argv += list(extra)
        if not text:
            argv.append("--json")
        if process:
            full = {k: v for k, v in os.environ.items() if k not in env}
            full.update({k: v for k, v in env.items() if v is not None})
            proc = subprocess.run([sys.executable, "-m", "fsagent.cli", *argv], capture_output=True, text=True,
                                  timeout=120, env=full, cwd=REPO)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            saved = {k: os.environ.get(k) for k in env}
            buf, errbuf = io.StringIO(), io.StringIO()
            try:
                for k, v in env.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(errbuf):
                    code = cli_main(argv)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            out, err = buf.getvalue(), errbuf.getvalue()
        if text:
            return code, out
        assert out.strip(), err
        return code, json.loads(out)


def by_status(report: dict[str, Any], status: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"] if c["status"] == status}


def _pod_hook_args(cp: ControlPlane, ns: str, ip: str, gateway_port: int) -> list[str]:
    """The installed test hook's arguments, with the gateway Service's cluster DNS name (no cluster
    DNS here) replaced by the address its endpoints point at."""
    hooks = [d for d in yaml.safe_load_all(cp.helm("get", "hooks", RELEASE, "-n", ns).stdout) if d]
    (pod,) = [d for d in hooks if d["kind"] == "Pod"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["fsagent"]
    host = f"{RELEASE}-fsagent-gateway.{ns}.svc:{gateway_port}"
    args = [a.replace(f"http://{host}", f"http://{ip}:{gateway_port}") for a in container["args"]]
    assert any(a.startswith(f"--chat=http://{ip}:") for a in args), args
    return args


def _service_account_dir(cp: ControlPlane, ns: str, path: Path) -> Path:
    """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount: a token from the
    TokenRequest API for the chart's ServiceAccount, the cluster CA, the namespace."""
    path.mkdir(parents=True, exist_ok=True)
    token = cp.kubectl("create", "token", SA, "-n", ns, "--duration", "1h").stdout.strip()
    (path / "token").write_text(token)
    kubeconfig = yaml.safe_load(cp.kubeconfig.read_text())
    ca = kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
    (path / "ca.crt").write_bytes(base64.b64decode(ca))
    (path / "namespace").write_text(ns)
    return path


def _local_prometheus_config(config: dict[str, Any], kubeconfig: Path) -> dict[str, Any]:
    """The operator's configuration as a local Prometheus runs it: discovery through our kubeconfig,
    the $(VAR)s the config-reloader expands in the pod."""
    for job in config.get("scrape_configs") or []:
        for sd in job.get("kubernetes_sd_configs") or []:
            sd["kubeconfig_file"] = str(kubeconfig)
    text = yaml.safe_dump(config).replace("$(SHARD)", "0").replace("$(POD_NAME)", "prometheus-local-0")
    return yaml.safe_load(text)


def _grafana(namespace: str) -> dict[str, Any]:
    """kube-prometheus-stack's Grafana Deployment, reduced to what the doctor reads: the dashboard
    sidecar (kiwigrid k8s-sidecar) with the chart's default env."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "kps-grafana", "namespace": namespace, "labels": {"app.kubernetes.io/name": "grafana"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "grafana"}},
                 "template": {"metadata": {"labels": {"app.kubernetes.io/name": "grafana"}}, "spec": {"containers": [
                     {"name": "grafana-sc-dashboard", "image": "quay.io/kiwigrid/k8s-sidecar:1.30.3",
                      "env": [{"name": "METHOD", "value": "WATCH"}, {"name": "LABEL", "value": "grafana_dashboard"},
                              {"name": "LABEL_VALUE", "value": "1"}, {"name": "FOLDER", "value": "/tmp/dashboards"},
                              {"name": "RESOURCE", "value": "both"}, {"name": "NAMESPACE", "value": "ALL"}]},
                     {"name": "grafana", "image": "docker.io/grafana/grafana:12.1.0"}]}}},
    }


def _langfuse_web(cp: ControlPlane, ns: str, ip: str, port: int) -> None:
    """The Langfuse chart's web Service (release `langfuse`) and a pod behind it, at the stand-in."""
    cp.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "langfuse", "namespace": ns}})
    labels = {"app": "web", "app.kubernetes.io/instance": "langfuse"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "langfuse-web-0", "namespace": ns, "labels": labels},
           "spec": {"serviceAccountName": "langfuse", "automountServiceAccountToken": False, "containers": [
               {"name": "langfuse-web", "image": "docker.io/langfuse/langfuse:4.59.0",
                "ports": [{"name": "http", "containerPort": port}]}]}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "langfuse-web", "namespace": ns},
           "spec": {"selector": labels, "ports": [{"name": "http", "port": 3000, "targetPort": "http"}]}}
    cp.apply([pod, svc])
    set_pod_ready(cp, ns, "langfuse-web-0", pod["spec"], ip)
    write_endpoints(cp, svc, ip)


def _make_healthy(cp: ControlPlane, ns: str, ip: str) -> None:
    """Pods for every workload (HPA replica counts applied), their status, claims bound, endpoints."""
    for component, replicas in HPA_REPLICAS.items():
        cp.kubectl("scale", "deployment", f"{RELEASE}-fsagent-{component}", "-n", ns, f"--replicas={replicas}")
    for kind in ("deployment", "statefulset"):
        for w in cp.get(kind, namespace=ns)["items"]:
            w["kind"] = kind.capitalize() if kind == "deployment" else "StatefulSet"
            replicas = w["spec"].get("replicas", 1)
            if not [p for p in cp.get("pods", namespace=ns)["items"] if p["metadata"]["name"].startswith(w["metadata"]["name"] + "-")]:
                run_pods(cp, w, replicas, ip)
            workload_status(cp, w, replicas)
    bind_claims(cp, ns)
    for svc in cp.get("services", namespace=ns)["items"]:
        if svc["metadata"]["name"].startswith(f"{RELEASE}-fsagent-"):
            write_endpoints(cp, svc, ip)


@pytest.fixture(scope="module")
def world(control_plane: ControlPlane, tmp_path_factory) -> World:
    cp = control_plane
    ip = local_address()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this machine: the API server's proxies cannot reach a local process")
    if not PROMETHEUS.exists():
        pytest.skip(f"{PROMETHEUS} not built (scripts/control-plane.sh build)")
    tmp = tmp_path_factory.mktemp("doctor")
    monitoring, ns = cp.namespace("monitoring"), cp.namespace("doctor")
    # A release name of its own, so no other test's Prometheus selects this one (and the reverse).
    kps = f"kps-{uuid.uuid4().hex[:6]}"

    langfuse = FakeLangfuse(public_key=LANGFUSE_KEYS["LANGFUSE_PUBLIC_KEY"], secret_key=LANGFUSE_KEYS["LANGFUSE_SECRET_KEY"],
                            host=ip).start()
    data = tmp / "data"
    shutil.copytree(REPO / "data", data)
    ports = Ports.free(ip)
    stack = LocalStack(data_root=data, cache_dir=tmp / "cache", ports=ports, host=ip, log_dir=tmp / "logs",
                       extra_env={"LANGFUSE_BASE_URL": langfuse.base_url, "FSAGENT_SHUTDOWN_GRACE": "1", **LANGFUSE_KEYS})
    prom_proc: PrometheusServer | None = None
    stack.start(timeout=90)
    try:
        out = subprocess.run([str(PROMETHEUS), "--version"], capture_output=True, text=True).stdout
        prometheus = kube_prometheus_stack_prometheus(monitoring, release=kps, version="v" + out.split()[2],
                                                      serviceDiscoveryRole="EndpointSlice", scrapeInterval="1s")
        cp.apply(prometheus)
        cp.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"{kps}-prometheus", "namespace": monitoring}})
        cp.apply(_grafana(monitoring))
        cp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "langfuse-keys", "namespace": ns},
                  "stringData": LANGFUSE_KEYS})
        _langfuse_web(cp, ns, ip, langfuse.port)

        sets = [f"monitoring.release={kps}", "helmTest.clusterRead=true",
                "langfuse.baseUrl=http://langfuse-web:3000", "langfuse.existingSecret=langfuse-keys",
                "serviceMonitor.interval=1s", "serviceMonitor.scrapeTimeout=1s",
                f"ports.gateway={ports.gateway}", f"ports.agent={ports.agent}", f"ports.sandbox={ports.sandbox}",
                f"ports.cache={ports.cache}", f"ports.gatewayMetrics={ports.gateway_metrics}",
                f"ports.agentMetrics={ports.agent_metrics}", f"ports.sandboxMetrics={ports.sandbox_metrics}",
                f"ports.cacheMetrics={ports.cache_metrics}"]
        selector = json.dumps({"matchLabels": {"kubernetes.io/metadata.name": monitoring}})
        cp.helm("install", RELEASE, str(CHART), "-n", ns, *[x for s in sets for x in ("--set", s)],
                "--set-json", f"networkPolicy.prometheus.namespaceSelector={selector}")
        _make_healthy(cp, ns, ip)

        # The Prometheus the operator made a StatefulSet for: its pod at the local Prometheus, which
        # runs the configuration the operator generated for it.
        config = generated_config(cp, prometheus, namespace=ns, jobs=4)
        prom_proc = PrometheusServer(workdir=tmp / "prometheus", targets={}, binary=str(PROMETHEUS), host=ip,
                                     config=_local_prometheus_config(config, cp.kubeconfig))
        prom_proc.start()
        sts = cp.get("statefulset", f"prometheus-{kps}-prometheus", monitoring)
        sts["kind"] = "StatefulSet"
        for c in sts["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports") or []:
                if p.get("name") == "http-web":
                    p["containerPort"] = prom_proc.port
        run_pods(cp, sts, 1, ip)
        write_endpoints(cp, cp.get("service", "prometheus-operated", monitoring), ip)

        sa_dir = _service_account_dir(cp, ns, tmp / "serviceaccount")
        args = _pod_hook_args(cp, ns, ip, ports.gateway)
        w = World(cp=cp, ns=ns, monitoring=monitoring, ip=ip, stack=stack, prometheus=prometheus, kps_release=kps,
                  sa_dir=sa_dir, test_args=args, tmp=tmp)
        _wait_targets_up(w)
        yield w
    finally:
        if prom_proc:
            prom_proc.stop()
        stack.stop()
        langfuse.stop()


def _wait_targets_up(w: World, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        _, report = w.doctor()
        last = {c["name"]: c for c in report["checks"]}.get("prometheus/targets")
        if last and last["status"] == "PASS":
            return
        time.sleep(1)
    raise AssertionError(f"Prometheus never reported our targets up: {last}")


def _save(w: World, name: str, *extra: str, **kw: Any) -> str:
    code, text = w.doctor(*extra, text=True, **kw)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.txt").write_text(text + f"(exit code {code})\n")
    return text


# --- the healthy release -----------------------------------------------------------------------------

EXPECTED = {f"rollout/{RELEASE}-fsagent-{c}" for c in ("gateway", "agent", "sandbox", "cache")} | {
    f"volume/{RELEASE}-fsagent-data", f"volume/{RELEASE}-fsagent-cache",
    *(f"endpoints/{RELEASE}-fsagent-{s}" for s in ("gateway", "agent", "sandbox", "cache", "agent-headless",
                                                    "sandbox-headless", "cache-headless")),
    *(f"servicemonitor/{RELEASE}-fsagent-{c}" for c in ("gateway", "agent", "sandbox", "cache")),
    f"prometheusrule/{RELEASE}-fsagent", "prometheus/targets", "dashboards",
    "langfuse/keys", "langfuse/health", "langfuse/export",
    "networkpolicy/prometheus", "networkpolicy/ingress", "sandbox/confinement", "chat",
}


def test_healthy_release_passes_as_the_helm_test_pod_runs_it(world: World):
    code, report = world.doctor(process=True)
    names = {c["name"] for c in report["checks"]}
    assert names == EXPECTED, names ^ EXPECTED
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in report["checks"])
    assert not by_status(report, "FAIL") and not by_status(report, "WARN"), report
    assert code == 0 and report["exit_code"] == 0 and report["summary"] == {"pass": len(EXPECTED), "warn": 0, "fail": 0}
    checks = {c["name"]: c for c in report["checks"]}
    # It ran as the chart's ServiceAccount, in-cluster.
    assert report["identity"] == f"system:serviceaccount:{world.ns}:{SA}" and "in-cluster" in report["server"]
    assert "selected by Prometheus " + f"{world.monitoring}/{world.kps_release}-prometheus" in checks[f"servicemonitor/{RELEASE}-fsagent-gateway"]["detail"]
    assert all(f"fsagent-{c} 1/1 up" in checks["prometheus/targets"]["detail"] or f"fsagent-{c} 2/2 up" in checks["prometheus/targets"]["detail"]
               for c in ("gateway", "agent", "sandbox", "cache")), checks["prometheus/targets"]
    assert "grafana_dashboard=1" in checks["dashboards"]["detail"]
    assert "Langfuse 4.59.0" in checks["langfuse/health"]["detail"]
    assert "spans exported, 0 failed" in checks["langfuse/export"]["detail"]
    assert "trace id " in checks["chat"]["detail"]
    _save(world, "healthy")


def test_cluster_admin_from_a_kubeconfig_sees_the_same(world: World):
    """Out of the cluster, with a kubeconfig: per-pod metrics through the pod proxy, the chat through
    the API server's service proxy."""
    code, report = world.doctor("--chat", as_admin=True)
    assert code == 0, by_status(report, "FAIL") | by_status(report, "WARN")
    checks = {c["name"]: c for c in report["checks"]}
    assert "pod " in checks["sandbox/confinement"]["detail"]
    assert "through the API server" in checks["chat"]["detail"]
    assert report["identity"] == "admin"


def test_the_role_is_read_only_and_narrow(world: World):
    cp = world.cp
    role = cp.get("role", SA, world.ns)
    cluster_role = cp.get("clusterrole", f"{world.ns}-{SA}")
    for r in (role, cluster_role):
        for rule in r["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    proxy = [r for r in role["rules"] if "services/proxy" in r["resources"]]
    assert proxy and all(set(r["verbs"]) == {"get"} for r in proxy)
    names = {n for r in proxy for n in r["resourceNames"]}
    assert names == {f"{RELEASE}-fsagent-{c}:metrics" for c in ("gateway", "agent", "sandbox", "cache")} | {"langfuse-web:3000"}
    secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["langfuse-keys"], "verbs": ["get"]}]
    # What that means for the token: no other Secret, no write of any kind.
    assert _can(world, "get", "secrets/langfuse-keys")
    assert not _can(world, "get", "secrets/other") and not _can(world, "list", "secrets")
    assert not _can(world, "create", "pods") and not _can(world, "delete", "deployments")
    assert not _can(world, "create", "pods/exec") and not _can(world, "create", "services/proxy")


def _can(world: World, *args: str) -> bool:
    token = (world.sa_dir / "token").read_text()
    return world.cp.kubectl("auth", "can-i", *args, "-n", world.ns, "--token", token,
                            check=False).stdout.strip() == "yes"


def test_the_chart_default_role_alone_passes_helm_test_with_warnings(world: World):
    """helmTest.clusterRead=false (the default): what lives in other namespaces cannot be read, the
    checks that need it WARN saying so, nothing FAILs, and --warnings-ok (the pod's flag) exits 0."""
    cp = world.cp
    cp.helm("upgrade", RELEASE, str(CHART), "-n", world.ns, "--reuse-values", "--set", "helmTest.clusterRead=false")
    try:
        assert cp.get("clusterrolebinding", f"{world.ns}-{SA}", check=False) is None
        # The Role alone: the metrics ports through the service proxy, never the API port (documents).
        assert _can(world, "get", f"services/{RELEASE}-fsagent-gateway:metrics", "--subresource=proxy")
        assert not _can(world, "get", f"services/{RELEASE}-fsagent-gateway:http", "--subresource=proxy")
        assert not _can(world, "list", "prometheuses.monitoring.coreos.com", "-A")
        code, report = world.doctor()
        assert code == 0 and not by_status(report, "FAIL"), by_status(report, "FAIL")
        warned = by_status(report, "WARN")
        assert set(warned) >= {f"servicemonitor/{RELEASE}-fsagent-gateway", "prometheus/targets", "dashboards"}, warned
        assert all("helmTest.clusterRead=true" in c["fix"] or "fix the servicemonitor" in c["fix"] for c in warned.values()), warned
        code, _ = world.doctor(args=[a for a in world.test_args if a != "--warnings-ok"])
        assert code == 1
        _save(world, "role-only")
    finally:
        cp.helm("upgrade", RELEASE, str(CHART), "-n", world.ns, "--reuse-values", "--set", "helmTest.clusterRead=true")


# --- each named fault fails exactly its check ------------------------------------------------------------

def _label_monitor(w: World, undo: bool) -> None:
    value = f"release={w.kps_release}" if undo else "release-"
    w.cp.kubectl("label", "servicemonitor", f"{RELEASE}-fsagent-gateway", "-n", w.ns, value, "--overwrite")


def _namespace_selector(w: World, undo: bool) -> None:
    value = {} if undo else {"matchLabels": {"monitoring": "enabled"}}
    patch = [{"op": "replace", "path": f"/spec/{f}", "value": value}
             for f in ("serviceMonitorNamespaceSelector", "ruleNamespaceSelector")]
    w.cp.kubectl("patch", "prometheus", f"{w.kps_release}-prometheus", "-n", w.monitoring, "--type=json", "-p", json.dumps(patch))


def _langfuse_key(w: World, undo: bool) -> None:
    if undo:
        value = base64.b64encode(LANGFUSE_KEYS["LANGFUSE_SECRET_KEY"].encode()).decode()
        patch = [{"op": "add", "path": "/data/LANGFUSE_SECRET_KEY", "value": value}]
    else:
        patch = [{"op": "remove", "path": "/data/LANGFUSE_SECRET_KEY"}]
    w.cp.kubectl("patch", "secret", "langfuse-keys", "-n", w.ns, "--type=json", "-p", json.dumps(patch))


def _crash_loop(w: World, undo: bool) -> None:
    """The kubelet reports the second agent pod crash-looping; the Deployment and endpoint
    controllers follow (one of two ready, its endpoint not ready)."""
    cp = w.cp
    deployment = cp.get("deployment", f"{RELEASE}-fsagent-agent", w.ns)
    deployment["kind"] = "Deployment"
    pods = sorted(p["metadata"]["name"] for p in cp.get("pods", namespace=w.ns)["items"]
                  if p["metadata"]["name"].startswith(f"{RELEASE}-fsagent-agent-"))
    victim = pods[-1]
    spec = cp.get("pod", victim, w.ns)["spec"]
    if undo:
        set_pod_ready(cp, w.ns, victim, spec, w.ip)
        workload_status(cp, deployment, 2)
        not_ready: set[str] = set()
    else:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        statuses = container_statuses(spec, containerStatuses=[{
            "name": "agent", "image": spec["containers"][0]["image"], "imageID": "", "ready": False, "started": False,
            "restartCount": 6, "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                     "message": "back-off 2m40s restarting failed container=agent"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now}}}])
        set_pod_ready(cp, w.ns, victim, spec, w.ip, ready=False, statuses=statuses)
        workload_status(cp, deployment, 1)
        not_ready = {victim}
    for svc in (f"{RELEASE}-fsagent-agent", f"{RELEASE}-fsagent-agent-headless"):
        write_endpoints(cp, cp.get("service", svc, w.ns), w.ip, not_ready=not_ready)


def _no_endpoints(w: World, undo: bool) -> None:
    svc = f"{RELEASE}-fsagent-agent-headless"
    if undo:
        write_endpoints(w.cp, w.cp.get("service", svc, w.ns), w.ip)
    else:
        delete_endpoints(w.cp, w.ns, svc)


def _network_policy(w: World, undo: bool) -> None:
    """Installed with the chart's default Prometheus namespace (`monitoring`), not where it runs."""
    name = w.monitoring if undo else "monitoring"
    selector = json.dumps({"matchLabels": {"kubernetes.io/metadata.name": name}})
    w.cp.helm("upgrade", RELEASE, str(CHART), "-n", w.ns, "--reuse-values",
              "--set-json", f"networkPolicy.prometheus.namespaceSelector={selector}")


MONITORS = {f"servicemonitor/{RELEASE}-fsagent-{c}" for c in ("gateway", "agent", "sandbox", "cache")}
FAULTS = {
    # name: (inject/undo, the checks that must FAIL, text of their fix, checks allowed to WARN as a consequence)
    "servicemonitor-without-label": (_label_monitor, {f"servicemonitor/{RELEASE}-fsagent-gateway"}, "release=", set()),
    "namespace-selector-excludes-us": (_namespace_selector, MONITORS | {f"prometheusrule/{RELEASE}-fsagent"},
                                       "kubectl label namespace", {"prometheus/targets", "networkpolicy/prometheus"}),
    "langfuse-secret-key-missing": (_langfuse_key, {"langfuse/keys"}, "LANGFUSE_SECRET_KEY", set()),
    "crash-looping-container": (_crash_loop, {f"rollout/{RELEASE}-fsagent-agent"}, "--previous", set()),
    "service-without-endpoints": (_no_endpoints, {f"endpoints/{RELEASE}-fsagent-agent-headless"}, "endpointslices", set()),
    "networkpolicy-blocks-prometheus": (_network_policy, {"networkpolicy/prometheus"}, "networkPolicy.prometheus.namespaceSelector", set()),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_fails_exactly_its_check(world: World, fault: str):
    change, expected, fix_text, may_warn = FAULTS[fault]
    change(world, undo=False)
    try:
        code, report = world.doctor()
        failing = by_status(report, "FAIL")
        assert set(failing) == expected, {k: v["detail"] for k, v in failing.items()}
        assert set(by_status(report, "WARN")) <= may_warn, by_status(report, "WARN")
        assert all(fix_text in c["fix"] for c in failing.values()), failing
        assert code == 2 and report["exit_code"] == 2
        _save(world, fault)
    finally:
        change(world, undo=True)
    code, report = world.doctor()
    assert code == 0, by_status(report, "FAIL") | by_status(report, "WARN")


def test_fault_details_name_what_was_seen(world: World):
    """The words an operator reads: which label, which namespace, which container and why."""
    _label_monitor(world, undo=False)
    try:
        _, report = world.doctor()
    finally:
        _label_monitor(world, undo=True)
    check = by_status(report, "FAIL")[f"servicemonitor/{RELEASE}-fsagent-gateway"]
    assert f"needs release={world.kps_release}" in check["detail"]
    assert f"--set monitoring.release={world.kps_release}" in check["fix"]

    _crash_loop(world, undo=False)
    try:
        _, report = world.doctor()
    finally:
        _crash_loop(world, undo=True)
    check = by_status(report, "FAIL")[f"rollout/{RELEASE}-fsagent-agent"]
    assert "1/2 ready" in check["detail"] and "CrashLoopBackOff, 6 restarts" in check["detail"]
    assert "last terminated: Error (exit 1)" in check["detail"]
