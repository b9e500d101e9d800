"""One full local stack (gateway, agent, sandbox, cache as real processes) over the hostile world,
driven by a scripted model that makes the attack calls; the sandbox is also called over gRPC.

Every service gets FSAGENT_CANARY=<token>; the agent's OPENAI_API_KEY is a canary too. The model
script reads `attack <id>` from the user message, makes that attack's tool call, then answers
with every tool result it got (an exfiltrating model): what reaches the model and the chat reply
are both checked for canaries.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fsagent.cli.localstack import LocalStack
from fsagent.v1 import sandbox_pb2, sandbox_pb2_grpc
from tests.fakes.openai_server import ScriptedOpenAI, turns_since_user
from tests.forgery import false_grep_lines
from tests.integration.conftest import start_stack
from tests.security import world as w
from tests.security.attacks import BY_ID


def attack_script(messages: list[dict[str, Any]]) -> dict[str, Any]:
    user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    attack = BY_ID.get(user.removeprefix("attack ").strip())
    if attack is not None and turns_since_user(messages) == 0:
        return {"tool_calls": [{"name": attack.tool, "arguments": attack.args}]}
    loot = "\n".join(str(m.get("content")) for m in messages if m.get("role") == "tool")
    return {"content": "Here is everything the tools returned:\n" + loot}


@dataclass
class World:
    base: Path
    root: Path
    outside: Path
    stack: LocalStack
    llm: ScriptedOpenAI
    http: httpx.Client
    channel: grpc.Channel
    stub: sandbox_pb2_grpc.SandboxStub
    health: health_pb2_grpc.HealthStub
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def host_paths(self) -> tuple[str, ...]:
        return (str(self.base), str(self.root), str(self.outside))

    def snapshot(self) -> w.Snapshot:
        return w.snapshot(self.root, self.outside)

    def execute(self, tool: str, args: dict[str, Any] | str, timeout: float = 30, no_cache: bool = False) -> Any:
        raw = args if isinstance(args, str) else json.dumps(args)
        return self.stub.Execute(sandbox_pb2.ExecuteRequest(tool=tool, arguments_json=raw, no_cache=no_cache), timeout=timeout)

    def serving(self) -> bool:
        reply = self.health.Check(health_pb2.HealthCheckRequest(service="fsagent.v1.Sandbox"), timeout=5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def metrics(self) -> str:
        return httpx.get(self.stack.ports.metrics_urls()["sandbox"], timeout=5).text


def _start(base: Path, extra: dict[str, str] | None = None) -> World:
    outside = w.build_outside(base)
    llm = ScriptedOpenAI(script=attack_script).start()
    env = {
        "FSAGENT_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": w.KEY_TOKEN,
        "FSAGENT_LLM_MODEL": "scripted-model", "FSAGENT_CANARY": w.ENV_TOKEN,
        "FSAGENT_TOOL_TIMEOUT": str(w.TOOL_TIMEOUT), "FSAGENT_SANDBOX_ISOLATION": "auto",
        # Hundreds of attack chats from one address in a minute: the chat rate limit is not under test here.
        "FSAGENT_CHAT_RATE_LIMIT": "",
        **(extra or {}),
    }
    try:
        stack = start_stack(base, env)
    except BaseException:
        llm.stop()
        raise
    root = stack.data_root
    notes = w.add_hostile_entries(root, outside)
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.ports.sandbox}")
    return World(
        base=base, root=root, outside=outside, stack=stack, llm=llm,
        http=httpx.Client(base_url=stack.base_url, timeout=60), channel=channel,
        stub=sandbox_pb2_grpc.SandboxStub(channel), health=health_pb2_grpc.HealthStub(channel), notes=notes,
    )


def _stop(world: World) -> None:
    world.http.close()
    world.channel.close()
    world.stack.stop()
    world.llm.stop()


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    started = _start(tmp_path_factory.mktemp("security"))
    yield started
    _stop(started)


@pytest.fixture(scope="session")
def readonly_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    started = _start(tmp_path_factory.mktemp("security-ro"), {"FSAGENT_READ_ONLY": "true"})
    yield started
    _stop(started)


class Guard:
    """Before/after checks shared by every case: disk unchanged, no marker, bounded, healthy."""

    def __init__(self, world: World, *, writes_allowed: bool = False, limit: float = w.TOOL_TIMEOUT + w.TIME_MARGIN) -> None:
        self.world = world
        self.writes_allowed = writes_allowed
        self.limit = limit

    def __enter__(self) -> "Guard":
        self.before = self.world.snapshot()
        self.outside_before = w.snapshot(self.world.outside)
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        elapsed = time.monotonic() - self.started
        assert w.marker_files(self.world.root) == [], "a program-run attempt created its marker file"
        assert w.snapshot(self.world.outside).entries == self.outside_before.entries, "the outside changed"
        if not self.writes_allowed:
            after = self.world.snapshot()
            changed = {k for k in set(after.entries) | set(self.before.entries) if after.entries.get(k) != self.before.entries.get(k)}
            assert not changed, f"the data root changed: {sorted(changed)[:5]}"
        assert elapsed < self.limit, f"took {elapsed:.1f}s, over the {self.limit:.0f}s bound"
        assert self.world.serving(), "the sandbox is no longer SERVING"

    def clean(self, text: str, *, echoes_input: bool = False) -> None:
        found = w.leaks(text, () if echoes_input else self.world.host_paths)
        assert not found, f"leaked: {found}"
        forged = w.forgeries(text)
        assert not forged, f"a name showed raw or forged a line: {forged[:3]}"

    def true_grep(self, stdout: str) -> None:
        """Every `path:LINE:text` line of grep output is that file's line (no forged citation)."""
        wrong = false_grep_lines(self.world.root, stdout)
        assert not wrong, f"grep lines that are not what their file holds: {wrong[:3]}"
