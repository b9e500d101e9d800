"""The metric catalogue, dashboards and alert rules against a real Prometheus scraping the real services.

One module-scoped run: the four services as local processes (scripted OpenAI-compatible model, Langfuse
receiver), a real Prometheus (the Debian package) scraping their four /metrics endpoints every second
with the target labels kube-prometheus-stack would attach (job fsagent-<component>, namespace), and the
chart's rule file loaded. Traffic covers chat, stream, sessions, documents (list, read, missing, write,
upload, delete, file and search streams), a refused tool call, a failing model and an unmatched route,
so that (nearly) every series exists. Then:

- catalogue, both directions, twice over: from each endpoint's own exposition (TYPE, label names, which
  service exposes what) and from what Prometheus stored (series per job, label names, metadata types);
- bounded label values: every value is allowed by the catalogue, and none looks like a session id, a
  path, a trace id or any 32-hex string;
- `promtool check metrics` is clean on each endpoint's text;
- exemplars: the OpenMetrics exposition of each service's latency histograms carries trace ids the test
  sent, and Prometheus (exemplar storage on) returns them for the gateway's latency buckets;
- every dashboard query and every recording and alert expression returns data.

How "returns data" is judged for rules (the method):
- Recording rules: the expression is queried directly, and the recorded series must exist in Prometheus.
- Alerts: an alert expression filters by its thresholds, so on a healthy run it is rightly empty. Each
  comparison against a scalar (`> 0.05`, `== 0`, `> (14.4 * 0.01)`) is rewritten to its `bool` form
  (`> bool 0.05`), which keeps every series and its labels but no longer filters by value; the rest of
  the expression (ratios, `and on (...)` matching, recorded series) is evaluated as written. A non-empty
  result therefore means every series the alert reads exists and matches across operands, and each
  result carries the namespace label the alert groups by.
- Short-run tricks, and only these: the rule groups' evaluation interval is 1s in the test copy (30s in
  the chart), and Grafana's `$__rate_interval` is 1m and `$__range` 1h. The long windows ([1h], [6h],
  [30m]) need no trick: rate() over a window with at least two samples in it returns a value, and the
  run scrapes every second.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from fsagent.cli.localstack import LocalStack
from monitoring.render_metrics_doc import allowed
from tests.fakes.langfuse_server import FakeLangfuse
from tests.fakes.openai_server import ScriptedOpenAI, three_step_script, turns_since_user
from tests.fakes.prometheus_server import PrometheusServer, prometheus_binary
from tests.integration.conftest import start_stack

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "helm" / "fsagent" / "files" / "fsagent-rules.yaml"
DASHBOARDS = REPO / "helm" / "fsagent" / "dashboards"
SERVICES = ("gateway", "agent", "sandbox", "cache")
NAMESPACE = "fsagent"
MODEL = "scripted-model"
# Grafana's variables, for a run that scrapes every second and lasts well under a minute.
GRAFANA_VARS = {"$__rate_interval": "1m", "${__range}": "1h", "$__range": "1h", "$__interval": "15s",
                "$namespace": NAMESPACE}
TARGET_LABELS = {"job", "instance", "namespace", "__name__"}
HEX32 = re.compile(r"[0-9a-f]{32}", re.I)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-", re.I)
DOC_PATHS = ("notes/metrics-probe.md", "metrics-upload.txt", "../outside.txt", "no/such/file.md")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(prometheus_binary() is None or shutil.which("promtool") is None,
                       reason="prometheus/promtool not installed (apt-get install prometheus)"),
]


def script(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The README's 3-turn chat, or a tool call the sandbox refuses when the question says REFUSE."""
    question = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    if "REFUSE" in question:
        if turns_since_user(messages) == 0:
            return {"tool_calls": [{"name": "cat", "arguments": {"path": "../outside.txt"}}]}
        return {"content": "That file is outside the documents folder."}
    return three_step_script(messages)


