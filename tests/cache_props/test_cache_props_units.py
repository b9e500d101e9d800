"""The sandbox-side pieces of the cache on their own: scope memo, cost rule, in-process tier."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fsagent.sandbox import cache_policy, fingerprint, scope_memo
from fsagent.sandbox.cache_client import LocalTier, cache_key
from fsagent.sandbox.fingerprint import Fingerprinter
from fsagent.sandbox.scope_memo import ScopeMemo
from fsagent.sandbox.tools import FpTarget


def tree(tmp_path: Path) -> tuple[Path, list[FpTarget]]:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("hello")
    (root / "g.txt").write_text("world")
    return root, [FpTarget(".", str(root), "scope", None)]


def test_memo_answers_until_anything_beneath_changes(tmp_path: Path) -> None:
    root, scope = tree(tmp_path)
    fp = Fingerprinter(ScopeMemo(str(root)))
    assert fp.memo is not None, fp
    first = fp.take(scope)
    assert first.walked and not fp.take(scope).walked  # the second comes from the memo
    assert fp.cheap(scope)
    changes = [
        lambda: (root / "a" / "b" / "f.txt").write_text("HELLO"),                 # content, same size
        lambda: os.utime(root / "g.txt", (1, 1)),                                  # attributes only
        lambda: (root / "a" / "b" / "new").mkdir(),                                 # a new directory
        lambda: (root / "a" / "b" / "new" / "deep.txt").write_text("x"),            # inside the new one
        lambda: os.symlink("g.txt", root / "a" / "link"),                           # a symlink
        lambda: os.rename(root / "a" / "link", root / "a" / "link2"),               # a rename
        lambda: (root / "a" / "link2").unlink(),                                    # a removal
        lambda: os.rename(root / "a" / "b", root / "c"),                            # a directory moved
        lambda: (root / "c" / "f.txt").write_text("after the move"),                # inside it, after
    ]
    previous = fp.take(scope).fingerprint
    for change in changes:
        change()
        taken = fp.take(scope)
        assert taken.walked, "a change must force a walk"
        assert taken.fingerprint == fingerprint.compute(scope) != previous
        assert not fp.take(scope).walked  # quiet again: the memo is back
        previous = taken.fingerprint


def test_memo_does_not_vouch_for_hard_links_or_other_filesystems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, scope = tree(tmp_path)
    os.link(root / "g.txt", tmp_path / "outside-link")  # written through this name: no event on root
    fp = Fingerprinter(ScopeMemo(str(root)))
    fp.take(scope)
    assert fp.take(scope).walked
    monkeypatch.setattr(scope_memo, "filesystem_type", lambda path: "nfs4")
    nfs = ScopeMemo(str(root))
    assert not nfs.enabled and "nfs4" in nfs.reason
    assert Fingerprinter(nfs).memo is None


def test_memo_expires_and_checks_the_scope_root(tmp_path: Path) -> None:
    root, scope = tree(tmp_path)
    memo = ScopeMemo(str(root), max_age=0.05)
    fp = Fingerprinter(memo)
    fp.take(scope)
    assert not fp.take(scope).walked
    time.sleep(0.1)
    assert fp.take(scope).walked
    # A depth-0 or file target never uses the memo (its fingerprint is one lstat).
    assert scope_memo.memo_key(FpTarget("g.txt", str(root / "g.txt"), "file")) is None
    assert scope_memo.memo_key(FpTarget(".", str(root), "scope", 0)) is None


def test_a_change_during_the_walk_keeps_it_out_of_the_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, scope = tree(tmp_path)
    fp = Fingerprinter(ScopeMemo(str(root)))
    real_walk = fingerprint.walk

    def walk_then_write(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_walk(*args, **kwargs)
        (root / "a" / "b" / "f.txt").write_text("hellO")
        return result

    monkeypatch.setattr(fingerprint, "walk", walk_then_write)
    during = fp.take(scope)
    monkeypatch.setattr(fingerprint, "walk", real_walk)
    after = fp.take(scope)
    assert after.walked and after.fingerprint != during.fingerprint


def test_unstable_when_a_large_racy_file_cannot_be_hashed_cheaply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, scope = tree(tmp_path)
    monkeypatch.setattr(fingerprint, "MAX_HASH_BYTES", 1024)
    (root / "a" / "big.log").write_bytes(b"x" * 4096)  # just written: racy, and over the limit
    assert Fingerprinter().take(scope).fingerprint is None
    old = time.time() - 3600
    os.utime(root / "a" / "big.log", (old, old))  # settled: stat is enough again
    assert Fingerprinter().take(scope).fingerprint is not None


def test_cost_rule() -> None:
    policy = cache_policy.CachePolicy(ratio=0.5, probe_every=4, min_walk=0.001)
    key = ("grep", (("/data", None),))
    assert cache_policy.scope_key("cat", [FpTarget("a", "/data/a", "file")]) is None
    assert cache_policy.scope_key("wc", [FpTarget("d", "/data/d", "scope", 0)]) is None
    assert policy.should_cache(key, False)  # nothing measured yet: cache and learn
    policy.record_walk(key, 0.050)
    policy.record_run(key, 0.020)
    assert policy.should_cache(key, False)  # one sample each is not enough to give up
    policy.record_walk(key, 0.050)
    policy.record_run(key, 0.020)
    decisions = [policy.should_cache(key, False) for _ in range(8)]
    assert decisions == [False, False, False, True] * 2  # skipped, but every 4th call probes
    assert policy.should_cache(key, True)  # a memo makes the fingerprint free
    cheap = ("tree", (("/small", 3),))
    for _ in range(2):
        policy.record_walk(cheap, 0.0005)  # under a millisecond: always worth it
        policy.record_run(cheap, 0.0002)
    assert policy.should_cache(cheap, False)
    paying = ("grep", (("/x", None),))
    for _ in range(2):
        policy.record_walk(paying, 0.004)
        policy.record_run(paying, 0.020)
    assert policy.should_cache(paying, False)


def test_local_tier() -> None:
    tier = LocalTier(max_bytes=100, max_entry_bytes=60, max_age=60)
    tier.put("content", "k1", b"a" * 40, b"fp1", ["docs/a.md"], ttl=0)
    assert tier.get("content", "k1", b"fp1") == b"a" * 40
    assert tier.get("content", "k1", b"other") is None  # another fingerprint: dropped
    assert tier.get("content", "k1", b"fp1") is None
    tier.put("content", "k1", b"a" * 40, b"fp1", ["docs/a.md"], ttl=0)
    tier.put("search", "k2", b"b" * 40, b"fp2", ["docs"], ttl=0)
    tier.put("content", "k3", b"c" * 40, b"fp3", ["other/c.md"], ttl=0)  # 120 > 100: k1 goes
    assert tier.get("content", "k1", b"fp1") is None and tier.bytes <= 100
    tier.put("content", "big", b"d" * 61, b"fp", ["x"], ttl=0)  # over the entry limit: not kept
    assert tier.get("content", "big", b"fp") is None
    assert tier.invalidate("docs/new.md") == 1  # the "docs" scope contains it
    assert tier.get("search", "k2", b"fp2") is None and tier.get("content", "k3", b"fp3") == b"c" * 40
    short = LocalTier(max_age=60)
    short.put("content", "k", b"v", b"fp", ["a"], ttl=0.01)  # the namespace TTL is shorter
    time.sleep(0.02)
    assert short.get("content", "k", b"fp") is None


def test_keys_are_full_sha256_over_the_normalised_call() -> None:
    one = cache_key("grep", {"pattern": "a", "path": "docs"}, max_output_bytes=1, grep="rg")
    assert len(one) == 64 and int(one, 16) >= 0
    assert one == cache_key("grep", {"path": "docs", "pattern": "a"}, grep="rg", max_output_bytes=1)
    assert one != cache_key("grep", {"pattern": "a", "path": "docs"}, max_output_bytes=2, grep="rg")
    assert one != cache_key("grep", {"pattern": "a", "path": "docs"}, max_output_bytes=1, grep="grep")
