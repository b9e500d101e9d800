#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1, built from upstream Go modules: etcd, kube-apiserver
# and prometheus-operator (no kubelet, no controller-manager, no scheduler: objects are accepted,
# validated, stored and watched exactly as in a cluster, but nothing runs pods). `build` also builds
# the Prometheus the operator is made for (the tests run it with the operator's configuration).
#
#   scripts/control-plane.sh build    build the three programs into .tools/control-plane/bin (cached)
#   scripts/control-plane.sh up       start them, install the prometheus-operator CRDs, write a kubeconfig
#   scripts/control-plane.sh down     stop everything `up` started
#   scripts/control-plane.sh status   say what is running
#
# Versions are pinned by the build modules in scripts/control-plane/{kube,etcd,operator,prometheus}/go.mod.
# Settings (environment):
#   CP_DIR             state folder: certificates, etcd data, logs, pids   (.tools/control-plane/run)
#   CP_KUBECONFIG      kubeconfig written by `up`                           (.tools/kubeconfig)
#   CP_APISERVER_PORT  kube-apiserver's secure port                         (6443)
#   CP_ETCD_PORT       etcd client port; the peer port is the next one     (2379)
#   CP_OPERATOR_PORT   prometheus-operator's metrics/health port           (8080)
#   CP_OPERATOR        1 to run prometheus-operator                         (1)
#   CP_TIMEOUT         seconds to wait for each program to become ready     (60)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/scripts/control-plane"
BIN="$ROOT/.tools/control-plane/bin"
CP_DIR="${CP_DIR:-$ROOT/.tools/control-plane/run}"
CP_KUBECONFIG="${CP_KUBECONFIG:-$ROOT/.tools/kubeconfig}"
CP_APISERVER_PORT="${CP_APISERVER_PORT:-6443}"
CP_ETCD_PORT="${CP_ETCD_PORT:-2379}"
CP_OPERATOR_PORT="${CP_OPERATOR_PORT:-8080}"
CP_OPERATOR="${CP_OPERATOR:-1}"
CP_TIMEOUT="${CP_TIMEOUT:-60}"

module_version() { grep -oE "(^|[[:space:]])$2 v[0-9]+\.[0-9]+\.[0-9]+" "$SRC/$1/go.mod" | head -n1 | sed 's/.* v//'; }
KUBE_VERSION="$(module_version kube k8s.io/kubernetes)"
OPERATOR_VERSION="$(module_version operator github.com/prometheus-operator/prometheus-operator)"
ETCD_VERSION="$(module_version etcd go.etcd.io/etcd/server/v3)"
# Prometheus 3.x is published as module versions v0.3XX.Y.
PROMETHEUS_VERSION="$(module_version prometheus github.com/prometheus/prometheus | sed -E 's/^0\.([0-9])([0-9]+)\./\1.\2./')"
SERVICE_CIDR="10.96.0.0/16"