@dataclass
class Run:
    stack: LocalStack
    prom: PrometheusServer
    llm: ScriptedOpenAI
    trace_ids: set[str] = field(default_factory=set)
    session_ids: set[str] = field(default_factory=set)

    def text(self, service: str) -> str:
        return httpx.get(self.stack.ports.metrics_urls()[service], timeout=5).text

    def openmetrics(self, service: str) -> str:
        reply = httpx.get(self.stack.ports.metrics_urls()[service], timeout=5,
                          headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert reply.headers["content-type"].startswith("application/openmetrics-text"), service
        return reply.text


def _traceparent(run: Run) -> dict[str, str]:
    trace_id = secrets.token_hex(16)
    run.trace_ids.add(trace_id)
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


def _drive(run: Run) -> None:
    """Traffic that makes (nearly) every catalogued series exist."""
    with httpx.Client(base_url=run.stack.base_url, timeout=30) as c:
        first = c.post("/api/chat", json={"message": "What are the password rules?"}, headers=_traceparent(run))
        assert first.status_code == 200, first.text
        sid = first.json()["session_id"]
        run.session_ids.add(sid)
        again = c.post("/api/chat", json={"message": "And the password rules again?", "session_id": sid},
                       headers=_traceparent(run))
        assert again.status_code == 200, again.text
        refused = c.post("/api/chat", json={"message": "REFUSE: read the file outside"}, headers=_traceparent(run))
        assert refused.status_code == 200 and refused.json()["tool_results"], refused.text
        run.session_ids.add(refused.json()["session_id"])
        with c.stream("POST", "/api/chat/stream", json={"message": "Stream the password rules"},
                      headers=_traceparent(run)) as stream:
            body = "".join(stream.iter_text())
        assert stream.status_code == 200 and "event: done" in body, body[-500:]
        run.session_ids.update(re.findall(r'"session_id":\s*"([^"]+)"', body))

        assert c.get(f"/api/chat/sessions/{sid}").status_code == 200
        assert c.get(f"/api/chat/sessions/{sid}/history").status_code == 200

        assert c.get("/api/documents", params={"recursive": "true"}).status_code == 200
        assert c.get("/api/documents/README.md").status_code == 200
        assert c.get("/api/documents/no/such/file.md").status_code == 404
        assert c.post("/api/documents/notes/metrics-probe.md", json={"content": "probe\n"}).status_code == 201
        assert c.put("/api/documents/notes/metrics-probe.md", json={"content": "probe 2\n"}).status_code == 200
        upload = c.post("/api/documents/upload", files={"file": ("metrics-upload.txt", b"uploaded\n")},
                        data={"path": "notes"})
        assert upload.status_code == 201, upload.text
        assert c.delete("/api/documents/notes/metrics-upload.txt").status_code == 200
        with c.stream("GET", "/api/stream/file/README.md", headers=_traceparent(run)) as s:
            assert s.status_code == 200 and "event:" in "".join(s.iter_text())
        with c.stream("GET", "/api/stream/search/policies", params={"pattern": "password"},
                      headers=_traceparent(run)) as s:
            assert s.status_code == 200 and "event:" in "".join(s.iter_text())
        # A chat after the write: the sandbox's cached results for it were invalidated.
        assert c.post("/api/chat", json={"message": "What are the password rules?"},
                      headers=_traceparent(run)).status_code == 200
        assert c.delete("/api/documents/notes/metrics-probe.md").status_code == 200

        run.llm.fail_with = 503  # the model is down: a 5xx, an error completion, a non-OK gRPC code
        try:
            failed = c.post("/api/chat", json={"message": "What are the password rules?"}, headers=_traceparent(run))
        finally:
            run.llm.fail_with = None
        assert failed.status_code in (502, 503), failed.text

        assert c.get("/no/such/route").status_code == 404
        assert c.delete(f"/api/chat/sessions/{sid}").status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200


def _rules_for_test(workdir: Path) -> Path:
    """The chart's rule file with every group evaluated each second (30s in the chart)."""
    rules = yaml.safe_load(RULES.read_text().replace("__RUNBOOK_BASE_URL__", "https://runbooks.invalid/fsagent"))
    for group in rules["groups"]:
        group["interval"] = "1s"
    path = workdir / "fsagent-rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _wait_scraped_after(prom: PrometheusServer, moment: float, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = prom.query('min(timestamp(up{job=~"fsagent-.+"}))')
        if result and float(result[0]["value"][1]) > moment:
            return
        time.sleep(0.25)
    raise TimeoutError("prometheus did not scrape every target after the traffic")


def _wait_rules_evaluated(prom: PrometheusServer, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rules: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        recorded = {r["name"] for r in rules if r["type"] == "recording"}
        if rules and all(r["health"] != "unknown" for r in rules) and all(
                prom.query(name) for name in recorded):
            return rules
        time.sleep(0.25)
    return rules


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("prometheus-catalogue")
    receiver = FakeLangfuse().start()
    llm = ScriptedOpenAI(script=script).start()
    stack = start_stack(tmp, {
        "FSAGENT_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-catalogue",
        "FSAGENT_LLM_MODEL": MODEL, "FSAGENT_LLM_INPUT_COST_PER_MTOK": "2.5", "FSAGENT_LLM_OUTPUT_COST_PER_MTOK": "10",
        "LANGFUSE_PUBLIC_KEY": receiver.public_key, "LANGFUSE_SECRET_KEY": receiver.secret_key,
        "LANGFUSE_BASE_URL": receiver.base_url, "LANGFUSE_FLUSH_INTERVAL": "0.2", "LANGFUSE_TIMEOUT": "2",
        "FSAGENT_LOG_LEVEL": "WARNING",
    })
    prom = None
    try:
        targets = {f"fsagent-{s}": url.removeprefix("http://").removesuffix("/metrics")
                   for s, url in stack.ports.metrics_urls().items()}
        prom = PrometheusServer(workdir=tmp / "prometheus", targets=targets, scrape_interval="1s",
                                rule_files=[_rules_for_test(tmp)], target_labels={"namespace": NAMESPACE},
                                extra_args=["--enable-feature=exemplar-storage"])
        prom.start()
        prom.wait_for_targets_up(timeout=20, scrapes=1)
        state = Run(stack=stack, prom=prom, llm=llm)
        _drive(state)
        _wait_scraped_after(prom, time.time() + 1.0)  # a scrape that started after the last request
        yield state
    finally:
        if prom is not None:
            prom.stop()
        stack.stop()
        llm.stop()
        receiver.stop()




# --- helpers ------------------------------------------------------------------------------------------

def catalogue_name(family_name: str, family_type: str) -> str:
    # prometheus_client's parser names a counter family without its _total suffix.
    return family_name + "_total" if family_type == "counter" and not family_name.endswith("_total") else family_name


def base_metric(series_name: str, by_name: dict[str, dict[str, Any]]) -> str | None:
    if series_name in by_name:
        return series_name
    for suffix in ("_bucket", "_sum", "_count"):
        base = series_name.removesuffix(suffix)
        if base != series_name and by_name.get(base, {}).get("type") == "histogram":
            return base
    return None


def value_allowed(metric: dict[str, Any], label: str, value: str, catalogue: dict[str, Any]) -> bool:
    values = allowed(metric, label, catalogue)
    if values is None:
        return False
    if isinstance(values, str):
        return re.fullmatch(values, value) is not None
    return value in values


def unbounded_reason(value: str, run: Run) -> str | None:
    if HEX32.search(value):
        return "a 32-hex string"
    if UUID.search(value):
        return "a uuid"
    if any(sid in value for sid in run.session_ids):
        return "a session id"
    if any(path in value for path in DOC_PATHS):
        return "a document path"
    if len(value) > 100:
        return "too long"
    return None


def grafana(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
    return expr


_SCALAR = r"(?:\d+(?:\.\d+)?|\([\d.\s*+/-]+\))"
_COMPARISON = re.compile(rf"(==|!=|>=|<=|>|<)\s*(?!bool\b)({_SCALAR})")


def without_threshold(expr: str) -> str:
    """`x > 0.05` -> `x > bool 0.05`: every series of x is kept (as 0 or 1) whatever its value."""
    return _COMPARISON.sub(r"\1 bool \2", expr)


# --- targets and catalogue -------------------------------------------------------------------------------

def test_every_target_is_up(run: Run) -> None:
    up = {r["metric"]["job"]: r["value"][1] for r in run.prom.query("up")}
    assert up == {f"fsagent-{s}": "1" for s in SERVICES}


def test_each_endpoint_exposes_exactly_its_catalogue(run: Run, catalogue: dict[str, Any],
                                                     by_name: dict[str, dict[str, Any]]) -> None:
    defaults = {m["name"]: m for m in catalogue["default_collectors"]}
    problems: list[str] = []
    for service in SERVICES:
        exposed: dict[str, Any] = {}
        for fam in parse_text(run.text(service)):
            name = catalogue_name(fam.name, fam.type)
            if not name.startswith("fsagent_"):
                if name not in defaults or defaults[name]["type"] != fam.type:
                    problems.append(f"{service}: {name} ({fam.type}) is not a catalogued default collector")
                continue
            if name not in by_name:
                problems.append(f"{service}: exposes {name}, which is not in monitoring/catalogue.yaml")
                continue
            entry = by_name[name]
            if fam.type != entry["type"]:
                problems.append(f"{service}: {name} has TYPE {fam.type}, catalogue says {entry['type']}")
            if fam.samples:  # a family declared by a shared module but unused here has no samples
                exposed[name] = fam
                for sample in fam.samples:
                    keys = set(sample.labels) - ({"le"} if sample.name.endswith("_bucket") else set())
                    if keys != set(entry["labels"]):
                        problems.append(f"{service}: {sample.name} has labels {sorted(keys)}, "
                                        f"catalogue says {sorted(entry['labels'])}")
                        break
        expected = {m["name"] for m in catalogue["metrics"] if service in m["services"]}
        for missing in sorted(expected - set(exposed)):
            problems.append(f"{service}: catalogued {missing} has no series")
        for extra in sorted(set(exposed) - expected):
            problems.append(f"{service}: exposes {extra}, catalogued for {by_name[extra]['services']}")
    assert not problems, "\n".join(problems)


def test_prometheus_stored_every_catalogue_metric_with_its_type_labels_and_jobs(
        run: Run, catalogue: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> None:
    series = run.prom.api("series", **{"match[]": '{__name__=~"fsagent_.+"}'})
    jobs: dict[str, set[str]] = {}
    problems: list[str] = []
    for labels in series:
        base = base_metric(labels["__name__"], by_name)
        if base is None:
            problems.append(f"Prometheus stored {labels['__name__']}, which is not in the catalogue")
            continue
        jobs.setdefault(base, set()).add(labels["job"])
        keys = set(labels) - TARGET_LABELS - ({"le"} if labels["__name__"].endswith("_bucket") else set())
        if keys != set(by_name[base]["labels"]):
            problems.append(f"{labels['__name__']}: labels {sorted(keys)} in Prometheus, "
                            f"catalogue says {sorted(by_name[base]['labels'])}")
    metadata = run.prom.api("metadata")
    for m in catalogue["metrics"]:
        want = {f"fsagent-{s}" for s in m["services"]}
        if jobs.get(m["name"]) != want:
            problems.append(f"{m['name']}: scraped from {sorted(jobs.get(m['name'], ()))}, catalogue says {sorted(want)}")
        # OpenMetrics names a counter family without _total; the text format with it.
        meta = metadata.get(m["name"]) or metadata.get(m["name"].removesuffix("_total"))
        if not meta or {d["type"] for d in meta} != {m["type"]}:
            problems.append(f"{m['name']}: Prometheus metadata {meta}, catalogue type {m['type']}")
    assert not problems, "\n".join(problems)


def test_label_values_are_bounded_and_allowed(run: Run, catalogue: dict[str, Any],
                                              by_name: dict[str, dict[str, Any]]) -> None:
    problems: set[str] = set()
    seen = 0
    for service in SERVICES:
        for fam in parse_text(run.text(service)):
            for sample in fam.samples:
                for label, value in sample.labels.items():
                    seen += 1
                    reason = unbounded_reason(value, run)
                    if reason:
                        problems.add(f"{service}: {fam.name}{{{label}={value!r}}} looks unbounded: {reason}")
                    base = base_metric(catalogue_name(fam.name, fam.type), by_name)
                    if base and label != "le" and not value_allowed(by_name[base], label, value, catalogue):
                        problems.add(f"{service}: {base}{{{label}={value!r}}} is not an allowed value")
    # The same over what Prometheus stored (target labels aside).
    for labels in run.prom.api("series", **{"match[]": '{__name__=~"fsagent_.+"}'}):
        base = base_metric(labels["__name__"], by_name)
        for label, value in labels.items():
            if label in TARGET_LABELS or label == "le" or base is None:
                continue
            reason = unbounded_reason(value, run)
            if reason or not value_allowed(by_name[base], label, value, catalogue):
                problems.add(f"prometheus: {base}{{{label}={value!r}}}: {reason or 'not an allowed value'}")
    assert seen > 1000
    assert not problems, "\n".join(sorted(problems))


def test_promtool_check_metrics_is_clean_on_every_endpoint(run: Run) -> None:
    promtool = shutil.which("promtool")
    assert promtool
    for service in SERVICES:
        out = subprocess.run([promtool, "check", "metrics"], input=run.text(service), capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), \
            f"{service}:\n{out.stdout}{out.stderr}"


# --- exemplars ----------------------------------------------------------------------------------------------

def test_latency_histograms_carry_the_trace_id_as_exemplar(run: Run, catalogue: dict[str, Any],
                                                           by_name: dict[str, dict[str, Any]]) -> None:
    problems: list[str] = []
    for service in SERVICES:
        ours: set[str] = set()
        for fam in parse_openmetrics(run.openmetrics(service)):
            if not fam.name.startswith("fsagent_"):
                continue
            entry = by_name.get(catalogue_name(fam.name, fam.type)) or by_name.get(fam.name)
            exemplars = [s.exemplar for s in fam.samples if s.exemplar is not None]
            if exemplars and not (entry and entry.get("exemplar")):
                problems.append(f"{service}: {fam.name} has exemplars but is not marked exemplar in the catalogue")
            for ex in exemplars:
                trace_id = ex.labels.get("trace_id", "")
                if set(ex.labels) != {"trace_id"} or not re.fullmatch(r"[0-9a-f]{32}", trace_id):
                    problems.append(f"{service}: {fam.name} exemplar {ex.labels}")
                if trace_id in run.trace_ids:
                    ours.add(fam.name)
            observed = sum(s.value for s in fam.samples if s.name.endswith("_count"))
            if entry and entry.get("exemplar") and service in entry["services"] and observed and not exemplars:
                problems.append(f"{service}: {fam.name} observed {observed:g} times but carries no exemplar")
        if not ours:
            problems.append(f"{service}: no latency histogram carries a trace id this test sent")
    assert not problems, "\n".join(problems)


def test_prometheus_keeps_the_exemplars_so_a_slow_bucket_leads_to_its_trace(run: Run) -> None:
    now = time.time()
    data = run.prom.api("query_exemplars", query=f'fsagent_http_request_duration_seconds_bucket{{namespace="{NAMESPACE}"}}',
                        start=now - 600, end=now + 5)
    found = {ex["labels"].get("trace_id") for block in data for ex in block["exemplars"]}
    assert found & run.trace_ids, f"no exemplar with a trace id of this test in {sorted(found)[:5]}"


# --- dashboards and rules against Prometheus -----------------------------------------------------------------

def _dashboard_queries() -> Iterator[tuple[str, str, str]]:
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        panels = [p for top in dash["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    yield path.stem, panel["title"], target["expr"]


def test_every_dashboard_query_returns_data(run: Run) -> None:
    queries = list(_dashboard_queries())
    assert len(queries) > 60
    empty = []
    for dash, title, expr in queries:
        if not run.prom.query(grafana(expr)):
            empty.append(f"{dash} / {title}: {grafana(expr)}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    # The $namespace variable's own query: label_values(fsagent_build_info, namespace).
    values = run.prom.api("label/namespace/values", **{"match[]": "fsagent_build_info"})
    assert values == [NAMESPACE]


def test_every_rule_loads_and_evaluates_without_error(run: Run) -> None:
    rules = _wait_rules_evaluated(run.prom)
    defined = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(rules) == len(defined)
    bad = [f"{r['name']}: {r['health']} {r.get('lastError', '')}" for r in rules if r["health"] != "ok"]
    assert not bad, bad


def test_every_recording_and_alert_expression_returns_data(run: Run) -> None:
    _wait_rules_evaluated(run.prom)
    empty = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            if "record" in rule:
                exprs = [rule["expr"], rule["record"]]  # its expression, and the series Prometheus recorded
            elif "absent(" in rule["expr"]:
                # absent() is empty while all is well: what must have data is each series it watches.
                exprs = re.findall(r"absent\(([^()]*)\)", rule["expr"])
                assert exprs, f"{name}: no absent(<selector>) found"
            else:
                expr = without_threshold(rule["expr"])
                assert expr != rule["expr"], f"{name}: no threshold comparison found to neutralise"
                exprs = [expr]
            for expr in exprs:
                result = run.prom.query(expr)
                if not result:
                    empty.append(f"{name}: {' '.join(expr.split())}")
                elif any(r["metric"].get("namespace") != NAMESPACE for r in result):
                    empty.append(f"{name}: results without namespace={NAMESPACE}: {result[:2]}")
    assert not empty, "rule expressions without data:\n" + "\n".join(empty)


def test_threshold_rewrite_keeps_series_and_leaves_matchers_alone() -> None:
    assert without_threshold('sum(rate(x{status!="cancelled"}[5m])) > 0.05 and y > (14.4 * 0.01)') == \
        'sum(rate(x{status!="cancelled"}[5m])) > bool 0.05 and y > bool (14.4 * 0.01)'
    assert without_threshold("max by (job) (up) == 0") == "max by (job) (up) == bool 0"
    assert without_threshold('histogram_quantile(0.95, sum by (le) (rate(b{s=~"5.."}[5m]))) > 10') == \
        'histogram_quantile(0.95, sum by (le) (rate(b{s=~"5.."}[5m]))) > bool 10'
