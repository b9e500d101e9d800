"""Model providers behind one interface: the offline planner, OpenAI(-compatible) and Azure OpenAI."""

from __future__ import annotations

from fsagent.agent.llm.base import LLMProvider
from fsagent.common.settings import Settings


def build_provider(settings: Settings) -> LLMProvider:
    """The configured provider, built once; raises ConfigurationError when settings are missing."""
    provider = settings.resolved_provider
    if provider == "offline":
        from fsagent.agent.llm.offline import MODEL_NAME, OfflineProvider

        return OfflineProvider(MODEL_NAME)
    from fsagent.agent.llm.openai_provider import OpenAIChatProvider

    return OpenAIChatProvider.from_settings(settings, provider)
