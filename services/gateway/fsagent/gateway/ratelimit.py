"""Rate limits with the `limits` library: chat requests per API key, wrong keys per client address.

* `FSAGENT_CHAT_RATE_LIMIT` (default `60/minute`): POST /api/chat and /api/chat/stream per API key
  (the key's non-secret user id), or per client address when API keys are off. Past it: 429
  `rate_limited` with `Retry-After`, before the agent (and the LLM) is asked anything.
* `FSAGENT_AUTH_FAILURE_LIMIT` (default `10/minute`): wrong or missing API keys per client address.
  Once an address has used them up, every /api request from it is 429 `rate_limited` with
  `Retry-After` (even with a right key) until the window moves on: guessing keys gets slow.
* `FSAGENT_RATE_LIMIT_STORAGE` (default `memory://`: counters per gateway process, so N replicas
  allow N times the limit); `redis://host:6379` (or `redis+sentinel://`, `redis+cluster://`) shares
  them across replicas (the async Redis driver: `limits[async-redis]`).

A moving window: a burst cannot double the limit at a window's edge. An empty value turns a limit off.
"""

from __future__ import annotations

import logging
import math
import time

from fastapi import Request
from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from fsagent.common.settings import Settings
from fsagent.gateway import metrics
from fsagent.gateway.errors import ApiError

log = logging.getLogger(__name__)

CHAT = "chat"
AUTH = "auth"


def _limits(value: str, name: str) -> list[RateLimitItem]:
    value = value.strip()
    if not value or value.lower() in ("off", "none", "0"):
        return []
    try:
        return list(parse_many(value))
    except ValueError as exc:
        raise ValueError(f"{name}={value!r} is not a rate limit such as 60/minute: {exc}") from None


class RateLimits:
    """The gateway's limiters; `check_chat` and the auth pair raise 429 `rate_limited`."""

    def __init__(self, settings: Settings) -> None:
        self.chat = _limits(settings.chat_rate_limit, "FSAGENT_CHAT_RATE_LIMIT")
        self.auth = _limits(settings.auth_failure_limit, "FSAGENT_AUTH_FAILURE_LIMIT")
        uri = settings.rate_limit_storage.strip() or "memory://"
        self.storage: Storage = storage_from_string(uri if uri.startswith("async+") else "async+" + uri)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.storage_scheme = uri.split("://", 1)[0]

    async def _refuse(self, kind: str, items: list[RateLimitItem], key: str, message: str) -> None:
        waits = []
        for item in items:
            stats = await self.limiter.get_window_stats(item, kind, key)
            if stats.remaining <= 0:
                waits.append(stats.reset_time - time.time())
        wait = max(1, math.ceil(max(waits, default=1.0)))
        metrics.RATE_LIMITED.labels(kind).inc()
        log.warning("rate limited", extra={"limit": kind, "retry_after": wait})
        raise ApiError(429, "rate_limited", f"{message}: retry after {wait} s", headers={"Retry-After": str(wait)})

    async def check_chat(self, key: str) -> None:
        """Count one chat request of `key`; 429 when it is over FSAGENT_CHAT_RATE_LIMIT."""
        for item in self.chat:
            if not await self.limiter.hit(item, CHAT, key):
                await self._refuse(CHAT, self.chat, key, "too many chat requests for this API key or address "
                                   f"(FSAGENT_CHAT_RATE_LIMIT={'; '.join(str(i) for i in self.chat)})")

    async def check_auth(self, address: str) -> None:
        """429 when `address` has used up its wrong keys (FSAGENT_AUTH_FAILURE_LIMIT)."""
        for item in self.auth:
            if not await self.limiter.test(item, AUTH, address):
                await self._refuse(AUTH, self.auth, address, "too many requests with a wrong API key from this address")

    async def auth_failed(self, address: str) -> None:
        for item in self.auth:
            await self.limiter.hit(item, AUTH, address)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def chat_rate_limit(request: Request) -> None:
    """Dependency of the two chat routes (after the API key check, which names the caller)."""
    limits: RateLimits = request.app.state.rate_limits
    if limits.chat:
        await limits.check_chat(getattr(request.state, "user_id", None) or "addr-" + client_address(request))
