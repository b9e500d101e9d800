"""Rate limits of the gateway (the `limits` library, memory storage), through a real uvicorn:
chat requests per API key / per address (FSAGENT_CHAT_RATE_LIMIT) and wrong keys per address
(FSAGENT_AUTH_FAILURE_LIMIT). Each test counts what reached the (fake) agent: without the limit,
every request would have."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from fsagent.common.settings import Settings


def refused(limit: str) -> float:
    return REGISTRY.get_sample_value("fsagent_gateway_rate_limited_total", {"limit": limit}) or 0.0


def test_the_defaults_are_documented_and_on() -> None:
    settings = Settings(_env_file=None)
    assert settings.chat_rate_limit == "60/minute"
    assert settings.auth_failure_limit == "10/minute"
    assert settings.rate_limit_storage == "memory://"


@pytest.mark.parametrize("route", ["/api/chat", "/api/chat/stream"])
async def test_chat_rate_limit_per_address_when_keys_are_off(gateway, upstreams, error_shape, route):
    before = refused("chat")
    async with gateway(chat_rate_limit="3/minute") as c:
        for _ in range(3):
            r = await c.post(route, json={"message": "hi"})
            assert r.status_code == 200, r.text
        asked = len(upstreams.agent.requests)
        r = await c.post(route, json={"message": "hi"})
        body = error_shape(r, 429, "rate_limited")
        assert "FSAGENT_CHAT_RATE_LIMIT" in body["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # Both chat routes share one budget, the refused request never reached the agent.
        other = "/api/chat/stream" if route == "/api/chat" else "/api/chat"
        error_shape(await c.post(other, json={"message": "hi"}), 429, "rate_limited")
        assert len(upstreams.agent.requests) == asked
        # Other routes are not limited by it.
        assert (await c.get("/api/documents")).status_code == 200
    assert refused("chat") - before == 2


async def test_chat_rate_limit_is_per_api_key(gateway, upstreams, error_shape):
    async with gateway(api_keys="alice,bob", chat_rate_limit="2/minute") as c:
        alice, bob = {"x-api-key": "alice"}, {"authorization": "Bearer bob"}
        for _ in range(2):
            assert (await c.post("/api/chat", json={"message": "hi"}, headers=alice)).status_code == 200
        error_shape(await c.post("/api/chat", json={"message": "hi"}, headers=alice), 429, "rate_limited")
        # Same address, another key: its own budget.
        assert (await c.post("/api/chat", json={"message": "hi"}, headers=bob)).status_code == 200


async def test_an_empty_limit_turns_it_off(gateway):
    async with gateway(chat_rate_limit="") as c:
        for _ in range(70):  # over the default 60/minute
            assert (await c.post("/api/chat", json={"message": "hi"})).status_code == 200


def test_a_malformed_limit_is_refused_at_start(upstreams):
    from fsagent.gateway.app import create_app

    with pytest.raises(ValueError, match="FSAGENT_CHAT_RATE_LIMIT"):
        create_app(upstreams.settings(chat_rate_limit="lots"))


async def test_repeated_wrong_keys_from_one_address_are_refused(gateway, upstreams, error_shape):
    before = refused("auth")
    async with gateway(api_keys="right-key", auth_failure_limit="5/minute") as c:
        for _ in range(5):
            error_shape(await c.get("/api/documents", headers={"x-api-key": "guess"}), 401, "unauthorized")
        r = await c.get("/api/documents", headers={"x-api-key": "guess"})
        body = error_shape(r, 429, "rate_limited")
        assert "wrong API key" in body["message"] and 1 <= int(r.headers["retry-after"]) <= 60
        # While refused, even the right key is not looked at: guessing cannot go on.
        r = await c.get("/api/documents", headers={"x-api-key": "right-key"})
        error_shape(r, 429, "rate_limited")
        error_shape(await c.post("/api/chat", json={"message": "hi"}, headers={"x-api-key": "right-key"}), 429, "rate_limited")
        assert upstreams.agent.requests == []
    assert refused("auth") - before == 3


async def test_right_keys_never_count_as_failures(gateway):
    async with gateway(api_keys="right-key", auth_failure_limit="2/minute") as c:
        for _ in range(10):
            assert (await c.get("/api/documents", headers={"x-api-key": "right-key"})).status_code == 200
