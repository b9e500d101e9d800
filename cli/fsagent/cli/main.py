"""The `fsagent` command: run the local stack, operate the cache, and check a release in a cluster (doctor)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from fsagent.cli import cache_commands, doctor
from fsagent.common.settings import get_settings


def _run(args: argparse.Namespace) -> int:
    from fsagent.cli.localstack import GaveUp, LocalStack, Ports, PortsInUse, RestartPolicy

    settings = get_settings()
    data_root = Path(settings.data_root).resolve()
    if not data_root.is_dir():
        print(f"fsagent: data root {data_root} is not a directory (set FSAGENT_DATA_ROOT)", file=sys.stderr)
        return 2
    ports = Ports(
        gateway=settings.gateway_port,
        agent=int(settings.agent_addr.rpartition(":")[2]),
        sandbox=int(settings.sandbox_addr.rpartition(":")[2]),
        cache=int(settings.cache_addr.rpartition(":")[2]),
        agent_metrics=settings.agent_metrics_port,
        sandbox_metrics=settings.sandbox_metrics_port,
        cache_metrics=settings.cache_metrics_port,
        gateway_metrics=settings.gateway_metrics_port,
    )
    stack = LocalStack(
        data_root=data_root,
        cache_dir=Path(settings.cache_dir).resolve(),
        ports=ports,
        host=args.host,
        log_dir=Path(args.log_dir) if args.log_dir else None,
    )
    stop = threading.Event()

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    # Until ready, a Ctrl-C or SIGTERM interrupts the start (which stops what it started).
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    provider = settings.resolved_provider
    print(f"fsagent: starting cache, sandbox, agent, gateway (model provider: {provider}, data: {data_root})",
          file=sys.stderr)
    try:
        stack.start(timeout=args.timeout)
    except PortsInUse as exc:
        for line in exc.lines():
            print(f"fsagent: {line}", file=sys.stderr)
        print("fsagent: not starting: every port above must be free", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as exc:
        print(f"fsagent: start-up failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fsagent: interrupted during start-up; stopped", file=sys.stderr)
        return 130
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    url = stack.base_url
    # Each service's own metrics port; the gateway's public port serves no /metrics.
    metrics = (f"gateway {ports.metrics_urls(args.host)['gateway']}, agent :{ports.agent_metrics}, "
               f"sandbox :{ports.sandbox_metrics}, cache :{ports.cache_metrics}")
    restarts = (f"a service that exits is restarted, up to {args.max_restarts} times in a row when it exits quickly"
                if args.max_restarts else "a service that exits stops all four (--max-restarts 0)")
    print(
        f"""
fsagent is ready: {url}   (API docs: {url}/docs)
Prometheus /metrics: {metrics}

  curl -s {url}/api/chat -H 'content-type: application/json' \\
       -d '{{"message":"What are the password rules?"}}'

Press Ctrl-C to stop; {restarts}.
""",
        file=sys.stderr,
        flush=True,
    )
    try:
        stack.supervise(stop, RestartPolicy(max_restarts=args.max_restarts),
                        say=lambda line: print(f"fsagent: {line}", file=sys.stderr, flush=True))
    except GaveUp as exc:
        print(f"fsagent: {exc.summary}; stopping all four", file=sys.stderr, flush=True)
        for line in exc.details:
            print(f"fsagent:   {line}", file=sys.stderr, flush=True)
        codes = stack.stop()
        print("fsagent: stopped " + ", ".join(f"{k}={v}" for k, v in codes.items()), file=sys.stderr)
        return 1
    except BaseException:
        stack.stop()
        raise
    print("fsagent: stopping", file=sys.stderr)
    codes = stack.stop()
    print("fsagent: stopped " + ", ".join(f"{k}={v}" for k, v in codes.items()), file=sys.stderr)
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start all four services locally and wait for Ctrl-C")
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument("--log-dir", help="write each service's log to DIR/<service>.log instead of the terminal")
    run.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness")
    run.add_argument("--max-restarts", type=_non_negative, default=5, metavar="N",
                     help="restart a service that exits (backoff 0.5 s doubling to 10 s); give up and stop all "
                          "four when it exits again after N restarts in a row, each within 30 s of starting "
                          "(default 5; 0: the first exit stops all four)")
    run.set_defaults(func=_run)
    cache_commands.add_parsers(sub)
    doctor.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
