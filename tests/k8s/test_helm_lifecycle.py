"""`helm install`, `upgrade` and `rollback` of the chart against a real kube-apiserver: every step a
user takes must be accepted by the API server's validation (immutable fields included), not only
render. docs/deploy.md ("Upgrades") lists the same paths."""

from __future__ import annotations

import pytest

from tests.k8s.conftest import CHART, CommandFailed, ControlPlane, bind_claims

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "fs"


def _install(cp: ControlPlane, ns: str, *args: str) -> None:
    cp.helm("install", RELEASE, str(CHART), "-n", ns, *args)


def _upgrade(cp: ControlPlane, ns: str, *args: str) -> None:
    # --reuse-values: each step changes one thing on top of what the user set before.
    cp.helm("upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values", *args)


def _revision(cp: ControlPlane, ns: str) -> tuple[int, str]:
    import json

    status = json.loads(cp.helm("status", RELEASE, "-n", ns, "-o", "json").stdout)
    return status["version"], status["info"]["status"]


def _names(cp: ControlPlane, kind: str, ns: str) -> set[str]:
    return {o["metadata"]["name"] for o in cp.get(kind, namespace=ns)["items"]}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_install_accepted_with_every_ci_values_file(control_plane: ControlPlane, values):
    ns = control_plane.namespace("ci")
    _install(control_plane, ns, "-f", str(values))
    assert _revision(control_plane, ns) == (1, "deployed")
    workloads = _names(control_plane, "deployments", ns) | _names(control_plane, "statefulsets", ns)
    assert workloads == {f"{RELEASE}-fsagent-{c}" for c in ("gateway", "agent", "sandbox", "cache")}
    # The operator's CRDs are installed, so the chart's capability check renders the monitoring objects.
    assert _names(control_plane, "servicemonitors.monitoring.coreos.com", ns) == {
        f"{RELEASE}-fsagent-{c}" for c in ("gateway", "agent", "sandbox", "cache")}


