"""The dashboard ConfigMaps carry the label the Grafana sidecar in the cluster watches, in a
namespace it watches. The sidecar's settings are read from the Grafana Deployment: kiwigrid's
k8s-sidecar, which kube-prometheus-stack's Grafana runs as `grafana-sc-dashboard`, takes them from
env LABEL, LABEL_VALUE (unset: any value), NAMESPACE (ALL, a comma-separated list, or unset: its own
namespace) and RESOURCE (configmap, secret or both; default configmap)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fsagent.cli.doctor.context import INSTANCE, PART_OF, Context, Forbidden, KubeError, forbidden_hint, labels_of, name_of
from fsagent.cli.doctor.report import Check, failed, passed, warned

DEFAULT = ("grafana_dashboard", "1")  # kube-prometheus-stack's sidecar.dashboards.label / labelValue


@dataclass
class Sidecar:
    where: str  # namespace/deployment (container)
    namespace: str
    label: str
    value: str | None
    namespaces: list[str] | None  # None = all
    resource: str

    def watches(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def selects(self, labels: dict[str, str]) -> bool:
        return self.label in labels and (self.value is None or labels[self.label] == self.value)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "value" in e}


def find_sidecars(deployments: list[dict[str, Any]]) -> list[Sidecar]:
    out = []
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            env = _env(c)
            image, cname = c.get("image", ""), c.get("name", "")
            if "LABEL" not in env or not ("k8s-sidecar" in image or "dashboard" in cname):
                continue
            if "datasource" in cname or env.get("FOLDER", "").endswith("datasources"):
                continue
            ns_setting = env.get("NAMESPACE", "").strip()
            namespaces = None if ns_setting.upper() == "ALL" else (
                [n.strip() for n in ns_setting.split(",") if n.strip()] or [d["metadata"]["namespace"]])
            out.append(Sidecar(f"{d['metadata']['namespace']}/{name_of(d)} ({cname})", d["metadata"]["namespace"],
                               env["LABEL"], env.get("LABEL_VALUE") or None, namespaces,
                               env.get("RESOURCE", "configmap").lower()))
    return out


def run(ctx: Context) -> list[Check]:
    check = "dashboards"
    try:
        maps = [m for m in ctx.kube.list("configmaps", None, labels=f"{PART_OF},{INSTANCE}={ctx.release}")
                if "-dashboard-" in name_of(m)]
        cluster_wide = True
    except Forbidden:
        maps = [m for m in ctx.kube.list("configmaps", ctx.ns, labels=f"{PART_OF},{INSTANCE}={ctx.release}")
                if "-dashboard-" in name_of(m)]
        cluster_wide = False
    if not maps:
        return [passed(check, "no dashboard ConfigMaps (dashboards.enabled=false" +
                       ("" if cluster_wide else f", or in another namespace than {ctx.ns}") + ")")]
    where = sorted({m["metadata"]["namespace"] for m in maps})
    try:
        sidecars = find_sidecars(ctx.kube.list("deployments"))
    except Forbidden as exc:
        return [warned(check, f"{len(maps)} dashboard ConfigMaps in {', '.join(where)}; cannot look for Grafana outside "
                       f"{ctx.ns}: listing Deployments cluster-wide is forbidden for {ctx.opts.identity or 'this identity'}",
                       forbidden_hint(exc, ctx))]
    except KubeError as exc:
        return [warned(check, f"cannot list Deployments: {exc}", "retry")]
    if not sidecars:
        label, value = DEFAULT
        has_default = all(labels_of(m).get(label) == value for m in maps)
        return [warned(check, f"{len(maps)} dashboard ConfigMaps (label {label}={value}: {'yes' if has_default else 'no'}); "
                       "no Grafana Deployment with a dashboard sidecar (env LABEL) found",
                       "install Grafana with its dashboard sidecar (kube-prometheus-stack: grafana.sidecar.dashboards.enabled=true)")]
    for sc in sidecars:
        if "configmap" not in sc.resource and sc.resource != "both":
            continue
        if all(sc.selects(labels_of(m)) and sc.watches(m["metadata"]["namespace"]) for m in maps):
            value = sc.value if sc.value is not None else "(any)"
            return [passed(check, f"{len(maps)} dashboard ConfigMaps labelled {sc.label}={value}, watched by the sidecar "
                           f"of {sc.where} ({'all namespaces' if sc.namespaces is None else ', '.join(sc.namespaces)})")]
    sc = sidecars[0]
    bad_label = [name_of(m) for m in maps if not sc.selects(labels_of(m))]
    bad_ns = sorted({m["metadata"]["namespace"] for m in maps if not sc.watches(m["metadata"]["namespace"])})
    problems, fixes = [], []
    if bad_label:
        have = {labels_of(maps[0]).get(sc.label)}
        want = f"{sc.label}={sc.value if sc.value is not None else '<any>'}"
        problems.append(f"the sidecar of {sc.where} loads ConfigMaps labelled {want}; {len(bad_label)} of ours "
                        f"are not (they have {sc.label}={next(iter(have))})" if have != {None} else
                        f"the sidecar of {sc.where} loads ConfigMaps labelled {want}; ours carry no {sc.label} label")
        fixes.append(f"helm -n {ctx.ns} upgrade {ctx.release} CHART --reuse-values --set-json "
                     f"'dashboards.labels={{\"{sc.label}\":\"{sc.value if sc.value is not None else '1'}\"}}'")
    if bad_ns:
        problems.append(f"it watches {', '.join(sc.namespaces or [])}, not {', '.join(bad_ns)}")
        fixes.append(f"--set dashboards.namespace={(sc.namespaces or [sc.namespace])[0]} (or set the sidecar's "
                     "searchNamespace to ALL)")
    if "configmap" not in sc.resource and sc.resource != "both":
        problems.append(f"it loads {sc.resource}s only")
    return [failed(check, "; ".join(problems), "; ".join(fixes) or "see the sidecar's RESOURCE setting")]
