"""The cache path over real gRPC against a fake Cache servicer that honours the fingerprint rule."""

from __future__ import annotations

import os
import time

from prometheus_client import REGISTRY

from fsagent.sandbox import fingerprint, tools
from tests.sandbox.conftest import Sandbox, free_port
from tests.sandbox.helpers import FakeCache


def lookups(result: str) -> float:
    return REGISTRY.get_sample_value("fsagent_sandbox_cache_lookups_total", {"result": result}) or 0.0


async def test_second_identical_call_is_cached(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(with_cache=True)
    cache: FakeCache = sb.cache  # type: ignore[assignment]
    first = await sb.execute("cat", path="policies/password.md")
    assert not first.cached and first.error_code == ""
    hits = lookups("hit")
    second = await sb.execute("cat", path="policies/password.md")
    assert second.cached and second.stdout == first.stdout and second.command == first.command
    assert lookups("hit") == hits + 1
    # Equivalent spellings of the same call share one entry (normalised relative paths).
    third = await sb.execute("cat", path="/policies/../policies/password.md")
    assert third.cached
    assert cache.puts == 1
    namespace, _ = next(iter(cache.entries))
    assert namespace == "content"
    _, _, scopes = next(iter(cache.entries.values()))
    assert scopes == ["policies/password.md"]
    # Search tools go to the search namespace with their scope.
    await sb.execute("grep", pattern="password", path="policies")
    assert ("search", "policies") in {(ns, s) for (ns, _), (_, _, sc) in cache.entries.items() for s in sc}
    assert (await sb.execute("grep", pattern="password", path="policies")).cached


async def test_a_changed_file_is_never_served_stale(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(with_cache=True)
    path = sb.root / "policies" / "password.md"
    first = await sb.execute("cat", path="policies/password.md")
    assert (await sb.execute("cat", path="policies/password.md")).cached
    # Same size, written within the same second: only the content hash can tell.
    text = path.read_text()
    changed = text.replace("every 90 days", "every 60 days")
    assert len(changed) == len(text)
    st = path.stat()
    with open(path, "r+") as fh:  # in place: same inode
        fh.write(changed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    again = await sb.execute("cat", path="policies/password.md")
    assert not again.cached and "every 60 days" in again.stdout and again.stdout != first.stdout
    assert (await sb.execute("cat", path="policies/password.md")).cached

    # A search scope sees a new file, a removed file and a changed file.
    grep1 = await sb.execute("grep", pattern="secret-word", path=".")
    assert grep1.stdout == ""
    assert (await sb.execute("grep", pattern="secret-word")).cached
    (sb.root / "notes" / "new.md").write_text("the secret-word is here\n")
    grep2 = await sb.execute("grep", pattern="secret-word")
    assert not grep2.cached and grep2.stdout == "notes/new.md:1:the secret-word is here\n"
    (sb.root / "notes" / "new.md").write_text("the secret-word is gone\n")
    grep3 = await sb.execute("grep", pattern="secret-word")
    assert not grep3.cached and "gone" in grep3.stdout
    (sb.root / "notes" / "new.md").unlink()
    grep4 = await sb.execute("grep", pattern="secret-word")
    assert not grep4.cached and grep4.stdout == ""
    # ls and tree see a new entry too.
    ls1 = await sb.execute("ls", path="notes")
    assert (await sb.execute("ls", path="notes")).cached
    (sb.root / "notes" / "added.txt").write_text("x")
    ls2 = await sb.execute("ls", path="notes")
    assert not ls2.cached and "added.txt" in ls2.stdout and ls2.stdout != ls1.stdout


async def test_write_during_execution_leaves_no_stale_entry(make_sandbox, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The fingerprint is taken before the run: a write racing the run can't poison the cache."""
    sb: Sandbox = await make_sandbox(with_cache=True)
    path = sb.root / "policies" / "expense.md"
    original_run = tools.run

    async def run_then_write(ctx, prepared):  # type: ignore[no-untyped-def]
        out = await original_run(ctx, prepared)
        if prepared.tool == "cat":
            path.write_text("# Expense policy\n\nChanged while the tool ran.\n")
        return out

    monkeypatch.setattr(tools, "run", run_then_write)
    old = await sb.execute("cat", path="policies/expense.md")
    assert "Meals up to 40 EUR" in old.stdout
    monkeypatch.setattr(tools, "run", original_run)
    new = await sb.execute("cat", path="policies/expense.md")
    assert not new.cached and "Changed while the tool ran." in new.stdout


async def test_no_cache_flag_and_errors(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(with_cache=True)
    cache: FakeCache = sb.cache  # type: ignore[assignment]
    await sb.execute("head", path="README.md")
    skipped = lookups("skipped")
    fresh = await sb.execute("head", path="README.md", no_cache=True)
    assert not fresh.cached and lookups("skipped") == skipped + 1
    puts = cache.puts
    for tool, args in [("cat", {"path": "missing.md"}), ("cat", {"path": "../x"}), ("grep", {"pattern": "("})]:
        resp = await sb.execute(tool, **args)
        assert resp.error_code
        assert not (await sb.execute(tool, **args)).cached
    assert cache.puts == puts


async def test_cache_down_still_succeeds(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(cache_addr=f"127.0.0.1:{free_port()}", cache_timeout=0.2)
    errors = lookups("error")
    started = time.perf_counter()
    for _ in range(2):
        resp = await sb.execute("cat", path="README.md")
        assert resp.error_code == "" and resp.stdout.startswith("# Sample") and not resp.cached
    assert time.perf_counter() - started < 2
    assert lookups("error") >= errors + 2


def test_fingerprint_rules(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "a.txt"
    f.write_text("hello")
    target = [tools.FpTarget("a.txt", str(f), "file")]
    one = fingerprint.compute(target)
    assert one == fingerprint.compute(target) and len(one) == 32
    st = f.stat()
    f.write_text("HELLO")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint.compute(target) != one
    # A scope covers directories and files at any depth, without following symlinks.
    (tmp_path / "d" / "e").mkdir(parents=True)
    scope = [tools.FpTarget(".", str(tmp_path), "scope", None)]
    s1 = fingerprint.compute(scope)
    (tmp_path / "d" / "e" / "deep.txt").write_text("x")
    s2 = fingerprint.compute(scope)
    assert s1 != s2
    # Depth-limited scopes (ls: 1) ignore what the tool can't see...
    shallow = [tools.FpTarget(".", str(tmp_path), "scope", 1)]
    h1 = fingerprint.compute(shallow)
    (tmp_path / "d" / "e" / "deeper.txt").write_text("y")
    assert fingerprint.compute(shallow) == h1
    # ... but not a change of a direct child.
    (tmp_path / "b.txt").write_text("z")
    assert fingerprint.compute(shallow) != h1
    # Racy files are hashed even in a scope: content change with equal stat tuple is seen.
    now = time.time_ns()
    r1 = fingerprint.compute(scope, now_ns=now)
    st = f.stat()
    f.write_text("hELLO")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint.compute(scope, now_ns=now) != r1


def test_which_files_are_hashed(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    hashed: list[str] = []
    real = fingerprint._hash_file
    monkeypatch.setattr(fingerprint, "_hash_file", lambda p: hashed.append(os.path.basename(p)) or real(p))
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text("x")
    big.write_bytes(b"y" * (fingerprint.SMALL_FILE_BYTES + 1))
    old = time.time() - 3600
    for p in (small, big):
        os.utime(p, (old, old))
    now = time.time_ns()
    # A single file: hashed when small (cheap), not when big and settled.
    fingerprint.compute([tools.FpTarget("small.txt", str(small), "file")], now_ns=now)
    fingerprint.compute([tools.FpTarget("big.txt", str(big), "file")], now_ns=now)
    assert hashed == ["small.txt"]
    hashed.clear()
    # In a scope only racy files are hashed (mtime within 2 s of now, or in the future).
    fingerprint.compute([tools.FpTarget(".", str(tmp_path), "scope", None)], now_ns=now)
    assert hashed == []
    os.utime(big, ns=(now - 1_000_000_000, now - 1_000_000_000))
    os.utime(small, ns=(now + 10_000_000_000, now + 10_000_000_000))
    fingerprint.compute([tools.FpTarget(".", str(tmp_path), "scope", None)], now_ns=now)
    assert sorted(hashed) == ["big.txt", "small.txt"]


async def test_against_the_real_cache_service(make_sandbox, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same flow against fsagent.cache (diskcache behind gRPC): hit, not stale, invalidation."""
    import pytest

    server_mod = pytest.importorskip("fsagent.cache.server")
    from fsagent.cache.store import CacheStore
    from fsagent.common import grpcutil
    from fsagent.v1 import sandbox_pb2 as pb

    store = CacheStore(tmp_path / "real-cache", size_limit=50 * 1024 * 1024)
    server = grpcutil.server()
    servicer = server_mod.add_to_server(server, store)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        sb: Sandbox = await make_sandbox(cache_addr=f"127.0.0.1:{port}", cache_timeout=2)
        for tool, args in [
            ("cat", {"path": "policies/password.md"}),
            ("grep", {"pattern": "password"}),
            ("wc", {"paths": ["README.md", "notes/todo.txt"]}),
            ("tree", {}),
        ]:
            first = await sb.execute(tool, **args)
            second = await sb.execute(tool, **args)
            assert not first.cached and second.cached and second.stdout == first.stdout, tool
        (sb.root / "policies" / "password.md").write_text("# Password policy\n\nChanged.\n")
        assert "Changed." in (await sb.execute("cat", path="policies/password.md")).stdout
        assert "policies/password.md:1:# Password policy" in (await sb.execute("grep", pattern="assword")).stdout
        # A document write through the API invalidates by prefix (root-scoped entries too).
        await sb.execute("tree")  # the change above made the stored tree stale: store it anew
        assert (await sb.execute("tree")).cached
        await sb.stub.WriteDocument(pb.WriteDocumentRequest(path="notes/n.md", content="x", mode=pb.WRITE_MODE_CREATE))
        stats = await sb.execute("tree")
        assert not stats.cached and "n.md" in stats.stdout
    finally:
        await server.stop(None)
        await servicer.close()
