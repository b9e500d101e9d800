"""Langfuse: the keys Secret the agent reads exists with both keys, the Langfuse server answers its
health endpoint (through the API server's service proxy when it runs in the cluster), and the
agent's own export counter shows no failures (a wrong key pair makes every export a 401, which is
how "reachable with the keys we gave" shows)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from fsagent.cli.doctor.context import Context, Forbidden, KubeError, NotFound, forbidden_hint, name_of
from fsagent.cli.doctor.kube import secret_value
from fsagent.cli.doctor.report import Check, failed, passed, warned

HEALTH = "api/public/health"
DEFAULT_URL = "https://cloud.langfuse.com"  # the SDK's default when LANGFUSE_BASE_URL is unset
PREFIXES = {"LANGFUSE_PUBLIC_KEY": "pk-lf-", "LANGFUSE_SECRET_KEY": "sk-lf-"}


def _secret_refs(ctx: Context) -> dict[str, tuple[str, str]]:
    """env name -> (secret, key) for the agent's Langfuse keys."""
    env = ctx.env_of("agent")
    out = {}
    for var in PREFIXES:
        ref = ((env.get(var) or {}).get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            out[var] = (ref.get("name", ""), ref.get("key", ""))
    return out


def base_url(ctx: Context) -> str:
    env = ctx.env_of("agent")
    for var in ("LANGFUSE_BASE_URL", "LANGFUSE_HOST"):
        if (env.get(var) or {}).get("value"):
            return env[var]["value"]
    return DEFAULT_URL


def cluster_service(url: str, namespace: str) -> tuple[str, str, int] | None:
    """(namespace, service, port) when the URL names a Service of the cluster
    (name, name.ns, name.ns.svc, name.ns.svc.cluster.local), else None."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    labels = host.split(".")
    if len(labels) == 1 and host and host != "localhost":
        return namespace, host, port
    if len(labels) >= 3 and labels[2] == "svc":
        return labels[1], labels[0], port
    if len(labels) == 2 and not any(c.isdigit() for c in labels[1][:1]) and labels[1] not in ("com", "io", "net", "org", "cloud", "dev", "ai"):
        return labels[1], labels[0], port
    return None


def keys_check(ctx: Context) -> Check:
    check = "langfuse/keys"
    refs = _secret_refs(ctx)
    if not refs:
        return passed(check, "Langfuse tracing is not configured (no keys for the agent): nothing to check")
    secrets = {s for s, _ in refs.values()}
    problems, fix = [], ""
    for secret_name in sorted(secrets):
        try:
            secret = ctx.kube.get("secrets", secret_name, ctx.ns)
        except NotFound:
            keys = " ".join(f"--from-literal={k}={PREFIXES[v]}..." for v, (s, k) in refs.items() if s == secret_name)
            return failed(check, f"Secret {secret_name} does not exist (the agent reads its Langfuse keys from it)",
                          f"kubectl -n {ctx.ns} create secret generic {secret_name} {keys}")
        except Forbidden as exc:
            return warned(check, f"cannot read Secret {secret_name}: {exc.message}", forbidden_hint(exc, ctx))
        for var, (s, key) in refs.items():
            if s != secret_name:
                continue
            value = secret_value(secret, key)
            if value is None:
                have = ", ".join(sorted(secret.get("data") or {})) or "none"
                problems.append(f"Secret {secret_name} has no key {key} (for {var}; keys: {have})")
                fix = fix or (f"kubectl -n {ctx.ns} patch secret {secret_name} --type merge "
                              f"-p '{{\"stringData\":{{\"{key}\":\"{PREFIXES[var]}...\"}}}}'")
            elif not value.strip():
                problems.append(f"key {key} of Secret {secret_name} is empty")
                fix = fix or f"kubectl -n {ctx.ns} edit secret {secret_name}"
            elif not value.startswith(PREFIXES[var]):
                other = [p for v, p in PREFIXES.items() if v != var and value.startswith(p)]
                problems.append(f"key {key} does not start with {PREFIXES[var]}" + (" (public and secret key swapped?)" if other else ""))
                fix = fix or f"put the project's {var} in key {key} of Secret {secret_name}"
    if problems:
        warn_only = all("does not start" in p for p in problems)
        return (warned if warn_only else failed)(check, "; ".join(problems), fix)
    used = ", ".join(f"{k}" for _, k in refs.values())
    return passed(check, f"Secret {', '.join(sorted(secrets))} has {used}")


def health_check(ctx: Context) -> Check:
    check = "langfuse/health"
    if not _secret_refs(ctx):
        return passed(check, "Langfuse tracing is not configured: nothing to check")
    url = base_url(ctx)
    svc = cluster_service(url, ctx.ns)
    try:
        if svc:
            ns, name, port = svc
            via = f"service {ns}/{name}:{port} through the API server"
            body = ctx.kube.service_get(ns, name, port, HEALTH)
        else:
            via = url
            with urllib.request.urlopen(url.rstrip("/") + "/" + HEALTH, timeout=10) as reply:  # noqa: S310 - the configured URL
                body = reply.read()
    except Forbidden as exc:
        return warned(check, f"cannot ask {url} ({exc.message})", forbidden_hint(exc, ctx))
    except NotFound as exc:
        return failed(check, f"{url}: {exc.message}", f"check langfuse.baseUrl (the Service {svc[1] if svc else ''} must exist)")
    except (KubeError, OSError, urllib.error.URLError) as exc:
        return failed(check, f"{url} does not answer {HEALTH} (via {via}): {exc}",
                      f"kubectl -n {svc[0]} get pods,endpointslices | grep {svc[1]}" if svc else
                      "check langfuse.baseUrl and the agent's egress (networkPolicy.agentEgress.langfuse)")
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    status = str(data.get("status", "")).upper()
    if status != "OK":
        return failed(check, f"{url} answered {HEALTH} with {body[:120]!r} (via {via})",
                      "check that langfuse.baseUrl points at the Langfuse web server")
    version = data.get("version")
    return passed(check, f"{url} healthy" + (f", Langfuse {version}" if version else "") + f" (via {via})")


def export_check(ctx: Context) -> Check:
    check = "langfuse/export"
    if not _secret_refs(ctx):
        return passed(check, "Langfuse tracing is not configured: no exports expected")
    scrapes = ctx.scrape_pods("agent")
    if not scrapes:
        return warned(check, "no ready agent pod to read fsagent_langfuse_* from", "see rollout/ for the agent")
    parts, bad, unreadable = [], [], []
    for s in scrapes:
        if s.error:
            unreadable.append(f"{s.source}: {s.error[:160]}")
            continue
        enabled = s.value("fsagent_langfuse_enabled")
        ok = s.value("fsagent_langfuse_export_spans_total", result="success") or 0
        ko = s.value("fsagent_langfuse_export_spans_total", result="failure") or 0
        parts.append(f"{s.source}: enabled={int(enabled or 0)}, {int(ok)} spans exported, {int(ko)} failed")
        if not enabled:
            bad.append(f"{s.source}: tracing did not start (fsagent_langfuse_enabled 0)")
        elif ko:
            bad.append(f"{s.source}: {int(ko)} spans failed to export")
    if bad:
        return failed(check, "; ".join(bad + parts),
                      f"kubectl -n {ctx.ns} logs deploy/{name_of(ctx.workload('agent') or {})} | grep -i langfuse  (wrong keys: 401; "
                      "wrong URL or egress: connection errors)")
    if unreadable and not parts:
        return warned(check, "cannot read the agent's metrics: " + "; ".join(unreadable), "see endpoints/ for the agent")
    return passed(check, "; ".join(parts))


def run(ctx: Context) -> list[Check]:
    return [keys_check(ctx), health_check(ctx), export_check(ctx)]
