"""helm/fsagent: lint, render under several value combinations, validate every core object against the
Kubernetes 1.34 schemas, and check the properties the issue asks for (security, probes, ports, env
names, secrets, volumes, scaling objects, network graph)."""

from __future__ import annotations

import re

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")

COMPONENTS = ("gateway", "agent", "sandbox", "cache")
GRPC_PORTS = {"agent": 50051, "sandbox": 50052, "cache": 50053}
METRICS_PORTS = {"agent": 9101, "sandbox": 9102, "cache": 9103}
GATEWAY_METRICS_PORT = 9104

# ARCHITECTURE.md's configuration table (plus FSAGENT_BIND_HOST, set to 0.0.0.0 in the cluster,
# FSAGENT_LOG_FORMAT, a setting of the shared Settings object, and the sandbox's confinement
# settings of issue 3: FSAGENT_SANDBOX_ISOLATION/UID/GID).
ENV_NAMES = {
    "FSAGENT_LLM_PROVIDER", "FSAGENT_LLM_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION", "AZURE_OPENAI_DEPLOYMENT",
    "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_SAMPLE_RATE",
    "LANGFUSE_TRACING_ENVIRONMENT", "LANGFUSE_RELEASE",
    "FSAGENT_DATA_ROOT", "FSAGENT_CACHE_DIR", "FSAGENT_CACHE_SIZE_LIMIT", "FSAGENT_READ_ONLY",
    "FSAGENT_GATEWAY_PORT", "FSAGENT_AGENT_ADDR", "FSAGENT_SANDBOX_ADDR", "FSAGENT_CACHE_ADDR",
    "FSAGENT_GATEWAY_METRICS_PORT", "FSAGENT_AGENT_METRICS_PORT", "FSAGENT_SANDBOX_METRICS_PORT", "FSAGENT_CACHE_METRICS_PORT",
    "FSAGENT_MAX_ITERATIONS", "FSAGENT_MAX_CONCURRENT_TOOLS", "FSAGENT_TOOL_TIMEOUT", "FSAGENT_MAX_OUTPUT_BYTES",
    "FSAGENT_MAX_TOOL_CALLS_PER_TURN", "FSAGENT_MAX_TOOL_CALLS_PER_CHAT",
    "FSAGENT_CHAT_RATE_LIMIT", "FSAGENT_AUTH_FAILURE_LIMIT", "FSAGENT_RATE_LIMIT_STORAGE",
    "FSAGENT_MAX_FILE_SIZE", "FSAGENT_API_KEYS", "FSAGENT_LOG_LEVEL", "FSAGENT_LOG_FORMAT", "FSAGENT_BIND_HOST",
    "FSAGENT_SANDBOX_ISOLATION", "FSAGENT_SANDBOX_UID", "FSAGENT_SANDBOX_GID",
}
# Extra variables the test value files pass through config.extraEnv / <component>.extraEnv.
EXTRA_ENV_IN_TEST_VALUES = {"FSAGENT_CHAT_TIMEOUT", "FSAGENT_CORS_ORIGINS", "FSAGENT_LLM_TIMEOUT"}
SECRET_ENV = {"OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "FSAGENT_API_KEYS"}


def component_of(obj) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def containers(workload, init: bool = True):
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", []) or []) if init else [])


def main_container(workload):
    return workload["spec"]["template"]["spec"]["containers"][0]


# --- lint and render ------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, "everything-values.yaml", "read-only-values.yaml",
                                    "external-langfuse-values.yaml", "existing-secret-values.yaml",
                                    "langfuse-values.yaml", "monitoring-values.yaml", "dev-values.yaml"])
def test_helm_lint_strict(helm, lib, values):
    cmd = [helm.binary, "lint", "--strict", str(lib.CHART), "--kube-version", lib.K8S_VERSION]
    if values:
        cmd += ["-f", str(lib.CI_VALUES / values)]
    out = lib.run(cmd)
    assert "0 chart(s) failed" in out.stdout


