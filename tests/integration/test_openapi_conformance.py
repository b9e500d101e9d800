"""schemathesis over the gateway's OpenAPI document, against the real four services.

The stack serves a temporary copy of data/ (the write routes create, replace and delete files)
with the offline model. The run is bounded (`MAX_TIME` seconds, at most `MAX_EXAMPLES` cases per
operation, a fixed seed) and must find no server error, no status the document does not declare,
no response whose content type or body contradicts it, no valid request refused and no invalid one
accepted (what a JSON Schema cannot say is in schemathesis.toml beside this file). The findings are
the failure message, as schemathesis prints them, each with a curl line that reproduces it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from fsagent.cli.localstack import LocalStack
from tests.integration.conftest import start_stack

HERE = Path(__file__).resolve().parent
CHECKS = ",".join((
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance", "negative_data_rejection", "positive_data_acceptance",
))
MAX_TIME = int(os.environ.get("FSAGENT_SCHEMATHESIS_MAX_TIME", "45"))
MAX_EXAMPLES = int(os.environ.get("FSAGENT_SCHEMATHESIS_MAX_EXAMPLES", "25"))
SEED = int(os.environ.get("FSAGENT_SCHEMATHESIS_SEED", "20261203"))

# schemathesis' CLI, with hypothesis.target() a no-op: hypothesis 6.170's target optimiser can
# fail inside itself (IndexError in optimise_targets), a runtime error that says nothing about
# the API. Without targets the fuzzing is plain random generation, which is what we want here.
RUNNER = (
    "import sys, hypothesis\n"
    "hypothesis.target = lambda observation, *, label='': observation\n"
    "import schemathesis.cli\n"
    "sys.exit(schemathesis.cli.schemathesis())\n"
)


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # Its own stack and data copy: what the fuzzer writes must not surprise the other tests.
    # The chat rate limit is for clients; the fuzzer sends hundreds of chats a minute on purpose.
    stack = start_stack(
        tmp_path_factory.mktemp("schemathesis"),
        {"FSAGENT_CHAT_RATE_LIMIT": "100000/minute", "FSAGENT_AUTH_FAILURE_LIMIT": "100000/minute"},
    )
    yield stack
    stack.stop()


@pytest.mark.timeout(MAX_TIME * 3 + 120)
def test_openapi_conformance(fuzz_stack: LocalStack, tmp_path: Path) -> None:
    argv = [
        sys.executable, "-c", RUNNER,
        "--config-file", str(HERE / "schemathesis.toml"), "--no-color",
        "run", f"{fuzz_stack.base_url}/openapi.json",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing",
        "--max-time", str(MAX_TIME),
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "2",
        "--request-timeout", "30",
        "--suppress-health-check", "all",
        "--no-shrink",
        "--continue-on-failure",
    ]
    started = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, cwd=tmp_path, timeout=MAX_TIME * 3 + 60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    elapsed = time.monotonic() - started
    print(f"schemathesis: exit {proc.returncode} in {elapsed:.1f} s (seed {SEED})")
    print(proc.stdout[-3000:])
    if proc.returncode != 0:
        pytest.fail(
            f"schemathesis found problems (exit {proc.returncode}, {elapsed:.0f} s, seed {SEED}):\n"
            f"{proc.stdout}{proc.stderr[-5000:]}",
            pytrace=False,
        )
