"""Client-side load balancing: one channel spreads calls over every resolved address.

A ClusterIP Service balances connections, not calls; the chart points clients at headless Services
(dns:///...) and grpcutil.CHANNEL_OPTIONS picks round_robin, so every replica gets calls. With the
default pick_first policy every call below would land on the first server.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fsagent.v1 import cache_pb2, cache_pb2_grpc

from fsagent.common import grpcutil, lifecycle
from fsagent.common.settings import Settings

pytestmark = pytest.mark.timeout(10)


class _NamedCache(cache_pb2_grpc.CacheServicer):
    """Answers Stats with its own name, so the test can see which server took the call."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def Stats(self, request: cache_pb2.StatsRequest, context: grpc.aio.ServicerContext) -> cache_pb2.StatsResponse:
        return cache_pb2.StatsResponse(directory=self.name)


async def _start(name: str) -> tuple[grpc.aio.Server, int]:
    server = grpcutil.server()
    cache_pb2_grpc.add_CacheServicer_to_server(_NamedCache(name), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_one_channel_spreads_calls_over_all_servers() -> None:
    (first, p1), (second, p2) = await asyncio.gather(_start("one"), _start("two"))
    chan = grpcutil.channel(f"ipv4:127.0.0.1:{p1},127.0.0.1:{p2}")
    try:
        stub = cache_pb2_grpc.CacheStub(chan)
        answers = [
            (await stub.Stats(cache_pb2.StatsRequest(), timeout=2, wait_for_ready=True)).directory
            for _ in range(20)
        ]
    finally:
        await chan.close()
        await asyncio.gather(first.stop(None), second.stop(None))
    assert set(answers) == {"one", "two"}
    # round_robin alternates over ready subchannels: neither server is starved.
    assert min(answers.count("one"), answers.count("two")) >= 5


def test_channel_options_pick_round_robin() -> None:
    assert ("grpc.lb_policy_name", "round_robin") in grpcutil.CHANNEL_OPTIONS


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("dns:///fsagent-agent-headless.ns.svc:50051", ("fsagent-agent-headless.ns.svc", 50051)),
        ("dns://8.8.8.8/fsagent-sandbox-headless.ns.svc:50052", ("fsagent-sandbox-headless.ns.svc", 50052)),
        ("fsagent-cache:50053", ("fsagent-cache", 50053)),
        (":50051", ("127.0.0.1", 50051)),
    ],
)
def test_host_port_parses_plain_and_dns_targets(address: str, expected: tuple[str, int]) -> None:
    assert lifecycle.host_port(address) == expected


def test_servers_recycle_connections_after_the_longest_chat() -> None:
    options = dict(lifecycle.connection_age_options(Settings(chat_timeout=120)))
    assert options["grpc.max_connection_age_ms"] == 300_000
    # A GOAWAY must never cut a running chat stream: the grace outlasts chat_timeout.
    assert options["grpc.max_connection_age_grace_ms"] == 150_000
