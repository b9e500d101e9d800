"""One chat through the gateway, which must answer with a trace id: directly to a URL (the helm
test pod uses the gateway Service's cluster address), or through the API server's service proxy."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

from fsagent.cli.doctor.context import Context, Forbidden, KubeError, name_of
from fsagent.cli.doctor.report import Check, failed, passed, warned

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
TIMEOUT = 120.0


def api_key(ctx: Context) -> str | None:
    if ctx.opts.api_key:
        return ctx.opts.api_key
    keys = [k.strip() for k in os.environ.get("FSAGENT_API_KEYS", "").split(",") if k.strip()]
    return keys[0] if keys else None


def run(ctx: Context) -> list[Check]:
    check = "chat"
    target = ctx.opts.chat
    if not target:
        return []
    body = {"message": ctx.opts.message}
    headers = {"Content-Type": "application/json"}
    key = api_key(ctx)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        if target == "proxy":
            svc = ctx.service("gateway")
            if svc is None:
                return [failed(check, "no gateway Service", "see endpoints/ above")]
            via = f"service {ctx.ns}/{name_of(svc)}:http through the API server"
            status, data, reply_headers = ctx.kube.service_post(ctx.ns, name_of(svc), "http", "api/chat", body, headers, TIMEOUT)
        else:
            via = target
            request = urllib.request.Request(target.rstrip("/") + "/api/chat", data=json.dumps(body).encode(),
                                             headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:  # noqa: S310 - the configured URL
                    status, data, reply_headers = reply.status, reply.read(), {k.lower(): v for k, v in reply.headers.items()}
            except urllib.error.HTTPError as exc:
                status, data, reply_headers = exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}
    except Forbidden as exc:
        return [warned(check, f"cannot POST through the service proxy: {exc.message}",
                       "pass --chat http://<gateway address>:<port>, or grant create on services/proxy")]
    except (KubeError, OSError) as exc:
        return [failed(check, f"POST /api/chat via {via} failed: {exc}",
                       f"kubectl -n {ctx.ns} logs deploy/{name_of(ctx.workload('gateway') or {}) or 'gateway'}")]
    try:
        answer = json.loads(data)
    except ValueError:
        answer = {}
    if status == 401:
        return [failed(check, f"HTTP 401 from {via}: the gateway wants an API key",
                       "give the key: env FSAGENT_API_KEYS or --api-key (the helm test pod reads gateway.apiKeys' Secret)")]
    if status != 200:
        err = (answer.get("error") or {}) if isinstance(answer, dict) else {}
        return [failed(check, f"HTTP {status} from {via}: {err.get('code', '')} {err.get('message', data[:160])}",
                       f"kubectl -n {ctx.ns} logs deploy/{name_of(ctx.workload('gateway') or {}) or 'gateway'}")]
    trace = str(answer.get("trace_id") or reply_headers.get("x-trace-id") or "")
    if not TRACE_ID.match(trace):
        return [failed(check, f"answered without a trace id (got {trace!r}) via {via}",
                       "the gateway must return trace_id (check the image version)")]
    words = len(str(answer.get("response", "")).split())
    return [passed(check, f"answered in {answer.get('iterations', '?')} iterations ({words} words, model "
                   f"{answer.get('model', '?')}), trace id {trace}, via {via}")]
