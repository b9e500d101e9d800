"""End-to-end chat latency through all four services with a zero-latency scripted model.

The 3-turn chat of the README: a grep over a few hundred files, two parallel reads, an answer.
Prints p50/p90/p99 for sequential chats, then throughput and per-service CPU under concurrent load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.corpus import make_corpus
from benchmarks.stack import start_scripted_stack
from fsagent.cli.localstack import LocalStack
from tests.fakes.openai_server import ScriptedOpenAI, three_step_script


def needle_script(messages):  # type: ignore[no-untyped-def]
    """Like the README's scripted chat, but grepping for the corpus's needle lines."""
    reply = three_step_script(messages)
    if reply.get("tool_calls") and reply["tool_calls"][0]["name"] == "grep":
        reply["tool_calls"][0]["arguments"] = {"pattern": "needle code", "path": "."}
    return reply


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"p50 {pick(0.5):6.1f} ms  p90 {pick(0.9):6.1f} ms  p99 {pick(0.99):6.1f} ms  mean {statistics.mean(ordered)*1000:6.1f} ms"


def start(tmp: Path, files: int, extra_env: dict[str, str] | None = None) -> tuple[LocalStack, ScriptedOpenAI]:
    llm = ScriptedOpenAI(script=needle_script).start()
    return start_scripted_stack(tmp, make_corpus(tmp / "data", files), llm, extra_env), llm


def sequential(base: str, n: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(n):
            began = time.perf_counter()
            reply = client.post("/api/chat", json={"message": "What is the needle code?"})
            samples.append(time.perf_counter() - began)
            assert reply.status_code == 200 and reply.json()["iterations"] == 3, reply.text
    return samples


def concurrent(stack: LocalStack, workers: int, seconds: float) -> None:
    pids = {name: proc.pid for name, proc in stack.processes.items()}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before["(benchmark: clients + fake LLM)"] = cpu_seconds(os.getpid())
    count, errors, lock = [0], [0], threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            while time.monotonic() < stop:
                ok = client.post("/api/chat", json={"message": "What is the needle code?"}).status_code == 200
                with lock:
                    count[0] += ok
                    errors[0] += not ok

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    bench_cpu = cpu_seconds(os.getpid()) - before["(benchmark: clients + fake LLM)"]
    print(f"  {workers} concurrent clients for {wall:.1f}s: {count[0] / wall:6.1f} chats/s, {errors[0]} errors")
    print("  CPU used per service (100% = one core): "
          + ", ".join(f"{name} {100 * sec / wall:4.0f}%" for name, sec in used.items())
          + f"  | all four {100 * sum(used.values()) / wall:4.0f}%, benchmark process {100 * bench_cpu / wall:4.0f}%"
          + f" (machine: {os.cpu_count() * 100}%)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        stack, llm = start(Path(tmp), args.files)
        try:
            sequential(stack.base_url, 10)  # warm up connections and the cache
            print(f"e2e chat (3 turns: grep over {args.files} files, 2 parallel reads, answer; zero-latency model)")
            print(f"  sequential x{args.chats}: {percentiles(sequential(stack.base_url, args.chats))}")
            concurrent(stack, args.workers, args.seconds)
        finally:
            stack.stop()
            llm.stop()


if __name__ == "__main__":
    main()
