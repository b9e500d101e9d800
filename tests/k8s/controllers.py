"""What a kubelet and the controllers would write, for a control plane that has neither: pods of a
workload (from its pod template) running and ready at an address, the workload's status, the
EndpointSlices (and legacy Endpoints, which the API server's service proxy resolves through) of a
Service, and the replica count an HPA sets. The address is one of this machine's own (non-loopback:
the API server refuses loopback endpoint addresses), where local processes stand in for the pods,
so the API server's service and pod proxies reach them."""

from __future__ import annotations

import copy
import hashlib
import re
import socket
import subprocess
from datetime import datetime, timezone
from typing import Any

from tests.k8s.conftest import ControlPlane

NOW = lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731


def local_address() -> str | None:
    """A non-loopback IPv4 address of this machine (the API server dials endpoints there)."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True,
                             timeout=5).stdout
        for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
            return match.group(1)
    except OSError:
        pass
    try:  # no `ip`: the source address of a route (nothing is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            addr = s.getsockname()[0]
            return None if addr.startswith("127.") else addr
    except OSError:
        return None


def run_pods(cp: ControlPlane, workload: dict[str, Any], count: int, ip: str) -> list[str]:
    """Create `count` pods from a Deployment's or StatefulSet's template, running and ready at `ip`."""
    meta, spec = workload["metadata"], workload["spec"]
    ns, name = meta["namespace"], meta["name"]
    template = copy.deepcopy(spec["template"])
    stateful = workload["kind"] == "StatefulSet"
    digest = hashlib.sha256(repr(template).encode()).hexdigest()[:10]
    names = []
    for i in range(count):
        pod_name = f"{name}-{i}" if stateful else f"{name}-{digest}-{i:05d}"
        labels = dict(template["metadata"].get("labels") or {})
        labels["pod-template-hash" if not stateful else "statefulset.kubernetes.io/pod-name"] = digest if not stateful else pod_name
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                            "annotations": template["metadata"].get("annotations") or {}},
               "spec": template["spec"]}
        cp.apply(pod)
        set_pod_ready(cp, ns, pod_name, pod["spec"], ip)
        names.append(pod_name)
    return names


def container_statuses(spec: dict[str, Any], **override: Any) -> dict[str, Any]:
    started = NOW()
    main = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "started": True,
             "restartCount": 0, "state": {"running": {"startedAt": started}}} for c in spec["containers"]]
    init = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": started}}}
            for c in spec.get("initContainers") or []]
    out = {"containerStatuses": main}
    if init:
        out["initContainerStatuses"] = init
    out.update(override)
    return out


def set_pod_ready(cp: ControlPlane, ns: str, name: str, spec: dict[str, Any], ip: str, ready: bool = True,
                  statuses: dict[str, Any] | None = None) -> None:
    now, flag = NOW(), "True" if ready else "False"
    cp.patch_status("pod", name, ns, {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": ip, "startTime": now,
        "conditions": [{"type": t, "status": s, "lastTransitionTime": now} for t, s in
                       (("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", flag), ("Ready", flag))],
        **(statuses or container_statuses(spec))})


def workload_status(cp: ControlPlane, workload: dict[str, Any], ready: int, desired: int | None = None) -> None:
    kind, meta = workload["kind"], workload["metadata"]
    live = cp.get(kind.lower(), meta["name"], meta["namespace"])
    desired = live["spec"].get("replicas", 1) if desired is None else desired
    status: dict[str, Any] = {"observedGeneration": live["metadata"]["generation"], "replicas": desired,
                              "readyReplicas": ready, "updatedReplicas": desired, "availableReplicas": ready}
    if kind == "Deployment":
        status["unavailableReplicas"] = desired - ready
        status["conditions"] = [
            {"type": "Available", "status": "True" if ready else "False", "reason": "MinimumReplicasAvailable",
             "lastUpdateTime": NOW(), "lastTransitionTime": NOW()},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "lastUpdateTime": NOW(), "lastTransitionTime": NOW()}]
    else:
        status.update(currentReplicas=desired, currentRevision=f"{meta['name']}-1", updateRevision=f"{meta['name']}-1")
    cp.patch_status(kind.lower(), meta["name"], meta["namespace"], status)


def _port_number(pods: list[dict[str, Any]], target: Any) -> int:
    if isinstance(target, int):
        return target
    for pod in pods:
        for c in pod["spec"]["containers"]:
            for p in c.get("ports") or []:
                if p.get("name") == target:
                    return int(p["containerPort"])
    raise AssertionError(f"no container port named {target}")


def write_endpoints(cp: ControlPlane, service: dict[str, Any], ip: str, not_ready: set[str] = frozenset()) -> None:
    """The EndpointSlice and Endpoints the endpoint controllers write for a Service: every pod its
    selector matches, ready unless named in `not_ready`."""
    meta, spec = service["metadata"], service["spec"]
    ns, name = meta["namespace"], meta["name"]
    selector = spec.get("selector") or {}
    pods = [p for p in cp.get("pods", namespace=ns)["items"]
            if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
    ports = [{"name": p.get("name", ""), "port": _port_number(pods, p.get("targetPort", p["port"])), "protocol": "TCP"}
             for p in spec["ports"]] if pods else []
    endpoints = [{"addresses": [ip], "conditions": {"ready": p["metadata"]["name"] not in not_ready,
                                                      "serving": p["metadata"]["name"] not in not_ready,
                                                      "terminating": False},
                  "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"]}} for p in pods]
    cp.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": f"{name}-local", "namespace": ns,
                           "labels": {"kubernetes.io/service-name": name,
                                      "endpointslice.kubernetes.io/managed-by": "fsagent-tests"}},
              "addressType": "IPv4", "endpoints": endpoints, "ports": ports})
    address = lambda p: {"ip": ip, "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"]}}  # noqa: E731
    subset: dict[str, Any] = {"ports": ports}
    ready = [address(p) for p in pods if p["metadata"]["name"] not in not_ready]
    waiting = [address(p) for p in pods if p["metadata"]["name"] in not_ready]
    if ready:
        subset["addresses"] = ready
    if waiting:
        subset["notReadyAddresses"] = waiting
    cp.apply({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns},
              "subsets": [subset] if pods else []})


def delete_endpoints(cp: ControlPlane, ns: str, service: str) -> None:
    cp.kubectl("delete", "endpointslice", f"{service}-local", "-n", ns)
    cp.kubectl("delete", "endpoints", service, "-n", ns)
