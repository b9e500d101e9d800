"""What a cache fingerprint costs next to the tool it would spare, on trees of 100 to 50,000 files.

For grep, find, tree and ls over the whole tree, through the sandbox's own code (tools.prepare,
tools.run, fingerprint.walk, scope_memo), it prints per tree size:

  walk      a full fingerprint walk (lstat of every file and directory), files settled
  racy      the same walk right after the files were written (racy files are hashed too)
  memo      the fingerprint when inotify proves the scope unchanged (no walk)
  tool      the tool run itself (rg / find processes, tree and ls in-process), output capped
            at FSAGENT_MAX_OUTPUT_BYTES like in the service
  walk/tool and the decision of the sandbox's rule (cache_policy): cache or skip

    uv run python -m benchmarks cache_fingerprint
    uv run python -m benchmarks.cache_fingerprint --sizes 100,1000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

from benchmarks.corpus import make_corpus
from fsagent.common import toolspec
from fsagent.common.settings import Settings
from fsagent.sandbox import cache_policy, fingerprint, tools
from fsagent.sandbox.scope_memo import ScopeMemo

CALLS: list[tuple[str, dict[str, object]]] = [
    ("grep", {"pattern": "needle code"}),
    ("find", {"name": "*-00042.md"}),
    ("tree", {"max_depth": 3}),
    ("ls", {"path": "."}),
]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return samples


async def timed_async(fn: Callable[[], Awaitable[object]], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - began)
    return samples


def age(root: Path, seconds: float = 3600.0) -> None:
    """Move every mtime an hour back: settled files, no racy hashing."""
    old = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (old, old), follow_symlinks=False)
    os.utime(root, (old, old))


def count_entries(root: Path) -> int:
    return sum(len(d) + len(f) for _, d, f in os.walk(root))


async def measure(root: Path, files: int, rounds: int, max_output: int, fresh: bool) -> list[dict[str, object]]:
    ctx = tools.Context.create(root, max_output, 60.0)
    rows: list[dict[str, object]] = []
    prepared = {}
    for tool, args in CALLS:
        prepared[tool] = tools.prepare(ctx, tool, toolspec.parse_arguments(tool, json.dumps(args)))
    racy: dict[str, float] = {}
    if fresh:  # right after writing: every file is racy and hashed
        for tool, p in prepared.items():
            racy[tool] = median_ms(timed(lambda p=p: fingerprint.walk(p.fp_targets), max(1, rounds // 2)))
        age(root)
    memo = ScopeMemo(str(root))
    fingerprinter = fingerprint.Fingerprinter(memo)
    for tool, args in CALLS:
        p = prepared[tool]
        walks = timed(lambda p=p: fingerprint.walk(p.fp_targets), rounds)
        fingerprinter.take(p.fp_targets)  # the walk that builds the memo
        memo_samples = timed(lambda p=p: fingerprinter.take(p.fp_targets), rounds)
        runs = await timed_async(lambda p=p: tools.run(ctx, p), rounds)
        out = await tools.run(ctx, p)
        policy = cache_policy.CachePolicy()
        key = cache_policy.scope_key(tool, p.fp_targets)
        for sample in walks:
            policy.record_walk(key, sample)
        for sample in runs:
            policy.record_run(key, sample)
        rows.append({
            "files": files, "tool": tool, "entries": fingerprint.walk(p.fp_targets).entries,
            "walk_ms": median_ms(walks), "racy_walk_ms": racy.get(tool), "memo_ms": median_ms(memo_samples),
            "tool_ms": median_ms(runs), "ratio": statistics.median(walks) / statistics.median(runs),
            "truncated": out.truncated,
            "decision_walk": "cache" if policy.should_cache(key, False) else "skip",
            "decision_memo": "cache" if policy.should_cache(key, fingerprinter.cheap(p.fp_targets)) else "skip",
        })
    memo.close()
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    header = (f"{'files':>6} {'tool':<5} {'entries':>8} {'walk ms':>9} {'racy ms':>9} {'memo ms':>8} "
              f"{'tool ms':>9} {'walk/tool':>9}  rule (no memo / memo)")
    print(header)
    print("-" * len(header))
    for r in rows:
        racy = f"{r['racy_walk_ms']:9.2f}" if r["racy_walk_ms"] is not None else f"{'-':>9}"
        cut = "*" if r["truncated"] else " "
        print(f"{r['files']:>6} {r['tool']:<5} {r['entries']:>8} {r['walk_ms']:9.2f} {racy} {r['memo_ms']:8.3f} "
              f"{r['tool_ms']:8.2f}{cut} {r['ratio']:9.2f}  {r['decision_walk']} / {r['decision_memo']}")
    print("* output cut at the output cap (the tool stopped early)")
    print(f"rule: cache when walk <= max({cache_policy.MIN_WALK_SECONDS * 1000:g} ms, "
          f"{cache_policy.RATIO:g} x tool), or when a memo answers; else skip (probe every "
          f"{cache_policy.PROBE_EVERY}th call)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000,50000", help="comma-separated file counts")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    max_output = Settings(_env_file=None).max_output_bytes  # type: ignore[call-arg]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="fsagent-fp-bench-") as tmp:
        for files in sizes:
            began = time.perf_counter()
            root = make_corpus(Path(tmp) / f"tree-{files}", files)
            print(f"  tree of {files} files ({count_entries(root)} entries) written in "
                  f"{time.perf_counter() - began:.1f}s", flush=True)
            rows += asyncio.run(measure(root, files, args.rounds, max_output, fresh=True))
    print(f"\nfingerprint cost vs tool cost (median of {args.rounds}; output cap {max_output} bytes)")
    print_table(rows)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
