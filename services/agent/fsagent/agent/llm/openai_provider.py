"""OpenAI Chat Completions providers: `openai` (any OpenAI-compatible server) and `azure`.

The client is built once at startup with the configured timeout and retry budget. `complete` is
one non-streaming call; `stream` asks for usage in the last chunk and assembles tool-call deltas by
their index. Every SDK error becomes an `LLMError` with a short message that never carries the key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

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


DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
# Local OpenAI-compatible servers (vLLM, llama.cpp, Ollama, LiteLLM) ignore the key, but the SDK
# refuses an empty one.
PLACEHOLDER_KEY = "not-needed"
_MAX_DETAIL = 200


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


def map_error(error: BaseException, timeout: float) -> LLMError:
    """Translate an SDK exception into a typed, short, secret-free LLMError."""
    if isinstance(error, openai.APITimeoutError):
        return LLMError("timeout", f"the LLM endpoint did not answer within {timeout:g}s")
    if isinstance(error, openai.APIConnectionError):
        return LLMError("connection", "the LLM endpoint is unreachable")
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return LLMError(
            "auth", f"the LLM endpoint rejected the credentials (HTTP {error.status_code})"
        )
    if isinstance(error, openai.RateLimitError):
        return LLMError("rate_limited", "the LLM endpoint is rate limiting requests (HTTP 429)")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        if status >= 500:
            return LLMError("upstream", f"the LLM endpoint failed (HTTP {status})")
        detail = _safe_detail(error)
        return LLMError(
            "bad_request",
            f"the LLM endpoint rejected the request (HTTP {status})" + (f": {detail}" if detail else ""),
        )
    if isinstance(error, openai.APIResponseValidationError):
        return LLMError("upstream", "the LLM endpoint returned an invalid response")
    if isinstance(error, openai.APIError):
        # An error event in the middle of a stream.
        detail = _safe_detail(error)
        return LLMError("upstream", "the LLM stream failed" + (f": {detail}" if detail else ""))
    if isinstance(error, openai.OpenAIError):
        return LLMError("upstream", "the LLM client failed")
    return LLMError("upstream", f"the LLM call failed ({type(error).__name__})")


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIChatProvider(LLMProvider):
    """Chat Completions through an `openai.AsyncOpenAI` or `openai.AsyncAzureOpenAI` client."""

    def __init__(self, client: openai.AsyncOpenAI, *, provider: str, model: str, timeout: float) -> None:
        self.client = client
        self.provider = provider
        self.model = model
        self.timeout = timeout

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings, provider: str) -> "OpenAIChatProvider":
        common: dict[str, Any] = {"timeout": settings.llm_timeout, "max_retries": settings.llm_max_retries}
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
            return cls(client, provider="azure", model=deployment, timeout=settings.llm_timeout)
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
        return cls(client, provider="openai", model=model, timeout=settings.llm_timeout)

    async def aclose(self) -> None:
        await self.client.close()

    # --- calls -------------------------------------------------------------------------------

    def _params(self, messages: list[Message], tools: list[Tool]) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            params["tools"] = tools
        return params

    async def complete(self, messages: list[Message], tools: list[Tool]) -> AssistantTurn:
        try:
            response = await self.client.chat.completions.create(**self._params(messages, tools))
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes an LLMError
            raise map_error(exc, self.timeout) from None
        if not response.choices:
            raise LLMError("upstream", "the LLM endpoint returned no choices")
        choice = response.choices[0]
        message = choice.message
        calls: list[ToolCallRequest] = []
        for call in message.tool_calls or ():
            function = getattr(call, "function", None)
            if function is None:  # a custom (non-function) tool call: we offer none
                continue
            calls.append(ToolCallRequest(call.id or _new_call_id(), function.name, function.arguments or ""))
        usage = Usage()
        if response.usage is not None:
            usage = Usage(response.usage.prompt_tokens or 0, response.usage.completion_tokens or 0)
        return AssistantTurn(
            content=message.content or "",
            tool_calls=calls,
            usage=usage,
            model=response.model or self.model,
            finish_reason=choice.finish_reason or ("tool_calls" if calls else "stop"),
        )

    async def stream(
        self, messages: list[Message], tools: list[Tool]
    ) -> AsyncIterator[StreamDelta | AssistantTurn]:
        text: list[str] = []
        partial: dict[int, _PartialCall] = {}
        usage = Usage()
        model = self.model
        finish_reason = ""
        try:
            stream = await self.client.chat.completions.create(
                **self._params(messages, tools),
                stream=True,
                stream_options={"include_usage": True},
            )
            async with stream:
                async for chunk in stream:
                    if chunk.model:
                        model = chunk.model
                    if chunk.usage is not None:
                        usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                    delta = choice.delta
                    if delta is None:
                        continue
                    if delta.content:
                        text.append(delta.content)
                        yield StreamDelta(delta.content)
                    for tc in delta.tool_calls or ():
                        entry = partial.setdefault(tc.index, _PartialCall())
                        if tc.id and not entry.id:
                            entry.id = tc.id
                        if tc.function is not None:
                            # Names normally arrive whole in the first delta; some servers repeat them.
                            if tc.function.name and tc.function.name != entry.name:
                                entry.name += tc.function.name
                            if tc.function.arguments:
                                entry.arguments.append(tc.function.arguments)
        except LLMError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise map_error(exc, self.timeout) from None
        calls = [
            ToolCallRequest(entry.id or _new_call_id(), entry.name, "".join(entry.arguments))
            for _, entry in sorted(partial.items())
            if entry.name
        ]
        yield AssistantTurn(
            content="".join(text),
            tool_calls=calls,
            usage=usage,
            model=model,
            finish_reason=finish_reason or ("tool_calls" if calls else "stop"),
        )
