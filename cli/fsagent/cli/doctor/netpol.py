"""NetworkPolicy ingress evaluation: may a source (namespace, pod labels) reach a pod on a port?

Kubernetes semantics: a pod is isolated for ingress when at least one policy in its namespace
selects it with policyTypes including Ingress (policyTypes unset = Ingress, plus Egress when the
policy has egress rules); then traffic is allowed when any ingress rule of any of those policies
allows it. A rule with no `from` (or an empty one) allows every source; with no `ports` every port.
A peer with only a podSelector means pods of the policy's own namespace; only a namespaceSelector
every pod of the matching namespaces; both: matching pods in matching namespaces. ipBlock peers
apply to addresses, which pods do not show here (cluster- and CNI-dependent): they count as
"cannot tell". A named port matches the target container port of that name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fsagent.cli.doctor.selectors import METADATA_NAME, Labels, SelectorError, matches, requirements


@dataclass
class Source:
    namespace: str
    namespace_labels: Labels | None = None  # None: not readable, only kubernetes.io/metadata.name known
    pod_labels: Labels | None = None  # None: unknown (any pod of the namespace)
    what: str = ""


@dataclass
class Verdict:
    allowed: bool | None  # None: cannot tell (ipBlock peers, labels that could not be read)
    isolated: bool
    policies: list[str] = field(default_factory=list)  # the policies that select the target
    allowed_by: list[str] = field(default_factory=list)
    unknown_because: list[str] = field(default_factory=list)


def policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


def _port_matches(entry: dict[str, Any], port: int, port_name: str | None, protocol: str) -> bool:
    if (entry.get("protocol") or "TCP") != protocol:
        return False
    want = entry.get("port")
    if want is None:
        return True
    if isinstance(want, int) or (isinstance(want, str) and want.isdigit()):
        low = int(want)
        high = int(entry.get("endPort") or low)
        return low <= port <= high
    return port_name is not None and want == port_name


def _selector_on(selector: dict[str, Any], labels: Labels | None, fallback: Labels | None) -> bool | None:
    """matches(), or None when labels are unknown and the answer depends on them."""
    if labels is not None:
        return matches(selector, labels)
    if not requirements(selector):
        return True
    if fallback is not None and {r.key for r in requirements(selector)} <= set(fallback):
        return matches(selector, fallback)
    return None


def _and(*values: bool | None) -> bool | None:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _peer_matches(peer: dict[str, Any], policy_ns: str, source: Source) -> tuple[bool | None, str]:
    if "ipBlock" in peer:
        return None, f"ipBlock {peer['ipBlock'].get('cidr')} (addresses, not labels)"
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    ns_fallback = {METADATA_NAME: source.namespace}
    ns_labels = dict(source.namespace_labels) if source.namespace_labels is not None else None
    if ns_labels is not None:
        ns_labels.setdefault(METADATA_NAME, source.namespace)
    if ns_sel is None:
        in_ns: bool | None = source.namespace == policy_ns
    else:
        in_ns = _selector_on(ns_sel, ns_labels, ns_fallback)
    pod_ok = True if pod_sel is None else _selector_on(pod_sel, source.pod_labels, None)
    result = _and(in_ns, pod_ok)
    reason = ""
    if result is None:
        reason = "labels of the source namespace or pods could not be read"
    return result, reason


def ingress_allowed(policies: list[dict[str, Any]], target_namespace: str, target_labels: Labels, port: int,
                    port_name: str | None, source: Source, protocol: str = "TCP") -> Verdict:
    selecting = []
    for pol in policies:
        if (pol.get("metadata") or {}).get("namespace", target_namespace) != target_namespace:
            continue
        spec = pol.get("spec") or {}
        try:
            if "Ingress" in policy_types(pol) and matches(spec.get("podSelector") or {}, target_labels):
                selecting.append(pol)
        except SelectorError:
            continue
    verdict = Verdict(allowed=True, isolated=bool(selecting), policies=[p["metadata"]["name"] for p in selecting])
    if not selecting:
        return verdict
    unknown = False
    for pol in selecting:
        for rule in (pol.get("spec") or {}).get("ingress") or []:
            ports = rule.get("ports") or []
            if ports and not any(_port_matches(p, port, port_name, protocol) for p in ports):
                continue
            peers = rule.get("from") or []
            if not peers:
                verdict.allowed_by.append(pol["metadata"]["name"])
                continue
            for peer in peers:
                try:
                    ok, reason = _peer_matches(peer, target_namespace, source)
                except SelectorError:
                    ok, reason = False, ""
                if ok:
                    verdict.allowed_by.append(pol["metadata"]["name"])
                    break
                if ok is None:
                    unknown = True
                    verdict.unknown_because.append(f"{pol['metadata']['name']}: {reason}")
    if verdict.allowed_by:
        verdict.allowed = True
    else:
        verdict.allowed = None if unknown else False
    return verdict
