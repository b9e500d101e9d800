"""Follow a file or a search as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated, Iterable

from fastapi import APIRouter, Path, Query
from sse_starlette import EventSourceResponse

from fsagent.common import names
from fsagent.gateway import sse
from fsagent.gateway.clients import STREAM_TIMEOUT, SandboxDep, SettingsDep
from fsagent.gateway.declared import DESCRIPTIONS, responses
from fsagent.gateway.routes.documents import check_nameable
from fsagent.gateway.metrics import InstrumentedRoute
from fsagent.v1 import sandbox_pb2

router = APIRouter(prefix="/api/stream", tags=["stream"], route_class=InstrumentedRoute)

_SSE = {"response_class": EventSourceResponse}


@router.get(
    "/file/{path:path}", **_SSE,
    summary="A file's lines as `chunk` events {path, start_line, lines}, then `done` {total_lines}",
    responses={200: {"content": {"text/event-stream": {}}}, **responses(400, 403, 404, 413, 415)},
)
async def stream_file(
    path: Annotated[str, Path(min_length=1, max_length=1024)],
    sandbox: SandboxDep,
    settings: SettingsDep,
    chunk_lines: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> EventSourceResponse:
    check_nameable(path)
    seen = {"lines": 0, "total": None}
    shown_path = names.display(names.parse(path))  # the caller's path, printed like every path

    def render(chunk: sandbox_pb2.FileChunk) -> Iterable[sse.Event]:
        seen["lines"] += len(chunk.lines)
        if chunk.last:
            seen["total"] = chunk.total_lines
        if chunk.lines:
            lines = list(chunk.lines)
            yield "chunk", {"path": shown_path, "start_line": chunk.start_line, "lines": lines}

    def finish() -> Iterable[sse.Event]:
        total = seen["total"]
        yield "done", {"total_lines": seen["lines"] if total is None else total}

    call = sandbox.StreamFile(
        sandbox_pb2.StreamFileRequest(path=path, chunk_lines=chunk_lines), timeout=STREAM_TIMEOUT
    )
    return await sse.stream_response(
        call, upstream="sandbox", shutdown_grace=settings.shutdown_grace,
        render=render, finish=finish,
    )


@router.get(
    "/search/{path:path}", **_SSE,
    summary="Matches under a path as `match` events {path, line_number, line}, then `done` {count}",
    responses={200: {"content": {"text/event-stream": {}}}, **responses(
        400, 403, 404, s400=DESCRIPTIONS[400] + " `invalid_argument` also for a pattern that is not a "
        "valid regular expression (send `fixed_strings=true` for a literal).",
    )},
)
async def stream_search(
    path: Annotated[
        str, Path(max_length=1024, description="File or directory; empty for the root.")
    ],
    sandbox: SandboxDep,
    settings: SettingsDep,
    pattern: Annotated[str, Query(min_length=1, max_length=1000)],
    ignore_case: bool = False,
    fixed_strings: bool = False,
    max_results: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> EventSourceResponse:
    check_nameable(path)
    count = [0]

    def render(match: sandbox_pb2.SearchMatch) -> Iterable[sse.Event]:
        count[0] += 1
        yield "match", {"path": match.path, "line_number": match.line_number, "line": match.line}

    request = sandbox_pb2.StreamSearchRequest(
        path=path or ".", pattern=pattern, ignore_case=ignore_case,
        fixed_strings=fixed_strings, max_results=max_results,
    )
    call = sandbox.StreamSearch(request, timeout=STREAM_TIMEOUT)
    return await sse.stream_response(
        call, upstream="sandbox", shutdown_grace=settings.shutdown_grace,
        render=render, finish=lambda: [("done", {"count": count[0]})],
    )
