"""The local stack the benchmarks measure: four real services whose agent talks to a scripted model."""

from __future__ import annotations

from pathlib import Path

from fsagent.cli.localstack import LocalStack, Ports
from tests.fakes.openai_server import ScriptedOpenAI


def scripted_stack(workdir: Path, data: Path, llm: ScriptedOpenAI, extra_env: dict[str, str] | None = None) -> LocalStack:
    """A stack (not started yet) on free ports: quiet logs, tracing off unless `extra_env` says otherwise."""
    return LocalStack(
        data_root=data,
        cache_dir=workdir / "cache",
        ports=Ports.free(),
        log_dir=workdir / "logs",
        extra_env={"FSAGENT_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "bench",
                   "FSAGENT_LOG_LEVEL": "WARNING", "LANGFUSE_PUBLIC_KEY": "", "LANGFUSE_SECRET_KEY": "",
                   **(extra_env or {})},
    )


def start_scripted_stack(workdir: Path, data: Path, llm: ScriptedOpenAI, extra_env: dict[str, str] | None = None) -> LocalStack:
    """The same, started and ready."""
    stack = scripted_stack(workdir, data, llm, extra_env)
    stack.start(timeout=60)  # stops what it started if start-up fails
    return stack
