"""Shared test helpers: the data tree with hostile entries, canaries, and a tiny real Cache servicer.

The fake cache stores in a dict and honours the fingerprint rule (a hit only when the stored
fingerprint equals the one asked with; a mismatch drops the entry and answers STALE), so the
sandbox's cache path is tested end to end over real gRPC without the real cache service.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fsagent.v1 import cache_pb2, cache_pb2_grpc

# Set in this (the server's) process: it must never show up in any tool output.
ENV_CANARY = "ENVCANARY-6f1d2b9e-never-in-output"
os.environ["FSAGENT_TEST_ENV_CANARY"] = ENV_CANARY

OUTSIDE_CANARY = "OUTSIDE-CANARY-a7c3e5-secret"


class FakeCache(cache_pb2_grpc.CacheServicer):
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], tuple[bytes, bytes, list[str]]] = {}
        self.gets = 0
        self.puts = 0
        self.invalidations: list[tuple[str, str]] = []

    async def Get(self, request: Any, context: Any) -> Any:
        self.gets += 1
        item = self.entries.get((request.namespace, request.key))
        if item is None:
            return cache_pb2.CacheGetResponse(result=cache_pb2.CacheGetResponse.MISS)
        value, fingerprint, _ = item
        if fingerprint != request.fingerprint:
            del self.entries[(request.namespace, request.key)]
            return cache_pb2.CacheGetResponse(result=cache_pb2.CacheGetResponse.STALE)
        return cache_pb2.CacheGetResponse(result=cache_pb2.CacheGetResponse.HIT, value=value)

    async def Put(self, request: Any, context: Any) -> Any:
        self.puts += 1
        self.entries[(request.namespace, request.key)] = (request.value, request.fingerprint, list(request.scopes))
        return cache_pb2.CachePutResponse(stored=True)

    async def Invalidate(self, request: Any, context: Any) -> Any:
        self.invalidations.append((request.path_prefix, request.reason))
        prefix = request.path_prefix.strip("/")
        removed = 0
        for key, (_, _, scopes) in list(self.entries.items()):
            for scope in scopes:
                if scope == "." or scope == prefix or prefix.startswith(scope + "/") or scope.startswith(prefix + "/"):
                    del self.entries[key]
                    removed += 1
                    break
        return cache_pb2.InvalidateResponse(removed=removed)


def build_tree(base: Path) -> Path:
    """A data root with documents, hostile entries, and an outside directory holding canaries."""
    outside = base / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text(f"{OUTSIDE_CANARY}\n")
    (outside / "dir" / "inner.txt").write_text(f"{OUTSIDE_CANARY} in a dir\n")

    root = base / "data"
    (root / "policies").mkdir(parents=True)
    (root / "notes").mkdir()
    (root / "empty").mkdir()
    (root / "README.md").write_text("# Sample\n\nThe password policy lives in policies/.\n")
    (root / "policies" / "password.md").write_text(
        "# Password policy\n"
        "\n"
        "Passwords must be at least 14 characters long.\n"
        "Rotate passwords every 90 days.\n"
        "Never share a password.\n"
    )
    (root / "policies" / "expense.md").write_text(
        "# Expense policy\n\nMeals up to 40 EUR per day.\nTaxis need a receipt.\n"
    )
    (root / "notes" / ".hidden.md").write_text("hidden password note\n")
    (root / "notes" / "todo.txt").write_text("one\ntwo\nthree")  # no final newline
    (root / "numbers.txt").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    (root / "bin.dat").write_bytes(b"\x00\x01\x02binary password\x00" * 10)
    (root / "-delete").write_text("a file named like a find action\n")
    (root / "-rf.md").write_text("dash file with password\n")
    os.symlink(outside / "secret.txt", root / "link-out-file")
    os.symlink(outside / "dir", root / "link-out-dir")
    os.symlink("../../outside/secret.txt", root / "notes" / "relative-out")
    os.symlink("password.md", root / "policies" / "link-in.md")
    os.symlink("/proc/self/environ", root / "environ-link")
    os.mkfifo(root / "fifo")
    return root
