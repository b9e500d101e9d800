"""The gateway's HTTP metrics (the shared gRPC client metrics come from fsagent.common.metrics).

`route` is always a route template such as `/api/documents/{path:path}` (or `unmatched`), never a
raw path, so the label stays bounded whatever clients send.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import Receive, Scope, Send

from fsagent.common.metrics import NAMESPACE, RPC_BUCKETS, SIZE_BUCKETS

UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered by the gateway, by method, route template and status code.",
    ["method", "route", "status"],
    namespace=NAMESPACE,
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from receiving an HTTP request to sending the last byte of its response "
    "(for SSE, the whole stream). Exemplars carry the trace id.",
    ["method", "route"],
    namespace=NAMESPACE,
    buckets=RPC_BUCKETS,
)
HTTP_REQUEST_SIZE = Histogram(
    "http_request_size_bytes",
    "HTTP request body size (Content-Length, else the bytes read).",
    ["method", "route"],
    namespace=NAMESPACE,
    buckets=SIZE_BUCKETS,
)
HTTP_RESPONSE_SIZE = Histogram(
    "http_response_size_bytes",
    "HTTP response body size as sent.",
    ["method", "route"],
    namespace=NAMESPACE,
    buckets=SIZE_BUCKETS,
)
HTTP_IN_PROGRESS = Gauge(
    "http_requests_in_progress",
    "HTTP requests being handled right now (SSE streams count until they end).",
    ["method", "route"],
    namespace=NAMESPACE,
)

RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Requests refused with 429 rate_limited, by limit (chat: FSAGENT_CHAT_RATE_LIMIT per API key or address; "
    "auth: FSAGENT_AUTH_FAILURE_LIMIT wrong keys per address).",
    ["limit"],
    namespace=NAMESPACE,
)
for _limit in ("chat", "auth"):
    RATE_LIMITED.labels(_limit)


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"


class InstrumentedRoute(APIRoute):
    """An APIRoute that counts its requests in progress under its own template.

    The gauge needs the route before the handler runs; the router has already matched it here,
    so nothing is matched twice.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        with HTTP_IN_PROGRESS.labels(method_label(scope["method"]), self.path).track_inprogress():
            await super().handle(scope, receive, send)