def test_upgrade_paths_and_rollback(control_plane: ControlPlane, expandable_storage_class: str):
    cp, ns = control_plane, control_plane.namespace("upgrade")
    _install(cp, ns, "--set", f"data.persistence.storageClass={expandable_storage_class}",
             "--set", f"cache.persistence.storageClass={expandable_storage_class}")
    bind_claims(cp, ns)  # what the volume controller does once a volume is provisioned
    data, cache = f"{RELEASE}-fsagent-data", f"{RELEASE}-fsagent-cache"

    # 1. Sandbox 1 -> 3 replicas: the ReadWriteOnce claim keeps its modes, the pods share its node.
    _upgrade(cp, ns, "--set", "sandbox.replicas=3")
    sandbox = cp.get("deployment", f"{RELEASE}-fsagent-sandbox", ns)
    assert sandbox["spec"]["replicas"] == 3 and sandbox["spec"]["strategy"]["type"] == "RollingUpdate"
    assert cp.get("pvc", data, ns)["spec"]["accessModes"] == ["ReadWriteOnce"]
    affinity = sandbox["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"

    # 2. Monitoring off, then on again.
    _upgrade(cp, ns, "--set", "serviceMonitor.enabled=false", "--set", "prometheusRule.enabled=false",
             "--set", "dashboards.enabled=false")
    assert not _names(cp, "servicemonitors.monitoring.coreos.com", ns)
    assert not _names(cp, "prometheusrules.monitoring.coreos.com", ns)
    _upgrade(cp, ns, "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
             "--set", "dashboards.enabled=true")
    assert len(_names(cp, "servicemonitors.monitoring.coreos.com", ns)) == 4
    assert _names(cp, "prometheusrules.monitoring.coreos.com", ns) == {f"{RELEASE}-fsagent"}

    # 3. Langfuse in the cluster on (the agent reads the keys from Langfuse's Secret), then off.
    _upgrade(cp, ns, "-f", str(CHART / "ci" / "langfuse-values.yaml"))
    assert "LANGFUSE_SECRET_KEY" in _agent_env(cp, ns)
    assert _agent_env(cp, ns)["LANGFUSE_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "langfuse-fsagent"
    _upgrade(cp, ns, "--set", "langfuse.existingSecret=", "--set", "langfuse.baseUrl=")
    assert "LANGFUSE_SECRET_KEY" not in _agent_env(cp, ns)

    # 4. API keys added: the chart's Secret appears and the gateway reads it.
    _upgrade(cp, ns, "--set", "gateway.apiKeys.value=k1\\,k2")
    assert _api_key_secrets(cp, ns)
    assert _revision(cp, ns) == (7, "deployed")

    # 5. Back to the first revision: one replica, Recreate again (the live rollingUpdate defaults
    #    are cleared), no co-location, no API key Secret.
    cp.helm("rollback", RELEASE, "1", "-n", ns)
    assert _revision(cp, ns) == (8, "deployed")
    sandbox = cp.get("deployment", f"{RELEASE}-fsagent-sandbox", ns)
    assert sandbox["spec"]["replicas"] == 1 and sandbox["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in sandbox["spec"]["template"]["spec"]
    assert not _api_key_secrets(cp, ns)

    # 6. Bigger cache and data volumes: resized in place (bound claims, expandable class).
    _upgrade(cp, ns, "--set", "cache.persistence.size=2Gi", "--set", "data.persistence.size=10Gi")
    assert cp.get("pvc", cache, ns)["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert cp.get("pvc", data, ns)["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert _revision(cp, ns) == (9, "deployed")
    # The volume controller reports the new capacity once the volume has grown.
    bind_claims(cp, ns)

    # 7. Rolling back past a resize would shrink the claims, which the API server never allows
    #    (docs/deploy.md says so and gives the way back: upgrade to the old values at the new size).
    with pytest.raises(CommandFailed) as err:
        cp.helm("rollback", RELEASE, "8", "-n", ns)
    assert "can not be less than" in err.value.stderr
    _upgrade(cp, ns, "--reset-values", "--set", f"data.persistence.storageClass={expandable_storage_class}",
             "--set", f"cache.persistence.storageClass={expandable_storage_class}",
             "--set", "cache.persistence.size=2Gi", "--set", "data.persistence.size=10Gi")
    assert _revision(cp, ns)[1] == "deployed"


def _agent_env(cp: ControlPlane, ns: str) -> dict:
    container = cp.get("deployment", f"{RELEASE}-fsagent-agent", ns)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container.get("env", [])}


def _api_key_secrets(cp: ControlPlane, ns: str) -> set[str]:
    return {name for name in _names(cp, "secrets", ns) if name.startswith(f"{RELEASE}-fsagent") and "api" in name}


def test_refused_changes_say_why(control_plane: ControlPlane, expandable_storage_class: str):
    """What cannot be done is refused before anything changes, with the reason and the way out."""
    cp, ns = control_plane, control_plane.namespace("refuse")
    _install(cp, ns, "--set", f"cache.persistence.storageClass={expandable_storage_class}")
    bind_claims(cp, ns)
    with pytest.raises(CommandFailed) as err:
        _upgrade(cp, ns, "--set", "data.persistence.accessModes={ReadWriteMany}")
    assert "access modes cannot change" in err.value.stderr and "docs/deploy.md" in err.value.stderr
    assert _revision(cp, ns) == (1, "deployed"), "refused while rendering: nothing was sent"
    with pytest.raises(CommandFailed) as err:
        _upgrade(cp, ns, "--set", "cache.persistence.size=512Mi")
    assert "can not be less than" in err.value.stderr  # the API server's own rule
    assert _revision(cp, ns) == (2, "failed")
    # The release still upgrades normally afterwards.
    _upgrade(cp, ns, "--set", "cache.persistence.size=1Gi", "--set", "gateway.replicas=3")
    assert _revision(cp, ns) == (3, "deployed")
