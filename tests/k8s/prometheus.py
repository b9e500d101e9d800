"""Prometheus custom resources as kube-prometheus-stack creates them, and what the real
prometheus-operator renders from them (its generated configuration Secret and rule ConfigMaps)."""

from __future__ import annotations

import base64
import gzip
import time
from typing import Any

import yaml

from tests.k8s.conftest import ControlPlane


def kube_prometheus_stack_prometheus(namespace: str, release: str = "kube-prometheus-stack", **spec: Any) -> dict[str, Any]:
    """The Prometheus object of a kube-prometheus-stack release installed with its default values
    (templates/prometheus/prometheus.yaml: the *SelectorNilUsesHelmValues defaults select by
    release=<release name>; every namespace selector is {})."""
    by_release = {"matchLabels": {"release": release}}
    body = {
        "serviceMonitorSelector": by_release, "serviceMonitorNamespaceSelector": {},
        "podMonitorSelector": by_release, "podMonitorNamespaceSelector": {},
        "probeSelector": by_release, "probeNamespaceSelector": {},
        "ruleSelector": by_release, "ruleNamespaceSelector": {},
        "scrapeConfigSelector": by_release, "scrapeConfigNamespaceSelector": {},
        "replicas": 1, "portName": "http-web", "serviceAccountName": f"{release}-prometheus",
        "retention": "10d", "enableAdminAPI": False, "listenLocal": False, "paused": False,
        "logLevel": "info", "logFormat": "logfmt", "alerting": {"alertmanagers": []},
    }
    body.update(spec)
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
        "metadata": {"name": f"{release}-prometheus", "namespace": namespace,
                     "labels": {"app": "kube-prometheus-stack-prometheus", "release": release}},
        "spec": body,
    }


def generated_config(cp: ControlPlane, prometheus: dict[str, Any], *, namespace: str, jobs: int,
                     timeout: float = 60) -> dict[str, Any]:
    """The scrape configuration the operator wrote for `prometheus` (Secret prometheus-<name>, key
    prometheus.yaml.gz), once it holds `jobs` ServiceMonitor jobs of `namespace` (other tests'
    releases in other namespaces may be selected too)."""
    meta = prometheus["metadata"]
    deadline = time.monotonic() + timeout
    config: dict[str, Any] = {}
    while time.monotonic() < deadline:
        secret = cp.get("secret", f"prometheus-{meta['name']}", meta["namespace"], check=False)
        if secret and "prometheus.yaml.gz" in secret.get("data", {}):
            config = yaml.safe_load(gzip.decompress(base64.b64decode(secret["data"]["prometheus.yaml.gz"])))
            if len(service_monitor_jobs(config, namespace)) >= jobs:
                return config
        time.sleep(0.3)
    raise AssertionError(f"operator wrote no configuration with {jobs} ServiceMonitor jobs of {namespace} for "
                         f"{meta['namespace']}/{meta['name']} in {timeout}s; last: {service_monitor_jobs(config)}")


def service_monitor_jobs(config: dict[str, Any], namespace: str | None = None) -> list[str]:
    prefix = f"serviceMonitor/{namespace}/" if namespace else "serviceMonitor/"
    return [job["job_name"] for job in config.get("scrape_configs") or [] if job["job_name"].startswith(prefix)]


def rule_files(cp: ControlPlane, prometheus: dict[str, Any], *, namespace: str | None = None,
               timeout: float = 60) -> dict[str, str]:
    """The rule files the operator selected for `prometheus` (ConfigMaps prometheus-<name>-rulefiles-N),
    once one of `namespace` is among them (None: return what is there after the timeout)."""
    meta = prometheus["metadata"]
    deadline = time.monotonic() + timeout
    files: dict[str, str] = {}
    while time.monotonic() < deadline:
        files = {}
        for cm in cp.get("configmaps", namespace=meta["namespace"])["items"]:
            if cm["metadata"]["name"].startswith(f"prometheus-{meta['name']}-rulefiles-"):
                files.update(cm.get("data") or {})
        if namespace and any(name.startswith(f"{namespace}-") for name in files):
            return files
        time.sleep(0.3)
    return files
