"""A misbehaving LLM endpoint, through the real `openai` client and the real Agent servicer: every
fault ends the turn with a typed error (never a traceback, never an empty answer, nothing saved),
retries happen only while the turn's deadline can cover another attempt."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Iterator

import grpc
import pytest

from fsagent.agent.budget import Budget, margin_for
from fsagent.v1 import agent_pb2
from tests.agent.harness import Harness, make_settings, running_agent
from tests.fakes.openai_server import FAULTS, Fault, ScriptedOpenAI


def answer(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"content": "Forty-two."}


@pytest.fixture
def llm() -> Iterator[ScriptedOpenAI]:
    server = ScriptedOpenAI(script=answer).start()
    yield server
    server.stop()


def settings(server: ScriptedOpenAI, **overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        llm_provider="openai", openai_base_url=server.base_url, openai_api_key="sk-test-secret-key",
        llm_model="scripted-model", llm_max_retries=2,
    )
    values.update(overrides)
    return make_settings(**values)


def trailing(info: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> dict[str, str]:
    return dict(info.value.trailing_metadata() or ())


async def chat_error(harness: Harness, message: str = "question", **kwargs: Any) -> pytest.ExceptionInfo[grpc.aio.AioRpcError]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.stub.Chat(agent_pb2.ChatRequest(message=message), **kwargs)
    return info


async def stream(harness: Harness, message: str = "question") -> list[agent_pb2.ChatEvent]:
    return [event async for event in harness.stub.ChatStream(agent_pb2.ChatRequest(message=message))]


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logged = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not logged, [r.getMessage() for r in logged]


# --- malformed replies: llm_upstream, not retried, nothing saved ----------------------------------


@pytest.mark.parametrize("fault", ["html", "garbage_json", "message_null", "no_choices"])
async def test_a_malformed_reply_is_llm_upstream(llm: ScriptedOpenAI, fault: str, caplog: pytest.LogCaptureFixture) -> None:
    llm.fault = FAULTS[fault]
    with caplog.at_level(logging.INFO):
        async with running_agent(settings(llm)) as harness:
            info = await chat_error(harness)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert trailing(info)["fsagent-error-code"] == "llm_upstream"
    assert info.value.details().startswith("the LLM endpoint returned a malformed reply (")
    assert len(llm.requests) == 1  # a malformed reply is not worth another attempt
    assert harness.cache.sessions == {}
    no_traceback(caplog)


@pytest.mark.parametrize("fault", ["html", "empty_stream", "garbage_stream", "message_null"])
async def test_a_malformed_stream_ends_in_an_error_event_never_done(
    llm: ScriptedOpenAI, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    llm.fault = FAULTS[fault]
    with caplog.at_level(logging.INFO):
        async with running_agent(settings(llm)) as harness:
            events = await stream(harness)
    assert [e.WhichOneof("event") for e in events] == ["status", "error"]
    assert events[-1].error.code == "llm_upstream"
    assert harness.cache.sessions == {}
    no_traceback(caplog)


async def test_an_empty_answer_is_an_error_not_a_saved_success(llm: ScriptedOpenAI) -> None:
    llm.script = lambda messages: {"content": ""}
    async with running_agent(settings(llm)) as harness:
        info = await chat_error(harness)
        events = await stream(harness)
    assert trailing(info)["fsagent-error-code"] == "llm_upstream"
    assert "empty answer" in info.value.details()
    assert events[-1].error.code == "llm_upstream"
    assert harness.cache.sessions == {}


# --- retries within the budget ------------------------------------------------------------------


async def test_server_errors_are_retried_then_answered(llm: ScriptedOpenAI) -> None:
    llm.faults = [FAULTS["server_error"], FAULTS["server_error"]]
    async with running_agent(settings(llm)) as harness:
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="question"))
    assert reply.response == "Forty-two." and len(llm.requests) == 3


async def test_a_stream_is_retried_before_its_first_token(llm: ScriptedOpenAI) -> None:
    llm.faults = [FAULTS["server_error"]]
    async with running_agent(settings(llm)) as harness:
        events = await stream(harness)
    assert events[-1].done.response == "Forty-two." and len(llm.requests) == 2


async def test_persistent_server_errors_stop_after_the_retries(llm: ScriptedOpenAI) -> None:
    llm.fault = FAULTS["server_error"]
    async with running_agent(settings(llm, llm_max_retries=1)) as harness:
        info = await chat_error(harness)
    assert trailing(info)["fsagent-error-code"] == "llm_upstream"
    assert info.value.details() == "the LLM endpoint failed (HTTP 500)"
    assert len(llm.requests) == 2


async def test_a_rate_limit_is_waited_out_when_the_budget_allows(llm: ScriptedOpenAI) -> None:
    llm.faults = [dataclasses.replace(FAULTS["rate_limited"], headers={"retry-after": "1"})]
    async with running_agent(settings(llm)) as harness:
        started = time.monotonic()
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="question"))
    assert reply.response == "Forty-two." and len(llm.requests) == 2
    assert time.monotonic() - started >= 0.9  # the endpoint's Retry-After, honoured


async def test_a_rate_limit_longer_than_the_budget_is_passed_on_at_once(llm: ScriptedOpenAI) -> None:
    llm.fault = FAULTS["rate_limited"]  # Retry-After: 30
    async with running_agent(settings(llm, chat_timeout=5)) as harness:
        started = time.monotonic()
        info = await chat_error(harness)
        elapsed = time.monotonic() - started
        events = await stream(harness)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert trailing(info) == {"fsagent-error-code": "llm_rate_limited", "fsagent-retry-after": "30"}
    assert "retry after 30s" in info.value.details()
    assert elapsed < 1.0 and len(llm.requests) == 2  # one per chat: no retry that cannot succeed in time
    assert events[-1].error.code == "llm_rate_limited" and events[-1].error.retry_after_seconds == 30


@pytest.mark.parametrize("provider", ["openai", "azure"])
async def test_rejected_credentials_name_the_variable(llm: ScriptedOpenAI, provider: str) -> None:
    llm.fault = FAULTS["unauthorized"]
    if provider == "openai":
        config = settings(llm)
    else:
        config = make_settings(
            llm_provider="azure", azure_openai_endpoint=llm.azure_endpoint, azure_openai_api_key="azure-secret",
            azure_openai_deployment="deploy", llm_max_retries=2,
        )
    async with running_agent(config) as harness:
        info = await chat_error(harness)
    variable = "OPENAI_API_KEY" if provider == "openai" else "AZURE_OPENAI_API_KEY"
    assert trailing(info)["fsagent-error-code"] == "llm_auth"
    assert variable in info.value.details()
    assert "sk-test" not in info.value.details() and "azure-secret" not in info.value.details()
    assert len(llm.requests) == 1


async def test_a_dropped_connection_is_llm_connection(llm: ScriptedOpenAI) -> None:
    llm.fault = FAULTS["drop"]
    async with running_agent(settings(llm, llm_max_retries=0)) as harness:
        info = await chat_error(harness)
    assert trailing(info)["fsagent-error-code"] == "llm_connection"
    assert "OPENAI_BASE_URL" in info.value.details()


# --- the deadline budget ------------------------------------------------------------------------


async def test_a_hung_llm_ends_within_the_chat_timeout(llm: ScriptedOpenAI) -> None:
    """The issue's case: FSAGENT_LLM_TIMEOUT=5 with retries took 16.7 s; the budget is 5 s."""
    llm.fault = FAULTS["hang"]
    async with running_agent(settings(llm, llm_timeout=5, chat_timeout=5)) as harness:
        started = time.monotonic()
        info = await chat_error(harness)
        elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert trailing(info)["fsagent-error-code"] == "llm_timeout"
    assert elapsed <= 5.0, elapsed
    assert len(llm.requests) == 1  # no time for another attempt


