"""What the sandbox costs: per-tool overhead, each confinement layer, and search throughput.

    uv run python -m benchmarks sandbox_tools                  (or: python -m benchmarks.sandbox_tools --help)

1. Per tool: one call through a real `fsagent-sandbox` process over gRPC (no cache, every wall
   this machine allows) against running the same binary directly from Python (subprocess, pipes).
   Target: a 2 KB cat through the service within 1.5x of running cat directly.
2. Per confinement layer: one tiny tool run (`find . -maxdepth 0`) started with no wall (own
   session, empty environment), then with each wall added as a per-call wrapper (prlimit, setpriv
   for the uid, bubblewrap), and through the service's confined spawner, which builds the
   expensive walls once. Target: all confinement together <= 3 ms per call.
3. Search: rg over a generated corpus (default 300 MB under /tmp, deleted afterwards) through the
   service against raw rg on the same files. Target: within 1.2x of raw rg.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fsagent.common import toolspec
from fsagent.sandbox import isolation, runner, spawner, tools
from fsagent.v1 import sandbox_pb2, sandbox_pb2_grpc

WORDS = (
    "service deploy cache request latency token agent sandbox policy review incident budget customer "
    "release feature metric queue storage network backup schema index replica shard gateway session "
    "timeout retry quota invoice contract meeting roadmap sprint owner team"
).split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stats(samples: Sequence[float]) -> tuple[float, float]:
    """(p50, mean) in milliseconds."""
    return statistics.median(samples) * 1000, statistics.fmean(samples) * 1000


def interleaved(fns: Sequence[Callable[[], object]], rounds: int, warmup: int = 10) -> list[list[float]]:
    """Samples for each fn, taken in turn (so a change of machine load hits them alike)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            fn()
            out[i].append(time.perf_counter() - started)
    return out


def timed(fn: Callable[[], object], rounds: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


# --- data ---------------------------------------------------------------------------------------


def make_docs(root: Path, files: int = 200, size: int = 2048) -> None:
    rng = random.Random(1)
    for i in range(files):
        folder = root / "docs" / f"team-{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        text = ""
        while len(text) < size:
            text += " ".join(rng.choice(WORDS) for _ in range(10)) + "\n"
        (folder / f"doc-{i:03d}.md").write_text(text[: size - 1] + "\n")


def make_corpus(root: Path, megabytes: int) -> tuple[int, int]:
    """Files of ~100 KB of random lines, every 7th with a needle line; (files, bytes)."""
    rng = random.Random(7)
    pool = [" ".join(rng.choice(WORDS) for _ in range(12)) + "\n" for _ in range(20000)]
    target, total, i = megabytes * 1024 * 1024, 0, 0
    while total < target:
        folder = root / f"area-{i % 20:02d}" / f"topic-{(i // 20) % 10:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = rng.choices(pool, k=1000)
        if i % 7 == 0:
            lines[500] = f"The needle code for document {i} is N-{i:05d}.\n"
        data = "".join(lines)
        (folder / f"doc-{i:05d}.md").write_text(data)
        total += len(data)
        i += 1
    return i, total


# --- the service --------------------------------------------------------------------------------


class Service:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FSAGENT_")}
        env.update(
            FSAGENT_DATA_ROOT=str(root), FSAGENT_SANDBOX_ADDR=f"127.0.0.1:{self.port}",
            FSAGENT_SANDBOX_METRICS_PORT=str(free_port()), FSAGENT_CACHE_ADDR="", FSAGENT_LOG_LEVEL="INFO",
            FSAGENT_TOOL_TIMEOUT="60", FSAGENT_SANDBOX_ISOLATION="auto",
        )
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "fsagent.sandbox"], env=env, stdout=self.log, stderr=self.log)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    break
            except grpc.RpcError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the sandbox did not start:\n" + self.logs()[-2000:])
            time.sleep(0.1)
        self.stub = sandbox_pb2_grpc.SandboxStub(self.channel)

    def logs(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def walls(self) -> str:
        for line in self.logs().splitlines():
            if '"sandbox confinement"' in line:
                record = json.loads(line)
                return f"active: {', '.join(record.get('active_layers', []))}; inactive: {', '.join(record.get('inactive_layers', [])) or '-'}"
        return "unknown"

    def call(self, tool: str, args: dict) -> sandbox_pb2.ExecuteResponse:
        request = sandbox_pb2.ExecuteRequest(tool=tool, arguments_json=json.dumps(args), no_cache=True)
        reply = self.stub.Execute(request, timeout=120)
        if reply.error_code:
            raise SystemExit(f"{tool} failed: {reply.error}")
        return reply

    def stop(self) -> None:
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def direct(argv: list[str], cwd: Path) -> Callable[[], object]:
    return lambda: subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, check=False)


