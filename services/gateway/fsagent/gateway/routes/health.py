"""Operations: liveness and readiness probes.

Prometheus metrics are not here: the gateway serves them on its own port (FSAGENT_GATEWAY_METRICS_PORT,
started by fsagent.gateway.main), never on this public one.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

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

