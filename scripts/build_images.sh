#!/usr/bin/env bash
# Build the four service images locally with podman, from the same Dockerfiles a user's CI builds:
#
#   fsagent-gateway:dev  fsagent-agent:dev  fsagent-sandbox:dev  fsagent-cache:dev
#
# No container registry is reachable here, so the one base image the Dockerfiles name
# (ARG BASE_IMAGE=debian:bookworm-<date>-slim) is made locally, the way Debian's official images are
# made: debuerreotype (Debian's own package of the tool that builds the debian:* images) runs
# debootstrap --variant=minbase for bookworm from deb.debian.org, applies the same minimizing apt/dpkg
# configuration, the deb822 sources (bookworm, bookworm-updates, bookworm-security), a dist-upgrade,
# the "slim" file removal, and a reproducible tar. That tarball is cached in .tools/images/ and
# `podman import`ed under the exact name FROM resolves to (docker.io/library/debian:<tag>); builds
# run with --pull=never, so nothing can silently come from elsewhere. uv comes from PyPI inside the
# builder stage (hash-pinned in the Dockerfiles).
#
# Needs root (debootstrap, rootful podman). Installs podman, runc, debuerreotype/debootstrap and
# friends with apt-get when missing.
#
# usage: scripts/build_images.sh [--base-only] [--rebuild-base] [SERVICE...]
#   SERVICE  any of gateway agent sandbox cache (default: all four)
# env:    FSAGENT_IMAGE_TAG (default dev)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="$ROOT/.tools/images"
TAG="${FSAGENT_IMAGE_TAG:-dev}"
SERVICES=()
BASE_ONLY=0
REBUILD_BASE=0
for arg in "$@"; do
  case "$arg" in
    --base-only) BASE_ONLY=1 ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    gateway|agent|sandbox|cache) SERVICES+=("$arg") ;;
    *) echo "usage: $0 [--base-only] [--rebuild-base] [gateway|agent|sandbox|cache ...]" >&2; exit 2 ;;
  esac
done
[ ${#SERVICES[@]} -gt 0 ] || SERVICES=(gateway agent sandbox cache)

log() { printf '[build_images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Podman as this machine needs it: runc (crun fails on these hybrid cgroup v1 machines), cgroupfs (no
# systemd), file events, and bounded ulimits for every container (builds included).
PODMAN=(podman --runtime /usr/sbin/runc --cgroup-manager cgroupfs --events-backend file)
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
# The same settings as a containers.conf for what cannot take flags (a pod's infra container gets no
# --ulimit); tests/images and anyone else running these images here export CONTAINERS_CONF=<it>.
mkdir -p "$ROOT/.tools/podman"
cat >"$ROOT/.tools/podman/containers.conf" <<'CONF'
# Written by scripts/build_images.sh: podman on these machines (hybrid cgroup v1, no systemd).
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

# ---- tools ---------------------------------------------------------------------------------------
APT_PACKAGES=(podman runc uidmap slirp4netns fuse-overlayfs netavark aardvark-dns iptables catatonit
  debootstrap debuerreotype debian-archive-keyring wget ca-certificates)
need_tools() {
  local p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 0
  done
  return 1
}
if need_tools; then
  [ "$(id -u)" = 0 ] || die "podman/debootstrap missing and not root: install ${APT_PACKAGES[*]}"
  command -v apt-get >/dev/null || die "no apt-get: install ${APT_PACKAGES[*]} by hand"
  log "installing ${APT_PACKAGES[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and rootful podman)"

# ---- the base image ------------------------------------------------------------------------------
# The one base every Dockerfile names; they must agree.
BASE_REF=""
for svc in gateway agent sandbox cache; do
  ref="$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/services/$svc/Dockerfile")"
  [ -n "$ref" ] || die "services/$svc/Dockerfile has no ARG BASE_IMAGE=..."
  [ -z "$BASE_REF" ] || [ "$ref" = "$BASE_REF" ] || die "Dockerfiles disagree on BASE_IMAGE ($BASE_REF vs $ref)"
  BASE_REF="$ref"
done
case "$BASE_REF" in
  debian:bookworm-*-slim) SUITE=bookworm ;;
  *) die "this script can make only debian:bookworm-<date>-slim locally, not $BASE_REF" ;;
esac
BASE_FQ="docker.io/library/$BASE_REF"

# What makes the tarball: this recipe (bump RECIPE when the steps below change).
RECIPE="debuerreotype $(cat /usr/share/debuerreotype/VERSION 2>/dev/null || echo '?') minbase+slim $SUITE amd64 r1"
TARBALL="$CACHE_DIR/debian-$SUITE-slim.tar"
STAMP="$TARBALL.recipe"
mkdir -p "$CACHE_DIR"

