"""Label selectors as Kubernetes and the prometheus-operator evaluate them.

Kubernetes (metav1.LabelSelectorAsSelector): a nil selector matches nothing, an empty one ({})
matches everything; matchLabels and matchExpressions are ANDed; `In` needs the key with one of the
values, `NotIn` matches when the key is absent or has another value, `Exists` / `DoesNotExist` test
the key only. `In`/`NotIn` without values, or `Exists`/`DoesNotExist` with values, are invalid.

The operator (pkg/prometheus/resource_selector.go) selects a ServiceMonitor or PrometheusRule for a
Prometheus when the object's labels match `serviceMonitorSelector` / `ruleSelector` (nil: none) AND
its namespace matches `serviceMonitorNamespaceSelector` / `ruleNamespaceSelector`, where a nil
namespace selector means the Prometheus's own namespace only and {} every namespace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Labels = dict[str, str]
METADATA_NAME = "kubernetes.io/metadata.name"  # set by the API server on every namespace


class SelectorError(ValueError):
    """A selector the API server or the operator would refuse."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        raise SelectorError(f"unknown operator {self.operator!r}")

    def __str__(self) -> str:  # kubectl's selector syntax
        if self.operator == "In" and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        if self.operator == "In":
            return f"{self.key} in ({','.join(self.values)})"
        if self.operator == "NotIn":
            return f"{self.key} notin ({','.join(self.values)})"
        if self.operator == "Exists":
            return self.key
        return f"!{self.key}"

    def change(self, labels: Labels) -> tuple[str, str | None]:
        """The label change that satisfies this requirement: (key, value), value None = remove."""
        if self.operator in ("In", "Exists"):
            return self.key, (self.values[0] if self.values else labels.get(self.key) or "true")
        return self.key, None


def requirements(selector: dict[str, Any]) -> list[Requirement]:
    """matchLabels and matchExpressions as one list of requirements (validated)."""
    out = [Requirement(k, "In", (str(v),)) for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, values = expr.get("operator"), tuple(str(v) for v in expr.get("values") or ())
        key = expr.get("key") or ""
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"{key} {op}: needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"{key} {op}: takes no values")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise SelectorError(f"{key}: unknown operator {op!r}")
        out.append(Requirement(key, op, values))
    return out


def matches(selector: dict[str, Any] | None, labels: Labels) -> bool:
    """metav1.LabelSelectorAsSelector(selector).Matches(labels)."""
    if selector is None:
        return False
    return all(r.matches(labels) for r in requirements(selector))


def unmet(selector: dict[str, Any] | None, labels: Labels) -> list[Requirement]:
    if selector is None:
        return []
    return [r for r in requirements(selector) if not r.matches(labels)]


def describe(selector: dict[str, Any] | None) -> str:
    """A selector as kubectl writes one; nil and {} spelled out."""
    if selector is None:
        return "nil (matches nothing)"
    reqs = requirements(selector)
    return ", ".join(str(r) for r in reqs) if reqs else "{} (matches everything)"


def label_changes_text(changes: list[tuple[str, str | None]]) -> str:
    parts = [f"{k}={v}" if v is not None else f"{k}-" for k, v in changes]
    return " ".join(parts)


# --- the operator's selection -----------------------------------------------------------------------

FIELDS = {
    "ServiceMonitor": ("serviceMonitorSelector", "serviceMonitorNamespaceSelector"),
    "PrometheusRule": ("ruleSelector", "ruleNamespaceSelector"),
    "PodMonitor": ("podMonitorSelector", "podMonitorNamespaceSelector"),
}


@dataclass
class Selection:
    """Whether one Prometheus selects one object, and if not, why and what would change it."""

    prometheus: str  # namespace/name
    selected: bool
    certain: bool = True  # False: the namespace's labels could not be read
    object_ok: bool = True
    namespace_ok: bool = True
    why: list[str] = field(default_factory=list)
    label_changes: list[tuple[str, str | None]] = field(default_factory=list)  # on the object
    namespace_changes: list[tuple[str, str | None]] = field(default_factory=list)  # on its namespace
    namespace_fix: str = ""  # when no namespace label can help (nil selector: own namespace only)

    @property
    def cost(self) -> int:
        """How far from selected: used to pick the Prometheus to advise about."""
        return len(self.label_changes) + len(self.namespace_changes) + (5 if self.namespace_fix else 0)


def operator_selects(prometheus: dict[str, Any], kind: str, obj_labels: Labels, obj_namespace: str,
                     namespace_labels: Labels | None) -> Selection:
    """Does `prometheus` (a monitoring.coreos.com/v1 Prometheus as JSON) select an object of `kind`
    with these labels in `obj_namespace`? namespace_labels None: unknown (not readable); then only
    the kubernetes.io/metadata.name label, which every namespace carries, is assumed."""
    meta, spec = prometheus.get("metadata") or {}, prometheus.get("spec") or {}
    prom_ns = meta.get("namespace", "")
    sel_field, ns_field = FIELDS[kind]
    sel = Selection(prometheus=f"{prom_ns}/{meta.get('name', '')}", selected=False)
    selector = spec.get(sel_field)
    try:
        if selector is None:
            sel.object_ok = False
            sel.why.append(f"{sel_field} is not set (nil selects no {kind})")
            sel.namespace_fix = f"set {sel_field}: {{}} on Prometheus {sel.prometheus}"
        else:
            missing = unmet(selector, obj_labels)
            sel.object_ok = not missing
            if missing:
                sel.why.append(f"{sel_field} {describe(selector)} does not match: needs {', '.join(map(str, missing))}")
                sel.label_changes = [r.change(obj_labels) for r in missing]
        ns_selector = spec.get(ns_field)
        if ns_selector is None:
            sel.namespace_ok = obj_namespace == prom_ns
            if not sel.namespace_ok:
                sel.why.append(f"{ns_field} is not set, so it watches only its own namespace {prom_ns}")
                sel.namespace_fix = (f"set {ns_field}: {{}} (all namespaces) or one matching {obj_namespace} "
                                     f"on Prometheus {sel.prometheus}")
        else:
            known = namespace_labels is not None
            labels = dict(namespace_labels or {})
            labels.setdefault(METADATA_NAME, obj_namespace)
            missing_ns = unmet(ns_selector, labels)
            sel.namespace_ok = not missing_ns
            if not known and {r.key for r in requirements(ns_selector)} - {METADATA_NAME}:
                sel.certain = False
            if missing_ns:
                relevant = {r.key for r in missing_ns}
                sel.why.append(f"{ns_field} {describe(ns_selector)} does not match namespace {obj_namespace}"
                               + ("" if known else " (its labels could not be read)"))
                if relevant == {METADATA_NAME}:
                    sel.namespace_fix = f"add {obj_namespace} to {ns_field} of Prometheus {sel.prometheus}"
                else:
                    sel.namespace_changes = [r.change(labels) for r in missing_ns if r.key != METADATA_NAME]
    except SelectorError as exc:
        sel.object_ok = sel.namespace_ok = False
        sel.why.append(f"invalid selector: {exc} (the operator refuses it)")
        sel.namespace_fix = f"fix the selectors of Prometheus {sel.prometheus}"
    sel.selected = sel.object_ok and sel.namespace_ok
    return sel


def selector_json(selector: dict[str, Any] | None) -> str:
    return "null" if selector is None else json.dumps(selector, sort_keys=True, separators=(",", ":"))
