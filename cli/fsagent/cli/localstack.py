"""Start the four services as local processes on loopback, wait until they are ready, stop them.

Used by `fsagent run` (and `make run`) and by the integration tests, so both exercise exactly the
same start-up path: real processes, real gRPC, real ports.

- `start()` refuses to start when a port it needs is taken (`PortsInUse`, one `PortConflict` per
  port, naming the holder when /proc or `ss` shows it and the variable to change), and `wait_ready()`
  accepts only an answer from the processes it started: an orphan of an earlier run holding a port
  is a failure, never "ready".
- Each service runs in a process group of its own (a Ctrl-C on the terminal reaches only the
  caller, which stops the services itself) and, on Linux, with a parent-death signal: when the
  process that started it dies, even by SIGKILL, the service gets SIGTERM. The kernel sends it when
  the *thread* that started the service ends, so start services from a thread that lives as long as
  they should (the main thread; `fsagent run` starts and restarts them from there).
- `supervise()` (opt-in, used by `fsagent run`) restarts a service that exits, with backoff, until
  it fails too fast too often; tests that kill a service on purpose simply do not call it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Callable, Iterable

# Dependencies first: the gateway is ready only when the agent and the sandbox are.
START_ORDER = ("cache", "sandbox", "agent", "gateway")

# Each Ports field: what listens there, and the variable that moves it.
PORT_USES = {
    "gateway": ("gateway HTTP", "FSAGENT_GATEWAY_PORT"),
    "agent": ("agent gRPC", "FSAGENT_AGENT_ADDR"),
    "sandbox": ("sandbox gRPC", "FSAGENT_SANDBOX_ADDR"),
    "cache": ("cache gRPC", "FSAGENT_CACHE_ADDR"),
    "agent_metrics": ("agent metrics", "FSAGENT_AGENT_METRICS_PORT"),
    "sandbox_metrics": ("sandbox metrics", "FSAGENT_SANDBOX_METRICS_PORT"),
    "cache_metrics": ("cache metrics", "FSAGENT_CACHE_METRICS_PORT"),
    "gateway_metrics": ("gateway metrics", "FSAGENT_GATEWAY_METRICS_PORT"),
}
SERVICE_PORTS = {service: (service, f"{service}_metrics") for service in START_ORDER}


@dataclass(frozen=True)
class Ports:
    gateway: int = 8000
    agent: int = 50051
    sandbox: int = 50052
    cache: int = 50053
    agent_metrics: int = 9101
    sandbox_metrics: int = 9102
    cache_metrics: int = 9103
    gateway_metrics: int = 9104  # never the gateway's public port

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> "Ports":
        """Distinct free ports, one per field (for tests running beside anything else)."""
        sockets, numbers = [], []
        try:
            for _ in fields(cls):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((host, 0))
                sockets.append(sock)
                numbers.append(sock.getsockname()[1])
        finally:
            for sock in sockets:
                sock.close()
        return cls(*numbers)

    def metrics_urls(self, host: str = "127.0.0.1") -> dict[str, str]:
        return {
            "gateway": f"http://{host}:{self.gateway_metrics}/metrics",
            "agent": f"http://{host}:{self.agent_metrics}/metrics",
            "sandbox": f"http://{host}:{self.sandbox_metrics}/metrics",
            "cache": f"http://{host}:{self.cache_metrics}/metrics",
        }

    def items(self) -> list[tuple[str, int]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


# --- who holds a port -------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def _proc_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # IPv6: four 32-bit words, each in host (little-endian) order.
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def _listening_inodes(port: int) -> list[tuple[str, int]] | None:
    """(local address, socket inode) of every TCP listener on `port`; None without /proc/net/tcp."""
    found: list[tuple[str, int]] = []
    seen_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen_table = True
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A: TCP_LISTEN
                continue
            address, _, hex_port = parts[1].rpartition(":")
            if int(hex_port, 16) == port:
                try:
                    found.append((_proc_address(address), int(parts[9])))
                except ValueError:
                    continue
    return found if seen_table else None


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        text = " ".join(os.path.basename(a.decode(errors="replace")) if i == 0 else a.decode(errors="replace")
                        for i, a in enumerate(argv))
    except OSError:
        text = ""
    if not text:
        try:
            text = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            text = ""
    return text if len(text) <= 100 else text[:97] + "..."


def _socket_owners(inodes: set[int]) -> dict[int, set[int]]:
    """inode -> pids with a descriptor on that socket (only the processes this user may inspect)."""
    owners: dict[int, set[int]] = {}
    if not inodes:
        return owners
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    try:
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return owners
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if inode is not None:
                owners.setdefault(inode, set()).add(pid)
    return owners


def _ss_holders(port: int) -> list[Holder]:
    """The same from `ss -ltnp` when /proc did not tell (it sees what this user may see, too)."""
    ss = shutil.which("ss")
    if ss is None:
        return []
    try:
        out = subprocess.run([ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=3).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    pids = sorted({int(m.group(1)) for m in re.finditer(r"pid=(\d+)", out)})
    return [Holder(pid, _command(pid)) for pid in pids]


def _host_addresses(host: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except OSError:
        return {host}


def listeners(ports: Iterable[int], host: str) -> dict[int, list[Holder]] | None:
    """The processes listening on each port where `host` would bind it (that address, or any).

    None when this machine has no /proc/net/tcp. A port whose listener is not visible to this user
    maps to an empty list.
    """
    addresses = _host_addresses(host) | {"0.0.0.0", "::"}
    addresses |= {f"::ffff:{a}" for a in addresses if "." in a}
    per_port: dict[int, list[int]] = {}
    for port in set(ports):
        found = _listening_inodes(port)
        if found is None:
            return None
        per_port[port] = [inode for address, inode in found if address in addresses]
    owners = _socket_owners({inode for inodes in per_port.values() for inode in inodes})
    return {
        port: [Holder(pid, _command(pid)) for pid in sorted({p for i in inodes for p in owners.get(i, ())})]
        for port, inodes in per_port.items()
    }


# --- ports free before start ------------------------------------------------------------------


@dataclass(frozen=True)
class PortConflict:
    port: int
    uses: tuple[str, ...]  # Ports field names
    reason: str  # "in use", "used twice", or why it cannot be bound
    holders: tuple[Holder, ...] = ()
    variable_values: tuple[str, ...] = ()  # "FSAGENT_AGENT_ADDR (now 127.0.0.1:50051)" per use

    def line(self, host: str) -> str:
        what = " and ".join(PORT_USES[u][0] for u in self.uses)
        change = " or ".join(self.variable_values or tuple(PORT_USES[u][1] for u in self.uses))
        if self.reason == "used twice":
            return f"port {self.port} on {host} is configured for both {what}; change {change}"
        if self.reason == "in use":
            if self.holders:
                by = "in use by " + ", ".join(str(h) for h in self.holders)
                if any("fsagent." in h.command for h in self.holders):
                    by += " (an fsagent service left by an earlier run? stop it: kill " + " ".join(
                        str(h.pid) for h in self.holders) + ")"
            else:
                by = "in use by another process (not visible to this user; `ss -ltnp` as root shows it)"
            return f"port {self.port} on {host} ({what}) is {by}; change {change}"
        return f"port {self.port} on {host} ({what}) cannot be bound: {self.reason}; change {change}"


class PortsInUse(RuntimeError):
    def __init__(self, host: str, conflicts: list[PortConflict]) -> None:
        self.host = host
        self.conflicts = conflicts
        super().__init__("\n".join(c.line(host) for c in conflicts))

    def lines(self) -> list[str]:
        return [c.line(self.host) for c in self.conflicts]


def _bind_error(host: str, port: int) -> OSError | None:
    """Why `host:port` cannot be listened on now, or None (a probe bind, as the services bind)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            # As uvicorn and gRPC do: a TIME_WAIT left by an earlier run is no conflict, a listener is.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return exc
    return None


