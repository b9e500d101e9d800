"""Langfuse tracing of one chat turn, owned by the agent.

One trace per turn, its id the W3C trace id that came in at the gateway:

    agent "chat"                       (agent observation: the question, the answer, status)
      span "iteration 1"
        generation "llm"               (model, messages, usage, cost, latency)
        tool "grep"                    (arguments, exit code, bytes, cached, duration, block reason)
      span "iteration 2" ...

Session and user ids are trace attributes. Every field is masked (API keys, bearer tokens, e-mail
addresses) and cut to `FSAGENT_TRACE_MAX_FIELD_CHARS` before export. Export runs on the SDK's
background thread and can only ever count a failure (`fsagent_langfuse_export_spans_total`); it
never blocks or fails a chat. Without keys this module does nothing at all.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import threading
from contextvars import ContextVar
from typing import Any, Iterator, Sequence

from fsagent.common.settings import Settings

from fsagent.agent import metrics

log = logging.getLogger(__name__)

# One pass over each field: a key-like token, or `name: value` / `name=value` for secret names.
_SECRETS = re.compile(
    r"(?P<token>\bsk-[A-Za-z0-9_\-]{8,}"                        # OpenAI-style keys
    r"|\b(?:pk|sk)-lf-[A-Za-z0-9\-]{8,}"                        # Langfuse keys
    r"|(?i:\bbearer\s+)[A-Za-z0-9._~+/=\-]{8,}"                # bearer tokens
    r"|\bAKIA[0-9A-Z]{16}\b"                                     # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}\b)"                          # GitHub tokens
    r"|(?P<name>(?i:\b(?:api[_-]?key|secret|password|token)))(?P<sep>\s*[:=]\s*)[^\s,;\"']{6,}"
    r"|(?P<email>\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b)"
)
# Every pattern above needs one of these (lower-cased); most fields contain none, and a substring
# test is far cheaper than running the expression.
_MARKERS = ("sk-", "pk-", "bearer", "akia", "gh", "key", "secret", "password", "token", "@")
# Masking looks a little past the cut, so a secret that starts before it is still recognised whole.
_LOOKAHEAD = 128


def _redact(match: re.Match[str]) -> str:
    if match.group("email"):
        return "[EMAIL]"
    if match.group("name"):
        return f"{match.group('name')}{match.group('sep')}[REDACTED]"
    return "[REDACTED]"


def mask_text(text: str, limit: int) -> str:
    """Mask secrets and e-mail addresses, then cut to `limit` characters with a marker.

    Cutting first bounds the regular-expression work to the part that is exported, which keeps
    tracing cheap when a tool returns tens of kilobytes.
    """
    window = text[: limit + _LOOKAHEAD]
    lowered = window.lower()
    masked = _SECRETS.sub(_redact, window) if any(m in lowered for m in _MARKERS) else window
    unread = len(text) - len(window)
    if unread == 0 and len(masked) <= limit:
        return masked
    return f"{masked[:limit]}... [truncated {max(0, len(masked) - limit) + unread} chars]"


def mask_value(data: Any, limit: int) -> Any:
    """Mask and truncate every string inside a JSON-like value."""
    if isinstance(data, str):
        return mask_text(data, limit)
    if isinstance(data, dict):
        return {k: mask_value(v, limit) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_value(v, limit) for v in data]
    return data


# Set for the duration of a turn that LANGFUSE_SAMPLE_RATE left out: its observations are no-ops.
_SAMPLED_OUT: ContextVar[bool] = ContextVar("fsagent_langfuse_sampled_out", default=False)


def sampled(trace_id: str, rate: float) -> bool:
    """The ratio rule of OpenTelemetry's TraceIdRatioBased sampler, on the low 64 bits of the id.

    Our turns always continue the gateway's trace, and the SDK's sampler defers to a parent, so
    the rate is applied here, deterministically: every service and a re-export agree per trace.
    """
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return int(trace_id[-16:], 16) < int(rate * (1 << 64))


class _Noop:
    """Stands in for an observation when tracing is off or failed: accepts and ignores everything."""

    def update(self, **_: Any) -> "_Noop":
        return self


NOOP = _Noop()


def _counting_exporter(settings: Settings) -> Any:
    """The SDK's OTLP/HTTP exporter, wrapped to count exported and failed spans."""
    from langfuse._version import __version__ as sdk_version
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    auth = base64.b64encode(
        f"{settings.langfuse_public_key}:{settings.langfuse_secret_key}".encode()
    ).decode("ascii")
    inner = OTLPSpanExporter(
        endpoint=f"{settings.langfuse_base_url.rstrip('/')}/api/public/otel/v1/traces",
        headers={
            "Authorization": f"Basic {auth}",
            "x-langfuse-sdk-name": "python",
            "x-langfuse-sdk-version": sdk_version,
            "x-langfuse-public-key": settings.langfuse_public_key or "",
            "x-langfuse-ingestion-version": "4",
        },
        timeout=settings.langfuse_timeout,
    )

    class CountingExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            try:
                result = inner.export(spans)
            except Exception:  # noqa: BLE001 - an exporter must never raise into the SDK
                log.warning("langfuse export raised", exc_info=True)
                result = SpanExportResult.FAILURE
            outcome = "success" if result == SpanExportResult.SUCCESS else "failure"
            metrics.LANGFUSE_EXPORT_SPANS.labels(outcome).inc(len(spans))
            if outcome == "failure":
                log.warning("langfuse export failed", extra={"spans": len(spans)})
            return result

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return inner.force_flush(timeout_millis)

    return CountingExporter()


