"""The fsagent.v1.Cache gRPC servicer (grpc.aio) over a CacheStore.

Requests are validated here and refused with INVALID_ARGUMENT and a message that says what is
wrong. Store calls are blocking SQLite, so they run on a small dedicated thread pool; the event
loop only decodes, validates and answers. A store that cannot get its lock in time answers
UNAVAILABLE (the caller treats the cache as an optimisation and carries on without it), and so does
a damaged store that could not be repaired (the store repairs damage itself and retries the call
on the fresh store; see store.py), with a message that says so and no traceback.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NoReturn, TypeVar

import diskcache
import grpc

from fsagent.cache import metrics
from fsagent.cache.store import (
    ENTRY_NAMESPACES,
    HIT,
    MAX_KEY_CHARS,
    MISS,
    NAMESPACES,
    STALE,
    CacheStore,
    InvalidArgument,
    StoreUnavailable,
    check_namespace,
    check_session_id,
    normalize_path,
)
from fsagent.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext

DEFAULT_WORKERS = 4
MAX_MESSAGES_PER_APPEND = 10_000

_RESULT_CODES = {
    HIT: cache_pb2.CacheGetResponse.HIT,
    MISS: cache_pb2.CacheGetResponse.MISS,
    STALE: cache_pb2.CacheGetResponse.STALE,
}


class CacheServicer(cache_pb2_grpc.CacheServicer):
    def __init__(self, store: CacheStore, workers: int = DEFAULT_WORKERS) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cache-store")

    async def close(self) -> None:
        """Wait for store calls in flight, stop the workers, close the store."""
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._executor.shutdown, wait=True)
        )
        self.store.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # Copy the context so log lines written by the store carry the caller's trace id.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(ctx.run, fn, *args)
        )

    async def _call(
        self,
        context: Ctx,
        operation: str | None,
        namespace: str,
        fn: Callable[..., T],
        *args: Any,
        result: Callable[[T], str] = lambda _: "ok",
    ) -> T:
        """Run a store call on the pool, record its metrics (unless operation is None), and map
        store failures to gRPC codes."""
        started = time.perf_counter()

        def record(outcome: str) -> None:
            if operation is not None:
                metrics.record(operation, namespace, outcome, time.perf_counter() - started)

        try:
            value = await self._run(fn, *args)
        except InvalidArgument as exc:
            await _invalid(context, str(exc))
        except StoreUnavailable as exc:
            record("error")  # the store logged the damage once; nothing to add per call
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except (diskcache.Timeout, sqlite3.OperationalError) as exc:
            record("error")
            log.warning("cache store busy", extra={"operation": operation, "error": repr(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "cache store busy, try again")
        except Exception:
            record("error")
            raise  # the shared interceptor logs it and answers INTERNAL
        record(result(value))
        return value

    # --- content and search --------------------------------------------------------------------

    async def Get(self, request: cache_pb2.CacheGetRequest, context: Ctx) -> cache_pb2.CacheGetResponse:
        namespace = await _namespace(context, request.namespace, ENTRY_NAMESPACES)
        await _key(context, request.key)
        found = await self._call(
            context, "get", namespace, self.store.get, namespace, request.key, request.fingerprint,
            result=lambda r: r.result,
        )
        return cache_pb2.CacheGetResponse(result=_RESULT_CODES[found.result], value=found.value)

    async def Put(self, request: cache_pb2.CachePutRequest, context: Ctx) -> cache_pb2.CachePutResponse:
        namespace = await _namespace(context, request.namespace, ENTRY_NAMESPACES)
        await _key(context, request.key)
        await _ttl(context, request.ttl_seconds)
        for scope in request.scopes:
            await _path(context, scope, "scope")
        stored = await self._call(
            context, "put", namespace, self.store.put, namespace, request.key, request.value,
            request.fingerprint, list(request.scopes), request.ttl_seconds or None,
            result=lambda ok: "stored" if ok else "skipped",
        )
        return cache_pb2.CachePutResponse(stored=stored)

    async def Invalidate(self, request: cache_pb2.InvalidateRequest, context: Ctx) -> cache_pb2.InvalidateResponse:
        prefix = await _path(context, request.path_prefix, "path_prefix")
        removed = await self._call(
            context, "invalidate", metrics.ALL_NAMESPACES, self.store.invalidate, request.path_prefix
        )
        reason = metrics.reason_label(request.reason)
        metrics.record_invalidation(reason, removed)
        log.info("invalidated", extra={"path_prefix": prefix, "reason": reason, "removed": removed})
        return cache_pb2.InvalidateResponse(removed=removed)

    async def Stats(self, request: cache_pb2.StatsRequest, context: Ctx) -> cache_pb2.StatsResponse:
        stats = await self._call(context, None, metrics.ALL_NAMESPACES, self.store.stats)
        return cache_pb2.StatsResponse(
            namespaces=[
                cache_pb2.NamespaceStats(
                    namespace=ns.namespace, entries=ns.entries, bytes=ns.bytes, hits=ns.hits, misses=ns.misses
                )
                for ns in stats.namespaces
            ],
            size_limit_bytes=stats.size_limit,
            volume_bytes=stats.volume,
            hit_ratio=stats.hit_ratio,
            directory=stats.directory,
        )

    async def Clear(self, request: cache_pb2.ClearRequest, context: Ctx) -> cache_pb2.ClearResponse:
        namespace = request.namespace
        if namespace:
            await _namespace(context, namespace, NAMESPACES)
        removed = await self._call(
            context, "clear", namespace or metrics.ALL_NAMESPACES, self.store.clear, namespace or None
        )
        log.info("cleared", extra={"namespace": namespace or metrics.ALL_NAMESPACES, "removed": removed})
        return cache_pb2.ClearResponse(removed=removed)

    # --- sessions ------------------------------------------------------------------------------

    async def GetSession(self, request: cache_pb2.GetSessionRequest, context: Ctx) -> cache_pb2.SessionRecord:
        await _session_id(context, request.session_id)
        session = await self._call(
            context, "session_get", "sessions", self.store.get_session, request.session_id,
            result=lambda s: "hit" if s is not None else "miss",
        )
        if session is None:
            return cache_pb2.SessionRecord(session_id=request.session_id, exists=False)
        return _record(session)

    async def AppendSession(self, request: cache_pb2.AppendSessionRequest, context: Ctx) -> cache_pb2.SessionRecord:
        await _session_id(context, request.session_id)
        if request.max_messages < 0:
            await _invalid(context, "max_messages must be >= 0 (0 keeps every message)")
        await _ttl(context, request.ttl_seconds)
        if len(request.messages_json) > MAX_MESSAGES_PER_APPEND:
            await _invalid(context, f"at most {MAX_MESSAGES_PER_APPEND} messages per append")
        for index, message in enumerate(request.messages_json):
            try:
                ok = isinstance(json.loads(message), dict)
            except ValueError:
                ok = False
            if not ok:
                await _invalid(context, f"messages_json[{index}] is not a JSON object")
        session = await self._call(
            context, "session_append", "sessions", self.store.append_session, request.session_id,
            list(request.messages_json), request.max_messages, request.ttl_seconds or None,
            result=lambda _: "stored",
        )
        return _record(session)

    async def DeleteSession(self, request: cache_pb2.DeleteSessionRequest, context: Ctx) -> cache_pb2.DeleteSessionResponse:
        await _session_id(context, request.session_id)
        deleted = await self._call(
            context, "session_delete", "sessions", self.store.delete_session, request.session_id
        )
        return cache_pb2.DeleteSessionResponse(deleted=deleted)


def _record(session: Any) -> cache_pb2.SessionRecord:
    return cache_pb2.SessionRecord(
        session_id=session.session_id, exists=True, messages_json=session.messages,
        created=session.created, updated=session.updated,
    )


# --- validation: each aborts with INVALID_ARGUMENT and a message for the caller ----------------


async def _invalid(context: Ctx, message: str) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    raise AssertionError("unreachable")  # abort raises


async def _namespace(context: Ctx, namespace: str, allowed: tuple[str, ...]) -> str:
    if not namespace:
        await _invalid(context, f"namespace is required; one of {', '.join(allowed)}")
    try:
        return check_namespace(namespace, allowed)
    except InvalidArgument as exc:
        await _invalid(context, str(exc))


async def _key(context: Ctx, key: str) -> None:
    if not key:
        await _invalid(context, "key must not be empty")
    if len(key) > MAX_KEY_CHARS:
        await _invalid(context, f"key is longer than {MAX_KEY_CHARS} characters ({len(key)})")


async def _ttl(context: Ctx, ttl: float) -> None:
    if not (ttl == 0 or (ttl > 0 and ttl != float("inf"))):  # also refuses NaN
        await _invalid(context, "ttl_seconds must be a positive number of seconds (0 = the default)")


async def _path(context: Ctx, path: str, what: str) -> str:
    try:
        return normalize_path(path, what=what)
    except InvalidArgument as exc:
        await _invalid(context, str(exc))


async def _session_id(context: Ctx, session_id: str) -> None:
    try:
        check_session_id(session_id)
    except InvalidArgument as exc:
        await _invalid(context, str(exc))


def add_to_server(server: grpc.aio.Server, store: CacheStore, workers: int = DEFAULT_WORKERS) -> CacheServicer:
    servicer = CacheServicer(store, workers)
    cache_pb2_grpc.add_CacheServicer_to_server(servicer, server)
    return servicer
