"""Each Service of the release has ready endpoints (EndpointSlices) on every port it declares."""

from __future__ import annotations

from typing import Any

from fsagent.cli.doctor.context import Context, labels_of, name_of, pod_ready
from fsagent.cli.doctor.report import Check, failed, passed, warned
from fsagent.cli.doctor.selectors import SelectorError, matches


def ready_by_port(slices: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """port name -> (ready endpoint addresses, not ready ones) over a Service's EndpointSlices."""
    ready: dict[str, int] = {}
    not_ready: dict[str, int] = {}
    for sl in slices:
        for port in sl.get("ports") or []:
            pname = port.get("name") or ""
            for ep in sl.get("endpoints") or []:
                n = len(ep.get("addresses") or [])
                # ready unset means ready (discovery.k8s.io/v1: "nil should be interpreted as true").
                if (ep.get("conditions") or {}).get("ready", True) is not False:
                    ready[pname] = ready.get(pname, 0) + n
                else:
                    not_ready[pname] = not_ready.get(pname, 0) + n
    return ready, not_ready


def service_check(ctx: Context, svc: dict[str, Any]) -> Check:
    name = name_of(svc)
    check = f"endpoints/{name}"
    spec = svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return passed(check, f"ExternalName {spec.get('externalName')}: no endpoints by design")
    slices = [s for s in ctx.endpoint_slices if labels_of(s).get("kubernetes.io/service-name") == name]
    ready, not_ready = ready_by_port(slices)
    ports = [p.get("name") or "" for p in spec.get("ports") or []]
    seen = ", ".join(f"{p or '(unnamed)'} {ready.get(p, 0)} ready" + (f"/{not_ready[p]} not ready" if not_ready.get(p) else "")
                     for p in ports)
    empty = [p or "(unnamed)" for p in ports if not ready.get(p)]
    if not empty:
        return passed(check, seen)
    selector = spec.get("selector") or {}
    try:
        pods = [p for p in ctx.pods if selector and matches({"matchLabels": selector}, labels_of(p))]
    except SelectorError:
        pods = []
    ready_pods = [p for p in pods if pod_ready(p)]
    sel_text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    if not pods:
        why = f"no pod matches its selector {sel_text}"
        fix = f"kubectl -n {ctx.ns} get pods -l {sel_text}  (and see the rollout checks)"
    elif not ready_pods:
        why = f"{len(pods)} pods match {sel_text}, none ready"
        fix = f"kubectl -n {ctx.ns} describe pod {name_of(pods[0])}"
    else:
        missing = [p for p in empty]
        why = (f"{len(ready_pods)} ready pods match {sel_text} but no EndpointSlice lists them on "
               f"{', '.join(missing)} (a targetPort the pods do not declare, or the endpoint controller is not running)")
        fix = f"kubectl -n {ctx.ns} get endpointslices -l kubernetes.io/service-name={name} -o yaml"
    status = failed if len(empty) == len(ports) or "metrics" not in empty else warned
    return status(check, f"no ready endpoints on {', '.join(empty)} ({seen}): {why}", fix)


def run(ctx: Context) -> list[Check]:
    return [service_check(ctx, s) for s in sorted(ctx.services, key=name_of)]
