"""GET /api/stream/file and /api/stream/search as Server-Sent Events."""

from __future__ import annotations

import asyncio


async def test_file_stream_chunks_then_done(client, sse):
    r = await client.get("/api/stream/file/a.md", params={"chunk_lines": 100})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-trace-id"]
    events = sse(r.text)
    assert [name for name, _ in events] == ["chunk", "chunk", "chunk", "done"]
    assert [(d["path"], d["start_line"], len(d["lines"])) for _, d in events[:3]] == [
        ("a.md", 1, 100), ("a.md", 101, 100), ("a.md", 201, 50),
    ]
    assert events[0][1]["lines"][0] == "line 1 hello"
    assert events[-1] == ("done", {"total_lines": 250})


async def test_file_stream_errors_before_streaming_use_the_error_shape(client, error_shape):
    error_shape(await client.get("/api/stream/file/nope.md"), 404, "not_found")
    error_shape(await client.get("/api/stream/file/secret/x.md"), 403, "permission_denied")
    error_shape(await client.get("/api/stream/file/a.md", params={"chunk_lines": 0}), 422, "validation_error")


async def test_search_stream_matches_then_done(client, upstreams, sse):
    r = await client.get("/api/stream/search/dir", params={"pattern": "hello", "ignore_case": "true"})
    assert r.status_code == 200
    assert sse(r.text) == [
        ("match", {"path": "dir/b.md", "line_number": 3, "line": "HELLO there"}),
        ("done", {"count": 1}),
    ]
    sent = upstreams.sandbox.requests[-1]
    assert (sent.path, sent.pattern, sent.ignore_case, sent.fixed_strings, sent.max_results) == (
        "dir", "hello", True, False, 200,
    )


async def test_search_whole_root_with_a_cap(client, sse):
    r = await client.get("/api/stream/search/", params={"pattern": "hello", "max_results": 5})
    events = sse(r.text)
    assert [name for name, _ in events] == ["match"] * 5 + ["done"]
    assert events[-1][1] == {"count": 5}


async def test_search_with_no_match_is_just_done(client, sse):
    r = await client.get("/api/stream/search/dir", params={"pattern": "zebra"})
    assert sse(r.text) == [("done", {"count": 0})]


async def test_search_validation(client, error_shape):
    error_shape(await client.get("/api/stream/search/dir"), 422, "validation_error")
    error_shape(await client.get("/api/stream/search/dir", params={"pattern": ""}), 422, "validation_error")
    error_shape(
        await client.get("/api/stream/search/dir", params={"pattern": "x", "max_results": 0}),
        422, "validation_error",
    )


async def test_client_disconnect_cancels_the_sandbox_stream(client, upstreams):
    # chunk_lines=7 on a.md makes the test sandbox stall after the first chunk.
    async with client.stream("GET", "/api/stream/file/a.md", params={"chunk_lines": 7}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                break
    await asyncio.wait_for(upstreams.sandbox.stream_cancelled.wait(), 5)
