"""Independent staleness check through the public API, over the full stack of real processes.

The same question is asked twice with nothing changed (the second answer comes from the cache),
then the files are changed directly on disk, behind the system's back (never through the API, so
no invalidation is sent), and the same question is asked again: the answer must reflect the
change. The scripted model calls one tool and answers with exactly what the tool returned.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from fsagent.cli.localstack import LocalStack
from tests.fakes.openai_server import ScriptedOpenAI, turns_since_user
from tests.integration.conftest import start_stack


class OneTool:
    """The model: call `self.call` first, then answer with the tool's output verbatim."""

    def __init__(self) -> None:
        self.call: tuple[str, dict[str, Any]] = ("ls", {"path": "."})

    def __call__(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        if turns_since_user(messages) == 0:
            return {"tool_calls": [{"name": self.call[0], "arguments": self.call[1]}]}
        tool_output = next(m["content"] for m in reversed(messages) if m.get("role") == "tool")
        return {"content": "TOOL SAID:\n" + tool_output}


@dataclass
class Api:
    stack: LocalStack
    model: OneTool
    data: Path
    client: httpx.Client

    def ask(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        self.model.call = (tool, args)
        reply = self.client.post("/api/chat", json={"message": f"run {tool}"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert [c["name"] for c in body["tool_calls"]] == [tool]
        return body


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    model = OneTool()
    llm = ScriptedOpenAI(script=model).start()
    tmp = tmp_path_factory.mktemp("public-api")
    stack = start_stack(tmp, {"FSAGENT_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": llm.base_url,
                              "OPENAI_API_KEY": "sk-test", "FSAGENT_LOG_LEVEL": "WARNING"})
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            yield Api(stack, model, tmp / "data", client)
    finally:
        stack.stop()
        llm.stop()


def same_size_rewrite(path: Path, old: str, new: str) -> None:
    assert len(old) == len(new)
    st = path.stat()
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime put back as well


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


CASES: list[tuple[str, dict[str, Any], Callable[[Path], None], str]] = [
    ("cat", {"path": "policies/password-policy.md"},
     lambda d: same_size_rewrite(d / "policies/password-policy.md", "14 characters", "19 characters"),
     "19 characters"),
    ("grep", {"pattern": "zebra-code", "path": "."},
     lambda d: write(d / "brand-new-dir" / "note.md", "the zebra-code is 42\n"),
     "brand-new-dir/note.md:1:the zebra-code is 42"),
    ("grep", {"pattern": "characters long", "path": "policies"},
     lambda d: same_size_rewrite(d / "policies/password-policy.md", "characters long", "characters LONG"),
     "TOOL SAID:\n(no output)"),
    ("find", {"path": ".", "name": "*.secret"},
     lambda d: write(d / "handbook" / "vault.secret", "s\n"),
     "handbook/vault.secret"),
    ("ls", {"path": "faq"},
     lambda d: (d / "faq" / "subfolder").mkdir(),
     "subfolder/"),
    ("tree", {"path": "projects"},
     lambda d: os.rename(d / "projects" / "beacon", d / "projects" / "lighthouse"),
     "lighthouse/"),
    ("wc", {"paths": ["faq/it-faq.md"]},
     lambda d: append(d / "faq" / "it-faq.md", "one more line\n"),
     ""),
]


@pytest.mark.parametrize("tool,args,change,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_change_behind_the_systems_back_is_never_answered_from_the_old_cache(
    api: Api, tool: str, args: dict[str, Any], change: Callable[[Path], None], expected: str
) -> None:
    first = api.ask(tool, args)
    assert first["tool_results"][0]["result"]["success"], first["tool_results"]
    second = api.ask(tool, args)
    assert second["tool_results"][0]["result"]["cached"], "the unchanged question should come from the cache"
    assert second["response"] == first["response"]

    change(api.data)
    third = api.ask(tool, args)
    result = third["tool_results"][0]["result"]
    assert not result["cached"], "served from the cache after the files changed"
    assert third["response"] != first["response"]
    if expected:
        assert expected in third["response"], third["response"]
    if tool == "wc":
        lines_before = int(first["response"].split()[2])
        assert int(third["response"].split()[2]) == lines_before + 1, third["response"]
    # And that new answer is itself cached and still right.
    fourth = api.ask(tool, args)
    assert fourth["response"] == third["response"]


def test_a_deleted_file_is_not_found_afterwards(api: Api) -> None:
    shutil.copy(api.data / "README.md", api.data / "doomed.md")
    api.ask("cat", {"path": "doomed.md"})
    assert api.ask("cat", {"path": "doomed.md"})["tool_results"][0]["result"]["cached"]
    (api.data / "doomed.md").unlink()
    gone = api.ask("cat", {"path": "doomed.md"})
    result = gone["tool_results"][0]["result"]
    assert not result.get("cached") and not result.get("success"), result
    assert "no such file" in gone["response"], gone["response"]
