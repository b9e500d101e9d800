"""`fsagent-gateway`: serve the gateway with uvicorn, logging JSON lines, draining on SIGTERM.

Prometheus `/metrics` is served on its own port (FSAGENT_GATEWAY_METRICS_PORT, 9104), like the other
services, never on the public HTTP port: an Ingress routing `/` must not publish internal series.
Only this entry point starts that server, so apps built in-process (tests) never compete for the port.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterator
from wsgiref.simple_server import WSGIServer

import uvicorn

from fsagent.common import logs
from fsagent.common import metrics as common_metrics
from fsagent.common.settings import Settings, get_settings
from fsagent.gateway.app import create_app

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Exit 0 after a graceful drain on SIGTERM/SIGINT, like the gRPC services.

    uvicorn re-raises the captured signal once it has shut down, which ends the process with -15.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def start_metrics_server(settings: Settings) -> WSGIServer:
    """Serve /metrics on FSAGENT_GATEWAY_METRICS_PORT, or exit with one line saying why it cannot."""
    port, host = settings.gateway_metrics_port, settings.bind_host
    if port and port == settings.gateway_port:
        raise SystemExit(
            f"gateway: FSAGENT_GATEWAY_METRICS_PORT ({port}) must differ from FSAGENT_GATEWAY_PORT: "
            "metrics are never served on the public HTTP port"
        )
    try:
        server = common_metrics.start_metrics_server(port, host)
    except OSError as exc:
        raise SystemExit(
            f"gateway: cannot serve metrics on {host}:{port} (FSAGENT_GATEWAY_METRICS_PORT): "
            f"{exc.strerror or exc}"
        ) from None
    log.info("serving metrics", extra={"metrics_port": server.server_port})
    return server


def main() -> None:
    settings = get_settings()
    logs.configure("gateway", settings.log_level, settings.log_format)
    start_metrics_server(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.bind_host,
        port=settings.gateway_port,
        log_config=None,  # keep our JSON logging; uvicorn's loggers propagate to it
        access_log=False,  # RequestMiddleware writes the access lines, with trace ids
        server_header=False,
        lifespan="on",
        # uvicorn stops accepting on SIGTERM and waits this long for open requests (SSE included).
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
    )
    _Server(config).run()


if __name__ == "__main__":
    main()
