"""The service side of the confined spawner (spawner.py): start it, ask it for tool processes.

One spawner process serves every tool call of the service. A call sends one packet (argv, cwd,
environment, rlimits) with three descriptors attached: /dev/null for stdin and the write ends of
two pipes this side reads, exactly like a subprocess. The exit status comes back as a packet; a
kill is a packet too (the spawner owns the children, and inside a pid namespace only it knows
their pids).

If the spawner dies, the calls in flight end (their children die with it: PR_SET_PDEATHSIG, or
the pid namespace) and the next call starts a new one with the same walls.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
from typing import Any, Sequence

from fsagent.sandbox import runner

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20
STDERR_LOG_BYTES = 4096


class SpawnerError(RuntimeError):
    """The spawner could not be started, or died and could not be restarted."""


class SpawnerChild:
    """A tool process started by the spawner (runner.Child)."""

    def __init__(self, owner: "SpawnerLauncher", call_id: int, stdout: runner.PipeReader, stderr: runner.PipeReader) -> None:
        self.owner = owner
        self.id = call_id
        self.stdout = stdout
        self.stderr = stderr
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._killed = False
        self.pid: int | None = None  # as the spawner sees it

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    def kill(self) -> None:
        if self._exit.done() or self._killed:
            return
        self._killed = True
        self.owner._send_nowait({"op": "kill", "id": self.id})

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exit)

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()

    def _exited(self, status: int) -> None:
        if not self._exit.done():
            self._exit.set_result(status)


class SpawnerLauncher:
    """runner.Launcher backed by one long-lived spawner process (see spawner.py)."""

    name = "spawner"

    def __init__(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, start_timeout: float = 15.0,
        pid_namespace: bool = False,
    ) -> None:
        self.argv = list(argv)
        # In its own pid namespace the spawner's children die with it; otherwise they are
        # killed from here by their (host) pids if it dies first.
        self.pid_namespace = pid_namespace
        self.env = dict(env if env is not None else runner.CHILD_ENV)
        self.start_timeout = start_timeout
        self.hello: dict[str, Any] = {}
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._devnull: int | None = None
        self._ids = itertools.count(1)
        self._children: dict[int, SpawnerChild] = {}
        self._lock = asyncio.Lock()
        self._closed = False
        self._stderr_logged = 0

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._sock is not None and self._proc is not None and self._proc.poll() is None

    async def start(self) -> dict[str, Any]:
        """Start the spawner and wait for its hello (what it could and could not apply)."""
        loop = asyncio.get_running_loop()
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Started from the event loop's thread: bwrap's --die-with-parent and the spawner's
            # own death signal follow the thread that forked them.
            proc = subprocess.Popen(
                self.argv, stdin=theirs.fileno(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=self.env, cwd="/", close_fds=True, start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise SpawnerError(f"cannot run the spawner: {exc.strerror}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        try:
            data = await asyncio.wait_for(loop.sock_recv(ours, MAX_MESSAGE), self.start_timeout)
        except (asyncio.TimeoutError, OSError):
            data = b""
        if not data:
            ours.close()
            detail = await asyncio.to_thread(_finish, proc)
            raise SpawnerError(f"the spawner did not start: {detail or 'no reply'}")
        self.hello = json.loads(data)
        self._proc, self._sock = proc, ours
        loop.add_reader(ours.fileno(), self._readable)
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        loop.add_reader(proc.stderr.fileno(), self._stderr_readable, proc)
        return self.hello

    async def close(self) -> None:
        self._closed = True
        self._disconnect()
        proc, self._proc = self._proc, None
        if proc is not None:
            await asyncio.to_thread(_finish, proc)
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None

    def _disconnect(self) -> None:
        loop = asyncio.get_running_loop()
        sock, self._sock = self._sock, None
        if sock is not None:
            loop.remove_reader(sock.fileno())
            sock.close()  # EOF: the spawner kills every child and exits
        if self._proc is not None and self._proc.stderr is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._proc.stderr.fileno())
        children, self._children = self._children, {}
        for child in children.values():
            if not self.pid_namespace and child.pid is not None and not child._exit.done():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)  # the spawner is gone: nobody else will
            child._exited(-9)

    async def _ensure(self) -> None:
        if self.alive:
            return
        async with self._lock:
            if self.alive:
                return
            if self._closed:
                raise SpawnerError("the spawner is closed")
            old = self._proc
            self._disconnect()
            if old is not None:
                await asyncio.to_thread(_finish, old)
                log.error("the tool spawner died; starting a new one", extra={"exit_code": old.returncode})
            self.restarts += 1
            await self.start()

    # -- calls -----------------------------------------------------------------------------

    async def spawn(self, argv: Sequence[str], cwd: str, limits: runner.Limits) -> SpawnerChild:
        await self._ensure()
        call_id = next(self._ids)
        message = json.dumps({
            "op": "spawn", "id": call_id, "argv": list(argv), "cwd": cwd,
            "env": runner.CHILD_ENV, "rlimits": runner.rlimits(limits),
        }).encode()
        stdout, out_w = runner.pipe_pair()
        stderr, err_w = runner.pipe_pair()
        # Registered before the first await: its "exit" may arrive before spawn() returns.
        child = SpawnerChild(self, call_id, stdout, stderr)
        self._children[call_id] = child
        try:
            assert self._devnull is not None
            await self._sendmsg(message, array.array("i", [self._devnull, out_w, err_w]))
        except BaseException:
            self._children.pop(call_id, None)
            child.close()
            raise
        finally:
            os.close(out_w)  # the child holds its own copies now
            os.close(err_w)
        return child

    async def _sendmsg(self, data: bytes, fds: array.array) -> None:
        loop = asyncio.get_running_loop()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
        while True:
            sock = self._sock
            if sock is None:
                raise SpawnerError("the spawner is gone")
            try:
                sock.sendmsg([data], ancillary)
                return
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(sock.fileno(), lambda: ready.done() or ready.set_result(None))
                try:
                    await asyncio.wait_for(ready, 5)
                finally:
                    loop.remove_writer(sock.fileno())
            except OSError as exc:
                self._disconnect()
                raise SpawnerError(f"the spawner is gone: {exc.strerror}") from None

    def _send_nowait(self, message: dict[str, Any]) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.send(json.dumps(message).encode())
        except BlockingIOError:
            asyncio.get_running_loop().call_later(0.01, self._send_nowait, message)
        except OSError:
            self._disconnect()

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._disconnect()
                return
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            op = msg.get("op")
            if op == "started":
                child = self._children.get(int(msg.get("id", -1)))
                if child is not None:
                    child.pid = int(msg.get("pid", 0)) or None
            elif op == "exit":
                child = self._children.pop(int(msg.get("id", -1)), None)
                if child is not None:
                    child._exited(int(msg.get("status", -9)))
            elif op == "error":
                child = self._children.pop(int(msg.get("id", -1)), None)
                log.warning("the spawner refused a call", extra={"reason": str(msg.get("message", ""))[:300]})
                if child is not None:
                    child._exited(127)

    def _stderr_readable(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        try:
            data = os.read(proc.stderr.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(proc.stderr.fileno())
            return
        if self._stderr_logged < STDERR_LOG_BYTES:
            self._stderr_logged += len(data)
            log.warning("tool spawner stderr", extra={"stderr": data[:STDERR_LOG_BYTES].decode("utf-8", "replace")})


def _finish(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> str:
    """Wait for a spawner that is stopping (kill it past the timeout); its stderr, for a message."""
    if proc.stderr is not None and not proc.stderr.closed:
        with contextlib.suppress(OSError):
            os.set_blocking(proc.stderr.fileno(), True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    except ValueError:  # stderr already consumed by the reader
        err = b""
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    return (err or b"").decode("utf-8", "replace").strip()[-500:]
