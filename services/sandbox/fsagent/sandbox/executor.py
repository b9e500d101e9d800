"""Sandbox.Execute: validate -> confine paths -> cost rule -> fingerprint -> cache get -> run -> cache put.

The cache path (docs/cache.md): the fingerprint of what the call reads is taken before the run, a
hit needs it equal to the stored one, and where the fingerprint walk costs more than it saves
(cache_policy) the call runs uncached.

Refusals come back as an ExecuteResponse with `error`, `error_code` and a non-zero `exit_code`
(never as a gRPC error), so the agent can hand the message to the model:

  invalid_arguments  unknown tool, bad JSON, unknown/ill-typed/out-of-range parameter, bad regex
  path_outside_root  the path leaves the data root (`..`, absolute-outside, symlink to outside)
  not_found          no such file or directory
  file_type          a directory where a file is needed (or the reverse), a binary file, a FIFO,
                     socket or device
  timeout            the tool ran past settings.tool_timeout and was killed (exit code 124)
  internal           anything unexpected (details only in the log)

A truncated output is a success (`truncated` true, an explicit marker at the cut).
"""

from __future__ import annotations

import asyncio
import logging
import time

from fsagent.common import toolspec
from fsagent.common.settings import Settings
from fsagent.sandbox import metrics, paths, runner, tools
from fsagent.sandbox import cache_policy
from fsagent.sandbox.cache_client import CacheClient, cache_key
from fsagent.sandbox.cache_policy import CachePolicy
from fsagent.sandbox.fingerprint import SMALL_FILE_BYTES, Fingerprinter
from fsagent.sandbox.scope_memo import ScopeMemo
from fsagent.v1 import sandbox_pb2

log = logging.getLogger(__name__)

BLOCKED_CODES = ("invalid_arguments", "path_outside_root", "file_type", "flag_not_allowed")


