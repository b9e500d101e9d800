"""The documents API under attack: the same path rules as the tools, atomic writes, bounded
uploads, clear answers for binary and special files, no host path in any error, read-only mode.
Each case runs over gRPC against the sandbox and through the gateway's HTTP API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from fsagent.common import names
from fsagent.v1 import sandbox_pb2 as pb
from tests.security.conftest import Guard, World
from tests.security.world import FILE_TOKEN, FORGED_LINE, NAME_ATTACKS, UNDECODABLE_NAME

PERMISSION = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def rpc_code(call: Any) -> tuple[grpc.StatusCode, str]:
    """(status, details) of a unary call or a fully drained streaming call."""
    try:
        result = call()
        if isinstance(result, Iterator):
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def url(path: str) -> str:
    """Percent-encode everything but '/' so dots and separators reach the server as sent."""
    return "".join(ch if ch.isalnum() or ch in "/-_" else "".join(f"%{b:02X}" for b in ch.encode()) for ch in path)


READS = [
    ("dotdot", "../outside/secret.txt", {PERMISSION}, {403}),
    ("symlink-file-out", "link-out-file", {PERMISSION}, {403}),
    ("symlink-dir-out", "link-out-dir/secret.txt", {PERMISSION}, {403}),
    ("parent-link", "rootlink/outside/secret.txt", {PERMISSION}, {403}),
    ("dotdot-after-resolution", "notes/up/../outside/secret.txt", {PERMISSION}, {403}),
    ("proc-environ", "/proc/self/environ", {NOT_FOUND}, {404}),
    ("environ-link", "environ-link", {PERMISSION}, {403}),
    ("windows-separators", "..\\outside\\secret.txt", {NOT_FOUND}, {404}),
    ("fifo", "fifo", {PRECONDITION}, {400}),
    ("socket", "socket", {PRECONDITION}, {400}),
    ("binary", "bin.dat", {PRECONDITION}, {415}),
    ("nul-byte", "README.md\x00/../../outside/secret.txt", {INVALID}, {400, 404, 422}),
]


@pytest.mark.parametrize(("name", "path", "codes", "statuses"), READS, ids=[r[0] for r in READS])
def test_read(world: World, name: str, path: str, codes: set, statuses: set) -> None:
    with Guard(world) as guard:
        code, details = rpc_code(lambda: world.stub.ReadDocument(pb.ReadDocumentRequest(path=path), timeout=10))
        guard.clean(details)
        assert code in codes, (code, details)
        reply = world.http.get(f"/api/documents/{url(path)}")
        guard.clean(reply.text)
        assert reply.status_code in statuses, reply.text


def test_read_over_long_path_names_no_host_path(world: World) -> None:
    path = ("b" * 250 + "/") * 16  # fine by shape, over PATH_MAX once joined to the root
    with Guard(world) as guard:
        code, details = rpc_code(lambda: world.stub.ReadDocument(pb.ReadDocumentRequest(path=path), timeout=10))
        guard.clean(details)
        assert code in (INVALID, NOT_FOUND), (code, details)
        reply = world.http.get(f"/api/documents/{'c' * 1000}")
        guard.clean(reply.text)
        assert reply.status_code == 404  # a component over 255 bytes: no file can have that name


WRITES = [
    ("create-dotdot", "../outside/pwned.txt", pb.WRITE_MODE_CREATE, {PERMISSION}, "post", {403}),
    ("create-symlink-dir", "link-out-dir/pwned.txt", pb.WRITE_MODE_CREATE, {PERMISSION}, "post", {403}),
    ("create-parent-link", "rootlink/outside/pwned.txt", pb.WRITE_MODE_CREATE, {PERMISSION}, "post", {403}),
    ("create-absolute-host", "/etc/pwned.txt", pb.WRITE_MODE_CREATE, {grpc.StatusCode.OK}, "post", {201}),
    ("create-reserved-temp-name", ".fsagent-x.tmp", pb.WRITE_MODE_CREATE, {INVALID}, "post", {400}),
    ("create-over-directory", "policies", pb.WRITE_MODE_UPSERT, {PRECONDITION}, "put", {400}),
    ("update-through-symlink", "link-out-file", pb.WRITE_MODE_UPDATE, {grpc.StatusCode.OK}, "put", {200}),
]


@pytest.mark.parametrize(("name", "path", "mode", "codes", "method", "statuses"), WRITES, ids=[w[0] for w in WRITES])
def test_write(world: World, name: str, path: str, mode: int, codes: set, method: str, statuses: set) -> None:
    """Writes never land outside and never write through a symlink to its target."""
    link = world.root / "link-out-file"
    with Guard(world, writes_allowed=True) as guard:
        request = pb.WriteDocumentRequest(path=path, content="attacker text\n", mode=mode)
        code, details = rpc_code(lambda: world.stub.WriteDocument(request, timeout=10))
        guard.clean(details)
        assert code in codes, (code, details)
        _restore(world, link)
        reply = getattr(world.http, method)(f"/api/documents/{url(path)}", json={"content": "attacker text\n"})
        guard.clean(reply.text)
        assert reply.status_code in statuses, reply.text
        _restore(world, link)
    assert not (world.outside / "pwned.txt").exists()
    assert FILE_TOKEN in (world.outside / "secret.txt").read_text()


def _restore(world: World, link: Path) -> None:
    """Undo a legitimate write: put the hostile symlink back (it was replaced, its target never
    touched) and drop what an absolute path created beneath the root."""
    if not link.is_symlink():
        if link.exists():
            link.unlink()
        os.symlink(world.outside / "secret.txt", link)
    created = world.root / "etc" / "pwned.txt"
    if created.exists():
        created.unlink()
        created.parent.rmdir()


def test_delete_outside_and_through_symlinks(world: World) -> None:
    link = world.root / "link-out-file"
    with Guard(world, writes_allowed=True) as guard:
        for path, codes in [("../outside/secret.txt", {PERMISSION}), ("link-out-dir/secret.txt", {PERMISSION}),
                            ("rootlink/outside/secret.txt", {PERMISSION}), ("link-out-file", {grpc.StatusCode.OK})]:
            code, details = rpc_code(lambda: world.stub.DeleteDocument(pb.DeleteDocumentRequest(path=path), timeout=10))
            guard.clean(details)
            assert code in codes, (path, code, details)
            _restore(world, link)
        for path, status in [("../outside/secret.txt", 403), ("link-out-dir/secret.txt", 403), ("link-out-file", 200)]:
            reply = world.http.delete(f"/api/documents/{url(path)}")
            guard.clean(reply.text)
            assert reply.status_code == status, (path, reply.text)
            _restore(world, link)
    assert FILE_TOKEN in (world.outside / "secret.txt").read_text()


def _upload(world: World, path: str, chunks: list[bytes], end: bool = True, mode: int = pb.WRITE_MODE_CREATE) -> tuple[grpc.StatusCode, str]:
    def messages() -> Iterator[pb.UploadChunk]:
        yield pb.UploadChunk(header=pb.UploadHeader(path=path, mode=mode))
        for chunk in chunks:
            yield pb.UploadChunk(data=chunk)
        if end:
            yield pb.UploadChunk(end=pb.UploadEnd(total_bytes=sum(len(c) for c in chunks)))

    return rpc_code(lambda: world.stub.UploadDocument(messages(), timeout=30))


def test_upload_traversal_and_limits_over_grpc(world: World) -> None:
    with Guard(world) as guard:
        for path in ("../outside/pwned.txt", "link-out-dir/pwned.txt", "rootlink/outside/pwned.txt"):
            code, details = _upload(world, path, [b"x" * 10])
            guard.clean(details)
            assert code == PERMISSION, (path, code, details)
        # Over FSAGENT_MAX_FILE_SIZE (10 MiB): refused while streaming, nothing (not even a temp file) left.
        code, details = _upload(world, "upload-too-big.txt", [b"y" * (1 << 20)] * 11)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        # A stream that stops without its end marker commits nothing.
        code, _ = _upload(world, "upload-no-end.txt", [b"z" * 100], end=False)
        assert code == grpc.StatusCode.ABORTED


@pytest.mark.parametrize("filename", ["../../outside/upl-dotdot.txt", "..\\..\\outside\\upl-win.txt", "/etc/upl-abs.txt"])
def test_upload_filename_traversal_over_http(world: World, filename: str) -> None:
    """A hostile upload filename keeps only its last part and lands beneath the root."""
    with Guard(world, writes_allowed=True) as guard:
        reply = world.http.post("/api/documents/upload", files={"file": (filename, b"uploaded\n", "text/plain")})
        guard.clean(reply.text, echoes_input=True)
        assert reply.status_code == 201, reply.text
        landed = reply.json()["path"]
        assert "/" not in landed and ".." not in landed
        assert (world.root / landed).read_bytes() == b"uploaded\n"
        os.unlink(world.root / landed)
    assert not any(p.name.startswith("upl-") for p in world.outside.iterdir())


def test_upload_target_path_traversal_over_http(world: World) -> None:
    with Guard(world) as guard:
        for target in ("../outside/", "link-out-dir/", "../outside/x.txt"):
            reply = world.http.post("/api/documents/upload", data={"path": target}, files={"file": ("a.txt", b"a\n", "text/plain")})
            guard.clean(reply.text)
            assert reply.status_code == 403, (target, reply.text)
        too_big = b"q" * (10 * 1024 * 1024 + 1)
        reply = world.http.post("/api/documents/upload", files={"file": ("big-upload.txt", too_big, "text/plain")})
        assert reply.status_code == 413, reply.text


STREAM_FILES = [("../outside/secret.txt", PERMISSION, 403), ("link-out-file", PERMISSION, 403), ("fifo", PRECONDITION, 400)]


@pytest.mark.parametrize(("path", "code", "status"), STREAM_FILES, ids=[s[0] for s in STREAM_FILES])
def test_stream_file(world: World, path: str, code: grpc.StatusCode, status: int) -> None:
    with Guard(world) as guard:
        got, details = rpc_code(lambda: world.stub.StreamFile(pb.StreamFileRequest(path=path), timeout=10))
        guard.clean(details)
        assert got == code, (got, details)
        reply = world.http.get(f"/api/stream/file/{url(path)}")
        guard.clean(reply.text)
        assert reply.status_code == status or '"error"' in reply.text, reply.text


SEARCHES = [
    ("dotdot-path", "..", "password", {PERMISSION}, {403}),
    ("symlink-path", "link-out-dir", "CANARY", {PERMISSION}, {403}),
    ("flag-pattern", ".", "--pre=/bin/sh", {grpc.StatusCode.OK}, {200}),
    ("backreference", ".", "(a)\\1", {INVALID}, {400}),
    ("regex-size-bomb", ".", "(\\w{1,1000}){1,1000}", {INVALID}, {400}),
    ("canary-everywhere", ".", "CANARY", {grpc.StatusCode.OK}, {200}),
]


@pytest.mark.parametrize(("name", "path", "pattern", "codes", "statuses"), SEARCHES, ids=[s[0] for s in SEARCHES])
def test_stream_search(world: World, name: str, path: str, pattern: str, codes: set, statuses: set) -> None:
    with Guard(world) as guard:
        request = pb.StreamSearchRequest(path=path, pattern=pattern, max_results=10_000)
        got, details = rpc_code(lambda: world.stub.StreamSearch(request, timeout=10))
        guard.clean(details)
        assert got in codes, (got, details)
        matches = list(world.stub.StreamSearch(request, timeout=10)) if got == grpc.StatusCode.OK else []
        guard.clean("\n".join(f"{m.path}:{m.line}" for m in matches))
        reply = world.http.get(f"/api/stream/search/{url(path) if path != '.' else ''}", params={"pattern": pattern})
        guard.clean(reply.text)
        assert reply.status_code in statuses or '"error"' in reply.text, reply.text


def test_list(world: World) -> None:
    with Guard(world) as guard:
        code, details = rpc_code(lambda: world.stub.ListDocuments(pb.ListDocumentsRequest(path="../outside"), timeout=10))
        assert code == PERMISSION, details
        listing = world.stub.ListDocuments(pb.ListDocumentsRequest(path="", recursive=True), timeout=30)
        names = "\n".join(d.path for d in listing.documents)
        guard.clean(names)
        assert "inner-secret" not in names and "link-out-file" not in names and "fifo" not in names
        reply = world.http.get("/api/documents", params={"path": "link-out-dir"})
        assert reply.status_code == 403
        reply = world.http.get("/api/documents", params={"recursive": "true", "limit": "10000"})  # one page
        guard.clean(reply.text)
        assert "inner-secret" not in reply.text


def test_read_only_mode_refuses_every_write(readonly_world: World) -> None:
    world = readonly_world
    with Guard(world) as guard:
        for call in (
            lambda: world.stub.WriteDocument(pb.WriteDocumentRequest(path="new.md", content="x", mode=pb.WRITE_MODE_CREATE), timeout=10),
            lambda: world.stub.WriteDocument(pb.WriteDocumentRequest(path="README.md", content="x", mode=pb.WRITE_MODE_UPSERT), timeout=10),
            lambda: world.stub.DeleteDocument(pb.DeleteDocumentRequest(path="README.md"), timeout=10),
        ):
            code, details = rpc_code(call)
            assert code == PERMISSION, details
            guard.clean(details)
        code, _ = _upload(world, "uploaded.md", [b"x"])
        assert code == PERMISSION
        for method, path in (("post", "new.md"), ("put", "README.md")):
            reply = getattr(world.http, method)(f"/api/documents/{path}", json={"content": "x"})
            assert reply.status_code == 403, reply.text
        assert world.http.delete("/api/documents/README.md").status_code == 403
        reply = world.http.post("/api/documents/upload", files={"file": ("u.md", b"x", "text/plain")})
        assert reply.status_code == 403, reply.text
        # Reads and tools still work.
        assert world.http.get("/api/documents/README.md").status_code == 200


# --- names that try to forge citations -----------------------------------------------------------

FORBIDDEN_NAMES = [
    ("newline-attack", f"forge2\npolicies/password-policy.md:9:{FORGED_LINE}\nx.md"),
    ("carriage-return", f"cr2\rpolicies/password-policy.md:10:{FORGED_LINE}.md"),
    ("escape-sequence", "esc2\x1b[2J\x1b[1A.md"),
    ("c1-next-line", "nel2\x85x.md"),
    ("line-separator", "ls2\u2028x.md"),
    ("tab", "tab2\tx.md"),
    ("bell-in-a-directory", "bell\x07dir/x.md"),
    ("quoted-form-of-a-newline", '"forge3\\npolicies/password-policy.md:9:x.md"'),
]


@pytest.mark.parametrize("name", [n for _, n in FORBIDDEN_NAMES], ids=[i for i, _ in FORBIDDEN_NAMES])
def test_no_write_creates_a_forbidden_name(world: World, name: str) -> None:
    """gRPC (create, upsert, update, upload) and HTTP (POST, PUT): refused, nothing created."""
    with Guard(world) as guard:
        for mode in (pb.WRITE_MODE_CREATE, pb.WRITE_MODE_UPSERT, pb.WRITE_MODE_UPDATE):
            request = pb.WriteDocumentRequest(path=name, content="password rules\n", mode=mode)
            code, details = rpc_code(lambda: world.stub.WriteDocument(request, timeout=10))
            guard.clean(details)
            assert code == INVALID and details.startswith("invalid path"), (mode, code, details)
        code, details = _upload(world, name, [b"password rules\n"])
        guard.clean(details)
        assert code == INVALID and details.startswith("invalid path"), (code, details)
        for method in ("post", "put"):
            reply = getattr(world.http, method)(f"/api/documents/{url(name)}", json={"content": "x\n"})
            guard.clean(reply.text)
            assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_path", reply.text


def _multipart(*parts: tuple[bytes, bytes | None, bytes]) -> dict[str, Any]:
    body = b""
    for name, filename, value in parts:
        disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename is not None else b"")
        body += b"--xx\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"
    return {"content": body + b"--xx--\r\n", "headers": {"content-type": "multipart/form-data; boundary=xx"}}


UPLOAD_NAMES = [
    ("filename-escape", [(b"file", b"esc3\x1b[2J.md", b"password\n")]),
    ("filename-c1", [(b"file", "nel3\x85.md".encode(), b"password\n")]),
    ("filename-line-separator", [(b"file", "ls3\u2028x.md".encode(), b"password\n")]),
    ("filename-not-utf8", [(b"file", b"bad3\xff\xfe.md", b"password\n")]),
    ("path-newline-attack", [(b"path", None, f"forge4\npolicies/password-policy.md:9:{FORGED_LINE}\nx.md".encode()), (b"file", b"a.md", b"password\n")]),
    ("path-directory-control", [(b"path", None, b"dir\x01/"), (b"file", b"a.md", b"password\n")]),
]


@pytest.mark.parametrize("parts", [p for _, p in UPLOAD_NAMES], ids=[i for i, _ in UPLOAD_NAMES])
def test_multipart_upload_refuses_forbidden_names(world: World, parts: list[tuple[bytes, bytes | None, bytes]]) -> None:
    with Guard(world) as guard:
        reply = world.http.post("/api/documents/upload", **_multipart(*parts))
        guard.clean(reply.text)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_path", reply.text


def test_an_existing_hostile_file_is_read_but_never_rewritten(world: World) -> None:
    name = next(iter(NAME_ATTACKS))
    shown = names.display(name)
    with Guard(world) as guard:
        read = world.stub.ReadDocument(pb.ReadDocumentRequest(path=shown), timeout=10)
        assert read.info.path == shown and read.content == NAME_ATTACKS[name]
        reply = world.http.get(f"/api/documents/{url(shown)}")
        guard.clean(reply.text)
        assert reply.status_code == 200 and reply.json()["path"] == shown, reply.text
        request = pb.WriteDocumentRequest(path=shown, content="rewritten\n", mode=pb.WRITE_MODE_UPDATE)
        code, details = rpc_code(lambda: world.stub.WriteDocument(request, timeout=10))
        assert code == INVALID, details
        reply = world.http.put(f"/api/documents/{url(shown)}", json={"content": "rewritten\n"})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_path", reply.text


def _sse_data(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data:"):]) for line in text.splitlines() if line.startswith("data:")]


def test_listings_and_search_streams_show_names_escaped(world: World) -> None:
    undecodable = UNDECODABLE_NAME.decode("utf-8", "surrogateescape")
    expected = {*NAME_ATTACKS, undecodable}
    with Guard(world) as guard:
        listing = world.stub.ListDocuments(pb.ListDocumentsRequest(path="", recursive=True), timeout=30)
        paths = [d.path for d in listing.documents]
        guard.clean("\n".join(paths))
        assert expected <= {names.parse(p) for p in paths}
        reply = world.http.get("/api/documents", params={"recursive": "true", "limit": "10000"})  # one page
        http_paths = [d["path"] for d in reply.json()["documents"]]
        guard.clean("\n".join(http_paths))
        assert http_paths == paths

        request = pb.StreamSearchRequest(path=".", pattern="password rules", max_results=10_000)
        matches = list(world.stub.StreamSearch(request, timeout=10))
        lines = "\n".join(f"{m.path}:{m.line_number}:{m.line}" for m in matches)
        guard.clean(lines)
        guard.true_grep(lines)
        assert expected <= {names.parse(m.path) for m in matches}
        reply = world.http.get("/api/stream/search/", params={"pattern": "password rules", "max_results": 10_000})
        events = [e for e in _sse_data(reply.text) if "line_number" in e]
        http_lines = "\n".join(f"{e['path']}:{e['line_number']}:{e['line']}" for e in events)
        guard.clean(http_lines)
        guard.true_grep(http_lines)
        assert http_lines == lines
