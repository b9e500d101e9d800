"""The offline model alone on the sample documents: its three turns, and answers that quote the
right lines with correct `path:line` citations."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fsagent.agent.llm.base import TOOL_ERROR_PREFIX, AssistantTurn, StreamDelta
from fsagent.agent.llm.offline import MODEL_NAME, OfflineProvider, extract_terms, grep_pattern
from tests.agent.harness import DATA

BULLET = re.compile(r"^- (?P<text>.+) \((?P<path>[^()\s]+):(?P<line>\d+)\)$", re.MULTILINE)


def run_tool(name: str, args: dict[str, Any], root: Path = DATA) -> str:
    """The two tools the offline model uses, with the sandbox's output formats (ripgrep-like)."""
    if name == "grep":
        rx = re.compile(args["pattern"], re.IGNORECASE if args.get("ignore_case") else 0)
        out = []
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            hits = 0
            for number, line in enumerate(file.read_text().splitlines(), start=1):
                if rx.search(line):
                    out.append(f"{file.relative_to(root).as_posix()}:{number}:{line}")
                    hits += 1
                    if hits == args.get("max_count"):
                        break
        return "\n".join(out) + ("\n" if out else "")
    if name == "cat":
        lines = (root / args["path"]).read_text().splitlines()
        return "\n".join(lines[args["start_line"] - 1 : args["end_line"]]) + "\n"
    raise AssertionError(f"the offline model called {name}")


async def converse(question: str, *, fail: set[str] = frozenset()) -> tuple[list[AssistantTurn], str]:
    model = OfflineProvider()
    messages: list[dict[str, Any]] = [{"role": "system", "content": "system"}, {"role": "user", "content": question}]
    turns: list[AssistantTurn] = []
    for _ in range(5):
        turn = await model.complete(messages, [])
        turns.append(turn)
        if not turn.tool_calls:
            return turns, turn.content
        messages.append(turn.to_message())
        for call in turn.tool_calls:
            if call.name in fail:
                content = f"{TOOL_ERROR_PREFIX} [timeout]: {call.name} timed out after 10s and was stopped"
            else:
                content = run_tool(call.name, json.loads(call.arguments_json))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
    raise AssertionError("the offline model did not answer within 5 turns")


def citations(answer: str) -> list[tuple[str, str, int]]:
    return [(m["text"], m["path"], int(m["line"])) for m in BULLET.finditer(answer)]


def assert_citations_are_exact(answer: str) -> None:
    """Every bullet quotes the line it cites (list markers aside)."""
    found = citations(answer)
    assert found, answer
    for text, path, number in found:
        line = (DATA / path).read_text().splitlines()[number - 1]
        assert text in " ".join(line.split()), (text, path, number, line)


def test_terms() -> None:
    assert extract_terms("What are the password rules?") == ["password", "rule"]
    assert extract_terms("How many vacation days do employees get?") == ["vacation", "day", "employee"]
    assert extract_terms("Who gets paged for a SEV1 on the VPN?") == ["paged", "sev1", "vpn"]
    assert extract_terms("What's the policy on policies?") == ["policy", "polic"]
    assert extract_terms("How are you?") == []
    # Regex metacharacters in identifiers are escaped, and terms match at a word start.
    assert grep_pattern(["vpn.northwind.example.com", "day"]) == r"\b(vpn\.northwind\.example\.com|day)"


async def test_turns_grep_then_two_parallel_reads_then_answer() -> None:
    turns, _ = await converse("What are the password rules?")
    assert len(turns) == 3
    (grep,) = turns[0].tool_calls
    assert grep.name == "grep"
    assert json.loads(grep.arguments_json) == {
        "pattern": r"\b(password|rule)", "path": ".", "ignore_case": True, "max_count": 20,
    }
    reads = turns[1].tool_calls
    assert [c.name for c in reads] == ["cat", "cat"]
    first = json.loads(reads[0].arguments_json)
    assert first["path"] == "policies/password-policy.md"
    assert first["start_line"] <= 9 and first["end_line"] >= 23
    assert first["end_line"] - first["start_line"] < 40
    assert len({c.id for turn in turns for c in turn.tool_calls}) == 3
    assert all(t.model == MODEL_NAME for t in turns)
    assert all(t.usage.input_tokens > 0 and t.usage.output_tokens > 0 for t in turns)
    assert turns[-1].finish_reason == "stop" and turns[0].finish_reason == "tool_calls"


