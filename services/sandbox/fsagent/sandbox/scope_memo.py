"""Reuse a search scope's fingerprint while inotify proves nothing beneath it has changed.

Walking a scope costs one lstat per file and directory (about 4 us each in Python: 4 ms for 1,000
files), which is most of a cached grep's latency. The kernel can tell us instead: every directory
the walk reads gets an inotify watch BEFORE it is listed, and any event in a watched directory
(a child created, deleted, renamed, written, closed after writing, or its attributes changed)
drops every memo whose scope contains that path or lies beneath it. A memo is kept only when no
such event arrived while its walk ran, and is then handed back instead of walking again, until an
event, MAX_AGE seconds, or a reset.

Events are queued by the kernel inside the write/rename/unlink call itself, so draining the queue
before answering sees every change that completed before the call: the answer is the one a walk
made at that moment would give.

Where inotify is not a complete record of changes, the memo does not vouch and the walk runs:
  - a filesystem that is not local (NFS, CIFS, FUSE, Ceph... changes made by other hosts are
    never reported): only LOCAL_FILESYSTEMS, and every directory on the data root's device;
  - a file with several hard links (a write through a link outside the tree reports elsewhere);
  - a directory moved or renamed (watches follow inodes, our path map would be wrong), a queue
    overflow, an unknown watch, an unmount: everything is forgotten and watches start afresh;
  - the scope root replaced behind a still-open handle: its lstat is compared on every reuse.
Writes through a shared memory mapping are not reported by inotify (inotify(7)); MAX_AGE bounds
how long such a write could go unseen, and FSAGENT_CACHE_WATCH=0 turns the memo off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsagent.sandbox.fingerprint import Walk
    from fsagent.sandbox.tools import FpTarget

log = logging.getLogger(__name__)

MAX_AGE = 60.0
MAX_MEMOS = 1024
# More distinct changed paths than this in one drain: drop every memo rather than match each.
MAX_PATHS_PER_DRAIN = 256

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

WATCH_MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name

# Filesystems whose changes all go through this kernel (so inotify hears about every one).
LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "zfs", "bcachefs", "jfs",
     "reiserfs", "overlay"}
)


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem mounted at or above `path`, from /proc/self/mountinfo."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount_point = fields[4].replace("\\040", " ")
        if (real == mount_point or real.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


class _Inotify:
    """One inotify instance (non-blocking); add_watch and read only."""

    _libc: ctypes.CDLL | None = None

    def __init__(self) -> None:
        libc = _Inotify._load()
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._libc is None:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            cls._libc = libc
        return cls._libc

    def add_watch(self, path: str) -> int:
        wd = self._load().inotify_add_watch(self.fd, os.fsencode(path), WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(wd)

    def read(self) -> bytes:
        chunks = []
        while True:
            try:
                data = os.read(self.fd, 256 * 1024)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


@dataclass(slots=True)
class _Entry:
    fingerprint: bytes
    root: tuple[int, int, int, int, int]  # st_dev, st_ino, st_mode, st_mtime_ns, st_ctime_ns of the scope root
    created: float


@dataclass(eq=False, slots=True)
class Ticket:
    """A walk in progress that may become a memo if nothing changes while it runs."""

    key: tuple[str, int | None]
    generation: int
    ok: bool = True
    dirty: bool = False
    watched: set[str] = field(default_factory=set)


def _root_stat(path: str) -> tuple[int, int, int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)


def memo_key(target: FpTarget) -> tuple[str, int | None] | None:
    """Only a directory scope walked at least one level deep is worth a memo."""
    if target.kind != "scope" or target.max_depth == 0:
        return None
    return (target.abs, target.max_depth)


class ScopeMemo:
    """Scope fingerprints proven unchanged by inotify; thread-safe (fingerprints run in threads)."""

    def __init__(self, data_root: str, max_age: float = MAX_AGE, max_memos: int = MAX_MEMOS) -> None:
        self.root = os.path.realpath(data_root)
        self.max_age = max_age
        self.max_memos = max_memos
        self._lock = threading.Lock()
        self._memos: OrderedDict[tuple[str, int | None], _Entry] = OrderedDict()
        self._tickets: set[Ticket] = set()
        self._wd_dir: dict[int, str] = {}
        self._dir_wd: dict[str, int] = {}
        self._generation = 0
        self._inotify: _Inotify | None = None
        self.resets = 0
        self.reason = ""
        fs_type = filesystem_type(self.root)
        try:
            self._device = os.stat(self.root).st_dev
        except OSError:
            self._device = -1
        if fs_type not in LOCAL_FILESYSTEMS:
            self.reason = f"filesystem {fs_type or 'unknown'} is not known to report every change to inotify"
        else:
            try:
                self._inotify = _Inotify()
            except (OSError, AttributeError) as exc:  # no inotify here, or out of instances
                self.reason = f"inotify unavailable: {exc}"

    @property
    def enabled(self) -> bool:
        return self._inotify is not None

    def close(self) -> None:
        with self._lock:
            if self._inotify is not None:
                self._inotify.close()
                self._inotify = None
            self._memos.clear()
            self._wd_dir.clear()
            self._dir_wd.clear()

    # --- answering -----------------------------------------------------------------------------

    def lookup(self, target: FpTarget) -> bytes | None:
        """The scope's fingerprint if a memo proves it unchanged, else None."""
        key = memo_key(target)
        if key is None or self._inotify is None:
            return None
        with self._lock:
            self._drain_locked()
            entry = self._memos.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry.created > self.max_age or _root_stat(target.abs) != entry.root:
                del self._memos[key]
                return None
            self._memos.move_to_end(key)
            return entry.fingerprint

    def ready(self, target: FpTarget) -> bool:
        """Cheap: would lookup() answer (ignoring events not drained yet)?"""
        key = memo_key(target)
        if key is None or self._inotify is None:
            return False
        with self._lock:
            entry = self._memos.get(key)
            return entry is not None and time.monotonic() - entry.created <= self.max_age

    # --- building -------------------------------------------------------------------------------

    def begin(self, target: FpTarget) -> Ticket | None:
        key = memo_key(target)
        if key is None or self._inotify is None:
            return None
        with self._lock:
            self._drain_locked()
            ticket = Ticket(key, self._generation)
            self._tickets.add(ticket)
            return ticket

    def watch(self, ticket: Ticket, directory: str) -> None:
        """Called by the walk BEFORE it lists `directory`: from now on its changes are heard."""
        with self._lock:
            if not ticket.ok or ticket.generation != self._generation or self._inotify is None:
                ticket.ok = False
                return
            try:
                wd = self._inotify.add_watch(directory)
            except OSError as exc:
                # ENOSPC: out of watches (fs.inotify.max_user_watches); the walk still counts.
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.debug("inotify watch failed", extra={"errno": exc.errno})
                ticket.ok = False
                return
            known = self._wd_dir.get(wd)
            if known is not None and known != directory:
                # The same inode under another path: a directory moved without us hearing of it.
                self._reset_locked("a watched directory moved")
                ticket.ok = False
                return
            self._wd_dir[wd] = directory
            self._dir_wd[directory] = wd

    def commit(self, ticket: Ticket, walk: Walk, target: FpTarget) -> bool:
        """Keep the walk's fingerprint as a memo if nothing changed while it ran."""
        with self._lock:
            self._drain_locked()  # while the ticket is still registered: events mark it dirty
            self._tickets.discard(ticket)
            if self._inotify is None:
                return False
            if (
                not ticket.ok or ticket.dirty or ticket.generation != self._generation
                or walk.hard_links or walk.devices - {self._device}
            ):
                return False
            root = _root_stat(target.abs)
            if root is None:
                return False
            self._memos[ticket.key] = _Entry(walk.fingerprint, root, time.monotonic())
            self._memos.move_to_end(ticket.key)
            while len(self._memos) > self.max_memos:
                self._memos.popitem(last=False)
            return True

    def abandon(self, ticket: Ticket) -> None:
        with self._lock:
            self._tickets.discard(ticket)

    # --- events ----------------------------------------------------------------------------------

    def drain(self) -> None:
        with self._lock:
            self._drain_locked()

    def _reset_locked(self, why: str) -> None:
        """Forget every memo and watch, and start a new inotify instance."""
        self.resets += 1
        log.debug("scope memo reset", extra={"reason": why})
        self._memos.clear()
        for ticket in self._tickets:
            ticket.dirty = True
        self._wd_dir.clear()
        self._dir_wd.clear()
        self._generation += 1
        if self._inotify is not None:
            self._inotify.close()
            try:
                self._inotify = _Inotify()
            except OSError as exc:
                self._inotify = None
                self.reason = f"inotify unavailable: {exc}"

    def _drain_locked(self) -> None:
        if self._inotify is None:
            return
        data = self._inotify.read()
        if not data:
            return
        changed: set[str] = set()
        offset, size = 0, len(data)
        while offset + _EVENT.size <= size:
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw_name = data[offset + _EVENT.size : offset + _EVENT.size + length].split(b"\0", 1)[0]
            offset += _EVENT.size + length
            if mask & (IN_Q_OVERFLOW | IN_UNMOUNT | IN_MOVE_SELF) or (
                mask & IN_ISDIR and mask & (IN_MOVED_FROM | IN_MOVED_TO)
            ):
                self._reset_locked("overflow, unmount or a directory moved")
                return
            directory = self._wd_dir.get(wd)
            if directory is None:
                if mask & IN_IGNORED:
                    continue  # a watch we already dropped
                self._reset_locked("event for an unknown watch")
                return
            if mask & (IN_IGNORED | IN_DELETE_SELF):
                changed.add(directory)
                if mask & IN_IGNORED:
                    self._wd_dir.pop(wd, None)
                    if self._dir_wd.get(directory) == wd:
                        del self._dir_wd[directory]
                continue
            changed.add(directory + "/" + os.fsdecode(raw_name) if raw_name else directory)
        if changed:
            self._invalidate_locked(changed)

    def _invalidate_locked(self, changed: set[str]) -> None:
        if len(changed) > MAX_PATHS_PER_DRAIN:
            self._memos.clear()
            for ticket in self._tickets:
                ticket.dirty = True
            return
        prefixes = [(path, path + "/") for path in changed]

        def touched(scope: str) -> bool:
            scope_slash = scope + "/"
            for path, path_slash in prefixes:
                if scope == path or path.startswith(scope_slash) or scope.startswith(path_slash):
                    return True
            return False

        for key in [k for k in self._memos if touched(k[0])]:
            del self._memos[key]
        for ticket in self._tickets:
            if not ticket.dirty and touched(ticket.key[0]):
                ticket.dirty = True
