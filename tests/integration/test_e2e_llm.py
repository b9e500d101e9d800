"""The real `openai` client in the agent driving a scripted OpenAI-compatible server, both routes."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from tests.fakes.openai_server import ScriptedOpenAI
from tests.integration.conftest import start_stack
from tests.integration.test_e2e_offline import parse_sse


@pytest.fixture(scope="module", params=["openai", "azure"])
def llm_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ScriptedOpenAI, str]]:
    server = ScriptedOpenAI().start()
    if request.param == "openai":
        env = {"FSAGENT_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test",
               "FSAGENT_LLM_MODEL": "scripted-model"}
    else:
        env = {"FSAGENT_LLM_PROVIDER": "azure", "AZURE_OPENAI_ENDPOINT": server.azure_endpoint,
               "AZURE_OPENAI_API_KEY": "azure-test-key", "AZURE_OPENAI_DEPLOYMENT": "fsagent-deploy",
               "OPENAI_API_VERSION": "2024-10-21"}
    stack = start_stack(tmp_path_factory.mktemp(request.param), env)
    yield request.param, server, stack.base_url
    stack.stop()
    server.stop()


def test_three_iterations_with_parallel_reads(llm_stack: tuple[str, ScriptedOpenAI, str]) -> None:
    route, server, base = llm_stack
    before = len(server.requests)
    reply = httpx.post(f"{base}/api/chat", json={"message": "What are the password rules?"}, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["iterations"] == 3
    assert [c["name"] for c in body["tool_calls"]] == ["grep", "cat", "head"]
    assert all(r["result"]["success"] for r in body["tool_results"]), body["tool_results"]
    assert [r["tool_call_id"] for r in body["tool_results"]] == [c["id"] for c in body["tool_calls"]]
    assert body["response"].startswith("Scripted answer after 2 tool turns")
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0

    requests = server.requests[before:]
    assert len(requests) == 3
    assert {t["function"]["name"] for t in requests[0]["tools"]} >= {"grep", "find", "cat", "head", "tail", "ls", "tree", "wc", "preview"}
    # The two reads of turn 2 come back to the model as two tool messages, in request order.
    third = requests[2]["messages"]
    tool_msgs = [m for m in third if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs[-2:]] == [body["tool_calls"][1]["id"], body["tool_calls"][2]["id"]]
    assert "password" in tool_msgs[0]["content"].lower()
    paths = server.paths[before:]
    headers = server.headers[before:]
    if route == "azure":
        assert all(p.startswith("/openai/deployments/fsagent-deploy/chat/completions?api-version=2024-10-21") for p in paths)
        assert headers[0]["api-key"] == "azure-test-key"
    else:
        assert all(p == "/v1/chat/completions" for p in paths)
        assert headers[0]["authorization"] == "Bearer sk-test"
        assert requests[0]["model"] == "scripted-model"


def test_streaming_route(llm_stack: tuple[str, ScriptedOpenAI, str]) -> None:
    _, server, base = llm_stack
    with httpx.stream("POST", f"{base}/api/chat/stream", json={"message": "password rules?"}, timeout=30) as reply:
        assert reply.status_code == 200
        events = parse_sse("".join(reply.iter_text()))
    names = [n for n, _ in events]
    assert names[-1] == "done"
    assert names.count("tool_call") == 3 and names.count("tool_result") == 3
    assert server.requests[-1].get("stream") is True
    tokens = "".join(d["text"] for n, d in events if n == "token")
    assert tokens == events[-1][1]["response"]


def test_model_endpoint_down_is_a_clean_503(llm_stack: tuple[str, ScriptedOpenAI, str]) -> None:
    _, server, base = llm_stack
    server.fail_with = 503
    try:
        reply = httpx.post(f"{base}/api/chat", json={"message": "anything"}, timeout=60)
    finally:
        server.fail_with = None
    assert reply.status_code in (502, 503), reply.text
    assert set(reply.json()) == {"error"} and "Traceback" not in reply.text
    assert "sk-test" not in reply.text and "azure-test-key" not in reply.text
