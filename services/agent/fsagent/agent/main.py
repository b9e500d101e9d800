"""Entry point of the agent service (`fsagent-agent`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

import grpc

from fsagent.agent.llm import build_provider
from fsagent.agent.llm.openai_provider import ConfigurationError
from fsagent.agent.loop import Agent
from fsagent.agent.server import AgentServicer
from fsagent.agent.tracing import AgentTracer
from fsagent.common import grpcutil, lifecycle
from fsagent.common.settings import Settings, get_settings
from fsagent.v1 import agent_pb2_grpc, cache_pb2_grpc, sandbox_pb2_grpc

log = logging.getLogger("fsagent.agent")

SERVICE = "agent"


async def serve(settings: Settings) -> None:
    try:
        llm = build_provider(settings)
    except ConfigurationError as exc:
        raise SystemExit(f"fsagent-agent: {exc}") from None
    log.info(
        "model configured",
        extra={"provider": llm.provider, "model": llm.model, "max_iterations": settings.max_iterations},
    )

    async def setup(server: grpc.aio.Server) -> Sequence[lifecycle.Cleanup]:
        sandbox_channel = grpcutil.channel(settings.sandbox_addr)
        cache_channel = grpcutil.channel(settings.cache_addr)
        tracer = AgentTracer(settings)
        agent = Agent(
            settings, llm, sandbox_pb2_grpc.SandboxStub(sandbox_channel), cache_pb2_grpc.CacheStub(cache_channel),
            tracer=tracer,
        )
        agent_pb2_grpc.add_AgentServicer_to_server(
            AgentServicer(agent, settings, {"cache": cache_channel, "sandbox": sandbox_channel}), server
        )

        async def close_channels() -> None:
            await sandbox_channel.close()
            await cache_channel.close()

        async def flush_traces() -> None:
            # Bounded: a slow or unreachable Langfuse must not hold the pod past its grace period.
            await asyncio.to_thread(tracer.shutdown, min(5.0, settings.shutdown_grace))

        return [llm.aclose, close_channels, flush_traces]

    _, port = lifecycle.host_port(settings.agent_addr)
    await lifecycle.serve(
        service=SERVICE,
        settings=settings,
        port=port,
        metrics_port=settings.agent_metrics_port,
        grpc_services=["fsagent.v1.Agent"],
        setup=setup,
    )


def main() -> None:
    settings = get_settings()
    lifecycle.run(SERVICE, settings, lambda: serve(settings))


if __name__ == "__main__":
    main()
