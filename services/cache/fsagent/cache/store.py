"""The cache store: one `diskcache.Cache` on disk, split into namespaces by key prefix and tag.

Every method here is synchronous and blocking (diskcache is SQLite underneath); the gRPC servicer
runs them on a small thread pool, never on the event loop. The store is thread-safe (diskcache keeps
one SQLite connection per thread) and process-safe (SQLite locking), so several processes may
share one directory.

Layout of one entry in diskcache:

  key    "<namespace>:<key>"          (a str, stored raw, so it can be read back with plain SQL)
  tag    "<namespace>"                (indexed: `clear(namespace)` and the per-namespace stats use it)
  value  bytes, never pickled (nothing read from disk is ever unpickled):
           content/search: MAGIC | u32 len | scopes joined by NUL | u32 len | fingerprint | value
           sessions:       a JSON object {"created", "updated", "messages": [<message JSON>, ...]}
  expire the namespace TTL, or the one the caller asked for

`get` answers HIT only when the stored fingerprint equals the caller's; a mismatch deletes the
entry (STALE). `invalidate(prefix)` drops every content/search entry whose scope contains or lies
beneath the prefix. Eviction is least-recently-used over the whole store at `size_limit`.

Damage: every public method runs through `_guarded`. When SQLite says the database file is damaged
(at start, where the write-ahead log's header, the database header and the schema are checked
before diskcache writes anything; in `check`, a full `PRAGMA quick_check` the service runs in the
background once it serves; or in any later call), the store is repaired once: the damaged files go to <directory>/quarantine/<UTC timestamp>/, a fresh
store is made in a new directory <directory>/store-<UTC timestamp>/, the sessions SQLite (or the
pages themselves) can still give are copied into it (repair.py), and the call is retried there.
A new path rather than a new file at the old one: a connection still open on the damaged files
(another thread, another process) deletes "cache.db-wal" and "cache.db-shm" by name when it
closes last, which at the old path would be the fresh store's. Threads of one process wait for a
repair (a readers-writer gate); processes sharing the directory take <directory>/store.lock
(flock) to replace the store, and notice a replaced store on their next call (the database file
they opened is gone), then open the new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import sqlite3
import struct
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import diskcache
from diskcache.core import DBNAME

from fsagent.cache import repair
from fsagent.common.identifiers import is_session_id
from fsagent.common.scopes import scope_matches
from fsagent.common.settings import Settings

log = logging.getLogger(__name__)

CONTENT = "content"
SEARCH = "search"
SESSIONS = "sessions"
NAMESPACES: tuple[str, ...] = (CONTENT, SEARCH, SESSIONS)
# Namespaces whose entries carry (fingerprint, scopes, value) and go through get/put/invalidate.
ENTRY_NAMESPACES: tuple[str, ...] = (CONTENT, SEARCH)

HIT, MISS, STALE = "hit", "miss", "stale"

MAX_KEY_CHARS = 1024
MAX_SCOPE_CHARS = 4096
MAX_SCOPES = 4096
# diskcache's busy timeout: how long an operation waits for another writer's lock before failing
# with diskcache.Timeout. Callers give the cache a deadline far shorter than this anyway.
DB_TIMEOUT_SECONDS = 5.0
# One entry may use at most this share of the size limit; a bigger one would evict most of the
# store for a single value, so it is not stored (put returns False).
MAX_ENTRY_SHARE = 8

_MAGIC = b"fsc1"
_U32 = struct.Struct(">I")
# How much of an entry's head the invalidation scan reads first; enough for typical scope lists.
_HEAD_BYTES = 4096
# After a repair that could not be done (a read-only or full volume), calls answer "unavailable"
# at once for this long before the next attempt.
REPAIR_RETRY_SECONDS = 30.0

T = TypeVar("T")


class InvalidArgument(ValueError):
    """A request the store refuses; the message is meant for the caller."""


class StoreUnavailable(RuntimeError):
    """The store cannot answer now (damaged, and the repair could not be done); the message says why."""


class _RepairFailed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Entry:
    fingerprint: bytes
    scopes: tuple[str, ...]
    value: bytes


@dataclass(frozen=True, slots=True)
class GetResult:
    result: str  # HIT, MISS or STALE
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    messages: list[str]
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class NamespaceStats:
    namespace: str
    entries: int
    bytes: int
    hits: int
    misses: int


@dataclass(frozen=True, slots=True)
class Stats:
    namespaces: list[NamespaceStats]
    size_limit: int
    volume: int
    hit_ratio: float
    directory: str

    def by_namespace(self) -> dict[str, NamespaceStats]:
        return {ns.namespace: ns for ns in self.namespaces}


@dataclass(slots=True)
class _Counters:
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMESPACES, 0))
    misses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMESPACES, 0))


# --- value encoding ----------------------------------------------------------------------------


def encode_entry(fingerprint: bytes, scopes: Sequence[str], value: bytes) -> bytes:
    scope_bytes = "\0".join(scopes).encode("utf-8")
    return b"".join(
        (_MAGIC, _U32.pack(len(scope_bytes)), scope_bytes, _U32.pack(len(fingerprint)), fingerprint, value)
    )


def _scopes_from_head(head: bytes) -> tuple[str, ...] | int:
    """The scopes from the first bytes of an encoded entry, or how many bytes are needed."""
    if len(head) < 8 or head[:4] != _MAGIC:
        raise ValueError("not an fsagent cache entry")
    (length,) = _U32.unpack_from(head, 4)
    if len(head) < 8 + length:
        return 8 + length
    raw = head[8 : 8 + length]
    return tuple(raw.decode("utf-8").split("\0")) if raw else ()


def decode_entry(data: bytes) -> Entry:
    if len(data) < 12 or data[:4] != _MAGIC:
        raise ValueError("not an fsagent cache entry")
    view = memoryview(data)
    (scope_len,) = _U32.unpack_from(view, 4)
    offset = 8 + scope_len
    scopes_raw = bytes(view[8:offset])
    (fp_len,) = _U32.unpack_from(view, offset)
    offset += 4
    fingerprint = bytes(view[offset : offset + fp_len])
    if len(fingerprint) != fp_len:
        raise ValueError("truncated fsagent cache entry")
    scopes = tuple(scopes_raw.decode("utf-8").split("\0")) if scopes_raw else ()
    return Entry(fingerprint, scopes, bytes(view[offset + fp_len :]))


# --- paths and scopes --------------------------------------------------------------------------


def normalize_path(path: str, *, what: str = "path") -> str:
    """A relative POSIX path in canonical form; "" and "." (the data root) become ".".

    Refuses absolute paths, `..` and NUL: the cache only ever sees paths relative to the data root.
    """
    if len(path) > MAX_SCOPE_CHARS:
        raise InvalidArgument(f"{what} is longer than {MAX_SCOPE_CHARS} characters")
    if "\0" in path:
        raise InvalidArgument(f"{what} contains a NUL character")
    if path.startswith("/") or path.startswith("\\"):
        raise InvalidArgument(f"{what} must be relative to the data root, got an absolute path")
    if ".." in path.split("/"):
        raise InvalidArgument(f"{what} must not contain '..'")
    if path in ("", "."):
        return "."
    normal = posixpath.normpath(path)
    return "." if normal in ("", ".") else normal


def _full_key(namespace: str, key: str) -> str:
    return f"{namespace}:{key}"


def _check_key(key: str) -> None:
    if not key:
        raise InvalidArgument("key must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(f"key is longer than {MAX_KEY_CHARS} characters")


def check_session_id(session_id: str) -> str:
    if not is_session_id(session_id):
        raise InvalidArgument(
            "session_id must be 1-128 characters from A-Z, a-z, 0-9 and . _ : -"
        )
    return session_id


def check_namespace(namespace: str, allowed: Iterable[str] = NAMESPACES) -> str:
    allowed = tuple(allowed)
    if namespace not in allowed:
        if namespace == SESSIONS:
            raise InvalidArgument(
                "namespace 'sessions' is used through GetSession/AppendSession/DeleteSession"
            )
        raise InvalidArgument(f"unknown namespace {namespace[:64]!r}; expected one of {', '.join(allowed)}")
    return namespace


def _check_ttl(ttl: float | None) -> float | None:
    if ttl is None or ttl == 0:
        return None
    if not math.isfinite(ttl) or ttl < 0:
        raise InvalidArgument("ttl_seconds must be a positive number of seconds (0 = the default)")
    return float(ttl)


# --- the store ---------------------------------------------------------------------------------


class _Gate:
    """Many store calls at once, or one repair alone (readers-writer, a waiting repair goes first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._waiting = 0
        self._exclusive = False

    def enter(self) -> None:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if not self._active:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._active:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def _ident(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class CacheStore:
    """Namespaced, fingerprint-checked, LRU-evicted key-value store on one diskcache directory."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        size_limit: int,
        ttl_content: float = 3600.0,
        ttl_search: float = 3600.0,
        ttl_sessions: float = 7 * 86400.0,
        timeout: float = DB_TIMEOUT_SECONDS,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.size_limit = int(size_limit)
        self._ttl = {CONTENT: ttl_content, SEARCH: ttl_search, SESSIONS: ttl_sessions}
        self._timeout = timeout
        self._settings: dict[str, object] = {
            "timeout": timeout,
            "size_limit": self.size_limit,
            "eviction_policy": "least-recently-used",
            "tag_index": True,
            # Statistics in diskcache are shared across processes and cost a write per lookup;
            # ours are per process, in memory.
            "statistics": False,
            # No memory-mapped reads: SQLite maps the database file, and a file truncated under a
            # mapping kills the process with SIGBUS. Reads through the page cache cost ~20 us more
            # per call; a damaged (truncated) store then fails with an error and is repaired.
            "sqlite_mmap_size": 0,
        }
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._gate = _Gate()
        self._cache: diskcache.Cache | None = None
        self._store_dir = self.directory
        self._db_path = str(self.directory / DBNAME)
        self._db_ident: tuple[int, int] | None = None
        self._generation = 0
        self._unavailable: str | None = None
        self._retry_at = 0.0
        self._quarantine_memo: tuple[tuple[int, int], float, repair.QuarantineUsage] | None = None
        # Read-only handles on quarantined databases (see _pin), dropped once the files are deleted.
        self._pins: list[tuple[Path, sqlite3.Connection]] = []
        self._start_pin: sqlite3.Connection | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._open("start")
        except _RepairFailed as exc:
            self._fail(str(exc))

    @classmethod
    def from_settings(cls, settings: Settings) -> "CacheStore":
        return cls(
            settings.cache_dir,
            size_limit=settings.cache_size_limit,
            ttl_content=settings.cache_ttl_content,
            ttl_search=settings.cache_ttl_search,
            ttl_sessions=settings.session_ttl,
        )

    @property
    def max_entry_bytes(self) -> int:
        return max(1, self.size_limit // MAX_ENTRY_SHARE)

    @property
    def store_directory(self) -> Path:
        """Where the current store's files are: the directory itself, or store-<UTC timestamp>
        beneath it once a damaged store has been replaced."""
        return self._store_dir

    def ttl(self, namespace: str) -> float:
        return self._ttl[namespace]

    def close(self) -> None:
        """Close this thread's connection; worker threads' connections close when they exit."""
        cache = self._cache
        if cache is not None:
            cache.close()
        self._unpin_start()
        with self._lock:
            pins, self._pins = self._pins, []
        for _path, pin in pins:
            pin.close()

    # --- opening, damage and repair ------------------------------------------------------------

    def _resolve(self) -> Path:
        """The current store: the newest store-* generation holding a database, else the directory."""
        try:
            generations = sorted(
                p for p in self.directory.glob(repair.GENERATION_PREFIX + "*") if (p / DBNAME).is_file()
            )
        except OSError:
            generations = []
        return generations[-1] if generations else self.directory

    def _is_current(self) -> bool:
        return _ident(self._db_path) == self._db_ident

    def _open(self, detected: str) -> None:
        """Find, open and check the current store; repair it when it is damaged.

        Called at start and when another process replaced the store; the caller holds the gate
        exclusively. Errors other than damage propagate (at start: as before, the service stops).
        """
        previous = self._store_dir if self._cache is not None else None
        for _ in range(5):
            with repair.directory_lock(self.directory, exclusive=False):
                store_dir = self._resolve()
                ident = _ident(store_dir / DBNAME)
                # Judged before diskcache opens it (and writes its settings): a damaged store is
                # quarantined exactly as it was found.
                cache = None
                damage = self._check(store_dir)
                if damage is None:
                    self._pin_until_checked(store_dir)
                    cache, damage = self._try_open(store_dir)
            if damage is None:
                assert cache is not None
                self._install(cache, store_dir)
                if previous is not None and previous != store_dir:
                    log.info(
                        "cache store replaced by another process; using the new one",
                        extra={"store": str(store_dir), "previous_store": str(previous)},
                    )
                return
            if cache is not None:
                cache.close()
            with repair.directory_lock(self.directory, exclusive=True):
                if self._resolve() == store_dir and _ident(store_dir / DBNAME) == ident:
                    self._repair(store_dir, *damage, detected=detected)
                    return
            # Replaced by another process meanwhile: open that one.
        raise _RepairFailed("the cache store kept changing while it was being opened")

    def _try_open(self, store_dir: Path) -> tuple[diskcache.Cache | None, tuple[str, str] | None]:
        try:
            return diskcache.Cache(directory=str(store_dir), **self._settings), None
        except sqlite3.DatabaseError as exc:
            reason = repair.corruption_reason(exc)
            if reason is None:
                raise
            return None, (reason, str(exc))

    def _check(self, store_dir: Path) -> tuple[str, str] | None:
        """What is wrong with the store in `store_dir` (reason, error), before anything writes to it.

        Cheap, so that a start is not delayed by the store's size: the write-ahead log's header, then
        on a read-only connection (which never checkpoints or changes a file) the database header,
        the schema and diskcache's Settings table. A damaged page elsewhere is found by `check` or by
        the first call that reads it.
        """
        wal = repair.wal_damage(store_dir / (DBNAME + "-wal"))
        if wal is not None:
            return repair.REASON_DAMAGED_WAL, wal
        db = store_dir / DBNAME
        if not db.is_file() or db.stat().st_size == 0:
            return None  # nothing stored yet
        try:
            with closing(self._read_only(db)) as con:
                con.execute("SELECT count(*) FROM sqlite_master").fetchall()
                if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'Settings'").fetchone():
                    con.execute("SELECT key, value FROM Settings").fetchall()
        except sqlite3.DatabaseError as exc:
            reason = repair.corruption_reason(exc)
            if reason is None:
                raise
            return reason, str(exc)
        return None

    def _read_only(self, db: Path) -> sqlite3.Connection:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=self._timeout, isolation_level=None,
                              check_same_thread=False)
        con.execute("PRAGMA mmap_size = 0")
        return con

    def _pin(self, db: Path) -> sqlite3.Connection | None:
        """A read-only connection that has read the database, so holds SQLite's shared lock on it
        for as long as it stays open (WAL mode). While it is open no other connection is the last
        one, and the last one to close folds the WAL into the database file (diskcache closes its
        first connection as soon as it has opened the store). Being read-only it never does."""
        try:
            con = self._read_only(db)
        except sqlite3.Error:
            return None
        with contextlib.suppress(sqlite3.Error):
            con.execute("SELECT count(*) FROM sqlite_master").fetchall()
        return con

    def _pin_until_checked(self, store_dir: Path) -> None:
        """Keep the store's database file as found until `check` has read every page of it."""
        self._unpin_start()
        db = store_dir / DBNAME
        if db.is_file() and db.stat().st_size:
            self._start_pin = self._pin(db)

    def _unpin_start(self) -> None:
        pin, self._start_pin = self._start_pin, None
        if pin is not None:
            pin.close()

    def check(self) -> bool:
        """Read every page of the current store (`PRAGMA quick_check`); repair it when damaged.

        ~0.5 s per 500 MB from the page cache, ~10 s from a slow disk: the service runs it in the
        background once it serves. Calls go on meanwhile (a read-only connection of its own, no
        lock held). True when the store was healthy.
        """
        try:
            with self._gate_shared():
                generation, db = self._generation, Path(self._db_path)
            try:
                with closing(self._read_only(db)) as con:
                    rows = con.execute("PRAGMA quick_check(1)").fetchall()
            except sqlite3.DatabaseError as exc:
                reason = repair.corruption_reason(exc)
                if reason is None:
                    raise
                damage = (reason, str(exc))
            else:
                if rows == [("ok",)]:
                    return True
                first = str(rows[0][0]).strip().splitlines() if rows else []
                damage = (repair.REASON_MALFORMED, "quick_check: " + (first[-1] if first else "no answer"))
            self._recover(generation, *damage, "check")
            return False
        finally:
            self._unpin_start()

    @contextmanager
    def _gate_shared(self) -> Iterator[None]:
        self._enter()
        try:
            yield
        finally:
            self._gate.leave()

    def _install(self, cache: diskcache.Cache, store_dir: Path) -> None:
        self._cache = cache
        self._store_dir = store_dir
        self._db_path = str(store_dir / DBNAME)
        self._db_ident = _ident(self._db_path)
        self._generation += 1
        self._unavailable = None
        self._retry_at = 0.0

    def _repair(self, store_dir: Path, reason: str, error: str, *, detected: str) -> None:
        """Quarantine the damaged store, make a fresh one, salvage the sessions into it.

        The caller holds the gate exclusively and the directory lock exclusively.
        """
        started = time.monotonic()
        stamp = repair.utc_stamp()
        # The fresh store first, at a path never used before: once it exists every process resolves
        # to it, whatever happens next.
        try:
            fresh_dir = repair.unique_dir(self.directory, repair.GENERATION_PREFIX + stamp)
            fresh = diskcache.Cache(directory=str(fresh_dir), **self._settings)
        except (OSError, sqlite3.Error) as exc:
            raise _RepairFailed(f"cannot create a fresh store in {self.directory}: {exc}") from None
        try:
            kept: Path | None = repair.quarantine(self.directory, store_dir, stamp)
            not_moved = None
        except OSError as exc:
            kept, not_moved = None, str(exc)
        source = kept or store_dir
        if kept is not None:
            # Held for the life of the process, so the connections still open on the damaged files
            # (closed just below) leave them as they were found (see _pin).
            pin = self._pin(kept / DBNAME)
            if pin is not None:
                with self._lock:
                    self._pins.append((kept / DBNAME, pin))
        try:
            salvage = repair.salvage_sessions(source, now=time.time(), max_value_bytes=self.max_entry_bytes)
        except Exception as exc:  # noqa: BLE001 - a salvage that fails must not stop the repair
            log.warning("session salvage failed", extra={"error": repr(exc)})
            salvage = repair.Salvage()
        recovered = 0
        for found in salvage.sessions.values():
            expire = None if found.expire_time is None else found.expire_time - time.time()
            if expire is not None and expire <= 0:
                continue
            try:
                # add: a session written meanwhile by another process (already on the fresh store) wins.
                if fresh.add(found.key, found.value, expire=expire, tag=SESSIONS):
                    recovered += 1
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                log.warning("a recovered session could not be stored", extra={"error": repr(exc)})
        old = self._cache
        self._install(fresh, fresh_dir)
        if old is not None:
            old.close()  # this thread's connection; the other threads' close with the object, now
            del old
        seconds = round(time.monotonic() - started, 3)
        report = {
            "detected_at": stamp,
            "detected_by": detected,
            "reason": reason,
            "error": error,
            "damaged_store": str(store_dir),
            "fresh_store": str(fresh_dir),
            "sessions_recovered": recovered,
            "sessions_listed": salvage.listed,
            "seconds": seconds,
        }
        if kept is not None:
            repair.write_report(kept, report)
        from fsagent.cache import metrics  # here: metrics imports this module

        metrics.record_repair(reason, recovered)
        with self._lock:
            self._quarantine_memo = None
        log.error(
            "cache store damaged: quarantined it and serving a fresh store",
            extra={**report, "quarantine": str(kept) if kept else None,
                   **({"quarantine_error": not_moved} if not_moved else {})},
        )

    def _fail(self, message: str) -> None:
        """A repair that could not be done: answer "unavailable" for a while, then try again."""
        self._unavailable = message
        self._retry_at = time.monotonic() + REPAIR_RETRY_SECONDS
        log.error(
            "cache store damaged and could not be repaired; calls fail until it can be",
            extra={"error": message, "directory": str(self.directory), "retry_in_seconds": REPAIR_RETRY_SECONDS},
        )

    def _unavailable_error(self) -> StoreUnavailable:
        return StoreUnavailable(f"cache store is damaged and could not be repaired: {self._unavailable}")

    def _enter(self) -> int:
        """Enter the gate on a store that is open and still the current one; its generation."""
        while True:
            self._gate.enter()
            if self._cache is not None and self._is_current():
                return self._generation
            self._gate.leave()
            self._reopen()

    def _reopen(self) -> None:
        with self._gate.exclusive():
            if self._cache is not None and self._is_current():
                return
            if time.monotonic() < self._retry_at:
                raise self._unavailable_error()
            try:
                self._open("reopen")
            except (_RepairFailed, OSError, sqlite3.Error, diskcache.Timeout) as exc:
                self._fail(str(exc))
                raise self._unavailable_error() from None

    def _recover(self, generation: int, reason: str, error: str, operation: str) -> None:
        """Repair the store an operation found damaged, once however many calls found it."""
        with self._gate.exclusive():
            if self._generation != generation:
                return  # another thread repaired it (or moved to a replacement) meanwhile
            if time.monotonic() < self._retry_at:
                raise self._unavailable_error()
            try:
                with repair.directory_lock(self.directory, exclusive=True):
                    if self._resolve() == self._store_dir and self._is_current():
                        self._repair(self._store_dir, reason, error, detected=operation)
                        return
                self._open(operation)  # another process replaced it meanwhile
            except (_RepairFailed, OSError, sqlite3.Error, diskcache.Timeout) as exc:
                self._fail(str(exc))
                raise self._unavailable_error() from None

    def _guarded(self, operation: str, fn: Callable[..., T], *args: object) -> T:
        """Run one store call; on damage, repair (once) and run it again on the fresh store."""
        repaired = False
        while True:
            generation = self._enter()
            try:
                return fn(*args)
            except sqlite3.DatabaseError as exc:
                reason = repair.corruption_reason(exc)
                if reason is None:
                    raise
                error = str(exc)
            finally:
                self._gate.leave()
            if repaired:
                raise StoreUnavailable(f"cache store still damaged after its repair: {error}")
            self._recover(generation, reason, error, operation)
            repaired = True

    def quarantine_usage(self) -> repair.QuarantineUsage:
        """Damaged stores kept under <directory>/quarantine and their bytes (walked when it changed)."""
        try:
            st = os.stat(self.directory / repair.QUARANTINE)
        except OSError:
            return repair.QuarantineUsage(0, 0)
        key = (st.st_ino, st.st_mtime_ns)
        now = time.monotonic()
        with self._lock:
            memo = self._quarantine_memo
        if memo is not None and memo[0] == key and now - memo[1] < 300:
            return memo[2]
        usage = repair.quarantine_usage(self.directory)
        with self._lock:
            self._quarantine_memo = (key, now, usage)
            deleted = [pin for path, pin in self._pins if not path.exists()]
            self._pins = [(path, pin) for path, pin in self._pins if path.exists()]
        for pin in deleted:
            pin.close()  # someone deleted that quarantine: let the disk space go
        return usage

    # --- the public calls: each one guarded (see _guarded) ----------------------------------------

    def get(self, namespace: str, key: str, fingerprint: bytes) -> GetResult:
        """HIT with the value when the stored fingerprint equals `fingerprint`; else STALE or MISS."""
        return self._guarded("get", self._get, namespace, key, fingerprint)

    def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        fingerprint: bytes,
        scopes: Sequence[str] = (),
        ttl: float | None = None,
    ) -> bool:
        """Store an entry; False when it is too large to be worth a place (see MAX_ENTRY_SHARE)."""
        return self._guarded("put", self._put, namespace, key, value, fingerprint, scopes, ttl)

    def invalidate(self, path_prefix: str) -> int:
        """Delete every content/search entry with a scope that contains or lies beneath the prefix."""
        return self._guarded("invalidate", self._invalidate, path_prefix)

    def get_session(self, session_id: str) -> Session | None:
        return self._guarded("session_get", self._get_session, session_id)

    def append_session(
        self,
        session_id: str,
        messages_json: Sequence[str],
        max_messages: int = 0,
        ttl: float | None = None,
    ) -> Session:
        """Append messages atomically; keeps the newest `max_messages` (0 keeps all)."""
        return self._guarded("session_append", self._append_session, session_id, messages_json, max_messages, ttl)

    def delete_session(self, session_id: str) -> bool:
        return self._guarded("session_delete", self._delete_session, session_id)

    def clear(self, namespace: str | None = None) -> int:
        """Remove every entry of one namespace, or of the whole store; returns how many."""
        return self._guarded("clear", self._clear, namespace)

    def stats(self) -> Stats:
        """Live entries and bytes per namespace, hits/misses since start, volume and limit."""
        return self._guarded("stats", self._stats)

    def volume(self) -> int:
        return self._guarded("volume", self._volume_now)

    # --- counters ------------------------------------------------------------------------------

    def _count(self, namespace: str, hit: bool) -> None:
        with self._lock:
            bucket = self._counters.hits if hit else self._counters.misses
            bucket[namespace] += 1

    # --- content and search --------------------------------------------------------------------

    def _get(self, namespace: str, key: str, fingerprint: bytes) -> GetResult:
        """HIT with the value when the stored fingerprint equals `fingerprint`; else STALE or MISS.

        A STALE entry is deleted, but only if it is still stale under the write lock: another
        process may have just replaced it with a fresh one, which must survive.
        """
        check_namespace(namespace, ENTRY_NAMESPACES)
        _check_key(key)
        full = _full_key(namespace, key)
        raw = self._cache.get(full)
        if raw is None:
            self._count(namespace, False)
            return GetResult(MISS)
        try:
            entry = decode_entry(raw)
        except ValueError:
            log.warning("dropping an unreadable cache entry", extra={"namespace": namespace})
            self._cache.delete(full)
            self._count(namespace, False)
            return GetResult(MISS)
        if entry.fingerprint == fingerprint:
            self._count(namespace, True)
            return GetResult(HIT, entry.value)
        with self._cache.transact():
            again = self._cache.get(full)
            if again is not None:
                try:
                    still_stale = decode_entry(again).fingerprint != fingerprint
                except ValueError:
                    still_stale = True
                if still_stale:
                    self._cache.delete(full)
        self._count(namespace, False)
        return GetResult(STALE)

    def _put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        fingerprint: bytes,
        scopes: Sequence[str] = (),
        ttl: float | None = None,
    ) -> bool:
        """Store an entry; False when it is too large to be worth a place (see MAX_ENTRY_SHARE)."""
        check_namespace(namespace, ENTRY_NAMESPACES)
        _check_key(key)
        if len(scopes) > MAX_SCOPES:
            raise InvalidArgument(f"at most {MAX_SCOPES} scopes per entry")
        normal = tuple(dict.fromkeys(normalize_path(s, what="scope") for s in scopes))
        expire = _check_ttl(ttl) or self._ttl[namespace]
        data = encode_entry(fingerprint, normal, value)
        if len(data) > self.max_entry_bytes:
            return False
        self._cache.set(_full_key(namespace, key), data, expire=expire, tag=namespace)
        return True

    def _invalidate(self, path_prefix: str) -> int:
        """Delete every content/search entry with a scope that contains or lies beneath the prefix.

        "" or "." means every entry. Returns how many entries were removed.
        """
        prefix = normalize_path(path_prefix, what="path_prefix")
        doomed = [key for key, scopes in self._scan_scopes() if any(scope_matches(s, prefix) for s in scopes)]
        removed = 0
        # Delete in batches, each one transaction: one commit per batch, and writers from other
        # processes get the lock between batches.
        for start in range(0, len(doomed), 256):
            with self._cache.transact():
                for key in doomed[start : start + 256]:
                    if self._cache.delete(key):
                        removed += 1
        return removed

    # --- sessions ------------------------------------------------------------------------------

    def _get_session(self, session_id: str) -> Session | None:
        check_session_id(session_id)
        raw = self._cache.get(_full_key(SESSIONS, session_id))
        session = self._decode_session(session_id, raw)
        self._count(SESSIONS, session is not None)
        return session

    def _append_session(
        self,
        session_id: str,
        messages_json: Sequence[str],
        max_messages: int = 0,
        ttl: float | None = None,
    ) -> Session:
        """Append messages atomically (read-modify-write under the store's write lock).

        Keeps only the newest `max_messages` (0 keeps all); every append renews the TTL.
        """
        check_session_id(session_id)
        if max_messages < 0:
            raise InvalidArgument("max_messages must be >= 0 (0 keeps every message)")
        expire = _check_ttl(ttl) or self._ttl[SESSIONS]
        full = _full_key(SESSIONS, session_id)
        with self._cache.transact():
            now = time.time()
            current = self._decode_session(session_id, self._cache.get(full))
            messages = list(current.messages) if current else []
            messages.extend(messages_json)
            if max_messages and len(messages) > max_messages:
                messages = messages[-max_messages:]
            session = Session(session_id, messages, current.created if current else now, now)
            body = {"created": session.created, "updated": session.updated, "messages": messages}
            self._cache.set(
                full, json.dumps(body, ensure_ascii=False).encode("utf-8"), expire=expire, tag=SESSIONS
            )
        return session

    def _delete_session(self, session_id: str) -> bool:
        check_session_id(session_id)
        return bool(self._cache.delete(_full_key(SESSIONS, session_id)))

    @staticmethod
    def _decode_session(session_id: str, raw: bytes | None) -> Session | None:
        if raw is None:
            return None
        try:
            body = json.loads(raw)
            return Session(
                session_id, [str(m) for m in body["messages"]], float(body["created"]), float(body["updated"])
            )
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable session record treated as absent")
            return None

    # --- maintenance ---------------------------------------------------------------------------

    def _clear(self, namespace: str | None = None) -> int:
        """Remove every entry of one namespace, or of the whole store; returns how many."""
        if namespace:
            check_namespace(namespace)
            return int(self._cache.evict(namespace))
        return int(self._cache.clear())

    def _stats(self) -> Stats:
        """Live entries and bytes per namespace, hits/misses since start, volume and limit.

        Aggregates come from one read-only SQL query on diskcache's own `Cache` table (its schema
        is stable across diskcache 5.x: key, tag, size, value, expire_time): diskcache has no
        per-tag count. `bytes` is the key plus the value, inline or in its file (`size`).
        Cost is one pass over the table; callers use it per scrape or on request, never per Get.
        """
        now = time.time()
        per_ns = {ns: (0, 0) for ns in NAMESPACES}
        with self._reader() as con:
            rows = con.execute(
                "SELECT tag, COUNT(*),"
                " COALESCE(SUM(size + COALESCE(length(value), 0) + length(key)), 0)"
                " FROM Cache WHERE tag IN (?, ?, ?)"
                " AND (expire_time IS NULL OR expire_time > ?) GROUP BY tag",
                (*NAMESPACES, now),
            ).fetchall()
            for tag, count, size in rows:
                per_ns[tag] = (int(count), int(size))
            volume = self._volume(con)
        with self._lock:
            hits = dict(self._counters.hits)
            misses = dict(self._counters.misses)
        total_hits, total_misses = sum(hits.values()), sum(misses.values())
        lookups = total_hits + total_misses
        return Stats(
            namespaces=[
                NamespaceStats(ns, per_ns[ns][0], per_ns[ns][1], hits[ns], misses[ns]) for ns in NAMESPACES
            ],
            size_limit=self.size_limit,
            volume=volume,
            hit_ratio=(total_hits / lookups) if lookups else 0.0,
            directory=str(self.directory),
        )

    def _volume_now(self) -> int:
        with self._reader() as con:
            return self._volume(con)

    @staticmethod
    def _volume(con: sqlite3.Connection) -> int:
        # The same figure diskcache's Cache.volume() compares with size_limit: database pages
        # plus the bytes of values kept in files.
        (pages,) = con.execute("PRAGMA page_count").fetchone()
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
        row = con.execute("SELECT value FROM Settings WHERE key = 'size'").fetchone()
        return int(pages) * int(page_size) + int(row[0] if row else 0)

    def _reader(self) -> "closing[sqlite3.Connection]":
        """A short-lived read-only connection of our own, usable from any thread.

        Used for scans and aggregates so they never go through (and never bump the LRU clock of)
        diskcache's per-thread connections. WAL mode: readers do not block writers.
        """
        con = sqlite3.connect(self._db_path, timeout=self._timeout, isolation_level=None)
        con.execute("PRAGMA query_only = 1")
        con.execute("PRAGMA mmap_size = 0")  # see the sqlite_mmap_size setting
        return closing(con)

    def _scan_scopes(self) -> Iterator[tuple[str, tuple[str, ...]]]:
        """(diskcache key, scopes) of every content/search entry, reading only each entry's head."""
        with self._reader() as con:
            # Iterate the cursor (one read snapshot, WAL: writers carry on) rather than fetchall:
            # memory stays bounded by one row however large the store is.
            rows = con.execute(
                "SELECT key, filename, substr(value, 1, ?) FROM Cache"
                " WHERE tag IN (?, ?) AND raw = 1",
                (_HEAD_BYTES, *ENTRY_NAMESPACES),
            )
            for key, filename, head in rows:
                try:
                    scopes = self._scopes_of(con, key, filename, head)
                except (OSError, ValueError):
                    continue  # vanished meanwhile, or not ours: nothing to invalidate
                if scopes is not None:
                    yield key, scopes

    def _scopes_of(
        self, con: sqlite3.Connection, key: str, filename: str | None, head: bytes | None
    ) -> tuple[str, ...] | None:
        if filename is not None:
            with open(self._store_dir / filename, "rb") as fh:
                head = fh.read(_HEAD_BYTES)
                parsed = _scopes_from_head(head)
                if isinstance(parsed, int):
                    head += fh.read(parsed - len(head))
                    parsed = _scopes_from_head(head)
        else:
            if head is None:
                return None
            parsed = _scopes_from_head(bytes(head))
            if isinstance(parsed, int):
                row = con.execute(
                    "SELECT substr(value, 1, ?) FROM Cache WHERE key = ? AND raw = 1", (parsed, key)
                ).fetchone()
                if row is None or row[0] is None:
                    return None
                parsed = _scopes_from_head(bytes(row[0]))
        return parsed if isinstance(parsed, tuple) else None
