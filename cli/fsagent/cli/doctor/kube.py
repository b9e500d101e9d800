"""The doctor's view of the cluster through the official `kubernetes` client: configuration from a
kubeconfig (optionally a context) or in-cluster (the pod's ServiceAccount token), reads returning the
objects as the API server serves them (plain JSON dicts), and GETs through the API server's service
and pod proxies (no port-forward).

Every read is get or list: the chart's helm-test Role grants nothing else (helm/fsagent/templates/
tests/rbac.yaml). A refused read raises Forbidden, which the checks turn into a WARN naming the
permission."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

# Where a pod finds its ServiceAccount token, CA and namespace (overridable for tests and for
# unusual mounts).
SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TIMEOUT = 10.0


class KubeError(Exception):
    def __init__(self, status: int, message: str, what: str = "") -> None:
        self.status, self.message, self.what = status, message, what
        super().__init__(f"{what}: {message}" if what else message)


class Forbidden(KubeError):
    pass


class NotFound(KubeError):
    pass


def _message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or b"{}")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (ValueError, TypeError):
        pass
    text = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    return (text.strip() or exc.reason or f"HTTP {exc.status}")[:300]


def _raise(exc: ApiException, what: str) -> None:
    status = exc.status or 0
    cls = Forbidden if status == 403 else NotFound if status == 404 else KubeError
    raise cls(status, _message(exc), what) from None


@dataclass
class Target:
    """How the doctor reaches the API server, for the report's header."""

    server: str
    context: str = ""
    in_cluster: bool = False
    namespace: str = ""  # the pod's namespace (in-cluster) or the context's


