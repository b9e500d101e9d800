"""The documents API over real gRPC: CRUD, upload limits, read-only mode, streaming."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import AsyncIterator

import grpc
import pytest

from fsagent.v1 import sandbox_pb2 as pb
from tests.sandbox.conftest import Sandbox
from tests.sandbox.helpers import OUTSIDE_CANARY


def temp_files(root: Path) -> list[str]:
    return [
        os.path.join(d, n) for d, _, files in os.walk(root) for n in files if n.startswith(".fsagent-")
    ]


async def code_of(awaitable) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value.code()


async def details_of(awaitable) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value.code(), info.value.details() or ""


async def test_list(sandbox: Sandbox) -> None:
    reply = await sandbox.stub.ListDocuments(pb.ListDocumentsRequest(path="", recursive=True))
    paths = [d.path for d in reply.documents]
    assert paths == sorted(paths)
    assert "README.md" in paths and "policies/password.md" in paths and "policies" in paths
    assert "policies/link-in.md" in paths  # a symlink inside the root is a document
    for absent in ("link-out-file", "link-out-dir", "notes/relative-out", "environ-link", "fifo", "notes/.hidden.md"):
        assert absent not in paths
    assert all(not p.startswith(("/", "./")) and str(sandbox.root) not in p for p in paths)
    info = {d.path: d for d in reply.documents}
    assert info["policies"].is_dir and not info["README.md"].is_dir
    assert info["README.md"].size == (sandbox.root / "README.md").stat().st_size and info["README.md"].modified > 0
    flat = await sandbox.stub.ListDocuments(pb.ListDocumentsRequest(path="policies"))
    assert [d.path for d in flat.documents] == ["policies/expense.md", "policies/link-in.md", "policies/password.md"]
    top = await sandbox.stub.ListDocuments(pb.ListDocumentsRequest(path="."))
    assert "notes/todo.txt" not in [d.path for d in top.documents]
    assert await code_of(sandbox.stub.ListDocuments(pb.ListDocumentsRequest(path="../outside"))) == grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(sandbox.stub.ListDocuments(pb.ListDocumentsRequest(path="link-out-dir"))) == grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(sandbox.stub.ListDocuments(pb.ListDocumentsRequest(path="nope"))) == grpc.StatusCode.NOT_FOUND


async def test_read(sandbox: Sandbox) -> None:
    reply = await sandbox.stub.ReadDocument(pb.ReadDocumentRequest(path="policies/password.md"))
    assert reply.content.startswith("# Password policy\n") and reply.info.path == "policies/password.md"
    code, details = await details_of(sandbox.stub.ReadDocument(pb.ReadDocumentRequest(path="bin.dat")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "binary file" in details
    assert await code_of(sandbox.stub.ReadDocument(pb.ReadDocumentRequest(path="policies"))) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code_of(sandbox.stub.ReadDocument(pb.ReadDocumentRequest(path="fifo"))) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code_of(sandbox.stub.ReadDocument(pb.ReadDocumentRequest(path="missing.md"))) == grpc.StatusCode.NOT_FOUND
    for hostile in ("../outside/secret.txt", "link-out-file", "link-out-dir/inner.txt"):
        code, details = await details_of(sandbox.stub.ReadDocument(pb.ReadDocumentRequest(path=hostile)))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert OUTSIDE_CANARY not in details and str(sandbox.outside) not in details


async def test_read_too_large(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(max_file_size=1024)
    (sb.root / "large.md").write_text("x" * 2048)
    code, details = await details_of(sb.stub.ReadDocument(pb.ReadDocumentRequest(path="large.md")))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "large.md" in details


async def test_write_create_update_upsert_delete(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(with_cache=True)
    stub = sb.stub
    info = await stub.WriteDocument(pb.WriteDocumentRequest(path="new/deep/doc.md", content="v1\n", mode=pb.WRITE_MODE_CREATE))
    assert info.path == "new/deep/doc.md" and info.size == 3 and not info.is_dir
    assert (sb.root / "new/deep/doc.md").read_text() == "v1\n"
    assert oct((sb.root / "new/deep/doc.md").stat().st_mode & 0o777) == "0o644"
    code = await code_of(stub.WriteDocument(pb.WriteDocumentRequest(path="new/deep/doc.md", content="v2\n")))
    assert code == grpc.StatusCode.ALREADY_EXISTS  # mode unspecified = create
    assert (sb.root / "new/deep/doc.md").read_text() == "v1\n"
    await stub.WriteDocument(pb.WriteDocumentRequest(path="new/deep/doc.md", content="v2\n", mode=pb.WRITE_MODE_UPDATE))
    assert (sb.root / "new/deep/doc.md").read_text() == "v2\n"
    code = await code_of(stub.WriteDocument(pb.WriteDocumentRequest(path="absent.md", content="x", mode=pb.WRITE_MODE_UPDATE)))
    assert code == grpc.StatusCode.NOT_FOUND and not (sb.root / "absent.md").exists()
    await stub.WriteDocument(pb.WriteDocumentRequest(path="up.md", content="a", mode=pb.WRITE_MODE_UPSERT))
    await stub.WriteDocument(pb.WriteDocumentRequest(path="up.md", content="b", mode=pb.WRITE_MODE_UPSERT))
    assert (sb.root / "up.md").read_text() == "b"
    # The cache is told, with the relative path and a bounded reason.
    assert ("new/deep/doc.md", "document_write") in sb.cache.invalidations  # type: ignore[union-attr]

    refusals = [
        (pb.WriteDocumentRequest(path="../escape.md", content="x"), grpc.StatusCode.PERMISSION_DENIED),
        (pb.WriteDocumentRequest(path="link-out-dir/x.md", content="x"), grpc.StatusCode.PERMISSION_DENIED),
        (pb.WriteDocumentRequest(path="policies", content="x", mode=pb.WRITE_MODE_UPSERT), grpc.StatusCode.FAILED_PRECONDITION),
        (pb.WriteDocumentRequest(path="README.md/x.md", content="x"), grpc.StatusCode.FAILED_PRECONDITION),
        (pb.WriteDocumentRequest(path="", content="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.WriteDocumentRequest(path="a\x00b", content="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.WriteDocumentRequest(path="x.md", content="x", mode=99), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, expected in refusals:
        assert await code_of(stub.WriteDocument(request)) == expected, request.path
    assert not (sb.root.parent / "escape.md").exists() and not (sb.outside / "dir" / "x.md").exists()

    deleted = await stub.DeleteDocument(pb.DeleteDocumentRequest(path="/new/deep/doc.md"))
    assert deleted.path == "new/deep/doc.md" and not (sb.root / "new/deep/doc.md").exists()
    assert ("new/deep/doc.md", "document_delete") in sb.cache.invalidations  # type: ignore[union-attr]
    assert await code_of(stub.DeleteDocument(pb.DeleteDocumentRequest(path="new/deep/doc.md"))) == grpc.StatusCode.NOT_FOUND
    assert await code_of(stub.DeleteDocument(pb.DeleteDocumentRequest(path="policies"))) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code_of(stub.DeleteDocument(pb.DeleteDocumentRequest(path="../outside/secret.txt"))) == grpc.StatusCode.PERMISSION_DENIED
    # Deleting a symlink removes the link, never what it points to.
    await stub.DeleteDocument(pb.DeleteDocumentRequest(path="link-out-file"))
    assert not os.path.lexists(sb.root / "link-out-file") and (sb.outside / "secret.txt").read_text().startswith(OUTSIDE_CANARY)
    assert temp_files(sb.root) == []


async def test_create_race_has_one_winner(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox()
    contents = [f"writer {i}\n" * 1000 for i in range(12)]
    results = await asyncio.gather(
        *[sb.stub.WriteDocument(pb.WriteDocumentRequest(path="race.md", content=c, mode=pb.WRITE_MODE_CREATE)) for c in contents],
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, pb.DocumentInfo)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 11
    assert {e.code() for e in losers} == {grpc.StatusCode.ALREADY_EXISTS}
    assert (sb.root / "race.md").read_text() in contents  # whole, never mixed or partial
    assert temp_files(sb.root) == []


async def chunks(
    header: pb.UploadHeader | None, parts: list[bytes], *, end: bool = True, total: int | None = None
) -> AsyncIterator[pb.UploadChunk]:
    if header is not None:
        yield pb.UploadChunk(header=header)
    for part in parts:
        yield pb.UploadChunk(data=part)
    if end:
        yield pb.UploadChunk(end=pb.UploadEnd(total_bytes=sum(map(len, parts)) if total is None else total))


async def test_upload_without_end_marker_writes_nothing(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    """A client that vanishes mid-upload may look like a finished stream: only the marker commits."""
    sb: Sandbox = await make_sandbox(max_file_size=4096)
    header = pb.UploadHeader(path="up/cut.md", mode=pb.WRITE_MODE_CREATE)
    code = await code_of(sb.stub.UploadDocument(chunks(header, [b"half"], end=False)))
    assert code == grpc.StatusCode.ABORTED
    code = await code_of(sb.stub.UploadDocument(chunks(header, [b"half"], total=10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not (sb.root / "up/cut.md").exists() and temp_files(sb.root) == []


async def test_upload(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(max_file_size=4096)
    info = await sb.stub.UploadDocument(chunks(pb.UploadHeader(path="up/a.md", mode=pb.WRITE_MODE_CREATE), [b"x" * 1000] * 4))
    assert info.path == "up/a.md" and info.size == 4000
    assert (sb.root / "up/a.md").read_bytes() == b"x" * 4000
    code, details = await details_of(
        sb.stub.UploadDocument(chunks(pb.UploadHeader(path="up/b.md", mode=pb.WRITE_MODE_CREATE), [b"y" * 1000] * 6))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in details
    assert not (sb.root / "up/b.md").exists() and temp_files(sb.root) == []
    # Over the limit on update: the old file stays whole.
    code = await code_of(
        sb.stub.UploadDocument(chunks(pb.UploadHeader(path="up/a.md", mode=pb.WRITE_MODE_UPDATE), [b"z" * 5000]))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and (sb.root / "up/a.md").read_bytes() == b"x" * 4000
    assert await code_of(sb.stub.UploadDocument(chunks(None, [b"data"]))) == grpc.StatusCode.INVALID_ARGUMENT
    code = await code_of(sb.stub.UploadDocument(chunks(pb.UploadHeader(path="up/a.md", mode=pb.WRITE_MODE_CREATE), [b"q"])))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code = await code_of(sb.stub.UploadDocument(chunks(pb.UploadHeader(path="../out.md"), [b"q"])))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    await sb.stub.UploadDocument(chunks(pb.UploadHeader(path="up/a.md", mode=pb.WRITE_MODE_UPSERT), [b"new"]))
    assert (sb.root / "up/a.md").read_bytes() == b"new"
    assert temp_files(sb.root) == []
    code = await code_of(sb.stub.WriteDocument(pb.WriteDocumentRequest(path="w.md", content="x" * 5000)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and not (sb.root / "w.md").exists()


async def test_read_only_mode(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox(read_only=True)
    for call in (
        sb.stub.WriteDocument(pb.WriteDocumentRequest(path="x.md", content="x", mode=pb.WRITE_MODE_UPSERT)),
        sb.stub.DeleteDocument(pb.DeleteDocumentRequest(path="README.md")),
        sb.stub.UploadDocument(chunks(pb.UploadHeader(path="y.md"), [b"y"])),
    ):
        code, details = await details_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "read-only" in details
    assert not (sb.root / "x.md").exists() and not (sb.root / "y.md").exists() and (sb.root / "README.md").exists()
    reply = await sb.stub.ReadDocument(pb.ReadDocumentRequest(path="README.md"))
    assert reply.content.startswith("# Sample")
    assert (await sb.execute("cat", path="README.md")).error_code == ""


async def test_stream_file(sandbox: Sandbox) -> None:
    got = [c async for c in sandbox.stub.StreamFile(pb.StreamFileRequest(path="numbers.txt", chunk_lines=30))]
    assert [c.start_line for c in got] == [1, 31, 61, 91]
    assert [len(c.lines) for c in got] == [30, 30, 30, 10]
    assert [c.last for c in got] == [False, False, False, True]
    assert got[-1].total_lines == 100 and got[0].lines[0] == "line 1" and got[-1].lines[-1] == "line 100"
    exact = [c async for c in sandbox.stub.StreamFile(pb.StreamFileRequest(path="numbers.txt", chunk_lines=50))]
    assert [(c.start_line, len(c.lines), c.last) for c in exact] == [(1, 50, False), (51, 50, True)]
    default = [c async for c in sandbox.stub.StreamFile(pb.StreamFileRequest(path="notes/todo.txt"))]
    assert len(default) == 1 and list(default[0].lines) == ["one", "two", "three"] and default[0].total_lines == 3
    for path, expected in [
        ("bin.dat", grpc.StatusCode.FAILED_PRECONDITION),
        ("policies", grpc.StatusCode.FAILED_PRECONDITION),
        ("link-out-file", grpc.StatusCode.PERMISSION_DENIED),
        ("missing", grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [c async for c in sandbox.stub.StreamFile(pb.StreamFileRequest(path=path))]
        assert info.value.code() == expected, path


async def test_stream_search(sandbox: Sandbox) -> None:
    got = [m async for m in sandbox.stub.StreamSearch(pb.StreamSearchRequest(path="", pattern="password", ignore_case=True))]
    assert [(m.path, m.line_number) for m in got] == [
        ("-rf.md", 1), ("README.md", 3), ("policies/password.md", 1), ("policies/password.md", 3),
        ("policies/password.md", 4), ("policies/password.md", 5),
    ]
    assert got[1].line == "The password policy lives in policies/."
    limited = [m async for m in sandbox.stub.StreamSearch(pb.StreamSearchRequest(pattern="line", path="numbers.txt", max_results=5))]
    assert [m.line_number for m in limited] == [1, 2, 3, 4, 5] and limited[0].path == "numbers.txt"
    fixed = [m async for m in sandbox.stub.StreamSearch(pb.StreamSearchRequest(pattern="line 1.", fixed_strings=True, path="numbers.txt"))]
    assert fixed == []
    canary = [m async for m in sandbox.stub.StreamSearch(pb.StreamSearchRequest(pattern="CANARY"))]
    assert canary == []
    for request, expected in [
        (pb.StreamSearchRequest(pattern="(unclosed"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.StreamSearchRequest(pattern=""), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.StreamSearchRequest(pattern="x", path="../outside"), grpc.StatusCode.PERMISSION_DENIED),
        (pb.StreamSearchRequest(pattern="x", path="missing"), grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [m async for m in sandbox.stub.StreamSearch(request)]
        assert info.value.code() == expected, request


async def test_stream_search_many_results_stops_early(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb: Sandbox = await make_sandbox()
    (sb.root / "many.txt").write_text("hit\n" * 200_000)
    started = time.perf_counter()
    got = [m async for m in sb.stub.StreamSearch(pb.StreamSearchRequest(pattern="hit", max_results=3))]
    assert len(got) == 3 and time.perf_counter() - started < 2


@pytest.mark.parametrize(
    "pattern, reason", [("(unclosed", "unclosed group"), ("[ab", "unclosed character class"), ("\\", "")]
)
async def test_stream_search_invalid_pattern_is_said_in_words(sandbox: Sandbox, pattern: str, reason: str) -> None:
    # Not the search tool's raw output (several lines, a caret under the pattern): one line.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [m async for m in sandbox.stub.StreamSearch(pb.StreamSearchRequest(pattern=pattern))]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = info.value.details()
    assert message.startswith("invalid regular expression: ") and "\n" not in message and "\\n" not in message
    assert reason in message.lower()


def test_search_failure_messages() -> None:
    from fsagent.sandbox.documents import search_failure

    rg = search_failure("regex parse error:\n    (\n    ^\nerror: unclosed group")
    assert (rg.code, rg.message) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid regular expression: unclosed group")
    gnu = search_failure("grep: Unmatched ( or \\(")
    assert (gnu.code, gnu.message) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid regular expression: Unmatched ( or \\(")
    gone = search_failure("rg: a.md: No such file or directory (os error 2)")
    assert gone.code == grpc.StatusCode.NOT_FOUND and gone.message == "no such file or directory"