async def test_timeout_retries_stop_when_the_budget_cannot_cover_an_attempt(llm: ScriptedOpenAI) -> None:
    llm.fault = Fault(hang=3600)
    async with running_agent(settings(llm, llm_timeout=1.5, chat_timeout=5, llm_max_retries=5)) as harness:
        started = time.monotonic()
        info = await chat_error(harness)
        elapsed = time.monotonic() - started
    assert trailing(info)["fsagent-error-code"] == "llm_timeout"
    assert "FSAGENT_LLM_TIMEOUT" in info.value.details()
    # 1.5 s attempts with backoff in 4.75 s: two fit, a third would not have had a full 1.5 s.
    assert len(llm.requests) == 2, len(llm.requests)
    assert elapsed <= 5.0, elapsed


async def test_the_callers_deadline_bounds_the_turn(llm: ScriptedOpenAI) -> None:
    """The gateway's deadline is the outer bound: the agent answers with its own typed error first."""
    llm.fault = FAULTS["hang"]
    async with running_agent(settings(llm, llm_timeout=60, chat_timeout=300)) as harness:
        started = time.monotonic()
        info = await chat_error(harness, timeout=3)
        elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert trailing(info).get("fsagent-error-code") == "llm_timeout"  # not the client's own deadline
    assert 2.0 < elapsed < 3.0, elapsed


def test_budget_margin() -> None:
    assert margin_for(5) == 0.25 and margin_for(300) == 2.0 and margin_for(0.3) == 0.15
    budget = Budget.start(300, time_remaining=10)
    assert budget.total == 10 and 9.4 < budget.remaining() <= 9.5
    assert budget.cap(2.0) == 2.0 and Budget.start(5).cap(60) <= 4.75
