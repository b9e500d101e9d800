"""OpenAI Chat Completions providers: `openai` (any OpenAI-compatible server) and `azure`.

The client is built once at startup with the SDK's own retries off: this module retries instead
(FSAGENT_LLM_MAX_RETRIES times at most), so that every attempt and every wait fits in the turn's
deadline. Each attempt gets min(FSAGENT_LLM_TIMEOUT, what is left of the turn); a retry happens
only when what is left after the wait (the endpoint's Retry-After, or exponential backoff) still
covers an attempt: a full FSAGENT_LLM_TIMEOUT after a timeout, MIN_RETRY_WINDOW otherwise.

`complete` is one non-streaming call; `stream` asks for usage in the last chunk and assembles
tool-call deltas by their index (a stream is retried only before its first delta). Every SDK
error, and every reply that is not a chat completion (an HTML page, invalid JSON, no choices,
`message: null`), becomes an `LLMError` with a short message that never carries the key.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import openai

from fsagent.agent.llm.base import (
    AssistantTurn,
    LLMError,
    LLMProvider,
    Message,
    StreamDelta,
    Tool,
    ToolCallRequest,
    Usage,
)
from fsagent.agent.tracing import mask_text
from fsagent.common.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
# Local OpenAI-compatible servers (vLLM, llama.cpp, Ollama, LiteLLM) ignore the key, but the SDK
# refuses an empty one.
PLACEHOLDER_KEY = "not-needed"
_MAX_DETAIL = 200

# Retries (the SDK's rules: exponential backoff from 0.5 s to 8 s with up to 25 % jitter, and a
# Retry-After of at most two minutes honoured).
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 120.0
MIN_RETRY_WINDOW = 2.0  # seconds an attempt after a quick failure (429, 5xx, refused) must have
MIN_ATTEMPT = 0.1  # below this, no attempt is started at all
_RETRYABLE_STATUS = {408, 409}  # besides 429 and 5xx, as the SDK does

# The variables a user sets to fix each provider.
_KEY_VARIABLE = {"openai": "OPENAI_API_KEY", "azure": "AZURE_OPENAI_API_KEY"}
_ENDPOINT_VARIABLE = {"openai": "OPENAI_BASE_URL", "azure": "AZURE_OPENAI_ENDPOINT"}


class ConfigurationError(RuntimeError):
    """The provider cannot be built from the settings; the message says what to set."""


def _safe_detail(error: openai.APIError) -> str:
    """The server's own error text (for a 400: context too long, unknown model), secrets masked."""
    body = error.body
    text = ""
    if isinstance(body, dict):
        text = str(body.get("message") or "")
    if not text:
        text = error.message or ""
    return mask_text(" ".join(text.split()), _MAX_DETAIL)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            if divisor == 1000.0:
                continue
            try:
                parsed = email.utils.parsedate_tz(value)
                seconds = float(email.utils.mktime_tz(parsed) - time.time()) if parsed else math.nan
            except (TypeError, ValueError, OverflowError):
                seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def malformed(detail: str) -> LLMError:
    """A reply that is not a chat completion: the endpoint's fault, not worth another attempt."""
    return LLMError("upstream", f"the LLM endpoint returned a malformed reply ({detail})", retryable=False)


def map_error(error: BaseException, timeout: float, provider: str = "openai") -> LLMError:
    """Translate an SDK exception into a typed, short, secret-free LLMError."""
    key_variable = _KEY_VARIABLE.get(provider, "OPENAI_API_KEY")
    endpoint_variable = _ENDPOINT_VARIABLE.get(provider, "OPENAI_BASE_URL")
    if isinstance(error, LLMError):
        return error
    if isinstance(error, (openai.APITimeoutError, TimeoutError)):
        return LLMError("timeout", f"the LLM endpoint did not answer within {timeout:.3g}s")
    if isinstance(error, openai.APIConnectionError):
        return LLMError("connection", f"the LLM endpoint is unreachable: check {endpoint_variable} and the network")
    if isinstance(error, openai.AuthenticationError):
        return LLMError(
            "auth", f"the LLM endpoint rejected the credentials (HTTP {error.status_code}): set a valid {key_variable}"
        )
    if isinstance(error, openai.PermissionDeniedError):
        return LLMError(
            "auth",
            f"the LLM endpoint rejected the credentials (HTTP {error.status_code}): {key_variable} has no access "
            "to this model or endpoint",
        )
    if isinstance(error, openai.RateLimitError):
        retry_after = parse_retry_after(error.response.headers)
        wait = f"; retry after {math.ceil(retry_after)}s" if retry_after else ""
        return LLMError(
            "rate_limited", f"the LLM endpoint is rate limiting requests (HTTP 429){wait}", retry_after=retry_after
        )
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        if status >= 500 or status in _RETRYABLE_STATUS:
            return LLMError("upstream", f"the LLM endpoint failed (HTTP {status})")
        detail = _safe_detail(error)
        return LLMError(
            "bad_request",
            f"the LLM endpoint rejected the request (HTTP {status})" + (f": {detail}" if detail else ""),
        )
    if isinstance(error, openai.APIResponseValidationError):
        return malformed("not a chat completion")
    if isinstance(error, openai.APIError):
        # An error event in the middle of a stream.
        detail = _safe_detail(error)
        return LLMError("upstream", "the LLM stream failed" + (f": {detail}" if detail else ""))
    if isinstance(error, openai.OpenAIError):
        return LLMError("upstream", "the LLM client failed", retryable=False)
    if isinstance(error, ValueError):  # json.JSONDecodeError and friends: the body is not JSON
        return malformed("not valid JSON")
    return LLMError("upstream", f"the LLM call failed ({type(error).__name__})", retryable=False)


