"""A real Kubernetes control plane for the suite: etcd, kube-apiserver and prometheus-operator built
from their upstream Go modules by scripts/control-plane.sh (cached in .tools/control-plane), started
once per session on free 127.0.0.1 ports in a temporary folder, and stopped at the end.

There is no kubelet, scheduler or controller-manager: objects are validated, admitted, stored and
watched exactly as in a cluster, and what those components would write (claim binding, pod status,
EndpointSlices) the tests write themselves through the same API.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fsagent"
SCRIPT = REPO / "scripts" / "control-plane.sh"
TOOLS_BIN = REPO / ".tools" / "bin"
CP_BIN = REPO / ".tools" / "control-plane" / "bin"
BUILD_TIMEOUT = 3600  # a first build compiles kube-apiserver: minutes on 2 cores


def _tool(name: str) -> str:
    local = TOOLS_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not found in .tools/bin or PATH (run scripts/install_tools.sh)")
    return found


def _free_port_pair() -> int:
    """A port p such that p and p+1 are both free (etcd's client and peer ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CommandFailed(AssertionError):
    def __init__(self, cmd: list[str], proc: subprocess.CompletedProcess) -> None:
        self.stdout, self.stderr, self.returncode = proc.stdout, proc.stderr, proc.returncode
        super().__init__(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


@dataclass
class ControlPlane:
    kubeconfig: Path
    env: dict[str, str]
    server: str
    operator_port: int
    kubectl_bin: str
    helm_bin: str

    def run(self, cmd: list[str], *, check: bool = True, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin,
                              env={**self.env, "KUBECONFIG": str(self.kubeconfig)})
        if check and proc.returncode != 0:
            raise CommandFailed(cmd, proc)
        return proc

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run([self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args], check=check, stdin=stdin, timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        return self.run([self.helm_bin, "--kubeconfig", str(self.kubeconfig), *args], check=check, timeout=timeout)

    def get(self, kind: str, name: str | None = None, namespace: str | None = None, *, check: bool = True) -> dict[str, Any] | None:
        args = ["get", kind] + ([name] if name else []) + (["-n", namespace] if namespace else []) + ["-o", "json"]
        proc = self.kubectl(*args, check=check)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def apply(self, objects: list[dict[str, Any]] | dict[str, Any], namespace: str | None = None) -> None:
        docs = objects if isinstance(objects, list) else [objects]
        args = ["apply", "--server-side", "--field-manager", "fsagent-tests", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        self.kubectl(*args, stdin=yaml.safe_dump_all(docs))

    def patch_status(self, kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        """Write what a kubelet or controller would: the status subresource."""
        self.kubectl("patch", kind, name, "-n", namespace, "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": status}))

    def namespace(self, prefix: str, labels: dict[str, str] | None = None) -> str:
        """A fresh namespace (never deleted: without a controller-manager deletion never finishes)."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        meta: dict[str, Any] = {"name": name}
        if labels:
            meta["labels"] = labels
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
        return name


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory) -> ControlPlane:
    kubectl_bin, helm_bin = _tool("kubectl"), _tool("helm")
    binaries = [CP_BIN / b for b in ("etcd", "kube-apiserver", "prometheus-operator")]
    if not all(b.exists() for b in binaries) and shutil.which("go") is None:
        pytest.skip("control plane not built and no Go toolchain to build it (scripts/control-plane.sh build)")
    state = tmp_path_factory.mktemp("control-plane")
    env = {
        **os.environ,
        "CP_DIR": str(state / "run"),
        "CP_KUBECONFIG": str(state / "kubeconfig"),
        "CP_ETCD_PORT": str(_free_port_pair()),
        "CP_APISERVER_PORT": str(_free_port()),
        "CP_OPERATOR_PORT": str(_free_port()),
        "HELM_CACHE_HOME": str(state / "helm-cache"),
        "HELM_CONFIG_HOME": str(state / "helm-config"),
        "HELM_DATA_HOME": str(state / "helm-data"),
    }
    # Cached after the first build; `make test` builds it before pytest runs.
    subprocess.run([str(SCRIPT), "build"], env=env, check=True, timeout=BUILD_TIMEOUT)
    up = subprocess.run([str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=180)
    if up.returncode != 0:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=60)
        raise RuntimeError(f"control plane did not start:\n{up.stderr}")
    cp = ControlPlane(kubeconfig=Path(env["CP_KUBECONFIG"]), env=env,
                      server=f"https://127.0.0.1:{env['CP_APISERVER_PORT']}",
                      operator_port=int(env["CP_OPERATOR_PORT"]), kubectl_bin=kubectl_bin, helm_bin=helm_bin)
    try:
        yield cp
    finally:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def expandable_storage_class(control_plane: ControlPlane) -> str:
    """A StorageClass that allows volume expansion, as most cloud CSI classes do."""
    control_plane.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                         "metadata": {"name": "expandable"}, "provisioner": "csi.example.com",
                         "allowVolumeExpansion": True, "volumeBindingMode": "Immediate"})
    return "expandable"


def bind_claims(cp: ControlPlane, namespace: str) -> None:
    """Mark every claim Bound at its requested size, as the volume controller would."""
    for claim in cp.get("persistentvolumeclaims", namespace=namespace)["items"]:
        cp.patch_status("persistentvolumeclaim", claim["metadata"]["name"], namespace, {
            "phase": "Bound", "accessModes": claim["spec"]["accessModes"],
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]}})