class AgentTracer:
    """Creates the observations of a chat turn; every method is safe when tracing is off."""

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.trace_max_field_chars
        self.sample_rate = settings.langfuse_sample_rate
        self.client: Any = None
        metrics.LANGFUSE_ENABLED.set(0)
        if not settings.langfuse_enabled:
            log.info("langfuse tracing off (LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY not set)")
            return
        try:
            from langfuse import Langfuse
            from opentelemetry.sdk.trace import TracerProvider

            self.client = Langfuse(
                public_key=settings.langfuse_public_key,
                secret_key=settings.langfuse_secret_key,
                base_url=settings.langfuse_base_url,
                environment=settings.langfuse_environment,
                release=settings.langfuse_release,
                sample_rate=settings.langfuse_sample_rate,
                timeout=max(1, int(settings.langfuse_timeout)),
                flush_interval=settings.langfuse_flush_interval,
                mask=lambda *, data, **_: mask_value(data, self.limit),
                # Our own provider: the agent's traces never mix with a global OTel setup.
                tracer_provider=TracerProvider(),
                span_exporter=_counting_exporter(settings),
            )
        except Exception:  # noqa: BLE001 - tracing must never stop the agent from starting
            log.exception("langfuse tracing disabled: client could not be created")
            self.client = None
            return
        metrics.LANGFUSE_ENABLED.set(1)
        log.info(
            "langfuse tracing on",
            extra={"base_url": settings.langfuse_base_url, "sample_rate": settings.langfuse_sample_rate,
                   "environment": settings.langfuse_environment},
        )

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @contextlib.contextmanager
    def _observe(self, **kwargs: Any) -> Iterator[Any]:
        """An observation as the current span, or NOOP if the SDK fails to create one."""
        if self.client is None or _SAMPLED_OUT.get():
            yield NOOP
            return
        try:
            manager = self.client.start_as_current_observation(**kwargs)
            observation = manager.__enter__()
        except Exception:  # noqa: BLE001
            log.warning("langfuse observation failed to start", exc_info=True)
            yield NOOP
            return
        try:
            yield observation
        except BaseException as exc:
            with contextlib.suppress(Exception):
                observation.update(level="ERROR", status_message=type(exc).__name__)
            with contextlib.suppress(Exception):
                manager.__exit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            with contextlib.suppress(Exception):
                manager.__exit__(None, None, None)

    @contextlib.contextmanager
    def turn(
        self, *, trace_id: str | None, parent_span_id: str | None, session_id: str, user_id: str,
        message: str, model: str,
    ) -> Iterator[Any]:
        if self.client is None:
            yield NOOP
            return
        if trace_id and not sampled(trace_id, self.sample_rate):
            token = _SAMPLED_OUT.set(True)
            try:
                yield NOOP
            finally:
                _SAMPLED_OUT.reset(token)
            return
        from langfuse import propagate_attributes

        trace_context = {"trace_id": trace_id} if trace_id else None
        if trace_context and parent_span_id:
            trace_context["parent_span_id"] = parent_span_id
        with self._observe(
            trace_context=trace_context, name="chat", as_type="agent", input=message,
            metadata={"model": model},
        ) as root:
            attrs: dict[str, Any] = {"session_id": session_id, "trace_name": "chat"}
            if user_id:
                attrs["user_id"] = user_id
            try:
                propagation = propagate_attributes(**attrs)
                propagation.__enter__()
            except Exception:  # noqa: BLE001
                propagation = None
            try:
                yield root
            finally:
                if propagation is not None:
                    with contextlib.suppress(Exception):
                        propagation.__exit__(None, None, None)

    def iteration(self, number: int) -> contextlib.AbstractContextManager[Any]:
        return self._observe(name=f"iteration {number}", as_type="span", metadata={"iteration": number})

    def generation(self, *, model: str, provider: str, messages: list[dict[str, Any]]) -> contextlib.AbstractContextManager[Any]:
        return self._observe(
            name="llm", as_type="generation", model=model, input=messages,
            metadata={"provider": provider},
        )

    def tool(self, *, name: str, arguments: Any) -> contextlib.AbstractContextManager[Any]:
        return self._observe(name=name, as_type="tool", input=arguments)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush what is pending, waiting at most `timeout` seconds (the SDK call can block)."""
        if self.client is None:
            return
        done = threading.Event()

        def flush() -> None:
            try:
                self.client.shutdown()
            except Exception:  # noqa: BLE001
                log.warning("langfuse shutdown failed", exc_info=True)
            finally:
                done.set()

        threading.Thread(target=flush, name="langfuse-flush", daemon=True).start()
        if not done.wait(timeout):
            log.warning("langfuse flush did not finish in time", extra={"timeout_seconds": timeout})
