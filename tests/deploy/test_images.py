"""Dockerfiles, statically: multi-stage uv builds from the workspace root on one dated Debian slim
base with Debian's Python, uv from PyPI (hash-pinned, builder stage only), pinned Debian packages,
no compilers in the final stage, non-root numeric user, console-script entrypoints, the sandbox's tool
list, and .dockerignore. tests/images/ builds and runs the same files with podman."""

from __future__ import annotations

import re
import tomllib

import pytest

COMPONENTS = ("gateway", "agent", "sandbox", "cache")
PORTS = {"gateway": {"8000", "9104"}, "agent": {"50051", "9101"}, "sandbox": {"50052", "9102"},
         "cache": {"50053", "9103"}}
# Packages of each final stage (beyond the base image). Anything else there needs a reason.
RUNTIME_PACKAGES = {
    "gateway": {"python3.11"},
    "agent": {"python3.11"},
    "cache": {"python3.11"},
    "sandbox": {"python3.11", "ripgrep", "findutils", "coreutils", "bubblewrap"},
}
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cargo|rustc|[a-z0-9.+-]+-dev)\b")


def instructions(text):
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


def stages(ins):
    """[(name, [instructions...])] split at each FROM."""
    out = []
    for w, rest in ins:
        if w == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(out))
            out.append((name, [(w, rest)]))
        elif out:
            out[-1][1].append((w, rest))
    return out


def apt_packages(run: str) -> dict[str, str]:
    """name -> version pin of every `apt-get install` in one RUN."""
    m = re.search(r"apt-get install -y --no-install-recommends (.+?)(?:&&|$)", run)
    assert m, run
    pins = {}
    for word in m.group(1).split():
        word = word.strip('"')
        name, eq, version = word.partition("=")
        assert eq and version, f"unpinned Debian package {word!r}"
        pins[name] = version
    return pins


def global_args(ins):
    args = {}
    for w, rest in ins:
        if w == "FROM":
            break
        if w == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    return args


