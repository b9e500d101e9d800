"""helm/langfuse-values.yaml for the official Langfuse chart (langfuse/langfuse-k8s). The chart cannot
be fetched offline, so this checks the file's keys against the ones verified in the chart's
documentation and examples (chart 2.x), the v4 server pin, headless initialisation, pinned secrets,
and that fsagent reads the same key pair from the same Secret."""

from __future__ import annotations

import re

import pytest
import yaml

# Value paths of langfuse/langfuse 2.x that this file may use, as documented in the chart's README /
# values table and examples (minimal-installation, v4-installation, upgrade-v1-to-v2).
VERIFIED_KEYS = {
    "langfuse.image.tag", "langfuse.image.pullPolicy",
    "langfuse.salt.secretKeyRef.name", "langfuse.salt.secretKeyRef.key",
    "langfuse.encryptionKey.secretKeyRef.name", "langfuse.encryptionKey.secretKeyRef.key",
    "langfuse.nextauth.url", "langfuse.nextauth.secret.secretKeyRef.name", "langfuse.nextauth.secret.secretKeyRef.key",
    "langfuse.features.signUpDisabled", "langfuse.features.telemetryEnabled",
    "langfuse.additionalEnv",
    "langfuse.ingress.enabled", "langfuse.ingress.className", "langfuse.ingress.hosts", "langfuse.ingress.tls.enabled",
    "langfuse.ingress.tls.secretName", "langfuse.ingress.annotations",
    "postgresql.deploy", "clickhouse.deploy", "clickhouse.cluster.replicas", "clickhouse.keeper.replicas",
    "redis.deploy", "s3.deploy",
}
INIT_VARS = {"LANGFUSE_INIT_ORG_ID", "LANGFUSE_INIT_PROJECT_ID", "LANGFUSE_INIT_PROJECT_PUBLIC_KEY",
             "LANGFUSE_INIT_PROJECT_SECRET_KEY", "LANGFUSE_INIT_USER_EMAIL", "LANGFUSE_INIT_USER_NAME",
             "LANGFUSE_INIT_USER_PASSWORD"}
SECRET_VARS = {"LANGFUSE_INIT_PROJECT_PUBLIC_KEY", "LANGFUSE_INIT_PROJECT_SECRET_KEY", "LANGFUSE_INIT_USER_EMAIL",
               "LANGFUSE_INIT_USER_PASSWORD"}


@pytest.fixture(scope="module")
def values(lib):
    return yaml.safe_load((lib.REPO / "helm" / "langfuse-values.yaml").read_text())


def leaf_paths(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{prefix}.{k}" if prefix else k
            if path == "langfuse.additionalEnv":
                yield path
            else:
                yield from leaf_paths(v, path)
    else:
        yield prefix


def test_only_verified_chart_keys(values):
    assert set(leaf_paths(values)) <= VERIFIED_KEYS, set(leaf_paths(values)) - VERIFIED_KEYS


def test_server_is_pinned_to_a_v4_release_the_python_sdk_5_supports(values):
    tag = values["langfuse"]["image"]["tag"]
    assert isinstance(tag, str) and re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", tag), "an exact release, not a floating tag"
    major, minor, patch = map(int, tag.split("."))
    assert major == 4 and (minor, patch) >= (59, 0)


def test_headless_initialisation_and_pinned_secrets(values):
    env = {e["name"]: e for e in values["langfuse"]["additionalEnv"]}
    assert INIT_VARS <= set(env)
    for name in SECRET_VARS:
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "langfuse-fsagent", name
    lf = values["langfuse"]
    for ref in (lf["salt"], lf["encryptionKey"], lf["nextauth"]["secret"]):
        assert set(ref) == {"secretKeyRef"} and ref["secretKeyRef"]["name"] == "langfuse-fsagent"


def test_fsagent_reads_the_same_keys_from_the_same_secret(values, lib, helm):
    env = {e["name"]: e for e in values["langfuse"]["additionalEnv"]}
    public = env["LANGFUSE_INIT_PROJECT_PUBLIC_KEY"]["valueFrom"]["secretKeyRef"]
    secret = env["LANGFUSE_INIT_PROJECT_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    r = helm.template(["langfuse-values.yaml"])
    agent = r.get("Deployment", "fsagent-agent")["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in agent["env"] if "valueFrom" in e}
    assert refs["LANGFUSE_PUBLIC_KEY"] == {"name": public["name"], "key": public["key"]}
    assert refs["LANGFUSE_SECRET_KEY"] == {"name": secret["name"], "key": secret["key"]}
    base_url = next(e["value"] for e in agent["env"] if e["name"] == "LANGFUSE_BASE_URL")
    assert base_url == "http://langfuse-web:3000", "the chart's web Service for release name `langfuse`"


def test_docs_name_the_chart_version_and_image(lib):
    text = (lib.REPO / "helm" / "langfuse-values.yaml").read_text() + (lib.REPO / "docs" / "deploy.md").read_text()
    assert "--version 2.1.3" in text and "4.59.0" in text
    skaffold = (lib.REPO / "skaffold.yaml").read_text()
    assert "version: 2.1.3" in skaffold
