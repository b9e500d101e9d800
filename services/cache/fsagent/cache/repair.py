"""Damaged stores: recognise SQLite corruption, quarantine the files, salvage the sessions.

Nothing here is called on the hot path; `store.CacheStore` calls it when an operation (or the
check at start) meets corruption. What is kept and where:

  <cache dir>/quarantine/<UTC timestamp>/   the damaged store as it was on disk: cache.db, its
                                             -wal and -shm, the value files (ab/cd/<hex>.val), and
                                             repair.json saying what happened. Never deleted here.

Sessions are salvaged from the quarantined copy in two passes, merged by key (the most recently
stored copy wins):

1. through SQLite (read-only): every session row the tag index, the key index or a table scan
   can still reach, each row read on its own so one unreadable row costs only that row;
2. by reading the pages themselves (the SQLite file format, db file plus the committed frames of
   its WAL), for what SQLite cannot reach at all: a destroyed header or schema page, a broken
   interior page that hides the leaves beneath it.

Tool results (content, search) are not salvaged: they are a cache, and the tools answer again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import sqlite3
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from diskcache.core import DBNAME, MODE_BINARY, MODE_RAW

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"
LOCK_FILE = "store.lock"
REPORT_FILE = "repair.json"
# A fresh store made by a repair lives in a directory of its own (see CacheStore): a new path, so
# no connection still open on the damaged files can ever touch it.
GENERATION_PREFIX = "store-"
DB_FILES = (DBNAME, DBNAME + "-wal", DBNAME + "-shm", DBNAME + "-journal")
# diskcache keeps values of 32 KiB and more in files two directory levels down: ab/cd/<28 hex>.val
VALUE_DIR = re.compile(r"[0-9a-f]{2}")
VALUE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")

REASON_NOT_A_DATABASE = "not_a_database"
REASON_MALFORMED = "malformed"
REASON_DAMAGED_WAL = "damaged_wal"
REASONS = (REASON_NOT_A_DATABASE, REASON_MALFORMED, REASON_DAMAGED_WAL)

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

SESSION_PREFIX = "sessions:"
SESSION_TAG = "sessions"


def corruption_reason(exc: BaseException) -> str | None:
    """REASON_* when `exc` says the database file is damaged; None for every other error.

    Python's sqlite3 raises DatabaseError with the SQLite result code attached (SQLITE_CORRUPT and
    its extended codes: "database disk image is malformed"; SQLITE_NOTADB: "file is not a
    database"). diskcache passes these through unchanged (it only turns "database is locked" into
    diskcache.Timeout). Busy, full, read-only and I/O errors are not corruption.
    """
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        primary = code & 0xFF
        if primary == _SQLITE_NOTADB:
            return REASON_NOT_A_DATABASE
        if primary == _SQLITE_CORRUPT:
            return REASON_MALFORMED
        return None
    message = str(exc).lower()
    if "not a database" in message:
        return REASON_NOT_A_DATABASE
    if "malformed" in message or "disk image" in message:
        return REASON_MALFORMED
    return None


def wal_damage(wal: Path) -> str | None:
    """Why the write-ahead log beside a database that is not open yet is damaged, or None.

    SQLite treats a WAL whose header is not valid as empty and overwrites it on the next write:
    every transaction in it would be dropped without a word. SQLite writes the 32-byte header in
    one write before any frame, so a file holding more than a header whose magic, page size or
    checksum is wrong was damaged after it was written. Only the header is judged: a bad frame
    can be the torn tail of a crash, which SQLite rightly ignores.
    """
    try:
        with open(wal, "rb") as fh:
            header = fh.read(32)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return None
    if size <= 32 or len(header) < 32:
        return None
    magic, _version, page_size, _seq, _salt1, _salt2, c1, c2 = struct.unpack(">8I", header)
    if magic not in _WAL_MAGIC or _page_size_from(page_size) is None:
        return f"write-ahead log {wal.name} has no valid header"
    if _wal_checksum(header[:24], 0, 0, magic & 1) != (c1, c2):
        return f"write-ahead log {wal.name}: header checksum mismatch"
    return None


def utc_stamp(now: float | None = None) -> str:
    """20260102T030405.123456Z: sorts by time, and is a valid file name everywhere."""
    now = time.time() if now is None else now
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def unique_dir(parent: Path, name: str) -> Path:
    """Create parent/name (or name.1, name.2, ... when taken) and return it."""
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        path = parent / (name if attempt == 0 else f"{name}.{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free name", str(parent / name))


@contextlib.contextmanager
def directory_lock(root: Path, *, exclusive: bool) -> Iterator[None]:
    """flock on <root>/store.lock: one repair at a time across every process sharing the directory.

    Shared to find and open the current store, exclusive to replace it.
    """
    path = root / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # a read-only volume: flock works on it too
        except OSError:
            # No lock file and none can be made (a read-only volume): nothing can be repaired here
            # anyway, and opening the store must not fail for the lock's sake.
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def damaged_files(store_dir: Path) -> list[Path]:
    """What a store directory holds of a diskcache store: the database files and value directories."""
    found = [store_dir / name for name in DB_FILES if (store_dir / name).exists()]
    with contextlib.suppress(OSError):
        found += sorted(p for p in store_dir.iterdir() if p.is_dir() and VALUE_DIR.fullmatch(p.name))
    return found


def quarantine(root: Path, store_dir: Path, stamp: str) -> Path:
    """Move the store in `store_dir` to <root>/quarantine/<stamp>/ and return that directory.

    A generation directory (<root>/store-...) is renamed as a whole; the store at the root of the
    cache directory is moved file by file (the root also holds the quarantine and the lock file).
    Renames only: instant, no extra space, and the files are exactly as they were.
    """
    parent = root / QUARANTINE
    if store_dir != root:
        parent.mkdir(parents=True, exist_ok=True)
        target = parent / stamp
        attempt = 0
        while True:
            try:
                os.rename(store_dir, target)  # fails if target exists and is not empty
                return target
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or attempt > 1000:
                    raise
                attempt += 1
                target = parent / f"{stamp}.{attempt}"
    target = unique_dir(parent, stamp)
    for path in damaged_files(store_dir):
        os.rename(path, target / path.name)
    return target


@dataclass(frozen=True, slots=True)
class QuarantineUsage:
    stores: int
    bytes: int


def quarantine_usage(root: Path) -> QuarantineUsage:
    """How many damaged stores are kept under <root>/quarantine, and the bytes they hold."""
    parent = root / QUARANTINE
    stores = total = 0
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return QuarantineUsage(0, 0)
    for entry in entries:
        with contextlib.suppress(OSError):
            if not entry.is_dir(follow_symlinks=False):
                continue
            stores += 1
            for dirpath, _dirs, files in os.walk(entry.path):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, name)).st_size
    return QuarantineUsage(stores, total)


def write_report(directory: Path, report: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        (directory / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


# --- salvage -----------------------------------------------------------------------------------


@dataclass(slots=True)
class SalvagedSession:
    key: str  # the diskcache key, "sessions:<id>"
    value: bytes  # the session record, as stored
    store_time: float
    expire_time: float | None


@dataclass(slots=True)
class Salvage:
    sessions: dict[str, SalvagedSession] = field(default_factory=dict)
    # Session rows SQLite's indexes still listed (None: not even that was readable).
    listed: int | None = None
    # How the sessions were found: rows read through SQLite, rows read from the pages directly.
    through_sqlite: int = 0
    from_pages: int = 0

    def offer(self, found: SalvagedSession) -> bool:
        have = self.sessions.get(found.key)
        if have is None or found.store_time > have.store_time:
            self.sessions[found.key] = found
            return have is None
        return False


def valid_session_body(raw: bytes) -> bool:
    """The shape CacheStore writes: {"created", "updated", "messages": [<JSON object text>, ...]}."""
    try:
        body = json.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return False
        float(body["created"]), float(body["updated"])
        return all(isinstance(m, str) and isinstance(json.loads(m), dict) for m in body["messages"])
    except (ValueError, KeyError, TypeError):
        return False


def salvage_sessions(directory: Path, *, now: float, max_value_bytes: int) -> Salvage:
    """Every unexpired, well-formed session record still readable in the store in `directory`."""
    result = Salvage()
    reader = _ValueReader(directory, max_value_bytes)
    for found in _through_sqlite(directory / DBNAME, result, reader):
        if _keep(found, now) and result.offer(found):
            result.through_sqlite += 1
    try:
        for found in _from_pages(directory / DBNAME, reader):
            if _keep(found, now) and result.offer(found):
                result.from_pages += 1
    except (OSError, ValueError, struct.error) as exc:
        log.debug("page scan stopped", extra={"error": repr(exc)})
    return result


def _keep(found: SalvagedSession, now: float) -> bool:
    return (found.expire_time is None or found.expire_time > now) and valid_session_body(found.value)


class _ValueReader:
    """A session's value: inline in the row, or in its value file (kept beside the quarantined db)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def __call__(self, mode: object, filename: object, value: object) -> bytes | None:
        if mode == MODE_RAW and isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if mode == MODE_BINARY and isinstance(filename, str) and VALUE_FILE.fullmatch(filename):
            try:
                with open(self.directory / filename, "rb") as fh:
                    data = fh.read(self.max_bytes + 1)
            except OSError:
                return None
            return data if len(data) <= self.max_bytes else None
        return None


