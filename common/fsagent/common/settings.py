"""One settings object for every service, read from the environment (and `.env`).

Names follow ARCHITECTURE.md: `FSAGENT_*` for our own knobs, and the vendors' usual names for
OpenAI, Azure OpenAI and Langfuse so existing environments work unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- model -------------------------------------------------------------------------------
    llm_provider: Literal["offline", "openai", "azure"] | None = Field(
        None, validation_alias=_env("FSAGENT_LLM_PROVIDER")
    )
    llm_model: str | None = Field(None, validation_alias=_env("FSAGENT_LLM_MODEL"))
    llm_timeout: float = Field(60.0, gt=0, validation_alias=_env("FSAGENT_LLM_TIMEOUT"))
    llm_max_retries: int = Field(2, ge=0, validation_alias=_env("FSAGENT_LLM_MAX_RETRIES"))
    # USD per million tokens, for the cost metric and Langfuse cost details (0 = unknown).
    llm_input_cost_per_mtok: float = Field(
        0.0, ge=0, validation_alias=_env("FSAGENT_LLM_INPUT_COST_PER_MTOK")
    )
    llm_output_cost_per_mtok: float = Field(
        0.0, ge=0, validation_alias=_env("FSAGENT_LLM_OUTPUT_COST_PER_MTOK")
    )
    openai_api_key: str | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=_env("OPENAI_BASE_URL"))
    azure_openai_api_key: str | None = Field(None, validation_alias=_env("AZURE_OPENAI_API_KEY"))
    azure_openai_endpoint: str | None = Field(None, validation_alias=_env("AZURE_OPENAI_ENDPOINT"))
    openai_api_version: str = Field("2024-10-21", validation_alias=_env("OPENAI_API_VERSION"))
    azure_openai_deployment: str | None = Field(
        None, validation_alias=_env("AZURE_OPENAI_DEPLOYMENT")
    )

    # --- Langfuse ----------------------------------------------------------------------------
    langfuse_public_key: str | None = Field(None, validation_alias=_env("LANGFUSE_PUBLIC_KEY"))
    langfuse_secret_key: str | None = Field(None, validation_alias=_env("LANGFUSE_SECRET_KEY"))
    langfuse_base_url: str = Field(
        "https://cloud.langfuse.com", validation_alias=_env("LANGFUSE_BASE_URL", "LANGFUSE_HOST")
    )
    langfuse_sample_rate: float = Field(
        1.0, ge=0.0, le=1.0, validation_alias=_env("LANGFUSE_SAMPLE_RATE")
    )
    langfuse_environment: str = Field(
        "development", validation_alias=_env("LANGFUSE_TRACING_ENVIRONMENT")
    )
    langfuse_release: str | None = Field(None, validation_alias=_env("LANGFUSE_RELEASE"))
    langfuse_timeout: float = Field(5.0, gt=0, validation_alias=_env("LANGFUSE_TIMEOUT"))
    langfuse_flush_interval: float = Field(
        1.0, gt=0, validation_alias=_env("LANGFUSE_FLUSH_INTERVAL")
    )
    trace_max_field_chars: int = Field(
        1000, ge=16, validation_alias=_env("FSAGENT_TRACE_MAX_FIELD_CHARS")
    )

    # --- data and cache ----------------------------------------------------------------------
    data_root: Path = Field(Path("./data"), validation_alias=_env("FSAGENT_DATA_ROOT"))
    read_only: bool = Field(False, validation_alias=_env("FSAGENT_READ_ONLY"))
    cache_dir: Path = Field(Path("./.fsagent-cache"), validation_alias=_env("FSAGENT_CACHE_DIR"))
    cache_size_limit: int = Field(500 * MiB, gt=0, validation_alias=_env("FSAGENT_CACHE_SIZE_LIMIT"))
    cache_ttl_content: float = Field(3600.0, gt=0, validation_alias=_env("FSAGENT_CACHE_TTL_CONTENT"))
    cache_ttl_search: float = Field(3600.0, gt=0, validation_alias=_env("FSAGENT_CACHE_TTL_SEARCH"))
    cache_timeout: float = Field(0.25, gt=0, validation_alias=_env("FSAGENT_CACHE_TIMEOUT"))
    # Sandbox: reuse a scope's fingerprint while inotify proves it unchanged (docs/cache.md).
    cache_watch: bool = Field(True, validation_alias=_env("FSAGENT_CACHE_WATCH"))
    session_ttl: float = Field(7 * 86400.0, gt=0, validation_alias=_env("FSAGENT_SESSION_TTL"))
    session_max_messages: int = Field(50, ge=2, validation_alias=_env("FSAGENT_SESSION_MAX_MESSAGES"))

    # --- addresses ---------------------------------------------------------------------------
    bind_host: str = Field("127.0.0.1", validation_alias=_env("FSAGENT_BIND_HOST"))
    gateway_port: int = Field(8000, validation_alias=_env("FSAGENT_GATEWAY_PORT"))
    agent_addr: str = Field("127.0.0.1:50051", validation_alias=_env("FSAGENT_AGENT_ADDR"))
    sandbox_addr: str = Field("127.0.0.1:50052", validation_alias=_env("FSAGENT_SANDBOX_ADDR"))
    cache_addr: str = Field("127.0.0.1:50053", validation_alias=_env("FSAGENT_CACHE_ADDR"))
    # The gateway's Prometheus /metrics, never on its public HTTP port (an Ingress routes that one).
    gateway_metrics_port: int = Field(9104, validation_alias=_env("FSAGENT_GATEWAY_METRICS_PORT"))
    agent_metrics_port: int = Field(9101, validation_alias=_env("FSAGENT_AGENT_METRICS_PORT"))
    sandbox_metrics_port: int = Field(9102, validation_alias=_env("FSAGENT_SANDBOX_METRICS_PORT"))
    cache_metrics_port: int = Field(9103, validation_alias=_env("FSAGENT_CACHE_METRICS_PORT"))

    # --- limits ------------------------------------------------------------------------------
    max_iterations: int = Field(10, ge=1, le=100, validation_alias=_env("FSAGENT_MAX_ITERATIONS"))
    max_concurrent_tools: int = Field(
        5, ge=1, le=64, validation_alias=_env("FSAGENT_MAX_CONCURRENT_TOOLS")
    )
    # Tool calls one model turn may run (the rest get a "not run" result) and one chat request may
    # run in all (then the model is asked to answer with what it has). A person never meets them.
    max_tool_calls_per_turn: int = Field(
        16, ge=1, le=1000, validation_alias=_env("FSAGENT_MAX_TOOL_CALLS_PER_TURN")
    )
    max_tool_calls_per_chat: int = Field(
        64, ge=1, le=10000, validation_alias=_env("FSAGENT_MAX_TOOL_CALLS_PER_CHAT")
    )
    tool_timeout: float = Field(10.0, gt=0, validation_alias=_env("FSAGENT_TOOL_TIMEOUT"))
    max_output_bytes: int = Field(
        64 * 1024, ge=1024, validation_alias=_env("FSAGENT_MAX_OUTPUT_BYTES")
    )
    max_file_size: int = Field(10 * MiB, ge=1024, validation_alias=_env("FSAGENT_MAX_FILE_SIZE"))
    chat_timeout: float = Field(300.0, gt=0, validation_alias=_env("FSAGENT_CHAT_TIMEOUT"))
    max_message_chars: int = Field(
        32_000, ge=1, validation_alias=_env("FSAGENT_MAX_MESSAGE_CHARS")
    )

    # --- sandbox -----------------------------------------------------------------------------
    # auto: every wall that works here (bubblewrap, Landlock, unprivileged uid); bwrap: refuse to
    # start without bubblewrap; none: only process group, empty environment, rlimits and uid.
    sandbox_isolation: Literal["auto", "bwrap", "none"] = Field(
        "auto", validation_alias=_env("FSAGENT_SANDBOX_ISOLATION")
    )
    # The uid/gid tool processes run as when the sandbox service runs as root (default: nobody).
    sandbox_uid: int = Field(65534, ge=0, validation_alias=_env("FSAGENT_SANDBOX_UID"))
    sandbox_gid: int = Field(65534, ge=0, validation_alias=_env("FSAGENT_SANDBOX_GID"))

    # --- gateway -----------------------------------------------------------------------------
    # Comma-separated keys; when set, /api/* needs `Authorization: Bearer <key>` or `X-API-Key`.
    api_keys: str = Field("", validation_alias=_env("FSAGENT_API_KEYS"))
    cors_origins: str = Field("", validation_alias=_env("FSAGENT_CORS_ORIGINS"))
    # Rate limits (the `limits` library's notation, e.g. "60/minute", "10/second;300/hour"; "" turns
    # one off): chat requests per API key (per client address when keys are off), and wrong API
    # keys per client address before that address is refused with 429. The storage is where the
    # counters live: memory:// is per gateway process; redis://host:6379 shares them across replicas.
    chat_rate_limit: str = Field("60/minute", validation_alias=_env("FSAGENT_CHAT_RATE_LIMIT"))
    auth_failure_limit: str = Field("10/minute", validation_alias=_env("FSAGENT_AUTH_FAILURE_LIMIT"))
    rate_limit_storage: str = Field("memory://", validation_alias=_env("FSAGENT_RATE_LIMIT_STORAGE"))

    # --- runtime -----------------------------------------------------------------------------
    log_level: str = Field("INFO", validation_alias=_env("FSAGENT_LOG_LEVEL"))
    log_format: Literal["json", "text"] = Field("json", validation_alias=_env("FSAGENT_LOG_FORMAT"))
    shutdown_grace: float = Field(10.0, ge=0, validation_alias=_env("FSAGENT_SHUTDOWN_GRACE"))

    @field_validator(
        "llm_provider", "llm_model", "openai_api_key", "openai_base_url", "azure_openai_api_key",
        "azure_openai_endpoint", "azure_openai_deployment", "langfuse_public_key",
        "langfuse_secret_key", "langfuse_release", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `FOO=` in a .env file or a Helm value left blank means "not configured".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def resolved_provider(self) -> str:
        if self.llm_provider:
            return self.llm_provider
        if self.openai_api_key or self.openai_base_url:
            return "openai"
        if self.azure_openai_endpoint and self.azure_openai_api_key:
            return "azure"
        return "offline"

    @property
    def langfuse_enabled(self) -> bool:
        return bool(self.langfuse_public_key and self.langfuse_secret_key)

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