def per_tool(service: Service, root: Path, rounds: int) -> None:
    sample = "docs/team-3/doc-003.md"
    rg = runner.which("rg")
    ctx = tools.Context.create(root, 65536, 10)
    grep_args = toolspec.parse_arguments("grep", {"pattern": "incident", "path": "docs"})
    # The argv the service builds for this call (one thread for a small tree).
    grep_argv = tools.grep_argv(ctx, grep_args, "docs", single_thread=tools.small_tree(str(root / "docs")))  # type: ignore[arg-type]
    rows = [
        ("cat 2 KB", "cat", {"path": sample}, ["cat", sample]),
        ("head", "head", {"path": sample, "lines": 10}, ["head", "-n", "10", sample]),
        ("tail", "tail", {"path": sample, "lines": 10}, ["tail", "-n", "10", sample]),
        ("wc", "wc", {"paths": [sample]}, ["wc", sample]),
        ("preview", "preview", {"path": sample}, ["head", "-n", "20", sample]),
        ("ls", "ls", {"path": "docs/team-3"}, ["ls", "-1", "docs/team-3"]),
        ("tree", "tree", {"path": "docs"}, ["tree", "-F", "docs"] if shutil.which("tree") else ["find", "docs"]),
        ("find", "find", {"path": "docs", "name": "*.md"}, ["find", "./docs", "-name", "*.md", "-print"]),
        ("grep 200 files", "grep", {"pattern": "incident", "path": "docs"}, grep_argv if rg else ["grep", "-rn", "incident", "docs"]),
    ]
    print(f"\n1. Per tool: through the service (gRPC, no cache) vs the binary run directly; p50 of {rounds}")
    print(f"   {'tool':16s} {'service':>10s} {'direct':>10s} {'ratio':>7s}   direct command")
    for label, tool, args, argv in rows:
        via_s, raw_s = interleaved([lambda: service.call(tool, args), direct(argv, root)], rounds)
        via, raw = stats(via_s)[0], stats(raw_s)[0]
        print(f"   {label:16s} {via:8.2f}ms {raw:8.2f}ms {via / raw:6.2f}x   {os.path.basename(argv[0])} {' '.join(argv[1:])[:50]}")


# --- confinement layers -------------------------------------------------------------------------


class PrefixLauncher:
    """Each call wrapped in `prefix` (the per-call way of adding a wall), from this process."""

    def __init__(self, name: str, prefix: list[str]) -> None:
        self.name = name
        self.prefix = prefix

    async def spawn(self, argv: Sequence[str], cwd: str, limits: runner.Limits) -> runner.Child:
        return await runner.spawn_process([*self.prefix, *argv], cwd)

    async def close(self) -> None:
        return None


