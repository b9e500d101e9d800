"""The gateway's FastAPI application: the only ingress, holding no state of its own."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from fsagent.common import metrics as common_metrics
from fsagent.common.settings import Settings, get_settings
from fsagent.gateway import errors
from fsagent.gateway.auth import require_api_key
from fsagent.gateway.clients import Clients
from fsagent.gateway.middleware import RequestMiddleware
from fsagent.gateway.ratelimit import RateLimits
from fsagent.gateway.routes import chat, documents, health, stream

log = logging.getLogger(__name__)

DESCRIPTION = """
Ask questions about a folder of documents. A language model explores the folder with read-only
shell tools (grep, find, cat, head, tail, ls, tree, wc) run in a sandbox, instead of a vector index.

* **chat**: one JSON answer, or Server-Sent Events while the agent works; sessions keep history.
* **documents**: list, read, create, update, delete and upload the documents.
* **stream**: a file's lines or a search's matches as Server-Sent Events.

Errors always have the shape `{"error": {"code": "...", "message": "..."}}`. Every response carries
`X-Trace-Id` (send a W3C `traceparent` to continue your own trace) and `X-Request-Id`. When API keys
are configured, `/api/*` needs `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""

# JSON bodies carry document content, which escaping can make up to ~3x larger than the file.
JSON_EXPANSION = 4
QUIET_ROUTES = ("/health", "/ready")


def max_body_bytes(settings: Settings) -> int:
    return JSON_EXPANSION * settings.max_file_size + documents.MULTIPART_OVERHEAD_BYTES


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.clients = Clients.connect(settings)
        common_metrics.set_build_info("gateway")
        log.info(
            "gateway ready to serve",
            extra={"agent": settings.agent_addr, "sandbox": settings.sandbox_addr,
                   "auth": bool(app.state.api_keys)},
        )
        try:
            yield
        finally:
            await app.state.clients.close(grace=1.0)

    app = FastAPI(
        title="fsagent",
        description=DESCRIPTION,
        version=common_metrics.VERSION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "chat", "description": "Questions answered by the agent."},
            {"name": "documents", "description": "The documents under the data root."},
            {"name": "stream", "description": "Server-Sent Events over files and searches."},
            {"name": "operations", "description": "Liveness and readiness probes (never behind auth)."},
        ],
    )
    app.state.settings = settings
    app.state.api_keys = settings.api_key_set
    app.state.rate_limits = RateLimits(settings)

    errors.install(app)
    for router in (chat.router, documents.router, stream.router):
        app.include_router(
            router, dependencies=[Depends(require_api_key)], responses=errors.ERROR_RESPONSES
        )
    app.include_router(health.router)

    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Trace-Id", "X-Request-Id", "Retry-After", "X-Fsagent-Warnings"],
        )
    # Added last, so it is the outermost of ours and sees every request and response.
    app.add_middleware(
        RequestMiddleware, max_body_bytes=max_body_bytes(settings), quiet_routes=QUIET_ROUTES
    )
    return app

