"""The output cap (with its marker) and the timeout (the process group is killed, the service lives)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from fsagent.sandbox.tools import MARKER_PREFIX
from tests.sandbox.conftest import Sandbox

MARKER_RE = re.compile(r"\[\.\.\. output truncated: (at least )?(\d+) more bytes not shown; .* \.\.\.\]")
CAP = 1024


def write_lines(path: Path, count: int) -> bytes:
    data = "".join(f"row {i:05d} some text here\n" for i in range(1, count + 1)).encode()
    path.write_bytes(data)
    return data


async def test_output_cap_marker_in_process_tools(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(max_output_bytes=CAP)
    data = write_lines(sb.root / "big.txt", 2000)
    resp = await sb.execute("cat", path="big.txt")
    assert resp.error_code == "" and resp.exit_code == 0 and resp.truncated
    body, _, tail = resp.stdout.rpartition("\n[")
    match = MARKER_RE.search("[" + tail)
    assert match and not match.group(1), resp.stdout[-300:]
    shown = (body + "\n").encode()
    assert data.startswith(shown) and len(shown) <= CAP
    assert int(match.group(2)) == len(data) - len(shown)  # exact for files
    lines_shown = shown.count(b"\n")
    assert f"shown lines 1-{lines_shown} of 2000" in tail and f"start_line={lines_shown + 1}" in tail
    # Following the hint continues exactly where the cut was.
    nxt = await sb.execute("cat", path="big.txt", start_line=lines_shown + 1, end_line=lines_shown + 2)
    assert nxt.stdout == f"row {lines_shown + 1:05d} some text here\nrow {lines_shown + 2:05d} some text here\n"

    for tool, args in [
        ("head", {"lines": 5000}),
        ("tail", {"lines": 5000}),
        ("cat", {"start_line": 100, "end_line": 1900}),
    ]:
        resp = await sb.execute(tool, path="big.txt", **args)
        assert resp.truncated and MARKER_RE.search(resp.stdout), (tool, resp.stdout[-200:])
        assert len(resp.stdout.encode()) < CAP + 400
    resp = await sb.execute("tail", path="big.txt", lines=5000)
    assert resp.stdout.startswith(MARKER_PREFIX) and resp.stdout.endswith("row 02000 some text here\n")


async def test_output_cap_marker_binaries(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(max_output_bytes=CAP)
    write_lines(sb.root / "big.txt", 5000)
    for name in range(300):
        (sb.root / "empty" / f"file-{name:04d}.md").write_text("x\n")
    for tool, args in [
        ("grep", {"pattern": "row"}),
        ("find", {"path": "empty"}),
        ("ls", {"path": "empty"}),
        ("tree", {"path": "empty"}),
    ]:
        resp = await sb.execute(tool, **args)
        assert resp.error_code == "" and resp.exit_code == 0 and resp.truncated, (tool, resp.error)
        match = MARKER_RE.search(resp.stdout)
        assert match, (tool, resp.stdout[-300:])
        assert int(match.group(2)) > 0
        kept = resp.stdout[: match.start()]
        assert len(kept.encode()) <= CAP
        assert kept.endswith("\n")  # cut at a line boundary
    resp = await sb.execute("grep", pattern="row")
    assert "at least" in resp.stdout  # the child was killed at the cap: the exact rest is unknown
    assert all(line.startswith("big.txt:") for line in resp.stdout.splitlines()[:-1])


def greek_file(path: Path, megabytes: int) -> None:
    words = ["άλφα", "βήτα", "γάμμα", "δέλτα", "έψιλον", "ζήτα", "ήτα", "θήτα"]
    rnd = random.Random(7)
    line_pool = [" ".join(rnd.choice(words) for _ in range(10)) + "\n" for _ in range(1000)]
    chunk = "".join(line_pool).encode()
    with open(path, "wb") as fh:
        for _ in range(megabytes * 1024 * 1024 // len(chunk) + 1):
            fh.write(chunk)


def rg_children() -> list[int]:
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and name in ("rg", "prlimit", "grep", "find"):
            found.append(int(pid))
    return found


async def test_timeout_kills_and_service_stays_healthy(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(tool_timeout=0.2)
    greek_file(sb.root / "huge.txt", 12)
    started = time.perf_counter()
    # Unicode word boundaries keep ripgrep off its fast paths: ~0.8 s on 12 MB, well past 0.2 s.
    resp = await sb.execute("grep", pattern=r"\b\w+\b\s+\b\d+\b", path="huge.txt")
    elapsed = time.perf_counter() - started
    assert resp.error_code == "timeout", (resp.error_code, resp.error, resp.duration_seconds)
    assert resp.exit_code == 124 and "timed out" in resp.error
    assert elapsed < 3
    await asyncio.sleep(0.05)
    assert rg_children() == []
    # Still healthy and serving.
    health = health_pb2_grpc.HealthStub(sb.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="fsagent.v1.Sandbox"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    ok = await sb.execute("grep", pattern="password", path="policies")
    assert ok.error_code == "" and "policies/password.md:" in ok.stdout
    # Many timeouts at once leave nothing behind either.
    many = await asyncio.gather(*[sb.execute("grep", pattern=r"\b\w+\b\s+\b\d+\b", path="huge.txt") for _ in range(4)])
    assert {r.error_code for r in many} == {"timeout"}
    await asyncio.sleep(0.05)
    assert rg_children() == []


async def test_cap_on_a_flood_stops_quickly(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    """Far more output than the pipe buffers: the child is killed at the cap, not at the timeout."""
    sb: Sandbox = await make_sandbox(max_output_bytes=CAP, tool_timeout=5)
    (sb.root / "flood.txt").write_bytes(b"hit hit hit hit hit hit hit hit\n" * 400_000)
    started = time.perf_counter()
    resp = await sb.execute("grep", pattern="hit", path="flood.txt")
    assert time.perf_counter() - started < 2
    assert resp.error_code == "" and resp.truncated and "at least" in resp.stdout
    await asyncio.sleep(0.05)
    assert rg_children() == []


async def test_a_cancelled_call_kills_its_child(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    """The agent's deadline (or a client that went away) stops the tool at once."""
    import grpc

    from fsagent.v1 import sandbox_pb2

    sb: Sandbox = await make_sandbox(tool_timeout=30)
    greek_file(sb.root / "huge.txt", 12)
    request = sandbox_pb2.ExecuteRequest(tool="grep", arguments_json='{"pattern": "\\\\b\\\\w+\\\\b\\\\s+\\\\b\\\\d+\\\\b"}')
    try:
        await sb.stub.Execute(request, timeout=0.15)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:  # pragma: no cover - the search takes far longer than the deadline
        raise AssertionError("expected the deadline to expire")
    for _ in range(40):
        if not rg_children():
            break
        await asyncio.sleep(0.05)
    assert rg_children() == []
