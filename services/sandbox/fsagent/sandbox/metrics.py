"""The sandbox's own metrics (the shared gRPC and build-info metrics live in fsagent.common.metrics).

Labels are bounded: tool names from the tool specification (anything else is "unknown"), fixed
status and block-type sets, document operation names and gRPC status code names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from fsagent.common.metrics import FAST_BUCKETS, NAMESPACE, SLOW_BUCKETS, exemplar
from fsagent.common.toolspec import TOOLS

TOOL_BUCKETS = (0.001, 0.0025) + SLOW_BUCKETS

EXECUTIONS = Counter(
    "sandbox_executions_total",
    "Tool calls executed by the sandbox, by tool and outcome (success, error, blocked, timeout).",
    ["tool", "status"],
    namespace=NAMESPACE,
)
EXECUTION_DURATION = Histogram(
    "sandbox_execution_duration_seconds",
    "Time to answer one tool call in the sandbox (validation, fingerprint, cache, run).",
    ["tool"],
    namespace=NAMESPACE,
    buckets=TOOL_BUCKETS,
)
TIMEOUTS = Counter(
    "sandbox_timeouts_total",
    "Tool calls stopped because they ran past the tool timeout.",
    ["tool"],
    namespace=NAMESPACE,
)
SECURITY_BLOCKS = Counter(
    "sandbox_security_blocks_total",
    "Tool calls refused or cut for safety, by reason (path_outside_root, flag_not_allowed, file_type, "
    "output_cap, timeout, invalid_arguments).",
    ["block_type"],
    namespace=NAMESPACE,
)
CACHE_LOOKUPS = Counter(
    "sandbox_cache_lookups_total",
    "Cache lookups made by the sandbox before running a tool, by result (hit, miss, stale, error, skipped).",
    ["result"],
    namespace=NAMESPACE,
)
CACHE_ERRORS = Counter(
    "sandbox_cache_errors_total",
    "Cache writes and invalidations that failed (the call still succeeded), by operation.",
    ["operation"],
    namespace=NAMESPACE,
)
# Cache fingerprints (fsagent.sandbox.fingerprint; the rule in cache_policy, docs/cache.md).
FINGERPRINT_DURATION = Histogram(
    "sandbox_fingerprint_duration_seconds",
    "Time to take the fingerprint of what a tool call reads (a walk, or a memo proven unchanged).",
    ["tool"],
    namespace=NAMESPACE,
    buckets=FAST_BUCKETS,
)
CACHE_LOCAL_HITS = Counter(
    "sandbox_cache_local_hits_total",
    "Cache hits answered by the sandbox's in-process tier (also counted in sandbox_cache_lookups_total).",
    namespace=NAMESPACE,
)
for _tool in [*TOOLS, "unknown"]:
    FINGERPRINT_DURATION.labels(_tool)
DOCUMENT_OPERATIONS = Counter(
    "documents_operations_total",
    "Documents API operations served by the sandbox, by operation and gRPC status code.",
    ["operation", "status"],
    namespace=NAMESPACE,
)

CONFINEMENT_ACTIVE = Gauge(
    "sandbox_confinement_active",
    "Whether a confinement layer is active for tool processes (1) or not (0), detected at start: "
    "process_group, empty_env, rlimits, unprivileged_uid, bubblewrap, landlock.",
    ["layer"],
    namespace=NAMESPACE,
)
CONFINEMENT_LAYERS = ("process_group", "empty_env", "rlimits", "unprivileged_uid", "bubblewrap", "landlock")

BLOCK_TYPES = ("path_outside_root", "flag_not_allowed", "file_type", "output_cap", "timeout", "invalid_arguments")
STATUSES = ("success", "error", "blocked", "timeout")
CACHE_RESULTS = ("hit", "miss", "stale", "error", "skipped")


def tool_label(tool: str) -> str:
    return tool if tool in TOOLS else "unknown"


def observe_execution(tool: str, status: str, seconds: float) -> None:
    label = tool_label(tool)
    EXECUTIONS.labels(label, status).inc()
    EXECUTION_DURATION.labels(label).observe(seconds, exemplar=exemplar())


def _initialise() -> None:
    # Series exist (at 0) from the start, so rate() and alerts see them before the first event.
    for tool in [*TOOLS, "unknown"]:
        EXECUTION_DURATION.labels(tool)
        TIMEOUTS.labels(tool)
        for status in STATUSES:
            EXECUTIONS.labels(tool, status)
    for block in BLOCK_TYPES:
        SECURITY_BLOCKS.labels(block)
    for result in CACHE_RESULTS:
        CACHE_LOOKUPS.labels(result)
    for op in ("put", "invalidate"):
        CACHE_ERRORS.labels(op)
    for layer in CONFINEMENT_LAYERS:
        CONFINEMENT_ACTIVE.labels(layer).set(0)


_initialise()