def _session_row(key: object, raw: object, tag: object) -> bool:
    return isinstance(key, str) and key.startswith(SESSION_PREFIX) and raw == 1 and tag == SESSION_TAG


# Pass 1: through SQLite ------------------------------------------------------------------------

_ROW = "SELECT key, raw, store_time, expire_time, tag, mode, filename, value FROM Cache WHERE rowid = ?"


def _through_sqlite(db: Path, result: Salvage, read_value: _ValueReader) -> Iterator[SalvagedSession]:
    if not db.is_file():
        return
    try:
        # Read-only: SQLite never checkpoints or deletes the quarantined WAL through this connection.
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0, isolation_level=None)
    except sqlite3.Error:
        return
    with contextlib.closing(con):
        rowids: set[int] = set()
        listed: set[int] = set()
        for query, args in (
            ("SELECT rowid FROM Cache INDEXED BY Cache_tag_rowid WHERE tag = ?", (SESSION_TAG,)),
            ("SELECT rowid FROM Cache INDEXED BY Cache_key_raw WHERE key >= ? AND key < ?",
             (SESSION_PREFIX, SESSION_PREFIX[:-1] + chr(ord(SESSION_PREFIX[-1]) + 1))),
        ):
            got = _collect(con, query, args)
            if got is not None:
                listed |= got
        if listed:
            result.listed = len(listed)
        rowids |= listed
        rowids |= _scan_table(con)
        for rowid in sorted(rowids):
            try:
                row = con.execute(_ROW, (rowid,)).fetchone()
            except sqlite3.Error:
                continue  # this row's page is unreadable: skip it, not the rest
            if row is None:
                continue
            key, raw, store_time, expire_time, tag, mode, filename, value = row
            if not _session_row(key, raw, tag):
                continue
            data = read_value(mode, filename, value)
            if data is not None:
                yield SalvagedSession(key, data, float(store_time or 0.0), _float_or_none(expire_time))


