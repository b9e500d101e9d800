"""W3C trace context (`traceparent`) carried in a contextvar and across every gRPC hop.

The gateway starts or accepts a trace; each service that receives a call continues it with a new
span id, so log lines, exemplars and the agent's Langfuse trace all share one trace id.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

TRACEPARENT = "traceparent"
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    sampled: bool = True
    parent_span_id: str | None = None

    def child(self) -> "TraceContext":
        return TraceContext(self.trace_id, new_span_id(), self.sampled, self.span_id)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


_current: ContextVar[TraceContext | None] = ContextVar("fsagent_trace", default=None)


def new_trace_id() -> str:
    while True:
        value = secrets.token_hex(16)
        if value != "0" * 32:
            return value


def new_span_id() -> str:
    while True:
        value = secrets.token_hex(8)
        if value != "0" * 16:
            return value


def parse_traceparent(header: str | None) -> TraceContext | None:
    """A TraceContext for a valid header, else None (an invalid header starts a new trace)."""
    if not header:
        return None
    match = _TRACEPARENT_RE.match(header.strip().lower())
    if not match:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def new_trace(sampled: bool = True) -> TraceContext:
    return TraceContext(new_trace_id(), new_span_id(), sampled)


def continue_from(header: str | None) -> TraceContext:
    """Continue the caller's trace with a new span, or start a new trace."""
    parent = parse_traceparent(header)
    return parent.child() if parent else new_trace()


def current() -> TraceContext | None:
    return _current.get()


def current_trace_id() -> str | None:
    ctx = _current.get()
    return ctx.trace_id if ctx else None


@contextlib.contextmanager
def use(ctx: TraceContext | None) -> Iterator[TraceContext | None]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def set_current(ctx: TraceContext | None) -> None:
    _current.set(ctx)


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    ctx = _current.get()
    if ctx is None:
        return ()
    return ((TRACEPARENT, ctx.child().traceparent),)
