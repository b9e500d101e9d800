"""A damaged store is repaired: real `python -m fsagent.cache` processes write a real store over gRPC,
then its files are damaged on disk the ways disks and people damage them (a header overwritten, the
schema page wiped, pages in the middle overwritten, the file truncated, the write-ahead log turned to
garbage), before a start and while the service runs.

What a user of the cache sees, checked every time: the service starts (or keeps serving: every call
answers OK, or UNAVAILABLE with a message while the store is being replaced, never INTERNAL), the
damaged files are kept under quarantine/<UTC timestamp>/ (at start byte for byte, while serving the
very same files, moved), the repair is counted and logged once as one JSON line with no traceback,
and every session SQLite itself can still read comes back, unchanged (and more: sessions on pages
SQLite cannot reach, a destroyed header for one, are read from the pages). A second restart finds a
healthy store: no second repair.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
import pytest

from fsagent.common import grpcutil
from fsagent.v1 import cache_pb2 as pb
from fsagent.v1 import cache_pb2_grpc
from tests.cache.processes import CacheProcess

pytestmark = pytest.mark.timeout(180)

PAGE = 4096
REPAIRED = "cache store damaged: quarantined it and serving a fresh store"
REASONS = ("not_a_database", "malformed", "damaged_wal")


def message(sid: str, turn: int, size: int) -> str:
    return json.dumps({"role": "user" if turn % 2 == 0 else "assistant",
                       "content": f"{sid} turn {turn} " + "x" * size})


# 24 sessions of 3 turns; s00 and s01 are large (over 32 KiB: diskcache keeps them in value files).
SESSIONS: dict[str, list[str]] = {
    f"s{i:02d}": [message(f"s{i:02d}", turn, 20_000 if i < 2 else 40 + 30 * i) for turn in range(3)]
    for i in range(24)
}
CONTENT = {f"cat:doc{i}.md": os.urandom(1000 + 37 * i if i % 25 else 40_000) for i in range(200)}


async def fill(address: str) -> None:
    """Sessions first (their rows on the first pages), then tool results, as a day of use would."""
    async with grpcutil.channel(address) as channel:
        stub = cache_pb2_grpc.CacheStub(channel)
        for turn in range(3):
            for sid, messages in SESSIONS.items():
                await stub.AppendSession(pb.AppendSessionRequest(session_id=sid, messages_json=[messages[turn]]))
        for key, value in CONTENT.items():
            assert (await stub.Put(pb.CachePutRequest(namespace="content", key=key, value=value, fingerprint=b"fp",
                                                      scopes=[key.split(":", 1)[1]]))).stored


async def sessions_served(address: str) -> dict[str, list[str]]:
    async with grpcutil.channel(address) as channel:
        stub = cache_pb2_grpc.CacheStub(channel)
        found = {}
        for sid in SESSIONS:
            record = await stub.GetSession(pb.GetSessionRequest(session_id=sid))
            if record.exists:
                found[sid] = list(record.messages_json)
        return found


async def still_works(address: str) -> None:
    """The repaired service stores and answers tool results and sessions."""
    async with grpcutil.channel(address) as channel:
        stub = cache_pb2_grpc.CacheStub(channel)
        assert (await stub.Put(pb.CachePutRequest(namespace="search", key="grep:after", value=b"after",
                                                  fingerprint=b"f", scopes=["."]))).stored
        got = await stub.Get(pb.CacheGetRequest(namespace="search", key="grep:after", fingerprint=b"f"))
        assert (got.result, got.value) == (pb.CacheGetResponse.HIT, b"after")
        record = await stub.AppendSession(pb.AppendSessionRequest(session_id="after-repair",
                                                                  messages_json=['{"role": "user"}']))
        assert record.exists and list(record.messages_json) == ['{"role": "user"}']
        stats = await stub.Stats(pb.StatsRequest())
        assert {ns.namespace: ns.entries for ns in stats.namespaces}["search"] == 1


# --- what SQLite alone can read: the reference the salvage must match or beat ------------------------


def sqlite_readable(store: Path, scratch: Path, *, with_wal: bool = True) -> dict[str, list[str]]:
    """Sessions plain SQLite reads from a copy of the damaged files (value files from `store`): each
    one by its key (the index), then whatever a table scan returns before it meets a damaged page."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name in ("cache.db", "cache.db-wal") if with_wal else ("cache.db",):
        if (store / name).exists():
            shutil.copyfile(store / name, scratch / name)
    found: dict[str, list[str]] = {}

    def take(key: object, mode: object, filename: object, value: object) -> None:
        sid = str(key).removeprefix("sessions:")
        try:
            data = value if mode == 1 else (store / str(filename)).read_bytes()
            body = json.loads(data)  # type: ignore[arg-type]
        except (OSError, ValueError, TypeError):
            return
        if sid in SESSIONS and body.get("messages") == SESSIONS[sid]:
            found[sid] = SESSIONS[sid]

    try:
        con = sqlite3.connect(scratch / "cache.db")
    except sqlite3.Error:
        return found
    try:
        for sid in SESSIONS:
            try:
                row = con.execute("SELECT key, mode, filename, value FROM Cache WHERE key = ? AND raw = 1",
                                  (f"sessions:{sid}",)).fetchone()
            except sqlite3.Error:
                continue
            if row is not None:
                take(*row)
        try:
            for row in con.execute("SELECT key, mode, filename, value FROM Cache NOT INDEXED WHERE tag = 'sessions'"):
                take(*row)
        except sqlite3.Error:
            pass
    finally:
        con.close()
    return found


