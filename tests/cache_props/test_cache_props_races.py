"""A write racing a read never leaves a stale entry; restart, eviction, replicas, outage."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import REGISTRY

from fsagent.sandbox import tools
from tests.cache_props.conftest import Stack
from tests.cache_props.harness import (
    LoopThread, cache_stats, diff, same_answer, start_cache, start_sandbox,
)

KiB = 1024
MiB = 1024 * 1024


def lookups(result: str) -> float:
    return REGISTRY.get_sample_value("fsagent_sandbox_cache_lookups_total", {"result": result}) or 0.0


def fresh_root(stack: Stack, name: str) -> Path:
    """A directory of its own beneath the shared data root (tests here use relative paths in it)."""
    path = stack.watching.root / name
    path.mkdir()
    return path


def assert_not_stale(stack: Stack, tool: str, **args: Any) -> None:
    now = stack.loop.run(stack.watching.reference(tool, **args))
    for sandbox in stack.sandboxes:
        answer = stack.loop.run(sandbox.execute(tool, **args))
        assert same_answer(answer, now), f"{tool} {args}: {diff(answer, now)}"


def test_write_during_the_run_is_seen_next_time(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic: the file changes after the tool read it and before the result is stored."""
    base = fresh_root(stack, "during")
    (base / "doc.md").write_text("needle one\n")
    (base / "other.md").write_text("nothing\n")
    original = tools.run

    async def run_then_write(ctx, prepared):  # type: ignore[no-untyped-def]
        out = await original(ctx, prepared)
        (base / "doc.md").write_text("needle two\n")  # same size, same second
        return out

    for tool, args in [("grep", {"pattern": "needle", "path": "during"}), ("cat", {"path": "during/doc.md"})]:
        for sandbox in stack.sandboxes:
            (base / "doc.md").write_text("needle one\n")
            monkeypatch.setattr(tools, "run", run_then_write)
            first = stack.loop.run(sandbox.execute(tool, **args))
            monkeypatch.setattr(tools, "run", original)
            assert "one" in first.stdout
            again = stack.loop.run(sandbox.execute(tool, **args))
            assert not again.cached and "two" in again.stdout, (tool, again.stdout)
            assert_not_stale(stack, tool, **args)


@pytest.fixture
def big_tree(stack: Stack) -> Iterator[Path]:
    base = fresh_root(stack, "big")
    for i in range(1500):
        folder = base / f"d{i % 30:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:04d}.md").write_text(f"document {i}\n" + "filler text line\n" * 40)
    (base / "target.md").write_text("marker AAAA\n")
    yield base


def test_a_writer_racing_reads_never_leaves_a_stale_entry(stack: Stack, big_tree: Path) -> None:
    """Real concurrency: a thread rewrites a file (same size) while large greps and cats run."""
    target = big_tree / "target.md"
    stop = threading.Event()

    def writer() -> None:
        flip = False
        while not stop.is_set():
            target.write_text("marker BBBB\n" if flip else "marker AAAA\n")
            flip = not flip

    for round_ in range(6):
        stop.clear()
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            for sandbox in stack.sandboxes:
                for tool, args in [("grep", {"pattern": "marker", "path": "big"}), ("cat", {"path": "big/target.md"})]:
                    stack.loop.run(sandbox.execute(tool, **args))
        finally:
            stop.set()
            thread.join()
        # The writer stopped: whatever was stored during the race, the answer now is the file now.
        for tool, args in [("grep", {"pattern": "marker", "path": "big"}), ("cat", {"path": "big/target.md"})]:
            assert_not_stale(stack, tool, **args)
            assert_not_stale(stack, tool, **args)  # and again, now possibly from the cache
        assert target.read_text() in ("marker AAAA\n", "marker BBBB\n"), round_


