"""The second wall: detection and fallbacks, the spawner's protocol (kill, cap, death, refusal),
the uid switch, and the output reader. Walls this machine cannot run are skipped, saying why."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fsagent.common.settings import Settings
from fsagent.sandbox import isolation, metrics, runner, spawner
from fsagent.sandbox.launcher import SpawnerLauncher


def _bwrap_runs() -> bool:
    if not shutil.which("bwrap"):
        return False
    return subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                          capture_output=True, timeout=10).returncode == 0


BWRAP = _bwrap_runs()
LANDLOCK = spawner.landlock_abi() > 0
ROOT_USER = os.geteuid() == 0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    (data / "a.txt").write_text("alpha\n")
    os.mkfifo(data / "fifo")
    return data


def gauge(layer: str) -> float:
    return metrics.CONFINEMENT_ACTIVE.labels(layer)._value.get()  # type: ignore[attr-defined]


@pytest.fixture
def open_root() -> Path:  # type: ignore[misc]
    """A data root every uid can reach (pytest's own temp tree is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="fsagent-iso-"))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir(mode=0o755)
    (data / "a.txt").write_text("alpha\n")
    yield data
    shutil.rmtree(base, ignore_errors=True)


async def test_none_keeps_the_basic_layers_only(open_root: Path) -> None:
    root = open_root
    confinement = await isolation.start(Settings(data_root=root, sandbox_isolation="none"))
    try:
        report = confinement.report
        assert report.launcher == "spawner"
        assert report.layers["bubblewrap"] is False and report.layers["landlock"] is False
        assert all(report.layers[k] for k in ("process_group", "empty_env", "rlimits"))
        assert report.layers["unprivileged_uid"] == (report.uid not in (None, 0))
        assert gauge("bubblewrap") == 0 and gauge("landlock") == 0 and gauge("rlimits") == 1
        if ROOT_USER:
            assert report.uid == 65534, report.notes  # tmp data is world-readable: the switch happens
        res = await runner.run([runner.which("find"), "."], cwd=str(root), timeout=5, max_output_bytes=4096, launcher=confinement.launcher)
        assert res.exit_code == 0 and b"./a.txt" in res.stdout
    finally:
        await confinement.close()


async def test_auto_uses_every_wall_that_works_here(root: Path) -> None:
    confinement = await isolation.start(Settings(data_root=root))
    try:
        layers = confinement.report.layers
        assert layers["bubblewrap"] == BWRAP, confinement.report.notes
        assert layers["landlock"] == LANDLOCK, confinement.report.notes
        for layer, on in layers.items():
            assert gauge(layer) == (1 if on else 0)
        if not BWRAP:
            pytest.skip(f"bubblewrap cannot run here; active: {confinement.report.active()}")
    finally:
        await confinement.close()


async def test_bwrap_mode_refuses_to_start_without_bubblewrap(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "BWRAP", None)
    with pytest.raises(SystemExit, match="bubblewrap"):
        await isolation.start(Settings(data_root=root, sandbox_isolation="bwrap"))
    monkeypatch.setattr(isolation, "BWRAP", "/bin/false")  # installed but not working
    with pytest.raises(SystemExit, match="does not work"):
        await isolation.start(Settings(data_root=root, sandbox_isolation="bwrap"))


async def test_no_spawner_falls_back_to_direct_starts(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "spawner_argv", lambda *_: ["/nonexistent/python"])
    confinement = await isolation.start(Settings(data_root=root))
    try:
        assert confinement.report.launcher == "direct"
        assert not confinement.report.layers["bubblewrap"] and not confinement.report.layers["landlock"]
        assert any("cannot run the spawner" in note for note in confinement.report.notes)
        res = await runner.run([runner.which("find"), "."], cwd=str(root), timeout=5, max_output_bytes=4096, launcher=confinement.launcher)
        assert b"./a.txt" in res.stdout
    finally:
        await confinement.close()


@pytest.mark.skipif(not ROOT_USER, reason="the uid switch only happens when the service runs as root")
async def test_unreadable_root_keeps_the_service_uid_and_says_why(tmp_path: Path) -> None:
    data = tmp_path / "private"
    data.mkdir(mode=0o700)
    (data / "a.txt").write_text("x\n")
    confinement = await isolation.start(Settings(data_root=data, sandbox_isolation="none"))
    try:
        assert confinement.report.uid == 0 and not confinement.report.layers["unprivileged_uid"]
        assert any("not readable by uid 65534" in note for note in confinement.report.notes)
    finally:
        await confinement.close()


def test_bwrap_argv_binds_only_what_tools_need(tmp_path: Path) -> None:
    if isolation.BWRAP is None:
        pytest.skip("bubblewrap is not installed")
    argv = isolation.bwrap_argv(str(tmp_path), as_root=True, drop_uid=True)
    joined = " ".join(argv)
    for flag in ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--clearenv"):
        assert flag in argv
    assert "--cap-drop ALL" in joined and f"--ro-bind {tmp_path} {tmp_path}" in joined and "--remount-ro /" in joined
    assert "--proc" not in argv and "--dev" not in argv and "--bind" not in argv  # nothing writable, no /proc, no /dev
    assert "--unshare-user" not in argv  # as root: the spawner switches uid itself
    assert "--unshare-user" in isolation.bwrap_argv(str(tmp_path), as_root=False, drop_uid=False)


@pytest.fixture
async def spawned(root: Path):  # type: ignore[no-untyped-def]
    candidate = isolation.Candidate(BWRAP, LANDLOCK, 65534 if ROOT_USER else None, 65534 if ROOT_USER else None)
    launcher, hello, reason = await isolation._try(str(root), candidate)
    assert launcher is not None, reason
    yield launcher
    await launcher.close()


async def test_spawner_kills_the_group_at_the_timeout(spawned: SpawnerLauncher, root: Path) -> None:
    rg = runner.which("rg") or runner.which("grep")
    started = time.monotonic()
    res = await runner.run([rg, "x", "fifo"], cwd=str(root), timeout=0.5, max_output_bytes=4096, launcher=spawned)  # blocks on the FIFO
    assert res.timed_out and res.exit_code is None
    assert time.monotonic() - started < 3
    assert not spawned._children  # the spawner reported the killed child's exit


async def test_spawner_cap_kills_the_child(spawned: SpawnerLauncher, root: Path) -> None:
    for i in range(300):
        (root / f"f{i:03d}.txt").write_text("line\n" * 50)
    res = await runner.run([runner.which("find"), ".", "-name", "*.txt"], cwd=str(root), timeout=5, max_output_bytes=1024, launcher=spawned)
    assert res.truncated and len(res.stdout) == 1024 and res.exit_code is None


async def test_spawner_refuses_programs_it_was_not_given(spawned: SpawnerLauncher, root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for argv in (["/usr/bin/touch", str(marker)], ["/bin/sh", "-c", f"touch {marker}"], ["rg", "--version"]):
        res = await runner.run(argv, cwd=str(root), timeout=5, max_output_bytes=4096, launcher=spawned)
        assert res.exit_code == 127 and not marker.exists()


async def test_a_dead_spawner_is_replaced(spawned: SpawnerLauncher, root: Path) -> None:
    assert spawned._proc is not None
    os.killpg(spawned._proc.pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    res = await runner.run([runner.which("find"), "."], cwd=str(root), timeout=5, max_output_bytes=4096, launcher=spawned)
    assert res.exit_code == 0 and b"./a.txt" in res.stdout
    assert spawned.restarts == 1


async def test_spawner_children_run_as_the_tool_uid(spawned: SpawnerLauncher, root: Path) -> None:
    if not ROOT_USER:
        pytest.skip("not root: tools keep the service's uid")
    owned = root / "mine"
    owned.mkdir(mode=0o700)
    (owned / "secret.txt").write_text("root only\n")
    res = await runner.run([runner.which("find"), "mine"], cwd=str(root), timeout=5, max_output_bytes=4096, launcher=spawned)
    assert b"secret.txt" not in res.stdout and b"Permission denied" in res.stderr


async def test_pipe_reader_coalesces_many_small_writes(root: Path) -> None:
    """Hundreds of small writes are read in far fewer reads (and all bytes arrive)."""
    script = "import sys,time\nfor i in range(400):\n    sys.stdout.write('x' * 50 + '\\n'); sys.stdout.flush(); time.sleep(0.0002)\n"
    child = await runner.spawn_process([os.path.realpath(__import__("sys").executable), "-c", script], str(root))
    got = bytearray()
    while chunk := await child.stdout.read(65536):
        got += chunk
    await child.wait()
    reads = child.stdout.reads
    child.close()
    assert len(got) == 400 * 51
    assert reads < 200, reads
