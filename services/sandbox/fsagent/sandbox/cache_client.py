"""The sandbox's view of the cache service: an optimisation that may fail without consequence.

Every call has a short deadline (settings.cache_timeout); any error is a miss (counted), never a
failed tool call. Keys are sha256 hex over a canonical JSON of the normalised call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Iterable

import grpc

from fsagent.common import grpcutil
from fsagent.sandbox import metrics
from fsagent.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger(__name__)

KEY_VERSION = 1


def cache_key(tool: str, normalised_args: dict[str, Any], **context: Any) -> str:
    """sha256 hex of the canonical JSON of (tool, arguments with resolved relative paths, context).

    `context` carries what else shapes the output (the output cap, the grep backend), so two
    sandboxes configured differently never serve each other's results.
    """
    payload = {"v": KEY_VERSION, "tool": tool, "args": normalised_args, "ctx": context}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class CacheClient:
    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpcutil.channel(address)
        self._stub = cache_pb2_grpc.CacheStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def get(self, namespace: str, key: str, fingerprint: bytes) -> bytes | None:
        """The stored value on a hit, else None (miss, stale, or any error)."""
        try:
            reply = await self._stub.Get(
                cache_pb2.CacheGetRequest(namespace=namespace, key=key, fingerprint=fingerprint),
                timeout=self.timeout,
            )
        except (grpc.aio.AioRpcError, grpc.RpcError) as exc:
            metrics.CACHE_LOOKUPS.labels("error").inc()
            log.debug("cache get failed", extra={"code": _code(exc)})
            return None
        except Exception:  # noqa: BLE001 - the cache must never fail a tool call
            metrics.CACHE_LOOKUPS.labels("error").inc()
            log.warning("cache get failed", exc_info=True)
            return None
        if reply.result == cache_pb2.CacheGetResponse.HIT:
            metrics.CACHE_LOOKUPS.labels("hit").inc()
            return reply.value
        if reply.result == cache_pb2.CacheGetResponse.STALE:
            metrics.CACHE_LOOKUPS.labels("stale").inc()
        else:
            metrics.CACHE_LOOKUPS.labels("miss").inc()
        return None

    async def put(
        self, namespace: str, key: str, value: bytes, fingerprint: bytes, scopes: Iterable[str], ttl: float = 0.0
    ) -> bool:
        try:
            reply = await self._stub.Put(
                cache_pb2.CachePutRequest(
                    namespace=namespace, key=key, value=value, fingerprint=fingerprint,
                    scopes=list(scopes), ttl_seconds=ttl,
                ),
                timeout=self.timeout,
            )
        except Exception as exc:  # noqa: BLE001
            metrics.CACHE_ERRORS.labels("put").inc()
            log.debug("cache put failed", extra={"code": _code(exc)})
            return False
        return bool(reply.stored)

    async def invalidate(self, path_prefix: str, reason: str) -> int:
        try:
            reply = await self._stub.Invalidate(
                cache_pb2.InvalidateRequest(path_prefix=path_prefix, reason=reason), timeout=self.timeout
            )
        except Exception as exc:  # noqa: BLE001
            metrics.CACHE_ERRORS.labels("invalidate").inc()
            log.debug("cache invalidate failed", extra={"code": _code(exc)})
            return 0
        return int(reply.removed)


def _code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    try:
        return code().name if callable(code) else type(exc).__name__
    except Exception:  # noqa: BLE001
        return type(exc).__name__
