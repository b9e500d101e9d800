"""`fsagent run` as a user runs it: a real runner process starting the four real services.

It restarts a service that dies and says so, gives up on one that keeps dying, takes its services
with it when it is killed (even by SIGKILL), and refuses ports that are taken, naming the port, the
process holding it and the variable to change. Every test removes every process it caused, by pid,
whatever happens.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import httpx
import pytest

from fsagent.cli import localstack
from fsagent.cli.localstack import LocalStack, Ports, RestartPolicy

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("cache", "sandbox", "agent", "gateway")
T = TypeVar("T")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; parent-death signal is Linux")


def _wait(what: str, check: Callable[[], T], timeout: float = 30.0, every: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> dict[str, int]:
    """service -> pid of the fsagent services whose parent is `pid`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"-m" in argv:
            module = argv[argv.index(b"-m") + 1].decode()
            if module.startswith("fsagent.") and module[8:] in SERVICES:
                found[module[8:]] = int(entry)
    return found


def _is_service(pid: int) -> bool:
    try:
        return b"fsagent." in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Runner:
    """One `python -m fsagent.cli run` on free ports, its stderr in a file; `close()` leaves nothing."""

    def __init__(self, tmp: Path, *args: str, ports: Ports | None = None) -> None:
        self.tmp = tmp
        self.ports = ports or Ports.free()
        data = tmp / "data"
        if not data.exists():
            shutil.copytree(REPO / "data", data)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FSAGENT_", "OPENAI_", "AZURE_OPENAI_", "LANGFUSE_"))}
        p = self.ports
        env.update(
            FSAGENT_DATA_ROOT=str(data), FSAGENT_CACHE_DIR=str(tmp / "cache"), FSAGENT_LOG_LEVEL="WARNING",
            FSAGENT_GATEWAY_PORT=str(p.gateway), FSAGENT_AGENT_ADDR=f"127.0.0.1:{p.agent}",
            FSAGENT_SANDBOX_ADDR=f"127.0.0.1:{p.sandbox}", FSAGENT_CACHE_ADDR=f"127.0.0.1:{p.cache}",
            FSAGENT_GATEWAY_METRICS_PORT=str(p.gateway_metrics), FSAGENT_AGENT_METRICS_PORT=str(p.agent_metrics),
            FSAGENT_SANDBOX_METRICS_PORT=str(p.sandbox_metrics), FSAGENT_CACHE_METRICS_PORT=str(p.cache_metrics),
        )
        self.stderr_path = tmp / "runner.stderr"
        self.seen: set[int] = set()  # every service pid ever seen, to remove whatever is left
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fsagent.cli", "run", "--host", "127.0.0.1", "--log-dir", str(tmp / "logs"),
                 "--timeout", "60", *args],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            match = re.search(pattern, self.stderr())
            if match is None and self.proc.poll() is not None:
                match = re.search(pattern, self.stderr())
                assert match, f"runner exited ({self.proc.returncode}) before {pattern!r}:\n{self.stderr()}"
            return match
        try:
            return _wait(repr(pattern), found, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- runner stderr ---\n{self.stderr()}") from None

    def children(self) -> dict[str, int]:
        found = _children(self.proc.pid)
        self.seen.update(found.values())
        return found

    def ready(self) -> dict[str, int]:
        self.wait_for(r"fsagent is ready")
        return _wait("four services", lambda: c if len(c := self.children()) == 4 else None, 10)

    def chat(self) -> httpx.Response:
        return httpx.post(f"{self.url}/api/chat", json={"message": "What is the VPN host name?"}, timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pid in self.seen:
            if _alive(pid) and _is_service(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def runners(tmp_path: Path) -> Iterator[Callable[..., Runner]]:
    started: list[Runner] = []

    def start(*args: str, ports: Ports | None = None) -> Runner:
        runner = Runner(tmp_path / f"run{len(started)}", *args, ports=ports)
        started.append(runner)
        return runner

    try:
        yield start
    finally:
        for runner in started:
            runner.children()  # anything started since the test last looked
            runner.close()


def test_a_killed_service_is_restarted_and_the_stack_answers_again(runners, tmp_path: Path) -> None:
    runner = runners()
    before = runner.ready()
    assert runner.chat().status_code == 200
    os.kill(before["agent"], signal.SIGKILL)
    runner.wait_for(r"fsagent: agent exited with code -9; restarting in 0\.5 s \(restart 1\)", 10)
    restarted = int(runner.wait_for(r"fsagent: agent restarted \(pid (\d+)\)", 10).group(1))
    assert restarted != before["agent"] and _alive(restarted)

    def answered() -> bool:
        try:
            reply = runner.chat()
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and "vpn.northwind.example.com" in reply.json()["response"]
    _wait("a chat answered through the restarted agent", answered, 30, 0.3)
    after = runner.children()
    assert after["agent"] == restarted
    assert {s: after[s] for s in ("cache", "sandbox", "gateway")} == {s: before[s] for s in ("cache", "sandbox", "gateway")}

    # SIGTERM (what Ctrl-C does too) still stops all four cleanly.
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(30) == 0, runner.stderr()
    assert "fsagent: stopped gateway=0, agent=0, sandbox=0, cache=0" in runner.stderr()
    assert not [pid for pid in after.values() if _alive(pid)]


def test_killing_the_runner_leaves_no_service_behind(runners) -> None:
    runner = runners()
    services = runner.ready()
    # Each in a process group of its own: a Ctrl-C on the terminal reaches only the runner.
    assert {os.getpgid(pid) for pid in services.values()} == set(services.values())
    runner.proc.kill()
    runner.proc.wait(10)
    _wait("every service gone after the runner's SIGKILL",
          lambda: not [s for s, pid in services.items() if _alive(pid)], 15)
    # The ports are free again: the next run would start its own services, not meet these.
    assert LocalStack(data_root=runner.tmp, cache_dir=runner.tmp, ports=runner.ports).check_ports() == []


def test_a_taken_port_is_refused_naming_the_port_its_holder_and_the_variable(runners) -> None:
    ports = Ports.free()
    held = []
    try:
        for port, host in ((ports.gateway, "127.0.0.1"), (ports.agent, "0.0.0.0"), (ports.gateway_metrics, "127.0.0.1")):
            sock = socket.socket()
            sock.bind((host, port))
            sock.listen()
            held.append(sock)
        runner = runners(ports=ports)
        assert runner.proc.wait(30) == 2
    finally:
        for sock in held:
            sock.close()
    err = runner.stderr()
    assert "Traceback" not in err
    me = f"pid {os.getpid()} ("
    lines = err.splitlines()
    for port, what, variable in ((ports.gateway, "gateway HTTP", "FSAGENT_GATEWAY_PORT"),
                                 (ports.agent, "agent gRPC", "FSAGENT_AGENT_ADDR"),
                                 (ports.gateway_metrics, "gateway metrics", "FSAGENT_GATEWAY_METRICS_PORT")):
        line = [x for x in lines if f"port {port} " in x]
        assert len(line) == 1, err
        assert what in line[0] and me in line[0] and variable in line[0], line[0]
    assert "not starting" in err
    assert not (runner.tmp / "logs").exists(), "a service was started anyway"


def test_a_service_that_keeps_dying_makes_the_runner_give_up(runners) -> None:
    runner = runners("--max-restarts", "2")
    services = runner.ready()
    pid = services["sandbox"]
    for restart, delay in ((1, "0.5"), (2, "1.0")):
        os.kill(pid, signal.SIGKILL)
        runner.wait_for(rf"sandbox exited with code -9; restarting in {delay} s \(restart {restart}\)", 10)
        pid = int(runner.wait_for(rf"(?s)restart {restart}\).*?sandbox restarted \(pid (\d+)\)", 10).group(1))
        runner.children()
    os.kill(pid, signal.SIGKILL)
    assert runner.proc.wait(30) == 1, runner.stderr()
    err = runner.stderr()
    assert ("fsagent: sandbox exited with code -9 after 2 restarts in a row, each within 30 s of starting; "
            "giving up; stopping all four") in err, err
    assert "restart 3" not in err and "Traceback" not in err
    assert not [p for p in runner.seen if _alive(p)]


def test_a_port_taken_while_a_service_is_down_is_named_when_the_runner_gives_up(runners) -> None:
    runner = runners("--max-restarts", "1")
    services = runner.ready()
    # The runner paused while the cache dies and this test takes its port, so it cannot restart it first.
    runner.proc.send_signal(signal.SIGSTOP)
    try:
        os.kill(services["cache"], signal.SIGKILL)
        _wait("the cache gone", lambda: not _alive(services["cache"]), 10)
        with socket.socket() as thief:
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

            def taken() -> bool:  # its connections may hold the port a moment longer
                try:
                    thief.bind(("127.0.0.1", runner.ports.cache))
                except OSError:
                    return False
                return True
            _wait("the cache's port taken by this test", taken, 10)
            thief.listen()
            runner.proc.send_signal(signal.SIGCONT)
            assert runner.proc.wait(30) == 1, runner.stderr()
    finally:
        runner.proc.send_signal(signal.SIGCONT)
    err = runner.stderr()
    assert "fsagent: cache exited with code 1 after 1 restart in a row" in err, err
    assert (f"port {runner.ports.cache} on 127.0.0.1 (cache gRPC) is in use by pid {os.getpid()} ("
            in err and f"change FSAGENT_CACHE_ADDR (now 127.0.0.1:{runner.ports.cache})" in err), err
    assert f"its log: {runner.tmp / 'logs' / 'cache.log'}" in err


def test_restarts_off_stops_everything_at_the_first_exit(runners) -> None:
    runner = runners("--max-restarts", "0")
    services = runner.ready()
    os.kill(services["cache"], signal.SIGKILL)
    assert runner.proc.wait(30) == 1, runner.stderr()
    assert "cache exited with code -9; not restarting it (restarts are off)" in runner.stderr()
    assert not [p for p in services.values() if _alive(p)]


# --- the pieces, in-process -----------------------------------------------------------------


def test_check_ports_names_holder_variable_and_duplicates() -> None:
    ports = Ports.free()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.cache_metrics))
        sock.listen()
        conflicts = localstack.check_ports(ports, "127.0.0.1")
        assert [c.port for c in conflicts] == [ports.cache_metrics]
        line = conflicts[0].line("127.0.0.1")
        assert f"port {ports.cache_metrics} on 127.0.0.1 (cache metrics) is in use by pid {os.getpid()} (" in line
        assert line.endswith("change FSAGENT_CACHE_METRICS_PORT")
        assert localstack.listeners([ports.cache_metrics], "127.0.0.1")[ports.cache_metrics][0].pid == os.getpid()
    assert localstack.check_ports(ports, "127.0.0.1") == []
    same = Ports(**{**{n: p for n, p in ports.items()}, "gateway_metrics": ports.gateway})
    (dup,) = localstack.check_ports(same, "127.0.0.1")
    assert dup.line("127.0.0.1") == (f"port {ports.gateway} on 127.0.0.1 is configured for both gateway HTTP and "
                                     "gateway metrics; change FSAGENT_GATEWAY_PORT or FSAGENT_GATEWAY_METRICS_PORT")


def test_ready_only_from_the_processes_it_started(tmp_path: Path) -> None:
    """An orphan answering /ready on the gateway's port is not this stack being ready."""
    import http.server
    import threading

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    ports = Ports.free()
    server = http.server.HTTPServer(("127.0.0.1", ports.gateway), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stack = LocalStack(data_root=tmp_path, cache_dir=tmp_path, ports=ports)
        with pytest.raises(RuntimeError, match=rf"port {ports.gateway} \(gateway HTTP\) is also held by "
                                               rf"pid {os.getpid()} .*FSAGENT_GATEWAY_PORT"):
            stack.wait_ready(timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def test_backoff_doubles_to_its_cap() -> None:
    policy = RestartPolicy(initial_delay=0.5, max_delay=10)
    assert [policy.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