def _collect(con: sqlite3.Connection, query: str, args: tuple[object, ...]) -> set[int] | None:
    got: set[int] = set()
    try:
        for (rowid,) in con.execute(query, args):
            got.add(int(rowid))
    except sqlite3.Error:
        return got or None  # what was read before the damaged page still counts
    return got


def _scan_table(con: sqlite3.Connection, max_failures: int = 64) -> set[int]:
    """Rowids of session rows by a table scan that steps over pages it cannot read."""
    found: set[int] = set()
    after, step, failures = -(2**63), 1, 0
    while failures < max_failures:
        try:
            for rowid, key in con.execute(
                "SELECT rowid, key FROM Cache NOT INDEXED WHERE rowid > ? ORDER BY rowid", (after,)
            ):
                after, step = rowid, 1
                if isinstance(key, str) and key.startswith(SESSION_PREFIX):
                    found.add(int(rowid))
            return found
        except sqlite3.Error:
            failures += 1
            if after == -(2**63):
                after = 0
            after += step  # jump over the damaged page, further each time it fails again
            step *= 4
        except OverflowError:
            return found
    return found


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


# Pass 2: the pages themselves ------------------------------------------------------------------
# https://www.sqlite.org/fileformat2.html: a table b-tree leaf page (type 0x0D) holds cells
# (payload length, rowid, payload, first overflow page); a payload is a record (header of serial
# types, then the values). diskcache's Cache table has 12 columns: rowid (NULL in the record: an
# INTEGER PRIMARY KEY), key, raw, store_time, expire_time, access_time, access_count, tag, size,
# mode, filename, value.

