"""Langfuse traces exported by the real SDK in the agent to a receiver speaking Langfuse's OTLP API.

One trace per chat turn whose id is the gateway's X-Trace-Id (and the id in every service's logs):
agent root -> iteration spans -> a generation per LLM call and a tool observation per tool call.
"""

from __future__ import annotations

import json
import time
from typing import Iterator

import httpx
import pytest

from fsagent.cli.localstack import LocalStack
from tests.fakes.langfuse_server import FakeLangfuse, Span
from tests.fakes.openai_server import ScriptedOpenAI
from tests.integration.conftest import start_stack

SECRET = "sk-live-abcdefghijklmnopqrstuvwxyz0123"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, FakeLangfuse, ScriptedOpenAI]]:
    receiver = FakeLangfuse().start()
    llm = ScriptedOpenAI().start()
    stack = start_stack(tmp_path_factory.mktemp("langfuse"), {
        "FSAGENT_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-key-123456", "FSAGENT_LLM_MODEL": "scripted-model",
        "LANGFUSE_PUBLIC_KEY": receiver.public_key, "LANGFUSE_SECRET_KEY": receiver.secret_key,
        "LANGFUSE_BASE_URL": receiver.base_url, "LANGFUSE_TRACING_ENVIRONMENT": "ci", "LANGFUSE_RELEASE": "1.2.3",
        "LANGFUSE_FLUSH_INTERVAL": "0.2", "LANGFUSE_TIMEOUT": "2", "FSAGENT_TRACE_MAX_FIELD_CHARS": "300",
        "FSAGENT_LLM_INPUT_COST_PER_MTOK": "2.5", "FSAGENT_LLM_OUTPUT_COST_PER_MTOK": "10",
    })
    yield stack, receiver, llm
    stack.stop()
    llm.stop()
    receiver.stop()


def _by_name(spans: list[Span]) -> dict[str, list[Span]]:
    out: dict[str, list[Span]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


def test_one_tree_per_turn_with_the_gateway_trace_id(traced: tuple[LocalStack, FakeLangfuse, ScriptedOpenAI]) -> None:
    stack, receiver, _ = traced
    message = f"What are the password rules? my key is {SECRET} and mail bob@example.com " + "x" * 2000
    reply = httpx.post(f"{stack.base_url}/api/chat", json={"message": message}, timeout=30)
    assert reply.status_code == 200, reply.text
    trace_id = reply.headers["x-trace-id"]
    assert reply.json()["trace_id"] == trace_id

    spans = receiver.wait_for(trace_id, {"chat", "iteration 1", "iteration 2", "iteration 3", "llm", "grep", "cat", "head"})
    named = _by_name(spans)
    assert {s.trace_id for s in spans} == {trace_id}
    root = named["chat"][0]
    assert root.attributes["langfuse.observation.type"] == "agent"
    assert root.attributes["session.id"] == reply.json()["session_id"]
    assert root.attributes["langfuse.environment"] == "ci"
    assert root.attributes["langfuse.release"] == "1.2.3"

    # Tree: chat -> iteration N -> (llm generation, tools)
    iterations = {s.span_id: s for s in spans if s.name.startswith("iteration ")}
    assert len(iterations) == 3 and all(s.parent_span_id == root.span_id for s in iterations.values())
    generations = named["llm"]
    assert len(generations) == 3
    assert all(g.attributes["langfuse.observation.type"] == "generation" for g in generations)
    assert all(g.parent_span_id in iterations for g in generations)
    usage = json.loads(generations[0].attributes["langfuse.observation.usage_details"])
    assert usage["input"] > 0 and usage["output"] > 0
    cost = json.loads(generations[0].attributes["langfuse.observation.cost_details"])
    assert cost["total"] > 0
    assert generations[0].attributes["langfuse.observation.model.name"] == "scripted-model"
    tools = named["grep"] + named["cat"] + named["head"]
    assert all(t.attributes["langfuse.observation.type"] == "tool" for t in tools)
    assert {iterations[t.parent_span_id].name for t in tools} == {"iteration 1", "iteration 2"}
    meta = {k.rsplit(".", 1)[1]: v for k, v in named["grep"][0].attributes.items()
            if k.startswith("langfuse.observation.metadata.")}
    assert meta["exit_code"] == "0" and int(meta["output_bytes"]) > 0
    assert meta["cached"] in ("true", "false") and float(meta["duration_seconds"]) > 0

    # Masking and truncation before export: no secret, no e-mail, no field above the limit.
    exported = json.dumps([s.attributes for s in spans])
    assert SECRET not in exported and "bob@example.com" not in exported and "sk-test-key-123456" not in exported
    root_input = root.attributes["langfuse.observation.input"]
    assert "[REDACTED]" in root_input and "[EMAIL]" in root_input
    assert len(root_input) < 400 and "truncated" in root_input


def test_the_trace_id_is_in_every_service_log(traced: tuple[LocalStack, FakeLangfuse, ScriptedOpenAI]) -> None:
    stack, _, _ = traced
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    reply = httpx.post(f"{stack.base_url}/api/chat", json={"message": "What is the VPN host name?"},
                       headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}, timeout=30)
    assert reply.status_code == 200 and reply.headers["x-trace-id"] == trace_id
    time.sleep(0.5)
    for service in ("gateway", "agent", "sandbox", "cache"):
        path = stack.log_path(service)
        assert path is not None
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line.get("trace_id") == trace_id]
        assert mine, f"no log line of {service} carries the trace id"
        assert all(len(line["span_id"]) == 16 for line in mine)


def test_receiver_down_or_slow_does_not_touch_chats(traced: tuple[LocalStack, FakeLangfuse, ScriptedOpenAI]) -> None:
    stack, receiver, _ = traced
    url = f"{stack.base_url}/api/chat"

    def timed() -> float:
        began = time.perf_counter()
        assert httpx.post(url, json={"message": "What is the VPN host name?"}, timeout=30).status_code == 200
        return time.perf_counter() - began

    def export_failures() -> float:
        text = httpx.get(stack.ports.metrics_urls()["agent"], timeout=5).text
        line = next(l for l in text.splitlines() if l.startswith('fsagent_langfuse_export_spans_total{result="failure"}'))
        return float(line.split()[-1])

    baseline = sorted(timed() for _ in range(5))[2]
    before = export_failures()
    receiver.fail_with = 400  # rejected, not retried: every span of these chats is lost
    try:
        failing = sorted(timed() for _ in range(5))[2]
        deadline = time.monotonic() + 15
        while export_failures() == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert export_failures() > before, "failed exports were not counted"
    finally:
        receiver.fail_with = None
    receiver.delay = 3.0  # slower than LANGFUSE_TIMEOUT
    try:
        slow = sorted(timed() for _ in range(5))[2]
    finally:
        receiver.delay = 0.0
    # Export runs on a background thread: chats stay in the same range (generous bound for a noisy CI box).
    assert failing < baseline + 0.5 and slow < baseline + 0.5, (baseline, failing, slow)
