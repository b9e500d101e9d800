"""k8s/: plain manifests rendered from the chart by scripts/render_k8s.sh; fail on drift."""

from __future__ import annotations

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")


def test_k8s_manifests_match_the_chart(lib):
    import os
    import subprocess

    helm = lib.require_tool("helm")
    proc = subprocess.run(["bash", str(lib.REPO / "scripts" / "render_k8s.sh"), "--check"], cwd=lib.REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HELM": helm})
    assert proc.returncode == 0, proc.stderr + "\n(run scripts/render_k8s.sh and commit k8s/)"


@pytest.mark.parametrize("overlay", ["base", "monitoring"])
def test_kustomizations_list_every_file_and_build(lib, overlay):
    directory = lib.REPO / "k8s" / overlay
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    assert kustomization["resources"] == files
    assert kustomization["namespace"] == "fsagent"
    kubectl = lib.require_tool("kubectl")
    built = [d for d in yaml.safe_load_all(lib.run([kubectl, "kustomize", str(directory)]).stdout) if d]
    assert len(built) == len(files)
    assert all(d["metadata"]["namespace"] == "fsagent" for d in built)
    for d in built:
        assert "helm.sh/chart" not in d["metadata"].get("labels", {})
        if overlay == "base":
            kubernetes_validate.validate(d, lib.K8S_VERSION, strict=True)


def test_base_is_the_default_install(lib, helm):
    # Helm's test hook (the `helm test` pod) is not an object to apply.
    rendered = {(d["kind"], d["metadata"]["name"]) for d in helm.template(monitoring_api=False).docs
                if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})}
    files = {(d["kind"], d["metadata"]["name"])
             for p in (lib.REPO / "k8s" / "base").glob("*.yaml") if p.name != "kustomization.yaml"
             for d in yaml.safe_load_all(p.read_text()) if d}
    assert files == rendered
