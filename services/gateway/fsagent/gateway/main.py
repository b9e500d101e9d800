"""`fsagent-gateway`: serve the gateway with uvicorn, logging JSON lines, draining on SIGTERM."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import uvicorn

from fsagent.common import logs
from fsagent.common.settings import get_settings
from fsagent.gateway.app import create_app


class _Server(uvicorn.Server):
    """Exit 0 after a graceful drain on SIGTERM/SIGINT, like the gRPC services.

    uvicorn re-raises the captured signal once it has shut down, which ends the process with -15.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def main() -> None:
    settings = get_settings()
    logs.configure("gateway", settings.log_level, settings.log_format)
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
