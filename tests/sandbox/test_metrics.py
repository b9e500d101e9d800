"""The sandbox's metrics move with what happens (bounded labels only)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.sandbox.conftest import Sandbox


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_execution_metrics(sandbox: Sandbox) -> None:
    ok = value("fsagent_sandbox_executions_total", tool="cat", status="success")
    blocked = value("fsagent_sandbox_executions_total", tool="cat", status="blocked")
    outside = value("fsagent_sandbox_security_blocks_total", block_type="path_outside_root")
    flags = value("fsagent_sandbox_security_blocks_total", block_type="flag_not_allowed")
    invalid = value("fsagent_sandbox_security_blocks_total", block_type="invalid_arguments")
    unknown = value("fsagent_sandbox_executions_total", tool="unknown", status="blocked")
    hist = value("fsagent_sandbox_execution_duration_seconds_count", tool="cat")

    await sandbox.execute("cat", path="README.md")
    await sandbox.execute("cat", path="../outside/secret.txt")
    await sandbox.execute("grep", pattern="x", pre="sh")
    await sandbox.execute("grep", raw="{")
    await sandbox.execute("rm -rf /", path=".")  # an arbitrary tool name becomes the "unknown" label

    assert value("fsagent_sandbox_executions_total", tool="cat", status="success") == ok + 1
    assert value("fsagent_sandbox_executions_total", tool="cat", status="blocked") == blocked + 1
    assert value("fsagent_sandbox_security_blocks_total", block_type="path_outside_root") == outside + 1
    assert value("fsagent_sandbox_security_blocks_total", block_type="flag_not_allowed") == flags + 1
    assert value("fsagent_sandbox_security_blocks_total", block_type="invalid_arguments") == invalid + 2
    assert value("fsagent_sandbox_executions_total", tool="unknown", status="blocked") == unknown + 1
    assert value("fsagent_sandbox_execution_duration_seconds_count", tool="cat") == hist + 2
    labels = {s.labels.get("tool") for m in REGISTRY.collect() if m.name == "fsagent_sandbox_executions" for s in m.samples}
    assert "rm -rf /" not in labels
