"""Run one binary (rg, grep, find) confined and capped; never through a shell.

The child gets: cwd = the data root, stdin = /dev/null, an environment of only PATH and
LC_ALL=C.UTF-8, its own session (so the whole process group can be killed), and rlimits set in the
child before it execs the tool (CPU seconds, address space, no file writes, few open files, few
processes). stdout is read incrementally up to a byte cap; past it, or past the timeout, the
process group is killed.

How the rlimits get into the child: through util-linux `prlimit` (argv `prlimit --cpu=.. --as=..
-- /usr/bin/rg ...`), which sets them on itself and execs the tool. That way no Python code runs
in the forked child: a `preexec_fn` forces a real fork() of this multi-threaded gRPC process and
runs Python's and gRPC's at-fork handlers in the child, which was measured to kill children with
SIGSEGV now and then. When prlimit is missing, `preexec_fn` (setrlimit only) is the fallback, with
gRPC's fork handlers turned off (see fsagent/sandbox/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
CHILD_ENV = {"PATH": SAFE_PATH, "LC_ALL": "C.UTF-8"}
ADDRESS_SPACE_BYTES = 1 << 30  # 1 GiB
MAX_OPEN_FILES = 256
MAX_PROCESSES = 1024  # per uid (threads count, all processes of the uid): a fork-bomb guard only
MAX_STDERR_BYTES = 8 * 1024
READ_CHUNK = 64 * 1024


def which(name: str) -> str | None:
    """Absolute path of a binary on the child's PATH (never the server's own PATH)."""
    return shutil.which(name, path=SAFE_PATH)


@dataclass(frozen=True, slots=True)
class Limits:
    cpu_seconds: int
    address_space: int = ADDRESS_SPACE_BYTES
    open_files: int = MAX_OPEN_FILES
    processes: int = MAX_PROCESSES

    @classmethod
    def for_timeout(cls, timeout: float) -> "Limits":
        return cls(cpu_seconds=max(1, math.ceil(timeout) + 1))


PRLIMIT = shutil.which("prlimit", path=SAFE_PATH + ":/usr/sbin:/sbin")


def _prlimit_prefix(limits: Limits) -> list[str]:
    assert PRLIMIT is not None
    return [
        PRLIMIT,
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--as={limits.address_space}",
        "--fsize=0",
        f"--nofile={limits.open_files}",
        f"--nproc={limits.processes}",
        "--core=0",
        "--",
    ]


def _preexec(limits: Limits):  # type: ignore[no-untyped-def]
    # Values are bound here, in the parent: the child only makes C calls before exec.
    settings = (
        (resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)),
        (resource.RLIMIT_AS, (limits.address_space, limits.address_space)),
        (resource.RLIMIT_FSIZE, (0, 0)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
        (resource.RLIMIT_NPROC, (limits.processes, limits.processes)),
        (resource.RLIMIT_CORE, (0, 0)),
    )
    setrlimit = resource.setrlimit

    def apply() -> None:
        for which_, value in settings:
            try:
                setrlimit(which_, value)
            except (ValueError, OSError):
                # A hard limit already lower than ours: keep the lower one.
                pass

    return apply


@dataclass(slots=True)
class RunResult:
    stdout: bytes
    stderr: bytes
    exit_code: int | None  # None when killed by us (timeout or cap)
    truncated: bool  # stdout cut at the cap
    omitted_bytes: int  # bytes of stdout read but not kept (a lower bound when omitted_exact is False)
    omitted_exact: bool
    timed_out: bool
    duration: float


async def _reap(proc: asyncio.subprocess.Process, *, stderr_too: bool = True) -> None:
    """Kill what is left, drain the pipes to EOF, and wait for the exit.

    Draining matters: a stream we stopped reading (cap, enough results) has its transport paused,
    so EOF is never seen, and Process.wait() only returns once every pipe is closed.
    """
    _kill_group(proc)
    streams = [proc.stdout, proc.stderr] if stderr_too else [proc.stdout]

    async def drain(stream: asyncio.StreamReader) -> None:
        while await stream.read(READ_CHUNK):
            pass

    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(drain(s) for s in streams if s is not None)), 2)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 5)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # killpg only: Process.kill() goes through Popen.send_signal(), which poll()s and may reap the
    # child behind asyncio's child watcher (the exit status is then lost: "unknown child").
    # The child leads its own session, so its process group id is its pid; until the watcher has
    # reaped it (returncode set) that id cannot have been reused.
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _spawn(argv: Sequence[str], cwd: str, limits: Limits) -> asyncio.subprocess.Process:
    if PRLIMIT:
        full, preexec = [*_prlimit_prefix(limits), *argv], None
    else:
        full, preexec = list(argv), _preexec(limits)
    return await asyncio.create_subprocess_exec(
        *full,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(CHILD_ENV),
        start_new_session=True,
        close_fds=True,
        preexec_fn=preexec,
        limit=READ_CHUNK,
    )


async def _drain_stderr(stream: asyncio.StreamReader, sink: bytearray) -> None:
    while True:
        chunk = await stream.read(READ_CHUNK)
        if not chunk:
            return
        room = MAX_STDERR_BYTES - len(sink)
        if room > 0:
            sink += chunk[:room]


async def run(
    argv: Sequence[str],
    *,
    cwd: str,
    timeout: float,
    max_output_bytes: int,
    limits: Limits | None = None,
) -> RunResult:
    """Run argv to completion, the cap, or the timeout, whichever comes first."""
    limits = limits or Limits.for_timeout(timeout)
    started = time.perf_counter()
    proc = await _spawn(argv, cwd, limits)
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    err = bytearray()
    state = {"truncated": False, "omitted": 0}

    async def read_stdout() -> None:
        assert proc.stdout is not None
        while True:
            chunk = await proc.stdout.read(READ_CHUNK)
            if not chunk:
                return
            if state["truncated"]:
                # Killed already: drain what was in flight, to EOF (wait() needs the pipe closed).
                state["omitted"] += len(chunk)
                continue
            room = max_output_bytes - len(out)
            if len(chunk) <= room:
                out.extend(chunk)
                continue
            out.extend(chunk[:room])
            state["truncated"] = True
            state["omitted"] = len(chunk) - room
            _kill_group(proc)

    async def body() -> None:
        await asyncio.gather(read_stdout(), _drain_stderr(proc.stderr, err))  # type: ignore[arg-type]
        await proc.wait()

    timed_out = False
    try:
        await asyncio.wait_for(body(), timeout)
    except asyncio.TimeoutError:
        timed_out = True
    finally:
        # Timeout, cap, or our caller cancelled: no child outlives the call.
        await _reap(proc)
    truncated = bool(state["truncated"])
    exit_code = None if (timed_out or truncated) else proc.returncode
    return RunResult(
        stdout=bytes(out),
        stderr=bytes(err),
        exit_code=exit_code,
        truncated=truncated,
        omitted_bytes=int(state["omitted"]),
        omitted_exact=False,
        timed_out=timed_out,
        duration=time.perf_counter() - started,
    )


async def stream_lines(
    argv: Sequence[str],
    *,
    cwd: str,
    timeout: float,
    max_line_bytes: int = 64 * 1024,
    limits: Limits | None = None,
    status: dict[str, object] | None = None,
) -> AsyncIterator[bytes]:
    """Yield stdout lines (without the newline) as they come; same confinement as run().

    Over-long lines are cut to max_line_bytes. Closing the generator early (enough results, or the
    client went away) or hitting the timeout kills the process group. When given, `status` is
    filled with exit_code, timed_out and stderr once the child is gone.
    """
    limits = limits or Limits.for_timeout(timeout)
    proc = await _spawn(argv, cwd, limits)
    assert proc.stdout is not None and proc.stderr is not None
    err = bytearray()
    err_task = asyncio.ensure_future(_drain_stderr(proc.stderr, err))
    deadline = time.monotonic() + timeout
    timed_out = False
    pending = bytearray()
    skipping = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            try:
                chunk = await asyncio.wait_for(proc.stdout.read(READ_CHUNK), remaining)
            except asyncio.TimeoutError:
                timed_out = True
                break
            if not chunk:
                if pending and not skipping:
                    yield bytes(pending)
                break
            start = 0
            while True:
                newline = chunk.find(b"\n", start)
                piece = chunk[start:] if newline < 0 else chunk[start:newline]
                if not skipping:
                    room = max_line_bytes - len(pending)
                    pending += piece[: max(room, 0)]
                    if len(piece) > room:
                        skipping = True  # drop the rest of this line
                if newline < 0:
                    break
                line = bytes(pending)
                pending.clear()
                skipping = False
                yield line
                start = newline + 1
    finally:
        await _reap(proc, stderr_too=False)  # err_task is still reading stderr
        with contextlib.suppress(Exception):
            await asyncio.wait_for(err_task, 1)
        if status is not None:
            status.update(exit_code=proc.returncode, timed_out=timed_out, stderr=bytes(err))
