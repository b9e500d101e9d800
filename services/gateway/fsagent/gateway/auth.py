"""API keys: when `FSAGENT_API_KEYS` is set, every /api route needs one of them.

Accepted as `Authorization: Bearer <key>` or `X-API-Key: <key>` and compared in constant time.
Health, readiness and the docs stay open (metrics are on their own port, not this app).
Wrong keys are counted per client address (`FSAGENT_AUTH_FAILURE_LIMIT`, ratelimit.py): an address
that used them up gets 429 `rate_limited` with `Retry-After` before its key is even looked at.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from fsagent.gateway.errors import ApiError
from fsagent.gateway.ratelimit import RateLimits, client_address

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <api key>`")
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="`X-API-Key: <api key>`"
)


def key_matches(presented: str, keys: frozenset[str]) -> bool:
    candidate = presented.encode()
    matched = False
    for key in keys:  # compare against every key so timing says nothing about which one matched
        matched |= hmac.compare_digest(candidate, key.encode())
    return matched


def user_id(key: str) -> str:
    """A stable, non-secret name for a key (the agent records it as the trace's user id)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


async def require_api_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    header_key: str | None = Security(api_key_header),
) -> None:
    keys: frozenset[str] = request.app.state.api_keys
    if not keys:
        return
    limits: RateLimits = request.app.state.rate_limits
    address = client_address(request)
    await limits.check_auth(address)
    presented = credentials.credentials if credentials else header_key
    if not presented or not key_matches(presented, keys):
        await limits.auth_failed(address)
        raise ApiError(
            401, "unauthorized", "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )
    request.state.user_id = user_id(presented)
