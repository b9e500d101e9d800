"""`fsagent warm-cache`, `cache-stats` and `clear-cache` as a user runs them, against real services."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
from pathlib import Path

from fsagent.common import grpcutil
from fsagent.v1 import sandbox_pb2, sandbox_pb2_grpc
from tests.cli.conftest import SIZE_LIMIT, Services, run_cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stats(services: Services) -> dict:
    result = run_cli("cache-stats", "--json", env=services.env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def documents(root: Path) -> tuple[list[str], list[str]]:
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        dirs += [os.path.normpath(os.path.join(rel, d)) for d in dirnames]
        files += [os.path.normpath(os.path.join(rel, f)) for f in filenames if not f.startswith(".")]
    return files, dirs


def test_cache_stats_table_and_json(services: Services) -> None:
    table = run_cli("cache-stats", env=services.env())
    assert table.returncode == 0, table.stderr
    for word in ("content", "search", "sessions", "total", "size limit 64.0 MiB", "hit ratio"):
        assert word in table.stdout
    data = stats(services)
    assert set(data["namespaces"]) == {"content", "search", "sessions"}
    assert data["size_limit_bytes"] == SIZE_LIMIT
    assert 0 < data["usage_percent"] < 100  # an empty SQLite store still has pages
    assert data["usage_percent"] == round(100 * data["volume_bytes"] / SIZE_LIMIT, 2)


async def test_warm_cache_runs_the_real_tools(services: Services) -> None:
    env = services.env()
    assert run_cli("clear-cache", "--force", env=env).returncode == 0
    files, dirs = documents(services.data)
    result = run_cli("warm-cache", "--concurrency", "3", "--grep", "password", "--progress", "always", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["files"] == len(files) and summary["directories"] == len(dirs) + 1
    assert summary["calls"] == len(files) + 2 * (len(dirs) + 1) + 1
    assert summary["errors"] == 0 and summary["ran"] + summary["not_warmable"] == summary["calls"]
    assert summary["entries_added"] >= len(files) and summary["bytes_added"] > 0
    # The bar was drawn on stderr and reached the end.
    assert f"{summary['calls']}/{summary['calls']} calls" in result.stderr and "100.0%" in result.stderr
    assert stats(services)["namespaces"]["content"]["entries"] >= len(files)

    # What the cache now answers is byte for byte what the tool returns when run now.
    async with grpcutil.channel(services.sandbox_addr) as channel:
        stub = sandbox_pb2_grpc.SandboxStub(channel)
        for tool, args in [("cat", {"path": files[0]}), ("grep", {"pattern": "password", "path": "."}),
                           ("ls", {"path": dirs[0]})]:
            request = dict(tool=tool, arguments_json=json.dumps(args))
            cached = await stub.Execute(sandbox_pb2.ExecuteRequest(**request), timeout=30)
            fresh = await stub.Execute(sandbox_pb2.ExecuteRequest(**request, no_cache=True), timeout=30)
            assert cached.cached and not fresh.cached, tool
            assert cached.stdout == fresh.stdout and cached.exit_code == fresh.exit_code, tool
        cat = await stub.Execute(sandbox_pb2.ExecuteRequest(tool="cat", arguments_json=json.dumps({"path": files[0]})))
        assert cat.cached and cat.stdout == (services.data / files[0]).read_text()

    # A second pass finds the file reads cached and runs nothing new for them.
    again = json.loads(run_cli("warm-cache", "--skip-cached", "--json", "--progress", "never", env=env).stdout)
    assert again["already_cached"] >= len(files) and again["errors"] == 0


def test_clear_cache_asks_first(services: Services) -> None:
    env = services.env()
    run_cli("warm-cache", "--progress", "never", env=env)
    entries = stats(services)["entries"]
    assert entries > 0

    # Not a terminal and no --force: refused, nothing removed.
    refused = run_cli("clear-cache", env=env)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert stats(services)["entries"] == entries

    # On a terminal: the question, and "n" keeps everything, "y" clears.
    for answer, code in (("n", 1), ("y", 0)):
        leader, follower = pty.openpty()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "fsagent.cli", "clear-cache", "--namespace", "content"],
                                    env=env, stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            os.write(leader, f"{answer}\n".encode())
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(leader)
            os.close(follower)
        assert proc.returncode == code, err
        assert "Remove" in err and "[y/N]" in err
        left = stats(services)["namespaces"]["content"]["entries"]
        assert (left > 0) if answer == "n" else (left == 0 and "removed" in out)

    # --namespace limits what --force clears.
    run_cli("warm-cache", "--progress", "never", env=env)  # refills what was cleared
    before = stats(services)["namespaces"]
    assert before["search"]["entries"] > 0 and before["content"]["entries"] > 0
    assert run_cli("clear-cache", "--namespace", "search", "--force", env=env).returncode == 0
    after = stats(services)["namespaces"]
    assert after["search"]["entries"] == 0 and after["content"]["entries"] == before["content"]["entries"]


def test_unreachable_services_are_one_line_and_exit_2(services: Services) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    for args in (["cache-stats"], ["clear-cache", "--force"], ["warm-cache"]):
        env = {**services.env(), "FSAGENT_CACHE_ADDR": nowhere}
        result = run_cli(*args, env=env, timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and nowhere in lines[0] and "Traceback" not in result.stderr, result.stderr
    # The cache is up, the sandbox is not.
    result = run_cli("warm-cache", "--sandbox-addr", nowhere, env=services.env(), timeout=30)
    assert result.returncode == 2 and "sandbox" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
