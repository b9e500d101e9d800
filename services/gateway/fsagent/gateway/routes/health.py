"""Operations: liveness and readiness probes, and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from fsagent.gateway.clients import ClientsDep
from fsagent.gateway.metrics import InstrumentedRoute

router = APIRouter(tags=["operations"], route_class=InstrumentedRoute)

READY_TIMEOUT = 1.0


@router.get("/health", summary="The process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready", summary="The agent and the sandbox answer their gRPC health checks",
    responses={503: {"description": "A dependency is down; `dependencies` says which."}},
)
async def ready(clients: ClientsDep) -> JSONResponse:
    serving = await clients.ready(READY_TIMEOUT)
    ok = all(serving.values())
    return JSONResponse(
        {
            "status": "ready" if ok else "not_ready",
            "dependencies": {
                name: "serving" if up else "unavailable" for name, up in serving.items()
            },
        },
        status_code=200 if ok else 503,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text, or OpenMetrics (with trace-id exemplars) when the scraper asks for it."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(REGISTRY), media_type=content_type)
