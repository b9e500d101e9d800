"""The repair machinery on its own (no service process): recognising damage, the salvage's two passes
against each other, a repair that cannot be done (a read-only or full volume) and what callers get."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Awaitable, Callable

import diskcache
import grpc
import pytest

from fsagent.cache import repair
from fsagent.cache import store as store_module
from fsagent.cache.store import CacheStore, StoreUnavailable
from fsagent.v1 import cache_pb2 as pb

MiB = 1024 * 1024
StoreFactory = Callable[..., CacheStore]


def body(sid: str, size: int = 50) -> list[str]:
    return [json.dumps({"role": "user", "content": f"{sid} " + "y" * size}),
            json.dumps({"role": "assistant", "content": f"re {sid}"})]


def fill(store: CacheStore) -> dict[str, list[str]]:
    """Live sessions (two over 32 KiB: value files), one deleted, one expired, tool results around them."""
    live = {f"s{i}": body(f"s{i}", 40_000 if i < 2 else 30 * i) for i in range(40)}
    for sid, messages in live.items():
        store.append_session(sid, messages[:1])
    for i in range(300):
        store.put("content", f"k{i}", os.urandom(1500), b"fp", [f"d/{i}.md"])
    for sid, messages in live.items():
        store.append_session(sid, messages[1:])
    store.append_session("gone", body("gone"))
    store.delete_session("gone")
    store.append_session("expired", body("expired"), ttl=0.05)
    time.sleep(0.1)
    return live


def stored_bodies(store_dir: Path, sessions: dict[str, list[str]]) -> dict[str, list[str]]:
    return sessions


def salvaged(found: dict[str, repair.SalvagedSession]) -> dict[str, list[str]]:
    return {key.removeprefix("sessions:"): json.loads(s.value)["messages"] for key, s in found.items()}


def copy_store(source: Path, target: Path) -> Path:
    """The files of a store in use, as a process killed now would leave them (WAL included)."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_dir():
            shutil.copytree(path, target / path.name)
        elif path.name != "store.lock":
            shutil.copyfile(path, target / path.name)
    return target


# --- damage is recognised, nothing else is ---------------------------------------------------------


def test_corruption_reason(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(sqlite3.DatabaseError) as not_a_db:
        sqlite3.connect(garbage).execute("SELECT 1 FROM sqlite_master").fetchall()
    assert repair.corruption_reason(not_a_db.value) == "not_a_database"

    db = tmp_path / "t.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (a)")
    con.executemany("INSERT INTO t VALUES (?)", [(os.urandom(500),) for _ in range(200)])
    con.commit()
    con.close()
    with open(db, "r+b") as fh:
        fh.seek(4096 * 3)
        fh.write(os.urandom(4096 * 4))
    with pytest.raises(sqlite3.DatabaseError) as malformed:
        sqlite3.connect(db).execute("SELECT count(*), sum(length(a)) FROM t").fetchall()
    assert repair.corruption_reason(malformed.value) == "malformed"

    locked = sqlite3.OperationalError("database is locked")
    for other in (locked, sqlite3.OperationalError("disk I/O error"), diskcache.Timeout(), OSError(errno.ENOSPC, "full"),
                  ValueError("malformed JSON")):
        assert repair.corruption_reason(other) is None
    # Without the result code (another sqlite3 build): the message decides.
    assert repair.corruption_reason(sqlite3.DatabaseError("database disk image is malformed")) == "malformed"
    assert repair.corruption_reason(sqlite3.DatabaseError("file is not a database")) == "not_a_database"


def test_wal_damage_judges_only_the_header(make_store: StoreFactory, cache_dir: Path, tmp_path: Path) -> None:
    store = make_store()
    fill(store)
    wal = cache_dir / "cache.db-wal"
    assert wal.stat().st_size > 4096 and repair.wal_damage(wal) is None
    copy = copy_store(cache_dir, tmp_path / "copy") / "cache.db-wal"
    data = bytearray(copy.read_bytes())
    data[40:4000] = os.urandom(3960)  # a frame: a torn tail as far as SQLite knows, not judged
    copy.write_bytes(bytes(data))
    assert repair.wal_damage(copy) is None
    data[0:32] = os.urandom(32)
    copy.write_bytes(bytes(data))
    assert "no valid header" in (repair.wal_damage(copy) or "")
    data[0:32] = wal.read_bytes()[:32]
    data[24] ^= 0xFF  # the header's checksum
    copy.write_bytes(bytes(data))
    assert "checksum" in (repair.wal_damage(copy) or "")
    empty = tmp_path / "empty-wal"
    empty.write_bytes(b"")
    assert repair.wal_damage(empty) is None and repair.wal_damage(tmp_path / "absent") is None


# --- the salvage's two passes ------------------------------------------------------------------------


