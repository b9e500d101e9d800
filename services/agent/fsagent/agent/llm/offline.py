"""The built-in offline model (`fsagent-offline`): a deterministic planner that needs no network.

It behaves like a model behind the same interface, driven only by the conversation so far:

1. the last message is the user's question: extract key terms and grep the data root for them;
2. the grep result is back: rank files by the terms they match and `cat` the densest window of
   the best two files (two calls in one turn, so they run in parallel);
3. the file contents are back: score the lines by term coverage (a line also inherits the terms of
   its section heading or FAQ question) and answer with the best lines quoted as `path:line`.

Terms are weighted by rarity among the matching lines, so a rare word ("meal") counts more than a
common one ("expense"). Token usage is estimated (characters / 4) so dashboards have numbers.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

from fsagent.agent.llm.base import (
    TOOL_ERROR_PREFIX,
    AssistantTurn,
    LLMProvider,
    Message,
    StreamDelta,
    Tool,
    ToolCallRequest,
    Usage,
)
from fsagent.common import names

MODEL_NAME = "fsagent-offline"
GREP_MAX_COUNT = 20
MAX_TERMS = 8
FILES_TO_READ = 2
WINDOW_LINES = 40
WINDOW_PAD = 2
MAX_STRONG = 20
MAX_SUPPORT_PER_FILE = 2
MAX_BULLETS = 24
STRONG_SHARE = 0.9  # strong lines score at least this share of the best line ...
SUPPORT_SHARE = 0.7  # ... supporting lines at least this share
FAQ_BONUS = 0.5  # share of the question's weight added to answers of a matching FAQ question
DIRECT_COVERAGE = 0.5  # below this share of the question's weight, say the answer is partial
MAX_QUOTE_CHARS = 300
STREAM_WORDS = 4  # words per streamed text delta
TRUNCATION_MARKER = "[... output truncated"  # how the sandbox marks a cut output
OFFLINE_NOTE = (
    "_Answered by fsagent's built-in offline model, which quotes matching document lines rather "
    "than reasoning about them; configure an LLM provider for full answers._"
)

STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren arent as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn doing don
    done down during each either else ever every few for from further get gets getting got had has
    have having he her here hers herself him himself his i if in into is isn it its itself just
    let like me might mine more most must my myself no nor not now of off on once only or other our
    ours ourselves out over own please same shall she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up upon us
    use used using very via want wants was we were will with within without would yes yet you your
    yours yourself yourselves
    what whats which who whom whose when where why how long often
    tell know give show find list explain describe say says said mean means need needs
    many much anything something everything thing things way ways kind sort
    according document documents doc docs folder
    """.split()
)

_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:[._/\-][A-Za-z0-9]+)*")
_REGEX_META = re.compile(r"([.^$*+?()\[\]{}|\\])")
# A grep line: a plain path has no colon (fsagent.common.names), a quoted one is a JSON string.
_MATCH_LINE_RE = re.compile(r"^(?P<path>[^:\"][^:]*):(?P<line>\d+):(?P<text>.*)$")
_AFTER_QUOTED_RE = re.compile(r":(?P<line>\d+):(?P<text>.*)$")
_JSON = json.JSONDecoder()
_LIST_MARKER_RE = re.compile(r"^(?:[-*+]|\d+[.)])\s+(?:\[[ xX]\]\s+)?")
_WORD_BOUNDARY_RE = re.compile(r"(?<=\s)(?=\S)")
_QUESTION_RE = re.compile(r"^\*\*.+\?\*\*$|^[^|].*\?$")


# --- terms ---------------------------------------------------------------------------------------


def _stem(word: str) -> str:
    """Light stemming to a prefix that still matches the other forms in a `\\b`-anchored grep."""
    if not word.isalpha():
        return word
    if len(word) > 5 and word.endswith("ies"):
        word = word[:-3]  # policies -> polic (matches policy, policies)
    elif len(word) > 5 and word.endswith(("sses", "shes", "ches", "xes")):
        word = word[:-2]  # passes -> pass
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]  # rules -> rule, days -> day
    if len(word) > 6 and word.endswith("ing"):
        word = word[:-3]  # onboarding -> onboard
    elif len(word) > 5 and word.endswith("ed") and not word.endswith("eed"):
        word = word[:-2]  # approved -> approv
    elif len(word) > 8 and word.endswith("ment"):
        word = word[:-4]  # deployment -> deploy
    return word


