"""The four images, built with podman from their Dockerfiles (scripts/build_images.sh), run the way the
chart runs them: the chart's user and group, read-only root file system with only the chart's
writable mounts, every capability dropped, no privilege escalation, RuntimeDefault seccomp, the
chart's environment and memory limits (all rendered with `helm template`, see chartpod.py), the cache
on a volume, the sample documents mounted read-only into the sandbox. Probes are exercised as a kubelet
would; then a chat through the gateway container, the metrics ports, the sandbox's walls inside the
container (and under a containerd/Docker-style seccomp profile), memory at idle and after 100 chats,
and each image's package inventory. Figures go to .tools/images/figures.json (docs/deploy.md quotes
them).

Skipped, saying why, only where podman cannot run (not root, no podman and no apt-get, or a kernel
that refuses containers). Everything started here is removed at the end, failures included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images import chartpod as cp

pytestmark = [pytest.mark.containers, pytest.mark.integration, pytest.mark.timeout(3600)]

FIGURES = cp.TOOLS / "images" / "figures.json"
QUESTIONS = [
    "What are the password rules?",
    "What is the VPN host name?",
    "How many vacation days do employees get?",
    "What is the meal expense limit?",
]
BASIC_LAYERS = ("process_group", "empty_env", "rlimits", "unprivileged_uid")


def record(**figures: Any) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data.update(figures)
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def why_no_podman() -> str | None:
    if not sys.platform.startswith("linux"):
        return "podman containers need Linux"
    if os.geteuid() != 0:
        return "scripts/build_images.sh needs root (debootstrap, rootful podman)"
    if not shutil.which("podman") and not shutil.which("apt-get"):
        return "no podman and no apt-get to install it"
    return None


def build(*args: str, timeout: float) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(cp.REPO / "scripts" / "build_images.sh"), *args],
                          capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(proc.stderr)
    assert proc.returncode == 0, f"build_images.sh {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    reason = why_no_podman()
    if reason:
        pytest.skip(reason)
    build("--base-only", timeout=1800)
    smoke = cp.podman("run", "--rm", "--network", "none", "--pull=never",
                      "docker.io/library/" + base_image(), "true", check=False, timeout=120)
    if smoke.returncode != 0:
        pytest.skip(f"podman cannot run containers here: {smoke.stderr.strip()[-400:]}")
    # Always: a warm build only re-runs the steps whose inputs changed, so the images match the tree.
    seconds = build(timeout=2400)
    record(build_seconds_last=round(seconds, 1))
    return {c: f"localhost/fsagent-{c}:{cp.IMAGE_TAG}" for c in cp.COMPONENTS}


def base_image() -> str:
    text = (cp.REPO / "services" / "gateway" / "Dockerfile").read_text()
    return re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)


class Stack:
    def __init__(self, rendered: cp.Rendered, pod: str) -> None:
        self.rendered = rendered
        self.pod = pod
        self.names = {c: f"{pod}-{c}" for c in cp.COMPONENTS}
        self.volumes = {"cache": f"{pod}-cache"}
        self.workloads = {c: rendered.workload(c) for c in cp.COMPONENTS}
        self.host_ports: dict[int, int] = {}
        for w in self.workloads.values():
            for port in w.ports.values():
                self.host_ports[port] = cp.free_port()
        self.cold_start: dict[str, float] = {}
        self.idle_memory: dict[str, dict[str, int]] = {}

    def url(self, container_port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.host_ports[container_port]}{path}"

    @property
    def gateway(self) -> str:
        return self.url(self.workloads["gateway"].ports["http"])

    def logs(self, component: str) -> str:
        proc = cp.podman("logs", self.names[component], check=False)
        return proc.stdout + proc.stderr

    def exec(self, component: str, script: str) -> str:
        return cp.podman("exec", self.names[component], "/bin/sh", "-c", script).stdout


def startup_budget(spec: dict[str, Any]) -> float:
    return spec.get("initialDelaySeconds", 0) + spec.get("periodSeconds", 10) * spec.get("failureThreshold", 3)


@pytest.fixture(scope="module")
def stack(images) -> Stack:
    cp.remove_stale()
    # The chat limit is off: the memory figure takes 100 chats from one address in seconds.
    rendered = cp.Rendered(cp.render(["config.readOnly=true", "config.chatRateLimit="]))
    st = Stack(rendered, cp.new_id())
    data = cp.REPO / "data"
    try:
        pod_args = ["pod", "create", "--name", st.pod, "--share", "net",
                    "--network", "slirp4netns:port_handler=slirp4netns"]
        for container_port, host_port in sorted(st.host_ports.items()):
            pod_args += ["-p", f"127.0.0.1:{host_port}:{container_port}"]
        for host in sorted(rendered.service_hosts()):
            pod_args += ["--add-host", f"{host}:127.0.0.1"]
        cp.podman(*pod_args)
        cp.podman("volume", "create", st.volumes["cache"])
        cp.podman("pod", "start", st.pod)
        # One at a time, in dependency order, so each cold start is measured alone: podman start, then
        # the startup probe as a kubelet runs it, at a 0.1 s grain, within the probe's own budget.
        for c in cp.COMPONENTS:
            w = st.workloads[c]
            cp.podman("create", *cp.run_args(rendered, w, name=st.names[c], pod=st.pod, data_dir=data,
                                             volumes=st.volumes))
            spec = w.container["startupProbe"]
            t0 = time.monotonic()
            cp.podman("start", st.names[c])
            ready = cp.wait(lambda spec=spec, w=w: cp.probe(spec, st.host_ports, w.ports), startup_budget(spec))
            assert ready is not None, f"{c}: startup probe failed for {startup_budget(spec)} s\n{st.logs(c)[-3000:]}"
            st.cold_start[c] = round(time.monotonic() - t0, 2)
        time.sleep(3)
        st.idle_memory = {c: cp.memory(st.names[c]) for c in cp.COMPONENTS}
        record(cold_start_seconds=st.cold_start, idle_memory_bytes=st.idle_memory)
        yield st
    finally:
        for c in cp.COMPONENTS:
            log = st.logs(c) if cp.podman("container", "exists", st.names[c], check=False).returncode == 0 else ""
            if log:
                sys.stdout.write(f"---- {c} log (tail) ----\n{log[-2000:]}\n")
        cp.podman("pod", "rm", "--force", "--time", "3", st.pod, check=False)
        cp.podman("volume", "rm", "--force", st.volumes["cache"], check=False)


def test_containers_run_as_the_chart_says(stack: Stack) -> None:
    for c in cp.COMPONENTS:
        info = json.loads(cp.podman("inspect", stack.names[c]).stdout)[0]
        host = info["HostConfig"]
        assert info["Config"]["User"] == "10001:10001"
        assert host["ReadonlyRootfs"] is True
        assert "no-new-privileges" in " ".join(host.get("SecurityOpt") or [])
        status = stack.exec(c, "cat /proc/1/status")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split()[:2] == ["10001", "10001"] and fields["Gid"].split()[:2] == ["10001", "10001"]
        assert "10001" in fields["Groups"].split(), "fsGroup as a supplementary group"
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[cap], 16) == 0, f"{c}: {cap}={fields[cap].strip()}"
        assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
        # Root file system read-only; /tmp the only writable place besides the chart's volumes.
        probe = stack.exec(c, "for d in / /opt /usr /var/tmp /run /tmp; do "
                              "if touch $d/.w 2>/dev/null; then echo $d:rw; rm -f $d/.w; else echo $d:ro; fi; done")
        modes = dict(line.split(":") for line in probe.split())
        assert modes == {"/": "ro", "/opt": "ro", "/usr": "ro", "/var/tmp": "ro", "/run": "ro", "/tmp": "rw"}, modes


def test_probes_as_a_kubelet(stack: Stack) -> None:
    for c, w in stack.workloads.items():
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            spec = w.container[kind]
            assert cp.probe(spec, stack.host_ports, w.ports), f"{c} {kind} {spec} failed"
    # The gateway's two endpoints by name, as the chart wires them.
    gw = stack.workloads["gateway"]
    assert {gw.container[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe")} == {"/health", "/ready"}
    assert httpx.get(stack.gateway + "/ready", timeout=5).json()["status"] == "ready"


def test_chat_through_the_gateway_container(stack: Stack) -> None:
    reply = httpx.post(stack.gateway + "/api/chat", json={"message": "What are the password rules?"}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "at least 14 characters" in body["response"]
    assert re.search(r"policies/password-policy\.md:\d+", body["response"]), body["response"]
    assert body["tool_results"] and all(r["result"]["success"] for r in body["tool_results"])
    assert re.fullmatch(r"[0-9a-f]{32}", body["trace_id"])
    assert reply.headers["x-trace-id"] == body["trace_id"]


def test_metrics_ports_answer(stack: Stack) -> None:
    prefix = {"gateway": "fsagent_http_requests_total", "agent": "fsagent_agent_", "sandbox": "fsagent_sandbox_",
              "cache": "fsagent_cache_"}
    for c, w in stack.workloads.items():
        port = w.ports["metrics"]
        reply = httpx.get(stack.url(port, "/metrics"), timeout=5)
        assert reply.status_code == 200 and prefix[c] in reply.text, f"{c}: no {prefix[c]}* on :{port}/metrics"


def confinement(log: str) -> dict[str, Any]:
    for line in log.splitlines():
        if '"sandbox confinement"' in line:
            return json.loads(line)
    raise AssertionError(f"no 'sandbox confinement' log line:\n{log[-2000:]}")


def gauge(text: str) -> dict[str, bool]:
    return {m.group(1): float(m.group(2)) == 1.0
            for m in re.finditer(r'^fsagent_sandbox_confinement_active\{layer="([a-z_]+)"\} ([0-9.]+)$', text, re.M)}


def test_sandbox_walls_inside_the_container(stack: Stack) -> None:
    port = stack.workloads["sandbox"].ports["metrics"]
    walls = gauge(httpx.get(stack.url(port, "/metrics"), timeout=5).text)
    logged = confinement(stack.logs("sandbox"))
    assert walls and {k for k, on in walls.items() if on} == set(logged["active_layers"]), (walls, logged)
    for layer in BASIC_LAYERS:
        assert walls[layer], f"{layer} inactive in the container: {logged}"
    assert logged["tool_uid"] == 10001
    record(walls_runtime_default={"active": logged["active_layers"], "inactive": logged["inactive_layers"],
                                  "launcher": logged["launcher"], "landlock_abi": logged["landlock_abi"],
                                  "notes": logged["notes"]})
    print("sandbox walls (podman's default seccomp profile = CRI-O's RuntimeDefault):", json.dumps(logged))


def containerd_like_profile(dest: Path) -> Path:
    """Podman's default seccomp profile with the namespace rules of the moby/containerd default
    (what RuntimeDefault is on Docker, containerd and so most managed clusters) for a process without
    CAP_SYS_ADMIN: unshare, setns, mount, umount2 and pivot_root refused, clone only without namespace
    flags, clone3 ENOSYS (so libc falls back to clone)."""
    profile = json.loads(Path("/usr/share/containers/seccomp.json").read_text())
    gated = {"unshare", "setns", "mount", "umount2", "pivot_root", "clone", "clone3"}
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("includes") and not rule.get("args"):
            rule["names"] = [n for n in rule["names"] if n not in gated]
    profile["syscalls"] = [r for r in profile["syscalls"] if not (set(r["names"]) & {"setns"})]
    profile["syscalls"] += [
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    ]
    dest.write_text(json.dumps(profile))
    return dest


def test_sandbox_walls_under_a_containerd_style_seccomp_profile(stack: Stack, tmp_path: Path) -> None:
    profile = containerd_like_profile(tmp_path / "seccomp.json")
    w = stack.workloads["sandbox"]
    name = f"{stack.pod}-sandbox-seccomp"
    args = cp.run_args(stack.rendered, w, name=name, pod=stack.pod, data_dir=cp.REPO / "data",
                       volumes=stack.volumes, seccomp=str(profile))
    # Not in the pod (its ports are taken): its own network namespace, no network.
    args = [a for a in args if a != "--pod" and a != stack.pod]
    args = ["--network", "none", *args]
    cp.podman("create", *args)
    try:
        cp.podman("start", name)
        def logs() -> str:
            proc = cp.podman("logs", name, check=False)
            return proc.stdout + proc.stderr

        assert cp.wait(lambda: '"sandbox confinement"' in logs(), 60) is not None, logs()[-2000:]
        logged = confinement(logs())
    finally:
        cp.podman("rm", "--force", "--time", "2", name, check=False)
    default = confinement(stack.logs("sandbox"))
    # User namespaces are refused, so bubblewrap (not root: it needs one) falls away; Landlock and the
    # basic layers do not depend on namespaces.
    assert "bubblewrap" not in logged["active_layers"], logged
    assert ("landlock" in logged["active_layers"]) == ("landlock" in default["active_layers"])
    for layer in BASIC_LAYERS:
        assert layer in logged["active_layers"]
    record(walls_containerd_style={"active": logged["active_layers"], "inactive": logged["inactive_layers"],
                                   "launcher": logged["launcher"], "notes": logged["notes"]})
    print("sandbox walls (containerd-style seccomp):", json.dumps(logged))


def test_memory_after_100_chats(stack: Stack) -> None:
    latencies = []
    with httpx.Client(base_url=stack.gateway, timeout=60) as client:
        for i in range(100):
            t0 = time.monotonic()
            reply = client.post("/api/chat", json={"message": QUESTIONS[i % len(QUESTIONS)]})
            latencies.append(time.monotonic() - t0)
            assert reply.status_code == 200, reply.text
            assert reply.json()["trace_id"]
    after = {c: cp.memory(stack.names[c]) for c in cp.COMPONENTS}
    for c in cp.COMPONENTS:
        limit = cp.quantity_bytes(stack.workloads[c].container["resources"]["limits"]["memory"])
        assert after[c]["working_set"] < limit, f"{c}: {after[c]} over its limit {limit}"
    record(memory_after_100_chats_bytes=after,
           chat_latency_ms={"p50": round(statistics.median(latencies) * 1000, 1),
                            "max": round(max(latencies) * 1000, 1)})
    for c in cp.COMPONENTS:
        print(f"{c}: idle {stack.idle_memory[c]['working_set'] / 2**20:.1f} MiB, "
              f"after 100 chats {after[c]['working_set'] / 2**20:.1f} MiB working set")


def test_cache_lives_on_its_volume(stack: Stack) -> None:
    mount = cp.podman("volume", "inspect", "--format", "{{.Mountpoint}}", stack.volumes["cache"]).stdout.strip()
    files = [p for p in Path(mount).rglob("*") if p.is_file()]
    assert any(p.name.startswith("cache.db") for p in files), files
    assert all(p.stat().st_uid == 10001 for p in files)


def test_seed_data_init_container(images, tmp_path: Path) -> None:
    """The default install (documents writable, seedSampleData) copies the image's sample documents
    into an empty data volume, as 10001 on a read-only root file system, once."""
    rendered = cp.Rendered(cp.render([]))
    w = rendered.workload("sandbox")
    (init,) = w.pod["initContainers"]
    pod = cp.new_id()
    vol = f"{pod}-data"
    cp.podman("volume", "create", vol)
    try:
        outputs = []
        for attempt in range(2):
            name = f"{pod}-seed-{attempt}"
            args = cp.run_args(rendered, w, name=name, pod=pod, data_dir=Path("/nonexistent"),
                               volumes={"data": vol}, container=init)
            args = [a for a in args if a not in ("--pod", pod)]
            # The data volume as a volume (a fresh PVC), not the repository's folder.
            args = [a.replace("type=bind,source=/nonexistent", f"type=volume,source={vol}") for a in args]
            proc = cp.podman("run", "--rm", "--network", "none", *args, check=False)
            assert proc.returncode == 0, proc.stderr
            outputs.append(proc.stdout.strip())
        assert outputs == ["seeded sample documents", "data volume not empty: left as is"], outputs
        mount = cp.podman("volume", "inspect", "--format", "{{.Mountpoint}}", vol).stdout.strip()
        assert (Path(mount) / "policies" / "password-policy.md").is_file()
    finally:
        cp.podman("volume", "rm", "--force", vol, check=False)


def test_image_inventory(images) -> None:
    """What each final image holds: size, Debian packages beyond the base, Python distributions; no
    compiler, no package installer for Python."""
    base = "docker.io/library/" + base_image()
    base_pkgs = set(cp.podman("run", "--rm", "--network", "none", base, "dpkg-query", "-W", "-f",
                              "${Package}\n").stdout.split())
    inventory: dict[str, Any] = {}
    for c, image in images.items():
        size = int(cp.podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
        script = (
            "dpkg-query -W -f '${Package}=${Version}\\n'; echo ---; "
            "/opt/venv/bin/python -c 'import importlib.metadata as m; "
            "print(\"\\n\".join(sorted(d.metadata[\"Name\"] + \"==\" + d.version for d in m.distributions())))'; "
            "echo ---; for t in gcc cc g++ make pip pip3 uv; do command -v $t; done; true; "
            "echo ---; du -sk /opt/venv /usr/lib/python3.11 | cut -f1"
        )
        out = cp.podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c", script).stdout
        debs, dists, tools, sizes = (part.split() for part in out.split("---"))
        added = sorted(d for d in debs if d.split("=")[0] not in base_pkgs)
        assert not tools, f"{c}: {tools} in the final image"
        assert not any(d.split("==")[0].lower() in ("pip", "uv", "setuptools") for d in dists), dists
        inventory[c] = {"size_bytes": size, "venv_kib": int(sizes[0]), "stdlib_kib": int(sizes[1]),
                        "debian_added": added, "python": dists}
    assert any(d.startswith("python3.11=") for d in inventory["gateway"]["debian_added"])
    assert {d.split("=")[0] for d in inventory["sandbox"]["debian_added"]} >= {"ripgrep", "bubblewrap"}
    record(inventory=inventory, base_packages=len(base_pkgs),
           base_size_bytes=int(cp.podman("image", "inspect", "--format", "{{.Size}}", base).stdout))