def _content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") if isinstance(part, dict) else getattr(part, "text", None) for part in content]
        return "".join(p for p in parts if isinstance(p, str))
    raise TypeError("content is neither text nor content parts")


def _arguments_text(arguments: Any) -> str:
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments)


def _tokens(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    prompt, completion = getattr(usage, "prompt_tokens", 0), getattr(usage, "completion_tokens", 0)
    return Usage(prompt if isinstance(prompt, int) else 0, completion if isinstance(completion, int) else 0)


class OpenAIChatProvider(LLMProvider):
    """Chat Completions through an `openai.AsyncOpenAI` or `openai.AsyncAzureOpenAI` client."""

    def __init__(
        self, client: openai.AsyncOpenAI, *, provider: str, model: str, timeout: float, max_retries: int = 0
    ) -> None:
        self.client = client
        self.provider = provider
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings, provider: str) -> "OpenAIChatProvider":
        # The SDK's own retries are off: _attempts retries within the turn's deadline instead.
        common: dict[str, Any] = {"timeout": settings.llm_timeout, "max_retries": 0}
        own = {"timeout": settings.llm_timeout, "max_retries": settings.llm_max_retries}
        if provider == "azure":
            missing = [
                name
                for name, value in (
                    ("AZURE_OPENAI_ENDPOINT", settings.azure_openai_endpoint),
                    ("AZURE_OPENAI_API_KEY", settings.azure_openai_api_key),
                    ("AZURE_OPENAI_DEPLOYMENT (or FSAGENT_LLM_MODEL)",
                     settings.azure_openai_deployment or settings.llm_model),
                )
                if not value
            ]
            if missing:
                raise ConfigurationError(f"provider azure needs {', '.join(missing)}")
            deployment = settings.azure_openai_deployment or settings.llm_model or ""
            client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
                azure_endpoint=settings.azure_openai_endpoint or "",
                api_key=settings.azure_openai_api_key,
                api_version=settings.openai_api_version,
                azure_deployment=deployment,
                **common,
            )
            return cls(client, provider="azure", model=deployment, **own)
        if provider != "openai":
            raise ConfigurationError(f"unknown provider {provider!r}")
        api_key = settings.openai_api_key
        if not api_key:
            if not settings.openai_base_url:
                raise ConfigurationError(
                    "provider openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local "
                    "OpenAI-compatible server that ignores keys)"
                )
            api_key = PLACEHOLDER_KEY
        client = openai.AsyncOpenAI(api_key=api_key, base_url=settings.openai_base_url, **common)
        model = settings.llm_model or DEFAULT_OPENAI_MODEL
        return cls(client, provider="openai", model=model, **own)

    async def aclose(self) -> None:
        await self.client.close()

    # --- the deadline and retries ------------------------------------------------------------

    def _attempt_timeout(self, deadline: float | None) -> tuple[float, bool]:
        """Seconds for the next attempt, and whether the turn's deadline (not FSAGENT_LLM_TIMEOUT)
        set them; an LLMError when no useful time is left."""
        if deadline is None:
            return self.timeout, False
        left = deadline - time.monotonic()
        if left < MIN_ATTEMPT:
            raise LLMError(
                "timeout", "no time was left for the LLM call within the chat's time limit (FSAGENT_CHAT_TIMEOUT)",
                retryable=False,
            )
        return (self.timeout, False) if self.timeout <= left else (left, True)

    def _timeout_error(self, seconds: float, by_budget: bool) -> LLMError:
        limit = "what was left of the chat's time limit, FSAGENT_CHAT_TIMEOUT" if by_budget else "FSAGENT_LLM_TIMEOUT"
        return LLMError("timeout", f"the LLM endpoint did not answer within {seconds:.3g}s ({limit})")

    async def _may_retry(self, error: LLMError, attempt: int, deadline: float | None) -> bool:
        """Wait and say yes when another attempt is allowed and fits in what is left of the turn."""
        if not error.retryable or attempt >= self.max_retries:
            return False
        if error.retry_after is not None:
            if error.retry_after > MAX_RETRY_AFTER:
                return False
            delay = error.retry_after
        else:
            delay = min(INITIAL_RETRY_DELAY * 2.0**attempt, MAX_RETRY_DELAY) * (1 - 0.25 * random.random())
        needed = self.timeout if error.code == "timeout" else min(self.timeout, MIN_RETRY_WINDOW)
        if deadline is not None and deadline - time.monotonic() - delay < needed:
            log.info(
                "no LLM retry: the chat's time limit cannot cover another attempt",
                extra={"code": error.code, "attempt": attempt + 1, "delay_seconds": round(delay, 3)},
            )
            return False
        log.info(
            "retrying the LLM call",
            extra={"code": error.code, "attempt": attempt + 1, "delay_seconds": round(delay, 3)},
        )
        await asyncio.sleep(delay)
        return True

    async def _attempts(
        self, once: Callable[[float, bool], Awaitable[AssistantTurn]], deadline: float | None
    ) -> AssistantTurn:
        attempt = 0
        while True:
            seconds, by_budget = self._attempt_timeout(deadline)
            try:
                return await once(seconds, by_budget)
            except LLMError as exc:
                if not await self._may_retry(exc, attempt, deadline):
                    raise
            attempt += 1

    # --- calls -------------------------------------------------------------------------------

    def _params(self, messages: list[Message], tools: list[Tool]) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            params["tools"] = tools
        return params

    async def complete(
        self, messages: list[Message], tools: list[Tool], *, deadline: float | None = None
    ) -> AssistantTurn:
        async def once(seconds: float, by_budget: bool) -> AssistantTurn:
            try:
                async with asyncio.timeout(seconds):  # the SDK's timeout bounds each read, this the call
                    response = await self.client.chat.completions.create(
                        **self._params(messages, tools), timeout=seconds
                    )
            except (openai.APITimeoutError, TimeoutError):
                raise self._timeout_error(seconds, by_budget) from None
            except Exception as exc:  # noqa: BLE001 - every SDK failure becomes an LLMError
                raise map_error(exc, seconds, self.provider) from None
            return self._turn(response)

        return await self._attempts(once, deadline)

    def _turn(self, response: Any) -> AssistantTurn:
        """The AssistantTurn of a non-streaming reply, or an LLMError when it is not one."""
        if isinstance(response, str):  # the SDK hands back a body that is not JSON as text
            text = response.lstrip()
            kind = "an HTML page" if text.startswith("<") else "text" if text else "an empty body"
            raise malformed(f"{kind} instead of JSON")
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise malformed("no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise malformed("choices[0].message is null")
        try:
            calls: list[ToolCallRequest] = []
            for call in getattr(message, "tool_calls", None) or ():
                function = getattr(call, "function", None)
                name = getattr(function, "name", None)
                if not isinstance(name, str) or not name:  # a custom (non-function) tool call: we offer none
                    continue
                call_id = getattr(call, "id", None)
                calls.append(ToolCallRequest(
                    call_id if isinstance(call_id, str) and call_id else _new_call_id(),
                    name, _arguments_text(getattr(function, "arguments", None)),
                ))
            content = _content_text(getattr(message, "content", None))
        except (AttributeError, TypeError, ValueError) as exc:
            raise malformed(f"an unreadable message: {type(exc).__name__}") from None
        model = getattr(response, "model", None)
        finish = getattr(choice, "finish_reason", None)
        return AssistantTurn(
            content=content,
            tool_calls=calls,
            usage=_tokens(getattr(response, "usage", None)),
            model=model if isinstance(model, str) and model else self.model,
            finish_reason=finish if isinstance(finish, str) and finish else ("tool_calls" if calls else "stop"),
        )

    async def stream(
        self, messages: list[Message], tools: list[Tool], *, deadline: float | None = None
    ) -> AsyncIterator[StreamDelta | AssistantTurn]:
        attempt = 0
        while True:
            seconds, by_budget = self._attempt_timeout(deadline)
            started = False
            try:
                async for item in self._stream_once(messages, tools, seconds, by_budget, deadline):
                    started = started or isinstance(item, StreamDelta)
                    yield item
                return
            except LLMError as exc:
                # Once text went out, another attempt would repeat it: only a stream that has not
                # started is retried.
                if started or not await self._may_retry(exc, attempt, deadline):
                    raise
            attempt += 1

    async def _stream_once(
        self, messages: list[Message], tools: list[Tool], seconds: float, by_budget: bool, deadline: float | None
    ) -> AsyncIterator[StreamDelta | AssistantTurn]:
        text: list[str] = []
        partial: dict[int, _PartialCall] = {}
        usage = Usage()
        model = self.model
        finish_reason = ""
        chunks = 0
        content_type = ""

        def read_timeout() -> tuple[float, bool]:
            # Each read waits at most FSAGENT_LLM_TIMEOUT, and never past the turn's deadline.
            if deadline is None:
                return self.timeout, False
            left = max(0.0, deadline - time.monotonic())
            return (self.timeout, False) if self.timeout <= left else (left, True)

        try:
            async with asyncio.timeout(seconds):
                stream = await self.client.chat.completions.create(
                    **self._params(messages, tools),
                    stream=True,
                    stream_options={"include_usage": True},
                    timeout=seconds,
                )
            async with stream:
                content_type = str(getattr(getattr(stream, "response", None), "headers", {}).get("content-type", ""))
                if content_type.startswith("text/html"):
                    raise malformed("an HTML page instead of an event stream")
                chunk_iter = stream.__aiter__()
                while True:
                    wait, by_budget = read_timeout()
                    try:
                        async with asyncio.timeout(wait):
                            chunk = await anext(chunk_iter)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise self._timeout_error(wait, by_budget) from None
                    chunks += 1
                    delta_text = self._absorb(chunk, partial)
                    if getattr(chunk, "model", None) and isinstance(chunk.model, str):
                        model = chunk.model
                    if getattr(chunk, "usage", None) is not None:
                        usage = _tokens(chunk.usage)
                    finish = _finish_reason(chunk)
                    if finish:
                        finish_reason = finish
                    if delta_text:
                        text.append(delta_text)
                        yield StreamDelta(delta_text)
        except LLMError:
            raise
        except (openai.APITimeoutError, TimeoutError):
            raise self._timeout_error(seconds, by_budget) from None
        except Exception as exc:  # noqa: BLE001
            raise map_error(exc, seconds, self.provider) from None
        calls = [
            ToolCallRequest(entry.id or _new_call_id(), entry.name, "".join(entry.arguments))
            for _, entry in sorted(partial.items())
            if entry.name
        ]
        if not text and not calls and not finish_reason:
            # An HTML page or an empty body answered with 200: no event at all, or none with choices.
            if chunks:
                raise malformed("the stream ended without a reply")
            kind = content_type.split(";")[0].strip()
            raise malformed(f"{kind} instead of an event stream" if kind and kind != "text/event-stream"
                            else "no stream events")
        yield AssistantTurn(
            content="".join(text),
            tool_calls=calls,
            usage=usage,
            model=model,
            finish_reason=finish_reason or ("tool_calls" if calls else "stop"),
        )

    @staticmethod
    def _absorb(chunk: Any, partial: dict[int, "_PartialCall"]) -> str:
        """Fold one chunk's tool-call deltas into `partial`; its text delta ("" when none)."""
        try:
            choices = getattr(chunk, "choices", None)
            if not choices:
                return ""
            delta = getattr(choices[0], "delta", None)
            if delta is None:
                return ""
            for tc in getattr(delta, "tool_calls", None) or ():
                entry = partial.setdefault(int(tc.index or 0), _PartialCall())
                if tc.id and not entry.id:
                    entry.id = tc.id
                function = getattr(tc, "function", None)
                if function is not None:
                    # Names normally arrive whole in the first delta; some servers repeat them.
                    if function.name and function.name != entry.name:
                        entry.name += function.name
                    if function.arguments:
                        entry.arguments.append(_arguments_text(function.arguments))
            return _content_text(getattr(delta, "content", None))
        except (AttributeError, TypeError, ValueError) as exc:
            raise malformed(f"an unreadable stream chunk: {type(exc).__name__}") from None


def _finish_reason(chunk: Any) -> str:
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list) or not choices:
        return ""
    finish = getattr(choices[0], "finish_reason", None)
    return finish if isinstance(finish, str) else ""


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