# --- damage ------------------------------------------------------------------------------------------


def checkpoint(store: Path) -> None:
    """Everything into cache.db (what SQLite does by itself every 1000 pages and at the last close)."""
    con = sqlite3.connect(store / "cache.db", timeout=10)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        con.close()


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def damage_header(store: Path) -> None:
    overwrite(store / "cache.db", 0, os.urandom(100))


def damage_schema_page(store: Path) -> None:
    overwrite(store / "cache.db", 0, b"\0" * PAGE)


def damage_middle(store: Path) -> None:
    pages = (store / "cache.db").stat().st_size // PAGE
    overwrite(store / "cache.db", (pages // 2) * PAGE, os.urandom(4 * PAGE))


def damage_truncate(store: Path) -> None:
    pages = (store / "cache.db").stat().st_size // PAGE
    os.truncate(store / "cache.db", int(pages * 0.55) * PAGE)


def wal_frames_pending(store: Path) -> int:
    """Frames of the write-ahead log not yet checkpointed into cache.db, from SQLite's index (-shm):
    mxFrame of the index header minus nBackfill of the checkpoint info that follows its two copies."""
    head = (store / "cache.db-shm").read_bytes()[:100]
    return struct.unpack_from("=I", head, 16)[0] - struct.unpack_from("=I", head, 96)[0]


def damage_wal(store: Path) -> None:
    size = (store / "cache.db-wal").stat().st_size
    assert size > PAGE, "the write-ahead log holds transactions"
    overwrite(store / "cache.db-wal", 0, os.urandom(size))


@dataclass(frozen=True)
class Damage:
    name: str
    apply: Callable[[Path], None]
    wal: bool = False  # the damage is to the write-ahead log: the service must not checkpoint first


DAMAGES = [
    Damage("header", damage_header),
    Damage("schema_page", damage_schema_page),
    Damage("middle_pages", damage_middle),
    Damage("truncated", damage_truncate),
    Damage("garbage_wal", damage_wal, wal=True),
]


# --- checks ------------------------------------------------------------------------------------------


def files_of(store: Path) -> dict[str, str]:
    """sha256 of every file diskcache keeps in a store directory, by relative path.

    Not the -shm (SQLite's index of the WAL, rebuilt by any reader) nor an empty -wal (a read-only
    connection creates both when they are missing): neither holds data.
    """
    out = {}
    for path in sorted(store.rglob("*")):
        rel = path.relative_to(store).as_posix()
        if not path.is_file() or rel.startswith(("quarantine/", "store-")) or rel == "store.lock" \
                or rel.endswith("-shm") or (rel.endswith("-wal") and path.stat().st_size == 0):
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def quarantined(cache_dir: Path) -> list[Path]:
    root = cache_dir / "quarantine"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def repair_lines(proc: CacheProcess) -> list[dict[str, object]]:
    text = proc.log_text()
    assert "Traceback" not in text, text
    lines = proc.log_lines()
    assert not [line for line in lines if "exc" in line], text
    return [line for line in lines if line["msg"] == REPAIRED]


async def wait_repaired(proc: CacheProcess, timeout: float = 20.0) -> float:
    """Seconds until the process had repaired its store."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while sum(proc.metric("fsagent_cache_store_repairs_total", reason=r) or 0 for r in REASONS) < 1:
        assert loop.time() - started < timeout, proc.log_text()
        await asyncio.sleep(0.02)
    return loop.time() - started


def check_repaired_once(proc: CacheProcess, cache_dir: Path, reasons: tuple[str, ...], recovered: int) -> Path:
    """One quarantined store, one log line saying where, one count; returns the quarantine directory."""
    (kept,) = quarantined(cache_dir)
    (line,) = repair_lines(proc)
    assert line["level"] == "error" and line["quarantine"] == str(kept), line
    # The one line: no other warning or error about it, from the store, the servicer or gRPC.
    assert [x for x in proc.log_lines() if x["level"] not in ("debug", "info")] == [line], proc.log_text()
    assert line["reason"] in reasons and line["sessions_recovered"] == recovered, line
    counts = {reason: proc.metric("fsagent_cache_store_repairs_total", reason=reason) for reason in REASONS}
    assert sum(counts.values()) == 1 and counts[str(line["reason"])] == 1, counts
    assert proc.metric("fsagent_cache_sessions_recovered_total") == recovered
    assert proc.metric("fsagent_cache_quarantined_stores") == 1
    assert (proc.metric("fsagent_cache_quarantine_bytes") or 0) > 100_000
    report = json.loads((kept / "repair.json").read_text())
    assert report["reason"] == line["reason"] and report["sessions_recovered"] == recovered
    assert Path(str(report["fresh_store"])).parent == cache_dir.resolve()
    return kept


async def restart_finds_a_healthy_store(cache_dir: Path, tmp_path: Path, expected: dict[str, list[str]]) -> None:
    again = CacheProcess(cache_dir, tmp_path / "again.log")
    try:
        await again.wait_serving()
        assert await sessions_served(again.address) == expected
        assert not repair_lines(again)
        assert sum(again.metric("fsagent_cache_store_repairs_total", reason=r) or 0 for r in REASONS) == 0
        assert again.metric("fsagent_cache_quarantined_stores") == 1  # still kept, never deleted
        assert again.stop() == 0
    finally:
        again.kill()
    assert len(quarantined(cache_dir)) == 1


# --- before a start ----------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.name for d in DAMAGES])
async def test_a_store_damaged_while_stopped_is_repaired_at_start(damage: Damage, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = CacheProcess(cache_dir, tmp_path / "first.log")
    try:
        await first.wait_serving()
        await fill(first.address)
        assert await sessions_served(first.address) == SESSIONS
        if damage.wal:
            first.kill()  # a crash: the last transactions are still in the write-ahead log
        else:
            assert first.stop() == 0
    finally:
        first.kill()
    if not damage.wal:
        checkpoint(cache_dir)
    damage.apply(cache_dir)
    damaged = files_of(cache_dir)
    assert any(name.endswith(".val") for name in damaged)
    # What SQLite itself still reads (a garbage WAL is ignored by SQLite: the db file as checkpointed).
    readable = sqlite_readable(cache_dir, tmp_path / "reference")

    second = CacheProcess(cache_dir, tmp_path / "second.log")
    try:
        seconds = await second.wait_serving()
        # Header, schema and WAL damage is repaired before serving; a damaged page elsewhere by the
        # check that reads every page once the service serves (or the first call that reads it).
        after = await wait_repaired(second)
        served = await sessions_served(second.address)
        kept = check_repaired_once(second, cache_dir, REASONS, len(served))
        # The damaged store, byte for byte, value files included; nothing of it left in place.
        # (Found after diskcache opened it, its WAL also holds diskcache's settings, written at open.)
        kept_files = files_of(kept)
        if kept_files.get("cache.db-wal") != damaged.get("cache.db-wal") and not damage.wal:
            assert damage.name not in ("header", "schema_page"), "found before anything was written"
            kept_files.pop("cache.db-wal")
        assert kept_files == {**damaged, "repair.json": kept_files["repair.json"]}
        assert not (cache_dir / "cache.db").exists()
        # Every session SQLite can read comes back, each one exactly as it was written.
        assert set(readable) <= set(served)
        assert all(served[sid] == SESSIONS[sid] for sid in served)
        if damage.name in ("header", "schema_page"):
            assert readable == {} and served == SESSIONS  # read from the pages: SQLite reads none
        if damage.name in ("middle_pages", "garbage_wal"):
            assert readable, "the damage left sessions SQLite can read"
        (line,) = repair_lines(second)
        print(f"\n{damage.name}: serving after {seconds:.2f}s, repaired by {line['detected_by']} "
              f"(+{after:.2f}s, repair {line['seconds']}s), sessions {len(served)}/{len(SESSIONS)} "
              f"(SQLite alone: {len(readable)})")
        await still_works(second.address)
        assert second.stop() == 0
    finally:
        second.kill()
    await restart_finds_a_healthy_store(cache_dir, tmp_path, served)


# --- while serving -----------------------------------------------------------------------------------


async def use_everything(address: str) -> dict[str, int]:
    """What clients do all day: stats, every session, every tool result, new entries; gRPC codes seen."""
    codes: dict[str, int] = {}
    async with grpcutil.channel(address) as channel:
        stub = cache_pb2_grpc.CacheStub(channel)
        calls = [stub.Stats(pb.StatsRequest())]
        calls += [stub.GetSession(pb.GetSessionRequest(session_id=sid)) for sid in SESSIONS]
        calls += [stub.Get(pb.CacheGetRequest(namespace="content", key=k, fingerprint=b"fp")) for k in CONTENT]
        calls += [stub.Put(pb.CachePutRequest(namespace="content", key=f"cat:new{i}.md", value=b"n" * 3000,
                                              fingerprint=b"fp", scopes=[f"new{i}.md"])) for i in range(20)]
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, grpc.aio.AioRpcError):
                code = result.code().name
                assert result.code() == grpc.StatusCode.UNAVAILABLE, (code, result.details())
                assert "cache store" in (result.details() or ""), result.details()
            elif isinstance(result, BaseException):
                raise result
            else:
                code = "OK"
            codes[code] = codes.get(code, 0) + 1
    return codes


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.name for d in DAMAGES])
async def test_a_store_damaged_while_serving_is_repaired_and_serving_goes_on(damage: Damage, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    proc = CacheProcess(cache_dir, tmp_path / "cache.log")
    try:
        await proc.wait_serving()
        await fill(proc.address)
        if damage.wal:
            # Transactions only the write-ahead log holds (not yet checkpointed into cache.db): the
            # pages the service reads from it are what the garbage replaces.
            async with grpcutil.channel(proc.address) as channel:
                stub = cache_pb2_grpc.CacheStub(channel)
                for i in range(200):
                    await stub.Put(pb.CachePutRequest(namespace="search", key=f"ls:{i}", value=b"l" * 2000,
                                                      fingerprint=b"fp", scopes=["."]))
                    if i >= 10 and wal_frames_pending(cache_dir) > 10:
                        break
            assert wal_frames_pending(cache_dir) > 10
        else:
            checkpoint(cache_dir)
        inode = (cache_dir / "cache.db").stat().st_ino
        damage.apply(cache_dir)
        readable = sqlite_readable(cache_dir, tmp_path / "reference")

        # Many calls at once, from the service's four worker threads: one repair between them all.
        codes = await use_everything(proc.address)
        codes_after = await use_everything(proc.address)
        assert codes_after == {"OK": sum(codes_after.values())}, codes_after
        served = await sessions_served(proc.address)
        kept = check_repaired_once(proc, cache_dir, REASONS, len(served))
        # The very files that were damaged, moved (not copied, not rewritten).
        assert (kept / "cache.db").stat().st_ino == inode
        assert list(kept.glob("*/*/*.val")) and not list(cache_dir.glob("[0-9a-f][0-9a-f]"))
        assert set(readable) <= set(served)
        assert all(served[sid] == SESSIONS[sid] for sid in served)
        if damage.name in ("header", "schema_page", "middle_pages"):
            assert served == SESSIONS
        (line,) = repair_lines(proc)
        print(f"\n{damage.name} while serving: codes {codes}, found by {line['detected_by']}, repair "
              f"{line['seconds']}s, sessions {len(served)}/{len(SESSIONS)} (SQLite alone: {len(readable)})")
        await still_works(proc.address)
        assert proc.stop() == 0
    finally:
        proc.kill()
    await restart_finds_a_healthy_store(cache_dir, tmp_path, served)


# --- several processes on one directory ----------------------------------------------------------------


async def test_processes_sharing_the_directory_repair_it_once_and_both_move_to_the_fresh_store(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    a = CacheProcess(cache_dir, tmp_path / "a.log")
    b = CacheProcess(cache_dir, tmp_path / "b.log")
    try:
        await a.wait_serving()
        await fill(a.address)
        await b.wait_serving()
        assert await sessions_served(b.address) == SESSIONS
        checkpoint(cache_dir)
        damage_header(cache_dir)

        # Both processes find it at the same moment; one repairs, the other follows.
        await asyncio.gather(use_everything(a.address), use_everything(b.address))
        for proc in (a, b):
            again = await use_everything(proc.address)
            assert again == {"OK": sum(again.values())}, again
        assert len(quarantined(cache_dir)) == 1
        repaired = [p for p in (a, b) if repair_lines(p)]
        assert len(repaired) == 1, "exactly one process repaired the store"
        (repairer,) = repaired
        follower = b if repairer is a else a
        assert sum(follower.metric("fsagent_cache_store_repairs_total", reason=r) or 0 for r in REASONS) == 0
        assert any(line["msg"] == "cache store replaced by another process; using the new one"
                   for line in follower.log_lines()), follower.log_text()
        assert not [line for line in follower.log_lines() if line["level"] in ("error", "critical")]
        assert await sessions_served(a.address) == await sessions_served(b.address) == SESSIONS
        # One store again: what one process writes, the other reads.
        async with grpcutil.channel(a.address) as ca, grpcutil.channel(b.address) as cb:
            await cache_pb2_grpc.CacheStub(ca).Put(pb.CachePutRequest(
                namespace="content", key="cat:shared.md", value=b"shared", fingerprint=b"f", scopes=["shared.md"]))
            got = await cache_pb2_grpc.CacheStub(cb).Get(pb.CacheGetRequest(
                namespace="content", key="cat:shared.md", fingerprint=b"f"))
            assert (got.result, got.value) == (pb.CacheGetResponse.HIT, b"shared")
        assert a.stop() == 0 and b.stop() == 0
    finally:
        a.kill()
        b.kill()


async def test_a_process_that_did_not_see_the_damage_writes_to_the_fresh_store(tmp_path: Path) -> None:
    """B sat idle while A repaired: its next write lands in the store A serves, not in the quarantine."""
    cache_dir = tmp_path / "cache"
    a = CacheProcess(cache_dir, tmp_path / "a.log")
    b = CacheProcess(cache_dir, tmp_path / "b.log")
    try:
        await a.wait_serving()
        await b.wait_serving()
        await fill(a.address)
        assert await sessions_served(b.address) == SESSIONS  # B has the old store open and read it all
        checkpoint(cache_dir)
        header = (cache_dir / "cache.db").read_bytes()[:100]
        damage_header(cache_dir)
        await use_everything(a.address)
        assert len(repair_lines(a)) == 1 and len(quarantined(cache_dir)) == 1
        # Make the quarantined copy readable again: B, whose connections still point at it, meets no
        # damage at all; only noticing that its store was replaced keeps B's writes from landing there.
        overwrite(quarantined(cache_dir)[0] / "cache.db", 0, header)

        async with grpcutil.channel(a.address) as ca, grpcutil.channel(b.address) as cb:
            written = await cache_pb2_grpc.CacheStub(cb).AppendSession(
                pb.AppendSessionRequest(session_id="from-b", messages_json=['{"role": "user"}']))
            assert written.exists
            seen = await cache_pb2_grpc.CacheStub(ca).GetSession(pb.GetSessionRequest(session_id="from-b"))
            assert seen.exists and list(seen.messages_json) == ['{"role": "user"}']
        assert await sessions_served(b.address) == await sessions_served(a.address)
        assert not repair_lines(b)
        assert any(line["msg"] == "cache store replaced by another process; using the new one"
                   for line in b.log_lines()), b.log_text()
        assert a.stop() == 0 and b.stop() == 0
    finally:
        a.kill()
        b.kill()


async def test_deleting_the_quarantine_while_serving_gives_its_space_back(tmp_path: Path) -> None:
    """docs/cache.md: delete quarantine/<timestamp> at any time; the gauge (and the alert) drop, and
    the service lets go of the files, so the disk space is really freed."""
    cache_dir = tmp_path / "cache"
    first = CacheProcess(cache_dir, tmp_path / "first.log")
    try:
        await first.wait_serving()
        await fill(first.address)
        assert first.stop() == 0
    finally:
        first.kill()
    checkpoint(cache_dir)
    damage_header(cache_dir)
    proc = CacheProcess(cache_dir, tmp_path / "cache.log")
    try:
        await proc.wait_serving()
        (kept,) = quarantined(cache_dir)

        def open_in_quarantine() -> list[str]:
            fds = Path(f"/proc/{proc.proc.pid}/fd")
            where = str((cache_dir / "quarantine").resolve())
            return [target for fd in fds.iterdir() if (target := os.readlink(fd)).startswith(where)]

        assert open_in_quarantine(), "a read-only handle keeps the damaged files as found"
        assert proc.metric("fsagent_cache_quarantined_stores") == 1
        shutil.rmtree(kept)
        assert proc.metric("fsagent_cache_quarantined_stores") == 0
        assert proc.metric("fsagent_cache_quarantine_bytes") == 0
        assert open_in_quarantine() == []
        assert await sessions_served(proc.address) == SESSIONS
        assert proc.stop() == 0
    finally:
        proc.kill()
    assert "Traceback" not in proc.log_text()
