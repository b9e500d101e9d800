"""The walls themselves: canaries are live, the confinement the sandbox reports is what its tool
processes really get, load and catastrophic patterns stay bounded, a path swapped to a symlink
mid-call leaks nothing, and each OS wall holds on its own. Walls this machine cannot run are
skipped with the reason (bubblewrap needs user/mount namespaces, Landlock kernel 5.13+)."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from fsagent.common import toolspec
from fsagent.common.settings import Settings
from fsagent.sandbox import isolation, runner, spawner, tools
from fsagent.v1 import sandbox_pb2 as pb
from tests.security import world as w
from tests.security.conftest import Guard, World

NESTED = "((a{1,100}){1,100}){1,100}"  # rg needs ~0.5 s and ~300 MB to build it: a slow, real call


def bwrap_works() -> tuple[bool, str]:
    if not shutil.which("bwrap"):
        return False, "bubblewrap is not installed"
    proc = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                          capture_output=True, text=True, timeout=10)
    return proc.returncode == 0, proc.stderr.strip()[:200]


def gauges(world: World) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^fsagent_sandbox_confinement_active\{layer="(\w+)"\} (\S+)$', world.metrics(), re.M)}


def test_canaries_are_live(world: World) -> None:
    """The suite would notice a leak: the secrets are where an escape would find them."""
    pid = world.stack.processes["sandbox"].pid
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert f"FSAGENT_CANARY={w.ENV_TOKEN}".encode() in environ
    assert f"OPENAI_API_KEY={w.KEY_TOKEN}".encode() in environ
    assert w.FILE_TOKEN in (world.outside / "secret.txt").read_text()
    assert w.leaks(f"x{w.FILE_TOKEN[-16:]}x") and w.leaks(str(world.root) + "/a", world.host_paths)
    with pytest.raises(AssertionError, match="data root changed"):
        with Guard(world):
            (world.root / "guard-check.txt").write_text("x")
    os.unlink(world.root / "guard-check.txt")


def test_reported_walls_match_this_machine(world: World) -> None:
    found = gauges(world)
    assert set(found) == {"process_group", "empty_env", "rlimits", "unprivileged_uid", "bubblewrap", "landlock"}
    assert found["process_group"] == found["empty_env"] == found["rlimits"] == 1
    log = (world.base / "logs" / "sandbox.log").read_text()
    assert '"sandbox confinement"' in log
    works, why = bwrap_works()
    if os.geteuid() == 0:
        assert found["unprivileged_uid"] == 1, "the service runs as root: tools must not"
    if not works:
        pytest.skip(f"bubblewrap cannot run here ({why}); gauges: {found}")
    assert found["bubblewrap"] == 1, log[-2000:]
    if spawner.landlock_abi() > 0:
        assert found["landlock"] == 1
    else:
        pytest.skip(f"no Landlock in this kernel; gauges: {found}")


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        out += children
        frontier += children
    return out


def test_tool_processes_get_every_reported_wall(world: World) -> None:
    """Catch a real rg started for a model call and look at it from the host."""
    layers = gauges(world)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(world.execute, "grep", {"pattern": NESTED, "path": "longline.txt"}, 30, True)
        seen: dict[str, str] | None = None
        deadline = time.monotonic() + w.TOOL_TIMEOUT + 1
        while seen is None and time.monotonic() < deadline and not call.done():
            for pid in _descendants(world.stack.processes["sandbox"].pid):
                try:
                    if os.path.basename(os.readlink(f"/proc/{pid}/exe")) != "rg":
                        continue
                    # The CPU seconds are set by the spawner right after the start (they count
                    # from the start, so a few ms later loses nothing): let it do that.
                    time.sleep(0.1)
                    seen = {
                        "pid": str(pid),
                        "status": Path(f"/proc/{pid}/status").read_text(),
                        "environ": Path(f"/proc/{pid}/environ").read_text(),
                        "limits": Path(f"/proc/{pid}/limits").read_text(),
                        "stat": Path(f"/proc/{pid}/stat").read_text(),
                        "net": os.readlink(f"/proc/{pid}/ns/net"),
                        "mnt": os.readlink(f"/proc/{pid}/ns/mnt"),
                    }
                    break
                except OSError:
                    continue
        call.result(timeout=30)
    assert seen is not None, "no rg process was seen during the call"
    assert sorted(seen["environ"].strip("\0").split("\0")) == ["LC_ALL=C.UTF-8", f"PATH={runner.SAFE_PATH}"]
    status = dict(line.split(":", 1) for line in seen["status"].splitlines() if ":" in line)
    assert int(status["CapEff"].strip(), 16) == 0 and int(status["CapPrm"].strip(), 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    fields = seen["stat"].rsplit(")", 1)[1].split()
    assert int(fields[3]) != os.getsid(0)  # its own session (pid namespaces hide the numbers' meaning)
    rows = {line[:26].strip(): line[26:].split() for line in seen["limits"].splitlines()[1:]}
    assert rows["Max file size"][:2] == ["0", "0"]
    assert rows["Max cpu time"][0] == str(math.ceil(w.TOOL_TIMEOUT) + 1)
    assert rows["Max address space"][0] == str(runner.ADDRESS_SPACE_BYTES)
    assert rows["Max open files"][0] == str(runner.MAX_OPEN_FILES)
    if layers.get("unprivileged_uid"):
        assert status["Uid"].split()[:3] == ["65534"] * 3 and status["Groups"].strip() == ""
    if layers.get("bubblewrap"):
        assert seen["net"] != os.readlink("/proc/self/ns/net") and seen["mnt"] != os.readlink("/proc/self/ns/mnt")


def test_flood_of_heavy_calls_leaves_other_calls_fast(world: World) -> None:
    with Guard(world, limit=3 * (w.TOOL_TIMEOUT + w.TIME_MARGIN)), ThreadPoolExecutor(12) as pool:
        heavy = [pool.submit(world.execute, "grep", {"pattern": NESTED, "path": "big.txt"}, 30, True) for _ in range(8)]
        heavy += [pool.submit(world.execute, "cat", {"path": "big.txt"}, 30, True) for _ in range(2)]
        time.sleep(0.2)
        started = time.monotonic()
        quick = world.execute("head", {"path": "README.md", "lines": 3})
        assert time.monotonic() - started < 1.0 and quick.error_code == ""
        assert world.serving()
        for future in heavy:
            resp = future.result(timeout=30)
            assert resp.error_code in ("", "timeout", "invalid_arguments"), resp.error


def test_streaming_search_runs_the_regex_off_the_event_loop(world: World) -> None:
    request = pb.StreamSearchRequest(path="longline.txt", pattern=NESTED, max_results=10)
    with Guard(world), ThreadPoolExecutor(2) as pool:
        search = pool.submit(lambda: list(world.stub.StreamSearch(request, timeout=30)))
        time.sleep(0.15)
        started = time.monotonic()
        assert world.serving()
        world.stub.ReadDocument(pb.ReadDocumentRequest(path="README.md"), timeout=5)
        assert time.monotonic() - started < 0.5, "the event loop was blocked by the search"
        try:
            search.result(timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INVALID_ARGUMENT)


def test_path_swapped_to_a_symlink_during_calls(world: World) -> None:
    """TOCTOU, best effort: `flip` turns into a symlink to an outside directory (holding a file of
    the same name, full of canary) and back, as fast as possible, while calls read through it."""
    flip, parked = world.root / "flip", world.root / ".flip-parked"
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        while not stop.is_set():
            os.rename(flip, parked)
            os.symlink(world.outside / "flipdir", flip)
            time.sleep(0.0005)
            os.unlink(flip)
            os.rename(parked, flip)
            swaps[0] += 1

    calls = [
        ("cat", {"path": "flip/inside.txt"}), ("head", {"path": "flip/inside.txt"}),
        ("tail", {"path": "flip/inside.txt"}), ("preview", {"path": "flip/inside.txt"}),
        ("wc", {"paths": ["flip/inside.txt"]}), ("grep", {"pattern": "swapped|inside", "path": "flip"}),
        ("grep", {"pattern": "swapped", "path": "flip/inside.txt"}), ("find", {"path": "flip"}),
        ("ls", {"path": "flip"}), ("tree", {"path": "flip"}),
    ]
    outputs: list[str] = []
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        with ThreadPoolExecutor(6) as pool:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                for resp in pool.map(lambda c: world.execute(*c, no_cache=True), calls):
                    outputs.append("\n".join((resp.stdout, resp.stderr, resp.error)))
            reads = [pool.submit(world.stub.ReadDocument, pb.ReadDocumentRequest(path="flip/inside.txt"), timeout=10) for _ in range(30)]
            for future in reads:
                try:
                    outputs.append(future.result().content)
                except grpc.RpcError as exc:
                    outputs.append(exc.details() or "")
    finally:
        stop.set()
        thread.join(5)
        if not flip.is_dir() or flip.is_symlink():
            if flip.is_symlink():
                flip.unlink()
            os.rename(parked, flip)
    assert swaps[0] > 10, "the swapper did not run"
    leaked = [out for out in outputs if w.leaks(out)]
    assert not leaked, leaked[:3]


@pytest.fixture
def fallback_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    root.chmod(0o755)
    (root / "doc.txt").write_text("aaaa bbbb\n" * 1000)
    (root / "secret-free.txt").write_text("nothing to see\n")
    return root


async def test_gnu_grep_fallback_catastrophic_patterns_end_at_the_timeout(fallback_root: Path) -> None:
    """Without rg the sandbox runs GNU grep: backreferences are refused, and a pattern whose
    compilation explodes is stopped by the timeout (or the address-space limit), not left running."""
    confinement = await isolation.start(Settings(data_root=fallback_root, tool_timeout=1.0))
    try:
        ctx = tools.Context.create(fallback_root, 65536, 1.0, confinement.launcher)
        ctx = tools.Context(ctx.root_real, ctx.max_output_bytes, ctx.timeout, rg=None, grep=ctx.grep, find=ctx.find,
                            launcher=confinement.launcher)
        if not ctx.grep:
            pytest.skip("GNU grep is not installed")

        async def grep(pattern: str) -> tools.ToolOutput:
            args = toolspec.parse_arguments("grep", {"pattern": pattern})
            return await tools.run(ctx, tools.prepare(ctx, "grep", args))

        refused = await grep("^(a+)+\\1b")
        assert refused.error_code == "invalid_arguments" and "backreference" in refused.error
        started = time.monotonic()
        bomb = asyncio.ensure_future(grep("((a{1,100}){1,100}){1,100}((b{1,100}){1,100}){1,100}"))
        await asyncio.sleep(0.2)
        quick_started = time.monotonic()
        quick = await grep("bbbb")
        assert quick.error_code == "" and time.monotonic() - quick_started < 1.0
        out = await bomb
        assert time.monotonic() - started < 1.0 + 2.0
        assert out.error_code in ("timeout", "internal", "invalid_arguments"), out
    finally:
        await confinement.close()


async def _single_wall(root: Path, candidate: isolation.Candidate) -> tuple[runner.Launcher | None, str]:
    launcher, _, reason = await isolation._try(str(root), candidate)
    return launcher, reason


@pytest.mark.parametrize("wall", ["bubblewrap", "landlock"])
async def test_each_os_wall_holds_on_its_own(tmp_path: Path, wall: str) -> None:
    """With only one OS wall (and the basic layers), a tool still cannot see outside the root."""
    if wall == "bubblewrap" and not bwrap_works()[0]:
        pytest.skip(f"bubblewrap cannot run here: {bwrap_works()[1]}")
    if wall == "landlock" and spawner.landlock_abi() <= 0:
        pytest.skip("no Landlock in this kernel")
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    for d in (tmp_path, root, outside):
        d.chmod(0o755)
    (root / "in.txt").write_text("inside\n")
    (outside / "out.txt").write_text(f"{w.FILE_TOKEN}\n")
    os.symlink(outside, root / "escape")
    launcher, reason = await _single_wall(root, isolation.Candidate(wall == "bubblewrap", wall == "landlock", None, None))
    assert launcher is not None, reason
    try:
        rg, find = runner.which("rg"), runner.which("find")
        runs = [
            [rg, "--no-config", "-L", "CANARY", "."],  # -L: follow symlinks (never sent by the sandbox)
            [rg, "--no-config", "CANARY", str(outside / "out.txt")],
            [find, "-L", ".", str(outside)],
        ]
        for argv in runs:
            res = await runner.run(argv, cwd=str(root), timeout=5, max_output_bytes=65536, launcher=launcher)
            assert not w.leaks(res.stdout.decode() + res.stderr.decode()), argv
            assert b"out.txt" not in res.stdout, argv
        res = await runner.run([find, "."], cwd=str(root), timeout=5, max_output_bytes=65536, launcher=launcher)
        assert b"./in.txt" in res.stdout  # the root itself is readable
        # Only the tools the sandbox runs can be started at all.
        res = await runner.run(["/usr/bin/touch", str(root / "x")], cwd=str(root), timeout=5, max_output_bytes=4096, launcher=launcher)
        assert res.exit_code != 0 and not (root / "x").exists()
    finally:
        await launcher.close()


def test_the_cache_never_answers_before_the_path_check(world: World) -> None:
    """A result cached for a path is not served once that path leads outside (the old version
    served outside files from its cache before checking the path)."""
    name, folder = "cached-then-swapped.txt", world.root / "cached-dir"
    file = world.root / name
    file.write_text("harmless\n")
    folder.mkdir()
    (folder / "inside.txt").write_text("harmless\n")
    calls = [("cat", {"path": name}), ("grep", {"pattern": "harmless|CANARY", "path": "cached-dir"}),
             ("wc", {"paths": [name]}), ("find", {"path": "cached-dir"})]
    try:
        with Guard(world, writes_allowed=True) as guard:
            for tool, args in calls:
                world.execute(tool, args)
                world.execute(tool, args)  # cached now, where the cache policy caches it
            file.unlink()
            os.symlink(world.outside / "secret.txt", file)
            shutil.rmtree(folder)
            os.symlink(world.outside, folder)
            for tool, args in calls:
                resp = world.execute(tool, args)
                guard.clean("\n".join((resp.stdout, resp.stderr, resp.error)))
                assert resp.error_code == "path_outside_root" and not resp.cached, (tool, resp.error_code, resp.cached)
    finally:
        for path in (file, folder):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