@pytest.mark.parametrize("component", COMPONENTS)
def test_dockerfile(lib, component):
    path = lib.REPO / "services" / component / "Dockerfile"
    ins = list(instructions(path.read_text()))
    args = global_args(ins)
    # A dated Debian slim tag (never re-pushed), Debian's own Python pinned to bookworm's 3.11 package.
    assert re.fullmatch(r"debian:bookworm-20[0-9]{6}-slim", args["BASE_IMAGE"]), "dated debian slim base"
    assert re.fullmatch(r"3\.11\.[0-9]+-[0-9]+\+deb12u\*", args["PYTHON_VERSION"])
    st = stages(ins)
    assert [name for name, _ in st] == ["builder", "runtime"]
    for _, body in st:
        assert body[0][1].split()[0] == "${BASE_IMAGE}", "every stage starts from the one base"
    froms = [rest for w, rest in ins if w == "FROM"]
    assert all(":latest" not in f for f in froms)
    builder, runtime = st[0][1], st[1][1]

    # uv: from PyPI, one pinned version, hash-checked, in the builder only; no registry image to copy from.
    builder_runs = " ".join(rest for w, rest in builder if w == "RUN")
    assert re.search(r'uv==[0-9]+\.[0-9]+\.[0-9]+( --hash=sha256:[0-9a-f]{64}){2,}', builder_runs)
    assert "--require-hashes" in builder_runs
    copies_from = [rest for w, rest in ins if w == "COPY" and rest.startswith("--from")]
    assert copies_from and all(c.startswith("--from=builder ") for c in copies_from), copies_from
    runtime_text = " ".join(rest for _, rest in runtime)
    assert "/opt/uv" not in runtime_text and "uv " not in runtime_text.replace("fsagent", "")
    builder_env = " ".join(rest for w, rest in builder if w == "ENV")
    assert "UV_PYTHON=/usr/bin/python3.11" in builder_env and "UV_PYTHON_DOWNLOADS=never" in builder_env

    # Debian packages: pinned, no recommends, lists removed; the final stage carries exactly its list
    # and no compiler; builder and runtime install the same python3.11 version.
    runtime_pkgs: dict[str, str] = {}
    for stage_body, sink in ((builder, {}), (runtime, runtime_pkgs)):
        for w, rest in stage_body:
            if w == "RUN" and "apt-get install" in rest:
                assert "rm -rf /var/lib/apt/lists/*" in rest
                sink.update(apt_packages(rest))
    assert set(runtime_pkgs) == RUNTIME_PACKAGES[component]
    assert runtime_pkgs["python3.11"] == "${PYTHON_VERSION}"
    assert not COMPILERS.search(" ".join(runtime_pkgs))
    assert not re.search(r"\b(pip|uv) install\b", runtime_text)

    users = [rest for w, rest in runtime if w == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), "numeric non-root user"
    assert users[-1] == "10001:10001", "the chart's runAsUser/runAsGroup"
    pyproject = tomllib.loads((lib.REPO / "services" / component / "pyproject.toml").read_text())
    (script,) = pyproject["project"]["scripts"]
    assert script == f"fsagent-{component}"
    assert [rest for w, rest in runtime if w == "ENTRYPOINT"] == [f'["{script}"]']
    runs = " ".join(rest for w, rest in ins if w == "RUN")
    assert f"uv sync --frozen --no-dev --no-install-workspace --package fsagent-{component}" in runs
    assert f"uv sync --frozen --no-dev --no-editable --package fsagent-{component}" in runs
    env = " ".join(rest for w, rest in runtime if w == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "FSAGENT_BIND_HOST=0.0.0.0" in env
    assert not re.search(r"(API_KEY|SECRET_KEY|PASSWORD|SSL_CERT_FILE|PIP_CERT)=", env), "no secrets baked into images"
    exposed = set(" ".join(rest for w, rest in runtime if w == "EXPOSE").split())
    assert exposed == PORTS[component]
    for w, rest in ins:
        if w == "COPY" and not rest.startswith("--from"):
            src = [p for p in rest.split() if not p.startswith("--")][:-1]
            for s in src:
                assert (lib.REPO / s).exists(), f"{component}: COPY source {s} missing (build context is the repo root)"


def test_one_base_everywhere(lib):
    """The four Dockerfiles name the same base and Python; scripts/build_images.sh makes that base."""
    seen = {
        c: global_args(list(instructions((lib.REPO / "services" / c / "Dockerfile").read_text())))
        for c in COMPONENTS
    }
    assert len({(a["BASE_IMAGE"], a["PYTHON_VERSION"]) for a in seen.values()}) == 1, seen
    script = (lib.REPO / "scripts" / "build_images.sh").read_text()
    assert "debootstrap" in script and "--pull=never" in script and "docker.io/library/$BASE_REF" in script


def test_sandbox_image_carries_exactly_its_tools(lib):
    ins = list(instructions((lib.REPO / "services" / "sandbox" / "Dockerfile").read_text()))
    runtime = stages(ins)[-1][1]
    apt = [rest for w, rest in runtime if w == "RUN" and "apt-get install" in rest]
    tools = [a for a in apt if "ripgrep" in a]
    assert len(tools) == 1
    assert set(apt_packages(tools[0])) == {"ripgrep", "findutils", "coreutils", "bubblewrap"}
    assert "rg --version && bwrap --version" in tools[0]
    for c in ("gateway", "agent", "cache"):
        text = (lib.REPO / "services" / c / "Dockerfile").read_text()
        assert "ripgrep" not in text and "bubblewrap" not in text


def test_dockerignore(lib):
    patterns = {l.strip() for l in (lib.REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")}
    assert {".git", ".venv", "**/.venv", ".env", ".env.*", ".tools", "**/__pycache__", ".github", "tests"} <= patterns
    for needed in ("proto", "common", "services", "data", "uv.lock", "pyproject.toml"):
        assert needed not in patterns
    # `*.md` matches only at the root of the context (Docker and buildah alike): data/**/*.md, the
    # sample documents, stay in.
    assert not any(p.startswith("**") and p.endswith(".md") for p in patterns)


def test_scripts_parse(lib):
    for script in ("install_tools.sh", "render_k8s.sh", "build_images.sh"):
        lib.run(["bash", "-n", str(lib.REPO / "scripts" / script)])
