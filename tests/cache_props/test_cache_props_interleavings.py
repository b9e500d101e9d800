"""Property: through the cache, every answer equals running the tool at that moment.

Hypothesis interleaves file creation, rewrites (also same-size rewrites with the mtime put back),
appends, deletions, renames of files and directories, mkdir, in-root symlinks and tool calls.
Each call goes through two sandboxes sharing one cache service (one reusing scope fingerprints
under inotify, one walking every time), twice in a row, and every answer is compared with the
tool run directly, without any cache, at that moment. After every change the last few distinct
calls are asked again, so each change lands between two identical questions. The data root and the cache service live
across examples, so paths, inodes and keys are reused with other contents all the time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.cache_props.conftest import Stack
from tests.cache_props.harness import diff, same_answer

# A small universe, so that changes and calls keep meeting the same paths.
DIRS = [".", "a", "a/b"]
NAMES = ["x.txt", "y.md"]
WORDS = ["alpha", "beta", "gamma", "delta"]
FILE_TOOLS = ("cat", "head", "tail", "preview", "wc")
RECHECK = 4

dirs = st.sampled_from(DIRS)
files = st.tuples(dirs, st.sampled_from(NAMES)).map(lambda t: t[1] if t[0] == "." else f"{t[0]}/{t[1]}")
texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=6).map(lambda ws: " ".join(ws) + "\n")

calls = st.one_of(
    st.tuples(st.just("call"), st.sampled_from(["cat", "head", "tail", "preview"]), files),
    st.tuples(st.just("call"), st.just("wc"), st.lists(files, min_size=1, max_size=3)),
    st.tuples(st.just("call"), st.just("grep"), dirs, st.sampled_from(WORDS)),
    st.tuples(st.just("call"), st.sampled_from(["find", "ls", "tree"]), dirs),
)
changes = st.one_of(
    st.tuples(st.just("write"), files, texts),
    st.tuples(st.just("same_size"), files),
    st.tuples(st.just("append"), files, st.sampled_from(WORDS)),
    st.tuples(st.just("delete"), files),
    st.tuples(st.just("rmdir"), st.sampled_from(DIRS[1:])),
    st.tuples(st.just("rename"), files, files),
    st.tuples(st.just("rename_dir"), st.sampled_from(DIRS[1:]), st.sampled_from(["c", "a/e"])),
    st.tuples(st.just("mkdir"), st.sampled_from(DIRS[1:] + ["c", "a/e"])),
    st.tuples(st.just("symlink"), files, files),
)
# About as many calls as changes: every change is likely to sit between two identical calls.
operations = st.one_of(calls, calls, changes)


def reset(root: Path) -> None:
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (root / "a" / "b").mkdir(parents=True)
    (root / "x.txt").write_text("alpha beta\n")
    (root / "a" / "y.md").write_text("gamma\nalpha\n")
    (root / "a" / "b" / "x.txt").write_text("delta delta\n")


def apply(root: Path, op: tuple[Any, ...]) -> None:
    """One change behind the sandbox's back; impossible ones (missing source...) do nothing."""
    kind = op[0]
    try:
        if kind == "write":
            path = root / op[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.is_dir():
                return
            path.write_text(op[2])
        elif kind == "same_size":
            path = root / op[1]
            if not path.is_file() or path.is_symlink():
                return
            old = path.read_bytes()
            st_ = path.stat()
            new = bytes(reversed(old)) if old != bytes(reversed(old)) else old.swapcase()
            if new == old:
                new = b"Z" * len(old)
            with open(path, "r+b") as fh:  # same inode, same size, other bytes
                fh.write(new)
            os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))  # and the old mtime back
        elif kind == "append":
            path = root / op[1]
            if path.is_file() and not path.is_symlink():
                with open(path, "a") as fh:
                    fh.write(op[2] + "\n")
        elif kind == "delete":
            path = root / op[1]
            if path.is_symlink() or path.is_file():
                path.unlink()
        elif kind == "rmdir":
            path = root / op[1]
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
        elif kind == "rename":
            src, dst = root / op[1], root / op[2]
            if (src.is_file() or src.is_symlink()) and dst.parent.is_dir() and not dst.is_dir():
                os.replace(src, dst)
        elif kind == "rename_dir":
            src, dst = root / op[1], root / op[2]
            if src.is_dir() and not src.is_symlink() and dst.parent.is_dir() and not dst.exists() \
                    and not str(dst).startswith(str(src) + "/"):
                os.rename(src, dst)
        elif kind == "mkdir":
            (root / op[1]).mkdir(parents=True, exist_ok=True)
        elif kind == "symlink":
            link, target = root / op[1], root / op[2]
            if link.parent.is_dir() and not os.path.lexists(link) and link != target:
                os.symlink(os.path.relpath(target, link.parent), link)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError):
        pass  # the universe is small and ops are random: some cannot apply


