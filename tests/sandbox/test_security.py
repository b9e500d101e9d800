"""Hostile arguments: nothing outside the root is read, nothing is written, no flag is smuggled in."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from fsagent.sandbox import runner
from tests.sandbox.conftest import Sandbox
from tests.sandbox.helpers import ENV_CANARY, OUTSIDE_CANARY


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return out


def assert_clean(sandbox: Sandbox, resp: object) -> None:
    text = "\n".join(str(getattr(resp, f)) for f in ("stdout", "stderr", "error", "command"))
    assert OUTSIDE_CANARY not in text
    assert ENV_CANARY not in text
    assert str(sandbox.root) not in text and str(sandbox.outside) not in text


async def test_find_delete_deletes_nothing(sandbox: Sandbox) -> None:
    before = snapshot(sandbox.root)
    hostile = [
        {"path": "-delete"},
        {"path": "-delete", "name": "-delete"},
        {"name": "-delete"},
        {"name": "-exec"},
        {"name": "("},
        {"iname": "-fprint"},
        {"path": "-rf.md"},
    ]
    for args in hostile:
        resp = await sandbox.execute("find", **args)
        assert resp.error_code == "", (args, resp.error)
        assert_clean(sandbox, resp)
    resp = await sandbox.execute("find", path="-delete")
    assert resp.stdout == "-delete\n"
    assert snapshot(sandbox.root) == before
    assert (sandbox.root / "-delete").exists()
    # An action can't be smuggled in as a parameter either.
    resp = await sandbox.execute("find", path=".", exec="rm")
    assert resp.error_code == "invalid_arguments"
    assert snapshot(sandbox.root) == before


OUTSIDE_CALLS = [
    ("cat", {"path": "../outside/secret.txt"}),
    ("cat", {"path": "policies/../../outside/secret.txt"}),
    ("cat", {"path": "link-out-file"}),
    ("cat", {"path": "notes/relative-out"}),
    ("cat", {"path": "link-out-dir/inner.txt"}),
    ("cat", {"path": "environ-link"}),
    ("head", {"path": "link-out-file"}),
    ("tail", {"path": "../outside/secret.txt"}),
    ("preview", {"path": "link-out-file"}),
    ("wc", {"paths": ["README.md", "link-out-file"]}),
    ("grep", {"pattern": "CANARY", "path": ".."}),
    ("grep", {"pattern": "CANARY", "path": "link-out-dir"}),
    ("grep", {"pattern": "CANARY", "path": "link-out-file"}),
    ("find", {"path": "link-out-dir"}),
    ("find", {"path": "../outside"}),
    ("ls", {"path": "link-out-dir"}),
    ("ls", {"path": ".."}),
    ("tree", {"path": "link-out-dir"}),
    ("tree", {"path": "../.."}),
]


@pytest.mark.parametrize(("tool", "args"), OUTSIDE_CALLS)
async def test_outside_is_refused(sandbox: Sandbox, tool: str, args: dict) -> None:
    resp = await sandbox.execute(tool, **args)
    assert resp.error_code == "path_outside_root", resp.error
    assert resp.exit_code != 0 and resp.stdout == ""
    assert_clean(sandbox, resp)


async def test_absolute_paths_mean_the_root(sandbox: Sandbox) -> None:
    outside_abs = str(sandbox.outside / "secret.txt")
    for tool, args in [
        ("cat", {"path": outside_abs}),
        ("cat", {"path": "/etc/passwd"}),
        ("cat", {"path": "/proc/self/environ"}),
        ("grep", {"pattern": "root", "path": "/etc"}),
        ("ls", {"path": "/proc"}),
    ]:
        resp = await sandbox.execute(tool, **args)
        assert resp.error_code == "not_found", (tool, args, resp.error)
        assert_clean(sandbox, resp)
    resp = await sandbox.execute("cat", path="/README.md")
    assert resp.error_code == "" and resp.stdout.startswith("# Sample")


async def test_recursion_never_follows_symlinks(sandbox: Sandbox) -> None:
    for tool, args in [
        ("grep", {"pattern": "CANARY"}),
        ("grep", {"pattern": "CANARY", "ignore_case": True, "context": 3}),
        ("grep", {"pattern": "ENVCANARY"}),
        ("grep", {"pattern": "CANARY", "files_with_matches": True}),
        ("grep", {"pattern": "CANARY", "path": "notes"}),
        ("find", {}),
        ("find", {"name": "inner.txt"}),
        ("tree", {"max_depth": 20}),
        ("ls", {"all": True, "long": True}),
    ]:
        resp = await sandbox.execute(tool, **args)
        assert resp.error_code == "", (tool, resp.error)
        assert_clean(sandbox, resp)
        assert "inner.txt" not in resp.stdout and "secret.txt" not in resp.stdout
    resp = await sandbox.execute("find")
    assert "link-out-dir\n" in resp.stdout  # listed as an entry, never descended
    resp = await sandbox.execute("tree")
    assert "link-out-dir@\n" in resp.stdout


async def test_fifo_is_refused_without_hanging(sandbox: Sandbox) -> None:
    async def call(tool: str, **args: object) -> object:
        return await asyncio.wait_for(sandbox.execute(tool, **args), 5)

    for tool in ("cat", "head", "tail", "preview"):
        resp = await call(tool, path="fifo")
        assert resp.error_code == "file_type", (tool, resp.error)
    resp = await call("wc", paths=["fifo"])
    assert resp.error_code == "file_type"
    resp = await call("grep", pattern="x", path="fifo")
    assert resp.error_code == "file_type"
    # Recursion passes the FIFO by.
    resp = await call("grep", pattern="password")
    assert resp.error_code == "" and "fifo" not in resp.stdout
    resp = await call("find", name="fifo")
    assert resp.stdout == "fifo\n"


async def test_env_canary_never_leaks(sandbox: Sandbox) -> None:
    assert os.environ["FSAGENT_TEST_ENV_CANARY"] == ENV_CANARY
    calls = [
        ("grep", {"pattern": "ENVCANARY"}),
        ("grep", {"pattern": "FSAGENT_TEST_ENV_CANARY", "path": "environ-link"}),
        ("cat", {"path": "environ-link"}),
        ("cat", {"path": "/proc/self/environ"}),
        ("find", {"name": "*CANARY*"}),
        ("preview", {"path": "environ-link"}),
    ]
    for tool, args in calls:
        assert_clean(sandbox, await sandbox.execute(tool, **args))


async def test_child_environment_and_limits(tmp_path: Path) -> None:
    env = await runner.run(["/usr/bin/env"], cwd=str(tmp_path), timeout=5, max_output_bytes=65536)
    assert env.exit_code == 0
    assert sorted(env.stdout.decode().splitlines()) == ["LC_ALL=C.UTF-8", "PATH=" + runner.SAFE_PATH]
    limits = await runner.run(["/bin/cat", "/proc/self/limits"], cwd=str(tmp_path), timeout=5, max_output_bytes=65536)
    text = limits.stdout.decode()
    assert limits.exit_code == 0, limits.stderr
    rows = {line[:26].strip(): line[26:].split() for line in text.splitlines()[1:]}
    assert rows["Max file size"][:2] == ["0", "0"]
    assert rows["Max address space"][0] == str(runner.ADDRESS_SPACE_BYTES)
    assert rows["Max cpu time"][0] == "6"  # ceil(timeout) + 1
    assert rows["Max open files"][0] == str(runner.MAX_OPEN_FILES)
    assert rows["Max core file size"][0] == "0"
    # Its own session: the process group can be killed as a whole.
    sid = await runner.run(["/bin/cat", "/proc/self/stat"], cwd=str(tmp_path), timeout=5, max_output_bytes=4096)
    fields = sid.stdout.decode().rsplit(")", 1)[1].split()
    pid, pgid, session = int(sid.stdout.split()[0]), int(fields[2]), int(fields[3])
    assert pgid == session == pid
    # No file can be written even if a tool tried.
    write = await runner.run(["/usr/bin/touch", "x"], cwd=str(tmp_path), timeout=5, max_output_bytes=4096)
    assert write.exit_code == 0  # creating an empty file is allowed by FSIZE=0 ...
    big = await runner.run(
        ["/usr/bin/dd", "if=/dev/zero", f"of={tmp_path / 'y'}", "bs=1", "count=10"],
        cwd=str(tmp_path), timeout=5, max_output_bytes=4096,
    )
    assert big.exit_code != 0 and (tmp_path / "y").stat().st_size == 0  # ... writing a byte is not


async def test_flags_cannot_be_smuggled(sandbox: Sandbox) -> None:
    for raw in [
        '{"pattern": "x", "pre": "sh"}',
        '{"pattern": "x", "flags": ["--pre=sh"]}',
        '{"pattern": "x", "args": "-L"}',
        '{"pattern": "x", "follow": true}',
    ]:
        resp = await sandbox.execute("grep", raw=raw)
        assert resp.error_code == "invalid_arguments" and "unknown parameter" in resp.error
    # Values that look like flags are values: a glob, a path, a name.
    resp = await sandbox.execute("grep", pattern="password", glob="--pre=sh")
    assert resp.error_code == "" and resp.stdout == ""
    resp = await sandbox.execute("grep", pattern="password", path="-rf.md")
    assert resp.stdout == "-rf.md:1:dash file with password\n"
    assert resp.command.endswith("-- ./-rf.md")


async def test_invalid_arguments(sandbox: Sandbox) -> None:
    for tool, raw in [
        ("grep", "{not json"),
        ("grep", '"just a string"'),
        ("unknown_tool", "{}"),
        ("cat", '{"path": "README.md", "extra": 1}'),
        ("cat", '{"path": "README.md", "start_line": "x"}'),
        ("head", '{"path": "README.md", "lines": 100000}'),
        ("cat", '{"path": "' + "a" * 5000 + '"}'),
        ("wc", '{"paths": "README.md"}'),
    ]:
        resp = await sandbox.execute(tool, raw=raw)
        assert resp.error_code == "invalid_arguments", (tool, raw[:40], resp.error)
        assert resp.exit_code != 0 and resp.stdout == "" and resp.error
        assert len(resp.error) <= 600


def test_preexec_fallback_sets_the_same_limits(tmp_path: Path) -> None:
    """Without prlimit, rlimits are set by a preexec_fn (checked in a fresh process without gRPC)."""
    import subprocess
    import sys

    code = (
        "import asyncio\n"
        "from fsagent.sandbox import runner\n"
        "runner.PRLIMIT = None\n"
        "r = asyncio.run(runner.run(['/bin/cat', '/proc/self/limits'], cwd='.', timeout=3, max_output_bytes=65536))\n"
        "print(r.stdout.decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {line[:26].strip(): line[26:].split() for line in out.stdout.splitlines()[1:] if line.strip()}
    assert rows["Max file size"][:2] == ["0", "0"]
    assert rows["Max address space"][0] == str(runner.ADDRESS_SPACE_BYTES)
    assert rows["Max cpu time"][0] == "4"
