"""Run a gRPC service: bind, report health, serve /metrics, and shut down gracefully on SIGTERM.

Shutdown order: health goes NOT_SERVING (Kubernetes stops routing), the server stops accepting and
drains in-flight calls for up to the grace period, then the service's own cleanups run.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable, Iterable, Sequence

import grpc

from fsagent.common import grpcutil, logs, metrics
from fsagent.common.settings import Settings

log = logging.getLogger(__name__)

Cleanup = Callable[[], Awaitable[None]]
Setup = Callable[[grpc.aio.Server], Awaitable[Sequence[Cleanup]]]


# Connections older than this get a GOAWAY, so clients reconnect and re-resolve DNS: with
# round_robin over a headless Service that is how new pods (scale-out) start receiving calls.
MAX_CONNECTION_AGE_MS = 300_000


def connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """Server options that recycle connections without cutting calls in flight.

    The grace period outlasts the longest chat stream (chat_timeout) plus a margin, so a GOAWAY
    never ends a running answer: the stream finishes on the old connection, new calls use a new one.
    """
    return [
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", int((settings.chat_timeout + 30) * 1000)),
    ]


def host_port(address: str) -> tuple[str, int]:
    """Host and port of a gRPC target; the port is what a service listens on.

    Accepts "host:port" and resolver URIs like "dns:///svc.ns.svc:port" (the port is the text after
    the last colon either way).
    """
    host, _, port = address.rpartition(":")
    if "://" in host:  # dns:///host or dns://resolver/host: keep only the host
        host = host.split("://", 1)[1].partition("/")[2]
    return host or "127.0.0.1", int(port)


async def serve(
    *,
    service: str,
    settings: Settings,
    port: int,
    metrics_port: int,
    grpc_services: Iterable[str],
    setup: Setup,
) -> None:
    names = list(grpc_services)
    server = grpcutil.server(extra_options=connection_age_options(settings))
    health = grpcutil.add_health(server, names)
    cleanups = await setup(server)
    address = f"{settings.bind_host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"{service}: cannot bind {address}")
    metrics.set_build_info(service)
    metrics.start_metrics_server(metrics_port, settings.bind_host)
    await server.start()
    await grpcutil.set_serving(health, names, True)
    log.info("serving", extra={"address": address, "metrics_port": metrics_port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace})
    await grpcutil.set_serving(health, names, False)
    await server.stop(settings.shutdown_grace)
    for cleanup in cleanups:
        try:
            await cleanup()
        except Exception:  # noqa: BLE001 - a failing cleanup must not block the others
            log.exception("cleanup failed")
    log.info("stopped")


def run(service: str, settings: Settings, main: Callable[[], Awaitable[None]]) -> None:
    """Process entry point: configure logging, run the service, exit 0 on a clean stop."""
    logs.configure(service, settings.log_level, settings.log_format)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
