"""The fingerprint of what a tool call reads, taken BEFORE the tool runs (ARCHITECTURE.md, cache model).

A cached result is served only while the fingerprint taken now equals the stored one. Taking it
before the run means a write during the run leaves an entry whose fingerprint no longer matches
the disk, so it can never be served stale.

Per entry: (path, type, inode, size, mtime_ns, ctime_ns, mode). ctime cannot be set from user
space, so a same-size rewrite whose mtime is put back with utime still changes the tuple. A
file's content hash (sha256) is added when its mtime is within RACY_SECONDS of now or in the
future ("racy": a second write within the timestamp granularity would leave the tuple
unchanged), and, for a single-file target, when the file is small (cheap). A racy file too large
to hash cheaply (> MAX_HASH_BYTES) makes the fingerprint "unstable": the call is not cached.

A search scope covers every file AND directory beneath it (a directory's own inode, size and
times change when an entry is added, removed or renamed in it), without following symlinks and
without a count cap, down to the depth the tool can see: unlimited for grep, the max_depth of
find/tree, 1 for ls. The fingerprint is sha256 over the sorted entries.

`compute()` always walks. `fpmemo.Memo` can prove with inotify that a walked scope has not changed
since, and then hands back the walk's fingerprint without walking again.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from fsagent.sandbox.tools import FpTarget

if TYPE_CHECKING:
    from fsagent.sandbox.scope_memo import ScopeMemo

RACY_SECONDS = 2.0
SMALL_FILE_BYTES = 64 * 1024
# A racy file bigger than this is not hashed: the call is not cached instead (hashing a large
# file being written on every call would cost more than the tool).
MAX_HASH_BYTES = 8 * 1024 * 1024
VERSION = b"fsagent-fp-v2"
_MARSHAL_VERSION = 2

_S_IFMT = 0o170000
_S_IFDIR = stat.S_IFDIR
_S_IFREG = stat.S_IFREG


class Unstable(Exception):
    """The inputs cannot be fingerprinted cheaply right now (a large file being written)."""


@dataclass(slots=True)
class Walk:
    """One walk's result: the fingerprint and what the memo needs to know about the walk."""

    fingerprint: bytes
    entries: int = 0
    # Every directory whose listing the walk read, with its st_dev (the memo watches them).
    directories: list[str] = field(default_factory=list)
    devices: set[int] = field(default_factory=set)
    # A regular file with several hard links: a write through another link is not reported
    # by inotify on this tree, so the memo must not vouch for such a scope.
    hard_links: bool = False
    seconds: float = 0.0


def _hash_file(path: str, limit: int | None = None) -> str:
    limit = MAX_HASH_BYTES if limit is None else limit
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"unreadable:{exc.errno}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "notreg"
        if st.st_size > limit:
            raise Unstable(path)
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(1 << 20, left))
            if not chunk:
                break
            left -= len(chunk)
            digest.update(chunk)
        if left <= 0:
            raise Unstable(path)  # grew past the limit while we read it
    except OSError as exc:
        return f"unreadable:{exc.errno}"
    finally:
        os.close(fd)
    return digest.hexdigest()


def _kind(mode: int) -> str:
    fmt = mode & _S_IFMT
    if fmt == _S_IFREG:
        return "f"
    if fmt == _S_IFDIR:
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


def _row(rel: str, path: str, st: os.stat_result, racy_after_ns: int, hash_small: bool) -> tuple:
    mode = st.st_mode
    content = ""
    if mode & _S_IFMT == _S_IFREG and (
        st.st_mtime_ns >= racy_after_ns or (hash_small and st.st_size <= SMALL_FILE_BYTES)
    ):
        content = _hash_file(path)
    return (rel, _kind(mode), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, mode, content)