def extract_terms(question: str) -> list[str]:
    """Key terms of a question: lowercase, no stopwords, identifiers and numbers kept, stemmed."""
    terms: list[str] = []
    for token in _TOKEN_RE.findall(question):
        word = token.lower().strip("._/-")
        if not word or word in STOPWORDS:
            continue
        if any(ch.isdigit() for ch in word):
            if len(word) < 2:
                continue
        elif len(word) < 3:
            continue
        word = _stem(word)
        if len(word) >= 2 and word not in terms:
            terms.append(word)
    return terms[:MAX_TERMS]


def grep_pattern(terms: Iterable[str]) -> str:
    """`\\b(t1|t2|...)`: words that start with a term (so `day` matches days but not Monday)."""
    return r"\b(" + "|".join(_REGEX_META.sub(r"\\\1", t) for t in terms) + ")"


class _Matcher:
    def __init__(self, terms: list[str]) -> None:
        self.terms = terms
        self._res = [(t, re.compile(r"\b" + re.escape(t), re.IGNORECASE)) for t in terms]

    def terms_in(self, text: str) -> frozenset[str]:
        return frozenset(t for t, rx in self._res if rx.search(text))


# --- conversation --------------------------------------------------------------------------------


@dataclass(slots=True)
class _ToolResult:
    name: str
    args: dict[str, Any]
    content: str

    @property
    def failed(self) -> bool:
        return self.content.startswith(TOOL_ERROR_PREFIX)


@dataclass(slots=True)
class _Conversation:
    question: str
    rounds: int  # assistant tool-call turns since the question
    results: list[_ToolResult] = field(default_factory=list)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _read_conversation(messages: list[Message]) -> _Conversation:
    last_user = -1
    for i, message in enumerate(messages):
        if message.get("role") == "user":
            last_user = i
    question = _text(messages[last_user].get("content")) if last_user >= 0 else ""
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    rounds = 0
    results: list[_ToolResult] = []
    for message in messages[last_user + 1 :]:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            rounds += 1
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                try:
                    args = json.loads(function.get("arguments") or "{}")
                except ValueError:
                    args = {}
                calls[call.get("id", "")] = (function.get("name", ""), args if isinstance(args, dict) else {})
        elif role == "tool":
            name, args = calls.get(message.get("tool_call_id", ""), ("", {}))
            results.append(_ToolResult(name, args, _text(message.get("content"))))
    return _Conversation(question, rounds, results)


# --- evidence ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Evidence:
    """What the tool results revealed: known lines per file and the grep matches."""

    lines: dict[str, dict[int, str]] = field(default_factory=dict)
    matches: dict[str, list[int]] = field(default_factory=dict)  # grep order per file
    failures: list[str] = field(default_factory=list)
    grep_failed: str | None = None

    def add_line(self, path: str, number: int, text: str) -> None:
        self.lines.setdefault(path, {})[number] = text


def _clean_path(path: str) -> str:
    return path[2:] if path.startswith("./") else path


def _grep_line(raw: str) -> tuple[str, int, str] | None:
    """(path, line, text) of a match line, the path as the name it displays; None otherwise."""
    if raw.startswith('"'):
        try:
            path, end = _JSON.raw_decode(raw)
        except ValueError:
            return None
        match = _AFTER_QUOTED_RE.match(raw, end)
        if not isinstance(path, str) or match is None:
            return None
        return path, int(match["line"]), match["text"]
    match = _MATCH_LINE_RE.match(raw)
    if match is None:
        return None
    return _clean_path(match["path"]), int(match["line"]), match["text"]


def _parse_grep(content: str, evidence: _Evidence) -> None:
    # Lines end at "\n" only: a document line may hold "\r", U+2028 and the like, where
    # str.splitlines() would break it and let its rest pass for a line of another file.
    for raw in content.split("\n"):
        parsed = _grep_line(raw.removesuffix("\r"))  # a CRLF file's line
        if parsed is None:
            continue  # context lines and separators, truncation markers, stderr notes
        path, number, text = parsed
        evidence.add_line(path, number, text)
        evidence.matches.setdefault(path, []).append(number)


