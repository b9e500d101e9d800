"""Per-request plumbing as pure ASGI middleware (so SSE responses are never buffered).

For each HTTP request: continue the caller's W3C trace (or start one) and make it current, so log
lines carry it and every gRPC call sends it on; answer with `X-Trace-Id` and `X-Request-Id`; bound
the request body; record the HTTP metrics under the matched route template; write one JSON access
log line; and turn an unexpected exception into a 500 in the error shape.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Collection

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fsagent.common import metrics as common_metrics
from fsagent.common import propagation
from fsagent.gateway import errors
from fsagent.gateway import metrics as m

access_log = logging.getLogger("fsagent.gateway.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CLIENT_CLOSED = 499  # no response was started: the client went away or the server stopped


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class RequestMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, quiet_routes: Collection[str] = ()
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Probe and scrape routes: access lines at debug level unless they fail.
        self.quiet_routes = frozenset(quiet_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        headers = Headers(scope=scope)
        trace = propagation.continue_from(headers.get(propagation.TRACEPARENT))
        incoming_id = headers.get("x-request-id", "")
        request_id = incoming_id if _REQUEST_ID_RE.match(incoming_id) else uuid.uuid4().hex
        id_headers = [
            (b"x-trace-id", trace.trace_id.encode()), (b"x-request-id", request_id.encode())
        ]

        declared = _content_length(headers)
        limit = self.max_body_bytes
        received = sent = status = 0

        async def receive_bounded() -> Message:
            # Raised where the body is read, so the matched route still answers (and is measured).
            nonlocal received
            if declared is not None and declared > limit:
                raise errors.ApiError(413, "payload_too_large", f"request body over {limit} bytes")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise errors.ApiError(
                        413, "payload_too_large", f"request body over {limit} bytes"
                    )
            return message

        async def send_observed(message: Message) -> None:
            nonlocal sent, status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *id_headers]}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        with propagation.use(trace):
            try:
                await self.app(scope, receive_bounded, send_observed)
            except ClientDisconnect:
                pass  # nobody to answer; recorded as CLIENT_CLOSED
            except Exception as exc:
                if status:  # too late for an error response: let the server drop the connection
                    access_log.error("error after the response started", exc_info=exc)
                    raise
                reply = await errors.unhandled_exception_handler(Request(scope), exc)
                await reply(scope, receive, send_observed)
            finally:
                route = scope.get("route")
                self._record(
                    scope, getattr(route, "path", None) or m.UNMATCHED, status or CLIENT_CLOSED,
                    time.perf_counter() - started,
                    declared if declared is not None else received, sent, request_id,
                )

    def _record(
        self, scope: Scope, route: str, status: int, elapsed: float,
        request_bytes: int, response_bytes: int, request_id: str,
    ) -> None:
        method = m.method_label(scope["method"])
        m.HTTP_REQUESTS.labels(method, route, str(status)).inc()
        m.HTTP_DURATION.labels(method, route).observe(elapsed, exemplar=common_metrics.exemplar())
        m.HTTP_REQUEST_SIZE.labels(method, route).observe(request_bytes)
        m.HTTP_RESPONSE_SIZE.labels(method, route).observe(response_bytes)
        quiet = route in self.quiet_routes and status < 400
        access_log.log(
            logging.DEBUG if quiet else logging.INFO,
            "request",
            extra={
                "method": scope["method"],
                "path": scope.get("path", ""),
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "request_bytes": request_bytes,
                "response_bytes": response_bytes,
                "request_id": request_id,
                "client": (scope.get("client") or ("", 0))[0],
            },
        )