def in_cluster_available(sa_dir: str | None = None) -> bool:
    base = Path(sa_dir or os.environ.get("FSAGENT_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_DIR)
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (base / "token").is_file()


def load(kubeconfig: str | None = None, context: str | None = None, in_cluster: bool | None = None) -> tuple[client.ApiClient, Target]:
    """in_cluster None: in-cluster when running in a pod and no kubeconfig was named."""
    sa_dir = Path(os.environ.get("FSAGENT_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_DIR)
    if in_cluster is None:
        in_cluster = kubeconfig is None and context is None and in_cluster_available() \
            and not os.environ.get("KUBECONFIG")
    cfg = client.Configuration()
    if in_cluster:
        InClusterConfigLoader(token_filename=str(sa_dir / "token"), cert_filename=str(sa_dir / "ca.crt")).load_and_set(cfg)
        ns_file = sa_dir / "namespace"
        namespace = ns_file.read_text().strip() if ns_file.is_file() else ""
        return client.ApiClient(cfg), Target(server=cfg.host, in_cluster=True, namespace=namespace)
    config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False)
    contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    active = next((c for c in contexts if c["name"] == context), current) if context else current
    namespace = ((active or {}).get("context") or {}).get("namespace", "")
    return client.ApiClient(cfg), Target(server=cfg.host, context=(active or {}).get("name", ""), namespace=namespace)


def _json(response: Any) -> Any:
    return json.loads(response.data)


class Kube:
    """Reads as JSON. kinds: the plural resource names kubectl uses."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.networking = client.NetworkingV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.auth = client.AuthenticationV1Api(api)
        self.apis = client.ApisApi(api)
        c, a, d, n = self.core, self.apps, self.discovery, self.networking
        # kind -> (list in namespace, list in all namespaces, read one)
        self._typed: dict[str, tuple[Callable | None, Callable | None, Callable | None]] = {
            "pods": (c.list_namespaced_pod, c.list_pod_for_all_namespaces, c.read_namespaced_pod),
            "services": (c.list_namespaced_service, c.list_service_for_all_namespaces, c.read_namespaced_service),
            "persistentvolumeclaims": (c.list_namespaced_persistent_volume_claim, None, c.read_namespaced_persistent_volume_claim),
            "configmaps": (c.list_namespaced_config_map, c.list_config_map_for_all_namespaces, c.read_namespaced_config_map),
            "secrets": (None, None, c.read_namespaced_secret),
            "namespaces": (None, c.list_namespace, None),
            "deployments": (a.list_namespaced_deployment, a.list_deployment_for_all_namespaces, a.read_namespaced_deployment),
            "statefulsets": (a.list_namespaced_stateful_set, a.list_stateful_set_for_all_namespaces, a.read_namespaced_stateful_set),
            "endpointslices": (d.list_namespaced_endpoint_slice, None, None),
            "networkpolicies": (n.list_namespaced_network_policy, None, None),
            "ingresses": (n.list_namespaced_ingress, None, None),
        }
        self._groups: set[str] | None = None

    # -- reads ------------------------------------------------------------------------------------

    def list(self, kind: str, namespace: str | None = None, labels: str | None = None) -> list[dict[str, Any]]:
        what = f"list {kind}" + (f" in {namespace}" if namespace else " in all namespaces")
        kw: dict[str, Any] = {"_preload_content": False, "_request_timeout": TIMEOUT}
        if labels:
            kw["label_selector"] = labels
        try:
            if kind in MONITORING:
                group, version = MONITORING[kind]
                if namespace:
                    resp = self.custom.list_namespaced_custom_object(group, version, namespace, kind, **kw)
                else:
                    resp = self.custom.list_cluster_custom_object(group, version, kind, **kw)
            else:
                in_ns, everywhere, _ = self._typed[kind]
                resp = in_ns(namespace, **kw) if namespace else everywhere(**kw)  # type: ignore[misc]
        except ApiException as exc:
            _raise(exc, what)
        return _json(resp).get("items") or []

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        what = f"get {kind}/{name}" + (f" in {namespace}" if namespace else "")
        kw: dict[str, Any] = {"_preload_content": False, "_request_timeout": TIMEOUT}
        try:
            if kind == "namespaces":
                resp = self.core.read_namespace(name, **kw)
            elif kind in MONITORING:
                group, version = MONITORING[kind]
                resp = self.custom.get_namespaced_custom_object(group, version, namespace, kind, name, **kw)
            else:
                resp = self._typed[kind][2](name, namespace, **kw)  # type: ignore[misc]
        except ApiException as exc:
            _raise(exc, what)
        return _json(resp)

    def served(self, group: str) -> bool:
        """Whether the API server serves an API group (e.g. monitoring.coreos.com)."""
        if self._groups is None:
            try:
                groups = _json(self.apis.get_api_versions(_preload_content=False, _request_timeout=TIMEOUT))
                self._groups = {g["name"] for g in groups.get("groups") or []}
            except ApiException:
                self._groups = set()
        return group in self._groups

    def whoami(self) -> str:
        try:
            review = _json(self.auth.create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                 "kind": "SelfSubjectReview"},
                                                                _preload_content=False, _request_timeout=TIMEOUT))
            return review.get("status", {}).get("userInfo", {}).get("username", "")
        except (ApiException, ValueError, TypeError):
            return ""

    # -- proxies ----------------------------------------------------------------------------------

    def service_get(self, namespace: str, service: str, port: str | int, path: str) -> bytes:
        """GET through the API server's service proxy: /api/v1/namespaces/NS/services/SVC:PORT/proxy/PATH."""
        what = f"GET /{path.lstrip('/')} on service {namespace}/{service}:{port}"
        try:
            resp = self.core.connect_get_namespaced_service_proxy_with_path(
                f"{service}:{port}", namespace, path.lstrip("/"), _preload_content=False, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404 and f'services \\"{service}\\" not found' in str(exc.body or ""):
                # The proxy resolves a Service through its Endpoints: "not found" also means "no endpoints yet".
                raise NotFound(404, f"service {namespace}/{service} not found, or it has no endpoints", what) from None
            _raise(exc, what)
        return resp.data

    def service_post(self, namespace: str, service: str, port: str | int, path: str, body: dict[str, Any],
                     headers: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, bytes, dict[str, str]]:
        """POST a JSON body through the service proxy (needs `create` on services/proxy, which the
        helm-test Role does not grant: the test pod talks to the gateway Service directly)."""
        method, url, hdrs, data, _ = self.api.param_serialize(
            method="POST", resource_path="/api/v1/namespaces/{namespace}/services/{name}/proxy/{path}",
            path_params={"namespace": namespace, "name": f"{service}:{port}", "path": path.lstrip("/")},
            header_params={"Content-Type": "application/json", "Accept": "*/*", **(headers or {})},
            body=body, auth_settings=["BearerToken"])
        try:
            resp = self.api.call_api(method, url, header_params=hdrs, body=data, _request_timeout=timeout)
            resp.read()
        except ApiException as exc:
            _raise(exc, f"POST {path} on service {namespace}/{service}:{port}")
        if resp.status in (403, 404, 503) and b'"kind":"Status"' in (resp.data or b"")[:200]:
            # The API server's own refusal (forbidden, no such service, no endpoints), not the app's.
            _raise(ApiException(status=resp.status, reason=resp.reason, body=resp.data),
                   f"POST {path} on service {namespace}/{service}:{port}")
        return resp.status, resp.data, {k.lower(): v for k, v in (resp.getheaders() or {}).items()}

    def pod_get(self, namespace: str, pod: str, port: int, path: str) -> bytes:
        what = f"GET {path} on pod {namespace}/{pod}:{port}"
        try:
            resp = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:{port}", namespace, path.lstrip("/"), _preload_content=False, _request_timeout=TIMEOUT)
        except ApiException as exc:
            _raise(exc, what)
        return resp.data


def secret_value(secret: dict[str, Any], key: str) -> str | None:
    data = secret.get("data") or {}
    if key in data:
        return base64.b64decode(data[key]).decode(errors="replace")
    return (secret.get("stringData") or {}).get(key)


MONITORING = {
    "prometheuses": ("monitoring.coreos.com", "v1"),
    "servicemonitors": ("monitoring.coreos.com", "v1"),
    "prometheusrules": ("monitoring.coreos.com", "v1"),
    "podmonitors": ("monitoring.coreos.com", "v1"),
}
