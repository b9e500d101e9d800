"""The agent's Langfuse tracer on its own: masking, truncation, sampling, off without keys, bounded flush."""

from __future__ import annotations

import time

import pytest

from fsagent.agent.tracing import AgentTracer, mask_text, mask_value
from fsagent.common.settings import Settings
from tests.fakes.langfuse_server import FakeLangfuse


@pytest.fixture()
def receiver():  # type: ignore[no-untyped-def]
    server = FakeLangfuse().start()
    yield server
    server.stop()


def settings_for(receiver: FakeLangfuse, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        LANGFUSE_PUBLIC_KEY=receiver.public_key, LANGFUSE_SECRET_KEY=receiver.secret_key,
        LANGFUSE_BASE_URL=receiver.base_url, LANGFUSE_FLUSH_INTERVAL=0.1, LANGFUSE_TIMEOUT=1,
        **overrides,
    )


def one_turn(tracer: AgentTracer, trace_id: str) -> None:
    with tracer.turn(trace_id=trace_id, parent_span_id=None, session_id="s1", user_id="u1",
                     message="hello", model="m") as root:
        with tracer.iteration(1):
            with tracer.generation(model="m", provider="p", messages=[{"role": "user", "content": "hello"}]) as gen:
                gen.update(output="hi", usage_details={"input": 3, "output": 1})
        root.update(output="hi")


@pytest.mark.parametrize(
    "text, hidden",
    [
        ("key sk-proj-abcdefghijklmnop123", "sk-proj-abcdefghijklmnop123"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "eyJhbGciOiJIUzI1NiJ9.abc.def"),
        ("api_key=supersecretvalue1", "supersecretvalue1"),
        ("langfuse pk-lf-1234567890abcdef", "pk-lf-1234567890abcdef"),
        ("mail jane.doe@example.com now", "jane.doe@example.com"),
        ("aws AKIAABCDEFGHIJKLMNOP", "AKIAABCDEFGHIJKLMNOP"),
    ],
)
def test_secrets_and_emails_are_masked(text: str, hidden: str) -> None:
    masked = mask_text(text, 1000)
    assert hidden not in masked
    assert "[REDACTED]" in masked or "[EMAIL]" in masked


def test_fields_are_truncated_with_a_marker_and_nested_values_masked() -> None:
    masked = mask_value({"a": ["x" * 50, {"b": "bob@example.com"}], "n": 3}, 10)
    assert masked["a"][0].startswith("x" * 10) and "truncated 40 chars" in masked["a"][0]
    assert masked["a"][1]["b"] == "[EMAIL]" and masked["n"] == 3


def test_no_keys_means_no_client_and_no_traffic(receiver: FakeLangfuse) -> None:
    tracer = AgentTracer(Settings(_env_file=None, LANGFUSE_BASE_URL=receiver.base_url))  # type: ignore[call-arg]
    assert not tracer.enabled
    one_turn(tracer, "1" * 32)
    tracer.shutdown(1)
    time.sleep(0.3)
    assert receiver.requests == 0


def test_sample_rate_zero_exports_nothing_and_one_exports_the_tree(receiver: FakeLangfuse) -> None:
    off = AgentTracer(settings_for(receiver, LANGFUSE_SAMPLE_RATE=0.0))
    one_turn(off, "a" * 32)
    off.shutdown(5)
    assert receiver.trace("a" * 32) == []
    on = AgentTracer(settings_for(receiver, LANGFUSE_SAMPLE_RATE=1.0))
    one_turn(on, "b" * 32)
    on.shutdown(5)
    names = {s.name for s in receiver.trace("b" * 32)}
    assert {"chat", "iteration 1", "llm"} <= names


def test_shutdown_is_bounded_when_langfuse_hangs(receiver: FakeLangfuse) -> None:
    receiver.delay = 10.0
    tracer = AgentTracer(settings_for(receiver))
    one_turn(tracer, "c" * 32)
    began = time.monotonic()
    tracer.shutdown(1.0)
    assert time.monotonic() - began < 2.0


def test_sampling_is_deterministic_per_trace_id() -> None:
    from fsagent.agent.tracing import sampled

    ids = [f"{i:032x}" for i in range(0, 2**64, 2**64 // 1000)][:1000]
    kept = [i for i in ids if sampled(i, 0.25)]
    assert 200 < len(kept) < 300
    assert kept == [i for i in ids if sampled(i, 0.25)]
    assert all(sampled(i, 1.0) for i in ids) and not any(sampled(i, 0.0) for i in ids)
