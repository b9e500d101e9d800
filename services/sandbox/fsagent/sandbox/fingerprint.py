"""The fingerprint of what a tool call reads, taken BEFORE the tool runs (ARCHITECTURE.md, cache model).

A cached result is served only while the fingerprint taken now equals the stored one. Taking it
before the run means a write during the run leaves an entry whose fingerprint no longer matches
the disk, so it can never be served stale.

Per entry: (type, inode, size, mtime_ns, ctime_ns). A file's content hash (sha256) is added when
its mtime is within RACY_SECONDS of now or in the future ("racy": a second write within the
timestamp granularity would leave the tuple unchanged), and, for a single-file target, when the
file is small (cheap). A search scope covers every file AND directory beneath it (os.scandir, no
symlink followed, no count cap) down to the depth the tool can see: unlimited for grep, the
max_depth of find/tree, 1 for ls. The fingerprint is the sha256 digest over the sorted entries.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from typing import Iterable

from fsagent.sandbox.tools import FpTarget

RACY_SECONDS = 2.0
SMALL_FILE_BYTES = 64 * 1024
VERSION = b"fsagent-fp-v1"


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"unreadable:{exc.errno}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "notreg"
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            digest.update(chunk)
    except OSError as exc:
        return f"unreadable:{exc.errno}"
    finally:
        os.close(fd)
    return digest.hexdigest()


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


def _entry(rel: str, path: str, st: os.stat_result, racy_after_ns: int, hash_small: bool) -> str:
    kind = _kind(st.st_mode)
    content = ""
    if kind == "f" and (st.st_mtime_ns >= racy_after_ns or (hash_small and st.st_size <= SMALL_FILE_BYTES)):
        content = _hash_file(path)
    return f"{rel}\0{kind}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_mode}\0{content}"


def _walk(target: FpTarget, racy_after_ns: int, out: list[str]) -> None:
    try:
        st = os.lstat(target.abs)
    except OSError:
        out.append(f"{target.rel}\0absent")
        return
    out.append(_entry(target.rel, target.abs, st, racy_after_ns, hash_small=target.kind != "scope"))
    if target.kind != "scope" or not stat.S_ISDIR(st.st_mode):
        return
    max_depth = target.max_depth
    # (directory path, its name relative to the target, its depth)
    stack: list[tuple[str, str, int]] = [(target.abs, target.rel, 0)]
    while stack:
        path, rel, depth = stack.pop()
        if max_depth is not None and depth >= max_depth:
            continue
        try:
            with os.scandir(path) as it:
                for entry in it:
                    child_rel = f"{rel}/{entry.name}"
                    try:
                        est = entry.stat(follow_symlinks=False)
                    except OSError:
                        out.append(f"{child_rel}\0vanished")
                        continue
                    out.append(_entry(child_rel, entry.path, est, racy_after_ns, hash_small=False))
                    if stat.S_ISDIR(est.st_mode):
                        stack.append((entry.path, child_rel, depth + 1))
        except OSError as exc:
            out.append(f"{rel}\0unlistable:{exc.errno}")


def compute(targets: Iterable[FpTarget], now_ns: int | None = None) -> bytes:
    """The fingerprint (32 bytes) of the targets; blocking, run it in a thread."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    racy_after_ns = now_ns - int(RACY_SECONDS * 1e9)
    entries: list[str] = []
    for target in targets:
        _walk(target, racy_after_ns, entries)
    entries.sort()
    digest = hashlib.sha256(VERSION)
    for item in entries:
        digest.update(item.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.digest()


async def fingerprint(targets: Iterable[FpTarget]) -> bytes:
    """compute() off the event loop: a scope can hold many entries."""
    return await asyncio.to_thread(compute, list(targets))
