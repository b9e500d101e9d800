"""The chart's `helm test`: a hook Pod in the gateway image running `fsagent doctor` in-cluster and
one chat, with its own ServiceAccount bound to a Role that can only get/list (and GET the metrics
ports through the service proxy); the optional ClusterRole is get/list too and off by default.
tests/k8s/test_doctor.py runs the doctor with this Role on a real API server."""

from __future__ import annotations

import pytest

READ_VERBS = {"get", "list", "watch"}
COMBINATIONS = [[], ["everything-values.yaml"], ["langfuse-values.yaml"], ["external-langfuse-values.yaml"],
                ["existing-secret-values.yaml"], ["read-only-values.yaml"]]


def _rbac(r):
    return r.kind("Role") + r.kind("ClusterRole")


@pytest.mark.parametrize("values", COMBINATIONS)
@pytest.mark.parametrize("cluster_read", [False, True])
def test_rbac_grants_nothing_beyond_get_list_watch(helm, values, cluster_read):
    r = helm.template(values, [f"helmTest.clusterRead={str(cluster_read).lower()}"])
    roles = _rbac(r)
    assert [x["kind"] for x in roles] == ["Role"] + (["ClusterRole"] if cluster_read else [])
    for role in roles:
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= READ_VERBS, (role["kind"], rule)
            assert "*" not in rule.get("resources", []) and "*" not in rule.get("apiGroups", [])
            assert not {"pods/exec", "pods/attach", "pods/portforward", "serviceaccounts/token"} & set(rule["resources"])
    role = r.get("Role", "fsagent-doctor")
    for rule in role["rules"]:
        if "secrets" in rule["resources"]:
            # Only the Langfuse keys Secret, by name.
            assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"] and len(rule["resourceNames"]) == 1
        if "services/proxy" in rule["resources"]:
            assert rule["verbs"] == ["get"]
            assert all(n.endswith(":metrics") or n.startswith("langfuse-web:") for n in rule["resourceNames"]), rule
            assert "fsagent-gateway:http" not in rule["resourceNames"]
    (binding,) = r.kind("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fsagent-doctor"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fsagent-doctor", "namespace": "fsagent"}]


def test_secret_rule_only_when_langfuse_keys_are_configured(helm):
    rules = helm.template().get("Role", "fsagent-doctor")["rules"]
    assert not [x for x in rules if "secrets" in x["resources"]]
    rules = helm.template(["langfuse-values.yaml"]).get("Role", "fsagent-doctor")["rules"]
    (secret,) = [x for x in rules if "secrets" in x["resources"]]
    assert secret["resourceNames"] == ["langfuse-fsagent"]
    proxy = [n for x in rules if "services/proxy" in x["resources"] for n in x["resourceNames"]]
    assert "langfuse-web:3000" in proxy  # its health endpoint, same namespace


def test_the_test_pod(helm):
    r = helm.template()
    (pod,) = r.kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == "fsagent-doctor" and spec["automountServiceAccountToken"] is True
    # The only token mounted anywhere: every ServiceAccount says no, the workloads too.
    assert all(sa["automountServiceAccountToken"] is False for sa in r.kind("ServiceAccount"))
    assert {sa["metadata"]["name"] for sa in r.kind("ServiceAccount")} == {"fsagent", "fsagent-doctor"}
    # Not selected by the release's default-deny policy (it needs the API server and the gateway).
    deny = r.get("NetworkPolicy", "fsagent-default-deny")["spec"]["podSelector"]["matchLabels"]
    assert not all(pod["metadata"]["labels"].get(k) == v for k, v in deny.items())
    (c,) = spec["containers"]
    assert c["image"] == r.get("Deployment", "fsagent-gateway")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["command"] == ["fsagent"]
    args = c["args"]
    assert args[:2] == ["doctor", "--in-cluster"] and "--warnings-ok" in args
    assert "--namespace=fsagent" in args and "--release=fsagent" in args
    assert "--chat=http://fsagent-gateway.fsagent.svc:8000" in args
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and spec["securityContext"]["runAsNonRoot"] is True
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    assert c["resources"]["limits"]["memory"] and "env" not in c


def test_the_test_pod_gets_an_api_key_when_the_gateway_wants_one(helm):
    (pod,) = helm.template(["existing-secret-values.yaml"]).kind("Pod")
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["FSAGENT_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"]


def test_helm_test_can_be_turned_off(helm):
    r = helm.template(sets=["helmTest.enabled=false"])
    assert not r.kind("Pod") and not r.kind("Role") and not r.kind("RoleBinding")
    assert [sa["metadata"]["name"] for sa in r.kind("ServiceAccount")] == ["fsagent"]


def test_ingress_namespace_is_passed_to_the_doctor(helm):
    (pod,) = helm.template(sets=["helmTest.ingressNamespace=ingress-nginx"]).kind("Pod")
    assert "--ingress-namespace=ingress-nginx" in pod["spec"]["containers"][0]["args"]


def test_values_schema_rejects_unknown_helm_test_keys(helm):
    assert "helmTest" in helm.template_fails(sets=["helmTest.bogus=1"])
