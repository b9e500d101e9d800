"""`fsagent warm-cache`, `fsagent cache-stats`, `fsagent clear-cache`: operate the running cache.

They talk to the running services over gRPC at the configured addresses (FSAGENT_SANDBOX_ADDR,
FSAGENT_CACHE_ADDR, or --sandbox-addr / --cache-addr). warm-cache runs the real tools through
`Sandbox.Execute`, exactly as the agent does, so what it leaves in the cache is byte for byte what
the tool returns (and only what the sandbox's own rules decide to cache). By default every call
runs now (`no_cache`: the lookup is skipped, the result stored), which also refills the service
after a clear-cache while sandboxes still hold entries in their in-process tier; --skip-cached
looks up first. A service that cannot be reached is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import grpc

from fsagent.common import grpcutil
from fsagent.common.settings import get_settings
from fsagent.v1 import cache_pb2, cache_pb2_grpc, sandbox_pb2, sandbox_pb2_grpc

EXIT_UNREACHABLE = 2
EXIT_USAGE = 2
RPC_TIMEOUT = 10.0
# Refusals that say "this is not something to warm" rather than "something went wrong".
NOT_WARMABLE = ("file_type", "not_found", "path_outside_root")


class Unreachable(Exception):
    """A service did not answer; the message is one line for the user."""


def _unreachable(service: str, address: str, env: str, exc: grpc.RpcError) -> Unreachable:
    code = exc.code().name if callable(getattr(exc, "code", None)) else "UNAVAILABLE"
    return Unreachable(f"cannot reach the {service} at {address} ({code}); is it running? (set {env} or --{service}-addr)")


def _is_unreachable(exc: grpc.RpcError) -> bool:
    return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# --- formatting --------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class ProgressBar:
    """A one-line bar redrawn in place on a terminal (stderr); silent when disabled."""

    def __init__(self, total: int, stream: TextIO, enabled: bool, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = enabled
        self.width = width
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, errors: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\r[{bar}] {done}/{self.total} calls  {100 * done / self.total:5.1f}%  "
            f"{errors} errors  {now - self.started:5.1f}s"
        )
        self.stream.flush()

    def finish(self, done: int, errors: int) -> None:
        if self.enabled:
            self.update(done, errors, force=True)
            self.stream.write("\n")
            self.stream.flush()


# --- cache-stats -------------------------------------------------------------------------------


async def _stats(stub: cache_pb2_grpc.CacheStub, address: str) -> cache_pb2.StatsResponse:
    try:
        return await stub.Stats(cache_pb2.StatsRequest(), timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        if _is_unreachable(exc):
            raise _unreachable("cache", address, "FSAGENT_CACHE_ADDR", exc) from None
        raise


def stats_dict(reply: cache_pb2.StatsResponse) -> dict[str, Any]:
    namespaces = {
        ns.namespace: {"entries": ns.entries, "bytes": ns.bytes, "hits": ns.hits, "misses": ns.misses}
        for ns in reply.namespaces
    }
    limit = reply.size_limit_bytes
    return {
        "namespaces": namespaces,
        "entries": sum(ns["entries"] for ns in namespaces.values()),
        "bytes": sum(ns["bytes"] for ns in namespaces.values()),
        "size_limit_bytes": limit,
        "volume_bytes": reply.volume_bytes,
        "usage_percent": round(100.0 * reply.volume_bytes / limit, 2) if limit else 0.0,
        "hit_ratio": round(reply.hit_ratio, 4),
        "directory": reply.directory,
    }


def format_stats(data: dict[str, Any]) -> str:
    lines = [f"{'namespace':<10} {'entries':>9} {'bytes':>11} {'hits':>9} {'misses':>9}"]
    for name, ns in data["namespaces"].items():
        lines.append(f"{name:<10} {ns['entries']:>9} {human_bytes(ns['bytes']):>11} {ns['hits']:>9} {ns['misses']:>9}")
    lines.append(f"{'total':<10} {data['entries']:>9} {human_bytes(data['bytes']):>11}")
    lines.append("")
    lines.append(
        f"size limit {human_bytes(data['size_limit_bytes'])}, used {human_bytes(data['volume_bytes'])} "
        f"({data['usage_percent']:.2f}%), hit ratio {100 * data['hit_ratio']:.1f}% (since the cache service started)"
    )
    lines.append(f"store: {data['directory']}")
    return "\n".join(lines)


async def cache_stats(args: argparse.Namespace, out: TextIO) -> int:
    async with grpcutil.channel(args.cache_addr) as channel:
        data = stats_dict(await _stats(cache_pb2_grpc.CacheStub(channel), args.cache_addr))
    out.write((json.dumps(data, indent=2) if args.json else format_stats(data)) + "\n")
    return 0


# --- clear-cache -------------------------------------------------------------------------------


def _confirm(question: str, stdin: TextIO, stderr: TextIO) -> bool:
    stderr.write(question + " [y/N] ")
    stderr.flush()
    answer = stdin.readline().strip().lower()
    return answer in ("y", "yes")


async def clear_cache(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    async with grpcutil.channel(args.cache_addr) as channel:
        stub = cache_pb2_grpc.CacheStub(channel)
        data = stats_dict(await _stats(stub, args.cache_addr))
        which = args.namespace or "all namespaces"
        if args.namespace:
            ns = data["namespaces"].get(args.namespace, {"entries": 0, "bytes": 0})
            entries, size = ns["entries"], ns["bytes"]
        else:
            entries, size = data["entries"], data["bytes"]
        if not args.force:
            if not stdin.isatty():
                err.write("fsagent: clear-cache needs confirmation: run it on a terminal or pass --force\n")
                return EXIT_USAGE
            if not _confirm(f"Remove {entries} entries ({human_bytes(size)}) from {which} of the cache at "
                            f"{args.cache_addr}?", stdin, err):
                err.write("fsagent: nothing removed\n")
                return 1
        try:
            reply = await stub.Clear(cache_pb2.ClearRequest(namespace=args.namespace or ""), timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            if _is_unreachable(exc):
                raise _unreachable("cache", args.cache_addr, "FSAGENT_CACHE_ADDR", exc) from None
            err.write(f"fsagent: clear-cache failed: {exc.details()}\n")
            return 1
    out.write(f"removed {reply.removed} entries from {which}\n")
    return 0


# --- warm-cache --------------------------------------------------------------------------------


@dataclass
class WarmSummary:
    files: int = 0
    directories: int = 0
    calls: int = 0
    already_cached: int = 0
    ran: int = 0
    not_warmable: int = 0
    errors: int = 0
    entries_added: int = 0
    bytes_added: int = 0
    seconds: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    def text(self) -> str:
        return (
            f"warm-cache: {self.files} files, {self.directories} directories, {self.calls} calls "
            f"({self.ran} ran, {self.already_cached} already cached, {self.not_warmable} not cacheable), "
            f"{self.entries_added} cache entries added ({human_bytes(self.bytes_added)}), "
            f"{self.errors} errors, {self.seconds:.1f}s"
        )


def plan_calls(
    documents: list[sandbox_pb2.DocumentInfo], root: str, patterns: list[str]
) -> list[tuple[str, dict[str, Any]]]:
    """cat of every file, ls and tree of every directory (the root included), grep per pattern."""
    calls: list[tuple[str, dict[str, Any]]] = []
    directories = [root] + [d.path for d in documents if d.is_dir]
    for d in documents:
        if not d.is_dir:
            calls.append(("cat", {"path": d.path}))
    for directory in directories:
        calls.append(("ls", {"path": directory}))
        calls.append(("tree", {"path": directory}))
    for pattern in patterns:
        calls.append(("grep", {"pattern": pattern, "path": root}))
    return calls


async def warm_cache(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    summary = WarmSummary()
    began = time.monotonic()
    async with grpcutil.channel(args.sandbox_addr) as sandbox_channel, grpcutil.channel(args.cache_addr) as cache_channel:
        sandbox = sandbox_pb2_grpc.SandboxStub(sandbox_channel)
        cache = cache_pb2_grpc.CacheStub(cache_channel)
        before = stats_dict(await _stats(cache, args.cache_addr))
        try:
            listing = await sandbox.ListDocuments(
                sandbox_pb2.ListDocumentsRequest(path=args.path, recursive=True), timeout=RPC_TIMEOUT * 6
            )
        except grpc.RpcError as exc:
            if _is_unreachable(exc):
                raise _unreachable("sandbox", args.sandbox_addr, "FSAGENT_SANDBOX_ADDR", exc) from None
            err.write(f"fsagent: cannot list {args.path or '.'}: {exc.details()}\n")
            return 1
        documents = list(listing.documents)
        summary.files = sum(1 for d in documents if not d.is_dir)
        summary.directories = sum(1 for d in documents if d.is_dir) + 1
        calls = plan_calls(documents, args.path or ".", args.grep or [])
        summary.calls = len(calls)
        bar = ProgressBar(len(calls), err, enabled=_progress_enabled(args.progress, err))
        done = 0
        gate = asyncio.Semaphore(max(1, args.concurrency))

        async def one(tool: str, arguments: dict[str, Any]) -> None:
            nonlocal done
            async with gate:
                try:
                    reply = await sandbox.Execute(
                        sandbox_pb2.ExecuteRequest(
                            tool=tool, arguments_json=json.dumps(arguments), no_cache=not args.skip_cached
                        ),
                        timeout=args.call_timeout,
                    )
                except grpc.RpcError as exc:
                    summary.errors += 1
                    if len(summary.error_samples) < 5:
                        summary.error_samples.append(f"{tool} {arguments.get('path', '')}: {exc.code().name}")
                else:
                    if reply.cached:
                        summary.already_cached += 1
                    elif reply.error_code in NOT_WARMABLE:
                        summary.not_warmable += 1
                    elif reply.error_code:
                        summary.errors += 1
                        if len(summary.error_samples) < 5:
                            summary.error_samples.append(f"{tool} {arguments.get('path', '')}: {reply.error_code}")
                    else:
                        summary.ran += 1
                done += 1
                bar.update(done, summary.errors)

        bar.update(0, 0, force=True)
        results = await asyncio.gather(*(one(tool, a) for tool, a in calls), return_exceptions=True)
        bar.finish(done, summary.errors)
        unexpected = [r for r in results if isinstance(r, BaseException)]
        if unexpected:
            raise unexpected[0]
        if summary.calls and summary.errors == summary.calls and summary.error_samples and all(
            s.endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")) for s in summary.error_samples
        ):
            raise Unreachable(f"cannot reach the sandbox at {args.sandbox_addr}; every call failed "
                              f"({summary.error_samples[0]})")
        after = stats_dict(await _stats(cache, args.cache_addr))
    for ns in ("content", "search"):
        now, then = after["namespaces"].get(ns, {}), before["namespaces"].get(ns, {})
        summary.entries_added += now.get("entries", 0) - then.get("entries", 0)
        summary.bytes_added += now.get("bytes", 0) - then.get("bytes", 0)
    summary.seconds = time.monotonic() - began
    if args.json:
        out.write(json.dumps(asdict(summary), indent=2) + "\n")
    else:
        out.write(summary.text() + "\n")
        for sample in summary.error_samples:
            out.write(f"  error: {sample}\n")
    return 1 if summary.errors else 0


def _progress_enabled(mode: str, stream: TextIO) -> bool:
    if mode == "always":
        return True
    if mode == "never":
        return False
    return stream.isatty()


# --- wiring ------------------------------------------------------------------------------------


def _addresses(parser: argparse.ArgumentParser, sandbox: bool) -> None:
    settings = get_settings()
    parser.add_argument("--cache-addr", default=settings.cache_addr,
                        help=f"cache service address (FSAGENT_CACHE_ADDR, now {settings.cache_addr})")
    if sandbox:
        parser.add_argument("--sandbox-addr", default=settings.sandbox_addr,
                            help=f"sandbox service address (FSAGENT_SANDBOX_ADDR, now {settings.sandbox_addr})")


def add_parsers(sub: Any) -> None:
    """Register warm-cache, cache-stats and clear-cache on the `fsagent` subparsers."""
    settings = get_settings()
    warm = sub.add_parser(
        "warm-cache", help="run the real tools through the sandbox so their results are cached",
        description="Runs cat on every file, ls and tree on every directory (and grep for each --grep "
                    "pattern) through the running sandbox, which caches the results like any agent call.",
    )
    _addresses(warm, sandbox=True)
    warm.add_argument("--path", default="", help="warm only beneath this directory (relative to the data root)")
    warm.add_argument("--grep", action="append", metavar="PATTERN", help="also run grep PATTERN over the path (repeatable)")
    warm.add_argument("--concurrency", type=int, default=4, metavar="N", help="calls in flight at once (default 4)")
    warm.add_argument("--skip-cached", action="store_true",
                      help="look each call up first and skip those with a valid entry (default: run every "
                           "tool now and store its result)")
    warm.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                      help="progress bar on stderr (auto: when stderr is a terminal)")
    warm.add_argument("--call-timeout", type=float, default=settings.tool_timeout + 10.0, help=argparse.SUPPRESS)
    warm.add_argument("--json", action="store_true", help="print the summary as JSON")
    warm.set_defaults(func=lambda a: _run(warm_cache(a, sys.stdout, sys.stderr)))

    stats = sub.add_parser("cache-stats", help="entries and bytes per namespace, size limit, usage and hit ratio")
    _addresses(stats, sandbox=False)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=lambda a: _run(cache_stats(a, sys.stdout)))

    clear = sub.add_parser("clear-cache", help="remove cache entries (asks first unless --force)")
    _addresses(clear, sandbox=False)
    clear.add_argument("--namespace", choices=("content", "search", "sessions"), help="only this namespace")
    clear.add_argument("--force", action="store_true", help="do not ask for confirmation")
    clear.set_defaults(func=lambda a: _run(clear_cache(a, sys.stdout, sys.stderr, sys.stdin)))


def _run(coro: Any) -> int:
    try:
        return int(asyncio.run(coro))
    except Unreachable as exc:
        print(f"fsagent: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except grpc.RpcError as exc:
        code = exc.code().name if callable(getattr(exc, "code", None)) else "error"
        print(f"fsagent: the service answered {code}: {exc.details() if hasattr(exc, 'details') else exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nfsagent: interrupted", file=sys.stderr)
        return 130