def test_every_core_object_validates_strictly_against_kubernetes(combination, lib):
    name, rendered = combination
    assert rendered.docs, name
    checked = 0
    for doc in rendered.docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: tests/deploy/test_monitoring.py checks them against their own schemas
        try:
            kubernetes_validate.validate(doc, lib.K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:  # pragma: no cover - the failure message is the point
            pytest.fail(f"[{name}] {doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
        checked += 1
    assert checked >= 15


def test_default_install_has_the_expected_objects(helm):
    r = helm.template()
    names = {(d["kind"], d["metadata"]["name"]) for d in r.docs}
    expected = {
        ("Deployment", "fsagent-gateway"), ("Deployment", "fsagent-agent"), ("Deployment", "fsagent-sandbox"),
        ("StatefulSet", "fsagent-cache"),
        ("Service", "fsagent-gateway"), ("Service", "fsagent-agent"), ("Service", "fsagent-sandbox"),
        ("Service", "fsagent-cache"), ("Service", "fsagent-cache-headless"),
        ("Service", "fsagent-agent-headless"), ("Service", "fsagent-sandbox-headless"),
        ("PersistentVolumeClaim", "fsagent-data"), ("ConfigMap", "fsagent-config"), ("ServiceAccount", "fsagent"),
        ("HorizontalPodAutoscaler", "fsagent-gateway"), ("HorizontalPodAutoscaler", "fsagent-agent"),
        ("NetworkPolicy", "fsagent-default-deny"),
        ("PrometheusRule", "fsagent"),
    }
    expected |= {("PodDisruptionBudget", f"fsagent-{c}") for c in COMPONENTS}
    expected |= {("NetworkPolicy", f"fsagent-{c}") for c in COMPONENTS}
    expected |= {("ServiceMonitor", f"fsagent-{c}") for c in COMPONENTS}
    assert expected <= names, expected - names
    assert not r.kind("Ingress"), "ingress is off by default"
    assert not r.kind("Secret"), "no Secret without values (no random secrets at render time)"


# --- security ---------------------------------------------------------------------------------------

def test_pods_and_containers_are_hardened(combination):
    name, r = combination
    for w in r.workloads():
        spec = w["spec"]["template"]["spec"]
        where = f"[{name}] {w['kind']}/{w['metadata']['name']}"
        assert spec["automountServiceAccountToken"] is False, where
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", where
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc.get("privileged", False) is False, where
            assert "ALL" in sc["capabilities"]["drop"] and not sc["capabilities"].get("add"), where
            assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault", where
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_volumes, f"{where}: /tmp must be an emptyDir"
            assert c["resources"].get("requests") and c["resources"].get("limits", {}).get("memory"), where
    for sa in r.kind("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


# --- probes and ports -------------------------------------------------------------------------------

def test_probes_ports_and_services(helm):
    r = helm.template()
    gw = main_container(r.get("Deployment", "fsagent-gateway"))
    assert {p["name"]: p["containerPort"] for p in gw["ports"]} == {"http": 8000, "metrics": GATEWAY_METRICS_PORT}
    assert gw["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert gw["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    for comp, port in GRPC_PORTS.items():
        kind = "StatefulSet" if comp == "cache" else "Deployment"
        c = main_container(r.get(kind, f"fsagent-{comp}"))
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": port, "metrics": METRICS_PORTS[comp]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["grpc"] == {"port": port}, f"{comp} {probe} must be a native grpc probe"
        svc = r.get("Service", f"fsagent-{comp}")
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": port, "metrics": METRICS_PORTS[comp]}
    svc = r.get("Service", "fsagent-gateway")
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("http", 8000), ("metrics", GATEWAY_METRICS_PORT)]
    cm = r.get("ConfigMap", "fsagent-config")["data"]
    assert cm["FSAGENT_GATEWAY_METRICS_PORT"] == str(GATEWAY_METRICS_PORT)
    sts = r.get("StatefulSet", "fsagent-cache")
    assert sts["spec"]["serviceName"] == "fsagent-cache-headless"
    assert r.get("Service", "fsagent-cache-headless")["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("headless", [True, False])
def test_agent_and_sandbox_addresses_follow_grpc_headless_services(helm, headless):
    r = helm.template(sets=[f"grpc.headlessServices={str(headless).lower()}"])
    cm = r.get("ConfigMap", "fsagent-config")["data"]
    services = {s["metadata"]["name"] for s in r.kind("Service")}
    monitors = r.kind("ServiceMonitor")
    assert monitors
    for comp in ("agent", "sandbox"):
        port = GRPC_PORTS[comp]
        address = cm[f"FSAGENT_{comp.upper()}_ADDR"]
        # The service listens on the port taken from its own address (lifecycle.host_port).
        assert int(address.rpartition(":")[2]) == port
        if not headless:
            assert address == f"fsagent-{comp}:{port}"
            assert f"fsagent-{comp}-headless" not in services
            continue
        assert address == f"dns:///fsagent-{comp}-headless.fsagent.svc:{port}"
        svc = r.get("Service", f"fsagent-{comp}-headless")
        cluster = r.get("Service", f"fsagent-{comp}")
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["selector"] == cluster["spec"]["selector"]
        assert svc["spec"]["ports"] == cluster["spec"]["ports"]
        labels = svc["metadata"]["labels"]
        assert labels["fsagent.io/headless"] == "true"
        # Every ServiceMonitor excludes it, or each pod would be scraped twice.
        for sm in monitors:
            assert {"key": "fsagent.io/headless", "operator": "DoesNotExist"} in sm["spec"]["selector"][
                "matchExpressions"], sm["metadata"]["name"]
    assert cm["FSAGENT_CACHE_ADDR"] == "fsagent-cache:50053"


def test_service_selectors_match_their_pods(combination):
    name, r = combination
    pods = {component_of(w): w["spec"]["template"]["metadata"]["labels"] for w in r.workloads()}
    for svc in r.kind("Service"):
        comp = component_of(svc)
        selector = svc["spec"]["selector"]
        assert all(pods[comp].get(k) == v for k, v in selector.items()), f"[{name}] {svc['metadata']['name']}"
        for w in r.workloads():
            if component_of(w) != comp:
                labels = w["spec"]["template"]["metadata"]["labels"]
                assert not all(labels.get(k) == v for k, v in selector.items()), f"[{name}] selector too wide"


# --- configuration and secrets ---------------------------------------------------------------------

def test_configuration_names_match_the_architecture(combination):
    name, r = combination
    cm = r.get("ConfigMap", "fsagent-config")["data"]
    allowed = ENV_NAMES | EXTRA_ENV_IN_TEST_VALUES
    assert set(cm) <= allowed, f"[{name}] unknown config keys {set(cm) - allowed}"
    assert cm["FSAGENT_BIND_HOST"] == "0.0.0.0"
    # grpc.headlessServices is on in every test value file: client-side round_robin over the pods.
    assert cm["FSAGENT_AGENT_ADDR"] == "dns:///fsagent-agent-headless.fsagent.svc:50051"
    assert cm["FSAGENT_SANDBOX_ADDR"] == "dns:///fsagent-sandbox-headless.fsagent.svc:50052"
    assert cm["FSAGENT_CACHE_ADDR"] == "fsagent-cache:50053"
    assert (cm["FSAGENT_GATEWAY_PORT"], cm["FSAGENT_AGENT_METRICS_PORT"], cm["FSAGENT_SANDBOX_METRICS_PORT"],
            cm["FSAGENT_CACHE_METRICS_PORT"]) == ("8000", "9101", "9102", "9103")
    for key in ("FSAGENT_CACHE_SIZE_LIMIT", "FSAGENT_MAX_OUTPUT_BYTES", "FSAGENT_MAX_FILE_SIZE",
                "FSAGENT_MAX_ITERATIONS", "FSAGENT_MAX_CONCURRENT_TOOLS", "FSAGENT_MAX_TOOL_CALLS_PER_TURN",
                "FSAGENT_MAX_TOOL_CALLS_PER_CHAT"):
        assert re.fullmatch(r"[0-9]+", cm[key]), f"[{name}] {key}={cm[key]!r} must be a plain integer"
    for w in r.workloads():
        for c in containers(w):
            env = {e["name"] for e in c.get("env", []) or []}
            assert env <= allowed, f"[{name}] {w['metadata']['name']}: unknown env {env - allowed}"
            for ref in c.get("envFrom", []) or []:
                assert "secretRef" not in ref, "secrets are mounted key by key, never with envFrom"


def test_secrets_reach_only_the_agent_and_the_api_keys_only_the_gateway(combination):
    name, r = combination
    for w in r.workloads():
        comp = component_of(w)
        for c in containers(w):
            for e in c.get("env", []) or []:
                secret_ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if e["name"] in SECRET_ENV:
                    assert secret_ref, f"[{name}] {e['name']} must come from a Secret"
                if secret_ref:
                    owner = "gateway" if e["name"] == "FSAGENT_API_KEYS" else "agent"
                    assert comp == owner, f"[{name}] {e['name']} mounted into {comp}"
        for v in w["spec"]["template"]["spec"].get("volumes", []):
            assert "secret" not in v and "projected" not in v, f"[{name}] secret volume in {comp}"


def test_no_secrets_rendered_when_existing_secrets_are_named(helm):
    r = helm.template(["existing-secret-values.yaml"])
    assert not r.kind("Secret")
    agent = main_container(r.get("Deployment", "fsagent-agent"))
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in agent["env"] if "valueFrom" in e}
    assert refs["OPENAI_API_KEY"] == {"name": "fsagent-llm", "key": "openai-api-key", "optional": True}
    assert refs["AZURE_OPENAI_API_KEY"] == {"name": "fsagent-llm", "key": "azure-openai-api-key", "optional": True}
    assert refs["LANGFUSE_PUBLIC_KEY"] == {"name": "langfuse-fsagent", "key": "LANGFUSE_PUBLIC_KEY"}
    assert refs["LANGFUSE_SECRET_KEY"] == {"name": "langfuse-fsagent", "key": "LANGFUSE_SECRET_KEY"}
    gw = main_container(r.get("Deployment", "fsagent-gateway"))
    assert gw["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "fsagent-api-keys", "key": "keys"}
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["OPENAI_BASE_URL"] == "https://llm.internal.example.com/v1"
    assert env["LANGFUSE_BASE_URL"] == "http://langfuse-web.langfuse.svc.cluster.local:3000"


def test_secrets_from_values_are_created_with_the_expected_keys(helm):
    r = helm.template(["everything-values.yaml"])
    secrets = {s["metadata"]["name"]: s for s in r.kind("Secret")}
    assert set(secrets) == {"fsagent-llm", "fsagent-langfuse", "fsagent-api-keys"}
    assert secrets["fsagent-llm"]["stringData"] == {"AZURE_OPENAI_API_KEY": "azure-test-key"}
    assert secrets["fsagent-langfuse"]["stringData"] == {"LANGFUSE_PUBLIC_KEY": "pk-lf-test", "LANGFUSE_SECRET_KEY": "sk-lf-test"}
    assert secrets["fsagent-api-keys"]["stringData"] == {"FSAGENT_API_KEYS": "key-one,key-two"}
    agent = main_container(r.get("Deployment", "fsagent-agent"))
    names = {e["name"] for e in agent["env"]}
    assert "AZURE_OPENAI_API_KEY" in names and "OPENAI_API_KEY" not in names
    assert {"FSAGENT_LLM_PROVIDER", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION", "AZURE_OPENAI_DEPLOYMENT"} <= names


def test_offline_default_has_no_keys_and_traces_off(helm):
    agent = main_container(helm.template().get("Deployment", "fsagent-agent"))
    names = {e["name"] for e in agent["env"]}
    assert not names & {"OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"}
    assert {"LANGFUSE_SAMPLE_RATE", "LANGFUSE_TRACING_ENVIRONMENT", "LANGFUSE_RELEASE"} <= names


def test_images_come_from_values(helm):
    r = helm.template(["everything-values.yaml"])
    for w in r.workloads():
        comp = component_of(w)
        assert main_container(w)["image"] == f"registry.example.com/fsagent/fsagent-{comp}:0.1.0"
    r = helm.template(sets=["agent.image.repository=reg.local/a", "agent.image.tag=abc@sha256:" + "0" * 64])
    assert main_container(r.get("Deployment", "fsagent-agent"))["image"] == "reg.local/a:abc@sha256:" + "0" * 64
    r = helm.template()
    # The default: where .github/workflows/release.yml publishes, tagged with the appVersion.
    assert main_container(r.get("Deployment", "fsagent-gateway"))["image"] == "ghcr.io/fsagent/fsagent-gateway:0.1.0"
    r = helm.template(sets=["image.registry="])
    assert main_container(r.get("Deployment", "fsagent-gateway"))["image"] == "fsagent-gateway:0.1.0"


# --- volumes ---------------------------------------------------------------------------------------

def test_data_volume_single_sandbox_is_rwo_and_recreated(helm):
    r = helm.template()
    pvc = r.get("PersistentVolumeClaim", "fsagent-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    sb = r.get("Deployment", "fsagent-sandbox")
    assert sb["spec"]["strategy"]["type"] == "Recreate"
    spec = sb["spec"]["template"]["spec"]
    data = next(v for v in spec["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == "fsagent-data"
    mount = next(m for m in main_container(sb)["volumeMounts"] if m["name"] == "data")
    assert mount["mountPath"] == "/data" and mount["readOnly"] is False
    assert [c["name"] for c in spec["initContainers"]] == ["seed-data"]
    assert "lost+found" in spec["initContainers"][0]["args"][0], "a fresh ext4 volume is empty but for lost+found"
    for comp in ("gateway", "agent"):
        vols = r.get("Deployment", f"fsagent-{comp}")["spec"]["template"]["spec"]["volumes"]
        assert all("persistentVolumeClaim" not in v for v in vols), f"only the sandbox mounts the data volume ({comp})"


def test_data_volume_is_rwx_for_several_sandboxes(helm):
    r = helm.template(["everything-values.yaml"])
    assert r.get("PersistentVolumeClaim", "fsagent-data")["spec"]["accessModes"] == ["ReadWriteMany"]
    sb = r.get("Deployment", "fsagent-sandbox")
    assert sb["spec"]["replicas"] == 2 and sb["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert "affinity" not in sb["spec"]["template"]["spec"], "a shared volume needs no co-location"


def test_sandboxes_on_a_read_write_once_claim_share_its_node(helm):
    """Scaling out keeps a ReadWriteOnce claim (its modes are immutable): the pods go where it is mounted."""
    r = helm.template(sets=["sandbox.replicas=3", "data.persistence.accessModes[0]=ReadWriteOnce"])
    assert r.get("PersistentVolumeClaim", "fsagent-data")["spec"]["accessModes"] == ["ReadWriteOnce"]
    sb = r.get("Deployment", "fsagent-sandbox")
    assert sb["spec"]["strategy"] == {"type": "RollingUpdate"}
    (term,) = sb["spec"]["template"]["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == sb["spec"]["selector"]["matchLabels"]
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}
    import json
    r = helm.template(sets=["sandbox.replicas=3", "data.persistence.accessModes[0]=ReadWriteOnce"],
                      extra=["--set-json", "sandbox.affinity=" + json.dumps(own)])
    assert r.get("Deployment", "fsagent-sandbox")["spec"]["template"]["spec"]["affinity"] == own, "the user's affinity wins"


def test_read_only_install_uses_the_existing_claim_read_only(helm):
    r = helm.template(["read-only-values.yaml"])
    assert [c["metadata"]["name"] for c in r.kind("PersistentVolumeClaim")] == ["fsagent-cache"], "no data claim"
    assert r.get("ConfigMap", "fsagent-config")["data"]["FSAGENT_READ_ONLY"] == "true"
    sb = r.get("Deployment", "fsagent-sandbox")
    spec = sb["spec"]["template"]["spec"]
    data = next(v for v in spec["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"] == {"claimName": "company-docs", "readOnly": True}
    mount = next(m for m in main_container(sb)["volumeMounts"] if m["name"] == "data")
    assert mount["readOnly"] is True and mount["subPath"] == "handbook"
    assert "initContainers" not in spec, "nothing is seeded into a read-only volume"


def test_cache_is_a_single_statefulset_with_its_own_claim(helm):
    r = helm.template()
    sts = r.get("StatefulSet", "fsagent-cache")
    assert sts["spec"]["replicas"] == 1
    assert "volumeClaimTemplates" not in sts["spec"], "a StatefulSet's claim templates can never be changed"
    vol = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache")
    assert vol["persistentVolumeClaim"] == {"claimName": "fsagent-cache"}
    pvc = r.get("PersistentVolumeClaim", "fsagent-cache")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", "sessions outlive an uninstall"
    r2 = helm.template(sets=["cache.persistence.existingClaim=cache-fsagent-cache-0"])
    assert all(c["metadata"]["name"] != "fsagent-cache" for c in r2.kind("PersistentVolumeClaim"))
    vol = next(v for v in r2.get("StatefulSet", "fsagent-cache")["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache")
    assert vol["persistentVolumeClaim"] == {"claimName": "cache-fsagent-cache-0"}
    mount = next(m for m in main_container(sts)["volumeMounts"] if m["name"] == "cache")
    assert mount["mountPath"] == r.get("ConfigMap", "fsagent-config")["data"]["FSAGENT_CACHE_DIR"]


@pytest.mark.parametrize("bad_set, message", [
    ("cache.replicas=2", "cache/replicas"),
    ("containerSecurityContext.readOnlyRootFilesystem=false", "readOnlyRootFilesystem"),
    ("agent.llm.provider=bogus", "provider"),
    ("unknownTopLevelKey=1", "unknownTopLevelKey"),
    ("serviceMonitor.interval=thirty", "interval"),
])
def test_values_schema_rejects_bad_values(helm, bad_set, message):
    assert message in helm.template_fails(sets=[bad_set])


# --- scaling objects and ingress -------------------------------------------------------------------

def test_hpa_and_pdb(helm):
    r = helm.template()
    for comp in ("gateway", "agent"):
        hpa = r.get("HorizontalPodAutoscaler", f"fsagent-{comp}")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"fsagent-{comp}"}
        assert "replicas" not in r.get("Deployment", f"fsagent-{comp}")["spec"], "the HPA owns replicas"
    for pdb in r.kind("PodDisruptionBudget"):
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component_of(pdb)
    dev = helm.template(["dev-values.yaml"])
    assert not dev.kind("HorizontalPodAutoscaler") and not dev.kind("PodDisruptionBudget")
    assert not dev.kind("NetworkPolicy")
    assert dev.get("Deployment", "fsagent-agent")["spec"]["replicas"] == 1


def test_ingress_routes_to_the_gateway_with_tls(helm):
    r = helm.template(["everything-values.yaml"])
    (ing,) = r.kind("Ingress")
    spec = ing["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["fsagent.example.com"], "secretName": "fsagent-tls"}]
    (rule,) = spec["rules"]
    assert rule["host"] == "fsagent.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "fsagent-gateway", "port": {"name": "http"}}


# --- network policies --------------------------------------------------------------------------------

def _peer_name(peer) -> str:
    if "ipBlock" in peer:
        return "cidr:" + peer["ipBlock"]["cidr"]
    labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
    ns = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
    if labels.get("fsagent.io/helm-test") == "true" and "namespaceSelector" not in peer:
        return "helm-test"
    if "app.kubernetes.io/component" in labels and "namespaceSelector" not in peer:
        return labels["app.kubernetes.io/component"]
    if ns == "kube-system" and labels.get("k8s-app") == "kube-dns":
        return "dns"
    if peer.get("anywhere"):
        return "anywhere"
    if ns == "ingress-nginx":
        return "ingress-controller"
    if ns == "monitoring" and labels.get("app.kubernetes.io/name") == "prometheus":
        return "prometheus"
    if labels.get("app.kubernetes.io/instance") == "langfuse":
        return "langfuse"
    return "other"


def _graph(r):
    ingress, egress = set(), set()
    for pol in r.kind("NetworkPolicy"):
        sel = pol["spec"]["podSelector"]["matchLabels"]
        if "app.kubernetes.io/component" not in sel:
            continue
        me = sel["app.kubernetes.io/component"]
        for rule in pol["spec"].get("ingress", []):
            for peer in rule.get("from", [{"anywhere": True}]):
                for p in rule["ports"]:
                    ingress.add((_peer_name(peer), me, p["port"]))
        for rule in pol["spec"].get("egress", []):
            for peer in rule["to"]:
                for p in rule["ports"]:
                    egress.add((me, _peer_name(peer), p["port"]))
    return ingress, egress


def test_network_policies_allow_exactly_the_architecture_graph(helm):
    r = helm.template()
    deny = r.get("NetworkPolicy", "fsagent-default-deny")["spec"]
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "fsagent", "app.kubernetes.io/instance": "fsagent"}
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    ingress, egress = _graph(r)
    assert ingress == {
        ("anywhere", "gateway", 8000), ("prometheus", "gateway", GATEWAY_METRICS_PORT),
        ("gateway", "agent", 50051), ("prometheus", "agent", 9101),
        ("gateway", "sandbox", 50052), ("agent", "sandbox", 50052), ("prometheus", "sandbox", 9102),
        ("agent", "cache", 50053), ("sandbox", "cache", 50053), ("prometheus", "cache", 9103),
    }
    dns = {(c, "dns", 53) for c in COMPONENTS}
    assert egress == dns | {
        ("gateway", "agent", 50051), ("gateway", "sandbox", 50052),
        ("agent", "sandbox", 50052), ("agent", "cache", 50053),
        ("sandbox", "cache", 50053),
        ("agent", "cidr:0.0.0.0/0", 443),
    }
    for pol in r.kind("NetworkPolicy"):
        assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_gateway_clients_can_be_narrowed_without_opening_metrics(helm):
    peer = '{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}'
    ingress, _ = _graph(helm.template(extra=["--set-json", f"networkPolicy.gatewayFrom=[{peer}]"]))
    to_gateway = {(src, port) for src, dst, port in ingress if dst == "gateway"}
    # helm test's pod (its chat) is let in beside the narrowed list, on the API port only.
    assert to_gateway == {("ingress-controller", 8000), ("helm-test", 8000), ("prometheus", GATEWAY_METRICS_PORT)}
    ingress, _ = _graph(helm.template(extra=["--set-json", f"networkPolicy.gatewayFrom=[{peer}]",
                                              "--set", "helmTest.enabled=false"]))
    to_gateway = {(src, port) for src, dst, port in ingress if dst == "gateway"}
    assert to_gateway == {("ingress-controller", 8000), ("prometheus", GATEWAY_METRICS_PORT)}


def test_only_the_agent_gets_external_egress(helm):
    for values in (["everything-values.yaml"], ["existing-secret-values.yaml"], ["langfuse-values.yaml"],
                   ["external-langfuse-values.yaml"]):
        _, egress = _graph(helm.template(values))
        external = {(src, dst) for src, dst, _ in egress if dst.startswith("cidr:") or dst in ("langfuse", "other")}
        assert external and {src for src, _ in external} == {"agent"}, values
    _, egress = _graph(helm.template(["langfuse-values.yaml"]))
    assert ("agent", "langfuse", 3000) in egress


# --- NOTES -------------------------------------------------------------------------------------------

def _notes(helm, lib, tmp_path, *values: str, api: bool = False) -> str:
    """NOTES.txt is not rendered by `helm template`: render it through a copy of the chart."""
    import shutil

    import yaml

    chart = tmp_path / "chart"
    if not chart.exists():
        shutil.copytree(lib.CHART, chart)
        shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.tpl")
        (chart / "templates" / "zz-notes.yaml").write_text(
            'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n'
            '  notes: {{ tpl (.Files.Get "notes.tpl") . | quote }}\n')
    cmd = [helm.binary, "template", "fsagent", str(chart), "--namespace", "fsagent",
           "--show-only", "templates/zz-notes.yaml"]
    for v in values:
        cmd += ["-f", str(lib.CI_VALUES / v)]
    if api:
        cmd += ["--api-versions", lib.MONITORING_API]
    return yaml.safe_load(lib.run(cmd).stdout)["data"]["notes"]


def test_notes_render(helm, lib, tmp_path):
    out = _notes(helm, lib, tmp_path)
    assert "kubectl -n fsagent port-forward svc/fsagent-gateway 8000:8000" in out
    assert "WARNING: gateway.apiKeys is empty" in out
    assert "monitoring.coreos.com/v1 is not served" in out
    out = _notes(helm, lib, tmp_path, "everything-values.yaml", api=True)
    assert "https://fsagent.example.com/api" in out and "WARNING" not in out
    assert "Langfuse tracing: on (keys from Secret fsagent-langfuse" in out
    assert 'ServiceMonitors and PrometheusRule labelled {"release":"kps","team":"ml"}' in out
