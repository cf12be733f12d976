# Shared helpers for the hack/ scripts. Source it; do not run it.
set -euo pipefail

OCELLUS_CACHE="${OCELLUS_CACHE:-$HOME/.cache/ocellus}"
export OCELLUS_CACHE
mkdir -p "$OCELLUS_CACHE/bin"

# Keep the disk footprint small (CI machines may have little free space): one-shot builds gain
# nothing from incremental compilation (about half of target/), and pip's wheel cache would hold
# a second copy of libtorch. A developer's own settings win.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export PIP_NO_CACHE_DIR="${PIP_NO_CACHE_DIR:-1}"

# Prints the free space of the filesystems the build writes to, for the CI log.
log_disk() {
  log "free disk: $(df -h --output=avail "$OCELLUS_CACHE" | tail -1 | tr -d ' ') in $OCELLUS_CACHE, $(df -h --output=avail . | tail -1 | tr -d ' ') in $(pwd)"
}

log() { printf '\033[1m[ocellus]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[ocellus] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Runs apt-get install for packages that are missing (root or sudo), updating the lists once.
# Prints nothing on stdout: callers such as venv() return their result there.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "apt-get install ${missing[*]}"
  if [ ! -f "$OCELLUS_CACHE/.apt-updated" ] || [ -n "$(find "$OCELLUS_CACHE/.apt-updated" -mmin +720 2>/dev/null)" ]; then
    $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
    touch "$OCELLUS_CACHE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# python3 with its venv and pip modules: a fresh Debian machine may have none of them.
need_python() {
  local missing=()
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  # Debian's python3 lacks ensurepip (what `python3 -m venv` runs) until python3-venv is installed.
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# The project's Python virtualenv (for pip-installed tools), created on first use.
venv() {
  local v="$OCELLUS_CACHE/venv"
  if [ ! -x "$v/bin/python" ]; then
    need_python
    log "creating $v"
    python3 -m venv "$v" || die "cannot create a venv"
    "$v/bin/pip" install -q --upgrade pip >/dev/null || die "pip upgrade failed"
  fi
  echo "$v"
}

# For the benchmarks: starts target/release/ocellus-localcluster in the background (its flags as
# arguments) with its kubeconfig and log under $work, adds it to pids, waits until it serves,
# exports KUBECONFIG and installs the CRDs.
local_cluster() {
  target/release/ocellus-localcluster --kubeconfig "$work/kubeconfig" "$@" >"$work/cluster.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do [ -s "$work/kubeconfig" ] && break; sleep 0.1; done
  [ -s "$work/kubeconfig" ] || die "the local cluster did not start: $(tail -5 "$work/cluster.log")"
  export KUBECONFIG="$work/kubeconfig"
  kubectl apply --validate=false -f crds/yaml >/dev/null
  kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null
}
