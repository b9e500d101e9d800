"""Tool-call caps of the agent loop (FSAGENT_MAX_TOOL_CALLS_PER_TURN / _PER_CHAT): the real Agent
over gRPC, the real sandbox and the real `openai` client against a scripted OpenAI-compatible server
whose model asks for far more tool calls than a person's question needs."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

from fsagent.v1 import agent_pb2
from tests.agent.harness import metric, running_agent
from tests.agent.test_agent_service import openai_settings
from tests.fakes.openai_server import ScriptedOpenAI, turns_since_user

LIMIT_MARK = "ERROR [tool_call_limit]: not run"


@pytest.fixture
def llm_server() -> Any:
    server = ScriptedOpenAI().start()
    yield server
    server.stop()


def greps(n: int, step: int) -> dict[str, Any]:
    return {"tool_calls": [{"name": "grep", "arguments": {"pattern": f"s{step}x{i}", "path": "faq"}} for i in range(n)]}


async def test_one_model_turn_runs_at_most_the_per_turn_cap(llm_server: ScriptedOpenAI) -> None:
    # The incident: one turn asked for 200 calls. Default cap 16: 16 run, 184 get a "not run" result.
    def script(messages: list[dict[str, Any]]) -> dict[str, Any]:
        step = turns_since_user(messages)
        return greps(200, step) if step == 0 else {"content": "done with what I have"}

    llm_server.script = script
    capped = metric("fsagent_tool_calls_capped_total", limit="turn")
    ran = metric("fsagent_tool_executions_total", tool="grep", status="success")
    async with running_agent(openai_settings(llm_server)) as harness:
        assert harness.settings.max_tool_calls_per_turn == 16  # the documented default
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="search everything"))
        events = [e async for e in harness.stub.ChatStream(agent_pb2.ChatRequest(message="search everything"))]
    assert reply.status == "completed" and reply.response == "done with what I have"
    assert len(reply.tool_calls) == 16 and len(reply.tool_results) == 16
    assert metric("fsagent_tool_executions_total", tool="grep", status="success") - ran == 32  # 16 per chat, twice
    assert metric("fsagent_tool_calls_capped_total", limit="turn") - capped == 2 * 184
    # The model still got one tool message per call id (the API requires it), 184 of them "not run".
    second = llm_server.requests[1]["messages"]
    tool_messages = [m for m in second if m["role"] == "tool"]
    assert len(tool_messages) == 200
    refused = [m for m in tool_messages if m["content"].startswith(LIMIT_MARK)]
    assert len(refused) == 184 and "FSAGENT_MAX_TOOL_CALLS_PER_TURN" in refused[0]["content"]
    assert [w.code for w in reply.warnings] == ["tool_calls_capped"]
    assert reply.warnings[0].component == "agent" and "184" in reply.warnings[0].message
    assert sum(1 for e in events if e.HasField("tool_call")) == 16  # refused calls are not streamed
    assert [w.code for w in events[-1].done.warnings] == ["tool_calls_capped"]


async def test_past_the_per_chat_cap_the_model_answers_with_what_it_has(llm_server: ScriptedOpenAI) -> None:
    def script(messages: list[dict[str, Any]]) -> dict[str, Any]:
        if messages[-1]["role"] == "system":
            return {"content": "answer from what I found"}
        return greps(4, turns_since_user(messages))

    llm_server.script = script
    capped = metric("fsagent_tool_calls_capped_total", limit="chat")
    settings = openai_settings(llm_server, max_tool_calls_per_turn=4, max_tool_calls_per_chat=6, max_iterations=10)
    async with running_agent(settings) as harness:
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="keep searching"))
    assert reply.status == "completed" and reply.response == "answer from what I found"
    assert len(reply.tool_calls) == 6 and reply.iterations == 3  # 4 + 2 run, then the answer
    assert len(llm_server.requests) == 3
    assert metric("fsagent_tool_calls_capped_total", limit="chat") - capped == 2
    last = llm_server.requests[-1]
    assert "tools" not in last  # no more tools offered
    assert "FSAGENT_MAX_TOOL_CALLS_PER_CHAT" in last["messages"][-1]["content"]
    refused = [m for m in last["messages"] if m["role"] == "tool" and m["content"].startswith(LIMIT_MARK)]
    assert len(refused) == 2 and "FSAGENT_MAX_TOOL_CALLS_PER_CHAT" in refused[0]["content"]
    assert [w.code for w in reply.warnings] == ["tool_calls_capped"]


async def test_a_normal_question_meets_no_cap(llm_server: ScriptedOpenAI) -> None:
    from tests.fakes.openai_server import three_step_script

    llm_server.script = three_step_script
    async with running_agent(openai_settings(llm_server)) as harness:
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="What are the password rules?"))
    assert reply.status == "completed" and not reply.warnings
