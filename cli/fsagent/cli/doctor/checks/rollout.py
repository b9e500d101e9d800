"""Every Deployment and the StatefulSet rolled out (ready = desired, current revision, no
crash-looping container, recent restarts, last termination reason) and every claim bound."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from fsagent.cli.doctor.context import Context, name_of
from fsagent.cli.doctor.report import Check, failed, passed, warned

RECENT = timedelta(hours=1)
# Waiting reasons that mean the container cannot run (the kubelet's own words).
BROKEN = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
          "CreateContainerError", "RunContainerError", "ErrImageNeverPull"}


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return ""
    seconds = int((now - when).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _pod_problems(ctx: Context, pod: dict[str, Any], now: datetime) -> tuple[list[str], list[str], str]:
    """(failures, warnings, fix) seen in one pod's container statuses."""
    fails, warns, fix = [], [], ""
    pod_name = name_of(pod)
    status = pod.get("status") or {}
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for cs in statuses:
        cname, restarts = cs.get("name", "?"), int(cs.get("restartCount") or 0)
        waiting = (cs.get("state") or {}).get("waiting") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        last_text = ""
        if last:
            finished = _parse_time(last.get("finishedAt"))
            last_text = (f"; last terminated: {last.get('reason') or 'Unknown'} (exit {last.get('exitCode', '?')})"
                         + (f" {_ago(finished, now)}" if finished else ""))
        if waiting.get("reason") in BROKEN:
            msg = (waiting.get("message") or "").strip().splitlines()
            fails.append(f"pod {pod_name} container {cname}: {waiting['reason']}, {restarts} restarts{last_text}"
                         + (f" ({msg[0][:120]})" if msg and waiting["reason"] != "CrashLoopBackOff" else ""))
            if waiting["reason"] == "CrashLoopBackOff":
                fix = fix or f"kubectl -n {ctx.ns} logs {pod_name} -c {cname} --previous"
            else:
                fix = fix or f"kubectl -n {ctx.ns} describe pod {pod_name}"
        elif restarts:
            finished = _parse_time(last.get("finishedAt")) if last else None
            if finished is None or now - finished < RECENT:
                warns.append(f"pod {pod_name} container {cname}: {restarts} restarts{last_text}")
                if last.get("reason") == "OOMKilled":
                    fix = fix or f"raise the memory limit of {cname} (values: <component>.resources.limits.memory)"
                else:
                    fix = fix or f"kubectl -n {ctx.ns} logs {pod_name} -c {cname} --previous"
    if not statuses and status.get("phase") == "Pending":
        cond = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"
                     and c.get("status") == "False"), None)
        if cond:
            fails.append(f"pod {pod_name} not scheduled: {cond.get('reason')}: {(cond.get('message') or '')[:160]}")
            fix = fix or f"kubectl -n {ctx.ns} describe pod {pod_name}"
    return fails, warns, fix


def workload_check(ctx: Context, w: dict[str, Any], now: datetime | None = None) -> Check:
    now = now or datetime.now(timezone.utc)
    kind = w.get("kind") or ("StatefulSet" if "serviceName" in (w.get("spec") or {}) else "Deployment")
    name = name_of(w)
    check = f"rollout/{name}"
    spec, status = w.get("spec") or {}, w.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    observed = int(status.get("observedGeneration") or 0)
    generation = int((w.get("metadata") or {}).get("generation") or 0)
    seen = f"{ready}/{desired} ready, {updated} up to date, {available} available"
    describe = f"kubectl -n {ctx.ns} describe {kind.lower()} {name}"

    pods = ctx.pods_of(w)
    fails, warns, fix = [], [], ""
    for pod in pods:
        f, wn, fx = _pod_problems(ctx, pod, now)
        fails += f
        warns += wn
        fix = fix or fx
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            fails.append(f"rollout stuck: {cond.get('message', '')[:160]}")
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            fails.append(f"cannot create pods: {cond.get('message', '')[:200]}")
            fix = fix or describe

    if desired == 0:
        return warned(check, f"{kind} scaled to 0 replicas", f"kubectl -n {ctx.ns} scale {kind.lower()} {name} --replicas=1")
    if fails:
        return failed(check, f"{seen}; " + "; ".join(fails), fix or describe)
    if ready < desired or available < desired:
        not_ready = [name_of(p) for p in pods if not _ready(p)]
        extra = f"; not ready: {', '.join(not_ready[:3])}" if not_ready else f"; {len(pods)} pods exist"
        pod_fix = f"kubectl -n {ctx.ns} describe pod {not_ready[0]}" if not_ready else describe
        return failed(check, seen + extra, pod_fix)
    rolling = observed < generation or updated < desired
    if kind == "StatefulSet" and status.get("updateRevision") and status.get("currentRevision") != status.get("updateRevision"):
        rolling = True
    if rolling:
        return warned(check, f"{seen}; rollout in progress (generation {generation}, observed {observed})",
                      f"kubectl -n {ctx.ns} rollout status {kind.lower()}/{name}")
    if warns:
        return warned(check, f"{seen}; " + "; ".join(warns), fix)
    return passed(check, f"{seen}, no restarts")


def _ready(pod: dict[str, Any]) -> bool:
    from fsagent.cli.doctor.context import pod_ready

    return pod_ready(pod)


def claim_check(ctx: Context, claim: dict[str, Any]) -> Check:
    name = name_of(claim)
    check = f"volume/{name}"
    if claim.get("missing"):
        return failed(check, f"PersistentVolumeClaim {name} does not exist (a workload mounts it)",
                      f"create it, or set data.persistence.existingClaim to a claim in {ctx.ns}")
    status = claim.get("status") or {}
    phase = status.get("phase", "Pending")
    requested = ((claim.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "?")
    capacity = (status.get("capacity") or {}).get("storage")
    modes = ",".join(status.get("accessModes") or (claim.get("spec") or {}).get("accessModes") or [])
    if phase != "Bound":
        sc = (claim.get("spec") or {}).get("storageClassName") or "the default StorageClass"
        return failed(check, f"{phase} (requests {requested}, storage class {sc})",
                      f"kubectl -n {ctx.ns} describe pvc {name}  (no default StorageClass? set "
                      f"data.persistence.storageClass / cache.persistence.storageClass)")
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Resizing", "FileSystemResizePending") and cond.get("status") == "True":
            return warned(check, f"Bound {capacity} ({modes}), resize to {requested} pending: {cond['type']}",
                          f"kubectl -n {ctx.ns} describe pvc {name}")
    return passed(check, f"Bound, {capacity or requested} {modes}".strip())


def run(ctx: Context) -> list[Check]:
    checks = [workload_check(ctx, w) for w in sorted(ctx.workloads, key=name_of)]
    checks += [claim_check(ctx, c) for c in sorted(ctx.pvcs, key=name_of)]
    return checks
