"""Metrics of the cache service (the shared gRPC and build metrics come from fsagent.common.metrics).

Counters and the latency histogram are updated by the servicer on every call. The size gauges are
computed at scrape time by a collector, in the metrics server's thread, from one aggregate query
(CacheStore.stats), and remembered for a couple of seconds; nothing is aggregated per Get. Repairs of
a damaged store are counted by the store (record_repair); the quarantine gauges come from a walk of
<cache dir>/quarantine, redone only when that directory changed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Iterable

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fsagent.common import metrics as common_metrics
from fsagent.common.metrics import FAST_BUCKETS, NAMESPACE

if TYPE_CHECKING:
    from fsagent.cache.store import CacheStore, Stats

log = logging.getLogger(__name__)

OPERATIONS = ("get", "put", "invalidate", "clear", "session_get", "session_append", "session_delete")
RESULTS = ("hit", "miss", "stale", "stored", "skipped", "ok", "error")
INVALIDATION_REASONS = ("document_write", "document_delete", "manual", "other")
# Label for operations that span namespaces (invalidate, clear of everything).
ALL_NAMESPACES = "all"
# Why a store was repaired: SQLite said "file is not a database" (the header), or "database disk
# image is malformed" (any other damage, also what PRAGMA quick_check finds at start), or its
# write-ahead log had no valid header at start (SQLite would have dropped it silently).
REPAIR_REASONS = ("not_a_database", "malformed", "damaged_wal")

# The cache namespace label is `cache_namespace`, not `namespace`: kube-prometheus-stack attaches the
# Kubernetes namespace as `namespace` to every series, which would rename ours to exported_namespace.
OPERATIONS_TOTAL = Counter(
    "cache_operations_total",
    "Cache operations by operation, cache namespace and result (hit, miss, stale, stored, skipped, ok, error).",
    ["operation", "cache_namespace", "result"],
    namespace=NAMESPACE,
)
OPERATION_DURATION = Histogram(
    "cache_operation_duration_seconds",
    "Time the cache service spent on one operation, including the store's SQLite work.",
    ["operation", "cache_namespace"],
    namespace=NAMESPACE,
    buckets=FAST_BUCKETS,
)
INVALIDATIONS_TOTAL = Counter(
    "cache_invalidations_total",
    "Cache entries removed by invalidation, by reason (document_write, document_delete, manual, other).",
    ["reason"],
    namespace=NAMESPACE,
)


STORE_REPAIRS_TOTAL = Counter(
    "cache_store_repairs_total",
    "Damaged cache stores moved to quarantine and replaced by a fresh one, by reason (not_a_database, malformed, damaged_wal).",
    ["reason"],
    namespace=NAMESPACE,
)
SESSIONS_RECOVERED_TOTAL = Counter(
    "cache_sessions_recovered_total",
    "Sessions copied from a damaged cache store into its fresh replacement.",
    namespace=NAMESPACE,
)


def _initialise() -> None:
    # Series exist (at 0) from the start, like the agent's and the sandbox's, so hit ratios, rates
    # and alerts see them before the first hit or invalidation.
    from fsagent.cache.store import ENTRY_NAMESPACES, HIT, MISS, STALE

    for namespace in ENTRY_NAMESPACES:
        for result in (HIT, MISS, STALE):
            OPERATIONS_TOTAL.labels("get", namespace, result)
        OPERATION_DURATION.labels("get", namespace)
    for reason in INVALIDATION_REASONS:
        INVALIDATIONS_TOTAL.labels(reason)
    for reason in REPAIR_REASONS:
        STORE_REPAIRS_TOTAL.labels(reason)


_initialise()


def reason_label(reason: str) -> str:
    return reason if reason in INVALIDATION_REASONS else "other"


def record(operation: str, namespace: str, result: str, seconds: float) -> None:
    OPERATIONS_TOTAL.labels(operation, namespace, result).inc()
    OPERATION_DURATION.labels(operation, namespace).observe(seconds, exemplar=common_metrics.exemplar())


def record_invalidation(reason: str, removed: int) -> None:
    INVALIDATIONS_TOTAL.labels(reason_label(reason)).inc(removed)


def record_repair(reason: str, sessions_recovered: int) -> None:
    STORE_REPAIRS_TOTAL.labels(reason if reason in REPAIR_REASONS else "malformed").inc()
    SESSIONS_RECOVERED_TOTAL.inc(sessions_recovered)


class StoreGaugeCollector(Collector):
    """Size gauges of the bound store, computed when /metrics is scraped.

    fsagent_cache_size_bytes{cache_namespace}, fsagent_cache_entries{cache_namespace},
    fsagent_cache_size_limit_bytes, fsagent_cache_volume_bytes, fsagent_sessions_active,
    fsagent_cache_quarantined_stores, fsagent_cache_quarantine_bytes.
    """

    def __init__(self, max_age: float = 2.0) -> None:
        self._store: CacheStore | None = None
        self._max_age = max_age
        self._lock = threading.Lock()
        self._snapshot: tuple[float, Stats] | None = None

    def bind(self, store: CacheStore | None) -> None:
        with self._lock:
            self._store = store
            self._snapshot = None

    def _families(self) -> dict[str, GaugeMetricFamily]:
        p = NAMESPACE + "_"
        return {
            "size": GaugeMetricFamily(
                p + "cache_size_bytes", "Bytes held by live cache entries (key + value), by cache namespace.",
                labels=["cache_namespace"],
            ),
            "entries": GaugeMetricFamily(
                p + "cache_entries", "Live (unexpired) cache entries, by cache namespace.", labels=["cache_namespace"]
            ),
            "limit": GaugeMetricFamily(
                p + "cache_size_limit_bytes", "Size at which the cache starts evicting least-recently-used entries."
            ),
            "volume": GaugeMetricFamily(
                p + "cache_volume_bytes", "Disk used by the cache store: SQLite pages plus value files."
            ),
            "sessions": GaugeMetricFamily(
                p + "sessions_active", "Conversation sessions stored and not expired."
            ),
            "quarantined": GaugeMetricFamily(
                p + "cache_quarantined_stores",
                "Damaged cache stores kept for inspection under quarantine/ in the cache directory (never deleted automatically).",
            ),
            "quarantine_bytes": GaugeMetricFamily(
                p + "cache_quarantine_bytes", "Disk used by the damaged stores under quarantine/ in the cache directory."
            ),
        }

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def _stats(self) -> Stats | None:
        with self._lock:
            store = self._store
            snapshot = self._snapshot
            if store is None:
                return None
            if snapshot is not None and time.monotonic() - snapshot[0] < self._max_age:
                return snapshot[1]
        from fsagent.cache.store import StoreUnavailable

        try:
            stats = store.stats()
        except StoreUnavailable:
            return None  # the store said so once, in its own log line
        except Exception:  # noqa: BLE001 - a failing scrape must not break /metrics
            log.warning("cache stats unavailable for /metrics", exc_info=True)
            return None
        with self._lock:
            if self._store is store:
                self._snapshot = (time.monotonic(), stats)
        return stats

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            store = self._store
        if store is None:
            return []
        families = self._families()
        try:
            usage = store.quarantine_usage()
        except Exception:  # noqa: BLE001 - a failing scrape must not break /metrics
            log.warning("cache quarantine usage unavailable for /metrics", exc_info=True)
        else:
            families["quarantined"].add_metric([], usage.stores)
            families["quarantine_bytes"].add_metric([], usage.bytes)
        stats = self._stats()
        if stats is None:
            return [families["quarantined"], families["quarantine_bytes"]]
        for ns in stats.namespaces:
            families["size"].add_metric([ns.namespace], ns.bytes)
            families["entries"].add_metric([ns.namespace], ns.entries)
            if ns.namespace == "sessions":
                families["sessions"].add_metric([], ns.entries)
        families["limit"].add_metric([], stats.size_limit)
        families["volume"].add_metric([], stats.volume)
        return list(families.values())


GAUGES = StoreGaugeCollector()
REGISTRY.register(GAUGES)


def bind_store(store: CacheStore | None) -> None:
    """Report this store's sizes on /metrics (None: report nothing)."""
    GAUGES.bind(store)