def _parse_cat(result: _ToolResult, evidence: _Evidence) -> None:
    path = _clean_path(str(result.args.get("path", "")))
    start = result.args.get("start_line") or 1
    end = result.args.get("end_line")
    try:
        start = int(start)
        limit = int(end) - start + 1 if end is not None else None
    except (TypeError, ValueError):
        return
    lines = [line.removesuffix("\r") for line in result.content.split("\n")]  # see _parse_grep
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if limit is not None:
        lines = lines[:limit]
    for offset, text in enumerate(lines):
        if text.startswith(TRUNCATION_MARKER):
            break  # the sandbox cut the output here: the rest is not file content
        evidence.add_line(path, start + offset, text)


def _gather(conversation: _Conversation) -> _Evidence:
    evidence = _Evidence()
    for result in conversation.results:
        if result.failed:
            what = f"{result.name} {names.display(str(result.args.get('path', '')))}".strip()
            reason = result.content[len(TOOL_ERROR_PREFIX) :].lstrip(" :").splitlines()[0:1]
            evidence.failures.append(f"{what}: {reason[0] if reason else 'failed'}")
            if result.name == "grep":
                evidence.grep_failed = evidence.failures[-1]
            continue
        if result.name == "grep":
            _parse_grep(result.content, evidence)
        elif result.name == "cat":
            _parse_cat(result, evidence)
    return evidence


class _Scorer:
    """Term weights from the grep matches: a term found on fewer lines weighs more."""

    def __init__(self, terms: list[str], evidence: _Evidence) -> None:
        self.matcher = _Matcher(terms)
        matched = [
            self.matcher.terms_in(evidence.lines[path][n])
            for path, numbers in evidence.matches.items()
            for n in dict.fromkeys(numbers)
        ]
        total = len(matched)
        self.weights: dict[str, float] = {}
        for term in terms:
            df = sum(1 for found in matched if term in found)
            self.weights[term] = math.log(1 + total / df) if df else math.log(1 + 2 * max(total, 1))
        self.total_weight = sum(self.weights.values()) or 1.0

    def weight(self, terms: Iterable[str]) -> float:
        return sum(self.weights[t] for t in terms)

    def rank_files(self, evidence: _Evidence) -> list[str]:
        ranked = []
        for path, numbers in evidence.matches.items():
            found = [self.matcher.terms_in(evidence.lines[path][n]) for n in numbers]
            best_line = max(self.weight(f) for f in found)
            distinct = self.weight(frozenset().union(*found))
            ranked.append((-(best_line + distinct), -len(numbers), path))
        return [path for *_, path in sorted(ranked)]


# --- step 2: which windows to read ---------------------------------------------------------------


def _window(scored: list[tuple[int, float]]) -> tuple[int, int]:
    """The window of at most WINDOW_LINES lines holding the most matching weight (with the best line)."""
    anchor = max(scored, key=lambda item: (item[1], -item[0]))[0]
    span = WINDOW_LINES - 2 * WINDOW_PAD
    best: tuple[float, int, int] | None = None
    for start, _ in scored:
        if start > anchor or anchor - start >= span:
            continue
        inside = [(n, s) for n, s in scored if start <= n < start + span]
        end = max(n for n, _ in inside)
        if end < anchor:
            continue
        total = sum(s for _, s in inside)
        if best is None or total > best[0]:
            best = (total, start, end)
    assert best is not None  # the anchor itself is always a candidate start
    _, start, end = best
    return max(1, start - WINDOW_PAD), end + WINDOW_PAD


def _plan_reads(terms: list[str], evidence: _Evidence) -> list[ToolCallRequest]:
    scorer = _Scorer(terms, evidence)
    calls = []
    for i, path in enumerate(scorer.rank_files(evidence)[:FILES_TO_READ], start=1):
        lines = evidence.lines[path]
        scored = sorted(
            (n, scorer.weight(scorer.matcher.terms_in(lines[n]))) for n in set(evidence.matches[path])
        )
        start, end = _window(scored)
        args = {"path": path, "start_line": start, "end_line": end}
        calls.append(ToolCallRequest(f"call_cat_{i}", "cat", json.dumps(args)))
    return calls