def _walk_target(
    target: FpTarget, racy_after_ns: int, rows: list[tuple], result: Walk,
    on_directory: Callable[[str], None] | None,
) -> None:
    try:
        st = os.lstat(target.abs)
    except OSError:
        rows.append((target.rel, "absent"))
        return
    result.devices.add(st.st_dev)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        result.hard_links = True
    rows.append(_row(target.rel, target.abs, st, racy_after_ns, hash_small=target.kind != "scope"))
    if target.kind != "scope" or not stat.S_ISDIR(st.st_mode):
        return
    max_depth = target.max_depth
    append = rows.append
    directories = result.directories
    devices = result.devices
    # (directory path, its name relative to the root, its depth)
    stack: list[tuple[str, str, int]] = [(target.abs, target.rel, 0)]
    while stack:
        path, rel, depth = stack.pop()
        if max_depth is not None and depth >= max_depth:
            continue
        directories.append(path)
        if on_directory is not None:
            on_directory(path)  # before listing it: the memo must hear of any later change
        prefix = rel + "/"
        try:
            with os.scandir(path) as it:
                for entry in it:
                    child_rel = prefix + entry.name
                    try:
                        est = entry.stat(follow_symlinks=False)
                    except OSError:
                        append((child_rel, "vanished"))
                        continue
                    mode = est.st_mode
                    fmt = mode & _S_IFMT
                    if fmt == _S_IFREG:
                        content = _hash_file(entry.path) if est.st_mtime_ns >= racy_after_ns else ""
                        append((child_rel, "f", est.st_ino, est.st_size, est.st_mtime_ns, est.st_ctime_ns, mode,
                                content))
                        if est.st_nlink > 1:
                            result.hard_links = True
                    elif fmt == _S_IFDIR:
                        append((child_rel, "d", est.st_ino, est.st_size, est.st_mtime_ns, est.st_ctime_ns, mode, ""))
                        devices.add(est.st_dev)
                        stack.append((entry.path, child_rel, depth + 1))
                    else:
                        append((child_rel, _kind(mode), est.st_ino, est.st_size, est.st_mtime_ns, est.st_ctime_ns,
                                mode, ""))
        except OSError as exc:
            append((rel, f"unlistable:{exc.errno}"))


def walk(
    targets: Iterable[FpTarget], now_ns: int | None = None, on_directory: Callable[[str], None] | None = None
) -> Walk:
    """Walk the targets and fingerprint them (blocking: run it in a thread).

    `on_directory(path)` is called before each directory is listed. Raises Unstable when a racy
    file is too large to hash.
    """
    started = time.perf_counter()
    now_ns = time.time_ns() if now_ns is None else now_ns
    racy_after_ns = now_ns - int(RACY_SECONDS * 1e9)
    rows: list[tuple] = []
    result = Walk(b"")
    for target in targets:
        _walk_target(target, racy_after_ns, rows, result, on_directory)
    rows.sort()
    # marshal format 2 (no back-references, so the bytes depend only on the values) is an
    # unambiguous, deterministic encoding of tuples of str and int, and 5x faster than repr.
    result.fingerprint = hashlib.sha256(VERSION + marshal.dumps(rows, _MARSHAL_VERSION)).digest()
    result.entries = len(rows)
    result.seconds = time.perf_counter() - started
    return result


def compute(targets: Iterable[FpTarget], now_ns: int | None = None) -> bytes:
    """The fingerprint (32 bytes) of the targets; blocking, run it in a thread."""
    return walk(targets, now_ns).fingerprint


@dataclass(frozen=True, slots=True)
class Taken:
    """A fingerprint as the executor sees it: None when unstable, and what producing it cost."""

    fingerprint: bytes | None
    seconds: float
    walked: bool  # False: a memo answered without walking
    entries: int = 0


class Fingerprinter:
    """walk() plus, when given one, a ScopeMemo that spares the walk of an unchanged scope."""

    def __init__(self, memo: ScopeMemo | None = None) -> None:
        self.memo = memo if memo is not None and memo.enabled else None

    def cheap(self, targets: Sequence[FpTarget]) -> bool:
        """True when no target needs a walk beyond one level of entries, or a memo is ready."""
        scopes = [t for t in targets if t.kind == "scope" and t.max_depth != 0]
        if not scopes:
            return True
        return self.memo is not None and len(scopes) == 1 and len(targets) == 1 and self.memo.ready(scopes[0])

    def take(self, targets: Sequence[FpTarget]) -> Taken:
        """The fingerprint of the targets (blocking: run it in a thread)."""
        started = time.perf_counter()
        memo = self.memo if len(targets) == 1 else None
        ticket = None
        if memo is not None:
            remembered = memo.lookup(targets[0])
            if remembered is not None:
                return Taken(remembered, time.perf_counter() - started, walked=False)
            ticket = memo.begin(targets[0])
        try:
            on_directory = (lambda path: memo.watch(ticket, path)) if memo is not None and ticket is not None else None
            result = walk(targets, on_directory=on_directory)
        except Unstable:
            if ticket is not None and memo is not None:
                memo.abandon(ticket)
            return Taken(None, time.perf_counter() - started, walked=True)
        if ticket is not None and memo is not None:
            memo.commit(ticket, result, targets[0])
        return Taken(result.fingerprint, time.perf_counter() - started, walked=True, entries=result.entries)

    def close(self) -> None:
        if self.memo is not None:
            self.memo.close()
