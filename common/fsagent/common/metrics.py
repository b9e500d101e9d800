"""Metrics every service shares: build info and gRPC server/client traffic, plus the /metrics server.

Service-specific metrics live next to the service (`fsagent/<service>/metrics.py`); the full
catalogue, with types and labels, is docs/metrics.md.
"""

from __future__ import annotations

import platform
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from fsagent.common import propagation

# No `<name>_created` series next to every counter and histogram: Prometheus (before native created
# timestamps) stores them as separate gauges nobody queries, doubling the series and the scrape.
# Must run before any metric is created, which is why it is here, in the module every service
# imports first for NAMESPACE.
disable_created_metrics()

NAMESPACE = "fsagent"
VERSION = "0.1.0"

# Latency buckets from 0.5 ms: loopback gRPC hops and cache hits live well under 10 ms.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SLOW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RPC_BUCKETS = FAST_BUCKETS + (30, 60, 120, 300)
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)

# The label is `component`, not `service`: kube-prometheus-stack attaches a `service` target label
# (the Kubernetes Service) to every series, which would rename ours to exported_service.
BUILD_INFO = Gauge(
    "build_info",
    "Always 1; labels carry the component (gateway, agent, sandbox, cache), version and Python version.",
    ["component", "version", "python"],
    namespace=NAMESPACE,
)

GRPC_SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "gRPC calls completed by this server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    namespace=NAMESPACE,
)
GRPC_SERVER_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time this server took to complete a gRPC call (for streams, until the last message).",
    ["grpc_service", "grpc_method"],
    namespace=NAMESPACE,
    buckets=RPC_BUCKETS,
)
GRPC_CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "gRPC calls this service made, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    namespace=NAMESPACE,
)
GRPC_CLIENT_HANDLING = Histogram(
    "grpc_client_handling_seconds",
    "Time a gRPC call made by this service took, as seen by the caller.",
    ["grpc_service", "grpc_method"],
    namespace=NAMESPACE,
    buckets=RPC_BUCKETS,
)


def exemplar() -> dict[str, str] | None:
    """The current trace id as an exemplar, so a slow bucket leads to its trace."""
    trace_id = propagation.current_trace_id()
    return {"trace_id": trace_id} if trace_id else None


def set_build_info(component: str) -> None:
    BUILD_INFO.labels(component, VERSION, platform.python_version()).set(1)


def start_metrics_server(port: int, host: str) -> WSGIServer:
    """Serve /metrics (Prometheus text, or OpenMetrics with exemplars when asked) on a thread.

    Returns the server (its `server_port` is the bound port when `port` is 0; `shutdown()` stops it).
    Raises OSError when the port cannot be bound.
    """
    server, _thread = start_http_server(port, addr=host)
    return server


def split_method(full_method: str) -> tuple[str, str]:
    # "/fsagent.v1.Sandbox/Execute" -> ("fsagent.v1.Sandbox", "Execute")
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return service or "unknown", method or "unknown"