build_base_tarball() {
  local work rootfs
  work="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
  rootfs="$work/rootfs"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  local t0=$SECONDS
  log "base: debootstrap --variant=minbase $SUITE from deb.debian.org (debuerreotype-init; ~2-4 min)"
  # --non-debian: take the live mirror (snapshot.debian.org, which the official build pins to its
  # date, is not reachable here); everything else is the official Debian recipe.
  debuerreotype-init --non-debian --keyring /usr/share/keyrings/debian-archive-keyring.gpg \
    "$rootfs" "$SUITE" http://deb.debian.org/debian >"$work/init.log" 2>&1 \
    || { tail -n 40 "$work/init.log" >&2; die "debuerreotype-init failed"; }
  log "base: minimizing config, deb822 sources, dist-upgrade ($((SECONDS - t0)) s so far)"
  debuerreotype-minimizing-config "$rootfs"
  # The official image's deb822 sources (debuerreotype-debian-sources-list insists on probing
  # snapshot.debian.org, so they are written here in its output format, minus the snapshot comments).
  rm -f "$rootfs/etc/apt/sources.list"
  printf '%s\n' \
    'Types: deb' 'URIs: http://deb.debian.org/debian' "Suites: $SUITE $SUITE-updates" 'Components: main' \
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' '' \
    'Types: deb' 'URIs: http://deb.debian.org/debian-security' "Suites: $SUITE-security" 'Components: main' \
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
    >"$rootfs/etc/apt/sources.list.d/debian.sources"
  debuerreotype-apt-get "$rootfs" update -qq
  debuerreotype-apt-get "$rootfs" dist-upgrade -yqq >/dev/null
  debuerreotype-recalculate-epoch "$rootfs" || true
  log "base: slimify (drop docs, man pages, locales) and reproducible tar"
  debuerreotype-slimify "$rootfs"
  debuerreotype-tar "$rootfs" "$TARBALL.part"
  mv "$TARBALL.part" "$TARBALL"
  echo "$RECIPE" >"$STAMP"
  rm -rf "$work"
  trap - EXIT
  log "base: $(du -h "$TARBALL" | cut -f1) tarball in $((SECONDS - t0)) s"
}

if [ "$REBUILD_BASE" = 1 ] || [ ! -s "$TARBALL" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$RECIPE" ]; then
  build_base_tarball
else
  log "base: cached tarball $TARBALL"
fi
SUM="$(sha256sum "$TARBALL" | cut -d' ' -f1)"
have_sum="$("${PODMAN[@]}" image inspect --format '{{ index .Labels "org.fsagent.base.tar-sha256" }}' "$BASE_FQ" 2>/dev/null || true)"
if [ "$have_sum" = "$SUM" ]; then
  log "base: $BASE_FQ already imported from this tarball"
else
  log "base: podman import -> $BASE_FQ"
  # The official image's config: CMD ["bash"], nothing else.
  "${PODMAN[@]}" import --quiet \
    --change 'CMD ["bash"]' \
    --change "LABEL org.fsagent.base.tar-sha256=$SUM" \
    --change "LABEL org.fsagent.base.recipe=\"$RECIPE\"" \
    "$TARBALL" "$BASE_FQ" >/dev/null
fi
[ "$BASE_ONLY" = 1 ] && exit 0

# ---- the four services ---------------------------------------------------------------------------
# This machine reaches PyPI through a TLS-inspecting proxy whose CA is only in the host's bundle:
# hand that bundle to the builder stage as the Dockerfiles' optional "ca-bundle" build secret (used
# for downloads only, never stored in a layer). Harmless where no proxy inspects TLS.
SECRET=()
HOST_CA="${FSAGENT_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ -s "$HOST_CA" ] && SECRET=(--secret "id=ca-bundle,src=$HOST_CA")

total=$SECONDS
for svc in "${SERVICES[@]}"; do
  t0=$SECONDS
  log "podman build services/$svc/Dockerfile -> fsagent-$svc:$TAG"
  # --network=host: the build steps reach PyPI and deb.debian.org through the host's network.
  # --layers: reuse unchanged steps (the shared apt/python layers are built once for all four).
  # --format docker: the Docker image format keeps SHELL (the OCI format drops it).
  if ! "${PODMAN[@]}" build --pull=never --layers --format docker --network=host "${ULIMITS[@]}" "${SECRET[@]}" \
      -f "$ROOT/services/$svc/Dockerfile" -t "fsagent-$svc:$TAG" "$ROOT" >"$CACHE_DIR/build-$svc.log" 2>&1; then
    tail -n 60 "$CACHE_DIR/build-$svc.log" >&2
    die "podman build of $svc failed (full log: $CACHE_DIR/build-$svc.log)"
  fi
  size="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "fsagent-$svc:$TAG")"
  log "fsagent-$svc:$TAG built in $((SECONDS - t0)) s, $((size / 1000000)) MB"
done
log "images ready in $((SECONDS - total)) s"