def check_ports(ports: Ports, host: str, values: dict[str, str] | None = None) -> list[PortConflict]:
    """Every port `ports` names that the services could not bind on `host`, with who holds it."""
    values = values or {}

    def shown(uses: Iterable[str]) -> tuple[str, ...]:
        return tuple(f"{PORT_USES[u][1]} (now {values[PORT_USES[u][1]]})" if PORT_USES[u][1] in values
                     else PORT_USES[u][1] for u in uses)

    by_port: dict[int, list[str]] = {}
    for name, port in ports.items():
        by_port.setdefault(port, []).append(name)
    conflicts: list[PortConflict] = []
    busy: list[tuple[int, tuple[str, ...]]] = []
    for port, uses in by_port.items():
        if len(uses) > 1:
            conflicts.append(PortConflict(port, tuple(uses), "used twice", variable_values=shown(uses)))
            continue
        error = _bind_error(host, port)
        if error is None:
            continue
        if error.errno == errno.EADDRINUSE:
            busy.append((port, tuple(uses)))
        else:
            conflicts.append(PortConflict(port, tuple(uses), error.strerror or str(error),
                                          variable_values=shown(uses)))
    if busy:
        try:
            held = listeners([port for port, _ in busy], host) or {}
        except OSError:
            held = {}
        for port, uses in busy:
            holders = held.get(port) or _ss_holders(port)
            conflicts.append(PortConflict(port, uses, "in use", tuple(holders), shown(uses)))
    return sorted(conflicts, key=lambda c: list(PORT_USES).index(c.uses[0]))


