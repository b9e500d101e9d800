"""What every check reads, read once: the release's objects in its namespace, its pods, metrics
fetched through the API server's proxies, and the monitoring objects around it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fsagent.cli.doctor.kube import Forbidden, Kube, KubeError, NotFound
from fsagent.cli.doctor.selectors import Labels, SelectorError, matches

PART_OF = "app.kubernetes.io/part-of=fsagent"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
COMPONENTS = ("gateway", "agent", "sandbox", "cache")
MONITORING_GROUP = "monitoring.coreos.com"
KINDS = {"deployments": "Deployment", "statefulsets": "StatefulSet", "services": "Service",
         "persistentvolumeclaims": "PersistentVolumeClaim", "servicemonitors": "ServiceMonitor",
         "prometheusrules": "PrometheusRule", "configmaps": "ConfigMap"}


@dataclass
class Options:
    namespace: str
    release: str
    ingress_namespace: str | None = None
    chat: str | None = None  # a URL, "proxy" (through the API server), or None
    api_key: str | None = None
    message: str = "What is in the documents?"
    in_cluster: bool = False
    identity: str = ""


@dataclass
class Scrape:
    """One /metrics read: from a pod (through the pod proxy) or a Service (through its proxy)."""

    source: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)
    error: str = ""

    def value(self, name: str, **labels: str) -> float | None:
        found = [v for n, lab, v in self.samples if n == name and all(lab.get(k) == x for k, x in labels.items())]
        return sum(found) if found else None


def parse_metrics(text: str) -> list[tuple[str, Labels, float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def labels_of(obj: dict[str, Any]) -> Labels:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def name_of(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def forbidden_hint(exc: Forbidden, ctx: "Context") -> str:
    if ctx.opts.in_cluster:
        return ("set helmTest.clusterRead=true (a read-only ClusterRole), or run fsagent doctor from your "
                "machine with your own kubeconfig")
    return f"grant {ctx.opts.identity or 'this user'} get/list there, or run with a kubeconfig that can ({exc.what})"


class Context:
    def __init__(self, kube: Kube, opts: Options) -> None:
        self.kube = kube
        self.opts = opts
        self.ns = opts.namespace
        self.release = opts.release

    # -- the release's own objects -------------------------------------------------------------------

    def _ours(self, kind: str) -> list[dict[str, Any]]:
        items = self.kube.list(kind, self.ns, labels=f"{PART_OF},{INSTANCE}={self.release}")
        for item in items:  # list items carry no kind
            item.setdefault("kind", KINDS.get(kind, ""))
        return items

    @cached_property
    def deployments(self) -> list[dict[str, Any]]:
        return self._ours("deployments")

    @cached_property
    def statefulsets(self) -> list[dict[str, Any]]:
        return self._ours("statefulsets")

    @cached_property
    def services(self) -> list[dict[str, Any]]:
        return self._ours("services")

    @cached_property
    def pvcs(self) -> list[dict[str, Any]]:
        claims = self._ours("persistentvolumeclaims")
        named = {name_of(c) for c in claims}
        # A claim the user manages (data.persistence.existingClaim) carries no chart label: take the
        # claims the workloads mount.
        for w in self.workloads:
            for vol in w["spec"]["template"]["spec"].get("volumes") or []:
                claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and claim not in named:
                    try:
                        claims.append(self.kube.get("persistentvolumeclaims", claim, self.ns))
                    except NotFound:
                        claims.append({"metadata": {"name": claim, "namespace": self.ns}, "missing": True})
                    named.add(claim)
        return claims

    @cached_property
    def pods(self) -> list[dict[str, Any]]:
        return self.kube.list("pods", self.ns)

    @cached_property
    def endpoint_slices(self) -> list[dict[str, Any]]:
        return self.kube.list("endpointslices", self.ns)

    @cached_property
    def network_policies(self) -> list[dict[str, Any]]:
        return self.kube.list("networkpolicies", self.ns)

    @cached_property
    def monitoring_served(self) -> bool:
        return self.kube.served(MONITORING_GROUP)

    @cached_property
    def service_monitors(self) -> list[dict[str, Any]]:
        return self._ours("servicemonitors") if self.monitoring_served else []

    @cached_property
    def prometheus_rules(self) -> list[dict[str, Any]]:
        return self._ours("prometheusrules") if self.monitoring_served else []

    @property
    def workloads(self) -> list[dict[str, Any]]:
        return self.deployments + self.statefulsets

    def workload(self, component: str) -> dict[str, Any] | None:
        for w in self.workloads:
            if labels_of(w).get(COMPONENT) == component:
                return w
        return None

    def service(self, component: str, headless: bool = False) -> dict[str, Any] | None:
        for s in self.services:
            lab = labels_of(s)
            if lab.get(COMPONENT) == component and (lab.get("fsagent.io/headless") == "true") == headless:
                return s
        return None

    def pods_of(self, workload: dict[str, Any]) -> list[dict[str, Any]]:
        selector = (workload.get("spec") or {}).get("selector") or {}
        try:
            return [p for p in self.pods if matches(selector, labels_of(p))
                    and not (p.get("metadata") or {}).get("deletionTimestamp")]
        except SelectorError:
            return []

    def env_of(self, component: str) -> dict[str, dict[str, Any]]:
        """The main container's env entries by name (value or valueFrom)."""
        w = self.workload(component)
        if not w:
            return {}
        containers = w["spec"]["template"]["spec"].get("containers") or []
        main = next((c for c in containers if c.get("name") == component), containers[0] if containers else {})
        return {e["name"]: e for e in main.get("env") or []}

    # -- around the release ---------------------------------------------------------------------------

    @cached_property
    def prometheuses(self) -> tuple[list[dict[str, Any]], str]:
        """Every Prometheus resource this identity can list, and a note when that is not the cluster."""
        if not self.monitoring_served:
            return [], "monitoring.coreos.com is not served (no prometheus-operator CRDs)"
        try:
            return self.kube.list("prometheuses"), ""
        except Forbidden as exc:
            try:
                own = self.kube.list("prometheuses", self.ns)
            except KubeError:
                own = []
            return own, f"cannot list Prometheus resources outside {self.ns}: forbidden for {self.opts.identity or 'this identity'}"

    _ns_labels: dict[str, Labels | None]

    def namespace_labels(self, namespace: str) -> Labels | None:
        cache = self.__dict__.setdefault("_ns_labels", {})
        if namespace not in cache:
            try:
                cache[namespace] = labels_of(self.kube.get("namespaces", namespace))
            except KubeError:
                cache[namespace] = None
        return cache[namespace]

    # -- metrics through the API server -----------------------------------------------------------------

    def scrape_pods(self, component: str) -> list[Scrape]:
        """/metrics of every ready pod of a component through the pod proxy; through the component's
        Service (one pod, chosen by the API server) when pod proxying is refused."""
        w = self.workload(component)
        if not w:
            return []
        scrapes: list[Scrape] = []
        for pod in self.pods_of(w):
            if not pod_ready(pod):
                continue
            port = container_port(pod, "metrics")
            if port is None:
                continue
            try:
                text = self.kube.pod_get(self.ns, name_of(pod), port, "metrics").decode(errors="replace")
                scrapes.append(Scrape(f"pod {name_of(pod)}", parse_metrics(text)))
            except Forbidden:
                return [self.scrape_service(component)]
            except (KubeError, ValueError) as exc:
                scrapes.append(Scrape(f"pod {name_of(pod)}", error=str(exc)))
        if not scrapes:
            return [self.scrape_service(component)]
        return scrapes

    def scrape_service(self, component: str) -> Scrape:
        svc = self.service(component)
        if not svc:
            return Scrape(f"service {component}", error=f"no {component} Service")
        source = f"service {name_of(svc)}:metrics"
        try:
            text = self.kube.service_get(self.ns, name_of(svc), "metrics", "metrics").decode(errors="replace")
            return Scrape(source, parse_metrics(text))
        except (KubeError, ValueError) as exc:
            return Scrape(source, error=str(exc))


def pod_ready(pod: dict[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def container_port(pod: dict[str, Any], name: str) -> int | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == name:
                return int(p["containerPort"])
    return None
