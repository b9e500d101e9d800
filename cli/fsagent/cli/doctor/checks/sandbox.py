"""Which walls confine the sandbox's tool processes in the running pods, from each pod's
fsagent_sandbox_confinement_active{layer} (read through the API server's pod proxy, or the
Service's when pod proxying is not allowed). WARN when a pod runs with the basic layers only."""

from __future__ import annotations

from fsagent.cli.doctor.context import Context
from fsagent.cli.doctor.report import Check, failed, passed, warned

STRONG = ("bubblewrap", "landlock")
BASIC = ("process_group", "empty_env", "rlimits", "unprivileged_uid")


def run(ctx: Context) -> list[Check]:
    check = "sandbox/confinement"
    if ctx.workload("sandbox") is None:
        return [failed(check, "the release has no sandbox Deployment", "helm upgrade the release")]
    scrapes = ctx.scrape_pods("sandbox")
    seen, weak, errors = [], [], []
    for s in scrapes:
        if s.error:
            errors.append(f"{s.source}: {s.error[:160]}")
            continue
        layers = sorted({lab["layer"] for n, lab, v in s.samples
                         if n == "fsagent_sandbox_confinement_active" and v == 1 and "layer" in lab})
        if not layers:
            errors.append(f"{s.source}: no fsagent_sandbox_confinement_active series")
            continue
        seen.append(f"{s.source}: {', '.join(layers)}")
        if not set(layers) & set(STRONG):
            weak.append(s.source)
    if not seen:
        return [warned(check, "cannot read the sandbox's metrics: " + ("; ".join(errors) or "no ready sandbox pod"),
                       "see rollout/ and endpoints/ for the sandbox")]
    if weak:
        return [warned(check, f"only the basic layers in {', '.join(weak)} (no bubblewrap, no Landlock): " + "; ".join(seen),
                       "a node kernel with Landlock (>= 5.13), or a Localhost seccomp profile allowing user namespaces "
                       "for bubblewrap (docs/deploy.md, the sandbox's walls)")]
    return [passed(check, "; ".join(seen))]