# --- starting the children ----------------------------------------------------------------------

# Run as `python -c SHIM <parent pid> -m fsagent.<service>`: ask the kernel for SIGTERM when the
# parent dies (PR_SET_PDEATHSIG survives exec), make sure the parent did not die before that, then
# become the service (same pid). A shim rather than preexec_fn: preexec_fn is unsafe in a process
# with threads (the log forwarders, any test's), a fresh interpreter is not.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent died before the signal was armed
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@dataclass(frozen=True)
class RestartPolicy:
    """How `supervise()` restarts a service that exits.

    The n-th restart in a row waits initial_delay * 2**(n-1) seconds, at most max_delay. A service
    that stayed up stable_after seconds starts over at restart 1. After max_restarts restarts in a
    row, the next exit gives up (0: the first exit does).
    """

    max_restarts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 10.0
    stable_after: float = 30.0

    def delay(self, restart: int) -> float:
        return min(self.max_delay, self.initial_delay * 2 ** (restart - 1))


class GaveUp(RuntimeError):
    """A service `supervise()` will not restart again: `summary` is one line, `details` may follow."""

    def __init__(self, service: str, code: int | None, summary: str, details: list[str]) -> None:
        self.service = service
        self.code = code
        self.summary = summary
        self.details = details
        super().__init__("\n".join([summary, *details]))


