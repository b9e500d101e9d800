"""Agent metrics: chats, LLM calls and tokens, tool executions and batches, sessions.

Labels are bounded: statuses, tool names from the tool schema (anything else is `unknown`), the
provider and the configured model name. Never a session id, a path or user text.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import Counter, Gauge, Histogram

from fsagent.common.metrics import NAMESPACE, RPC_BUCKETS, SLOW_BUCKETS

ITERATION_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
SESSION_BUCKETS = (1, 2, 4, 6, 8, 10, 16, 20, 30, 50, 100, 200)

# Chat outcomes (the `status` label of the agent metrics).
COMPLETED = "completed"
MAX_ITERATIONS = "max_iterations"
ERROR = "error"
CANCELLED = "cancelled"

AGENT_ITERATIONS = Histogram(
    "agent_iterations",
    "LLM iterations (model calls) per chat turn.",
    namespace=NAMESPACE,
    buckets=ITERATION_BUCKETS,
)
AGENT_COMPLETIONS = Counter(
    "agent_completions_total",
    "Chat turns finished, by status (completed, max_iterations, error, cancelled).",
    ["status"],
    namespace=NAMESPACE,
)
AGENT_EXECUTION_DURATION = Histogram(
    "agent_execution_duration_seconds",
    "Wall time of one chat turn (the whole agentic loop), by status.",
    ["status"],
    namespace=NAMESPACE,
    buckets=SLOW_BUCKETS,
)
AGENT_CHATS_IN_PROGRESS = Gauge(
    "agent_chats_in_progress",
    "Chat turns currently running in this agent.",
    namespace=NAMESPACE,
)

LLM_CALLS = Counter(
    "llm_calls_total",
    "LLM calls, by provider, model and status (success or an error code).",
    ["provider", "model", "status"],
    namespace=NAMESPACE,
)
LLM_CALL_DURATION = Histogram(
    "llm_call_duration_seconds",
    "Duration of one LLM call (for streams, until the last chunk).",
    ["provider", "model"],
    namespace=NAMESPACE,
    buckets=SLOW_BUCKETS,
)
LLM_TOKENS = Counter(
    "llm_tokens_total",
    "Tokens reported by the LLM (estimated for the offline model), by type (input, output).",
    ["provider", "model", "type"],
    namespace=NAMESPACE,
)
LLM_TOKENS_PER_REQUEST = Histogram(
    "llm_tokens_per_request",
    "Tokens of one LLM call, by type (input, output).",
    ["type"],
    namespace=NAMESPACE,
    buckets=TOKEN_BUCKETS,
)

TOOL_EXECUTIONS = Counter(
    "tool_executions_total",
    "Tool calls the agent ran through the sandbox, by tool and status (success, error).",
    ["tool", "status"],
    namespace=NAMESPACE,
)
TOOL_EXECUTION_DURATION = Histogram(
    "tool_execution_duration_seconds",
    "Duration of one tool call as seen by the agent (gRPC round trip included).",
    ["tool"],
    namespace=NAMESPACE,
    buckets=RPC_BUCKETS,
)
TOOL_BATCHES = Counter(
    "tool_batches_total",
    "Batches of tool calls from one model turn: parallel (several calls at once) or sequential (one).",
    ["mode"],
    namespace=NAMESPACE,
)

TOOL_CALLS_CAPPED = Counter(
    "tool_calls_capped_total",
    "Tool calls the model asked for and the agent did not run, by the limit reached "
    "(turn: FSAGENT_MAX_TOOL_CALLS_PER_TURN, chat: FSAGENT_MAX_TOOL_CALLS_PER_CHAT).",
    ["limit"],
    namespace=NAMESPACE,
)

SESSION_MESSAGES = Histogram(
    "session_messages",
    "Messages stored in a conversation session after a chat turn.",
    namespace=NAMESPACE,
    buckets=SESSION_BUCKETS,
)
SESSION_ERRORS = Counter(
    "session_errors_total",
    "Session store calls that failed, by operation (load: the turn is refused, history_unavailable; "
    "save: the answer says history_not_saved).",
    ["operation"],
    namespace=NAMESPACE,
)


LLM_COST = Counter(
    "llm_cost_usd_total",
    "Estimated model cost in US dollars, from FSAGENT_LLM_*_COST_PER_MTOK (0 when prices are not set).",
    ["provider", "model"],
    namespace=NAMESPACE,
)


def initialise(provider: str, model: str, tools: Iterable[str]) -> None:
    """Create every known label set at 0, so dashboards and rates see the series before the first event."""
    for status in (COMPLETED, MAX_ITERATIONS, ERROR, CANCELLED):
        AGENT_COMPLETIONS.labels(status)
        AGENT_EXECUTION_DURATION.labels(status)
    LLM_CALLS.labels(provider, model, "success")
    LLM_CALL_DURATION.labels(provider, model)
    LLM_COST.labels(provider, model)
    for kind in ("input", "output"):
        LLM_TOKENS.labels(provider, model, kind)
        LLM_TOKENS_PER_REQUEST.labels(kind)
    for tool in tools:
        TOOL_EXECUTION_DURATION.labels(tool)
        for status in ("success", "error"):
            TOOL_EXECUTIONS.labels(tool, status)
    for mode in ("parallel", "sequential"):
        TOOL_BATCHES.labels(mode)
    for limit in ("turn", "chat"):
        TOOL_CALLS_CAPPED.labels(limit)
    for operation in ("load", "save"):
        SESSION_ERRORS.labels(operation)
    for result in ("success", "failure"):
        LANGFUSE_EXPORT_SPANS.labels(result)


# Langfuse export health (used by tracing.py).
LANGFUSE_ENABLED = Gauge(
    "langfuse_enabled",
    "1 when Langfuse tracing is configured and its client started, else 0.",
    namespace=NAMESPACE,
)
LANGFUSE_EXPORT_SPANS = Counter(
    "langfuse_export_spans_total",
    "Spans handed to the Langfuse exporter, by result (success, failure).",
    ["result"],
    namespace=NAMESPACE,
)