class Executor:
    def __init__(self, settings: Settings, cache: CacheClient | None = None, launcher: runner.Launcher | None = None) -> None:
        self.settings = settings
        self.ctx = tools.Context.create(settings.data_root, settings.max_output_bytes, settings.tool_timeout, launcher)
        self.cache = cache
        self.ttl = {"content": settings.cache_ttl_content, "search": settings.cache_ttl_search}
        self.policy = CachePolicy()
        memo = ScopeMemo(self.ctx.root_real) if cache is not None and settings.cache_watch else None
        if memo is not None and not memo.enabled:
            log.info("scope fingerprints are walked on every call", extra={"reason": memo.reason})
        self.fingerprints = Fingerprinter(memo)

    async def execute(self, tool: str, arguments_json: str, no_cache: bool = False) -> sandbox_pb2.ExecuteResponse:
        started = time.perf_counter()
        block: str | None = None
        try:
            response, block = await self._execute(tool, arguments_json, no_cache)
        except Exception:  # noqa: BLE001 - one bad call must not take the servicer down
            log.exception("tool execution failed", extra={"tool": metrics.tool_label(tool)})
            response = sandbox_pb2.ExecuteResponse(
                exit_code=tools.EXIT_INTERNAL, error="internal error in the sandbox", error_code="internal"
            )
        elapsed = time.perf_counter() - started
        response.duration_seconds = elapsed
        status = self._account(tool, response, block)
        metrics.observe_execution(tool, status, elapsed)
        log.info(
            "tool executed",
            extra={
                "tool": metrics.tool_label(tool), "status": status, "error_code": response.error_code,
                "cached": response.cached, "truncated": response.truncated,
                "output_bytes": response.output_bytes, "duration_ms": round(elapsed * 1000, 2),
            },
        )
        return response

    @staticmethod
    def _account(tool: str, response: sandbox_pb2.ExecuteResponse, block: str | None = None) -> str:
        """Metrics for one call; its status label. `block` overrides the block type counted."""
        code = response.error_code
        if code == "timeout":
            metrics.TIMEOUTS.labels(metrics.tool_label(tool)).inc()
            metrics.SECURITY_BLOCKS.labels("timeout").inc()
            return "timeout"
        if code in BLOCKED_CODES:
            metrics.SECURITY_BLOCKS.labels(block or code).inc()
            return "blocked"
        if code:
            return "error"
        if response.truncated and not response.cached:
            metrics.SECURITY_BLOCKS.labels("output_cap").inc()
        return "success"

    async def _execute(
        self, tool: str, arguments_json: str, no_cache: bool
    ) -> tuple[sandbox_pb2.ExecuteResponse, str | None]:
        """The response, and the security block type to count when it differs from error_code."""
        try:
            args = toolspec.parse_arguments(tool, arguments_json)
        except toolspec.ToolArgumentError as exc:
            # An option the tool does not have is a refused flag; the model sees invalid_arguments.
            return _refusal("invalid_arguments", exc.message), ("flag_not_allowed" if exc.unknown_fields else None)
        try:
            prepared = tools.prepare(self.ctx, tool, args)
        except paths.PathError as exc:
            return _refusal(exc.code, exc.message), None

        if self.cache is None:
            metrics.CACHE_LOOKUPS.labels("skipped").inc()
            return await self._run(prepared), None
        return await self._cached(tool, prepared, no_cache), None

    # --- the cache path (fingerprint before the run; docs/cache.md) ---------------------------

    async def _cached(self, tool: str, prepared: tools.Prepared, no_cache: bool) -> sandbox_pb2.ExecuteResponse:
        """The call through the cache: fingerprint (before the run), lookup, run, store."""
        assert self.cache is not None
        if not self.cache.available:
            # The cache failed moments ago: run at once, no fingerprint, no waiting on a deadline.
            metrics.CACHE_LOOKUPS.labels("error").inc()
            return await self._run(prepared)
        scope = cache_policy.scope_key(tool, prepared.fp_targets)
        if not self.policy.should_cache(scope, self.fingerprints.cheap(prepared.fp_targets)):
            metrics.CACHE_LOOKUPS.labels("skipped").inc()
            return await self._run(prepared, scope)

        namespace = toolspec.TOOLS[tool].namespace
        key = cache_key(
            tool, prepared.key_args,
            max_output_bytes=self.ctx.max_output_bytes, grep=self.ctx.grep_backend,
        )
        try:
            if _small_files_only(prepared):
                # A few lstats and a hash of at most 64 KB each (~20 us): cheaper than the hop to
                # a worker thread, which is a tenth of a cached cat's latency.
                taken = self.fingerprints.take(prepared.fp_targets)
            else:
                taken = await asyncio.to_thread(self.fingerprints.take, prepared.fp_targets)
        except Exception:  # noqa: BLE001 - no fingerprint, no caching; the call still runs
            log.warning("fingerprint failed", exc_info=True)
            taken = None
        if taken is not None:
            metrics.FINGERPRINT_DURATION.labels(metrics.tool_label(tool)).observe(
                taken.seconds, exemplar=metrics.exemplar()
            )
            if taken.walked:
                self.policy.record_walk(scope, taken.seconds)
        fingerprint = taken.fingerprint if taken is not None else None
        if fingerprint is None or no_cache:
            # no_cache: run it, but still store the fresh result. No fingerprint (unstable: a
            # large file is being written, or the walk failed): run it, store nothing.
            metrics.CACHE_LOOKUPS.labels("skipped").inc()
        else:
            value = await self.cache.get(namespace, key, fingerprint, prepared.scopes, self.ttl[namespace])
            if value is not None:
                hit = sandbox_pb2.ExecuteResponse()
                try:
                    hit.ParseFromString(value)
                except Exception:  # noqa: BLE001 - a damaged entry is a miss
                    log.warning("unreadable cache entry", extra={"tool": tool})
                else:
                    hit.cached = True
                    return hit

        response = await self._run(prepared, scope)
        if fingerprint is not None and not response.error_code:
            await self.cache.put(
                namespace, key, response.SerializeToString(), fingerprint, prepared.scopes, self.ttl[namespace]
            )
        return response

    async def _run(
        self, prepared: tools.Prepared, scope: cache_policy.ScopeKey | None = None
    ) -> sandbox_pb2.ExecuteResponse:
        started = time.perf_counter()
        out = await tools.run(self.ctx, prepared)
        if not out.error_code:
            self.policy.record_run(scope, time.perf_counter() - started)
        return sandbox_pb2.ExecuteResponse(
            stdout=out.stdout,
            stderr=out.stderr,
            exit_code=out.exit_code,
            truncated=out.truncated,
            cached=False,
            error=out.error,
            error_code=out.error_code,
            command=out.command,
            output_bytes=len(out.stdout.encode("utf-8", "surrogateescape")),
        )


def _small_files_only(prepared: tools.Prepared) -> bool:
    return len(prepared.fp_targets) <= 4 and all(t.kind != "scope" for t in prepared.fp_targets) and all(
        r.st is not None and r.st.st_size <= SMALL_FILE_BYTES for r in prepared.targets
    )


def _refusal(code: str, message: str) -> sandbox_pb2.ExecuteResponse:
    return sandbox_pb2.ExecuteResponse(exit_code=tools.EXIT_REFUSED, error=message, error_code=code)