# --- step 3: the answer --------------------------------------------------------------------------


def _is_heading(text: str) -> bool:
    return text.lstrip().startswith("#")


def _is_question(text: str) -> bool:
    return bool(_QUESTION_RE.match(text.strip()))


def _quotable(text: str) -> bool:
    stripped = text.strip()
    if len(stripped) < 3 or _is_heading(stripped) or _is_question(stripped):
        return False
    if stripped.startswith("```") or set(stripped) <= set("|-: "):
        return False
    return True


def _quote(text: str) -> str:
    quoted = " ".join(_LIST_MARKER_RE.sub("", text.strip()).split())
    return quoted if len(quoted) <= MAX_QUOTE_CHARS else quoted[: MAX_QUOTE_CHARS - 1] + "…"


def _words(text: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _TOKEN_RE.findall(text))


@dataclass(slots=True)
class _Context:
    """What a line inherits: the terms of its section heading and of the FAQ question it answers."""

    heading_terms: frozenset[str] = frozenset()
    faq_terms: frozenset[str] = frozenset()
    faq_similarity: float = 0.0  # word overlap (Jaccard) of that FAQ question with the user's


def _context(lines: dict[int, str], number: int, matcher: _Matcher, question: frozenset[str]) -> _Context:
    context = _Context()
    in_paragraph = True
    n = number - 1
    while n in lines:  # walk up through the known, contiguous lines
        text = lines[n]
        if not text.strip():
            in_paragraph = False
        elif _is_heading(text):
            context.heading_terms = matcher.terms_in(text)
            break
        elif in_paragraph and _is_question(text) and not context.faq_terms:
            context.faq_terms = matcher.terms_in(text)
            words = _words(text)
            context.faq_similarity = len(words & question) / (len(words | question) or 1)
        n -= 1
    return context


@dataclass(slots=True)
class _Candidate:
    path: str
    line: int
    text: str
    covered: int  # distinct terms, own and inherited
    score: float


def _candidates(scorer: _Scorer, evidence: _Evidence, question: str) -> list[_Candidate]:
    asked = _words(question)
    out = []
    for path, lines in evidence.lines.items():
        for number, text in lines.items():
            if not _quotable(text):
                continue
            own = scorer.matcher.terms_in(text)
            context = _context(lines, number, scorer.matcher, asked)
            if not own and not context.faq_terms:
                continue  # a line must match itself, or answer a matching FAQ question
            terms = own | context.heading_terms | context.faq_terms
            # Inherited terms count fully; own terms break ties; answers to an FAQ question that
            # reads like the user's question get a bonus.
            score = (
                scorer.weight(terms)
                + 0.01 * scorer.weight(own)
                + FAQ_BONUS * context.faq_similarity * scorer.total_weight
            )
            out.append(_Candidate(path, number, text, len(terms), score))
    return out


def _select(candidates: list[_Candidate], file_order: list[str]) -> list[_Candidate]:
    """Strong lines cover as many terms as the best line with nearly its score; supporting lines
    miss at most one term (and match two or more) with a good share of the score.

    Strong lines come first, then supporting ones; each group by file, in line order."""
    best = max(candidates, key=lambda c: (c.covered, c.score))
    strong = [c for c in candidates if c.covered == best.covered and c.score >= STRONG_SHARE * best.score]
    strong = sorted(strong, key=lambda c: -c.score)[:MAX_STRONG]
    support_floor = max(2, best.covered - 1)
    supporting: list[_Candidate] = []
    per_file: dict[str, int] = {}
    for c in sorted(candidates, key=lambda c: -c.score):
        if len(strong) + len(supporting) >= MAX_BULLETS:
            break
        if c in strong or c.covered < support_floor or c.score < SUPPORT_SHARE * best.score:
            continue
        if per_file.get(c.path, 0) < MAX_SUPPORT_PER_FILE:
            per_file[c.path] = per_file.get(c.path, 0) + 1
            supporting.append(c)
    rank = {path: i for i, path in enumerate(file_order)}

    def ordered(group: list[_Candidate]) -> list[_Candidate]:
        count: dict[str, int] = {}
        top: dict[str, float] = {}
        for c in group:
            count[c.path] = count.get(c.path, 0) + 1
            top[c.path] = max(top.get(c.path, 0.0), c.score)
        return sorted(
            group, key=lambda c: (-count[c.path], -top[c.path], rank.get(c.path, len(rank)), c.path, c.line)
        )

    return ordered(strong) + ordered(supporting)