def call_args(op: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    tool = op[1]
    if tool in ("cat", "preview"):
        return tool, {"path": op[2]}
    if tool in ("head", "tail"):
        return tool, {"path": op[2], "lines": 2}
    if tool == "wc":
        return tool, {"paths": op[2]}
    if tool == "grep":
        return tool, {"pattern": op[3], "path": op[2]}
    if tool == "find":
        return tool, {"path": op[2], "name": "*.txt"}
    return tool, {"path": op[2]}


# The patterns that broke the earlier cache, always tried first.
@example(ops=[("call", "cat", "x.txt"), ("same_size", "x.txt"), ("call", "cat", "x.txt")])
@example(ops=[("call", "grep", ".", "beta"), ("write", "x.txt", "alpha gamma\n"), ("call", "grep", ".", "beta")])
@example(ops=[("call", "grep", ".", "beta"), ("same_size", "a/b/x.txt"), ("call", "grep", ".", "beta")])
@example(ops=[("call", "ls", "a"), ("symlink", "a/x.txt", "x.txt"), ("call", "ls", "a")])
@example(ops=[("call", "tree", "."), ("rename_dir", "a/b", "c"), ("call", "tree", ".")])
@example(ops=[("call", "find", "a"), ("mkdir", "a/e"), ("write", "a/e/x.txt", "beta\n"), ("call", "find", "a")])
@example(ops=[("call", "wc", ["x.txt", "a/y.md"]), ("append", "a/y.md", "beta"), ("call", "wc", ["x.txt", "a/y.md"])])
@example(ops=[("call", "tail", "a/x.txt"), ("write", "a/x.txt", "beta\n"), ("call", "tail", "a/x.txt")])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(st.lists(operations, min_size=1, max_size=25))
def test_cached_answers_equal_the_tool_now(stack: Stack, ops: list[tuple[Any, ...]]) -> None:
    root = stack.watching.root
    reset(root)
    recent: list[tuple[Any, ...]] = []  # the last distinct calls: asked again after every change
    for op in ops:
        if op[0] == "call":
            check(stack, op, ops)
            recent = [c for c in recent if c != op][-(RECHECK - 1):] + [op]
        else:
            apply(root, op)
            for call in recent:
                check(stack, call, ops)


def check(stack: Stack, op: tuple[Any, ...], ops: list[tuple[Any, ...]]) -> None:
    tool, args = call_args(op)
    now = stack.loop.run(stack.watching.reference(tool, **args))
    for sandbox in stack.sandboxes:
        for attempt in range(2):
            answer = stack.loop.run(sandbox.execute(tool, **args))
            assert same_answer(answer, now), f"{tool} {args} attempt {attempt} after {ops}: {diff(answer, now)}"
            if attempt == 1 and tool in FILE_TOOLS and not now.error_code:
                # Nothing changed since the first attempt: a file read is served from the cache.
                assert answer.cached, f"{tool} {args} not cached on the second identical call"