@dataclass
class LocalStack:
    data_root: Path
    cache_dir: Path
    ports: Ports = field(default_factory=Ports)
    host: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None  # None: forward output to our stderr with a service prefix
    die_with_parent: bool = True  # Linux: SIGTERM to each service when this process dies
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _log_files: dict[str, IO[bytes]] = field(default_factory=dict)
    _started_at: dict[str, float] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.ports.gateway}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FSAGENT_BIND_HOST=self.host,
            FSAGENT_DATA_ROOT=str(self.data_root),
            FSAGENT_CACHE_DIR=str(self.cache_dir),
            FSAGENT_GATEWAY_PORT=str(self.ports.gateway),
            FSAGENT_AGENT_ADDR=f"{self.host}:{self.ports.agent}",
            FSAGENT_SANDBOX_ADDR=f"{self.host}:{self.ports.sandbox}",
            FSAGENT_CACHE_ADDR=f"{self.host}:{self.ports.cache}",
            FSAGENT_GATEWAY_METRICS_PORT=str(self.ports.gateway_metrics),
            FSAGENT_AGENT_METRICS_PORT=str(self.ports.agent_metrics),
            FSAGENT_SANDBOX_METRICS_PORT=str(self.ports.sandbox_metrics),
            FSAGENT_CACHE_METRICS_PORT=str(self.ports.cache_metrics),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def log_path(self, service: str) -> Path | None:
        return self.log_dir / f"{service}.log" if self.log_dir else None

    def check_ports(self) -> list[PortConflict]:
        """The ports this stack needs that are not free on its host (see `check_ports`)."""
        env = self.env()
        values = {variable: env[variable] for _, variable in PORT_USES.values() if variable in env}
        return check_ports(self.ports, self.host, values)

    def argv(self, service: str) -> list[str]:
        if self.die_with_parent and sys.platform.startswith("linux"):
            return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), "-m", f"fsagent.{service}"]
        return [sys.executable, "-m", f"fsagent.{service}"]

    def start_service(self, service: str) -> None:
        if service in self.processes and self.processes[service].poll() is None:
            raise RuntimeError(f"{service} is already running")
        self._close_log(service)
        # Its own process group: a Ctrl-C on the terminal reaches whoever started it, who stops it.
        popen = dict(env=self.env(), stdin=subprocess.DEVNULL, process_group=0)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path(service), "ab")  # noqa: SIM115 - closed in stop_service
            self._log_files[service] = log
            proc = subprocess.Popen(self.argv(service), stdout=log, stderr=subprocess.STDOUT, **popen)
        else:
            proc = subprocess.Popen(self.argv(service), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
            threading.Thread(target=_forward, args=(service, proc), daemon=True).start()
        self.processes[service] = proc
        self._started_at[service] = time.monotonic()

    def start(self, timeout: float = 60.0, on_progress: Callable[[str], None] | None = None) -> None:
        """Start all four and wait until ready; on any failure, stop what was started and re-raise.

        Raises PortsInUse, before starting anything, when a port is taken.
        """
        conflicts = self.check_ports()
        if conflicts:
            raise PortsInUse(self.host, conflicts)
        try:
            for service in START_ORDER:
                self.start_service(service)
            self.wait_ready(timeout, on_progress)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60.0, on_progress: Callable[[str], None] | None = None) -> None:
        """Block until the gateway's /ready says every dependency answers, or raise.

        Every process started must still be running, and every port must be held by them alone:
        a /ready answered by a process this stack did not start is not readiness.
        """
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                with urllib.request.urlopen(f"{self.base_url}/ready", timeout=2) as reply:
                    if reply.status == 200:
                        self._raise_if_exited()
                        self._raise_if_foreign()
                        return
            except urllib.error.HTTPError as exc:
                try:
                    last = json.loads(exc.read() or b"{}").get("dependencies", exc.code)
                except ValueError:
                    last = str(exc.code)
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            if on_progress:
                on_progress(f"waiting for services: {last}")
            time.sleep(0.2)
        raise TimeoutError(f"services not ready after {timeout:.0f}s: {last}")

    def _raise_if_exited(self) -> None:
        for service, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{service} exited with code {proc.returncode} during start-up" + self._tail(service))

    def _raise_if_foreign(self) -> None:
        ours = {proc.pid for proc in self.processes.values()}
        try:
            held = listeners([port for _, port in self.ports.items()], self.host)
        except OSError:
            return
        if held is None:
            return
        for name, port in self.ports.items():
            foreign = [h for h in held.get(port, []) if h.pid not in ours and not _descends(h.pid, ours)]
            if foreign:
                what, variable = PORT_USES[name]
                raise RuntimeError(
                    f"port {port} ({what}) is also held by " + ", ".join(str(h) for h in foreign)
                    + f", which this runner did not start; stop it or change {variable}")

    def stop_service(self, service: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        proc = self.processes.get(service)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._close_log(service)
        return proc.returncode

    def stop(self, timeout: float = 15.0) -> dict[str, int | None]:
        codes = {}
        for service in reversed(START_ORDER):
            if service in self.processes:
                codes[service] = self.stop_service(service, timeout=timeout)
        return codes

    def supervise(self, stop: threading.Event, policy: RestartPolicy = RestartPolicy(),
                  say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
                  poll: float = 0.2) -> None:
        """Restart every service that exits until `stop` is set; call it from the thread that started them.

        Each exit and each restart is one line through `say`. Raises GaveUp (the others still
        running: the caller stops them) when a service exits after `policy.max_restarts` restarts
        in a row, each within `policy.stable_after` seconds of starting.
        """
        in_a_row = {service: 0 for service in self.processes}
        due: dict[str, float] = {}
        while not stop.wait(poll):
            now = time.monotonic()
            for service, proc in list(self.processes.items()):
                if service in due:
                    if now >= due[service] and not stop.is_set():
                        del due[service]
                        self.start_service(service)
                        say(f"{service} restarted (pid {self.processes[service].pid})")
                    continue
                code = proc.poll()
                if code is None:
                    continue
                self._close_log(service)
                if now - self._started_at.get(service, now) >= policy.stable_after:
                    in_a_row[service] = 0
                if in_a_row.get(service, 0) >= policy.max_restarts:
                    raise self._gave_up(service, code, in_a_row.get(service, 0), policy)
                in_a_row[service] = restart = in_a_row.get(service, 0) + 1
                delay = policy.delay(restart)
                say(f"{service} exited with code {code}; restarting in {delay:.1f} s (restart {restart})")
                due[service] = now + delay

    def _gave_up(self, service: str, code: int, restarts: int, policy: RestartPolicy) -> GaveUp:
        if restarts == 0 and policy.max_restarts == 0:
            summary = f"{service} exited with code {code}; not restarting it (restarts are off)"
        else:
            summary = (f"{service} exited with code {code} after {restarts} restart{'s' * (restarts != 1)} in a row, "
                       f"each within {policy.stable_after:g} s of starting; giving up")
        # A port taken while it was down is the usual reason for a service that dies on start.
        mine = set(SERVICE_PORTS.get(service, ()))
        details = [c.line(self.host) for c in self.check_ports() if mine & set(c.uses)]
        path = self.log_path(service)
        if path is not None:
            details.append(f"its log: {path}")
        return GaveUp(service, code, summary, details)

    def _close_log(self, service: str) -> None:
        log = self._log_files.pop(service, None)
        if log:
            log.close()

    def _tail(self, service: str, lines: int = 20) -> str:
        path = self.log_path(service)
        if path is None or not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(text)


def _descends(pid: int, ancestors: set[int]) -> bool:
    """Whether `pid` is a descendant of one of `ancestors` (a worker a service started)."""
    for _ in range(64):
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid in ancestors:
            return True
        if pid <= 1:
            return False
    return False


def _forward(service: str, proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    prefix = f"{service:>8} | ".encode()
    for line in proc.stdout:
        sys.stderr.buffer.write(prefix + line)
        sys.stderr.buffer.flush()
