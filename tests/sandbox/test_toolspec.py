"""The shared tool specification: schema shape and argument validation."""

from __future__ import annotations

import json

import pytest

from fsagent.common import toolspec
from fsagent.common.toolspec import ToolArgumentError, openai_tools, parse_arguments

EXPECTED = {
    "grep": {"pattern", "path", "ignore_case", "fixed_strings", "word", "context", "glob", "files_with_matches", "max_count"},
    "find": {"path", "name", "iname", "type", "max_depth"},
    "cat": {"path", "start_line", "end_line"},
    "head": {"path", "lines"},
    "tail": {"path", "lines"},
    "ls": {"path", "all", "long"},
    "tree": {"path", "max_depth"},
    "wc": {"paths"},
    "preview": {"path", "lines"},
}


def test_openai_tools_shape() -> None:
    tools = openai_tools()
    assert [t["function"]["name"] for t in tools] == list(EXPECTED)
    for tool in tools:
        assert tool["type"] == "function"
        fn = tool["function"]
        assert fn["description"]
        params = fn["parameters"]
        assert params["type"] == "object"
        assert params["additionalProperties"] is False
        assert set(params["properties"]) == EXPECTED[fn["name"]]
        for name, prop in params["properties"].items():
            assert prop.get("description"), (fn["name"], name)
            assert "anyOf" not in prop and "title" not in prop
    json.dumps(tools)  # serialisable


def test_openai_tools_is_cached_but_returns_copies() -> None:
    a = openai_tools()
    a[0]["function"]["name"] = "mutated"
    assert openai_tools()[0]["function"]["name"] == "grep"


def test_required_and_bounds() -> None:
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in openai_tools()}
    assert by_name["grep"]["required"] == ["pattern"]
    assert by_name["cat"]["required"] == ["path"]
    assert by_name["wc"]["required"] == ["paths"]
    assert by_name["ls"]["required"] == []
    grep = by_name["grep"]["properties"]
    assert grep["context"]["maximum"] == 10 and grep["pattern"]["maxLength"] == 1000
    assert by_name["find"]["properties"]["type"]["enum"] == ["f", "d"]
    assert by_name["head"]["properties"]["lines"]["maximum"] == 5000
    assert by_name["preview"]["properties"]["lines"]["maximum"] == 200
    assert by_name["wc"]["properties"]["paths"]["maxItems"] == 50
    assert by_name["tree"]["properties"]["max_depth"]["default"] == 3


def test_defaults() -> None:
    args = parse_arguments("grep", '{"pattern": "x"}')
    assert args.path == "." and args.context == 0 and args.max_count is None
    assert parse_arguments("ls", "").path == "."
    assert parse_arguments("head", {"path": "a"}).lines == 10
    assert parse_arguments("preview", '{"path": "a"}').lines == 20


@pytest.mark.parametrize(
    ("tool", "arguments", "needle"),
    [
        ("nope", "{}", "unknown tool"),
        ("grep", "{", "not valid JSON"),
        ("grep", "[1, 2]", "must be a JSON object"),
        ("grep", '{"pattern": "x", "pre": "sh"}', "pre: unknown parameter"),
        ("grep", "{}", "pattern: Field required"),
        ("grep", '{"pattern": ""}', "pattern"),
        ("grep", '{"pattern": "x", "context": 11}', "context"),
        ("grep", '{"pattern": "x", "max_count": 0}', "max_count"),
        ("cat", '{"path": "a", "start_line": 5, "end_line": 2}', "end_line must be >= start_line"),
        ("cat", '{"path": "a", "start_line": 0}', "start_line"),
        ("find", '{"type": "l"}', "type"),
        ("find", '{"name": "a", "iname": "b"}', "not both"),
        ("find", '{"name": "../x"}', "must not contain '/'"),
        ("find", '{"max_depth": 51}', "max_depth"),
        ("head", '{"path": "a", "lines": 5001}', "lines"),
        ("wc", '{"paths": []}', "paths"),
        ("wc", json.dumps({"paths": ["a"] * 51}), "paths"),
        ("cat", json.dumps({"path": "a\u0000b"}), "NUL"),
        ("tree", '{"max_depth": 21}', "max_depth"),
    ],
)
def test_refusals_are_short_and_actionable(tool: str, arguments: str, needle: str) -> None:
    with pytest.raises(ToolArgumentError) as info:
        parse_arguments(tool, arguments)
    assert needle in info.value.message
    assert len(info.value.message) <= 600


def test_no_long_input_echo() -> None:
    hostile = "A" * 5000
    for tool, arguments in [
        ("grep", json.dumps({"pattern": hostile})),
        ("grep", json.dumps({"pattern": "x", hostile: 1})),
        (hostile, "{}"),
        ("cat", json.dumps({"path": 123, "start_line": hostile})),
    ]:
        with pytest.raises(ToolArgumentError) as info:
            parse_arguments(tool, arguments)
        assert "A" * 201 not in info.value.message


def test_registry() -> None:
    assert set(toolspec.TOOLS) == set(EXPECTED)
    assert toolspec.TOOLS["cat"].namespace == "content"
    assert toolspec.TOOLS["grep"].namespace == "search"
    assert toolspec.TOOLS["wc"].namespace == "content"
