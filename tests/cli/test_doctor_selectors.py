"""fsagent doctor's selector logic against the semantics of Kubernetes label selectors and of the
prometheus-operator's ServiceMonitor / PrometheusRule selection (nil vs empty selectors, namespace
selectors, every matchExpressions operator), and the label it advises to add."""

from __future__ import annotations

import pytest

from fsagent.cli.doctor.selectors import (
    SelectorError, describe, label_changes_text, matches, operator_selects, requirements, unmet,
)

LABELS = {"release": "kps", "team": "search", "tier": "backend"}


@pytest.mark.parametrize("selector, expected", [
    (None, False),  # nil selects nothing
    ({}, True),  # empty selects everything
    ({"matchLabels": {}}, True),
    ({"matchLabels": {"release": "kps"}}, True),
    ({"matchLabels": {"release": "other"}}, False),
    ({"matchLabels": {"missing": "x"}}, False),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["search", "ads"]}]}, True),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["ads"]}]}, False),
    ({"matchExpressions": [{"key": "absent", "operator": "In", "values": ["x"]}]}, False),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["ads"]}]}, True),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["search"]}]}, False),
    # NotIn matches when the key is absent altogether.
    ({"matchExpressions": [{"key": "absent", "operator": "NotIn", "values": ["x"]}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "absent", "operator": "Exists"}]}, False),
    ({"matchExpressions": [{"key": "absent", "operator": "DoesNotExist"}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
    # matchLabels AND matchExpressions
    ({"matchLabels": {"release": "kps"}, "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
    ({"matchLabels": {"release": "kps"}, "matchExpressions": [{"key": "team", "operator": "Exists"}]}, True),
])
def test_label_selector_semantics(selector, expected):
    assert matches(selector, LABELS) is expected


@pytest.mark.parametrize("expr", [
    {"key": "a", "operator": "In", "values": []},
    {"key": "a", "operator": "NotIn"},
    {"key": "a", "operator": "Exists", "values": ["x"]},
    {"key": "a", "operator": "DoesNotExist", "values": ["x"]},
    {"key": "a", "operator": "Gt", "values": ["1"]},
])
def test_invalid_selectors_are_refused(expr):
    with pytest.raises(SelectorError):
        matches({"matchExpressions": [expr]}, LABELS)


def test_describe_and_changes():
    assert describe(None) == "nil (matches nothing)"
    assert describe({}) == "{} (matches everything)"
    sel = {"matchLabels": {"release": "kps"}, "matchExpressions": [
        {"key": "team", "operator": "In", "values": ["a", "b"]}, {"key": "x", "operator": "NotIn", "values": ["y"]},
        {"key": "e", "operator": "Exists"}, {"key": "d", "operator": "DoesNotExist"}]}
    assert describe(sel) == "release=kps, team in (a,b), x notin (y), e, !d"
    missing = unmet(sel, {"x": "y", "d": "1"})
    changes = [r.change({"x": "y", "d": "1"}) for r in missing]
    assert changes == [("release", "kps"), ("team", "a"), ("x", None), ("e", "true"), ("d", None)]
    assert label_changes_text(changes) == "release=kps team=a x- e=true d-"
    assert len(requirements(sel)) == 5


def prometheus(ns="monitoring", name="kps", **spec):
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


KPS = prometheus(serviceMonitorSelector={"matchLabels": {"release": "kps"}}, serviceMonitorNamespaceSelector={},
                 ruleSelector={"matchLabels": {"release": "kps"}}, ruleNamespaceSelector={})


def test_kube_prometheus_stack_defaults_select_by_release_label_in_every_namespace():
    ok = operator_selects(KPS, "ServiceMonitor", {"release": "kps"}, "app", {})
    assert ok.selected and ok.certain
    no = operator_selects(KPS, "ServiceMonitor", {"release": "kube-prometheus-stack"}, "app", {})
    assert not no.selected and not no.object_ok and no.namespace_ok
    assert no.label_changes == [("release", "kps")]
    assert operator_selects(KPS, "PrometheusRule", {"release": "kps"}, "anywhere", {}).selected


def test_nil_resource_selector_selects_nothing_and_empty_selects_everything():
    nil = prometheus(serviceMonitorNamespaceSelector={})
    sel = operator_selects(nil, "ServiceMonitor", {"release": "kps"}, "app", {})
    assert not sel.selected and "nil" in sel.why[0]
    assert "serviceMonitorSelector: {}" in sel.namespace_fix
    everything = prometheus(serviceMonitorSelector={}, serviceMonitorNamespaceSelector={})
    assert operator_selects(everything, "ServiceMonitor", {}, "app", {}).selected


def test_nil_namespace_selector_means_the_prometheus_namespace_only():
    own = prometheus(ns="monitoring", serviceMonitorSelector={})
    assert operator_selects(own, "ServiceMonitor", {}, "monitoring", {}).selected
    other = operator_selects(own, "ServiceMonitor", {}, "app", {})
    assert not other.selected and other.object_ok and not other.namespace_ok
    assert "only its own namespace monitoring" in other.why[0]
    assert "serviceMonitorNamespaceSelector: {}" in other.namespace_fix


def test_namespace_selector_by_label_suggests_the_namespace_label():
    p = prometheus(serviceMonitorSelector={}, serviceMonitorNamespaceSelector={"matchLabels": {"monitoring": "enabled"}})
    assert operator_selects(p, "ServiceMonitor", {}, "app", {"monitoring": "enabled"}).selected
    sel = operator_selects(p, "ServiceMonitor", {}, "app", {"kubernetes.io/metadata.name": "app"})
    assert not sel.selected and sel.namespace_changes == [("monitoring", "enabled")]
    by_name = prometheus(serviceMonitorSelector={}, serviceMonitorNamespaceSelector={
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}]})
    assert operator_selects(by_name, "ServiceMonitor", {}, "a", None).selected  # the name label is always known
    miss = operator_selects(by_name, "ServiceMonitor", {}, "app", None)
    assert not miss.selected and miss.certain and "add app to serviceMonitorNamespaceSelector" in miss.namespace_fix
    excluded = prometheus(serviceMonitorSelector={}, serviceMonitorNamespaceSelector={
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["app"]}]})
    assert not operator_selects(excluded, "ServiceMonitor", {}, "app", {}).selected


def test_unreadable_namespace_labels_make_the_answer_uncertain():
    p = prometheus(serviceMonitorSelector={}, serviceMonitorNamespaceSelector={"matchLabels": {"monitoring": "on"}})
    sel = operator_selects(p, "ServiceMonitor", {}, "app", None)
    assert not sel.selected and not sel.certain


def test_rule_and_service_monitor_selectors_are_separate():
    p = prometheus(serviceMonitorSelector={"matchLabels": {"release": "kps"}}, serviceMonitorNamespaceSelector={},
                   ruleSelector={"matchLabels": {"role": "alert-rules"}})
    assert operator_selects(p, "ServiceMonitor", {"release": "kps"}, "monitoring", {}).selected
    rule = operator_selects(p, "PrometheusRule", {"release": "kps"}, "monitoring", {})
    assert not rule.selected and rule.label_changes == [("role", "alert-rules")]
    # ruleNamespaceSelector nil: own namespace only, even though the ServiceMonitor one is {}.
    assert not operator_selects(p, "PrometheusRule", {"role": "alert-rules"}, "app", {}).selected


def test_invalid_prometheus_selector_is_reported_not_raised():
    p = prometheus(serviceMonitorSelector={"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})
    sel = operator_selects(p, "ServiceMonitor", {}, "monitoring", {})
    assert not sel.selected and "invalid selector" in sel.why[0]
