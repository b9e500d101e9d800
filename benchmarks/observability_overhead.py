"""What tracing and metrics cost: end-to-end chat latency with them on vs off, and /metrics scrape time.

1. Overhead. Three local stacks on the same corpus and the same zero-latency scripted model (the
   3-turn chat of e2e_chat: a grep, two parallel reads, an answer), measured interleaved in one run
   (chat i goes to every stack in turn, rotating the order), so drift on the machine hits all alike:
     on       Langfuse tracing (the real SDK, exporting to a local receiver) and metrics
     metrics  metrics only (tracing off: no Langfuse keys)
     off      tracing off and metrics off
   There is no switch for metrics in the services; for `off` this benchmark (and only it) puts a
   sitecustomize on the services' PYTHONPATH that turns every prometheus_client update (labels(),
   inc, dec, set, observe) into a no-op, so what remains is only the instrumentation glue (timers,
   the gRPC interceptors that also propagate traces and log). Reported: p50 per stack and the ratios
   on/off (the target: <= 5 % at p50), metrics/off and on/metrics.
2. A cost estimate of the metric updates of one chat, with less noise than (1): the updates a chat
   makes, counted from the four /metrics endpoints before and after the interleaved chats, times the
   cost of each kind of update measured here in-process.
3. Scrapes. After 10,000 requests through the gateway on the `on` stack (chats plus cheap document
   and health requests, several clients at once), each service's /metrics is timed, in the Prometheus
   text format and in OpenMetrics (with exemplars). Target: <= 50 ms per scrape.

    uv run python -m benchmarks observability_overhead
    uv run python -m benchmarks.observability_overhead --chats 200 --requests 10000
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
import timeit
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.corpus import make_corpus
from benchmarks.e2e_chat import needle_script, percentiles
from benchmarks.stack import start_scripted_stack
from fsagent.cli.localstack import LocalStack
from fsagent.common.metrics import RPC_BUCKETS
from tests.fakes.langfuse_server import FakeLangfuse
from tests.fakes.openai_server import ScriptedOpenAI

QUESTION = {"message": "What is the needle code?"}

# Benchmark only: loaded by the services of the `off` stack through PYTHONPATH.
METRICS_OFF_SITECUSTOMIZE = '''\
"""fsagent benchmark: every prometheus_client update is a no-op in this process (metrics off)."""
import contextlib

from prometheus_client import metrics as _m


class _Noop:
    def inc(self, *args, **kwargs):
        return None

    dec = set = observe = inc

    def labels(self, *args, **kwargs):
        return self

    def track_inprogress(self):
        return contextlib.nullcontext()

    time = track_inprogress


_NOOP = _Noop()
_m.MetricWrapperBase.labels = lambda self, *a, **k: _NOOP
_m.Counter.inc = _Noop.inc
_m.Gauge.inc = _m.Gauge.dec = _m.Gauge.set = _Noop.inc
_m.Gauge.track_inprogress = _Noop.track_inprogress
_m.Histogram.observe = _Noop.inc
'''


def start_stack(tmp: Path, name: str, data: Path, llm: ScriptedOpenAI, env: dict[str, str]) -> LocalStack:
    return start_scripted_stack(tmp / name, data, llm, env)


def chat(client: httpx.Client) -> float:
    began = time.perf_counter()
    reply = client.post("/api/chat", json=QUESTION)
    elapsed = time.perf_counter() - began
    assert reply.status_code == 200 and reply.json()["iterations"] == 3, reply.text
    return elapsed


def scrape_all(stack: LocalStack) -> dict[str, str]:
    return {s: httpx.get(url, timeout=10).text for s, url in stack.ports.metrics_urls().items()}


# --- 2: the cost of the metric updates of one chat -----------------------------------------------------

def update_counts(before: dict[str, str], after: dict[str, str]) -> dict[str, float]:
    """Updates made between two scrapes of all four services: observes, counter incs, gauge incs/decs."""
    def totals(texts: dict[str, str]) -> dict[tuple, float]:
        out: dict[tuple, float] = {}
        for service, text in texts.items():
            for fam in text_string_to_metric_families(text):
                if not fam.name.startswith("fsagent_") or fam.type not in ("counter", "histogram"):
                    continue
                for s in fam.samples:
                    if s.name.endswith(("_total", "_count")):
                        out[(service, fam.name, fam.type, tuple(sorted(s.labels.items())))] = s.value
        return out

    b, a = totals(before), totals(after)
    counts = {"observe": 0.0, "inc": 0.0, "gauge": 0.0}
    llm_calls = completions = http = 0.0
    for key, value in a.items():
        delta = value - b.get(key, 0.0)
        _, name, kind, _ = key
        if kind == "histogram":
            counts["observe"] += delta
        elif name in ("fsagent_llm_tokens", "fsagent_llm_cost_usd", "fsagent_langfuse_export_spans",
                      "fsagent_cache_invalidations"):
            continue  # incremented by an amount, not by one: counted below
        else:
            counts["inc"] += delta
        llm_calls += delta if name == "fsagent_llm_calls" else 0
        completions += delta if name == "fsagent_agent_completions" else 0
        http += delta if name == "fsagent_http_requests" else 0
    counts["inc"] += 3 * llm_calls  # tokens (input, output) and cost, once per LLM call
    counts["gauge"] = 2 * http + 2 * completions  # the in-progress gauges go up and down once each
    return counts


def update_costs(repeat: int = 200_000) -> dict[str, float]:
    """Seconds per update, as the services make them (labels() lookup included, exemplar on observe)."""
    reg = CollectorRegistry()
    counter = Counter("bench_total", "", ["a", "b", "c"], registry=reg)
    hist = Histogram("bench_seconds", "", ["a", "b"], buckets=RPC_BUCKETS, registry=reg)
    gauge = Gauge("bench_in_progress", "", ["a", "b"], registry=reg)
    exemplar = {"trace_id": "0af7651916cd43dd8448eb211c80319c"}

    def best(stmt) -> float:  # type: ignore[no-untyped-def]
        return min(timeit.repeat(stmt, number=repeat, repeat=3)) / repeat

    return {
        "inc": best(lambda: counter.labels("GET", "/api/chat", "200").inc()),
        "observe": best(lambda: hist.labels("POST", "/api/chat").observe(0.0123, exemplar=exemplar)),
        "gauge": best(lambda: gauge.labels("POST", "/api/chat").inc()),
    }


# --- 3: scrapes after 10,000 requests -------------------------------------------------------------------

def drive(stack: LocalStack, requests: int, chats: int, workers: int) -> float:
    """`requests` gateway requests in total, `chats` of them chats, from `workers` clients."""
    others = itertools.cycle([("GET", "/api/documents", {"recursive": "true"}), ("GET", "/api/documents/area-00/topic-00/doc-00000.md", None),
                              ("GET", "/health", None), ("GET", "/api/documents/no/such.md", None)])
    plan = ["chat"] * chats + [next(others) for _ in range(requests - chats)]
    plan = [plan[i] for i in sorted(range(len(plan)), key=lambda i: (i * 7919) % len(plan))]  # mix them
    lock, index, failures = threading.Lock(), [0], [0]

    def worker() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            while True:
                with lock:
                    if index[0] >= len(plan):
                        return
                    item = plan[index[0]]
                    index[0] += 1
                if item == "chat":
                    ok = client.post("/api/chat", json=QUESTION).status_code == 200
                else:
                    method, path, params = item
                    ok = client.request(method, path, params=params).status_code in (200, 404)
                if not ok:
                    with lock:
                        failures[0] += 1

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures[0] == 0, f"{failures[0]} failed requests"
    return time.perf_counter() - began


def time_scrapes(stack: LocalStack, n: int) -> None:
    formats = {"text": {}, "openmetrics": {"Accept": "application/openmetrics-text; version=1.0.0"}}
    with httpx.Client(timeout=10) as client:
        for service, url in stack.ports.metrics_urls().items():
            for fmt, headers in formats.items():
                client.get(url, headers=headers)  # warm
                samples, size, lines = [], 0, 0
                for _ in range(n):
                    began = time.perf_counter()
                    body = client.get(url, headers=headers).content
                    samples.append(time.perf_counter() - began)
                    size = len(body)
                    lines = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
                ordered = sorted(samples)
                print(f"  {service:8} {fmt:11} p50 {statistics.median(ordered) * 1000:5.1f} ms  "
                      f"max {ordered[-1] * 1000:5.1f} ms  {size / 1024:6.1f} KiB  {lines:5d} samples"
                      + ("  OVER 50 ms" if statistics.median(ordered) > 0.05 else ""))


# --- main --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--chats", type=int, default=150, help="interleaved chats per stack")
    parser.add_argument("--requests", type=int, default=10_000, help="gateway requests before timing scrapes")
    parser.add_argument("--load-chats", type=int, default=2_000, help="how many of those requests are chats")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        data = make_corpus(tmp / "data", args.files)
        off_path = tmp / "metrics-off"
        off_path.mkdir()
        (off_path / "sitecustomize.py").write_text(METRICS_OFF_SITECUSTOMIZE)
        llm = ScriptedOpenAI(script=needle_script).start()
        receiver = FakeLangfuse().start()
        stacks: dict[str, LocalStack] = {}
        try:
            stacks["on"] = start_stack(tmp, "on", data, llm, {
                "LANGFUSE_PUBLIC_KEY": receiver.public_key, "LANGFUSE_SECRET_KEY": receiver.secret_key,
                "LANGFUSE_BASE_URL": receiver.base_url})
            stacks["metrics"] = start_stack(tmp, "metrics", data, llm, {})
            stacks["off"] = start_stack(tmp, "off", data, llm, {"PYTHONPATH": str(off_path)})
            clients = {name: httpx.Client(base_url=s.base_url, timeout=30) for name, s in stacks.items()}
            for name, client in clients.items():
                for _ in range(10):  # warm up connections and the caches
                    chat(client)
            before = scrape_all(stacks["metrics"])

            samples: dict[str, list[float]] = {name: [] for name in stacks}
            order = list(stacks)
            for i in range(args.chats):
                for name in order[i % 3:] + order[:i % 3]:
                    samples[name].append(chat(clients[name]))
            after = scrape_all(stacks["metrics"])
            assert "fsagent_http_requests_total{" not in scrape_all(stacks["off"])["gateway"], \
                "metrics are not off in the `off` stack"
            for client in clients.values():
                client.close()

            print(f"tracing and metrics overhead: {args.chats} interleaved 3-turn chats per stack "
                  f"(grep over {args.files} files, 2 parallel reads, answer; zero-latency model)")
            for name in stacks:
                print(f"  {name:8} {percentiles(samples[name])}")
            p50 = {name: statistics.median(s) for name, s in samples.items()}
            print(f"  p50 ratio on/off      {p50['on'] / p50['off']:.3f}  ({100 * (p50['on'] / p50['off'] - 1):+.1f} %, target <= +5 %)")
            print(f"  p50 ratio metrics/off {p50['metrics'] / p50['off']:.3f}  ({100 * (p50['metrics'] / p50['off'] - 1):+.1f} %: metrics alone)")
            print(f"  p50 ratio on/metrics  {p50['on'] / p50['metrics']:.3f}  ({100 * (p50['on'] / p50['metrics'] - 1):+.1f} %: tracing alone)")

            counts = {k: v / args.chats for k, v in update_counts(before, after).items()}
            costs = update_costs()
            per_chat = sum(counts[k] * costs[k] for k in counts)
            print("metric updates per chat (all four services): "
                  f"{counts['observe']:.0f} observes x {costs['observe'] * 1e6:.2f} us, "
                  f"{counts['inc']:.0f} counter incs x {costs['inc'] * 1e6:.2f} us, "
                  f"{counts['gauge']:.0f} gauge updates x {costs['gauge'] * 1e6:.2f} us "
                  f"= {per_chat * 1e6:.0f} us CPU per chat, {100 * per_chat / p50['off']:.2f} % of the p50 chat")

            wall = drive(stacks["on"], args.requests, args.load_chats, args.workers)
            print(f"/metrics scrape time after {args.requests} gateway requests ({args.load_chats} chats) "
                  f"in {wall:.0f}s, tracing and metrics on, {args.scrapes} scrapes each:")
            time_scrapes(stacks["on"], args.scrapes)
        finally:
            for stack in stacks.values():
                stack.stop()
            receiver.stop()
            llm.stop()


if __name__ == "__main__":
    main()
