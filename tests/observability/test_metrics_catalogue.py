"""monitoring/catalogue.yaml against itself, the roadmap, docs/metrics.md and the code (no processes).

The live half (every endpoint, scraped by a real Prometheus) is test_prometheus_catalogue.py; this one
checks what can be checked from the source: naming rules, the roadmap's draft names all accounted for,
the generated doc up to date, every metric defined in the services' metrics modules catalogued with
its type and labels (and nothing else catalogued), and the catalogue's allowed label values equal to
the code's own sets (tool names, routes, gRPC methods and codes, statuses, namespaces).
"""

from __future__ import annotations

import importlib
import re
import typing
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.metrics import MetricWrapperBase

from monitoring import render_metrics_doc
from monitoring.render_metrics_doc import allowed

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "agent", "sandbox", "cache")
TYPES = {"counter", "gauge", "histogram"}

# The draft metrics of reference/observability-roadmap.vi.md, section 5.3 Phase 2 (Task 2.1).
ROADMAP = {
    "http_requests_total", "http_request_duration_seconds", "http_request_size_bytes", "http_response_size_bytes",
    "agent_iterations_total", "agent_completions_total", "agent_execution_duration_seconds",
    "llm_calls_total", "llm_call_duration_seconds", "llm_tokens_total", "llm_tokens_per_request",
    "tool_executions_total", "tool_execution_duration_seconds", "parallel_tool_executions_total",
    "sequential_tool_executions_total", "cache_operations_total", "cache_size_bytes", "cache_entries_total",
    "cache_invalidations_total", "cache_operation_duration_seconds", "sandbox_executions_total",
    "sandbox_execution_duration_seconds", "sandbox_timeouts_total", "sandbox_security_blocks_total",
    "active_sessions_total", "session_messages_total", "app_info",
}




def values_of(catalogue: dict[str, Any], name: str, label: str) -> set[str]:
    metric = next(m for m in catalogue["metrics"] if m["name"] == name)
    values = allowed(metric, label, catalogue)
    assert isinstance(values, list), (name, label, values)
    return set(values)


# --- the catalogue on its own ----------------------------------------------------------------------------

