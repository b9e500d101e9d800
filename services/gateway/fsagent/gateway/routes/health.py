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
    "/ready", summary="Whether chats can be served, and the state of each dependency",
    responses={
        200: {"description": "`ready`, or `degraded` when the cache (sessions) is unavailable: chats are "
              "answered but not saved, and continuing a session fails."},
        503: {"description": "`unavailable`: the agent or the sandbox is down; `dependencies` says which."},
    },
)
async def ready(clients: ClientsDep) -> JSONResponse:
    """`{"status": "ready"|"degraded"|"unavailable", "dependencies": {"agent", "sandbox", "cache"}}`.

    Readiness (the kubelet's probe) follows what this gateway can serve: without the agent or the
    sandbox nothing can be answered (503, out of the Service); without the cache chats still are,
    so a cache outage does not take every gateway out of the Service (200, `degraded`).
    """
    dependencies = await clients.ready(READY_TIMEOUT)
    if dependencies["agent"] != "serving" or dependencies["sandbox"] != "serving":
        status, code = "unavailable", 503
    elif any(state != "serving" for state in dependencies.values()):
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    return JSONResponse({"status": status, "dependencies": dependencies}, status_code=code)
