"""Module-scoped real cache + two sandboxes on one data root, on a background loop (harness.py).

Two sandboxes share the cache service like two replicas would: `watching` reuses scope
fingerprints while inotify proves them unchanged (the default), `walking` walks every scope on
every call (FSAGENT_CACHE_WATCH=false). Both must always answer what the tool answers now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import pytest

from tests.cache_props.harness import CacheServer, LoopThread, SandboxServer, start_cache, start_sandbox


@dataclass
class Stack:
    loop: LoopThread
    cache: CacheServer
    watching: SandboxServer
    walking: SandboxServer

    @property
    def sandboxes(self) -> tuple[SandboxServer, SandboxServer]:
        return (self.watching, self.walking)


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def stack(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("props")
    root = base / "data"
    root.mkdir()
    cache = loop_thread.run(start_cache(base / "cache"))
    watching = loop_thread.run(start_sandbox(root, cache.address))
    walking = loop_thread.run(start_sandbox(root, cache.address, cache_watch=False))
    yield Stack(loop_thread, cache, watching, walking)
    for server in (watching, walking):
        loop_thread.run(server.stop())
    loop_thread.run(cache.stop())
