"""Entry point of the cache service: `fsagent-cache` or `python -m fsagent.cache`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Sequence

import grpc

from fsagent.cache import metrics as cache_metrics
from fsagent.cache.server import add_to_server
from fsagent.cache.store import CacheStore, StoreUnavailable
from fsagent.common import lifecycle
from fsagent.common.settings import Settings, get_settings

log = logging.getLogger(__name__)

SERVICE = "cache"
GRPC_SERVICE = "fsagent.v1.Cache"


def check_store(store: CacheStore) -> None:
    """Read every page of the store once, while the service already serves (a damaged one is
    repaired and logged by the store itself)."""
    started = time.monotonic()
    try:
        healthy = store.check()
    except StoreUnavailable:
        return
    except Exception as exc:  # noqa: BLE001 - a check that cannot run must not stop the service
        log.warning("cache store check could not run", extra={"error": repr(exc)})
        return
    if healthy:
        log.info("cache store checked: every page readable",
                 extra={"seconds": round(time.monotonic() - started, 3), "store": str(store.store_directory)})


async def setup(server: grpc.aio.Server, settings: Settings) -> Sequence[lifecycle.Cleanup]:
    """Open the store, register the servicer and the size gauges; return the cleanups."""
    # Damage to the store's header, schema or write-ahead log is found and repaired here, before
    # serving; damage to any other page by the check below, or by the first call that reads it.
    store = CacheStore.from_settings(settings)
    servicer = add_to_server(server, store)
    cache_metrics.bind_store(store)
    log.info(
        "cache store open",
        extra={
            "directory": str(store.directory),
            "store": str(store.store_directory),
            "size_limit_bytes": store.size_limit,
            "ttl_content": settings.cache_ttl_content,
            "ttl_search": settings.cache_ttl_search,
            "session_ttl": settings.session_ttl,
        },
    )

    threading.Thread(target=check_store, args=(store,), name="cache-store-check", daemon=True).start()

    async def close() -> None:
        cache_metrics.bind_store(None)
        await servicer.close()
        log.info("cache store closed", extra={"directory": str(store.directory)})

    return [close]


def main() -> None:
    settings = get_settings()
    lifecycle.run(
        SERVICE,
        settings,
        lambda: lifecycle.serve(
            service=SERVICE,
            settings=settings,
            port=lifecycle.host_port(settings.cache_addr)[1],
            metrics_port=settings.cache_metrics_port,
            grpc_services=[GRPC_SERVICE],
            setup=lambda server: setup(server, settings),
        ),
    )


if __name__ == "__main__":
    main()
