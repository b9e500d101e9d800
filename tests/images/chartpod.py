"""Run the chart's workloads with podman, the way a kubelet would run them.

`helm template` renders the chart; each Deployment/StatefulSet's pod spec becomes one `podman run`:
the container's image (rewritten to the locally built fsagent-<svc>:dev), its env (envFrom the rendered
ConfigMap, then env), securityContext (user, group, fsGroup as a supplementary group, read-only root
file system, capabilities, no privilege escalation, seccomp RuntimeDefault = the runtime's default
profile), volumes (emptyDir -> tmpfs of the sizeLimit, the data PVC -> the sample documents, any other
claim -> a podman named volume), the memory/cpu limits, and its probes. Anything in a pod spec this
module does not know how to honour raises, so a chart change cannot be silently ignored.

The four containers share one network namespace (a podman pod on slirp4netns, ports published on
127.0.0.1 only): the chart's service host names resolve to 127.0.0.1 through --add-host, where a
cluster gives each pod its own address behind a Service. Each container keeps its own mount, pid,
ipc and user view.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fsagent"
TOOLS = REPO / ".tools"
CONTAINERS_CONF = TOOLS / "podman" / "containers.conf"
IMAGE_TAG = os.environ.get("FSAGENT_IMAGE_TAG", "dev")
COMPONENTS = ("cache", "sandbox", "agent", "gateway")

# Pod spec keys that are cluster-only (nothing to emulate in one podman pod) or handled below.
POD_KEYS_IGNORED = {"serviceAccountName", "automountServiceAccountToken", "enableServiceLinks",
                    "terminationGracePeriodSeconds", "affinity", "nodeSelector", "tolerations",
                    "topologySpreadConstraints", "priorityClassName", "imagePullSecrets"}
POD_KEYS_HANDLED = {"containers", "initContainers", "securityContext", "volumes"}
CONTAINER_KEYS_IGNORED = {"imagePullPolicy", "ports"}  # ports: published from the rendered list below
CONTAINER_KEYS_HANDLED = {"name", "image", "command", "args", "env", "envFrom", "securityContext",
                          "volumeMounts", "resources", "startupProbe", "livenessProbe", "readinessProbe"}
POD_SC_KEYS = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "fsGroupChangePolicy", "seccompProfile",
               "supplementalGroups"}
CONTAINER_SC_KEYS = {"runAsNonRoot", "runAsUser", "runAsGroup", "allowPrivilegeEscalation",
                     "readOnlyRootFilesystem", "privileged", "capabilities", "seccompProfile"}


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm_binary() -> str | None:
    local = TOOLS / "bin" / "helm"
    if local.exists():
        return str(local)
    from shutil import which

    return which("helm")


def render(sets: list[str]) -> list[dict[str, Any]]:
    helm = helm_binary()
    assert helm, "helm not found (scripts/install_tools.sh)"
    cmd = [helm, "template", "fsagent", str(CHART), "--namespace", "fsagent"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantity_bytes(q: str) -> int:
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|K|M|G)?", str(q))
    assert m, q
    mult = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3, None: 1}[m.group(2)]
    return int(float(m.group(1)) * mult)


def cpus(q: str) -> str:
    q = str(q)
    return str(int(q[:-1]) / 1000) if q.endswith("m") else q


def host_of(addr: str) -> str:
    """`dns:///name:port` or `name:port` -> name."""
    addr = addr.removeprefix("dns:///")
    return addr.rsplit(":", 1)[0]


@dataclass
class Workload:
    component: str
    pod: dict[str, Any]
    container: dict[str, Any]
    claims: list[str] = field(default_factory=list)  # volumeClaimTemplates names

    @property
    def ports(self) -> dict[str, int]:
        return {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}


@dataclass
class Rendered:
    docs: list[dict[str, Any]]

    def configmap(self, name: str) -> dict[str, str]:
        for d in self.docs:
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name:
                return d.get("data", {})
        raise KeyError(name)

    def workload(self, component: str) -> Workload:
        for d in self.docs:
            if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == f"fsagent-{component}":
                pod = d["spec"]["template"]["spec"]
                (container,) = [c for c in pod["containers"] if c["name"] == component]
                claims = [t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])]
                return Workload(component, pod, container, claims)
        raise KeyError(component)

    def service_hosts(self) -> set[str]:
        cfg = self.configmap("fsagent-config")
        return {host_of(cfg[k]) for k in ("FSAGENT_AGENT_ADDR", "FSAGENT_SANDBOX_ADDR", "FSAGENT_CACHE_ADDR")}


def container_env(rendered: Rendered, container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in container.get("envFrom", []) or []:
        assert set(src) == {"configMapRef"}, f"envFrom {src} not emulated"
        env.update(rendered.configmap(src["configMapRef"]["name"]))
    for e in container.get("env", []) or []:
        assert "value" in e, f"env {e['name']} comes from {e.get('valueFrom')}: not emulated (no secrets in this test)"
        env[e["name"]] = str(e["value"])
    return env


def run_args(rendered: Rendered, w: Workload, *, name: str, pod: str, data_dir: Path, volumes: dict[str, str],
             container: dict[str, Any] | None = None, seccomp: str | None = None) -> list[str]:
    """`podman create` arguments for one container of a rendered pod spec."""
    c = container or w.container
    unknown = set(w.pod) - POD_KEYS_IGNORED - POD_KEYS_HANDLED
    assert not unknown, f"{w.component}: pod spec keys not emulated: {unknown}"
    unknown = set(c) - CONTAINER_KEYS_IGNORED - CONTAINER_KEYS_HANDLED
    assert not unknown, f"{w.component}/{c['name']}: container keys not emulated: {unknown}"
    psc = w.pod.get("securityContext", {}) or {}
    csc = c.get("securityContext", {}) or {}
    assert not set(psc) - POD_SC_KEYS, f"pod securityContext keys not emulated: {set(psc) - POD_SC_KEYS}"
    assert not set(csc) - CONTAINER_SC_KEYS, f"securityContext keys not emulated: {set(csc) - CONTAINER_SC_KEYS}"

    image = c["image"].rsplit("/", 1)[-1].split(":")[0]
    assert image == f"fsagent-{w.component}", c["image"]
    args = ["--pod", pod, "--name", name, "--pull=never"]

    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    assert uid is not None and gid is not None, "the chart names the user and group"
    if csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
        assert int(uid) != 0
    args += ["--user", f"{uid}:{gid}"]
    # fsGroup: kubelet adds it as a supplementary group and gives the pod's volumes that group.
    for g in [psc.get("fsGroup"), *psc.get("supplementalGroups", [])]:
        if g is not None:
            args += ["--group-add", str(g)]
    if csc.get("readOnlyRootFilesystem"):
        # --read-only-tmpfs=false: podman would otherwise add writable /run, /tmp, /var/tmp that a
        # kubelet does not; only the chart's own mounts are writable.
        args += ["--read-only", "--read-only-tmpfs=false"]
    caps = csc.get("capabilities", {}) or {}
    for cap in caps.get("drop", []):
        args += ["--cap-drop", cap]
    for cap in caps.get("add", []):
        args += ["--cap-add", cap]
    if csc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    assert not csc.get("privileged"), "privileged containers are not emulated"
    profile = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    assert profile in ("RuntimeDefault", None), profile
    if seccomp:
        args += ["--security-opt", f"seccomp={seccomp}"]  # what another runtime's default changes

    limits = (c.get("resources") or {}).get("limits", {}) or {}
    if "memory" in limits:
        args += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        args += ["--cpus", cpus(limits["cpu"])]

    pod_volumes = {v["name"]: v for v in w.pod.get("volumes", [])}
    for m in c.get("volumeMounts", []) or []:
        vol = pod_volumes.get(m["name"])
        path = m["mountPath"]
        ro = bool(m.get("readOnly"))
        assert "subPath" not in m, "subPath not emulated"
        if vol is not None and "emptyDir" in vol:
            size = (vol["emptyDir"] or {}).get("sizeLimit")
            opts = f"type=tmpfs,destination={path},tmpfs-mode=1777"
            if size:
                opts += f",tmpfs-size={quantity_bytes(size)}"
            args += ["--mount", opts]
        elif vol is not None and "persistentVolumeClaim" in vol and m["name"] == "data":
            ro = ro or bool(vol["persistentVolumeClaim"].get("readOnly"))
            args += ["--mount", f"type=bind,source={data_dir},destination={path}" + (",ro=true" if ro else "")]
        elif m["name"] in w.claims or (vol is not None and "persistentVolumeClaim" in vol):
            source = volumes[m["name"]]
            args += ["--mount", f"type=volume,source={source},destination={path}" + (",ro=true" if ro else "")]
        else:
            raise AssertionError(f"volume {m['name']} ({vol}) not emulated")

    for k, v in sorted(container_env(rendered, c).items()):
        args += ["--env", f"{k}={v}"]
    if c.get("command"):
        args += ["--entrypoint", json.dumps(c["command"])]
    args.append(f"localhost/fsagent-{w.component}:{IMAGE_TAG}")
    args += list(c.get("args", []) or [])
    return args


# ---- probes, as a kubelet runs them --------------------------------------------------------------


def grpc_probe(port: int, timeout: float) -> bool:
    """Kubelet's gRPC probe: grpc.health.v1.Health/Check, service "", success iff SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_probe(port: int, path: str, timeout: float) -> bool:
    """Kubelet's HTTP probe: GET, success iff 200 <= status < 400."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return 200 <= r.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def probe(spec: dict[str, Any], host_ports: dict[int, int], named: dict[str, int]) -> bool:
    timeout = float(spec.get("timeoutSeconds", 1))
    if "grpc" in spec:
        return grpc_probe(host_ports[int(spec["grpc"]["port"])], timeout)
    if "httpGet" in spec:
        port = spec["httpGet"]["port"]
        port = named[port] if isinstance(port, str) else int(port)
        return http_probe(host_ports[port], spec["httpGet"]["path"], timeout)
    raise AssertionError(f"probe {spec} not emulated")


# ---- memory, as the kubelet reads it -------------------------------------------------------------


def memory(container: str) -> dict[str, int]:
    """cgroup v1 figures of one container: working set (what kubelet evicts and OOM-kills on:
    usage minus inactive file cache) and RSS."""
    path = podman("inspect", "--format", "{{.State.CgroupPath}}", container).stdout.strip()
    base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    if not base.exists():  # cgroup v2
        base = Path("/sys/fs/cgroup") / path.lstrip("/")
        usage = int((base / "memory.current").read_text())
        stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
        return {"working_set": usage - int(stat.get("inactive_file", 0)), "rss": int(stat.get("anon", 0))}
    usage = int((base / "memory.usage_in_bytes").read_text())
    stat = {k: int(v) for k, v in (line.split() for line in (base / "memory.stat").read_text().splitlines())}
    return {"working_set": usage - stat.get("total_inactive_file", 0), "rss": stat.get("total_rss", 0)}


PREFIX = "fsagent-it-"


def new_id() -> str:
    return PREFIX + secrets.token_hex(4)


def remove_stale(max_age_s: float = 3 * 3600) -> None:
    """Remove what an earlier run killed mid-way left (pods, containers, volumes named fsagent-it-*
    and older than max_age_s); younger ones may belong to a run in progress in the same checkout."""
    from datetime import datetime, timezone

    def age(kind: list[str], name: str, field: str) -> float:
        created = podman(*kind, "inspect", "--format", "{{." + field + "}}", name, check=False).stdout.strip()
        # "2026-12-03 19:15:31.994157627 +0000 UTC" -> ISO 8601 with microseconds
        iso = re.sub(r"(\.\d{6})\d*", r"\1", created.split(" m=")[0].replace(" +0000 UTC", "+00:00"))
        return (datetime.now(timezone.utc) - datetime.fromisoformat(iso.replace(" ", "T", 1))).total_seconds()

    for kind, ls, field in ((["pod"], ["pod", "ls"], "Created"), ([], ["ps", "-a"], "Created"),
                            (["volume"], ["volume", "ls"], "CreatedAt")):
        for name in podman(*ls, "--format", "{{.Names}}" if ls == ["ps", "-a"] else "{{.Name}}",
                           check=False).stdout.split():
            try:
                if name.startswith(PREFIX) and age(kind, name, field) > max_age_s:
                    podman(*kind, "rm", "--force", name, check=False)
            except ValueError:
                continue


def wait(pred, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until pred() is true, or None after timeout."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)
