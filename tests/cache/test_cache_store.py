"""CacheStore on its own: encoding, scope rules, eviction, persistence, processes sharing a directory."""

from __future__ import annotations

import json
import multiprocessing
import os
import runpy
import time
from pathlib import Path
from typing import Callable

import pytest

from fsagent.cache.store import (
    HIT,
    MISS,
    STALE,
    CacheStore,
    InvalidArgument,
    decode_entry,
    encode_entry,
    normalize_path,
    scope_matches,
)

StoreFactory = Callable[..., CacheStore]


def test_entry_round_trip() -> None:
    data = encode_entry(b"\x00fp\xff", ["a/b.md", "c"], b"value\x00bytes")
    entry = decode_entry(data)
    assert entry.fingerprint == b"\x00fp\xff"
    assert entry.scopes == ("a/b.md", "c")
    assert entry.value == b"value\x00bytes"
    empty = decode_entry(encode_entry(b"", [], b""))
    assert (empty.fingerprint, empty.scopes, empty.value) == (b"", (), b"")
    with pytest.raises(ValueError):
        decode_entry(b"\x80\x04pickled")


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("", "."), (".", "."), ("./", "."), ("docs/", "docs"), ("./docs//a.md", "docs/a.md"), ("a/./b", "a/b")],
)
def test_normalize_path(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize("bad", ["/etc/passwd", "../secret", "a/../../b", "a\0b", "x" * 5000])
def test_normalize_path_refuses(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        normalize_path(bad)


@pytest.mark.parametrize(
    ("scope", "prefix", "expected"),
    [
        ("docs/a.md", "docs/a.md", True),  # the same file
        ("docs/a.md", "docs", True),  # the entry read a file beneath the changed directory
        ("docs", "docs/a.md", True),  # a search over docs/ is invalid when docs/a.md changes
        (".", "docs/a.md", True),  # a search over the root sees everything
        ("docs/a.md", ".", True),  # invalidate everything
        ("docsx/a.md", "docs", False),  # sibling sharing a string prefix
        ("docs", "docsx/a.md", False),
        ("docs/sub", "docs/a.md", False),  # a different branch
        ("other/b.md", "docs", False),
    ],
)
def test_scope_matches(scope: str, prefix: str, expected: bool) -> None:
    assert scope_matches(scope, prefix) is expected


def test_hit_miss_stale(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.get("content", "k", b"fp1").result == MISS
    assert store.put("content", "k", b"hello", b"fp1", ["a.md"])
    got = store.get("content", "k", b"fp1")
    assert (got.result, got.value) == (HIT, b"hello")
    assert store.get("content", "k", b"fp2").result == STALE
    assert store.get("content", "k", b"fp1").result == MISS  # the stale entry was dropped
    # Namespaces do not share keys.
    store.put("search", "k", b"in search", b"fp1")
    assert store.get("content", "k", b"fp1").result == MISS
    assert store.get("search", "k", b"fp1").value == b"in search"


def test_large_values_live_in_files_and_still_invalidate(make_store: StoreFactory) -> None:
    store = make_store()
    big = os.urandom(100_000)  # above diskcache's 32 KiB threshold: stored as a file
    many_scopes = [f"dir/file-{i:04d}.md" for i in range(400)]  # head larger than the first read
    store.put("search", "big", big, b"fp", many_scopes)
    store.put("content", "big-inline", b"x" * 1000, b"fp", many_scopes)
    assert store.get("search", "big", b"fp").value == big
    assert store.invalidate("dir/file-0399.md") == 2
    assert store.get("search", "big", b"fp").result == MISS


def test_lru_eviction_keeps_volume_under_limit(make_store: StoreFactory) -> None:
    limit = 200 * 1024
    store = make_store(size_limit=limit)
    store.put("content", "hot", b"h" * 10_000, b"fp")
    for i in range(150):
        store.put("content", f"k{i}", os.urandom(10_000), b"fp")
        assert store.get("content", "hot", b"fp").result == HIT  # keeps "hot" recently used
        assert store.volume() <= limit, f"volume {store.volume()} above the limit after {i + 1} puts"
    assert store.get("content", "k0", b"fp").result == MISS  # least recently used: evicted
    assert store.get("content", "k149", b"fp").result == HIT  # newest: kept
    stats = store.stats()
    assert stats.volume <= limit
    assert 2 <= stats.by_namespace()["content"].entries < 20


def test_entry_too_large_for_the_limit_is_not_stored(make_store: StoreFactory) -> None:
    store = make_store(size_limit=200 * 1024)
    assert store.put("content", "huge", b"x" * 100_000, b"fp") is False
    assert store.get("content", "huge", b"fp").result == MISS


def test_restart_keeps_entries(make_store: StoreFactory, cache_dir: Path) -> None:
    first = make_store()
    first.put("content", "k", b"persisted", b"fp", ["a.md"])
    first.append_session("s1", ['{"role": "user", "content": "hi"}'])
    first.close()
    second = make_store(cache_dir)
    assert second.get("content", "k", b"fp").value == b"persisted"
    session = second.get_session("s1")
    assert session is not None and session.messages == ['{"role": "user", "content": "hi"}']


def test_session_append_trim_and_ttl(make_store: StoreFactory) -> None:
    store = make_store()
    msgs = [json.dumps({"role": "user", "content": f"m{i}"}) for i in range(6)]
    first = store.append_session("s", msgs[:3])
    second = store.append_session("s", msgs[3:], max_messages=4)
    assert second.messages == msgs[2:]
    assert second.created == first.created and second.updated >= first.updated
    with pytest.raises(InvalidArgument):
        store.append_session("s", [], max_messages=-1)
    with pytest.raises(InvalidArgument):
        store.get_session("not a valid id")
    store.append_session("short", msgs[:1], ttl=0.2)
    time.sleep(0.35)
    assert store.get_session("short") is None


def test_several_processes_share_one_directory(make_store: StoreFactory, cache_dir: Path) -> None:
    """Processes race on one directory; afterwards every entry is readable and consistent."""
    workers, count, appends = 4, 60, 25
    make_store().close()  # create the database up front, as the service would
    ctx = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
    procs = [
        ctx.Process(target=runpy.run_path, args=(str(Path(__file__).with_name("mp_worker.py")),),
                    kwargs={"init_globals": {"DIRECTORY": str(cache_dir), "WORKER": w, "COUNT": count,
                                             "SESSION_APPENDS": appends},
                            "run_name": "__mp_worker__"})
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
        assert p.exitcode == 0, f"writer process failed with exit code {p.exitcode}"

    store = make_store(cache_dir)
    for w in range(workers):
        for j in range(count):
            got = store.get("content", f"own-{w}-{j}", f"fp-{w}-{j}".encode())
            assert got.result == HIT and got.value == f"value-{w}-{j}".encode() * 50
    for j in range(count):
        # Every process wrote this key; one whole value won, never a mix of two.
        got = store.get("search", f"shared-{j}", b"fp-shared")
        assert got.result == HIT
        assert got.value in {f"shared-from-{w}".encode() * 50 for w in range(workers)}
    session = store.get_session("shared-session")
    assert session is not None
    # Appends are atomic read-modify-writes: not one message lost to a race.
    assert len(session.messages) == workers * appends
    for w in range(workers):
        mine = [json.loads(m)["content"] for m in session.messages if json.loads(m)["content"].startswith(f"w{w} ")]
        assert mine == [f"w{w} m{j}" for j in range(appends)]  # each writer's order is kept
    stats = store.stats().by_namespace()
    assert stats["content"].entries == workers * count
    assert stats["search"].entries == count
    assert stats["sessions"].entries == 1