def test_every_entry_is_complete_and_follows_the_naming_rules(catalogue: dict[str, Any]) -> None:
    names = [m["name"] for m in catalogue["metrics"]]
    assert len(names) == len(set(names)), "duplicate names"
    target_labels = set(catalogue["target_labels"])
    for m in catalogue["metrics"]:
        name = m["name"]
        assert set(m) <= {"name", "type", "labels", "values", "services", "help", "replaces", "change", "exemplar"}, name
        assert m["type"] in TYPES and m["help"] and m["services"], name
        assert set(m["services"]) <= set(SERVICES) and len(set(m["services"])) == len(m["services"]), name
        assert re.fullmatch(r"fsagent_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert name.endswith("_total") == (m["type"] == "counter"), f"{name}: _total only and always on counters"
        if any(word in name for word in ("duration", "latency", "handling")):
            assert name.endswith("_seconds"), f"{name}: a time is in seconds"
        if "size" in name or "volume" in name:
            assert name.endswith("_bytes"), f"{name}: a size is in bytes"
        if m.get("exemplar"):
            assert m["type"] == "histogram" and name.endswith("_seconds"), f"{name}: exemplars go on latency histograms"
        assert m["replaces"] == "new" or (isinstance(m["replaces"], list) and m["replaces"]), name
        assert len(set(m["labels"])) == len(m["labels"]), name
        assert not set(m["labels"]) & target_labels, f"{name}: label named like a target label"
        assert "le" not in m["labels"], name
        assert set(m.get("values") or {}) <= set(m["labels"]), f"{name}: values for labels it does not have"
        for label in m["labels"]:
            values = allowed(m, label, catalogue)
            assert values, f"{name}{{{label}}}: no allowed values (add them to values or label_values)"
            if isinstance(values, str):
                re.compile(values)
            else:
                assert len(values) == len(set(values)) and all(isinstance(v, str) for v in values), (name, label)


def test_the_whole_roadmap_catalogue_is_accounted_for(catalogue: dict[str, Any]) -> None:
    replaced = {r.split("{")[0] for m in catalogue["metrics"] if m["replaces"] != "new" for r in m["replaces"]}
    assert ROADMAP - replaced == set(), f"roadmap metrics with no replacement: {ROADMAP - replaced}"
    assert replaced - ROADMAP == set(), f"replaces names that are not in the roadmap: {replaced - ROADMAP}"


def test_docs_metrics_md_is_generated_from_the_catalogue(catalogue: dict[str, Any]) -> None:
    committed = (REPO / "docs" / "metrics.md").read_text()
    assert committed == render_metrics_doc.render(catalogue), \
        "docs/metrics.md drifted; run: uv run python monitoring/render_metrics_doc.py"
    for m in catalogue["metrics"]:
        assert f"`{m['name']}`" in committed
    assert render_metrics_doc.main(["--check"]) == 0


# --- the catalogue against the code --------------------------------------------------------------------------

def _defined(module_name: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) of the metrics a module defines."""
    module = importlib.import_module(module_name)
    out = {}
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            (family,) = value.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            out[name] = (family.type, set(value._labelnames))
    return out


def test_every_metric_in_the_code_is_catalogued_with_its_type_and_labels(by_name: dict[str, dict[str, Any]]) -> None:
    defined: dict[str, dict[str, tuple[str, set[str]]]] = {
        "shared": _defined("fsagent.common.metrics"),
        **{s: _defined(f"fsagent.{s}.metrics") for s in SERVICES},
    }
    # The cache's size gauges come from a collector that computes them at scrape time.
    from fsagent.cache import metrics as cache_metrics

    for family in cache_metrics.GAUGES.describe():
        defined["cache"][family.name] = (family.type, set(family._labelnames))  # type: ignore[attr-defined]

    problems = []
    seen = set()
    for where, metrics in defined.items():
        for name, (kind, labels) in metrics.items():
            seen.add(name)
            entry = by_name.get(name)
            if entry is None:
                problems.append(f"{where}: {name} is not in monitoring/catalogue.yaml")
                continue
            if kind != entry["type"] or labels != set(entry["labels"]):
                problems.append(f"{name}: code says {kind} {sorted(labels)}, catalogue {entry['type']} {sorted(entry['labels'])}")
            expected_where = "shared" if len(entry["services"]) > 1 else entry["services"][0]
            if where != expected_where:
                problems.append(f"{name}: defined in {where}, catalogue says {entry['services']}")
    for name in sorted(set(by_name) - seen):
        problems.append(f"{name} is catalogued but no metrics module defines it")
    assert not problems, "\n".join(problems)


def test_allowed_label_values_match_the_code(catalogue: dict[str, Any]) -> None:
    from fsagent.agent import metrics as agent_metrics
    from fsagent.agent.llm.base import LLMError
    from fsagent.cache import metrics as cache_metrics
    from fsagent.cache.store import NAMESPACES
    from fsagent.common.settings import Settings
    from fsagent.common.toolspec import TOOLS
    from fsagent.gateway import metrics as gateway_metrics
    from fsagent.sandbox import metrics as sandbox_metrics
    from fsagent.v1 import agent_pb2, cache_pb2, sandbox_pb2

    lv = catalogue["label_values"]
    assert set(lv["tool"]) == {*TOOLS, "unknown"}
    assert set(lv["method"]) == {*gateway_metrics._METHODS, "other"}
    assert set(lv["provider"]) == {a for a in typing.get_args(typing.get_args(
        Settings.model_fields["llm_provider"].annotation)[0])}
    assert set(lv["cache_namespace"]) == {*NAMESPACES, cache_metrics.ALL_NAMESPACES}
    assert set(lv["operation"]) == set(cache_metrics.OPERATIONS)
    assert set(lv["grpc_code"]) == {c.name for c in grpc.StatusCode}
    services = {s.full_name: [m.name for m in s.methods] for pb in (agent_pb2, sandbox_pb2, cache_pb2)
                for s in pb.DESCRIPTOR.services_by_name.values()}
    assert set(lv["grpc_service"]) == {*services, "grpc.health.v1.Health", "unknown"}
    assert set(lv["grpc_method"]) == {m for ms in services.values() for m in ms} | {"Check", "Watch", "unknown"}
    assert set(lv["route"]) == _route_templates() | {"unmatched"}

    assert values_of(catalogue, "fsagent_agent_completions_total", "status") == {
        agent_metrics.COMPLETED, agent_metrics.MAX_ITERATIONS, agent_metrics.ERROR, agent_metrics.CANCELLED}
    assert LLMError.RETRYABLE <= values_of(catalogue, "fsagent_llm_calls_total", "status")
    assert values_of(catalogue, "fsagent_sandbox_executions_total", "status") == set(sandbox_metrics.STATUSES)
    assert values_of(catalogue, "fsagent_sandbox_security_blocks_total", "block_type") == set(sandbox_metrics.BLOCK_TYPES)
    assert values_of(catalogue, "fsagent_sandbox_cache_lookups_total", "result") == set(sandbox_metrics.CACHE_RESULTS)
    assert values_of(catalogue, "fsagent_documents_operations_total", "status") == {c.name.lower() for c in grpc.StatusCode}
    if hasattr(sandbox_metrics, "CONFINEMENT_LAYERS"):
        assert values_of(catalogue, "fsagent_sandbox_confinement_active", "layer") == set(sandbox_metrics.CONFINEMENT_LAYERS)
    assert values_of(catalogue, "fsagent_cache_operations_total", "result") == set(cache_metrics.RESULTS)
    assert values_of(catalogue, "fsagent_cache_invalidations_total", "reason") == set(cache_metrics.INVALIDATION_REASONS)
    from fsagent.cache import repair

    assert values_of(catalogue, "fsagent_cache_store_repairs_total", "reason") == set(cache_metrics.REPAIR_REASONS) \
        == set(repair.REASONS)


def _route_templates() -> set[str]:
    from fsagent.gateway.app import create_app

    paths = set()
    for route in create_app().routes:
        router = getattr(route, "original_router", None)  # an included router (FastAPI >= 0.120)
        for r in (router.routes if router is not None else [route]):
            paths.add(r.path)
    return paths
