"""NetworkPolicies: the namespace (and pods) that run Prometheus can reach every metrics port, and
the ingress controller's namespace can reach the gateway's HTTP port. Every policy of the namespace
counts, not only the chart's (fsagent.cli.doctor.netpol evaluates them as Kubernetes does)."""

from __future__ import annotations

from typing import Any

from fsagent.cli.doctor.checks.monitoring import prometheus_pod_labels
from fsagent.cli.doctor.context import COMPONENT, Context, Forbidden, KubeError, labels_of, name_of
from fsagent.cli.doctor.netpol import Source, ingress_allowed
from fsagent.cli.doctor.report import Check, failed, passed, warned
from fsagent.cli.doctor.selectors import operator_selects

# Where ingress controllers install themselves by default (their charts' documented namespaces).
INGRESS_NAMESPACES = ("ingress-nginx", "traefik", "envoy-gateway-system", "kong", "haproxy-controller",
                      "nginx-ingress", "contour", "projectcontour", "istio-ingress", "istio-system", "gloo-system")


def _target(ctx: Context, component: str, port_name: str) -> tuple[dict[str, str], int] | None:
    w = ctx.workload(component)
    if not w:
        return None
    tmpl = w["spec"]["template"]
    for c in tmpl["spec"].get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == port_name:
                return dict(tmpl["metadata"].get("labels") or {}), int(p["containerPort"])
    return None


def _selecting_prometheus(ctx: Context) -> dict[str, Any] | None:
    prometheuses, _ = ctx.prometheuses
    ns_labels = ctx.namespace_labels(ctx.ns)
    best, score = None, 0
    for prom in prometheuses:
        n = sum(operator_selects(prom, "ServiceMonitor", labels_of(sm), ctx.ns, ns_labels).selected
                for sm in ctx.service_monitors)
        if n > score:
            best, score = prom, n
    return best


def prometheus_check(ctx: Context) -> Check:
    check = "networkpolicy/prometheus"
    prom = _selecting_prometheus(ctx)
    if prom is None:
        return warned(check, "not checked: no Prometheus selects the release's ServiceMonitors (see above)",
                      "fix the servicemonitor checks first")
    prom_ns = prom["metadata"]["namespace"]
    key = f"{prom_ns}/{prom['metadata']['name']}"
    source = Source(prom_ns, ctx.namespace_labels(prom_ns), prometheus_pod_labels(ctx, prom), f"Prometheus {key}")
    blocked, unknown, ok = [], [], []
    for component in ("gateway", "agent", "sandbox", "cache"):
        target = _target(ctx, component, "metrics")
        if target is None:
            continue
        labels, port = target
        v = ingress_allowed(ctx.network_policies, ctx.ns, labels, port, "metrics", source)
        if v.allowed is False:
            blocked.append(f"{component}:{port} (policies {', '.join(v.policies)})")
        elif v.allowed is None:
            unknown.append(f"{component}:{port} ({'; '.join(v.unknown_because)})")
        else:
            ok.append(f"{component}:{port}")
    if blocked:
        fix = (f"helm -n {ctx.ns} upgrade {ctx.release} CHART --reuse-values --set-json "
               f"'networkPolicy.prometheus.namespaceSelector={{\"matchLabels\":{{\"kubernetes.io/metadata.name\":\"{prom_ns}\"}}}}'")
        return failed(check, f"{source.what} (namespace {prom_ns}) is blocked from {', '.join(blocked)}"
                      + (f"; allowed: {', '.join(ok)}" if ok else ""), fix)
    if unknown:
        return warned(check, f"cannot tell whether {source.what} may reach {', '.join(unknown)}",
                      f"kubectl -n {ctx.ns} get networkpolicies -o yaml")
    isolated = any(p for p in ctx.network_policies)
    return passed(check, f"{source.what} (namespace {prom_ns}) may reach {', '.join(ok)}"
                  + ("" if isolated else " (no NetworkPolicy in the namespace)"))


def _ingress_namespace(ctx: Context) -> tuple[str | None, str]:
    if ctx.opts.ingress_namespace:
        return ctx.opts.ingress_namespace, "--ingress-namespace"
    try:
        existing = {name_of(n) for n in ctx.kube.list("namespaces")}
    except (Forbidden, KubeError):
        return None, "cannot list namespaces"
    for ns in INGRESS_NAMESPACES:
        if ns in existing:
            return ns, "found by its usual name"
    return None, f"none of the usual ingress controller namespaces exists ({', '.join(INGRESS_NAMESPACES[:4])}, ...)"


def ingress_check(ctx: Context) -> Check:
    check = "networkpolicy/ingress"
    target = _target(ctx, "gateway", "http")
    if target is None:
        return warned(check, "no gateway Deployment with an http port", "see rollout/ for the gateway")
    labels, port = target
    # Any source at all? (networkPolicy.gatewayFrom: [] renders a rule with no `from`.)
    anywhere = ingress_allowed(ctx.network_policies, ctx.ns, labels, port, "http",
                               Source("\x00nowhere", {}, {}, "any source"))
    if anywhere.allowed:
        how = f"policy {', '.join(anywhere.allowed_by)} allows every source" if anywhere.isolated else "no NetworkPolicy selects the gateway"
        return passed(check, f"gateway:{port} is open to any source ({how}; networkPolicy.gatewayFrom: [])")
    ingress_ns, how = _ingress_namespace(ctx)
    if ingress_ns is None:
        return warned(check, f"gateway:{port} accepts only the peers of networkPolicy.gatewayFrom, and the ingress "
                      f"controller's namespace is unknown ({how})", "run fsagent doctor --ingress-namespace <namespace of your ingress controller>")
    pod_labels: dict[str, str] | None = None
    try:
        pods = ctx.kube.list("pods", ingress_ns)
        pod_labels = labels_of(pods[0]) if pods else None
    except KubeError:
        pass
    source = Source(ingress_ns, ctx.namespace_labels(ingress_ns), pod_labels, f"namespace {ingress_ns}")
    v = ingress_allowed(ctx.network_policies, ctx.ns, labels, port, "http", source)
    if v.allowed:
        return passed(check, f"{source.what} ({how}) may reach gateway:{port} (policy {', '.join(v.allowed_by)})")
    if v.allowed is None:
        return warned(check, f"cannot tell whether {source.what} may reach gateway:{port}: {'; '.join(v.unknown_because)}",
                      f"kubectl -n {ctx.ns} get networkpolicy -o yaml")
    peer = f"{{\"namespaceSelector\":{{\"matchLabels\":{{\"kubernetes.io/metadata.name\":\"{ingress_ns}\"}}}}}}"
    return failed(check, f"{source.what} ({how}) is blocked from gateway:{port} (policies {', '.join(v.policies)})",
                  f"helm -n {ctx.ns} upgrade {ctx.release} CHART --reuse-values --set-json 'networkPolicy.gatewayFrom=[{peer}]'")


def run(ctx: Context) -> list[Check]:
    return [prometheus_check(ctx), ingress_check(ctx)]
