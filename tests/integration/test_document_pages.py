"""Pages of GET /api/documents (limit + opaque cursor) through the real gateway and sandbox
processes, on a data root far larger than one page. Without paging, the first reply would carry
every entry (the incident: 100,110 entries, 8.8 MB in one reply)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import pytest

from fsagent.cli.localstack import LocalStack
from fsagent.v1 import sandbox_pb2, sandbox_pb2_grpc
from tests.integration.conftest import start_stack

FILES = 3000


@pytest.fixture(scope="module")
def big_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = start_stack(tmp_path_factory.mktemp("pages"))
    many = stack.data_root / "many"
    for i in range(FILES):
        d = many / f"d{i % 30:02d}" / ("sub" if i % 2 else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f-{i:05d}.md").write_text("x")
    (many / "a-b.md").write_text("a name that sorts around a directory's children")
    (many / "d00" / "a b.md").write_text("x")
    yield stack
    stack.stop()


def every_entry(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + [f for f in filenames if not f.startswith(".")]:
            out.append(name if rel == "." else f"{rel}/{name}")
    return sorted(out)


def test_a_recursive_listing_comes_in_pages_that_add_up_to_the_whole(big_stack: LocalStack) -> None:
    expected = every_entry(big_stack.data_root)
    assert len(expected) > FILES
    with httpx.Client(base_url=big_stack.base_url, timeout=30) as c:
        first = c.get("/api/documents", params={"recursive": "true"})
        assert first.status_code == 200
        body = first.json()
        assert body["count"] == len(body["documents"]) == 1000  # the documented default page
        assert body["next_cursor"]
        assert len(first.content) < 200_000  # bounded, whatever the tree's size

        seen: list[str] = []
        cursor, pages = "", 0
        while True:
            params = {"recursive": "true", "limit": "700"} | ({"cursor": cursor} if cursor else {})
            r = c.get("/api/documents", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            assert page["count"] <= 700
            seen += [d["path"] for d in page["documents"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == -(-len(expected) // 700)
        assert seen == expected  # in order, nothing lost, nothing twice

        small = c.get("/api/documents", params={"path": "many/d01/sub"}).json()
        assert small["next_cursor"] is None  # a listing that fits has no cursor


def test_limits_and_cursors_are_checked(big_stack: LocalStack) -> None:
    with httpx.Client(base_url=big_stack.base_url, timeout=30) as c:
        for limit in ("0", "10001"):
            r = c.get("/api/documents", params={"recursive": "true", "limit": limit})
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
        assert c.get("/api/documents", params={"recursive": "true", "limit": "10000"}).status_code == 200
        r = c.get("/api/documents", params={"recursive": "true", "cursor": "not-a-cursor"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
        cursor = c.get("/api/documents", params={"recursive": "true", "limit": "5"}).json()["next_cursor"]
        # A cursor belongs to its listing: another path or recursive flag is refused.
        r = c.get("/api/documents", params={"path": "many", "recursive": "true", "cursor": cursor})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
        r = c.get("/api/documents", params={"cursor": cursor})
        assert r.status_code == 400


async def test_old_sandbox_callers_without_a_limit_still_get_everything(big_stack: LocalStack) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{big_stack.ports.sandbox}") as channel:
        stub = sandbox_pb2_grpc.SandboxStub(channel)
        reply = await stub.ListDocuments(sandbox_pb2.ListDocumentsRequest(path="many", recursive=True), timeout=30)
        assert len(reply.documents) == len(every_entry(big_stack.data_root / "many")) and not reply.next_after
        page = await stub.ListDocuments(
            sandbox_pb2.ListDocumentsRequest(path="many", recursive=True, limit=3, after="many/a-b.md"), timeout=30)
        assert [d.path for d in page.documents] == ["many/d00", "many/d00/a b.md", "many/d00/f-00000.md"]
        assert page.next_after == "many/d00/f-00000.md"
