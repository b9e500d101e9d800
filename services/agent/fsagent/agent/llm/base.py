"""The provider interface every model implements, and the types it speaks.

Messages are plain dicts in the OpenAI Chat Completions format (system, user, assistant with
`tool_calls`, tool with `tool_call_id`); tools are OpenAI function tools. A provider turns them into
one `AssistantTurn`, either at once (`complete`) or as text deltas followed by the turn (`stream`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

Message = dict[str, Any]
Tool = dict[str, Any]

#: How a failed tool call starts its tool message, so any model (the offline one included) can tell.
TOOL_ERROR_PREFIX = "ERROR"


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    id: str
    name: str
    arguments_json: str


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: "Usage") -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens


@dataclass(slots=True)
class AssistantTurn:
    content: str = ""
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    finish_reason: str = "stop"

    def to_message(self) -> Message:
        """The turn as an assistant message to send back to the model."""
        message: Message = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call in self.tool_calls
            ]
        elif message["content"] is None:
            message["content"] = ""
        return message


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """A piece of answer text, as the model produces it."""

    text: str


class LLMError(Exception):
    """An LLM call failed; `message` is short and safe to show (no keys, no request bodies).

    Codes: `connection` (endpoint unreachable), `timeout`, `rate_limited`, `upstream` (5xx, a broken
    stream, or a malformed reply) are the endpoint's fault; `auth` and `bad_request` need a
    configuration change. `retryable` says whether another attempt may help (a malformed reply is
    `upstream` but not retried); `retry_after` is the wait the endpoint asked for, in seconds.
    """

    RETRYABLE = frozenset({"connection", "timeout", "rate_limited", "upstream"})

    def __init__(
        self, code: str, message: str, *, retryable: bool | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self._retryable = retryable
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.code in self.RETRYABLE if self._retryable is None else self._retryable


class LLMProvider(abc.ABC):
    """One configured model. Built once at startup; `aclose` releases its connections."""

    #: bounded metric label: offline, openai, azure
    provider: str
    #: the configured model (or Azure deployment) name
    model: str

    @abc.abstractmethod
    async def complete(
        self, messages: list[Message], tools: list[Tool], *, deadline: float | None = None
    ) -> AssistantTurn:
        """One non-streaming call, answered (or failed) by `deadline` (time.monotonic())."""

    @abc.abstractmethod
    def stream(
        self, messages: list[Message], tools: list[Tool], *, deadline: float | None = None
    ) -> AsyncIterator[StreamDelta | AssistantTurn]:
        """Text deltas as they arrive, then exactly one final `AssistantTurn`."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release network resources."""
