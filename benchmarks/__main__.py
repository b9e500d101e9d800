"""Run every benchmark, or the ones named: `python -m benchmarks [e2e_chat ...]`."""

from __future__ import annotations

import importlib
import sys

ALL = ["e2e_chat", "observability_overhead", "cache_fingerprint", "cache_hits", "sandbox_tools"]


def main() -> None:
    names = sys.argv[1:] or ALL
    for name in names:
        if name not in ALL:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(ALL)}")
        print(f"\n=== {name} ===", flush=True)
        importlib.import_module(f"benchmarks.{name}").main([])


if __name__ == "__main__":
    main()
