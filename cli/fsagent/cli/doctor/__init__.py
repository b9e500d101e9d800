"""`fsagent doctor`: what an operator asks after `helm install`, answered from the cluster.

Is everything rolled out, do the Services have endpoints, does a Prometheus select the
ServiceMonitors and the rule (and scrape them), does the Grafana sidecar load the dashboards, is
Langfuse reachable with the keys given, do NetworkPolicies let Prometheus and the ingress controller
in, which walls confine the sandbox. Each check prints PASS / WARN / FAIL, what it saw and a
one-line fix; the exit code is 0 (all passed), 1 (warnings) or 2 (failures). docs/operations.md.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable

from fsagent.cli.doctor.report import Check, Report, warned

EXIT_USAGE = 2


def _modules() -> list[tuple[str, Callable]]:
    from fsagent.cli.doctor.checks import chat, dashboards, endpoints, langfuse, monitoring, networkpolicy, rollout, sandbox

    return [("rollout", rollout.run), ("endpoints", endpoints.run), ("prometheus", monitoring.run),
            ("dashboards", dashboards.run), ("langfuse", langfuse.run), ("networkpolicy", networkpolicy.run),
            ("sandbox", sandbox.run), ("chat", chat.run)]


def run_checks(ctx) -> list[Check]:
    from fsagent.cli.doctor.context import forbidden_hint
    from fsagent.cli.doctor.kube import Forbidden, KubeError

    checks: list[Check] = []
    for area, fn in _modules():
        try:
            checks.extend(fn(ctx))
        except Forbidden as exc:
            checks.append(warned(area, f"not checked: {exc}", forbidden_hint(exc, ctx)))
        except KubeError as exc:
            checks.append(warned(area, f"not checked: {exc}", "retry; check the API server"))
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            checks.append(warned(area, f"not checked: internal error {detail}", "report this as a bug in fsagent doctor"))
    return checks


def find_release(kube, namespace: str) -> tuple[str | None, str]:
    from fsagent.cli.doctor.context import INSTANCE, PART_OF

    found = set()
    for kind in ("deployments", "statefulsets"):
        for obj in kube.list(kind, namespace, labels=PART_OF):
            found.add(obj["metadata"]["labels"].get(INSTANCE, ""))
    found.discard("")
    if len(found) == 1:
        return found.pop(), ""
    if not found:
        return None, f"no fsagent release in namespace {namespace} (no Deployment labelled {PART_OF})"
    return None, f"several fsagent releases in namespace {namespace}: {', '.join(sorted(found))}; pass --release"


def cmd_doctor(args: argparse.Namespace) -> int:
    from fsagent.cli.doctor.context import Context, Options
    from fsagent.cli.doctor.kube import Kube, KubeError, load

    try:
        api, target = load(args.kubeconfig, args.context, True if args.in_cluster else None)
    except Exception as exc:  # noqa: BLE001 - config errors come in many types
        print(f"fsagent doctor: cannot load a Kubernetes configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    kube = Kube(api)
    namespace = args.namespace or target.namespace or "default"
    identity = kube.whoami()
    try:
        release = args.release
        if not release:
            release, why = find_release(kube, namespace)
            if not release:
                print(f"fsagent doctor: {why}", file=sys.stderr)
                return EXIT_USAGE
    except KubeError as exc:
        print(f"fsagent doctor: cannot read namespace {namespace} on {target.server}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    opts = Options(namespace=namespace, release=release, ingress_namespace=args.ingress_namespace,
                   chat=args.chat, api_key=args.api_key, message=args.message, in_cluster=target.in_cluster,
                   identity=identity)
    ctx = Context(kube, opts)
    server = target.server + (f", context {target.context}" if target.context else "") + (", in-cluster" if target.in_cluster else "")
    report = Report(namespace=namespace, release=release, server=server, identity=identity)
    report.add(*run_checks(ctx))
    if args.json:
        report.print_json(sys.stdout, args.warnings_ok)
    else:
        report.print_text(sys.stdout)
    return report.exit_code(args.warnings_ok)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check a Helm release of fsagent in a cluster (PASS/WARN/FAIL, with fixes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--namespace", help="the release's namespace (default: the context's, or the pod's in-cluster)")
    p.add_argument("--release", help="the Helm release name (default: the only fsagent release in the namespace)")
    p.add_argument("--context", help="kubeconfig context to use")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--in-cluster", action="store_true",
                   help="use the pod's ServiceAccount (default when running in a pod without a kubeconfig)")
    p.add_argument("--json", action="store_true", help='print {"checks": [{"name", "status", "detail", "fix"}], ...}')
    p.add_argument("--ingress-namespace", help="namespace of the ingress controller, for the NetworkPolicy check")
    p.add_argument("--chat", nargs="?", const="proxy", metavar="URL",
                   help="also send one chat to the gateway and require a trace id: to URL (e.g. "
                        "http://fsagent-gateway.fsagent.svc:8000), or without URL through the API server's service proxy")
    p.add_argument("--api-key", help="API key for the chat (default: the first of $FSAGENT_API_KEYS)")
    p.add_argument("--message", default="What is in the documents?", help="the chat's question")
    p.add_argument("--warnings-ok", action="store_true", help="exit 0 when nothing failed (helm test uses it)")
    p.set_defaults(func=cmd_doctor)
