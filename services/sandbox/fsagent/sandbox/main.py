"""`fsagent-sandbox`: serve fsagent.v1.Sandbox (plus health and /metrics) over the data root."""

from __future__ import annotations

import logging
import os
import sys

from fsagent.common import lifecycle
from fsagent.common.settings import Settings, get_settings
from fsagent.sandbox import runner
from fsagent.sandbox.server import SERVICE_NAME, make_setup

log = logging.getLogger("fsagent.sandbox")


def check_data_root(settings: Settings) -> str:
    """The data root's realpath; exit with a clear message when it is missing or not a directory."""
    root = os.path.realpath(os.fspath(settings.data_root))
    if not os.path.isdir(root):
        raise SystemExit(
            f"fsagent-sandbox: the data root {settings.data_root} does not exist or is not a directory "
            "(set FSAGENT_DATA_ROOT)"
        )
    return root


async def serve(settings: Settings) -> None:
    root = check_data_root(settings)
    rg = runner.which("rg")
    if rg:
        log.info("ripgrep available", extra={"rg": rg})
    else:
        log.warning("ripgrep (rg) not found: grep falls back to GNU grep", extra={"grep": runner.which("grep")})
    log.info(
        "sandbox starting",
        extra={
            "data_root": root, "read_only": settings.read_only, "tool_timeout": settings.tool_timeout,
            "max_output_bytes": settings.max_output_bytes, "cache_addr": settings.cache_addr,
        },
    )
    _, port = lifecycle.host_port(settings.sandbox_addr)
    await lifecycle.serve(
        service="sandbox",
        settings=settings,
        port=port,
        metrics_port=settings.sandbox_metrics_port,
        grpc_services=[SERVICE_NAME],
        setup=make_setup(settings),
    )


def main() -> None:
    settings = get_settings()
    try:
        check_data_root(settings)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    lifecycle.run("sandbox", settings, lambda: serve(settings))


if __name__ == "__main__":
    main()
