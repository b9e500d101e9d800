"""The second wall: what confinement works on this machine, tried once at start.

Tool processes (rg, grep, find) always get the basic layers (their own session and process group,
an environment of PATH and LC_ALL only, rlimits). On top, where the machine allows:

- unprivileged_uid: when the service runs as root, tools run as FSAGENT_SANDBOX_UID/GID
  (default 65534, nobody), with no supplementary groups and no capabilities;
- bubblewrap: the spawner (and so every tool) lives in new mount, pid, network, ipc, uts and
  cgroup namespaces (plus a user namespace when the service is not root), sees only /usr (and its
  /bin, /lib symlinks), the Python it runs on, /etc/ld.so.cache and the data root, all read-only;
  no /proc, no /dev, no network, every capability dropped;
- landlock: the spawner restricts itself (and so every tool) to reading the data root and
  reading/executing system directories; no write anywhere, no TCP bind/connect (ABI 4+), no
  abstract unix sockets or signals out of the domain (ABI 6+).

These are built once around a long-lived spawner (spawner.py, driven by launcher.py), so a call
pays for a fork, not for a namespace. FSAGENT_SANDBOX_ISOLATION picks the policy: `auto` (every
layer that works), `bwrap` (refuse to start without bubblewrap), `none` (basic layers and uid
only). Each candidate is started and probed with a real call (the data root must be listable,
a host directory outside it must not be); the first that passes is used. If no spawner works,
tools are started directly with `prlimit` (and `setpriv` for the uid).

The in-process readers (cat, head, tail, wc, preview, ls, tree) never start a process; their walls
are the path rules, O_NOFOLLOW and the fstat/fd checks in tools.py, not these.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsagent.common.settings import Settings
from fsagent.sandbox import metrics, paths, runner, spawner
from fsagent.sandbox.launcher import SpawnerError, SpawnerLauncher

log = logging.getLogger(__name__)

BWRAP = runner.which("bwrap") or (os.path.exists("/usr/bin/bwrap") and "/usr/bin/bwrap") or None
TOOLS = ("rg", "grep", "find")
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
LD_CACHE = "/etc/ld.so.cache"


@dataclass
class Report:
    mode: str
    launcher: str = "direct"
    layers: dict[str, bool] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    landlock_abi: int = 0
    notes: list[str] = field(default_factory=list)

    def active(self) -> list[str]:
        return [name for name, on in self.layers.items() if on]


@dataclass
class Isolation:
    launcher: runner.Launcher
    report: Report

    async def close(self) -> None:
        await self.launcher.close()


@dataclass(frozen=True)
class Candidate:
    bwrap: bool
    landlock: bool
    uid: int | None
    gid: int | None

    def label(self) -> str:
        parts = ["bwrap" if self.bwrap else "", "landlock" if self.landlock else "", f"uid {self.uid}" if self.uid is not None else ""]
        return "+".join(p for p in parts if p) or "basic"


def allowed_programs() -> list[str]:
    return [path for path in (runner.which(name) for name in TOOLS) if path]


def python_dirs() -> list[str]:
    """Directories the spawner's interpreter needs (its binary, its standard library)."""
    exe = os.path.realpath(sys.executable)
    dirs = {os.path.dirname(os.path.dirname(exe)), os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    return sorted(d for d in dirs if d and not d.startswith("/usr/") and d != "/usr" and os.path.isdir(d))


def bwrap_argv(root: str, *, as_root: bool, drop_uid: bool) -> list[str]:
    """The bubblewrap command the spawner runs under (see the module docstring for the layout)."""
    assert BWRAP is not None
    argv = [
        BWRAP, "--die-with-parent", "--new-session",
        "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
    ]
    if not as_root:
        argv.append("--unshare-user")  # unprivileged bubblewrap needs a user namespace
    argv += ["--cap-drop", "ALL"]
    if as_root and drop_uid:
        # Only to switch to the tool uid; setresuid() to a non-root uid then clears every capability.
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    argv += ["--clearenv"]
    for name, value in runner.CHILD_ENV.items():
        argv += ["--setenv", name, value]
    argv += ["--ro-bind", "/usr", "/usr"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--ro-bind-try", LD_CACHE, LD_CACHE]
    for path in python_dirs():
        argv += ["--ro-bind", path, path]
    # Parents bwrap creates on its own are 0700: make the way to the data root traversable by the
    # tool uid (only the root's own permissions then decide, as they should).
    for parent in _ancestors(root):
        argv += ["--dir", parent]
    argv += ["--ro-bind", root, root, "--remount-ro", "/", "--chdir", root]  # no writable path at all
    return argv


def _ancestors(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p][:-1]
    out = ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
    return [p for p in out if p != "/usr" and not p.startswith("/usr/")]


def spawner_argv(root: str, candidate: Candidate) -> list[str]:
    config = {
        "root": root,
        "allow": allowed_programs(),
        "uid": candidate.uid,
        "gid": candidate.gid,
        "landlock": candidate.landlock,
        "rlimits": runner.inherited_rlimits(),
        "read": [LD_CACHE],
        "execute": ["/usr", *[p for p in SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)]],
    }
    python = [os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", Path(spawner.__file__).read_text(), json.dumps(config)]
    if candidate.bwrap:
        return [*bwrap_argv(root, as_root=os.geteuid() == 0, drop_uid=candidate.uid is not None), "--", *python]
    return python


async def _probe(launcher: runner.Launcher, root: str, *, expect_outside_hidden: bool) -> str | None:
    """None when the launcher runs a real tool on the data root (and hides the host); else why not."""
    find = runner.which("find")
    if not find:
        return None  # nothing to probe with; the hello already said the spawner runs
    res = await runner.run([find, ".", "-maxdepth", "0", "-print"], cwd=root, timeout=5, max_output_bytes=4096, launcher=launcher)
    if res.exit_code != 0 or res.stdout != b".\n":
        return f"probe failed (exit {res.exit_code}): {res.stderr.decode('utf-8', 'replace').strip()[:200]}"
    if not expect_outside_hidden:
        return None
    # A world-readable directory outside the data root, with a marker: tools must not see it.
    outside = tempfile.mkdtemp(prefix="fsagent-probe-")
    try:
        real = os.path.realpath(outside)
        if paths.is_beneath(real, root) or paths.is_beneath(root, real):
            return None  # TMPDIR overlaps the data root: no outside place to probe with
        os.chmod(real, 0o755)
        marker = os.path.join(real, "outside-marker")
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write("x\n")
        os.chmod(marker, 0o644)
        res = await runner.run(
            [find, real, "-maxdepth", "1", "-name", "outside-marker", "-print"],
            cwd=root, timeout=5, max_output_bytes=4096, launcher=launcher,
        )
        if b"outside-marker" in res.stdout:
            return "the wall is not effective: a directory outside the data root is visible to tools"
    finally:
        shutil.rmtree(outside, ignore_errors=True)
    return None


async def _try(root: str, candidate: Candidate) -> tuple[SpawnerLauncher | None, dict[str, Any], str]:
    launcher = SpawnerLauncher(spawner_argv(root, candidate), pid_namespace=candidate.bwrap)
    try:
        hello = await launcher.start()
    except SpawnerError as exc:
        return None, {}, str(exc)
    problems = list(hello.get("errors") or [])
    reason = ""
    if candidate.uid is not None and hello.get("uid") != candidate.uid:
        reason = "; ".join(problems) or "could not switch uid"
    elif candidate.uid is not None and not hello.get("root_readable"):
        reason = f"the data root is not readable by uid {candidate.uid}"
    elif candidate.landlock and not hello.get("landlock"):
        reason = "; ".join(problems) or "landlock not applied"
    else:
        why = await _probe(launcher, root, expect_outside_hidden=candidate.bwrap or candidate.landlock)
        if why is None:
            return launcher, hello, ""
        reason = why
    await launcher.close()
    return None, hello, reason


def _readable_by(path: str, uid: int, gid: int) -> bool:
    """Can uid:gid (no supplementary groups) list `path`? Checked from mode bits, as root can't ask access()."""
    def allowed(st: os.stat_result, bits: int) -> bool:
        if st.st_uid == uid:
            return (st.st_mode >> 6) & bits == bits
        if st.st_gid == gid:
            return (st.st_mode >> 3) & bits == bits
        return st.st_mode & bits == bits

    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        if not allowed(st, 0o1):
            return False
    try:
        return allowed(os.stat(path), 0o5)
    except OSError:
        return False


def _set_gauge(report: Report) -> None:
    for layer in metrics.CONFINEMENT_LAYERS:
        metrics.CONFINEMENT_ACTIVE.labels(layer).set(1 if report.layers.get(layer) else 0)


def _candidates(mode: str, uid: int | None, gid: int | None, landlock_ok: bool, bwrap_ok: bool) -> list[Candidate]:
    uids = [(uid, gid), (None, None)] if uid is not None else [(None, None)]
    out: list[Candidate] = []
    if mode in ("auto", "bwrap") and bwrap_ok:
        for u, g in uids:
            if landlock_ok:
                out.append(Candidate(True, True, u, g))
            out.append(Candidate(True, False, u, g))
    if mode == "auto":
        for u, g in uids:
            if landlock_ok:
                out.append(Candidate(False, True, u, g))
    if mode in ("auto", "none"):
        for u, g in uids:
            out.append(Candidate(False, False, u, g))
    return out


async def start(settings: Settings) -> Isolation:
    """Detect and start the launcher for tool processes; log it and set the confinement gauge.

    Raises SystemExit when FSAGENT_SANDBOX_ISOLATION=bwrap and bubblewrap does not work.
    """
    root = paths_root(settings)
    mode = settings.sandbox_isolation
    as_root = os.geteuid() == 0
    uid = settings.sandbox_uid if as_root and settings.sandbox_uid != 0 else None
    gid = settings.sandbox_gid if uid is not None else None
    report = Report(mode=mode)
    landlock_ok = spawner.landlock_abi() > 0
    bwrap_ok = BWRAP is not None
    if mode == "bwrap" and not bwrap_ok:
        raise SystemExit("fsagent-sandbox: FSAGENT_SANDBOX_ISOLATION=bwrap but bubblewrap (bwrap) is not installed")
    if not bwrap_ok and mode == "auto":
        report.notes.append("bubblewrap: not installed")
    if not landlock_ok and mode == "auto":
        report.notes.append("landlock: not supported by this kernel")

    chosen: tuple[SpawnerLauncher, dict[str, Any], Candidate] | None = None
    for candidate in _candidates(mode, uid, gid, landlock_ok, bwrap_ok):
        launcher, hello, reason = await _try(root, candidate)
        if launcher is not None:
            chosen = (launcher, hello, candidate)
            break
        report.notes.append(f"{candidate.label()}: {reason}")
        log.info("confinement candidate rejected", extra={"candidate": candidate.label(), "reason": reason})

    if chosen is not None:
        launcher, hello, candidate = chosen
        report.launcher = launcher.name
        report.uid, report.gid = hello.get("uid"), hello.get("gid")
        report.landlock_abi = int(hello.get("landlock") or 0)
        report.layers = {
            "process_group": True, "empty_env": True, "rlimits": True,
            "unprivileged_uid": report.uid not in (None, 0),
            "bubblewrap": candidate.bwrap,
            "landlock": report.landlock_abi > 0,
        }
        result: runner.Launcher = launcher
    else:
        if mode == "bwrap":
            raise SystemExit(
                "fsagent-sandbox: FSAGENT_SANDBOX_ISOLATION=bwrap but bubblewrap does not work here: "
                + "; ".join(report.notes)[-600:]
            )
        direct_uid = uid if uid is not None and runner.SETPRIV and _readable_by(root, uid, gid or uid) else None
        if uid is not None and direct_uid is None:
            report.notes.append(f"uid {uid}: the data root is not readable by it (or setpriv is missing)")
        result = runner.DirectLauncher(direct_uid, gid if direct_uid is not None else None)
        report.launcher = result.name
        report.uid = direct_uid if direct_uid is not None else os.geteuid()
        report.gid = gid if direct_uid is not None else os.getegid()
        report.layers = {
            "process_group": True, "empty_env": True, "rlimits": True,
            "unprivileged_uid": report.uid != 0, "bubblewrap": False, "landlock": False,
        }
    _set_gauge(report)
    log.info(
        "sandbox confinement",
        extra={
            "isolation": mode, "launcher": report.launcher, "active_layers": report.active(),
            "inactive_layers": [name for name, on in report.layers.items() if not on],
            "tool_uid": report.uid, "landlock_abi": report.landlock_abi, "notes": report.notes,
        },
    )
    return Isolation(result, report)


def paths_root(settings: Settings) -> str:
    return os.path.realpath(os.fspath(settings.data_root))
