"""Prometheus: each ServiceMonitor and the PrometheusRule is selected by at least one Prometheus
resource (label selector AND namespace selector, as the operator evaluates them); when none selects
one, which label (or namespace label) to add. Then, through the API server's service proxy, the
selecting Prometheus's targets for our jobs are up."""

from __future__ import annotations

import json
from typing import Any

from fsagent.cli.doctor.context import Context, Forbidden, KubeError, forbidden_hint, labels_of, name_of
from fsagent.cli.doctor.report import Check, failed, passed, warned
from fsagent.cli.doctor.selectors import Labels, SelectorError, Selection, label_changes_text, matches, operator_selects

# Where the chart takes each label from (the values a fix sets).
VALUES = {"ServiceMonitor": "serviceMonitor.additionalLabels", "PrometheusRule": "prometheusRule.additionalLabels"}


def _fix_for(ctx: Context, kind: str, obj: dict[str, Any], best: Selection) -> str:
    name = name_of(obj)
    plural = kind.lower()
    if best.namespace_fix:
        return best.namespace_fix
    parts = []
    if best.label_changes:
        adds = dict((k, v) for k, v in best.label_changes if v is not None)
        removes = [k for k, v in best.label_changes if v is None]
        if set(adds) == {"release"} and not removes:
            parts.append(f"helm -n {ctx.ns} upgrade {ctx.release} CHART --reuse-values --set monitoring.release={adds['release']}"
                         f"  (or: kubectl -n {ctx.ns} label {plural} {name} release={adds['release']})")
        else:
            if adds:
                parts.append(f"helm -n {ctx.ns} upgrade {ctx.release} CHART --reuse-values --set-json "
                             f"'{VALUES[kind]}={json.dumps(adds, separators=(',', ':'))}'")
            parts.append(f"kubectl -n {ctx.ns} label {plural} {name} {label_changes_text(best.label_changes)} --overwrite")
    if best.namespace_changes:
        parts.append(f"kubectl label namespace {ctx.ns} {label_changes_text(best.namespace_changes)} --overwrite")
    return "; ".join(parts)


def selection_check(ctx: Context, kind: str, obj: dict[str, Any], prometheuses: list[dict[str, Any]], note: str) -> Check:
    name = name_of(obj)
    check = f"{kind.lower()}/{name}"
    labels = labels_of(obj)
    ns_labels = ctx.namespace_labels(ctx.ns)
    results = [operator_selects(p, kind, labels, ctx.ns, ns_labels) for p in prometheuses]
    chosen = [r for r in results if r.selected]
    if chosen:
        doubt = "" if all(r.certain for r in chosen) else " (assuming namespace labels it could not read)"
        return passed(check, f"selected by Prometheus {', '.join(r.prometheus for r in chosen)}{doubt}")
    if not prometheuses:
        if note:
            return warned(check, f"no Prometheus resource found: {note}",
                          forbidden_hint(Forbidden(403, note), ctx) if "cannot list" in note else
                          "install kube-prometheus-stack (or another prometheus-operator Prometheus)")
        return warned(check, "no Prometheus resource in the cluster selects anything: none exists",
                      "install kube-prometheus-stack, or set serviceMonitor.enabled=false and prometheusRule.enabled=false")
    best = min(results, key=lambda r: r.cost)
    seen = f"labels {_labels_text(labels)}; no Prometheus selects it. Closest, {best.prometheus}: {'; '.join(best.why)}"
    if note:
        seen += f" ({note})"
    fix = _fix_for(ctx, kind, obj, best)
    if not best.certain or note:
        return warned(check, seen, fix)
    return failed(check, seen, fix)


def _labels_text(labels: Labels) -> str:
    shown = {k: v for k, v in labels.items() if not k.startswith(("helm.sh/", "app.kubernetes.io/"))}
    return ",".join(f"{k}={v}" for k, v in sorted(shown.items())) or "(only app.kubernetes.io/* labels)"


# --- targets -------------------------------------------------------------------------------------------

def prometheus_pod_labels(ctx: Context, prom: dict[str, Any]) -> Labels:
    """Labels of the Prometheus pods: from its StatefulSet when readable, else what the operator
    puts on them (pkg/prometheus/server/statefulset.go) plus spec.podMetadata.labels."""
    meta, spec = prom["metadata"], prom.get("spec") or {}
    name, ns = meta["name"], meta["namespace"]
    try:
        for sts in ctx.kube.list("statefulsets", ns, labels=f"operator.prometheus.io/name={name}"):
            return dict(sts["spec"]["template"]["metadata"].get("labels") or {})
    except KubeError:
        pass
    labels = {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/managed-by": "prometheus-operator", "operator.prometheus.io/name": name,
              "operator.prometheus.io/shard": "0", "prometheus": name}
    labels.update(((spec.get("podMetadata") or {}).get("labels")) or {})
    return labels


def prometheus_service(ctx: Context, prom: dict[str, Any]) -> tuple[str, str] | None:
    """(service name, port name or number) in front of a Prometheus: a Service in its namespace
    whose selector matches its pods, on its web port (spec.portName, default web)."""
    ns = prom["metadata"]["namespace"]
    pod_labels = prometheus_pod_labels(ctx, prom)
    port_name = (prom.get("spec") or {}).get("portName") or "web"
    candidates = []
    for svc in ctx.kube.list("services", ns):
        selector = (svc.get("spec") or {}).get("selector") or {}
        if not selector or not matches({"matchLabels": selector}, pod_labels):
            continue
        for port in svc["spec"].get("ports") or []:
            if port.get("name") == port_name or port.get("targetPort") in (port_name, 9090) or port.get("port") == 9090:
                specific = "operator.prometheus.io/name" in selector or "prometheus" in selector
                headless = svc["spec"].get("clusterIP") == "None"
                candidates.append((not specific, headless, name_of(svc), port.get("name") or str(port["port"])))
    if not candidates:
        return None
    _, _, name, port = sorted(candidates)[0]
    return name, port