def _code_list(items: Iterable[str]) -> str:
    quoted = [f"`{item}`" for item in items]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _nothing_found(terms: list[str]) -> str:
    longest = max(terms, key=len)
    return (
        f"I searched all documents for {_code_list(terms)} and found no matching lines, so I cannot "
        "answer this from the documents.\n\n"
        "Try different words: a synonym, the name of a project, team, policy or procedure, or a "
        f"single key word such as `{longest}`."
    )


def _compose_answer(question: str, terms: list[str], evidence: _Evidence) -> str:
    if evidence.grep_failed:
        return (
            f"The search failed ({evidence.grep_failed}), so I could not look through the documents "
            "and have no answer. Please try again."
        )
    if not evidence.matches:
        return _nothing_found(terms)
    scorer = _Scorer(terms, evidence)
    candidates = _candidates(scorer, evidence, question)
    if not candidates:
        return _nothing_found(terms)
    chosen = _select(candidates, scorer.rank_files(evidence))
    best = max(c.score for c in chosen)
    files = list(dict.fromkeys(names.display(c.path) for c in chosen))
    if best >= DIRECT_COVERAGE * scorer.total_weight:
        lead = f"Here is what the documents say, from {_code_list(files)}:"
    else:
        lead = (
            "I could not find a line that answers this directly. The closest matches, from "
            f"{_code_list(files)}, are:"
        )
    bullets = [f"- {_quote(c.text)} ({names.display(c.path)}:{c.line})" for c in chosen]
    parts = [lead, "", *bullets]
    if evidence.failures:
        parts += ["", "Some tool calls failed: " + "; ".join(evidence.failures) + "."]
    parts += ["", OFFLINE_NOTE]
    return "\n".join(parts)


# --- the provider --------------------------------------------------------------------------------


def _estimate_tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def _message_chars(messages: list[Message]) -> int:
    total = 0
    for message in messages:
        total += len(_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            total += len(json.dumps(call))
    return total


class OfflineProvider(LLMProvider):
    provider = "offline"

    def __init__(self, model: str = MODEL_NAME) -> None:
        self.model = model

    def plan(self, messages: list[Message]) -> tuple[str, list[ToolCallRequest]]:
        """The next step for this conversation: (answer text, tool calls) — one of them empty."""
        conversation = _read_conversation(messages)
        terms = extract_terms(conversation.question)
        if not terms:
            return (
                "Your question has no words I can search the documents for. Ask about a topic "
                "they cover, for example a policy, a procedure, a project or a meeting.\n\n" + OFFLINE_NOTE,
                [],
            )
        if conversation.rounds == 0:
            args = {"pattern": grep_pattern(terms), "path": ".", "ignore_case": True, "max_count": GREP_MAX_COUNT}
            return "", [ToolCallRequest("call_grep_1", "grep", json.dumps(args))]
        evidence = _gather(conversation)
        if conversation.rounds == 1 and evidence.matches and not evidence.grep_failed:
            return "", _plan_reads(terms, evidence)
        return _compose_answer(conversation.question, terms, evidence), []

    async def complete(
        self, messages: list[Message], tools: list[Tool], *, deadline: float | None = None
    ) -> AssistantTurn:
        content, calls = self.plan(messages)
        produced = content + "".join(call.arguments_json for call in calls)
        return AssistantTurn(
            content=content,
            tool_calls=calls,
            usage=Usage(_estimate_tokens(_message_chars(messages)), _estimate_tokens(len(produced))),
            model=self.model,
            finish_reason="tool_calls" if calls else "stop",
        )

    async def stream(
        self, messages: list[Message], tools: list[Tool], *, deadline: float | None = None
    ) -> AsyncIterator[StreamDelta | AssistantTurn]:
        turn = await self.complete(messages, tools)
        words = [w for w in _WORD_BOUNDARY_RE.split(turn.content) if w]  # joins back exactly
        for i in range(0, len(words), STREAM_WORDS):
            yield StreamDelta("".join(words[i : i + STREAM_WORDS]))
        yield turn