async def test_password_rules_are_quoted_with_citations() -> None:
    _, answer = await converse("What are the password rules?")
    assert_citations_are_exact(answer)
    cited = {(path, line) for _, path, line in citations(answer)}
    assert "- Passwords must be at least 14 characters long. (policies/password-policy.md:9)" in answer
    expected = {
        9: "at least 14 characters",  # minimum length
        15: "changed every 180 days",  # rotation
        18: "reuse any of your last 12",  # reuse
        19: "locked after 5 failed",  # lockout
        21: "Multi-factor authentication",  # MFA
        22: "password manager, NW Vault",  # password manager
    }
    for line, phrase in expected.items():
        assert ("policies/password-policy.md", line) in cited, (line, answer)
        assert phrase in answer
    assert answer.index("policies/password-policy.md:9") < answer.index("policies/password-policy.md:22")
    assert "offline model" in answer


@pytest.mark.parametrize(
    ("question", "bullet"),
    [
        ("What is the VPN host name?",
         "- The VPN host name is vpn.northwind.example.com. (faq/it-faq.md:11)"),
        ("How many vacation days do employees get?",
         "- Full-time employees receive 25 vacation days per year. (faq/hr-faq.md:9)"),
        ("What is the meal expense limit?",
         "- The meal expense limit is 60 EUR per day while travelling on business. (policies/expense-policy.md:42)"),
        ("When is payday?",
         "- Salaries are paid monthly on the 25th of each month. (faq/hr-faq.md:43)"),
        ("What is the minimum iOS version for Beacon?",
         "- The minimum supported iOS version is iOS 16. (projects/beacon/README.md:32)"),
    ],
)
async def test_factual_questions_lead_with_the_right_line(question: str, bullet: str) -> None:
    _, answer = await converse(question)
    assert_citations_are_exact(answer)
    first_bullet = next(line for line in answer.splitlines() if line.startswith("- "))
    assert first_bullet == bullet, answer
    assert answer.startswith("Here is what the documents say")
    assert len(citations(answer)) <= 4, answer  # a focused answer, not a dump


async def test_unrelated_question_says_nothing_was_found() -> None:
    turns, answer = await converse("What is the airspeed velocity of an unladen swallow?")
    assert len(turns) == 2  # the search, then the answer: nothing to read
    assert "found no matching lines" in answer
    assert "cannot answer this from the documents" in answer
    assert "`swallow`" in answer and "Try different words" in answer
    assert not citations(answer)


async def test_partial_match_is_labelled_as_such() -> None:
    _, answer = await converse("What is the weather in Paris tomorrow?")
    assert answer.startswith("I could not find a line that answers this directly")
    assert "(policies/expense-policy.md:36)" in answer


async def test_a_failed_search_is_reported() -> None:
    turns, answer = await converse("What are the password rules?", fail={"grep"})
    assert len(turns) == 2
    assert "The search failed" in answer and "timed out" in answer
    assert not citations(answer)


async def test_a_failed_read_is_reported_next_to_the_answer() -> None:
    _, answer = await converse("What is the VPN host name?", fail={"cat"})
    assert "vpn.northwind.example.com" in answer  # still answered from the grep lines
    assert "Some tool calls failed: cat faq/it-faq.md: [timeout]" in answer


async def test_question_without_search_terms() -> None:
    turns, answer = await converse("How are you?")
    assert len(turns) == 1 and not turns[0].tool_calls
    assert "no words I can search" in answer


async def test_stream_yields_the_answer_in_chunks_then_the_turn() -> None:
    model = OfflineProvider()
    messages = [{"role": "user", "content": "How are you?"}]
    items = [item async for item in model.stream(messages, [])]
    deltas, final = items[:-1], items[-1]
    assert isinstance(final, AssistantTurn)
    assert len(deltas) > 3 and all(isinstance(d, StreamDelta) for d in deltas)
    assert "".join(d.text for d in deltas) == final.content


async def test_follow_up_question_uses_the_latest_user_message() -> None:
    model = OfflineProvider()
    history = [
        {"role": "user", "content": "What are the password rules?"},
        {"role": "assistant", "content": "Passwords must be at least 14 characters long."},
        {"role": "user", "content": "What is the VPN host name?"},
    ]
    turn = await model.complete(history, [])
    assert json.loads(turn.tool_calls[0].arguments_json)["pattern"] == r"\b(vpn|host|name)"
