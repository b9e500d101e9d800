"""Run one binary (rg, grep, find) confined and capped; never through a shell.

The child gets: cwd = the data root, stdin = /dev/null, an environment of only PATH and
LC_ALL=C.UTF-8, its own session (so the whole process group can be killed), and rlimits (CPU
seconds, address space, no file writes, few open files, few processes). stdout is read
incrementally up to a byte cap; past it, or past the timeout, the process group is killed.

Who starts the child is a `Launcher`:
- the confined spawner (fsagent/sandbox/spawner.py, started once by isolation.py): a small
  single-threaded process already inside bubblewrap / Landlock / the unprivileged uid; it forks
  each tool and sets the rlimits in the child. The default in the service.
- `DirectLauncher` (here), the fallback: `prlimit [setpriv] tool` started from this process.
  util-linux `prlimit` sets the rlimits on itself and execs the tool, so no Python code runs in
  the forked child: a `preexec_fn` forces a real fork() of this multi-threaded gRPC process and
  runs Python's and gRPC's at-fork handlers in the child, which was measured to kill children
  with SIGSEGV now and then. When prlimit is missing, `preexec_fn` (setrlimit only) is the last
  resort, with gRPC's fork handlers turned off (see fsagent/sandbox/__init__.py).
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
from typing import Any, AsyncIterator, Protocol, Sequence

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
SETPRIV = shutil.which("setpriv", path=SAFE_PATH + ":/usr/sbin:/sbin")


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


def rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) triples, as the spawner and the preexec fallback set them."""
    return [
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
        (resource.RLIMIT_AS, limits.address_space, limits.address_space),
        (resource.RLIMIT_FSIZE, 0, 0),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_NPROC, limits.processes, limits.processes),
        (resource.RLIMIT_CORE, 0, 0),
    ]


def inherited_rlimits(limits: Limits | None = None) -> list[tuple[int, int, int]]:
    """The limits a long-lived parent (the spawner) can carry itself: all but CPU seconds."""
    limits = limits or Limits(cpu_seconds=1)
    return [item for item in rlimits(limits) if item[0] != resource.RLIMIT_CPU]


def _preexec(limits: Limits):  # type: ignore[no-untyped-def]
    # Values are bound here, in the parent: the child only makes C calls before exec.
    settings = tuple((which_, (soft, hard)) for which_, soft, hard in rlimits(limits))
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


class PipeReader:
    """The read end of a child's stdout or stderr pipe, read without a transport.

    Tools like rg write once per file, so a big search arrives as hundreds of small writes; a
    reader woken for each costs more CPU than the search itself on a small machine. So once a call
    has run for a while (COALESCE_AFTER_SECONDS), after a short read this one waits a little before
    asking again (the fd is not watched meanwhile) and lets the pipe buffer fill: 5% of the call's
    age, at most 10 ms. A quick call is never slowed; a long one is read in a few dozen large
    reads. After a full read it reads again at once (more is waiting).
    """

    COALESCE_AFTER_SECONDS = 0.010
    MAX_WAIT, WAIT_SHARE = 0.010, 0.05

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self.reads = 0
        self.started = time.monotonic()
        self.last_full = False
        self.eof = False

    def _try_read(self, size: int) -> bytes | None:
        if self.fd is None:
            return b""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return None

    async def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (READ_CHUNK when negative); b"" at EOF (or once closed)."""
        size = READ_CHUNK if size < 0 else size
        if self.eof:
            return b""
        age = time.monotonic() - self.started
        if age > self.COALESCE_AFTER_SECONDS and not self.last_full:
            await asyncio.sleep(min(self.MAX_WAIT, age * self.WAIT_SHARE))
        data = self._try_read(size)
        while data is None:
            loop = asyncio.get_running_loop()
            ready = loop.create_future()
            fd = self.fd
            assert fd is not None
            loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            data = self._try_read(size)
        self.reads += 1
        self.last_full = len(data) == size
        self.eof = not data
        return data

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def pipe_pair() -> tuple[PipeReader, int]:
    """A pipe for a child's output: (our reader, the write end to hand to the child)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    return PipeReader(read_end), write_end


class Child(Protocol):
    """A started tool process: its output streams, its exit, and a kill for its process group."""

    stdout: PipeReader
    stderr: PipeReader

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None:
        """SIGKILL to the whole process group (the child leads its own session); idempotent."""

    async def wait(self) -> int | None: ...

    def close(self) -> None:
        """Release our ends of its pipes (after the child is gone and read)."""