_HEADER_MAGIC = b"SQLite format 3\x00"
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_LEAF_TABLE = 0x0D
_CACHE_COLUMNS = 12
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def _page_size_from(value: int) -> int | None:
    size = 65536 if value == 1 else value
    return size if 512 <= size <= 65536 and size & (size - 1) == 0 else None


class _File:
    """Positional reads of a file (never mmap: a file truncated meanwhile must not raise SIGBUS)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length <= 0 or offset >= self.size:
            return b""
        return os.pread(self.fd, length, offset)


class _Pages:
    """Page images of a database: its file, overlaid with the committed frames of its WAL."""

    def __init__(self, db: _File, wal: _File | None) -> None:
        self.db = db
        self.wal = wal
        header = db.read(0, 100)
        header_ok = len(header) == 100 and header[:16] == _HEADER_MAGIC
        page_size = _page_size_from(_U16.unpack_from(header, 16)[0]) if header_ok else None
        self.reserved = header[20] if header_ok else 0
        self.frames: dict[int, int] = {}
        wal_page_size, wal_pages = self._read_wal(wal)
        self.page_size = page_size or wal_page_size or 4096
        if wal_page_size and wal_page_size != self.page_size:
            self.frames, wal_pages = {}, None
        self.count = wal_pages if wal_pages else db.size // self.page_size
        self.usable = self.page_size - self.reserved

    def _read_wal(self, wal: _File | None) -> tuple[int | None, int | None]:
        """Map page -> offset of its newest committed frame, as SQLite's recovery would."""
        if wal is None:
            return None, None
        header = wal.read(0, 32)
        if len(header) < 32:
            return None, None
        magic, _version, page_size, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", header)
        page_size = _page_size_from(page_size) if magic in _WAL_MAGIC else None
        if page_size is None:
            return None, None
        big = magic & 1
        s1, s2 = _wal_checksum(header[:24], 0, 0, big)
        if (s1, s2) != (c1, c2):
            return None, None
        frames: dict[int, int] = {}
        pending: dict[int, int] = {}
        db_pages = None
        offset = 32
        frame_size = 24 + page_size
        while offset + frame_size <= wal.size:
            frame = wal.read(offset, frame_size)
            if len(frame) != frame_size:
                break
            page, commit, fsalt1, fsalt2, fc1, fc2 = struct.unpack_from(">6I", frame, 0)
            if (fsalt1, fsalt2) != (salt1, salt2) or page == 0:
                break
            s1, s2 = _wal_checksum(frame[:8], s1, s2, big)
            s1, s2 = _wal_checksum(frame[24:], s1, s2, big)
            if (s1, s2) != (fc1, fc2):
                break
            pending[page] = offset + 24
            if commit:
                frames.update(pending)
                pending.clear()
                db_pages = commit
            offset += frame_size
        self.frames = frames
        return page_size, db_pages

    def page(self, number: int) -> bytes | None:
        if number < 1 or number > self.count:
            return None
        at = self.frames.get(number)
        if at is not None and self.wal is not None:
            data = self.wal.read(at, self.page_size)
        else:
            data = self.db.read((number - 1) * self.page_size, self.page_size)
        return data if len(data) == self.page_size else None


