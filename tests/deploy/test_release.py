"""The release workflow (.github/workflows/release.yml) and the Dockerfiles, offline: actionlint over
every workflow, hadolint over every Dockerfile (each tool also shown to catch a planted mistake, so a
pass means something), and the images the workflow publishes are the ones the chart's defaults name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

COMPONENTS = ("gateway", "agent", "sandbox", "cache")


def workflows(lib) -> list[Path]:
    return sorted((lib.REPO / ".github" / "workflows").glob("*.y*ml"))


def dockerfiles(lib) -> list[Path]:
    skip = {".git", ".venv", ".tools", "node_modules"}
    return sorted(p for p in lib.REPO.rglob("Dockerfile*") if not skip & set(p.relative_to(lib.REPO).parts))


def actionlint_cmd(lib) -> list[str]:
    cmd = [lib.require_tool("actionlint")]
    shellcheck = lib.find_tool("shellcheck")
    if shellcheck:
        cmd += ["-shellcheck", shellcheck]
    return cmd


def test_actionlint_passes_every_workflow(lib):
    files = workflows(lib)
    assert files, "no workflow"
    proc = lib.run([*actionlint_cmd(lib), *map(str, files)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(lib, tmp_path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ github.nonexistent_context }} $undefined_var\n"
        "      - uses: actions/checkout@v5\n        with: {no-such-input: 1}\n"
    )
    proc = lib.run([*actionlint_cmd(lib), str(bad)], check=False)
    assert proc.returncode != 0 and "nonexistent_context" in proc.stdout, proc.stdout


def test_hadolint_passes_every_dockerfile(lib):
    hadolint = lib.require_tool("hadolint")
    files = dockerfiles(lib)
    assert {f"services/{c}/Dockerfile" for c in COMPONENTS} <= {str(p.relative_to(lib.REPO)) for p in files}
    # No ignore list and the strictest threshold: style findings fail too.
    proc = lib.run([hadolint, "--no-color", "--failure-threshold", "style", *map(str, files)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(lib, tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    proc = lib.run([lib.require_tool("hadolint"), "--no-color", str(bad)], check=False)
    assert proc.returncode != 0 and "DL3008" in proc.stdout and "DL3006" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def release(lib) -> dict:
    doc = yaml.safe_load((lib.REPO / ".github" / "workflows" / "release.yml").read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads a bare `on` as true
    return doc


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def test_release_runs_on_version_tags_with_least_privilege(release):
    assert set(release["on"]) == {"push"} and release["on"]["push"]["tags"] == ["v[0-9]+.[0-9]+.[0-9]+"]
    assert release["permissions"] == {}
    for name, job in release["jobs"].items():
        assert job["permissions"].get("contents") == "read", name
        assert set(job["permissions"]) <= {"contents", "packages"}, name
        for step in job["steps"]:
            uses = step.get("uses", "")
            if uses:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v[0-9]+(\.[0-9]+)*|[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), uses


def test_release_builds_the_four_images_for_amd64_and_arm64(release):
    job = release["jobs"]["images"]
    assert job["needs"] == "version"
    assert sorted(job["strategy"]["matrix"]["service"]) == sorted(COMPONENTS)
    (build,) = steps_using(job, "docker/build-push-action")
    w = build["with"]
    assert w["context"] == "." and w["file"] == "services/${{ matrix.service }}/Dockerfile"
    assert set(w["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert w["push"] is True and w["tags"] == "${{ steps.meta.outputs.tags }}"
    (meta,) = steps_using(job, "docker/metadata-action")
    assert meta["with"]["images"] == "ghcr.io/${{ needs.version.outputs.owner }}/fsagent-${{ matrix.service }}"
    # The tag without its "v": exactly the chart's appVersion (the version job enforces equality).
    assert "type=semver,pattern={{version}}" in meta["with"]["tags"].splitlines()
    assert steps_using(job, "docker/setup-qemu-action") and steps_using(job, "docker/setup-buildx-action")


def test_release_checks_the_tag_against_the_chart(release):
    script = release["jobs"]["version"]["steps"][-1]["run"]
    assert 'version="${TAG#v}"' in script
    assert '"$chart_version" != "$version"' in script and '"$app_version" != "$version"' in script
    assert "${OWNER,,}" in script


def test_release_pushes_the_chart_as_an_oci_artifact(release, lib):
    job = release["jobs"]["chart"]
    assert set(job["needs"]) == {"version", "images"}
    script = " ".join(s.get("run", "") for s in job["steps"])
    assert 'helm push "dist/fsagent-${VERSION}.tgz" "oci://ghcr.io/${OWNER}/charts"' in script
    # The sed that re-points a fork's chart must match the values.yaml line it edits.
    m = re.search(r'sed -i "s#(\^.+?)\\\$#', script)
    assert m, script
    line_re = m.group(1) + "$"
    values = (lib.REPO / "helm" / "fsagent" / "values.yaml").read_text()
    assert re.search(line_re, values, re.M), line_re


def test_chart_defaults_are_what_the_release_publishes(helm, lib):
    chart = yaml.safe_load((lib.CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((lib.CHART / "values.yaml").read_text())
    owner = re.fullmatch(r"https://github\.com/([^/]+)/[^/]+", chart["home"]).group(1).lower()
    assert values["image"]["registry"] == f"ghcr.io/{owner}"
    assert values["image"]["tag"] == "" and values["global"]["imageRegistry"] == ""
    r = helm.template()
    images = {w["metadata"]["name"]: w["spec"]["template"]["spec"]["containers"][0]["image"] for w in r.workloads()}
    assert images == {f"fsagent-{c}": f"ghcr.io/{owner}/fsagent-{c}:{chart['appVersion']}" for c in COMPONENTS}
    for w in r.workloads():
        for init in w["spec"]["template"]["spec"].get("initContainers", []):
            assert init["image"] == images[w["metadata"]["name"]]
