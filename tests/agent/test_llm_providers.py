"""Provider construction from settings and the mapping of SDK errors to short, secret-free LLMErrors."""

from __future__ import annotations

import httpx2
import openai
import pytest

from fsagent.agent.llm import build_provider
from fsagent.agent.llm.base import LLMError
from fsagent.agent.llm.offline import OfflineProvider
from fsagent.agent.llm.openai_provider import PLACEHOLDER_KEY, ConfigurationError, OpenAIChatProvider, map_error
from tests.agent.harness import make_settings

REQUEST = httpx2.Request("POST", "https://llm.example.com/v1/chat/completions")


def status_error(cls: type[openai.APIStatusError], status: int, message: str) -> openai.APIStatusError:
    response = httpx2.Response(status, request=REQUEST)
    return cls(f"Error code: {status} - {message}", response=response, body={"message": message})


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (openai.APITimeoutError(REQUEST), "timeout", "did not answer within 10s"),
        (openai.APIConnectionError(request=REQUEST), "connection", "unreachable"),
        (status_error(openai.AuthenticationError, 401, "Incorrect API key provided: sk-abcd****wxyz"),
         "auth", "rejected the credentials (HTTP 401)"),
        (status_error(openai.PermissionDeniedError, 403, "no access"), "auth", "HTTP 403"),
        (status_error(openai.RateLimitError, 429, "slow down"), "rate_limited", "HTTP 429"),
        (status_error(openai.BadRequestError, 400, "maximum context length is 8192 tokens"),
         "bad_request", "HTTP 400): maximum context length is 8192 tokens"),
        (status_error(openai.NotFoundError, 404, "model gpt-x does not exist"), "bad_request", "does not exist"),
        (status_error(openai.InternalServerError, 502, "bad gateway"), "upstream", "failed (HTTP 502)"),
        (openai.APIError("stream broke", REQUEST, body={"message": "overloaded"}), "upstream", "overloaded"),
        (RuntimeError("boom"), "upstream", "RuntimeError"),
    ],
)
def test_sdk_errors_map_to_llm_errors(error: Exception, code: str, text: str) -> None:
    mapped = map_error(error, timeout=10)
    assert isinstance(mapped, LLMError)
    assert mapped.code == code
    assert text in mapped.message
    assert "sk-" not in mapped.message
    assert mapped.retryable == (code in {"timeout", "connection", "rate_limited", "upstream"}
                                and not isinstance(error, RuntimeError))  # an unknown failure is not retried


def test_a_key_in_a_bad_request_message_is_masked() -> None:
    error = status_error(openai.BadRequestError, 400, "invalid header Bearer sk-live-abcdef123456 for api_key=sk-zzz")
    message = map_error(error, timeout=1).message
    assert "sk-live" not in message and "sk-zzz" not in message and "[REDACTED]" in message


def test_offline_is_the_default_provider() -> None:
    provider = build_provider(make_settings(llm_provider=None))
    assert isinstance(provider, OfflineProvider)
    assert (provider.provider, provider.model) == ("offline", "fsagent-offline")


async def test_openai_provider_from_settings() -> None:
    settings = make_settings(llm_provider="openai", openai_api_key="sk-test", llm_model="gpt-test",
                             llm_timeout=12.5, llm_max_retries=3)
    provider = build_provider(settings)
    assert isinstance(provider, OpenAIChatProvider)
    assert (provider.provider, provider.model) == ("openai", "gpt-test")
    # The SDK does not retry on its own: the provider does, within the turn's deadline.
    assert provider.client.max_retries == 0 and provider.max_retries == 3
    assert provider.client.timeout == 12.5 and provider.timeout == 12.5
    await provider.aclose()


async def test_a_local_server_needs_no_key() -> None:
    provider = build_provider(make_settings(llm_provider="openai", openai_base_url="http://127.0.0.1:8080/v1"))
    assert isinstance(provider, OpenAIChatProvider)
    assert provider.client.api_key == PLACEHOLDER_KEY
    assert str(provider.client.base_url).startswith("http://127.0.0.1:8080/v1")
    await provider.aclose()


def test_openai_without_key_or_base_url_fails_at_startup() -> None:
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        build_provider(make_settings(llm_provider="openai"))


async def test_azure_provider_uses_the_deployment_as_model() -> None:
    settings = make_settings(
        llm_provider="azure", azure_openai_endpoint="https://res.openai.azure.com",
        azure_openai_api_key="azure-key", azure_openai_deployment="gpt4o-prod",
    )
    provider = build_provider(settings)
    assert isinstance(provider, OpenAIChatProvider)
    assert (provider.provider, provider.model) == ("azure", "gpt4o-prod")
    assert isinstance(provider.client, openai.AsyncAzureOpenAI)
    await provider.aclose()


def test_azure_names_what_is_missing() -> None:
    with pytest.raises(ConfigurationError) as info:
        build_provider(make_settings(llm_provider="azure", azure_openai_endpoint="https://res.openai.azure.com"))
    assert "AZURE_OPENAI_API_KEY" in str(info.value) and "AZURE_OPENAI_DEPLOYMENT" in str(info.value)
