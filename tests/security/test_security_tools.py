"""Every attack of the catalogue, twice: straight at the sandbox over gRPC, and through the
gateway's HTTP API with the scripted model making the call (the path a prompt injection takes)."""

from __future__ import annotations

import pytest

from tests.security.attacks import TOOL_ATTACKS, Attack
from tests.security.conftest import Guard, World

IDS = [a.id for a in TOOL_ATTACKS]


def test_the_catalogue_covers_every_class() -> None:
    classes = {a.klass for a in TOOL_ATTACKS}
    assert classes == {"arguments", "paths", "special_files", "output", "regex", "names"}
    assert len(TOOL_ATTACKS) >= 60


@pytest.mark.parametrize("attack", TOOL_ATTACKS, ids=IDS)
def test_grpc(world: World, attack: Attack) -> None:
    with Guard(world) as guard:
        resp = world.execute(attack.tool, attack.args)
    text = "\n".join((resp.stdout, resp.stderr, resp.error, resp.command))
    guard.clean(text, echoes_input=attack.echoes_input)
    assert resp.error_code in attack.expect, f"{attack.id}: got {resp.error_code!r} ({resp.error[:200]})"
    if attack.tool == "grep":
        guard.true_grep(resp.stdout)
    if resp.error_code:
        assert resp.exit_code != 0 and resp.error and not resp.stdout.strip() or resp.error_code == "timeout"
    if attack.check is not None and not resp.error_code:
        problem = attack.check(resp.stdout)
        assert problem is None, f"{attack.id}: {problem}"


@pytest.mark.parametrize("attack", TOOL_ATTACKS, ids=IDS)
def test_http_with_scripted_model(world: World, attack: Attack) -> None:
    seen = len(world.llm.requests)
    with Guard(world) as guard:
        reply = world.http.post("/api/chat", json={"message": f"attack {attack.id}"})
    assert reply.status_code == 200, reply.text[:500]
    guard.clean(reply.text, echoes_input=attack.echoes_input)
    # What went back to the model (the tool messages) is clean too.
    to_model = "\n".join(str(m.get("content")) for body in world.llm.requests[seen:] for m in body.get("messages", []) if m.get("role") == "tool")
    guard.clean(to_model, echoes_input=attack.echoes_input)
    body = reply.json()
    assert [c["name"] for c in body["tool_calls"]] == [attack.tool]
    (result,) = [r["result"] for r in body["tool_results"]]
    if attack.tool == "grep":
        guard.true_grep(result["stdout"])
    guard.clean(body["response"])  # the chat reply as a client reads it, line by line
    if attack.expect == ("",):
        assert result["success"], f"{attack.id}: {result['error'][:200]}"
        if attack.check is not None:
            problem = attack.check(result["stdout"])
            assert problem is None, f"{attack.id}: {problem}"
    elif "" not in attack.expect:
        assert not result["success"] and result["error"], f"{attack.id} should have been refused"