def _wal_checksum(data: bytes, s1: int, s2: int, big_endian: int) -> tuple[int, int]:
    words = struct.unpack((">" if big_endian else "<") + f"{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = buf[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | buf[at + 8], at + 9


_FIXED = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 7: 8, 8: 0, 9: 0}


def _record(payload: bytes) -> list[object]:
    header_len, at = _varint(payload, 0)
    if header_len > len(payload) or header_len < 1:
        raise ValueError("bad record header")
    types = []
    while at < header_len:
        serial, at = _varint(payload, at)
        types.append(serial)
    values: list[object] = []
    at = header_len
    for serial in types:
        if serial in _FIXED:
            size = _FIXED[serial]
            raw = payload[at : at + size]
            if len(raw) != size:
                raise ValueError("truncated record")
            if serial == 0:
                values.append(None)
            elif serial == 7:
                values.append(struct.unpack(">d", raw)[0])
            elif serial in (8, 9):
                values.append(serial - 8)
            else:
                values.append(int.from_bytes(raw, "big", signed=True))
        elif serial >= 12:
            size = (serial - 12) // 2
            raw = payload[at : at + size]
            if len(raw) != size:
                raise ValueError("truncated record")
            values.append(raw if serial % 2 == 0 else raw.decode("utf-8"))
        else:
            raise ValueError("reserved serial type")
        at += size
    return values


def _payload(pages: _Pages, page: bytes, at: int) -> bytes:
    """The whole payload of the table-leaf cell at `at`, following its overflow chain."""
    length, at = _varint(page, at)
    _rowid, at = _varint(page, at)
    usable = pages.usable
    most = usable - 35
    if length <= most:
        local = length
    else:
        least = ((usable - 12) * 32 // 255) - 23
        local = least + (length - least) % (usable - 4)
        if local > most:
            local = least
    data = bytearray(page[at : at + local])
    if len(data) != local:
        raise ValueError("cell runs off its page")
    if length > local:
        (next_page,) = _U32.unpack_from(page, at + local)
        seen: set[int] = set()
        while len(data) < length:
            if next_page in seen:
                raise ValueError("overflow chain loops")
            seen.add(next_page)
            overflow = pages.page(next_page)
            if overflow is None:
                raise ValueError("overflow page missing")
            (next_page,) = _U32.unpack_from(overflow, 0)
            data += overflow[4 : 4 + min(usable - 4, length - len(data))]
    return bytes(data)


def _leaf_cells(pages: _Pages, number: int, page: bytes) -> Iterator[list[object]]:
    base = 100 if number == 1 else 0
    if len(page) < base + 8 or page[base] != _LEAF_TABLE:
        return
    (cells,) = _U16.unpack_from(page, base + 3)
    pointers = base + 8
    if pointers + 2 * cells > pages.usable:
        return
    for i in range(cells):
        (at,) = _U16.unpack_from(page, pointers + 2 * i)
        if not pointers + 2 * cells <= at < pages.usable:
            continue
        try:
            yield _record(_payload(pages, page, at))
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            continue


def _from_pages(db: Path, read_value: Callable[[object, object, object], bytes | None]) -> Iterator[SalvagedSession]:
    with contextlib.ExitStack() as stack:
        files: list[_File | None] = []
        for path in (db, Path(str(db) + "-wal")):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                files.append(None)
                continue
            stack.callback(os.close, fd)
            files.append(_File(fd))
        if files[0] is None:
            return
        pages = _Pages(files[0], files[1])
        marker = SESSION_PREFIX.encode()
        for number in range(1, pages.count + 1):
            page = pages.page(number)
            if page is None or marker not in page:
                continue
            for values in _leaf_cells(pages, number, page):
                if len(values) != _CACHE_COLUMNS:
                    continue
                _, key, raw, store_time, expire_time, _at, _count, tag, _size, mode, filename, value = values
                if not _session_row(key, raw, tag) or not isinstance(store_time, (int, float)):
                    continue
                if expire_time is not None and not isinstance(expire_time, (int, float)):
                    continue
                data = read_value(mode, filename, value)
                if data is not None:
                    yield SalvagedSession(
                        str(key), data, float(store_time), None if expire_time is None else float(expire_time)
                    )
