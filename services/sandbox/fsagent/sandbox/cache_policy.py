"""When caching a call pays: the fingerprint walk must cost less than a share of the tool run.

A cached call pays its fingerprint on every call, hit or miss; a hit saves the tool run. So
caching a scope pays when walk < hit_ratio x run. The hit ratio is not known in advance; the rule
asks for walk <= RATIO x run (RATIO = 0.5: caching pays as soon as half the calls hit), with both
costs measured in this process per (tool, scope) as calls come:

  - file targets (cat, head, tail, preview, wc, ls of a file) and depth-0 scopes: always cached,
    their fingerprint is one lstat plus a hash of at most 64 KB;
  - a scope whose fingerprint a memo can give without walking (fsagent.sandbox.scope_memo):
    cached, the fingerprint is nearly free;
  - a scope seen for the first time: cached (both costs measured) until each cost has been
    measured MIN_SAMPLES times;
  - a scope whose walk costs more than MIN_WALK_SECONDS (1 ms) and more than RATIO x its tool
    run (both averaged over the last calls): not cached ("skipped"), except
    every PROBE_EVERY-th call, which walks and caches again to re-measure (trees change, and a
    walk lets the memo take over).

docs/cache.md has the table these numbers come from (benchmarks/cache_fingerprint.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from fsagent.sandbox.tools import FpTarget

RATIO = 0.5
# A walk this cheap is within the noise of the request around it (one gRPC hop is ~0.6 ms on
# loopback): always worth it.
MIN_WALK_SECONDS = 0.001
PROBE_EVERY = 16
# Decide to skip only from at least this many measurements of each (one can be an outlier).
MIN_SAMPLES = 2
MAX_SCOPES = 4096
# Exponentially weighted: a new measurement counts for this share.
WEIGHT = 0.5

ScopeKey = tuple[str, tuple[tuple[str, int | None], ...]]


@dataclass(slots=True)
class _Costs:
    walk: float | None = None
    run: float | None = None
    walks: int = 0
    runs: int = 0
    skipped: int = 0


def _blend(old: float | None, new: float) -> float:
    return new if old is None else old + WEIGHT * (new - old)


def scope_key(tool: str, targets: Sequence[FpTarget]) -> ScopeKey | None:
    """(tool, scopes walked deeper than their own entry), or None when nothing needs a walk."""
    scopes = tuple(sorted((t.abs, t.max_depth) for t in targets if t.kind == "scope" and t.max_depth != 0))
    return (tool, scopes) if scopes else None


class CachePolicy:
    """Per-(tool, scope) costs and the decision; thread-safe, bounded (LRU over MAX_SCOPES)."""

    def __init__(
        self, ratio: float = RATIO, probe_every: int = PROBE_EVERY, max_scopes: int = MAX_SCOPES,
        min_walk: float = MIN_WALK_SECONDS,
    ) -> None:
        self.ratio = ratio
        self.min_walk = min_walk
        self.probe_every = probe_every
        self.max_scopes = max_scopes
        self._costs: OrderedDict[ScopeKey, _Costs] = OrderedDict()
        self._lock = threading.Lock()

    def should_cache(self, key: ScopeKey | None, fingerprint_is_cheap: bool) -> bool:
        if key is None or fingerprint_is_cheap:
            return True
        with self._lock:
            costs = self._costs.get(key)
            if costs is None or costs.walk is None or costs.run is None:
                return True
            if min(costs.walks, costs.runs) < MIN_SAMPLES:
                return True
            self._costs.move_to_end(key)
            if costs.walk <= max(self.min_walk, self.ratio * costs.run):
                costs.skipped = 0
                return True
            costs.skipped += 1
            return costs.skipped % self.probe_every == 0

    def record_walk(self, key: ScopeKey | None, seconds: float) -> None:
        if key is not None:
            with self._lock:
                costs = self._entry(key)
                costs.walk = _blend(costs.walk, seconds)
                costs.walks += 1

    def record_run(self, key: ScopeKey | None, seconds: float) -> None:
        if key is not None:
            with self._lock:
                costs = self._entry(key)
                costs.run = _blend(costs.run, seconds)
                costs.runs += 1

    def costs(self, key: ScopeKey) -> tuple[float | None, float | None]:
        with self._lock:
            costs = self._costs.get(key)
            return (costs.walk, costs.run) if costs else (None, None)

    def _entry(self, key: ScopeKey) -> _Costs:
        costs = self._costs.get(key)
        if costs is None:
            costs = self._costs[key] = _Costs()
            while len(self._costs) > self.max_scopes:
                self._costs.popitem(last=False)
        else:
            self._costs.move_to_end(key)
        return costs