def targets_check(ctx: Context, prometheuses: list[dict[str, Any]]) -> Check:
    check = "prometheus/targets"
    monitors = sorted(ctx.service_monitors, key=name_of)
    ns_labels = ctx.namespace_labels(ctx.ns)
    selecting: dict[str, list[str]] = {}
    for prom in prometheuses:
        key = f"{prom['metadata']['namespace']}/{prom['metadata']['name']}"
        for sm in monitors:
            if operator_selects(prom, "ServiceMonitor", labels_of(sm), ctx.ns, ns_labels).selected:
                selecting.setdefault(key, []).append(name_of(sm))
    if not selecting:
        return warned(check, "not checked: no Prometheus selects the ServiceMonitors (see the servicemonitor checks)",
                      "fix the servicemonitor checks first")
    key = max(selecting, key=lambda k: len(selecting[k]))
    prom = next(p for p in prometheuses if f"{p['metadata']['namespace']}/{p['metadata']['name']}" == key)
    prom_ns = prom["metadata"]["namespace"]
    try:
        where = prometheus_service(ctx, prom)
    except Forbidden as exc:
        return warned(check, f"cannot find the Service of Prometheus {key}: {exc.message}", forbidden_hint(exc, ctx))
    if where is None:
        return warned(check, f"no Service in {prom_ns} exposes Prometheus {key}'s web port",
                      f"kubectl -n {prom_ns} get svc (prometheus-operated is created by the operator)")
    svc, port = where
    prefix = ((prom.get("spec") or {}).get("routePrefix") or "/").strip("/")
    path = "/".join(x for x in (prefix, "api/v1/targets") if x)
    try:
        body = json.loads(ctx.kube.service_get(prom_ns, svc, port, path))
    except Forbidden as exc:
        return warned(check, f"cannot ask Prometheus {key} through service {prom_ns}/{svc}:{port}: {exc.message}",
                      forbidden_hint(exc, ctx))
    except (KubeError, ValueError) as exc:
        return warned(check, f"cannot reach Prometheus {key} through service {prom_ns}/{svc}:{port}: {exc}",
                      f"kubectl -n {prom_ns} get pods,endpointslices -l app.kubernetes.io/name=prometheus")
    return evaluate_targets(ctx, key, f"{prom_ns}/{svc}:{port}", body, selecting[key])


def evaluate_targets(ctx: Context, prom: str, via: str, body: dict[str, Any], monitors: list[str]) -> Check:
    check = "prometheus/targets"
    active = (body.get("data") or {}).get("activeTargets") or []
    parts, down, missing = [], [], []
    for sm in monitors:
        pool = f"serviceMonitor/{ctx.ns}/{sm}/"
        ours = [t for t in active if str(t.get("scrapePool", "")).startswith(pool)]
        if not ours:
            missing.append(sm)
            continue
        up = [t for t in ours if t.get("health") == "up"]
        job = (ours[0].get("labels") or {}).get("job", sm)
        parts.append(f"{job} {len(up)}/{len(ours)} up")
        for t in ours:
            if t.get("health") != "up":
                down.append(f"{t.get('scrapeUrl')} {t.get('health')}: {(t.get('lastError') or '').strip()[:160]}")
    seen = f"Prometheus {prom} (via {via}): " + (", ".join(parts) or "no targets of ours")
    if down:
        return failed(check, seen + "; down: " + "; ".join(down[:4]),
                      f"kubectl -n {ctx.ns} get networkpolicies; check the networkpolicy/prometheus check and the pods' metrics port")
    if missing:
        return failed(check, seen + f"; no target discovered for {', '.join(missing)}",
                      f"check endpoints/<service> above; the operator must have reloaded Prometheus "
                      f"(kubectl -n {prom.split('/')[0]} logs -l app.kubernetes.io/name=prometheus -c config-reloader)")
    return passed(check, seen)


def run(ctx: Context) -> list[Check]:
    if not ctx.monitoring_served:
        if ctx.service_monitors or ctx.prometheus_rules:
            return []
        return [warned("prometheus/selection", "monitoring.coreos.com/v1 is not served: the chart rendered no "
                       "ServiceMonitor or PrometheusRule", "install kube-prometheus-stack, then helm upgrade the release")]
    if not ctx.service_monitors and not ctx.prometheus_rules:
        return [warned("prometheus/selection", "the release has no ServiceMonitor or PrometheusRule",
                       f"helm -n {ctx.ns} upgrade {ctx.release} CHART --reuse-values --set serviceMonitor.enabled=true "
                       "--set prometheusRule.enabled=true")]
    prometheuses, note = ctx.prometheuses
    checks = []
    for sm in sorted(ctx.service_monitors, key=name_of):
        checks.append(selection_check(ctx, "ServiceMonitor", sm, prometheuses, note))
    for rule in sorted(ctx.prometheus_rules, key=name_of):
        checks.append(selection_check(ctx, "PrometheusRule", rule, prometheuses, note))
    if ctx.service_monitors:
        try:
            checks.append(targets_check(ctx, prometheuses))
        except SelectorError as exc:
            checks.append(warned("prometheus/targets", f"not checked: {exc}", "fix the Prometheus selectors"))
    return checks
