"""fsagent doctor's NetworkPolicy evaluation (Kubernetes ingress semantics)."""

from __future__ import annotations

from fsagent.cli.doctor.netpol import Source, ingress_allowed, policy_types

NS = "app"
GATEWAY = {"app.kubernetes.io/name": "fsagent", "app.kubernetes.io/component": "gateway"}
PROM = Source("monitoring", {"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})


def policy(name, ingress=None, selector=None, types=("Ingress",)):
    spec = {"podSelector": selector if selector is not None else {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}
    if types is not None:
        spec["policyTypes"] = list(types)
    if ingress is not None:
        spec["ingress"] = ingress
    return {"metadata": {"name": name, "namespace": NS}, "spec": spec}


def from_prometheus(ns_labels=None, pod_labels=None, port=9104):
    peer = {"namespaceSelector": {"matchLabels": ns_labels or {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": pod_labels or {"app.kubernetes.io/name": "prometheus"}}}
    return {"from": [peer], "ports": [{"port": port, "protocol": "TCP"}]}


def test_no_policy_means_not_isolated():
    v = ingress_allowed([], NS, GATEWAY, 9104, "metrics", PROM)
    assert v.allowed is True and not v.isolated


def test_deny_all_then_allow_exactly():
    deny = policy("deny", selector={"matchLabels": {"app.kubernetes.io/name": "fsagent"}})
    assert ingress_allowed([deny], NS, GATEWAY, 9104, "metrics", PROM).allowed is False
    allow = policy("gw", [from_prometheus()])
    v = ingress_allowed([deny, allow], NS, GATEWAY, 9104, "metrics", PROM)
    assert v.allowed is True and v.allowed_by == ["gw"] and set(v.policies) == {"deny", "gw"}
    # Wrong port, wrong namespace, wrong pods: blocked.
    assert ingress_allowed([deny, allow], NS, GATEWAY, 8000, "http", PROM).allowed is False
    other_ns = Source("observability", {"kubernetes.io/metadata.name": "observability"}, PROM.pod_labels)
    assert ingress_allowed([deny, allow], NS, GATEWAY, 9104, "metrics", other_ns).allowed is False
    other_pod = Source("monitoring", PROM.namespace_labels, {"app.kubernetes.io/name": "grafana"})
    assert ingress_allowed([deny, allow], NS, GATEWAY, 9104, "metrics", other_pod).allowed is False


def test_empty_from_and_empty_ports_allow_everything():
    v = ingress_allowed([policy("open", [{}])], NS, GATEWAY, 1234, None, PROM)
    assert v.allowed is True
    v = ingress_allowed([policy("port-only", [{"ports": [{"port": 8000}]}])], NS, GATEWAY, 8000, "http",
                        Source("\x00", {}, {}))
    assert v.allowed is True


def test_named_ports_ranges_and_protocols():
    named = policy("named", [{"ports": [{"port": "metrics"}]}])
    assert ingress_allowed([named], NS, GATEWAY, 9104, "metrics", PROM).allowed is True
    assert ingress_allowed([named], NS, GATEWAY, 9104, "http", PROM).allowed is False
    ranged = policy("range", [{"ports": [{"port": 9100, "endPort": 9110}]}])
    assert ingress_allowed([ranged], NS, GATEWAY, 9104, None, PROM).allowed is True
    udp = policy("udp", [{"ports": [{"port": 9104, "protocol": "UDP"}]}])
    assert ingress_allowed([udp], NS, GATEWAY, 9104, None, PROM).allowed is False


def test_peer_forms():
    same_ns_pods = policy("pods", [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]}])
    assert ingress_allowed([same_ns_pods], NS, GATEWAY, 9104, None, PROM).allowed is False  # other namespace
    in_ns = Source(NS, {}, {"app.kubernetes.io/name": "prometheus"})
    assert ingress_allowed([same_ns_pods], NS, GATEWAY, 9104, None, in_ns).allowed is True
    whole_ns = policy("ns", [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}])
    assert ingress_allowed([whole_ns], NS, GATEWAY, 9104, None, Source("monitoring", {}, {"any": "pod"})).allowed is True
    all_ns = policy("all", [{"from": [{"namespaceSelector": {}}]}])
    assert ingress_allowed([all_ns], NS, GATEWAY, 9104, None, PROM).allowed is True


def test_unknowns():
    block = policy("cidr", [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}])
    v = ingress_allowed([block], NS, GATEWAY, 9104, None, PROM)
    assert v.allowed is None and "ipBlock" in v.unknown_because[0]
    by_label = policy("lbl", [{"from": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]}])
    v = ingress_allowed([by_label], NS, GATEWAY, 9104, None, Source("monitoring", None, None))
    assert v.allowed is None
    # Only the name label, which every namespace has, is used: decidable without reading labels.
    by_name = policy("name", [from_prometheus()])
    assert ingress_allowed([by_name], NS, GATEWAY, 9104, None, Source("monitoring", None, PROM.pod_labels)).allowed is True


def test_egress_only_policies_do_not_isolate_ingress():
    egress_only = policy("eg", selector={}, types=("Egress",))
    assert ingress_allowed([egress_only], NS, GATEWAY, 9104, None, PROM).allowed is True
    assert policy_types({"spec": {"egress": [{}]}}) == ["Ingress", "Egress"]
    assert policy_types({"spec": {}}) == ["Ingress"]
