"""Start the four services as real processes on 127.0.0.1 and talk to them over HTTP."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from fsagent.cli.localstack import LocalStack, Ports
from tests.fakes.openai_server import ScriptedOpenAI

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DATA = REPO / "data"

# Keys a developer may have in their shell must not leak into the offline stack.
_CLEAR = {
    "FSAGENT_LLM_PROVIDER": "", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": "",
    "AZURE_OPENAI_API_KEY": "", "AZURE_OPENAI_ENDPOINT": "", "LANGFUSE_PUBLIC_KEY": "",
    "LANGFUSE_SECRET_KEY": "", "FSAGENT_API_KEYS": "",
}


def start_stack(tmp: Path, extra_env: dict[str, str] | None = None) -> LocalStack:
    data = tmp / "data"
    shutil.copytree(SAMPLE_DATA, data)
    stack = LocalStack(
        data_root=data,
        cache_dir=tmp / "cache",
        ports=Ports.free(),
        extra_env={**_CLEAR, "FSAGENT_LOG_LEVEL": "INFO", **(extra_env or {})},
        log_dir=tmp / "logs",
    )
    stack.start(timeout=60)
    return stack


@pytest.fixture(scope="session")
def offline_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = start_stack(tmp_path_factory.mktemp("offline"))
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def client(offline_stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=offline_stack.base_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def scripted_llm() -> Iterator[ScriptedOpenAI]:
    server = ScriptedOpenAI().start()
    yield server
    server.stop()
