"""The documents routes, including the streamed multipart upload and its size limit."""

from __future__ import annotations

import asyncio

import pytest

LIMIT = 256 * 1024  # max_file_size in these tests (conftest.MAX_FILE_SIZE)
CHUNK = 64 * 1024


async def test_list(client, upstreams):
    r = await client.get("/api/documents")
    assert r.status_code == 200
    body = r.json()
    assert body["path"] == "" and body["recursive"] is False and body["count"] == 1
    assert body["documents"] == [
        {"path": "a.md", "is_dir": False, "size": len(upstreams.sandbox.docs["a.md"]), "modified": 1700000000.5}
    ]
    r = await client.get("/api/documents", params={"recursive": "true"})
    assert [d["path"] for d in r.json()["documents"]] == ["a.md", "dir/b.md"]
    r = await client.get("/api/documents", params={"path": "dir"})
    assert [d["path"] for d in r.json()["documents"]] == ["dir/b.md"]


async def test_read(client):
    r = await client.get("/api/documents/dir/b.md")
    assert r.status_code == 200
    assert r.json() == {"path": "dir/b.md", "content": "Alpha\nbeta\nHELLO there\n", "size": 23, "modified": 1700000000.5}


async def test_create_update_delete(client, upstreams, error_shape):
    r = await client.post("/api/documents/new/note.md", json={"content": "first"})
    assert r.status_code == 201, r.text
    assert r.json() == {"path": "new/note.md", "is_dir": False, "size": 5, "modified": 1700000000.5}
    assert r.headers["location"] == "/api/documents/new/note.md"
    error_shape(await client.post("/api/documents/new/note.md", json={"content": "again"}), 409, "already_exists")

    r = await client.put("/api/documents/new/note.md", json={"content": "second"})
    assert r.status_code == 200 and r.json()["size"] == 6
    assert upstreams.sandbox.docs["new/note.md"] == "second"
    error_shape(await client.put("/api/documents/missing.md", json={"content": "x"}), 404, "not_found")
    assert "missing.md" not in upstreams.sandbox.docs  # update never creates

    r = await client.delete("/api/documents/new/note.md")
    assert r.status_code == 200 and r.json() == {"path": "new/note.md", "deleted": True}
    error_shape(await client.get("/api/documents/new/note.md"), 404, "not_found")
    error_shape(await client.delete("/api/documents/new/note.md"), 404, "not_found")


async def test_write_needs_content(client, error_shape):
    error = error_shape(await client.post("/api/documents/x.md", json={"text": "x"}), 422, "validation_error")
    assert "'content'" in error["message"]


async def test_content_over_the_file_limit_is_413_before_the_sandbox(client, upstreams, error_shape):
    r = await client.post("/api/documents/big.md", json={"content": "x" * (LIMIT + 1)})
    error_shape(r, 413, "payload_too_large")
    assert "big.md" not in upstreams.sandbox.docs


async def test_body_over_the_request_limit_is_413(client, error_shape):
    # The JSON body bound (4x the file limit + 64 KiB), enforced on Content-Length...
    r = await client.post("/api/documents/big.md", json={"content": "x" * (4 * LIMIT + CHUNK)})
    error_shape(r, 413, "payload_too_large")

    # ...and while reading a chunked body that declares no length.
    async def body():
        yield b'{"content": "'
        for _ in range(20):
            yield b"x" * CHUNK
        yield b'"}'

    r = await client.post("/api/documents/big.md", content=body(), headers={"content-type": "application/json"})
    error_shape(r, 413, "payload_too_large")


# --- upload ----------------------------------------------------------------------------------

async def test_upload_streams_in_64k_chunks(client, upstreams):
    data = b"".join(b"line %d\n" % i for i in range(40_000))[:200_000]
    r = await client.post("/api/documents/upload", data={"path": "up/"}, files={"file": ("notes.txt", data)})
    assert r.status_code == 201, r.text
    assert r.json()["path"] == "up/notes.txt" and r.json()["size"] == len(data)
    assert r.headers["location"] == "/api/documents/up/notes.txt"
    [upload] = upstreams.sandbox.uploads
    assert upload["first"] == "header"
    assert upload["header"].path == "up/notes.txt"
    assert upload["header"].mode == 1  # WRITE_MODE_CREATE
    sizes = [len(c) for c in upload["chunks"]]
    assert sizes == [CHUNK, CHUNK, CHUNK, len(data) - 3 * CHUNK]
    assert b"".join(upload["chunks"]) == data


@pytest.mark.parametrize(
    "path, filename, target",
    [
        (None, "a dir/r.md", "r.md"),  # the client's directory part is dropped
        ("", "r.md", "r.md"),
        ("reports", "r.md", "reports/r.md"),  # no extension: a directory
        ("reports/", "r.md", "reports/r.md"),
        ("reports/q1.md", "r.md", "reports/q1.md"),  # a full path
    ],
)
async def test_upload_target(client, upstreams, path, filename, target):
    form = {} if path is None else {"path": path}
    r = await client.post("/api/documents/upload", data=form, files={"file": (filename, b"hello\n")})
    assert r.status_code == 201, r.text
    assert r.json()["path"] == target
    assert upstreams.sandbox.docs[target] == "hello\n"


