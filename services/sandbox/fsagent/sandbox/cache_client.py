"""The sandbox's view of the cache service: an optimisation that may fail without consequence.

Every call has a short deadline (settings.cache_timeout); any error is a miss (counted), never a
failed tool call. Keys are sha256 hex over a canonical JSON of the normalised call.

Two things keep a hit fast and an outage cheap:

  - a small in-process tier (LocalTier) in front of the service holds recently used entries, with
    the same rule: served only when its stored fingerprint equals the one taken now. It saves
    the second gRPC hop of a hit (about 0.6 ms on loopback, most of a cached `cat`). An entry
    lives at most LOCAL_MAX_AGE seconds there, so `fsagent clear-cache` reaches every sandbox
    within that time (no entry is ever served against a changed fingerprint, cleared or not).
  - after a failure (UNAVAILABLE, DEADLINE_EXCEEDED...) the client stops calling the service
    for a short, growing pause (0.5 s doubling to 5 s; "circuit open"), so calls run uncached at
    once instead of each waiting for a deadline; the next call after the pause tries again, and
    one success closes the circuit. gRPC reconnects underneath (backoff capped at 2 s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

import grpc

from fsagent.common import grpcutil
from fsagent.common.scopes import scope_matches
from fsagent.sandbox import metrics
from fsagent.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger(__name__)

KEY_VERSION = 2

LOCAL_MAX_BYTES = 32 * 1024 * 1024
LOCAL_MAX_ENTRY_BYTES = 1024 * 1024
LOCAL_MAX_AGE = 30.0

PAUSE_FIRST = 0.5
PAUSE_MAX = 5.0
# Failures that mean "the service is not answering" (anything else: it answered, with an error).
_OUTAGE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def cache_key(tool: str, normalised_args: dict[str, Any], **context: Any) -> str:
    """sha256 hex of the canonical JSON of (tool, arguments with resolved relative paths, context).

    `context` carries what else shapes the output (the output cap, the grep backend), so two
    sandboxes configured differently never serve each other's results.
    """
    payload = {"v": KEY_VERSION, "tool": tool, "args": normalised_args, "ctx": context}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(slots=True)
class _Local:
    fingerprint: bytes
    value: bytes
    scopes: tuple[str, ...]
    expires: float


class LocalTier:
    """A bounded in-memory LRU of (namespace, key) -> (fingerprint, value); thread-safe."""

    def __init__(
        self, max_bytes: int = LOCAL_MAX_BYTES, max_entry_bytes: int = LOCAL_MAX_ENTRY_BYTES,
        max_age: float = LOCAL_MAX_AGE,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.max_age = max_age
        self._entries: OrderedDict[tuple[str, str], _Local] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, namespace: str, key: str, fingerprint: bytes) -> bytes | None:
        with self._lock:
            entry = self._entries.get((namespace, key))
            if entry is None:
                return None
            if entry.fingerprint != fingerprint or entry.expires < time.monotonic():
                self._drop((namespace, key))
                return None
            self._entries.move_to_end((namespace, key))
            return entry.value

    def put(self, namespace: str, key: str, value: bytes, fingerprint: bytes, scopes: Iterable[str], ttl: float) -> None:
        if self.max_bytes <= 0 or len(value) > self.max_entry_bytes:
            return
        with self._lock:
            self._drop((namespace, key))
            age = min(self.max_age, ttl) if ttl > 0 else self.max_age
            self._entries[(namespace, key)] = _Local(fingerprint, value, tuple(scopes), time.monotonic() + age)
            self._bytes += len(value)
            while self._bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def invalidate(self, path_prefix: str) -> int:
        prefix = path_prefix.strip("/") or "."
        with self._lock:
            doomed = [
                k for k, e in self._entries.items()
                if not e.scopes or any(scope_matches(s, prefix) for s in e.scopes)
            ]
            for k in doomed:
                self._drop(k)
            return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, k: tuple[str, str]) -> None:
        entry = self._entries.pop(k, None)
        if entry is not None:
            self._bytes -= len(entry.value)


class CacheClient:
    def __init__(self, address: str, timeout: float, local: LocalTier | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.local = local if local is not None else LocalTier()
        self._channel = grpcutil.channel(address)
        self._stub = cache_pb2_grpc.CacheStub(self._channel)
        self._paused_until = 0.0
        self._pause = 0.0

    async def close(self) -> None:
        await self._channel.close()

    # --- circuit -----------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while paused after a failure: callers then run uncached without trying."""
        return time.monotonic() >= self._paused_until

    def _failed(self, operation: str, exc: BaseException) -> None:
        code = exc.code() if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)) else None
        if code not in _OUTAGE_CODES:
            # The service answered (a refused request, an internal error): no reason to pause.
            log.warning("cache %s failed", operation, extra={"code": _code(exc)})
            return
        if self._pause == 0:
            log.warning("cache unreachable, tool calls run uncached", extra={"code": _code(exc), "operation": operation})
        self._pause = PAUSE_FIRST if self._pause == 0 else min(PAUSE_MAX, self._pause * 2)
        self._paused_until = time.monotonic() + self._pause
        log.debug("cache %s failed", operation, extra={"code": _code(exc), "pause_seconds": self._pause})

    def _succeeded(self) -> None:
        if self._pause:
            log.info("cache reachable again", extra={"address": self.address})
        self._pause = 0.0
        self._paused_until = 0.0

    # --- calls ---------------------------------------------------------------------------------

    async def get(
        self, namespace: str, key: str, fingerprint: bytes, scopes: Iterable[str] = (), ttl: float = 0.0
    ) -> bytes | None:
        """The stored value on a hit, else None (miss, stale, or any error); counts the lookup.

        A hit from the service is kept in the local tier (with `scopes` and `ttl`)."""
        value = self.local.get(namespace, key, fingerprint)
        if value is not None:
            metrics.CACHE_LOOKUPS.labels("hit").inc()
            metrics.CACHE_LOCAL_HITS.inc()
            return value
        if not self.available:
            metrics.CACHE_LOOKUPS.labels("error").inc()
            return None
        try:
            reply = await self._stub.Get(
                cache_pb2.CacheGetRequest(namespace=namespace, key=key, fingerprint=fingerprint),
                timeout=self.timeout,
            )
        except Exception as exc:  # noqa: BLE001 - the cache must never fail a tool call
            metrics.CACHE_LOOKUPS.labels("error").inc()
            self._failed("get", exc)
            return None
        self._succeeded()
        if reply.result == cache_pb2.CacheGetResponse.HIT:
            metrics.CACHE_LOOKUPS.labels("hit").inc()
            self.local.put(namespace, key, reply.value, fingerprint, scopes, ttl)
            return reply.value
        if reply.result == cache_pb2.CacheGetResponse.STALE:
            metrics.CACHE_LOOKUPS.labels("stale").inc()
        else:
            metrics.CACHE_LOOKUPS.labels("miss").inc()
        return None

    async def put(
        self, namespace: str, key: str, value: bytes, fingerprint: bytes, scopes: Iterable[str], ttl: float = 0.0
    ) -> bool:
        scopes = list(scopes)
        self.local.put(namespace, key, value, fingerprint, scopes, ttl)
        if not self.available:
            metrics.CACHE_ERRORS.labels("put").inc()
            return False
        try:
            reply = await self._stub.Put(
                cache_pb2.CachePutRequest(
                    namespace=namespace, key=key, value=value, fingerprint=fingerprint,
                    scopes=scopes, ttl_seconds=ttl,
                ),
                timeout=self.timeout,
            )
        except Exception as exc:  # noqa: BLE001
            metrics.CACHE_ERRORS.labels("put").inc()
            self._failed("put", exc)
            return False
        self._succeeded()
        return bool(reply.stored)

    async def invalidate(self, path_prefix: str, reason: str) -> int:
        """Drop entries beneath the prefix here and in the service (an outage only costs space:
        a stale entry is never served, its fingerprint no longer matches)."""
        self.local.invalidate(path_prefix)
        if not self.available:
            metrics.CACHE_ERRORS.labels("invalidate").inc()
            return 0
        try:
            reply = await self._stub.Invalidate(
                cache_pb2.InvalidateRequest(path_prefix=path_prefix, reason=reason), timeout=self.timeout
            )
        except Exception as exc:  # noqa: BLE001
            metrics.CACHE_ERRORS.labels("invalidate").inc()
            self._failed("invalidate", exc)
            return 0
        self._succeeded()
        return int(reply.removed)


def _code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    try:
        return code().name if callable(code) else type(exc).__name__
    except Exception:  # noqa: BLE001
        return type(exc).__name__
