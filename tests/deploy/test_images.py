"""Dockerfiles (no Docker engine here, so static checks): multi-stage uv builds from the workspace
root, pinned bases, non-root numeric user, console-script entrypoints, the sandbox's tool list, and
.dockerignore."""

from __future__ import annotations

import re
import tomllib

import pytest

COMPONENTS = ("gateway", "agent", "sandbox", "cache")
PORTS = {"gateway": {"8000"}, "agent": {"50051", "9101"}, "sandbox": {"50052", "9102"}, "cache": {"50053", "9103"}}


def instructions(text):
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


@pytest.mark.parametrize("component", COMPONENTS)
def test_dockerfile(lib, component):
    path = lib.REPO / "services" / component / "Dockerfile"
    ins = list(instructions(path.read_text()))
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for w, rest in ins if w == "ARG" and "=" in rest}
    assert re.fullmatch(r"python:3\.1[1-3]\.[0-9]+-slim-[a-z]+", args["PYTHON_IMAGE"]), "pinned slim base"
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:[0-9]+\.[0-9]+\.[0-9]+", args["UV_IMAGE"])
    froms = [rest for w, rest in ins if w == "FROM"]
    assert len(froms) >= 3 and all(":latest" not in f for f in froms)
    final = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    runtime = ins[final:]
    assert any(w == "COPY" and rest.startswith("--from=builder /opt/venv") for w, rest in runtime)
    users = [rest for w, rest in runtime if w == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), "numeric non-root user"
    pyproject = tomllib.loads((lib.REPO / "services" / component / "pyproject.toml").read_text())
    (script,) = pyproject["project"]["scripts"]
    assert script == f"fsagent-{component}"
    assert [rest for w, rest in runtime if w == "ENTRYPOINT"] == [f'["{script}"]']
    runs = " ".join(rest for w, rest in ins if w == "RUN")
    assert f"uv sync --frozen --no-dev --no-install-workspace --package fsagent-{component}" in runs
    assert f"uv sync --frozen --no-dev --no-editable --package fsagent-{component}" in runs
    env = " ".join(rest for w, rest in runtime if w == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "FSAGENT_BIND_HOST=0.0.0.0" in env
    assert not re.search(r"(API_KEY|SECRET_KEY|PASSWORD)=", env), "no secrets baked into images"
    exposed = set(" ".join(rest for w, rest in runtime if w == "EXPOSE").split())
    assert exposed == PORTS[component]
    for w, rest in ins:
        if w == "COPY" and not rest.startswith("--from"):
            src = [p for p in rest.split() if not p.startswith("--")][:-1]
            for s in src:
                assert (lib.REPO / s).exists(), f"{component}: COPY source {s} missing (build context is the repo root)"


def test_sandbox_image_carries_exactly_its_tools(lib):
    ins = list(instructions((lib.REPO / "services" / "sandbox" / "Dockerfile").read_text()))
    apt = [rest for w, rest in ins if w == "RUN" and "apt-get install" in rest]
    assert len(apt) == 1
    packages = set(re.search(r"apt-get install -y --no-install-recommends ([a-z0-9 .+-]+?) &&", apt[0]).group(1).split())
    assert packages == {"ripgrep", "findutils", "coreutils", "bubblewrap"}
    assert "rm -rf /var/lib/apt/lists/*" in apt[0]
    for c in ("gateway", "agent", "cache"):
        assert "apt-get" not in (lib.REPO / "services" / c / "Dockerfile").read_text()


def test_dockerignore(lib):
    patterns = {l.strip() for l in (lib.REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")}
    assert {".git", ".venv", ".env", ".tools", "**/__pycache__"} <= patterns
    for needed in ("proto", "common", "services", "data", "uv.lock", "pyproject.toml"):
        assert needed not in patterns


def test_scripts_parse(lib):
    for script in ("install_tools.sh", "render_k8s.sh"):
        lib.run(["bash", "-n", str(lib.REPO / "scripts" / script)])
