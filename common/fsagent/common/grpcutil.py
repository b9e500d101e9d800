"""gRPC plumbing shared by every service: servers, channels, health, trace propagation, metrics.

Interceptors carry the W3C trace context in metadata, count every call by method and status code,
and turn an unexpected exception into INTERNAL with a generic message (the traceback goes to the
log, never to the caller).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fsagent.common import metrics, propagation

log = logging.getLogger(__name__)
access_log = logging.getLogger("fsagent.access")
_PENDING: set[asyncio.Future[None]] = set()

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after a peer restarts (the cache coming back, a pod rescheduled).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # Spread calls over every address the name resolves to. With a headless Service
    # (dns:///<svc>-headless...) that is every ready pod; the default pick_first would pin each
    # client to one pod, so extra agent/sandbox replicas would get almost no traffic.
    ("grpc.lb_policy_name", "round_robin"),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


def _code_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if code is None:
        return "OK"
    try:
        return grpc.StatusCode(code).name  # type: ignore[arg-type]
    except ValueError:
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return "UNKNOWN"


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Continue the caller's trace, time and count the call, hide unexpected errors."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, method = metrics.split_method(details.method)
        if service == "grpc.health.v1.Health":
            return handler
        header = None
        for key, value in details.invocation_metadata or ():
            if key == propagation.TRACEPARENT:
                header = value
                break

        def finish(context: grpc.aio.ServicerContext, started: float, error: BaseException | None) -> None:
            if error is None:
                code = _code_name(context.code())
            elif isinstance(error, grpc.aio.AbortError):
                code = _code_name(context.code())
            elif isinstance(error, (GeneratorExit, BaseException)) and not isinstance(error, Exception):
                code = "CANCELLED"
            else:
                code = "INTERNAL"
            elapsed = time.perf_counter() - started
            metrics.GRPC_SERVER_HANDLED.labels(service, method, code).inc()
            metrics.GRPC_SERVER_HANDLING.labels(service, method).observe(elapsed, exemplar=metrics.exemplar())
            # One access line per call, carrying the trace id like every other line.
            access_log.info(
                "rpc", extra={"grpc_method": f"{service}/{method}", "grpc_code": code,
                              "duration_ms": round(elapsed * 1000, 3)},
            )

        async def internal(context: grpc.aio.ServicerContext, exc: Exception) -> None:
            log.exception("unhandled error in %s", details.method, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                propagation.set_current(propagation.continue_from(header))
                started, error = time.perf_counter(), None
                try:
                    return await inner_uu(request, context)
                except grpc.aio.AbortError as exc:
                    error = exc
                    raise
                except Exception as exc:  # noqa: BLE001 - turned into INTERNAL
                    error = exc
                    await internal(context, exc)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    finish(context, started, error)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                propagation.set_current(propagation.continue_from(header))
                started, error = time.perf_counter(), None
                try:
                    async for item in inner_us(request, context):
                        yield item
                except grpc.aio.AbortError as exc:
                    error = exc
                    raise
                except Exception as exc:  # noqa: BLE001
                    error = exc
                    await internal(context, exc)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    finish(context, started, error)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                propagation.set_current(propagation.continue_from(header))
                started, error = time.perf_counter(), None
                try:
                    return await inner_su(request_iterator, context)
                except grpc.aio.AbortError as exc:
                    error = exc
                    raise
                except Exception as exc:  # noqa: BLE001
                    error = exc
                    await internal(context, exc)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    finish(context, started, error)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        return handler


class _ClientBase:
    @staticmethod
    def _details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = list(details.metadata or ())
        metadata.extend(propagation.outgoing_metadata())
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, grpc.aio.Metadata(*metadata),
            details.credentials, details.wait_for_ready,
        )

    @classmethod
    def _record_when_done(cls, call: Any, method: str | bytes, started: float) -> None:
        # In grpc.aio a finished call still reports its status through a coroutine.
        async def status() -> None:
            try:
                name = (await call.code()).name
            except BaseException:  # noqa: BLE001 - a cancelled call may not report a code
                name = "CANCELLED"
            cls._record(method, started, name)

        task = asyncio.ensure_future(status())
        _PENDING.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(_PENDING.discard)

    @staticmethod
    def _record(method: str | bytes, started: float, code: str) -> None:
        if isinstance(method, bytes):
            method = method.decode()
        service, name = metrics.split_method(method)
        metrics.GRPC_CLIENT_HANDLED.labels(service, name, code).inc()
        metrics.GRPC_CLIENT_HANDLING.labels(service, name).observe(
            time.perf_counter() - started, exemplar=metrics.exemplar()
        )


class UnaryUnaryClientInterceptor(_ClientBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        call = await continuation(self._details(client_call_details), request)
        # Record from a done-callback: awaiting the outcome here would swallow a caller's cancel(),
        # leaving the RPC (and the work behind it) running.
        call.add_done_callback(lambda c: self._record_when_done(c, client_call_details.method, started))
        return call


class UnaryStreamClientInterceptor(_ClientBase, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        call = await continuation(self._details(client_call_details), request)
        method = client_call_details.method

        call.add_done_callback(lambda c: self._record_when_done(c, method, started))
        return call


class StreamUnaryClientInterceptor(_ClientBase, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        call = await continuation(self._details(client_call_details), request_iterator)
        method = client_call_details.method

        call.add_done_callback(lambda c: self._record_when_done(c, method, started))
        return call


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return [UnaryUnaryClientInterceptor(), UnaryStreamClientInterceptor(), StreamUnaryClientInterceptor()]


def channel(address: str) -> grpc.aio.Channel:
    """A long-lived channel with trace propagation and client metrics; create once per process."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=client_interceptors())


def server(
    extra_interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    extra_options: Iterable[tuple[str, Any]] = (),
) -> grpc.aio.Server:
    """A server with the shared interceptors; extra_options are appended to SERVER_OPTIONS."""
    return grpc.aio.server(
        interceptors=[ServerInterceptor(), *extra_interceptors], options=[*SERVER_OPTIONS, *extra_options]
    )


def add_health(server_: grpc.aio.Server, service_names: Iterable[str]) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server_)
    return servicer


async def set_serving(servicer: Any, service_names: Iterable[str], serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *service_names]:
        await servicer.set(name, status)


async def check_health(chan: grpc.aio.Channel, timeout: float = 1.0, service: str = "") -> bool:
    """True when the peer answers SERVING within the timeout."""
    stub = health_pb2_grpc.HealthStub(chan)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