log() { printf 'control-plane: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- build --------------------------------------------------------------------------------------

# A build is reused while its module files, the Go version and the flags are unchanged.
stamp_of() {
  { cat "$SRC/$1/go.mod" "$SRC/$1/go.sum"; go version; printf '%s\n' "$2"; } | sha256sum | cut -d' ' -f1
}

build_one() {  # build_one <module dir> <package> <binary> <ldflags>
  local dir="$1" pkg="$2" name="$3" ldflags="$4" stamp started
  stamp="$(stamp_of "$dir" "$pkg $ldflags")"
  if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/.$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "$name is up to date"
    return
  fi
  log "building $name from $pkg (first build takes several minutes on 2 cores; cached afterwards)"
  started=$SECONDS
  (cd "$SRC/$dir" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "$ldflags" -o "$BIN/$name.part" "$pkg")
  mv -f "$BIN/$name.part" "$BIN/$name"
  printf '%s\n' "$stamp" >"$BIN/.$name.stamp"
  log "built $name in $((SECONDS - started)) s"
}

cmd_build() {
  command -v go >/dev/null 2>&1 || die "go not found: install Go 1.26+ (the module proxy must be reachable)"
  mkdir -p "$BIN"
  local minor="${KUBE_VERSION#*.}"; minor="${minor%%.*}"
  local kv="k8s.io/component-base/version" cv="k8s.io/client-go/pkg/version"
  # Without the version stamped in, the apiserver reports v0.0.0-master and Helm's kubeVersion
  # checks reject every chart.
  local kube_ld="-s -w -X $kv.gitVersion=v$KUBE_VERSION -X $kv.gitMajor=1 -X $kv.gitMinor=$minor"
  kube_ld+=" -X $kv.gitTreeState=clean -X $cv.gitVersion=v$KUBE_VERSION -X $cv.gitMajor=1 -X $cv.gitMinor=$minor"
  local op_ld="-s -w -X github.com/prometheus/common/version.Version=$OPERATOR_VERSION"
  build_one etcd go.etcd.io/etcd/server/v3 etcd "-s -w"
  build_one kube k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$kube_ld"
  if [ "$CP_OPERATOR" = 1 ]; then
    build_one operator github.com/prometheus-operator/prometheus-operator/cmd/operator prometheus-operator "$op_ld"
    # Not started by `up`: the tests run it against the operator's generated configuration.
    build_one prometheus github.com/prometheus/prometheus/cmd/prometheus prometheus \
      "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION"
  fi
}

# The CRDs come from the operator module the binary was built from, so both always match.
crd_dir() {
  local dir
  dir="$(cd "$SRC/operator" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' github.com/prometheus-operator/prometheus-operator)"
  [ -n "$dir" ] || (cd "$SRC/operator" && GOFLAGS=-mod=readonly go mod download github.com/prometheus-operator/prometheus-operator)
  printf '%s/example/prometheus-operator-crd-full\n' "$dir"
}

# ---- up -----------------------------------------------------------------------------------------

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

certificates() {
  local pki="$CP_DIR/pki"
  [ -f "$pki/apiserver.crt" ] && return
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fsagent-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n' >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  # One static admin token (system:masters); everything else authenticates with ServiceAccount tokens.
  printf '%s,admin,admin,"system:masters"\n' "$(openssl rand -hex 24)" >"$pki/tokens.csv"
  chmod 600 "$pki"/*.key "$pki/tokens.csv"
}

start() {  # start <name> <command...>: run in the background, its own process group, log to a file
  local name="$1"; shift
  setsid "$@" >"$CP_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$CP_DIR/$name.pid"
}

alive() { local pid; pid="$(cat "$CP_DIR/$1.pid" 2>/dev/null)" && kill -0 "$pid" 2>/dev/null; }

wait_for() {  # wait_for <name> <check command...>
  local name="$1"; shift
  local deadline=$((SECONDS + CP_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || { tail -n 30 "$CP_DIR/$name.log" >&2; die "$name exited (log: $CP_DIR/$name.log)"; }
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$CP_DIR/$name.log" >&2; die "$name not ready after ${CP_TIMEOUT}s"; }
    sleep 0.2
  done
}

kubeconfig() {
  local token ca
  token="$(cut -d, -f1 "$CP_DIR/pki/tokens.csv")"
  ca="$(base64 -w0 "$CP_DIR/pki/ca.crt")"
  mkdir -p "$(dirname "$CP_KUBECONFIG")"
  umask 077
  cat >"$CP_KUBECONFIG.part" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fsagent-local
  cluster:
    server: https://127.0.0.1:$CP_APISERVER_PORT
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $token
contexts:
- name: fsagent-local
  context: {cluster: fsagent-local, user: admin, namespace: default}
current-context: fsagent-local
EOF
  mv -f "$CP_KUBECONFIG.part" "$CP_KUBECONFIG"
}

kubectl_cmd() {
  local k="$ROOT/.tools/bin/kubectl"
  [ -x "$k" ] || k="$(command -v kubectl)" || die "kubectl not found (run scripts/install_tools.sh)"
  "$k" --kubeconfig "$CP_KUBECONFIG" "$@"
}

apiserver_ready() {
  curl -fsS --cacert "$CP_DIR/pki/ca.crt" -H "Authorization: Bearer $(cut -d, -f1 "$CP_DIR/pki/tokens.csv")" \
    "https://127.0.0.1:$CP_APISERVER_PORT/readyz"
}

cmd_up() {
  local started=$SECONDS
  for b in etcd kube-apiserver; do [ -x "$BIN/$b" ] || die "$BIN/$b missing: run '$0 build' first"; done
  if alive kube-apiserver; then log "already running (kubeconfig: $CP_KUBECONFIG)"; return; fi
  for p in "$CP_ETCD_PORT" "$((CP_ETCD_PORT + 1))" "$CP_APISERVER_PORT"; do
    port_busy "$p" && die "port 127.0.0.1:$p is in use; pick others with CP_ETCD_PORT / CP_APISERVER_PORT"
  done
  mkdir -p "$CP_DIR"
  certificates

  start etcd "$BIN/etcd" --name fsagent-test --data-dir "$CP_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$CP_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$CP_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((CP_ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((CP_ETCD_PORT + 1))" \
    --initial-cluster "fsagent-test=http://127.0.0.1:$((CP_ETCD_PORT + 1))" \
    --unsafe-no-fsync --quota-backend-bytes 1073741824 --log-level warn
  wait_for etcd curl -fsS "http://127.0.0.1:$CP_ETCD_PORT/health"

  local pki="$CP_DIR/pki"
  start kube-apiserver "$BIN/kube-apiserver" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$CP_APISERVER_PORT" \
    --etcd-servers "http://127.0.0.1:$CP_ETCD_PORT" \
    --cert-dir "$pki" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --authorization-mode RBAC \
    --allow-privileged=true --profiling=false --v=0
  wait_for kube-apiserver apiserver_ready
  kubeconfig
  log "kube-apiserver v$KUBE_VERSION ready on https://127.0.0.1:$CP_APISERVER_PORT"

  if [ "$CP_OPERATOR" = 1 ]; then
    [ -x "$BIN/prometheus-operator" ] || die "$BIN/prometheus-operator missing: run '$0 build' first"
    local crds
    crds="$(crd_dir)"
    kubectl_cmd apply --server-side --force-conflicts -f "$crds" >/dev/null
    kubectl_cmd wait --for condition=established --timeout "${CP_TIMEOUT}s" -f "$crds" >/dev/null
    # The operator reads a kubeconfig only from $KUBECONFIG (no flag for it).
    start prometheus-operator env KUBECONFIG="$CP_KUBECONFIG" "$BIN/prometheus-operator" \
      --web.listen-address "127.0.0.1:$CP_OPERATOR_PORT" --log-level warn \
      --prometheus-config-reloader "quay.io/prometheus-operator/prometheus-config-reloader:v$OPERATOR_VERSION"
    wait_for prometheus-operator curl -fsS "http://127.0.0.1:$CP_OPERATOR_PORT/healthz"
    log "prometheus-operator v$OPERATOR_VERSION ready, CRDs installed"
  fi
  log "up in $((SECONDS - started)) s; try: $ROOT/.tools/bin/kubectl --kubeconfig $CP_KUBECONFIG get --raw /version"
}

# ---- down / status ------------------------------------------------------------------------------

stop() {
  local name="$1" pid
  pid="$(cat "$CP_DIR/$name.pid" 2>/dev/null)" || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$CP_DIR/$name.pid"
}

cmd_down() {
  stop prometheus-operator
  stop kube-apiserver
  stop etcd
  log "stopped (state kept in $CP_DIR; delete it for a fresh cluster)"
}

cmd_status() {
  local name
  for name in etcd kube-apiserver prometheus-operator; do
    if alive "$name"; then log "$name running (pid $(cat "$CP_DIR/$name.pid"))"; else log "$name not running"; fi
  done
}

case "${1:-}" in
  build) cmd_build ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 build|up|down|status" >&2; exit 2 ;;
esac
