# Shared helpers for the hack/ scripts. Source it; do not run it.
set -euo pipefail

OCELLUS_CACHE="${OCELLUS_CACHE:-$HOME/.cache/ocellus}"
export OCELLUS_CACHE
mkdir -p "$OCELLUS_CACHE/bin"

log() { printf '\033[1m[ocellus]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[ocellus] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Runs apt-get install for packages that are missing (root or sudo), updating the lists once.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "apt-get install ${missing[*]}"
  if [ ! -f "$OCELLUS_CACHE/.apt-updated" ] || [ -n "$(find "$OCELLUS_CACHE/.apt-updated" -mmin +720 2>/dev/null)" ]; then
    $sudo apt-get update -qq || die "apt-get update failed"
    touch "$OCELLUS_CACHE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# The project's Python virtualenv (for pip-installed tools), created on first use.
venv() {
  local v="$OCELLUS_CACHE/venv"
  if [ ! -x "$v/bin/python" ]; then
    log "creating $v"
    python3 -m venv "$v" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$v"; } || die "cannot create a venv"
    "$v/bin/pip" install -q --upgrade pip >/dev/null || die "pip upgrade failed"
  fi
  echo "$v"
}
