"""A stand-in for the Langfuse server's OTLP/HTTP trace endpoint, for tests.

It serves `POST /api/public/otel/v1/traces` (and `GET /api/public/health`) like Langfuse does: protobuf `ExportTraceServiceRequest`
bodies (gzip or not), Basic auth with the project's public and secret key. Every span received is
decoded and kept, so tests can assert the trace tree the real SDK exported. It can also answer
slowly (`delay`) or fail (`fail_with`) to show that export problems never reach a chat.
"""

from __future__ import annotations

import base64
import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.fakes.http_base import QuietHandler, serve_in_background, shut_down

PATH = "/api/public/otel/v1/traces"
HEALTH_PATH = "/api/public/health"  # GET, no auth: {"status": "OK", "version": ...}, as Langfuse answers


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    attributes: dict[str, Any]
    start_ns: int
    end_ns: int
    scope: str


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


@dataclass
class FakeLangfuse:
    public_key: str = "pk-lf-test"
    secret_key: str = "sk-lf-test"
    host: str = "127.0.0.1"
    port: int = 0
    delay: float = 0.0
    fail_with: int | None = None
    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    rejected_auth: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "FakeLangfuse":
        self._server = serve_in_background(self.host, self.port, _handler(self))
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        shut_down(self._server)

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, names: set[str], timeout: float = 15.0) -> list[Span]:
        """The spans of a trace once every name in `names` has arrived (or what came, on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.trace(trace_id)
            if names <= {s.name for s in spans} or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def _accept(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        scope=scope_spans.scope.name,
                    ))
        with self._lock:
            self.spans.extend(received)


def _handler(fake: FakeLangfuse) -> type[BaseHTTPRequestHandler]:
    expected = "Basic " + base64.b64encode(f"{fake.public_key}:{fake.secret_key}".encode()).decode()

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.split("?")[0] == HEALTH_PATH:
                return self._reply(200, b'{"status":"OK","version":"4.59.0"}', "application/json")
            self._reply(404, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with fake._lock:
                fake.requests += 1
            if fake.delay:
                time.sleep(fake.delay)
            if self.path != PATH:
                return self._reply(404, b"not found", "text/plain")
            if self.headers.get("authorization") != expected:
                with fake._lock:
                    fake.rejected_auth += 1
                return self._reply(401, b"unauthorized", "text/plain")
            if fake.fail_with:
                return self._reply(fake.fail_with, b"scripted failure", "text/plain")
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.headers.get("content-type") != "application/x-protobuf":
                return self._reply(415, b"protobuf expected", "text/plain")
            fake._accept(body)
            self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

        def _reply(self, status: int, data: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
