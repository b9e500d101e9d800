"""The agent end to end in-process: the real Agent servicer over gRPC, the real sandbox on the sample
documents, an in-memory session cache, and either the offline model or the real `openai` client
talking to a scripted OpenAI-compatible server (non-streaming and SSE)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, AsyncIterator

import grpc
import pytest

from fsagent.common import grpcutil
from fsagent.v1 import agent_pb2, sandbox_pb2_grpc
from tests.agent.harness import Harness, dead_address, make_settings, metric, running_agent
from tests.fakes.openai_server import ScriptedOpenAI, turns_since_user


@pytest.fixture
async def offline() -> AsyncIterator[Harness]:
    async with running_agent(make_settings()) as harness:
        yield harness


@pytest.fixture
def llm_server() -> Any:
    server = ScriptedOpenAI().start()
    yield server
    server.stop()


def openai_settings(server: ScriptedOpenAI, **overrides: Any) -> Any:
    return make_settings(
        llm_provider="openai", openai_base_url=server.base_url, openai_api_key="sk-test-secret-key",
        llm_model="scripted-model", **overrides,
    )


async def stream_events(harness: Harness, message: str, session_id: str = "") -> list[agent_pb2.ChatEvent]:
    call = harness.stub.ChatStream(agent_pb2.ChatRequest(message=message, session_id=session_id))
    return [event async for event in call]


def kinds(events: list[agent_pb2.ChatEvent]) -> list[str]:
    return [event.WhichOneof("event") for event in events]


# --- the offline model through the whole service -------------------------------------------------


async def test_offline_chat_answers_with_citations(offline: Harness) -> None:
    completed = metric("fsagent_agent_completions_total", status="completed")
    reply = await offline.stub.Chat(agent_pb2.ChatRequest(message="What are the password rules?"))
    assert "- Passwords must be at least 14 characters long. (policies/password-policy.md:9)" in reply.response
    assert [c.name for c in reply.tool_calls] == ["grep", "cat", "cat"]
    assert [r.tool_call_id for r in reply.tool_results] == [c.id for c in reply.tool_calls]
    assert all(r.result.success and r.result.stdout for r in reply.tool_results), reply.tool_results
    assert "policies/password-policy.md:9:- Passwords must be at least 14" in reply.tool_results[0].result.stdout
    assert reply.iterations == 3 and reply.status == "completed"
    assert reply.model == "fsagent-offline"
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert re.fullmatch(r"[0-9a-f]{32}", reply.session_id)
    assert re.fullmatch(r"[0-9a-f]{32}", reply.trace_id)
    assert metric("fsagent_agent_completions_total", status="completed") == completed + 1


async def test_trace_id_comes_from_the_callers_traceparent(offline: Harness) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    reply = await offline.stub.Chat(
        agent_pb2.ChatRequest(message="What is the VPN host name?"),
        metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),),
    )
    assert reply.trace_id == trace_id
    assert "(faq/it-faq.md:11)" in reply.response


async def test_offline_stream_event_order(offline: Harness) -> None:
    events = await stream_events(offline, "What is the meal expense limit?")
    names = kinds(events)
    assert names[0] == "status" and names[-1] == "done"
    # status, the grep, its result, status, two reads, their results, status, tokens..., done
    assert names[:3] == ["status", "tool_call", "tool_result"]
    assert names[3:8] == ["status", "tool_call", "tool_call", "tool_result", "tool_result"]
    assert names[8] == "status" and set(names[9:-1]) == {"token"}
    assert [e.status.iteration for e in events if e.HasField("status")] == [1, 2, 3]
    session_ids = {e.session_id for e in events}
    assert len(session_ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", session_ids.pop())
    done = events[-1].done
    assert "".join(e.token.text for e in events if e.HasField("token")) == done.response
    assert "(policies/expense-policy.md:42)" in done.response


async def test_sessions_persist_across_turns(offline: Harness) -> None:
    first = await offline.stub.Chat(agent_pb2.ChatRequest(message="How many vacation days do employees get?"))
    second = await offline.stub.Chat(
        agent_pb2.ChatRequest(message="What is the meal expense limit?", session_id=first.session_id)
    )
    assert second.session_id == first.session_id
    assert "(policies/expense-policy.md:42)" in second.response  # the latest question is answered
    session = await offline.stub.GetSession(agent_pb2.AgentSessionRequest(session_id=first.session_id))
    assert session.exists
    assert [m.role for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[0].content == "How many vacation days do employees get?"
    assert session.messages[1].content == first.response
    stored = json.loads(session.messages[1].json)
    assert stored["fsagent"]["status"] == "completed"
    assert [c["name"] for c in stored["fsagent"]["tool_calls"]] == ["grep", "cat", "cat"]
    append = offline.cache.appends[-1]
    assert append.max_messages == offline.settings.session_max_messages
    assert append.ttl_seconds == offline.settings.session_ttl
    cleared = await offline.stub.ClearSession(agent_pb2.AgentSessionRequest(session_id=first.session_id))
    assert cleared.deleted
    gone = await offline.stub.GetSession(agent_pb2.AgentSessionRequest(session_id=first.session_id))
    assert not gone.exists and not gone.messages


async def test_the_model_sees_the_session_history(llm_server: ScriptedOpenAI) -> None:
    llm_server.script = lambda messages: {"content": f"seen {sum(m['role'] == 'user' for m in messages)} user messages"}
    async with running_agent(openai_settings(llm_server)) as harness:
        first = await harness.stub.Chat(agent_pb2.ChatRequest(message="first question"))
        second = await harness.stub.Chat(agent_pb2.ChatRequest(message="second question", session_id=first.session_id))
    assert second.response == "seen 2 user messages"
    sent = llm_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "first question" and sent[2] == {"role": "assistant", "content": "seen 1 user messages"}
    assert "untrusted" in sent[0]["content"] and "path:line" in sent[0]["content"]


async def test_invalid_input_is_rejected(offline: Harness) -> None:
    long = "x" * (offline.settings.max_message_chars + 1)
    for request in (
        agent_pb2.ChatRequest(message="   "),
        agent_pb2.ChatRequest(message=long),
        agent_pb2.ChatRequest(message="hi", session_id="../../etc/passwd"),
        agent_pb2.ChatRequest(message="hi", session_id="x" * 129),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await offline.stub.Chat(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream_events(offline, request.message, request.session_id)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for call in (offline.stub.GetSession, offline.stub.ClearSession):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(agent_pb2.AgentSessionRequest(session_id=""))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_client_chosen_session_id_is_kept(offline: Harness) -> None:
    reply = await offline.stub.Chat(agent_pb2.ChatRequest(message="When is payday?", session_id="user-42:chat.1"))
    assert reply.session_id == "user-42:chat.1"
    assert "user-42:chat.1" in offline.cache.sessions


async def test_chat_answers_when_the_cache_is_down_and_says_the_turn_was_not_saved() -> None:
    errors = metric("fsagent_session_errors_total", operation="save")
    async with running_agent(make_settings(), cache_address=dead_address()) as harness:
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="What is the VPN host name?"))
        assert "vpn.northwind.example.com" in reply.response and reply.status == "completed"
        assert [(w.code, w.component) for w in reply.warnings] == [("history_not_saved", "cache")]
        assert "not saved" in reply.warnings[0].message
        events = await stream_events(harness, "What is the VPN host name?")
        assert kinds(events)[-1] == "done"
        assert [w.code for w in events[-1].done.warnings] == ["history_not_saved"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await harness.stub.GetSession(agent_pb2.AgentSessionRequest(session_id=reply.session_id))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("fsagent-error-code", "session_store_unavailable") in tuple(info.value.trailing_metadata())
    assert metric("fsagent_session_errors_total", operation="save") == errors + 2


async def test_a_session_whose_history_cannot_be_read_is_refused_not_answered_blind() -> None:
    loads = metric("fsagent_session_errors_total", operation="load")
    async with running_agent(make_settings(), cache_address=dead_address()) as harness:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await harness.stub.Chat(agent_pb2.ChatRequest(message="And the VPN?", session_id="known-session"))
        events = await stream_events(harness, "And the VPN?", "known-session")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("fsagent-error-code", "history_unavailable") in tuple(info.value.trailing_metadata())
    assert "history" in info.value.details() and "without session_id" in info.value.details()
    # Refused before any model call: the first and only event is the error.
    assert kinds(events) == ["error"] and events[0].error.code == "history_unavailable"
    assert events[0].session_id == "known-session"
    assert metric("fsagent_session_errors_total", operation="load") == loads + 2


async def test_a_new_session_does_not_read_the_store() -> None:
    async with running_agent(make_settings()) as harness:
        harness.cache.failing.add("GetSession")
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="When is payday?"))
    assert reply.status == "completed" and not reply.warnings
    assert reply.session_id in harness.cache.sessions


async def test_a_save_the_store_refuses_is_a_warning_and_nothing_else() -> None:
    async with running_agent(make_settings()) as harness:
        first = await harness.stub.Chat(agent_pb2.ChatRequest(message="When is payday?"))
        harness.cache.failing.add("AppendSession")  # a full or read-only store still answers reads
        second = await harness.stub.Chat(agent_pb2.ChatRequest(message="And the VPN host?", session_id=first.session_id))
    assert second.response and [w.code for w in second.warnings] == ["history_not_saved"]
    assert len(harness.cache.sessions[first.session_id]) == 2  # only the first turn


async def test_sandbox_down_is_an_error_not_an_answer_built_on_it() -> None:
    async with running_agent(make_settings(), sandbox_address=dead_address()) as harness:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await harness.stub.Chat(agent_pb2.ChatRequest(message="What is the VPN host name?"))
        events = await stream_events(harness, "What is the VPN host name?")
        saved = dict(harness.cache.sessions)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("fsagent-error-code", "sandbox_unavailable") in tuple(info.value.trailing_metadata())
    assert "sandbox is unavailable" in info.value.details()
    # The stream shows the failed call, then ends with the error: no second model call, no answer.
    assert kinds(events) == ["status", "tool_call", "tool_result", "error"]
    (result,) = [e.tool_result for e in events if e.HasField("tool_result")]
    assert not result.result.success and result.result.error_code == "sandbox_unavailable"
    assert events[-1].error.code == "sandbox_unavailable"
    assert saved == {}  # nothing saved for a failed turn


class _HalfSandbox(sandbox_pb2_grpc.SandboxServicer):
    """Answers `cat`, refuses to be reached for anything else (UNAVAILABLE)."""

    async def Execute(self, request: Any, context: Any) -> Any:
        from fsagent.v1 import sandbox_pb2

        if request.tool != "cat":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection refused")
        return sandbox_pb2.ExecuteResponse(stdout="1: the VPN host is vpn.example\n", command="cat")


async def test_some_tool_calls_unreachable_is_an_answer_with_a_warning(llm_server: ScriptedOpenAI) -> None:
    def script(messages: list[dict[str, Any]]) -> dict[str, Any]:
        if turns_since_user(messages) == 0:
            return {"tool_calls": [{"name": "cat", "arguments": {"path": "a.md"}},
                                   {"name": "grep", "arguments": {"pattern": "vpn"}}]}
        return {"content": "The VPN host is vpn.example (a.md:1)."}

    llm_server.script = script
    server = grpcutil.server()
    sandbox_pb2_grpc.add_SandboxServicer_to_server(_HalfSandbox(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with running_agent(openai_settings(llm_server), sandbox_address=f"127.0.0.1:{port}") as harness:
            reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="vpn?"))
    finally:
        await server.stop(None)
    assert reply.response.startswith("The VPN host is vpn.example")
    [warning] = reply.warnings
    assert (warning.code, warning.component) == ("tools_partially_unavailable", "sandbox")
    assert warning.message.startswith("1 of 2 tool calls could not run")


async def test_check_dependencies_reports_the_cache_and_the_sandbox() -> None:
    async with running_agent(make_settings()) as harness:
        reply = await harness.stub.CheckDependencies(agent_pb2.CheckDependenciesRequest())
        assert {d.name: d.state for d in reply.dependencies} == {"cache": "serving", "sandbox": "serving"}
    async with running_agent(make_settings(), cache_address=dead_address()) as harness:
        reply = await harness.stub.CheckDependencies(agent_pb2.CheckDependenciesRequest(), timeout=2)
        assert {d.name: d.state for d in reply.dependencies} == {"cache": "unavailable", "sandbox": "serving"}


# --- the real openai client against a scripted OpenAI-compatible server ----------------------------


async def test_three_iterations_with_two_parallel_reads(llm_server: ScriptedOpenAI) -> None:
    parallel = metric("fsagent_tool_batches_total", mode="parallel")
    sequential = metric("fsagent_tool_batches_total", mode="sequential")
    tokens = metric("fsagent_llm_tokens_total", provider="openai", model="scripted-model", type="input")
    async with running_agent(openai_settings(llm_server)) as harness:
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="What are the password rules?"))
    assert reply.iterations == 3 and reply.status == "completed"
    assert [c.name for c in reply.tool_calls] == ["grep", "cat", "head"]
    assert all(r.result.success for r in reply.tool_results), reply.tool_results
    assert reply.response.startswith("Scripted answer after 2 tool turns")
    assert reply.model == "scripted-model"
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert metric("fsagent_tool_batches_total", mode="parallel") == parallel + 1
    assert metric("fsagent_tool_batches_total", mode="sequential") == sequential + 1
    assert metric("fsagent_llm_tokens_total", provider="openai", model="scripted-model", type="input") > tokens

    first, _, third = llm_server.requests
    assert first["model"] == "scripted-model" and not first.get("stream")
    assert {t["function"]["name"] for t in first["tools"]} == {
        "grep", "find", "cat", "head", "tail", "ls", "tree", "wc", "preview",
    }
    assert llm_server.headers[0]["authorization"] == "Bearer sk-test-secret-key"
    # The two reads come back as two tool messages, in request order, after the assistant turn.
    assistant = [m for m in third["messages"] if m["role"] == "assistant"][-1]
    tool_messages = third["messages"][-2:]
    assert [m["tool_call_id"] for m in tool_messages] == [c["id"] for c in assistant["tool_calls"]]
    assert [m["tool_call_id"] for m in tool_messages] == [c.id for c in reply.tool_calls[1:]]
    assert tool_messages[0]["content"] == reply.tool_results[1].result.stdout
    assert "password" in third["messages"][3]["content"].lower()  # the grep result


async def test_stream_with_the_openai_client(llm_server: ScriptedOpenAI) -> None:
    async with running_agent(openai_settings(llm_server)) as harness:
        events = await stream_events(harness, "What are the password rules?")
    names = kinds(events)
    assert names == [
        "status", "tool_call", "tool_result",
        "status", "tool_call", "tool_call", "tool_result", "tool_result",
        "status", *["token"] * names.count("token"), "done",
    ]
    assert names.count("token") > 3
    assert all(r.get("stream") is True and r["stream_options"] == {"include_usage": True} for r in llm_server.requests)
    done = events[-1].done
    assert "".join(e.token.text for e in events if e.HasField("token")) == done.response
    # Tool calls assembled from split argument deltas are valid JSON with the streamed ids.
    assert json.loads(done.tool_calls[1].arguments_json)["end_line"] == 12
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.iterations == 3


async def test_max_iterations_is_respected(llm_server: ScriptedOpenAI) -> None:
    llm_server.script = lambda messages: {
        "tool_calls": [{"name": "grep", "arguments": {"pattern": f"step{turns_since_user(messages)}"}}]
    }
    stopped = metric("fsagent_agent_completions_total", status="max_iterations")
    async with running_agent(openai_settings(llm_server, max_iterations=2)) as harness:
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="loop forever"))
        events = await stream_events(harness, "loop forever")
    assert reply.status == "max_iterations" and reply.iterations == 2
    assert "I stopped after 2 model calls" in reply.response
    assert len(llm_server.requests) == 4  # two model calls per chat, no third
    assert [c.name for c in reply.tool_calls] == ["grep"]  # the last turn's calls are not run
    assert events[-1].done.status == "max_iterations"
    assert metric("fsagent_agent_completions_total", status="max_iterations") == stopped + 2


async def test_invalid_tool_arguments_become_a_tool_error_the_model_sees(llm_server: ScriptedOpenAI) -> None:
    def script(messages: list[dict[str, Any]]) -> dict[str, Any]:
        if turns_since_user(messages) == 0:
            return {"tool_calls": [
                {"name": "grep", "arguments": "{not json"},
                {"name": "cat", "arguments": {"path": "faq/it-faq.md", "bogus": 1}},
                {"name": "rm", "arguments": {"path": "."}},
            ]}
        errors = [m["content"].splitlines()[0] for m in messages if m["role"] == "tool"]
        return {"content": "I saw: " + " | ".join(errors)}

    llm_server.script = script
    unknown = metric("fsagent_tool_executions_total", tool="unknown", status="error")
    async with running_agent(openai_settings(llm_server)) as harness:
        reply = await harness.stub.Chat(agent_pb2.ChatRequest(message="break the tools"))
    assert reply.status == "completed" and reply.iterations == 2
    assert [r.result.success for r in reply.tool_results] == [False, False, False]
    assert {r.result.error_code for r in reply.tool_results} == {"invalid_arguments"}
    assert reply.response.count("ERROR [invalid_arguments]") == 3
    assert "not valid JSON" in reply.response and "bogus" in reply.response and "unknown tool" in reply.response
    # A made-up tool name never becomes a metric label.
    assert metric("fsagent_tool_executions_total", tool="unknown", status="error") == unknown + 1
    assert metric("fsagent_tool_executions_total", tool="rm", status="error") == 0


@pytest.mark.parametrize(
    ("failure", "code", "typed", "text"),
    [
        (503, grpc.StatusCode.UNAVAILABLE, "llm_upstream", "the LLM endpoint failed (HTTP 503)"),
        (429, grpc.StatusCode.UNAVAILABLE, "llm_rate_limited", "rate limiting"),
        (401, grpc.StatusCode.FAILED_PRECONDITION, "llm_auth", "rejected the credentials (HTTP 401): set a valid OPENAI_API_KEY"),
        (400, grpc.StatusCode.FAILED_PRECONDITION, "llm_bad_request", "rejected the request (HTTP 400): scripted failure"),
    ],
)
async def test_llm_http_errors_map_to_grpc_status(
    llm_server: ScriptedOpenAI, failure: int, code: grpc.StatusCode, typed: str, text: str
) -> None:
    llm_server.fail_with = failure
    async with running_agent(openai_settings(llm_server)) as harness:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await harness.stub.Chat(agent_pb2.ChatRequest(message="anything"))
        events = await stream_events(harness, "anything")
    assert info.value.code() == code
    assert text in info.value.details()
    assert ("fsagent-error-code", typed) in tuple(info.value.trailing_metadata())
    assert "sk-test" not in info.value.details() and "Traceback" not in info.value.details()
    assert kinds(events) == ["status", "error"]
    assert events[-1].error.code == typed and text in events[-1].error.message
    assert len({e.session_id for e in events}) == 1


async def test_llm_endpoint_down_is_unavailable_without_a_traceback() -> None:
    errors = metric("fsagent_agent_completions_total", status="error")
    settings = make_settings(
        llm_provider="openai", openai_base_url=f"http://{dead_address()}/v1", openai_api_key=None,
    )
    async with running_agent(settings) as harness:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await harness.stub.Chat(agent_pb2.ChatRequest(message="What is the VPN host name?"))
        events = await stream_events(harness, "What is the VPN host name?")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "the LLM endpoint is unreachable: check OPENAI_BASE_URL and the network"
    assert events[-1].error.code == "llm_connection"
    assert metric("fsagent_agent_completions_total", status="error") == errors + 2
    assert metric("fsagent_llm_calls_total", provider="openai", model="gpt-4o-mini", status="connection") >= 2


async def test_chat_timeout_is_a_typed_llm_timeout(llm_server: ScriptedOpenAI) -> None:
    llm_server.delay = 2.0
    async with running_agent(openai_settings(llm_server, chat_timeout=0.3)) as harness:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await harness.stub.Chat(agent_pb2.ChatRequest(message="slow"))
        events = await stream_events(harness, "slow")
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ("fsagent-error-code", "llm_timeout") in tuple(info.value.trailing_metadata())
    assert "FSAGENT_CHAT_TIMEOUT" in info.value.details()
    assert kinds(events) == ["status", "error"] and events[-1].error.code == "llm_timeout"


async def test_client_disconnect_cancels_the_turn(llm_server: ScriptedOpenAI) -> None:
    llm_server.delay = 2.0
    cancelled = metric("fsagent_agent_completions_total", status="cancelled")
    in_progress = metric("fsagent_agent_chats_in_progress")
    async with running_agent(openai_settings(llm_server)) as harness:
        call = harness.stub.ChatStream(agent_pb2.ChatRequest(message="slow question"))
        first = await call.read()
        assert first.WhichOneof("event") == "status"
        call.cancel()
        for _ in range(50):
            if metric("fsagent_agent_completions_total", status="cancelled") > cancelled:
                break
            await asyncio.sleep(0.05)
    assert metric("fsagent_agent_completions_total", status="cancelled") == cancelled + 1
    assert metric("fsagent_agent_chats_in_progress") == in_progress