def test_both_passes_find_every_live_session_of_an_intact_store(make_store: StoreFactory, cache_dir: Path,
                                                                tmp_path: Path) -> None:
    store = make_store()
    live = fill(store)
    copy = copy_store(cache_dir, tmp_path / "copy")  # with its WAL: part of it was never checkpointed
    assert (copy / "cache.db-wal").stat().st_size > 0
    assert any(copy.glob("*/*/*.val"))
    now = time.time()
    sql = repair.Salvage()
    for found in repair._through_sqlite(copy / "cache.db", sql, repair._ValueReader(copy, 8 * MiB)):
        if repair._keep(found, now):
            sql.offer(found)
    pages = repair.Salvage()
    for found in repair._from_pages(copy / "cache.db", repair._ValueReader(copy, 8 * MiB)):
        if repair._keep(found, now):
            pages.offer(found)
    # Deleted and expired sessions stay gone; every other one is found by each pass, byte for byte.
    assert salvaged(sql.sessions) == salvaged(pages.sessions) == live
    assert {k: s.value for k, s in sql.sessions.items()} == {k: s.value for k, s in pages.sessions.items()}
    assert sql.listed == len(live) + 1  # the index lists the expired one too; it is not kept
    both = repair.salvage_sessions(copy, now=now, max_value_bytes=8 * MiB)
    assert salvaged(both.sessions) == live and both.through_sqlite == len(live) and both.from_pages == 0


def test_the_pages_give_what_sqlite_cannot_reach(make_store: StoreFactory, cache_dir: Path, tmp_path: Path) -> None:
    store = make_store()
    live = fill(store)
    store.close()
    copy = copy_store(cache_dir, tmp_path / "copy")
    con = sqlite3.connect(copy / "cache.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    with open(copy / "cache.db", "r+b") as fh:
        fh.write(os.urandom(100))  # the header: SQLite reads nothing at all
    result = repair.salvage_sessions(copy, now=time.time(), max_value_bytes=8 * MiB)
    assert result.listed is None and result.through_sqlite == 0
    assert salvaged(result.sessions) == live and result.from_pages == len(live)


def test_a_value_file_path_from_a_damaged_row_is_never_followed_outside(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text('{"created": 1, "updated": 1, "messages": []}')
    reader = repair._ValueReader(tmp_path / "store", 1024)
    assert reader(2, "../secret", None) is None
    assert reader(2, "/etc/passwd", None) is None
    assert reader(1, None, b"inline") == b"inline"


# --- a repair that cannot be done ------------------------------------------------------------------


def damage_header(directory: Path) -> None:
    con = sqlite3.connect(directory / "cache.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    with open(directory / "cache.db", "r+b") as fh:
        fh.write(os.urandom(100))


async def test_a_repair_that_cannot_be_done_answers_unavailable_then_tries_again(
    make_store: StoreFactory, make_server: Callable[[CacheStore], Awaitable[object]], cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    first = make_store()
    first.append_session("kept", body("kept"))
    first.close()
    damage_header(cache_dir)

    attempts = []

    def read_only(parent: Path, name: str) -> Path:
        attempts.append(name)
        raise OSError(errno.EROFS, "Read-only file system", str(parent))

    monkeypatch.setattr(repair, "unique_dir", read_only)
    monkeypatch.setattr(store_module, "REPAIR_RETRY_SECONDS", 0.5)
    caplog.set_level(logging.INFO)
    store = make_store()  # starts: a service that cannot repair its store still serves (UNAVAILABLE)
    assert len(attempts) == 1
    with pytest.raises(StoreUnavailable, match="damaged and could not be repaired: cannot create a fresh store"):
        store.get_session("kept")
    running = await make_server(store)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.stub.GetSession(pb.GetSessionRequest(session_id="kept"))  # type: ignore[attr-defined]
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Read-only file system" in (refused.value.details() or "")
    assert len(attempts) == 1, "no new attempt before the pause is over"
    failures = [r for r in caplog.records if "could not be repaired" in r.getMessage()]
    assert len(failures) == 1 and not any(r.exc_info for r in caplog.records)

    monkeypatch.undo()  # the volume is writable again
    time.sleep(0.6)
    reply = await running.stub.GetSession(pb.GetSessionRequest(session_id="kept"))  # type: ignore[attr-defined]
    assert reply.exists and list(reply.messages_json) == body("kept")
    assert len(repair_dirs := list((cache_dir / "quarantine").iterdir())) == 1, repair_dirs
    assert not any(r.exc_info for r in caplog.records)


def test_check_reads_every_page_and_repairs_what_the_start_did_not_see(make_store: StoreFactory, cache_dir: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    store = make_store()
    live = fill(store)
    assert store.check() is True
    con = sqlite3.connect(cache_dir / "cache.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    store.close()
    pages = (cache_dir / "cache.db").stat().st_size // 4096
    with open(cache_dir / "cache.db", "r+b") as fh:
        fh.seek(pages // 2 * 4096)
        fh.write(os.urandom(3 * 4096))
    caplog.set_level(logging.INFO)
    reopened = make_store()  # header and schema are fine: it opens on the damaged store
    assert reopened.store_directory == cache_dir.resolve()
    assert reopened.check() is False
    assert reopened.store_directory.name.startswith("store-")
    assert {sid: reopened.get_session(sid).messages for sid in live} == live  # type: ignore[union-attr]
    (line,) = [r for r in caplog.records if r.getMessage().startswith("cache store damaged")]
    assert line.detected_by == "check" and line.reason == "malformed"  # type: ignore[attr-defined]
    assert reopened.check() is True
