"""Grafana dashboards for fsagent, as code (grafana-foundation-sdk).

    uv run python monitoring/dashboards/generate.py            # write helm/fsagent/dashboards/*.json
    uv run python monitoring/dashboards/generate.py --check    # exit 1 if the committed JSON drifted

The chart ships each JSON file as a ConfigMap labelled grafana_dashboard: "1" for the
kube-prometheus-stack Grafana sidecar. Every query uses only metric names from
monitoring/catalogue.yaml (tests/deploy/test_dashboards.py checks it, and makes promtool parse each
expression). Conventions:
  - `$datasource` picks the Prometheus data source, `$namespace` the Kubernetes namespace(s);
  - jobs are the ServiceMonitors' fixed names fsagent-gateway|agent|sandbox|cache;
  - the cache's namespace label is `cache_namespace` (content|search|sessions|all) and build info's
    service label is `component`: no metric label collides with a target label;
  - rates use $__rate_interval, quantiles are histogram_quantile over sum by (le, ...) of rates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap as hm
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat as st
from grafana_foundation_sdk.builders import table as tb
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm_models
from grafana_foundation_sdk.models import prometheus as pm

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "helm" / "fsagent" / "dashboards"

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
NS = 'namespace=~"$namespace"'
RI = "$__rate_interval"
TAGS = ["fsagent"]


# --- small helpers ---------------------------------------------------------------------------------

def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> prom.Dataquery:
    query = prom.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        query = query.legend_format(legend)
    if instant:
        query = query.instant().format(pm.PromQueryFormat.TABLE)
    return query


def with_targets(panel, targets: Iterable[prom.Dataquery]):
    for i, target in enumerate(targets):
        panel = panel.with_target(target.ref_id(chr(ord("A") + i)))
    return panel


def timeseries(title: str, targets: list[prom.Dataquery], unit: str = "short", *, desc: str = "",
               stack: bool = False, w: int = 12, h: int = 8, min_val: float | None = 0) -> ts.Panel:
    panel = (
        ts.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
        .line_width(1).fill_opacity(10).show_points(cm.VisibilityMode.NEVER)
        .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    if min_val is not None:
        panel = panel.min(min_val)
    if stack:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL)).fill_opacity(40)
    return with_targets(panel, targets)


def stat(title: str, expr: str, unit: str = "short", *, desc: str = "", w: int = 4, h: int = 4,
         thresholds: list[tuple[float | None, str]] | None = None, decimals: int | None = None) -> st.Panel:
    steps = thresholds or [(None, "green")]
    panel = (
        st.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
        .graph_mode(cm.BigValueGraphMode.AREA).color_mode(cm.BigValueColorMode.VALUE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
            [dm.Threshold(value=v, color=c) for v, c in steps]))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel.with_target(q(expr))


def heat(title: str, bucket_metric: str, selector: str, unit: str = "s", *, desc: str = "",
         w: int = 12, h: int = 8) -> hm.Panel:
    expr = f"sum by (le) (increase({bucket_metric}{{{selector}}}[{RI}]))"
    return (
        hm.Panel().title(title).description(desc).datasource(DS).span(w).height(h)
        .calculate(False)
        .y_axis(hm.YAxisConfig().unit(unit))
        .color(hm.HeatmapColorOptions().mode(hm_models.HeatmapColorMode.SCHEME).scheme("Oranges"))
        .with_target(q(expr, "{{le}}").format(pm.PromQueryFormat.HEATMAP))
    )


def quantiles(bucket_metric: str, selector: str, by: str = "", qs=(0.5, 0.95, 0.99)) -> list[prom.Dataquery]:
    group = f"{by}, le" if by else "le"
    out = []
    for quant in qs:
        legend = f"p{int(quant * 100)}" + (" {{" + by.replace(", ", "}} {{") + "}}" if by else "")
        out.append(q(f"histogram_quantile({quant}, sum by ({group}) (rate({bucket_metric}{{{selector}}}[{RI}])))", legend))
    return out


def ratio(num_metric: str, num_sel: str, den_metric: str, den_sel: str, by: str = "") -> str:
    grp = f"sum by ({by}) " if by else "sum "
    return (f"{grp}(rate({num_metric}{{{num_sel}}}[{RI}]))\n/\n"
            f"{grp}(rate({den_metric}{{{den_sel}}}[{RI}]))")


def base_dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title).uid(uid).description(description).tags(TAGS).editable()
        .refresh("30s").time("now-3h", "now").timezone("browser").tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("namespace").label("Namespace").datasource(DS)
            .query("label_values(fsagent_build_info, namespace)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
        )
        .link(db.DashboardLink("fsagent dashboards").type(dm.DashboardLinkType.DASHBOARDS).tags(TAGS)
              .as_dropdown(True).include_vars(True).keep_time(True))
    )


# --- dashboards ------------------------------------------------------------------------------------

def api_dashboard() -> db.Dashboard:
    gw = f'{NS}, job="fsagent-gateway"'
    five = f'{gw}, status=~"5.."'
    return (
        base_dashboard("fsagent-api", "fsagent / API", "Gateway HTTP traffic: rate, errors, latency, sizes.")
        .with_row(db.Row("Overview"))
        .with_panel(stat("Requests/s", f"sum(rate(fsagent_http_requests_total{{{gw}}}[{RI}]))", "reqps"))
        .with_panel(stat("5xx ratio", ratio("fsagent_http_requests_total", five, "fsagent_http_requests_total", gw),
                         "percentunit", thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")]))
        .with_panel(stat("4xx ratio", ratio("fsagent_http_requests_total", f'{gw}, status=~"4.."',
                                            "fsagent_http_requests_total", gw), "percentunit"))
        .with_panel(stat("p95 latency", f"histogram_quantile(0.95, sum by (le) (rate(fsagent_http_request_duration_seconds_bucket{{{gw}}}[{RI}])))", "s"))
        .with_panel(stat("In progress", f"sum(fsagent_http_requests_in_progress{{{gw}}})"))
        .with_panel(stat("Gateway pods up", f'sum(up{{{gw}}})', thresholds=[(None, "red"), (1, "green")]))
        .with_row(db.Row("Traffic"))
        .with_panel(timeseries("Requests by route", [q(f"sum by (method, route) (rate(fsagent_http_requests_total{{{gw}}}[{RI}]))", "{{method}} {{route}}")], "reqps"))
        .with_panel(timeseries("Requests by status", [q(f"sum by (status) (rate(fsagent_http_requests_total{{{gw}}}[{RI}]))", "{{status}}")], "reqps", stack=True))
        .with_panel(timeseries("Rate limited (429 rate_limited)", [q(f"sum by (limit) (rate(fsagent_gateway_rate_limited_total{{{gw}}}[{RI}]))", "{{limit}}")], "reqps", stack=True,
                               desc="chat: over FSAGENT_CHAT_RATE_LIMIT for one API key or address; "
                               "auth: an address refused after FSAGENT_AUTH_FAILURE_LIMIT wrong API keys."))
        .with_panel(timeseries("5xx ratio by route", [q(ratio("fsagent_http_requests_total", five, "fsagent_http_requests_total", gw, by="route"), "{{route}}")], "percentunit"))
        .with_panel(timeseries("Requests in progress", [q(f"sum by (route) (fsagent_http_requests_in_progress{{{gw}}})", "{{route}}")], "short"))
        .with_row(db.Row("Latency"))
        .with_panel(timeseries("Latency (all routes)", quantiles("fsagent_http_request_duration_seconds_bucket", gw), "s"))
        .with_panel(timeseries("p95 latency by route", quantiles("fsagent_http_request_duration_seconds_bucket", gw, by="route", qs=(0.95,)), "s"))
        .with_panel(heat("Latency distribution", "fsagent_http_request_duration_seconds_bucket", gw, "s",
                         desc="Exemplars on the latency histogram carry the trace id: a slow bucket leads to its Langfuse trace."))
        .with_panel(timeseries("Request/response size p95", [
            q(f"histogram_quantile(0.95, sum by (le) (rate(fsagent_http_request_size_bytes_bucket{{{gw}}}[{RI}])))", "request p95"),
            q(f"histogram_quantile(0.95, sum by (le) (rate(fsagent_http_response_size_bytes_bucket{{{gw}}}[{RI}])))", "response p95"),
        ], "bytes"))
    )


def agent_dashboard() -> db.Dashboard:
    ag = f'{NS}, job="fsagent-agent"'
    return (
        base_dashboard("fsagent-agent", "fsagent / Agent & LLM",
                       "The agentic loop: chats, iterations, LLM calls, tokens and cost, tools, Langfuse export.")
        .with_row(db.Row("Chats"))
        .with_panel(stat("Chats/s", f"sum(rate(fsagent_agent_completions_total{{{ag}}}[{RI}]))", "reqps"))
        .with_panel(stat("Chat success (SLO 99%)",
                         "1 - (" + ratio("fsagent_agent_completions_total", ag + ', status="error"',
                                         "fsagent_agent_completions_total", ag + ', status!="cancelled"') + ")",
                         "percentunit", thresholds=[(None, "red"), (0.99, "green")], decimals=2))
        .with_panel(stat("Chats in progress", f"sum(fsagent_agent_chats_in_progress{{{ag}}})"))
        .with_panel(stat("LLM cost (range)", f"sum(increase(fsagent_llm_cost_usd_total{{{ag}}}[$__range]))", "currencyUSD", decimals=2))
        .with_panel(stat("Tokens (range)", f"sum(increase(fsagent_llm_tokens_total{{{ag}}}[$__range]))", "short"))
        .with_panel(stat("Langfuse tracing", f"max(fsagent_langfuse_enabled{{{ag}}})", "bool_on_off",
                         thresholds=[(None, "orange"), (1, "green")]))
        .with_panel(timeseries("Completions by status", [q(f"sum by (status) (rate(fsagent_agent_completions_total{{{ag}}}[{RI}]))", "{{status}}")], "reqps", stack=True))
        .with_panel(timeseries("Chat duration by status (p95)", quantiles("fsagent_agent_execution_duration_seconds_bucket", ag, by="status", qs=(0.95,)), "s"))
        .with_panel(timeseries("Iterations per chat", [
            q(f"sum(rate(fsagent_agent_iterations_sum{{{ag}}}[{RI}])) / sum(rate(fsagent_agent_iterations_count{{{ag}}}[{RI}]))", "mean"),
            q(f"histogram_quantile(0.95, sum by (le) (rate(fsagent_agent_iterations_bucket{{{ag}}}[{RI}])))", "p95"),
        ], "short"))
        .with_panel(timeseries("Session length (messages)", quantiles("fsagent_session_messages_bucket", ag, qs=(0.5, 0.95)), "short"))
        .with_row(db.Row("LLM"))
        .with_panel(timeseries("LLM calls by model and status", [q(f"sum by (provider, model, status) (rate(fsagent_llm_calls_total{{{ag}}}[{RI}]))", "{{provider}}/{{model}} {{status}}")], "reqps"))
        .with_panel(timeseries("LLM latency p95 by model", quantiles("fsagent_llm_call_duration_seconds_bucket", ag, by="provider, model", qs=(0.5, 0.95)), "s"))
        .with_panel(heat("LLM latency distribution", "fsagent_llm_call_duration_seconds_bucket", ag, "s"))
        .with_panel(timeseries("LLM error ratio", [q(ratio("fsagent_llm_calls_total", f'{ag}, status!~"success|cancelled"', "fsagent_llm_calls_total", ag, by="model"), "{{model}}")], "percentunit",
                               desc="Failed LLM calls (timeout, connection, rate_limited, upstream, auth, bad_request, error) over all calls."))
        .with_row(db.Row("Tokens and cost"))
        .with_panel(timeseries("Tokens/s by type", [q(f"sum by (type) (rate(fsagent_llm_tokens_total{{{ag}}}[{RI}]))", "{{type}}")], "short", stack=True))
        .with_panel(timeseries("Tokens/s by model", [q(f"sum by (provider, model) (rate(fsagent_llm_tokens_total{{{ag}}}[{RI}]))", "{{provider}}/{{model}}")], "short", stack=True))
        .with_panel(timeseries("Cost per hour by model", [q(f"sum by (provider, model) (rate(fsagent_llm_cost_usd_total{{{ag}}}[{RI}])) * 3600", "{{provider}}/{{model}}")], "currencyUSD", stack=True))
        .with_panel(timeseries("Tokens per request", quantiles("fsagent_llm_tokens_per_request_bucket", ag, by="type", qs=(0.5, 0.95)), "short"))
        .with_row(db.Row("Tools"))
        .with_panel(timeseries("Tool calls by tool and status", [q(f"sum by (tool, status) (rate(fsagent_tool_executions_total{{{ag}}}[{RI}]))", "{{tool}} {{status}}")], "reqps", stack=True))
        .with_panel(timeseries("Tool latency p95 (as the agent sees it)", quantiles("fsagent_tool_execution_duration_seconds_bucket", ag, by="tool", qs=(0.95,)), "s"))
        .with_panel(timeseries("Tool batches: parallel vs sequential", [q(f"sum by (mode) (rate(fsagent_tool_batches_total{{{ag}}}[{RI}]))", "{{mode}}")], "ops", stack=True))
        .with_panel(timeseries("Tool calls not run (caps)", [q(f"sum by (limit) (rate(fsagent_tool_calls_capped_total{{{ag}}}[{RI}]))", "{{limit}}")], "ops", stack=True,
                               desc="Tool calls the model asked for past FSAGENT_MAX_TOOL_CALLS_PER_TURN (turn) or "
                               "FSAGENT_MAX_TOOL_CALLS_PER_CHAT (chat): not run; the answer carries the warning tool_calls_capped."))
        .with_panel(timeseries("Langfuse span export", [q(f"sum by (result) (rate(fsagent_langfuse_export_spans_total{{{ag}}}[{RI}]))", "{{result}}")], "ops", stack=True))
        .with_panel(timeseries("Session store errors", [q(f"sum by (operation) (rate(fsagent_session_errors_total{{{ag}}}[{RI}]))", "{{operation}}")], "ops", stack=True,
                               desc="Session loads and saves that failed: a failed load refuses the turn (history_unavailable), "
                               "a failed save answers with the warning history_not_saved."))
    )


def cache_dashboard() -> db.Dashboard:
    ca = f'{NS}, job="fsagent-cache"'
    sb = f'{NS}, job="fsagent-sandbox"'
    tool_ns = 'cache_namespace=~"content|search"'
    return (
        base_dashboard("fsagent-cache", "fsagent / Cache",
                       "The diskcache service: hit ratio, size against the limit, entries, invalidations, latency.")
        .with_row(db.Row("Overview"))
        .with_panel(stat("Tool-result hit ratio",
                         ratio("fsagent_sandbox_cache_lookups_total", f'{sb}, result="hit"',
                               "fsagent_sandbox_cache_lookups_total", f'{sb}, result!="skipped"'),
                         "percentunit", thresholds=[(None, "orange"), (0.5, "green")],
                         desc="Hits over lookups, where tool calls look results up (the sandbox, whose in-process tier answers "
                              "repeated hits without asking the cache service). The alert FsagentLowCacheHitRate uses the same ratio."))
        .with_panel(stat("Cache service hit ratio (tool results)",
                         ratio("fsagent_cache_operations_total", f'{ca}, operation="get", result="hit", {tool_ns}',
                               "fsagent_cache_operations_total", f'{ca}, operation="get", {tool_ns}'),
                         "percentunit", desc="Gets that reach the cache service: the sandbox's in-process misses."))
        .with_panel(stat("Size / limit", f"sum(fsagent_cache_size_bytes{{{ca}}}) / max(fsagent_cache_size_limit_bytes{{{ca}}})",
                         "percentunit", thresholds=[(None, "green"), (0.8, "orange"), (0.95, "red")]))
        .with_panel(stat("Entries", f"sum(fsagent_cache_entries{{{ca}}})"))
        .with_panel(stat("Active sessions", f"sum(fsagent_sessions_active{{{ca}}})"))
        .with_panel(stat("Invalidations/s", f"sum(rate(fsagent_cache_invalidations_total{{{ca}}}[{RI}]))", "ops"))
        .with_row(db.Row("Hits and operations"))
        .with_panel(timeseries("Hit ratio by cache namespace", [q(ratio(
            "fsagent_cache_operations_total", f'{ca}, operation="get", result="hit"',
            "fsagent_cache_operations_total", f'{ca}, operation="get"', by="cache_namespace"), "{{cache_namespace}}")],
            "percentunit"))
        .with_panel(timeseries("Sandbox cache lookups by result", [
            q(f"sum by (result) (rate(fsagent_sandbox_cache_lookups_total{{{sb}}}[{RI}]))", "{{result}}"),
            q(f"sum(rate(fsagent_sandbox_cache_local_hits_total{{{sb}}}[{RI}]))", "of the hits: in-process tier"),
        ], "ops", desc="Hits answered by the sandbox's in-process tier are also counted as hits."))
        .with_panel(timeseries("Operations by operation and result", [q(f"sum by (operation, result) (rate(fsagent_cache_operations_total{{{ca}}}[{RI}]))", "{{operation}} {{result}}")], "ops"))
        .with_panel(timeseries("Invalidations by reason", [q(f"sum by (reason) (rate(fsagent_cache_invalidations_total{{{ca}}}[{RI}]))", "{{reason}}")], "ops", stack=True))
        .with_panel(timeseries("Sandbox cache write errors", [q(f"sum by (operation) (rate(fsagent_sandbox_cache_errors_total{{{sb}}}[{RI}]))", "{{operation}}")], "ops", stack=True,
                               desc="Cache puts and invalidations the sandbox could not make; tool calls still succeed."))
        .with_row(db.Row("Storage"))
        .with_panel(timeseries("Size by cache namespace vs limit", [
            q(f"sum by (cache_namespace) (fsagent_cache_size_bytes{{{ca}}})", "{{cache_namespace}}"),
            q(f"max(fsagent_cache_size_limit_bytes{{{ca}}})", "limit"),
            q(f"max(fsagent_cache_volume_bytes{{{ca}}})", "on disk"),
            q(f"max(fsagent_cache_quarantine_bytes{{{ca}}})", "quarantine (outside the limit)"),
        ], "bytes"))
        .with_panel(timeseries("Entries by cache namespace", [q(f"sum by (cache_namespace) (fsagent_cache_entries{{{ca}}})", "{{cache_namespace}}")], "short", stack=True))
        .with_panel(timeseries("Damaged stores", [
            q(f"max(fsagent_cache_quarantined_stores{{{ca}}})", "kept in quarantine"),
            q(f"sum by (reason) (increase(fsagent_cache_store_repairs_total{{{ca}}}[{RI}]))", "repaired: {{reason}}"),
            q(f"sum(increase(fsagent_cache_sessions_recovered_total{{{ca}}}[{RI}]))", "sessions recovered"),
        ], "short", desc="A damaged store is moved to quarantine/ on the cache volume and replaced by a fresh one holding the "
                         "sessions that could be read (docs/cache.md, Damage and quarantine). The alert "
                         "FsagentCacheStoreQuarantined fires while one is kept."))
        .with_row(db.Row("Latency"))
        .with_panel(timeseries("Operation latency p95", quantiles("fsagent_cache_operation_duration_seconds_bucket", ca, by="operation", qs=(0.95,)), "s"))
        .with_panel(heat("Operation latency distribution", "fsagent_cache_operation_duration_seconds_bucket", ca, "s"))
    )


def sandbox_dashboard() -> db.Dashboard:
    sb = f'{NS}, job="fsagent-sandbox"'
    return (
        base_dashboard("fsagent-sandbox", "fsagent / Sandbox",
                       "Tool execution over the data volume: outcomes, latency, timeouts, security blocks, documents.")
        .with_row(db.Row("Overview"))
        .with_panel(stat("Executions/s", f"sum(rate(fsagent_sandbox_executions_total{{{sb}}}[{RI}]))", "ops"))
        .with_panel(stat("Error ratio", ratio("fsagent_sandbox_executions_total", f'{sb}, status=~"error|timeout"', "fsagent_sandbox_executions_total", sb),
                         "percentunit", thresholds=[(None, "green"), (0.05, "orange"), (0.2, "red")]))
        .with_panel(stat("Security blocks (range)", f"sum(increase(fsagent_sandbox_security_blocks_total{{{sb}}}[$__range]))",
                         thresholds=[(None, "green"), (1, "orange"), (50, "red")]))
        .with_panel(stat("Timeouts (range)", f"sum(increase(fsagent_sandbox_timeouts_total{{{sb}}}[$__range]))",
                         thresholds=[(None, "green"), (1, "orange")]))
        .with_panel(stat("p95 execution", f"histogram_quantile(0.95, sum by (le) (rate(fsagent_sandbox_execution_duration_seconds_bucket{{{sb}}}[{RI}])))", "s"))
        .with_panel(stat("Document writes/s", f'sum(rate(fsagent_documents_operations_total{{{sb}, operation=~"write|delete|upload"}}[{RI}]))', "ops"))
        .with_row(db.Row("Executions"))
        .with_panel(timeseries("Executions by tool and status", [q(f"sum by (tool, status) (rate(fsagent_sandbox_executions_total{{{sb}}}[{RI}]))", "{{tool}} {{status}}")], "ops", stack=True))
        .with_panel(timeseries("Execution latency p95 by tool", quantiles("fsagent_sandbox_execution_duration_seconds_bucket", sb, by="tool", qs=(0.95,)), "s"))
        .with_panel(heat("Execution latency distribution", "fsagent_sandbox_execution_duration_seconds_bucket", sb, "s"))
        .with_panel(timeseries("Timeouts by tool", [q(f"sum by (tool) (rate(fsagent_sandbox_timeouts_total{{{sb}}}[{RI}]))", "{{tool}}")], "ops"))
        .with_panel(timeseries("Fingerprint latency p95 by tool", quantiles("fsagent_sandbox_fingerprint_duration_seconds_bucket", sb, by="tool", qs=(0.95,)), "s",
                               desc="Stat and hash of what a call reads, taken before the cache lookup."))
        .with_row(db.Row("Security and documents"))
        .with_panel(timeseries("Security blocks by type", [q(f"sum by (block_type) (rate(fsagent_sandbox_security_blocks_total{{{sb}}}[{RI}]))", "{{block_type}}")], "ops", stack=True,
                               desc="Path escapes, unknown flags and similar refusals. A surge can mean a prompt-injected model or a probing client."))
        .with_panel(timeseries("Document operations", [q(f"sum by (operation, status) (rate(fsagent_documents_operations_total{{{sb}}}[{RI}]))", "{{operation}} {{status}}")], "ops", stack=True))
        .with_panel(
            tb.Panel().title("Confinement layers in force").datasource(DS).span(12).height(6)
            .description("1 per pod and layer when the layer confines tool processes; 0 when it is unavailable there.")
            .with_target(q(f"min by (layer) (fsagent_sandbox_confinement_active{{{sb}}})", instant=True))
        )
    )


def system_dashboard() -> db.Dashboard:
    all_jobs = f'{NS}, job=~"fsagent-(gateway|agent|sandbox|cache)"'
    return (
        base_dashboard("fsagent-system", "fsagent / System & gRPC",
                       "Targets, versions, gRPC traffic between the services, and process resources.")
        .with_row(db.Row("Targets"))
        .with_panel(timeseries("Targets up by job", [q(f"sum by (job) (up{{{all_jobs}}})", "{{job}}")], "short", w=12, h=6))
        .with_panel(
            tb.Panel().title("Build info").datasource(DS).span(12).height(6)
            .with_target(q(f"max by (job, component, version, python) (fsagent_build_info{{{all_jobs}}})", instant=True))
        )
        .with_row(db.Row("gRPC server"))
        .with_panel(timeseries("Server calls by method", [q(f"sum by (job, grpc_service, grpc_method) (rate(fsagent_grpc_server_handled_total{{{all_jobs}}}[{RI}]))", "{{grpc_service}}/{{grpc_method}}")], "reqps"))
        .with_panel(timeseries("Server non-OK ratio by method", [q(ratio(
            "fsagent_grpc_server_handled_total", f'{all_jobs}, grpc_code!="OK"',
            "fsagent_grpc_server_handled_total", all_jobs, by="grpc_service, grpc_method"), "{{grpc_service}}/{{grpc_method}}")], "percentunit"))
        .with_panel(timeseries("Server codes", [q(f'sum by (grpc_code) (rate(fsagent_grpc_server_handled_total{{{all_jobs}, grpc_code!="OK"}}[{RI}]))', "{{grpc_code}}")], "reqps", stack=True))
        .with_panel(timeseries("Server latency p95 by method", quantiles("fsagent_grpc_server_handling_seconds_bucket", all_jobs, by="grpc_service, grpc_method", qs=(0.95,)), "s"))
        .with_row(db.Row("gRPC client"))
        .with_panel(timeseries("Client calls by caller and method", [q(f"sum by (job, grpc_method, grpc_code) (rate(fsagent_grpc_client_handled_total{{{all_jobs}}}[{RI}]))", "{{job}} → {{grpc_method}} {{grpc_code}}")], "reqps"))
        .with_panel(timeseries("Client latency p95 by caller and method", quantiles("fsagent_grpc_client_handling_seconds_bucket", all_jobs, by="job, grpc_method", qs=(0.95,)), "s"))
        .with_row(db.Row("Processes"))
        .with_panel(timeseries("CPU by pod", [q(f"sum by (job, pod) (rate(process_cpu_seconds_total{{{all_jobs}}}[{RI}]))", "{{pod}}")], "percentunit", w=8))
        .with_panel(timeseries("Resident memory by pod", [q(f"sum by (job, pod) (process_resident_memory_bytes{{{all_jobs}}})", "{{pod}}")], "bytes", w=8))
        .with_panel(timeseries("Open file descriptors by pod", [q(f"sum by (job, pod) (process_open_fds{{{all_jobs}}})", "{{pod}}")], "short", w=8))
        .with_panel(timeseries("Python GC collections", [q(f"sum by (job, generation) (rate(python_gc_collections_total{{{all_jobs}}}[{RI}]))", "{{job}} gen {{generation}}")], "ops"))
        .with_panel(timeseries("Process restarts (start time changes)", [q(f"sum by (job) (changes(process_start_time_seconds{{{all_jobs}}}[1h]))", "{{job}}")], "short"))
    )


DASHBOARDS = {
    "fsagent-api": api_dashboard,
    "fsagent-agent": agent_dashboard,
    "fsagent-cache": cache_dashboard,
    "fsagent-sandbox": sandbox_dashboard,
    "fsagent-system": system_dashboard,
}


def render(builder: db.Dashboard) -> str:
    return json.dumps(builder.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    drift = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in DASHBOARDS.items():
        text = render(make())
        path = args.out / f"{name}.json"
        if args.check:
            if not path.exists() or path.read_text() != text:
                drift.append(path)
        else:
            path.write_text(text)
    if args.check and drift:
        print("dashboards drifted from monitoring/dashboards/generate.py; regenerate with\n"
              "  uv run python monitoring/dashboards/generate.py\n" + "\n".join(f"  {p}" for p in drift),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