def test_restart_keeps_entries(loop_thread: LoopThread, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.md").write_text("persistent answer\n")
    cache = loop_thread.run(start_cache(tmp_path / "store"))
    sandbox = loop_thread.run(start_sandbox(root, cache.address))
    calls = [("cat", {"path": "d/a.md"}), ("grep", {"pattern": "answer", "path": "."}), ("ls", {"path": "d"})]
    try:
        for tool, args in calls:
            assert not loop_thread.run(sandbox.execute(tool, **args)).cached
    finally:
        loop_thread.run(sandbox.stop())
        loop_thread.run(cache.stop())
    # A new cache service on the same directory, and a new sandbox (nothing in its memory).
    cache = loop_thread.run(start_cache(tmp_path / "store"))
    sandbox = loop_thread.run(start_sandbox(root, cache.address))
    try:
        assert loop_thread.run(cache_stats(cache.address)).namespaces[0].entries >= 1
        for tool, args in calls:
            answer = loop_thread.run(sandbox.execute(tool, **args))
            assert answer.cached, tool
            assert same_answer(answer, loop_thread.run(sandbox.reference(tool, **args))), tool
    finally:
        loop_thread.run(sandbox.stop())
        loop_thread.run(cache.stop())


def test_eviction_honours_the_size_limit(loop_thread: LoopThread, tmp_path: Path) -> None:
    limit = 2 * MiB
    root = tmp_path / "data"
    root.mkdir()
    files = 120
    for i in range(files):
        (root / f"f{i:03d}.md").write_text(f"file {i}\n" + ("x" * 99 + "\n") * 400)  # 40 KB each
    cache = loop_thread.run(start_cache(tmp_path / "store", size_limit=limit))
    sandbox = loop_thread.run(start_sandbox(root, cache.address))
    try:
        for i in range(files):  # 4.8 MB of results through a 2 MiB cache
            assert not loop_thread.run(sandbox.execute("cat", path=f"f{i:03d}.md")).error_code
            stats = loop_thread.run(cache_stats(cache.address))
            assert stats.volume_bytes <= limit + cache.store.max_entry_bytes, (i, stats.volume_bytes)
        stats = loop_thread.run(cache_stats(cache.address))
        content = next(ns for ns in stats.namespaces if ns.namespace == "content")
        assert 0 < content.entries < files
    finally:
        loop_thread.run(sandbox.stop())
    # The most recent entries survived, the oldest were evicted (a fresh sandbox asks the service).
    sandbox = loop_thread.run(start_sandbox(root, cache.address))
    try:
        assert loop_thread.run(sandbox.execute("cat", path=f"f{files - 1:03d}.md")).cached
        assert not loop_thread.run(sandbox.execute("cat", path="f000.md")).cached
    finally:
        loop_thread.run(sandbox.stop())
        loop_thread.run(cache.stop())


def test_replicas_storing_at_once_do_not_corrupt_the_store(stack: Stack, loop_thread: LoopThread) -> None:
    base = fresh_root(stack, "replicas")
    for i in range(40):
        (base / f"r{i:02d}.md").write_text(f"replica doc {i}\nneedle {i % 7}\n")
    calls = [("cat", {"path": f"replicas/r{i:02d}.md"}) for i in range(40)]
    calls += [("grep", {"pattern": f"needle {n}", "path": "replicas"}) for n in range(7)]
    calls += [("ls", {"path": "replicas"}), ("tree", {"path": "replicas"})]
    expected = {i: loop_thread.run(stack.watching.reference(tool, **args)) for i, (tool, args) in enumerate(calls)}

    async def storm() -> list[tuple[int, Any]]:
        import asyncio

        jobs = [(i, sandbox.execute(tool, no_cache=True, **args))
                for _ in range(3) for sandbox in stack.sandboxes for i, (tool, args) in enumerate(calls)]
        replies = await asyncio.gather(*(job for _, job in jobs))
        return [(i, reply) for (i, _), reply in zip(jobs, replies)]

    for i, reply in loop_thread.run(storm()):
        assert same_answer(reply, expected[i]), diff(reply, expected[i])
    # Every entry written in the storm reads back intact, from a sandbox with an empty memory.
    other = loop_thread.run(start_sandbox(stack.watching.root, stack.cache.address))
    try:
        for i, (tool, args) in enumerate(calls):
            answer = loop_thread.run(other.execute(tool, **args))
            assert same_answer(answer, expected[i]), diff(answer, expected[i])
            assert answer.cached or tool == "tree", (tool, args)  # tree may be skipped by the cost rule
    finally:
        loop_thread.run(other.stop())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_outage_runs_uncached_counts_errors_and_recovers(loop_thread: LoopThread, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.md").write_text("available\n")
    port = free_port()
    cache = loop_thread.run(start_cache(tmp_path / "store", port=port))
    sandbox = loop_thread.run(start_sandbox(root, cache.address, cache_timeout=0.25))
    try:
        loop_thread.run(sandbox.execute("cat", path="a.md"))
        assert loop_thread.run(sandbox.execute("cat", path="a.md")).cached
        loop_thread.run(cache.stop())
        errors = lookups("error")
        began = time.monotonic()
        for i in range(20):
            (root / "a.md").write_text(f"changed {i}\n")  # so the in-process tier cannot answer
            answer = loop_thread.run(sandbox.execute("cat", path="a.md"))
            assert answer.stdout == f"changed {i}\n" and not answer.cached and not answer.error_code
        assert time.monotonic() - began < 2.0, "calls waited on the dead cache"
        assert lookups("error") >= errors + 20
        # The cache comes back on the same address: the sandbox uses it again by itself.
        cache = loop_thread.run(start_cache(tmp_path / "store", port=port))
        deadline = time.monotonic() + 15
        cached = False
        while time.monotonic() < deadline and not cached:
            loop_thread.run(sandbox.execute("grep", pattern="changed", path="."))
            cached = loop_thread.run(sandbox.execute("grep", pattern="changed", path=".")).cached
            time.sleep(0.2)
        assert cached, "the sandbox did not use the cache again after it came back"
        assert loop_thread.run(cache_stats(cache.address)).namespaces[1].entries >= 1
    finally:
        loop_thread.run(sandbox.stop())
        loop_thread.run(cache.stop())


def test_unresponsive_cache_costs_one_deadline_then_nothing(loop_thread: LoopThread, tmp_path: Path) -> None:
    """A cache that accepts connections and never answers: one short deadline, then no waiting."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.md").write_text("text\n")
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)  # never accepted, never answered
        sandbox = loop_thread.run(start_sandbox(root, f"127.0.0.1:{hole.getsockname()[1]}", cache_timeout=0.2))
        try:
            errors = lookups("error")
            began = time.monotonic()
            first = loop_thread.run(sandbox.execute("cat", path="a.md"))
            first_took = time.monotonic() - began
            assert first.stdout == "text\n" and first_took < 1.5
            began = time.monotonic()
            for _ in range(10):
                assert loop_thread.run(sandbox.execute("cat", path="a.md")).stdout == "text\n"
            assert time.monotonic() - began < 0.5, "each call waited for the deadline"
            assert lookups("error") >= errors + 11
        finally:
            loop_thread.run(sandbox.stop())
