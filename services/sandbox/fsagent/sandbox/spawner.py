"""The confined launcher: a small, single-threaded process that starts every tool process.

Why it exists: the walls that cost the most to build (a bubblewrap mount/pid/net namespace, a
Landlock domain, the switch to an unprivileged uid) are built ONCE, around this process, when the
sandbox service starts; every tool it starts inherits them. Per call it only does what is cheap:
posix_spawn (vfork + exec in C, so no Python code ever runs in a child) with a new session,
the service's stdin/stdout/stderr descriptors, default signal dispositions and an empty
environment, then prlimit() on the new pid for the per-call CPU seconds. The other rlimits
(address space, FSIZE=0, open files, processes, no core) are set on this process at start and
inherited by every child.

It is run as `python -I -S -B -c <this file's source> <config json>` (isolated mode, no site, no
venv: only the standard library), inside bwrap when that wall is on, and talks to the service over
the AF_UNIX SOCK_SEQPACKET socket it gets as its stdin. Messages are JSON, one per packet:

  service -> spawner  {"op": "spawn", "id", "argv", "cwd", "env", "rlimits": [[res, soft, hard]]}
                      with three fds attached (SCM_RIGHTS): the child's stdin, stdout, stderr
                      {"op": "kill", "id"}            SIGKILL to the child's whole process group
  spawner -> service  {"op": "hello", "uid", "gid", "landlock", "root_readable", "errors"}
                      {"op": "started", "id", "pid"} (pid as this process sees it)
                      {"op": "exit", "id", "status"} status like Popen.returncode (-N: signal N)
                      {"op": "error", "id", "message"} nothing was started

Only programs listed in the config's `allow` can be started (a second check behind the argv
builders). When the service goes away (EOF on the socket) every child's process group is killed
and the spawner exits.
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys

MAX_MESSAGE = 1 << 20
PR_SET_NO_NEW_PRIVS = 38

# Landlock (linux/landlock.h); syscall numbers are the same on every architecture.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE = 1 << 0
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_FILE_ONLY = FS_EXECUTE | (1 << 1) | FS_READ_FILE | (1 << 14) | (1 << 15)  # rights a file rule may hold
FS_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}  # ABI 5+: (1 << 16) - 1
NET_ALL = (1 << 0) | (1 << 1)  # bind and connect TCP (ABI 4+)
SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals (ABI 6+)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def landlock_abi() -> int:
    try:
        return _syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def apply_landlock(read: list[str], execute: list[str]) -> int:
    """Restrict this process (and so every child) to reading `read` and running from `execute`.

    Everything else on the filesystem is denied, including every write; from ABI 4 TCP bind and
    connect are denied, from ABI 6 abstract unix sockets and signals outside the domain. Returns
    the ABI used (0 when the kernel has no Landlock).
    """
    abi = landlock_abi()
    if abi <= 0:
        return 0
    handled_fs = FS_ALL_BY_ABI.get(abi, (1 << 16) - 1)
    fields = [handled_fs]
    if abi >= 4:
        fields.append(NET_ALL)
    if abi >= 6:
        fields.append(SCOPE_ALL)
    attr = struct.pack(f"={len(fields)}Q", *fields)
    attr_buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _syscall(SYS_LANDLOCK_CREATE_RULESET, attr_buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    try:
        rules = [(path, FS_READ_FILE | FS_READ_DIR) for path in read]
        rules += [(path, FS_EXECUTE | FS_READ_FILE | FS_READ_DIR) for path in execute]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not present on this machine: nothing to allow
            try:
                if not os.path.isdir(path):
                    access &= FS_FILE_ONLY
                rule = struct.pack("=Qi", access & handled_fs, fd)
                rule_buf = ctypes.create_string_buffer(rule, len(rule))
                _syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), rule_buf, ctypes.c_uint32(0))
            finally:
                os.close(fd)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        _syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return abi


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


class Spawner:
    def __init__(self, sock: socket.socket, allow: set[str]) -> None:
        self.sock = sock
        self.allow = allow
        self.pids: dict[int, int] = {}  # pid -> call id
        self.ids: dict[int, int] = {}  # call id -> pid
        self.cwd = os.getcwd()

    def send(self, message: dict[str, object]) -> None:
        self.sock.send(json.dumps(message).encode())  # a blocking socket; EINTR is retried by Python

    def spawn(self, msg: dict, fds: list[int]) -> None:
        call_id = int(msg["id"])
        try:
            argv = [str(a) for a in msg["argv"]]
            if len(fds) != 3:
                raise ValueError("expected three descriptors")
            if not argv or argv[0] not in self.allow:
                raise PermissionError(f"program not allowed: {argv[0] if argv else ''!r}")
            env = {str(k): str(v) for k, v in dict(msg.get("env") or {}).items()}
            limits = [(int(r), int(s), int(h)) for r, s, h in msg.get("rlimits") or []]
            cwd = str(msg["cwd"])
            if cwd != self.cwd:
                os.chdir(cwd)  # the child inherits it (posix_spawn has no chdir here)
                self.cwd = cwd
            # posix_spawn (vfork + exec in C): no Python runs in the child, and it costs a third
            # of a fork of this interpreter. The child leads a new session (so its process group
            # can be killed whole), gets default signal dispositions and an empty mask.
            pid = os.posix_spawn(
                argv[0], argv, env,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
                setsid=True, setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD),
            )
        except Exception as exc:  # noqa: BLE001 - refused or could not start: tell the service
            for fd in fds:
                os.close(fd)
            self.send({"op": "error", "id": call_id, "message": f"{exc.__class__.__name__}: {exc}"[:300]})
            return
        for fd in fds:
            os.close(fd)
        self.pids[pid] = call_id
        self.ids[call_id] = pid
        # The per-call limits (CPU seconds above all; the others were set on this process at start
        # and are inherited). CPU time counts from the child's start, so setting it now loses nothing.
        for res, soft, hard in limits:
            try:
                resource.prlimit(pid, res, (soft, hard))
            except (ValueError, OSError):
                pass  # a hard limit already lower than ours stays; a child already gone is reaped later
        self.send({"op": "started", "id": call_id, "pid": pid})

    def kill(self, call_id: int) -> None:
        pid = self.ids.get(call_id)
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGKILL)  # the child leads its own session: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self) -> None:
        while self.pids:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            if pid in self.pids:
                # A group member may outlive the leader (not our tools, but be sure): kill the
                # rest while the unreaped leader still holds the group id (no pid reuse yet).
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                continue
            call_id = self.pids.pop(pid, None)
            if call_id is None:
                continue
            self.ids.pop(call_id, None)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            self.send({"op": "exit", "id": call_id, "status": code})

    def shutdown(self) -> None:
        for pid in list(self.pids):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "sock")
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        fd_size = array.array("i").itemsize
        try:
            while True:
                for key, _ in selector.select():
                    if key.data == "wake":
                        try:
                            while os.read(wake_r, 512):
                                pass
                        except BlockingIOError:
                            pass
                        self.reap()
                        continue
                    try:
                        data, ancdata, _flags, _ = self.sock.recvmsg(
                            MAX_MESSAGE, socket.CMSG_SPACE(8 * fd_size), socket.MSG_CMSG_CLOEXEC
                        )
                    except (BlockingIOError, InterruptedError):
                        continue
                    fds: list[int] = []
                    for level, kind, payload in ancdata:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            got = array.array("i")
                            got.frombytes(payload[: len(payload) - (len(payload) % fd_size)])
                            fds.extend(got)
                    if not data:
                        return  # the service is gone
                    try:
                        msg = json.loads(data)
                    except ValueError:
                        for fd in fds:
                            os.close(fd)
                        continue
                    if msg.get("op") == "spawn":
                        self.spawn(msg, fds)
                    else:
                        for fd in fds:
                            os.close(fd)
                        if msg.get("op") == "kill":
                            self.kill(int(msg.get("id", -1)))
                self.reap()
        finally:
            self.shutdown()


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    # The service's end of a SOCK_SEQPACKET pair, as our stdin (children get their own fd 0).
    sock = socket.socket(fileno=0)
    sock.setblocking(True)
    errors: list[str] = []
    uid, gid = os.getuid(), os.getgid()
    target = config.get("uid")
    if target is not None:
        try:
            drop_privileges(int(target), int(config.get("gid", target)))
            uid, gid = os.getuid(), os.getgid()
        except OSError as exc:
            errors.append(f"uid: {exc.strerror}")
    # Inherited by every child (posix_spawn cannot set limits); this process fits well within them.
    for res, soft, hard in config.get("rlimits") or []:
        try:
            resource.setrlimit(int(res), (int(soft), int(hard)))
        except (ValueError, OSError) as exc:
            errors.append(f"rlimit {res}: {exc}")
    root = str(config["root"])
    root_readable = os.access(root, os.R_OK | os.X_OK)
    landlock = 0
    if config.get("landlock"):
        try:
            landlock = apply_landlock(list(config.get("read", [])) + [root], list(config.get("execute", [])))
            if landlock == 0:
                errors.append("landlock: not supported by this kernel")
        except OSError as exc:
            errors.append(f"landlock: {exc.strerror}")
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        errors.append("no_new_privs: failed")
    spawner = Spawner(sock, set(config.get("allow", [])))
    spawner.send({"op": "hello", "uid": uid, "gid": gid, "landlock": landlock, "root_readable": root_readable, "errors": errors})
    try:
        spawner.serve()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
