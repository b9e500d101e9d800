"""Server-Sent Events from a gRPC server stream.

The first message is awaited before the response starts, so a call that fails at once (unknown
file, upstream down, or a first message that is itself an error: `reject`) gets an ordinary HTTP
error in the one error shape. After that, a failure becomes an `error` event, and a client that
disconnects cancels the gRPC call, so the upstream stops working for nobody.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Callable, Iterable

import grpc
from sse_starlette import EventSourceResponse, ServerSentEvent

from fsagent.gateway import errors

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]


def event(name: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(
        json.dumps(data, ensure_ascii=False, separators=(",", ":")), event=name, sep="\n"
    )


async def stream_response(
    call: Any,
    *,
    upstream: str,
    shutdown_grace: float,
    render: Callable[[Any], Iterable[Event]],
    finish: Callable[[], Iterable[Event]] = tuple,
    error_extra: Callable[[], dict[str, Any]] = dict,
    reject: Callable[[Any], Exception | None] = lambda message: None,
) -> EventSourceResponse:
    """An SSE response relaying `call`: `render(message)` gives the events for each message,
    `finish()` those after a clean end; `error_extra()` adds fields to an `error` event.

    On server shutdown a stream may go on for `shutdown_grace` less a second (uvicorn waits
    `shutdown_grace` in all), so an answer being streamed can still finish.
    """
    try:
        first = await call.read()  # an AioRpcError here is answered in the normal error shape
        refusal = reject(first) if first is not grpc.aio.EOF else None
        if refusal is not None:
            raise refusal
    except BaseException:
        call.cancel()
        raise

    async def events() -> AsyncIterator[ServerSentEvent]:
        message = first
        try:
            while message is not grpc.aio.EOF:
                for name, data in render(message):
                    yield event(name, data)
                message = await call.read()
            for name, data in finish():
                yield event(name, data)
        except grpc.aio.AioRpcError as exc:
            _, code, text, headers = errors.rpc_failure(exc, upstream)
            wait = {"retry_after": int(headers["Retry-After"])} if "Retry-After" in headers else {}
            yield event("error", {**error_extra(), "code": code, "message": text, **wait})
        finally:
            # No-op after a clean end; on a client disconnect (the task is cancelled) it stops
            # the upstream work.
            if not call.done():
                call.cancel()
                log.info("stream cancelled", extra={"upstream": upstream})

    return EventSourceResponse(
        events(), sep="\n", shutdown_grace_period=max(0.0, shutdown_grace - 1.0)
    )