async def test_upload_overwrite(client, upstreams, error_shape):
    r = await client.post("/api/documents/upload", files={"file": ("a.md", b"new\n")})
    error_shape(r, 409, "already_exists")
    assert upstreams.sandbox.docs["a.md"].startswith("line 1")
    r = await client.post("/api/documents/upload", data={"overwrite": "true"}, files={"file": ("a.md", b"new\n")})
    assert r.status_code == 201
    assert upstreams.sandbox.uploads[-1]["header"].mode == 3  # WRITE_MODE_UPSERT
    assert upstreams.sandbox.docs["a.md"] == "new\n"


async def test_upload_over_the_limit_by_content_length(client, upstreams, error_shape):
    r = await client.post("/api/documents/upload", files={"file": ("big.txt", b"x" * (LIMIT + CHUNK + 1))})
    error_shape(r, 413, "payload_too_large")
    assert upstreams.sandbox.uploads == []  # rejected before anything was sent on


async def test_upload_over_the_limit_while_streaming(client, upstreams, error_shape):
    boundary = "b0undary"

    async def body():  # chunked: no Content-Length to reject early
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n"
               "Content-Type: text/plain\r\n\r\n").encode()
        for _ in range(LIMIT // CHUNK + 2):
            yield b"x" * CHUNK
            await asyncio.sleep(0)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = await client.post(
        "/api/documents/upload", content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    error_shape(r, 413, "payload_too_large")
    await asyncio.wait_for(upstreams.sandbox.upload_cancelled.wait(), 5)  # the sandbox was told to drop it
    assert "big.txt" not in upstreams.sandbox.docs
    assert sum(len(c) for c in upstreams.sandbox.uploads[0]["chunks"]) <= LIMIT


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "bb") -> dict:
    """A hand-made multipart body (field order matters here; httpx would reorder)."""
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


async def test_upload_form_errors(client, upstreams, error_shape):
    r = await client.post("/api/documents/upload", **multipart(("path", None, b"x/")))
    assert "'file'" in error_shape(r, 422, "validation_error")["message"]
    r = await client.post("/api/documents/upload", data={"overwrite": "maybe"}, files={"file": ("f.md", b"x")})
    assert "'overwrite'" in error_shape(r, 422, "validation_error")["message"]
    r = await client.post("/api/documents/upload", **multipart(("file", "..", b"x")))
    error_shape(r, 422, "validation_error")
    r = await client.post("/api/documents/upload", **multipart(("file", None, b"x")))
    error_shape(r, 422, "validation_error")
    r = await client.post("/api/documents/upload", json={"content": "x"})
    error_shape(r, 415, "unsupported_media_type")
    r = await client.post(
        "/api/documents/upload", content=b"--zz\r\ngarbage",
        headers={"content-type": "multipart/form-data; boundary=zz"},
    )
    error_shape(r, 400)
    # A body that ends inside the file part is a truncated upload: nothing is written.
    truncated = multipart(("file", "cut.md", b"partial"))
    truncated["content"] = truncated["content"].removesuffix(b"\r\n--bb--\r\n")
    error_shape(await client.post("/api/documents/upload", **truncated), 400, "bad_request")
    await asyncio.wait_for(upstreams.sandbox.upload_cancelled.wait(), 5)
    assert "cut.md" not in upstreams.sandbox.docs

    r = await client.post("/api/documents/upload", **multipart(("file", "f.md", b"hi"), ("path", None, b"sub/")))
    assert "before 'file'" in error_shape(r, 400, "bad_request")["message"]
    assert "f.md" not in upstreams.sandbox.docs


async def test_upload_route_is_not_shadowed_by_the_path_route(client, upstreams, error_shape):
    # POST /api/documents/upload is the upload, never "create a document named upload"...
    error_shape(await client.post("/api/documents/upload", json={"content": "x"}), 415)
    assert "upload" not in upstreams.sandbox.docs
    # ...while other methods on that path still reach the document routes.
    error_shape(await client.get("/api/documents/upload"), 404, "not_found")


async def test_client_vanishing_mid_upload_writes_nothing(client, upstreams):
    host, port = client.base_url.host, client.base_url.port
    head = (
        "--bb\r\nContent-Disposition: form-data; name=\"file\"; filename=\"gone.md\"\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /api/documents/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=bb\r\n"
        + f"Content-Length: {len(head) + 150_000}\r\n\r\n".encode()
        + head + b"x" * 100_000
    )
    await writer.drain()
    for _ in range(100):  # until the first chunks reached the sandbox
        if upstreams.sandbox.uploads and upstreams.sandbox.uploads[0]["chunks"]:
            break
        await asyncio.sleep(0.02)
    writer.close()
    await asyncio.wait_for(upstreams.sandbox.upload_cancelled.wait(), 5)
    assert "gone.md" not in upstreams.sandbox.docs


async def test_failed_uploads_leave_no_grpc_tasks_behind(client, upstreams, error_shape):
    """grpc.aio's write() API under interceptors leaks a task when the server ends the call
    early; the upload uses a request iterator instead, and nothing may stay pending."""
    for _ in range(3):
        error_shape(await client.post("/api/documents/upload", files={"file": ("a.md", b"x" * 70_000)}), 409)
    r = await client.post("/api/documents/upload", files={"file": ("s.md", b"x" * (LIMIT + 1))})
    error_shape(r, 413)
    await asyncio.sleep(0.2)
    leftover = [t for t in asyncio.all_tasks() if "_consume_request_iterator" in repr(t)
                or "_proxy_writes" in repr(t)]
    assert leftover == []
