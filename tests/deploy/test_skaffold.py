"""skaffold.yaml against skaffold's v4beta13 JSON schema (vendored: tests/deploy/schemas/), with every
profile applied alone and together (profiles are JSON patches: their paths must resolve)."""

from __future__ import annotations

import copy
import itertools
import json
import re

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
COMPONENTS = ("gateway", "agent", "sandbox", "cache")


@pytest.fixture(scope="module")
def config(lib):
    return yaml.safe_load((lib.REPO / "skaffold.yaml").read_text())


@pytest.fixture(scope="module")
def validator(lib, config):
    version = config["apiVersion"].split("/")[1]
    path = lib.REPO / "tests" / "deploy" / "schemas" / f"skaffold-{version}.json"
    assert path.exists(), f"no vendored schema for {config['apiVersion']}"
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


def _pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    return parent, parts[-1]


def apply_patch(doc, patches):
    """The JSON-patch subset skaffold profiles use here: add and replace."""
    for patch in patches:
        parent, key = _pointer(doc, patch["path"])
        op = patch.get("op", "replace")
        if isinstance(parent, list):
            if key == "-":
                assert op == "add"
                parent.append(copy.deepcopy(patch["value"]))
            else:
                index = int(key)
                assert index <= len(parent)
                if op == "add":
                    parent.insert(index, copy.deepcopy(patch["value"]))
                else:
                    parent[index] = copy.deepcopy(patch["value"])
        else:
            assert op == "add" or key in parent, f"replace of missing {patch['path']}"
            parent[key] = copy.deepcopy(patch["value"])
    return doc


def activate(config, names):
    doc = copy.deepcopy({k: v for k, v in config.items() if k != "profiles"})
    profiles = {p["name"]: p for p in config["profiles"]}
    for name in names:
        p = profiles[name]
        doc = apply_patch(doc, p.get("patches", []))
        for key in ("build", "deploy", "manifests", "portForward", "test"):
            if key in p:
                doc[key] = copy.deepcopy(p[key])
    return doc


def errors(validator, doc):
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_schema_accepts_the_config(validator, config):
    assert config["apiVersion"] == "skaffold/v4beta13" and config["kind"] == "Config"
    assert not errors(validator, config)


def test_schema_rejects_a_typo(validator, config):
    bad = copy.deepcopy(config)
    bad["deploy"]["helm"]["releases"][0]["chartPth"] = "helm/fsagent"
    assert errors(validator, bad)


@pytest.mark.parametrize("names", [combo for n in (1, 2, 3) for combo in itertools.permutations(["dev", "langfuse", "monitoring"], n)],
                         ids=lambda c: "+".join(c))
def test_every_profile_combination_is_valid(validator, config, lib, names):
    doc = activate(config, names)
    assert not errors(validator, doc)
    releases = doc["deploy"]["helm"]["releases"]
    fsagent = releases[0]
    assert fsagent["name"] == "fsagent" and fsagent["chartPath"] == "helm/fsagent"
    for values in fsagent["valuesFiles"]:
        assert (lib.REPO / values).exists(), values
    assert set(fsagent["dependsOn"]) == {r["name"] for r in releases[1:]}
    for r in releases[1:]:
        for values in r.get("valuesFiles", []):
            assert (lib.REPO / values).exists(), values
        assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", r["version"]), "remote charts are pinned"
    if "langfuse" in names:
        lf = next(r for r in releases if r["name"] == "langfuse")
        assert lf["repo"] == "https://langfuse.github.io/langfuse-k8s" and lf["remoteChart"] == "langfuse"
        assert lf["namespace"] == fsagent["namespace"], "one namespace, so both read the same Secret"


def test_artifacts_and_image_wiring(config, lib):
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert set(artifacts) == {f"fsagent-{c}" for c in COMPONENTS}
    for c in COMPONENTS:
        a = artifacts[f"fsagent-{c}"]
        assert a["context"] == "." and a["docker"]["dockerfile"] == f"services/{c}/Dockerfile"
        assert (lib.REPO / a["docker"]["dockerfile"]).exists()
    templates = config["deploy"]["helm"]["releases"][0]["setValueTemplates"]
    for c in COMPONENTS:
        key = "fsagent_" + c  # skaffold's IMAGE_* names: the image name with non-alphanumerics as "_"
        assert templates[f"{c}.image.repository"] == "{{.IMAGE_REPO_%s}}" % key
        assert templates[f"{c}.image.tag"].startswith("{{.IMAGE_TAG_%s}}" % key)


def test_set_value_templates_render_through_the_chart(config, helm):
    templates = config["deploy"]["helm"]["releases"][0]["setValueTemplates"]
    sets = []
    for key, value in templates.items():
        filled = re.sub(r"\{\{\.IMAGE_REPO_fsagent_([a-z]+)\}\}", r"registry.example.com/fsagent-\1", value)
        filled = re.sub(r"\{\{\.IMAGE_TAG_fsagent_[a-z]+\}\}", "v1-abc1234", filled)
        filled = re.sub(r"\{\{\.IMAGE_DIGEST_fsagent_[a-z]+\}\}", "sha256:" + "1" * 64, filled)
        sets.append(f"{key}={filled}")
    r = helm.template(sets=sets)
    images = {w["metadata"]["name"]: w["spec"]["template"]["spec"]["containers"][0]["image"] for w in r.workloads()}
    assert images["fsagent-agent"].startswith("registry.example.com/fsagent-agent:v1-abc1234")