async def layer_costs(root: Path, rounds: int) -> None:
    real = os.path.realpath(root)
    find = runner.which("find")
    assert find
    argv = [find, ".", "-maxdepth", "0", "-print"]
    as_root = os.geteuid() == 0
    limits = runner.Limits.for_timeout(10)
    prlimit = runner._prlimit_prefix(limits) if runner.PRLIMIT else []
    setpriv = [runner.SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs", "--"] if as_root and runner.SETPRIV else []

    async def once(launcher: runner.Launcher) -> float:
        started = time.perf_counter()
        res = await runner.run(argv, cwd=real, timeout=10, max_output_bytes=4096, launcher=launcher)
        elapsed = time.perf_counter() - started
        if res.stdout != b".\n":
            raise SystemExit(f"{getattr(launcher, 'name', '?')}: {res}")
        return elapsed

    launchers: list[tuple[str, runner.Launcher]] = [("none (own session, empty env)", PrefixLauncher("none", []))]
    skipped: list[tuple[str, str]] = []
    if prlimit:
        launchers.append(("+ rlimits (prlimit per call)", PrefixLauncher("prlimit", prlimit)))
    else:
        skipped.append(("+ rlimits (prlimit per call)", "prlimit missing"))
    if setpriv:
        launchers.append(("+ uid 65534 (setpriv per call)", PrefixLauncher("uid", prlimit + setpriv)))
    else:
        skipped.append(("+ uid 65534 (setpriv per call)", "not root"))
    bwrap_ok = isolation.BWRAP is not None
    if bwrap_ok:
        wrap = isolation.bwrap_argv(real, as_root=as_root, drop_uid=bool(setpriv)) + ["--"]
        launchers.append(("+ bubblewrap (per call)", PrefixLauncher("bwrap", prlimit + wrap + setpriv)))
    else:
        skipped.append(("+ bubblewrap (per call)", "bwrap missing"))
    uid = 65534 if as_root else None
    landlock = spawner.landlock_abi() > 0
    spawners = [
        ("spawner: rlimits" + (" + uid" if uid else ""), isolation.Candidate(False, False, uid, uid)),
        ("spawner: + landlock", isolation.Candidate(False, True, uid, uid)),
        ("spawner: + bubblewrap", isolation.Candidate(True, False, uid, uid)),
        ("spawner: every wall (bwrap + landlock" + (" + uid)" if uid else ")"), isolation.Candidate(True, True, uid, uid)),
    ]
    for label, candidate in spawners:
        if (candidate.bwrap and not bwrap_ok) or (candidate.landlock and not landlock):
            skipped.append((label, "not available here"))
            continue
        launcher, _, reason = await isolation._try(real, candidate)
        if launcher is None:
            skipped.append((label, reason[:80]))
        else:
            launchers.append((label, launcher))
    samples: list[list[float]] = [[] for _ in launchers]
    try:
        for i in range(rounds + 10):  # interleaved, so a change of machine load hits every row alike
            for j, (_, launcher) in enumerate(launchers):
                elapsed = await once(launcher)
                if i >= 10:
                    samples[j].append(elapsed)
    finally:
        for _, launcher in launchers:
            await launcher.close()
    print(f"\n2. Confinement per call: `find . -maxdepth 0` started {rounds} times; p50 / mean, and p50 over 'none'")
    base = stats(samples[0])[0]
    for (label, _), values in zip(launchers, samples):
        p50, mean = stats(values)
        print(f"   {label:44s} {p50:6.2f} ms / {mean:6.2f} ms   {p50 - base:+5.2f} ms")
    for label, why in skipped:
        print(f"   {label:44s} skipped ({why})")


# --- search throughput --------------------------------------------------------------------------


def search(service: Service, root: Path, corpus_mb: int, repeats: int) -> None:
    corpus = root / "corpus"
    started = time.perf_counter()
    files, size = make_corpus(corpus, corpus_mb)
    print(f"\n3. Search: {files} files, {size / 1e6:.0f} MB generated in {time.perf_counter() - started:.1f}s; "
          f"pattern 'needle code' ({(files + 6) // 7} matching lines); median of {repeats}, page cache warm")
    subprocess.run(["rg", "--no-config", "-c", "zzzz-warm", "corpus"], cwd=root, capture_output=True)
    ctx = tools.Context.create(root, 65536, 60)
    args = toolspec.parse_arguments("grep", {"pattern": "needle code", "path": "corpus"})
    service_argv = tools.grep_argv(ctx, args, "corpus", single_thread=tools.small_tree(str(corpus)))  # type: ignore[arg-type]
    rg = runner.which("rg") or "rg"
    variants = [
        ("raw rg (defaults: threads, no sort)", [rg, "--no-config", "-n", "needle code", "corpus"]),
        ("raw rg, the service's exact argv", service_argv),
    ]
    call = lambda: service.call("grep", {"pattern": "needle code", "path": "corpus"})  # noqa: E731
    runs: dict[str, Callable[[], object]] = {label: direct(argv, root) for label, argv in variants}
    runs["through the service (gRPC, confined)"] = call
    samples: dict[str, list[float]] = {label: [] for label in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(repeats):  # interleaved, so load changes hit every variant alike
        for label, fn in runs.items():
            started = time.perf_counter()
            fn()
            samples[label].append(time.perf_counter() - started)
    median = {label: statistics.median(values) for label, values in samples.items()}
    lines = call().stdout.count("\n")
    for label, value in median.items():
        extra = f"  ({lines} lines)" if label.startswith("through") else ""
        print(f"   {label:44s} {value * 1000:8.1f} ms  {size / value / 1e9:5.2f} GB/s{extra}")
    via = median["through the service (gRPC, confined)"]
    print(f"   ratio service / raw rg: {via / median[variants[0][0]]:.2f}x (target <= 1.2x); "
          f"vs the same argv run raw: {via / median[variants[1][0]]:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300, help="calls per measurement (sections 1 and 2)")
    parser.add_argument("--corpus-mb", type=int, default=300, help="size of the generated search corpus")
    parser.add_argument("--repeats", type=int, default=15, help="searches per measurement (section 3)")
    parser.add_argument("--skip-search", action="store_true", help="skip section 3 (no corpus generated)")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fsagent-bench-") as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        os.chmod(tmp, 0o755)  # the tools' uid (nobody, when run as root) must reach the data
        make_docs(root)
        service = Service(root)
        try:
            print(f"sandbox_tools: uid {os.geteuid()}, {os.cpu_count()} CPUs; service walls: {service.walls()}")
            per_tool(service, root, opts.rounds)
            asyncio.run(layer_costs(root, opts.rounds))
            if not opts.skip_search:
                search(service, root, opts.corpus_mb, opts.repeats)
        finally:
            service.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