class Launcher(Protocol):
    """How a tool process gets started (directly, or through the confined spawner)."""

    name: str

    async def spawn(self, argv: Sequence[str], cwd: str, limits: Limits) -> Child: ...

    async def close(self) -> None: ...


class _ProcessChild:
    def __init__(self, proc: asyncio.subprocess.Process, stdout: PipeReader, stderr: PipeReader) -> None:
        self.proc = proc
        self.stdout = stdout
        self.stderr = stderr

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def kill(self) -> None:
        # killpg only: Process.kill() goes through Popen.send_signal(), which poll()s and may reap
        # the child behind asyncio's child watcher (the exit status is then lost: "unknown child").
        # The child leads its own session, so its process group id is its pid; until the watcher
        # has reaped it (returncode set) that id cannot have been reused.
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> int | None:
        return await self.proc.wait()

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()


async def spawn_process(argv: Sequence[str], cwd: str, *, preexec: Any = None) -> Child:
    """Start argv from this process in a new session with our own pipes (no shell, no env)."""
    stdout, out_w = pipe_pair()
    stderr, err_w = pipe_pair()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            env=dict(CHILD_ENV),
            start_new_session=True,
            close_fds=True,
            preexec_fn=preexec,
        )
    except BaseException:
        stdout.close()
        stderr.close()
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return _ProcessChild(proc, stdout, stderr)


class DirectLauncher:
    """Start each tool from this process: `prlimit [setpriv] tool`, a fresh session, no shell.

    The basic layers only (process group, empty environment, rlimits, and an unprivileged uid
    through util-linux setpriv when `uid` is given); it is the fallback when the spawner cannot run.
    """

    name = "direct"

    def __init__(self, uid: int | None = None, gid: int | None = None) -> None:
        self.uid = uid
        self.gid = gid if gid is not None else uid

    def prefix(self, limits: Limits) -> list[str]:
        prefix = _prlimit_prefix(limits) if PRLIMIT else []
        if self.uid is not None and SETPRIV:
            prefix += [SETPRIV, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--no-new-privs", "--"]
        return prefix

    async def spawn(self, argv: Sequence[str], cwd: str, limits: Limits) -> Child:
        return await spawn_process([*self.prefix(limits), *argv], cwd, preexec=None if PRLIMIT else _preexec(limits))

    async def close(self) -> None:
        return None


DIRECT = DirectLauncher()


async def _reap(child: Child, *, stderr_too: bool = True) -> None:
    """Kill what is left, drain the pipes to EOF (bounded), and wait for the exit."""
    child.kill()
    streams = [child.stdout, child.stderr] if stderr_too else [child.stdout]

    async def drain(stream: PipeReader) -> None:
        while await stream.read(READ_CHUNK):
            pass

    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(drain(s) for s in streams if s is not None)), 2)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(child.wait(), 5)


async def _drain_stderr(stream: PipeReader, sink: bytearray) -> None:
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
    launcher: Launcher | None = None,
) -> RunResult:
    """Run argv to completion, the cap, or the timeout, whichever comes first."""
    limits = limits or Limits.for_timeout(timeout)
    started = time.perf_counter()
    proc = await (launcher or DIRECT).spawn(argv, cwd, limits)
    out = bytearray()
    err = bytearray()
    state = {"truncated": False, "omitted": 0}

    async def read_stdout() -> None:
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
            proc.kill()

    async def body() -> None:
        await asyncio.gather(read_stdout(), _drain_stderr(proc.stderr, err))
        await proc.wait()

    timed_out = False
    try:
        await asyncio.wait_for(body(), timeout)
    except asyncio.TimeoutError:
        timed_out = True
    finally:
        # Timeout, cap, or our caller cancelled: no child outlives the call.
        await _reap(proc)
        proc.close()
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
    launcher: Launcher | None = None,
) -> AsyncIterator[bytes]:
    """Yield stdout lines (without the newline) as they come; same confinement as run().

    Over-long lines are cut to max_line_bytes. Closing the generator early (enough results, or the
    client went away) or hitting the timeout kills the process group. When given, `status` is
    filled with exit_code, timed_out and stderr once the child is gone.
    """
    limits = limits or Limits.for_timeout(timeout)
    proc = await (launcher or DIRECT).spawn(argv, cwd, limits)
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
        proc.close()
        if status is not None:
            status.update(exit_code=proc.returncode, timed_out=timed_out, stderr=bytes(err))
