#!/usr/bin/env bash
# Installs what the VS Code extension build and its real-VS-Code end-to-end test need; idempotent, and quick when already done.
#
# What it provides:
#   - Debian packages: a C toolchain and the headers code-server's native modules build against, ripgrep, chromium.
#   - vscode-extension/node_modules and tests/vscode/node_modules from their committed package-lock.json (npm ci).
#   - code-server (a real VS Code served to a browser) in a cache directory outside the clone, so that a fresh clone
#     reuses it: ${SANDLINK_CI_CACHE:-/var/cache/sandlink-ci}/code-server-<version>.
# Every step checks first whether its result is already there, so a second run takes about a second.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_dir="${SANDLINK_CI_CACHE:-/var/cache/sandlink-ci}"
code_server_version="4.100.3"
code_server_dir="$cache_dir/code-server-$code_server_version"
# code-server's ripgrep dependency downloads rg from GitHub in its post-install step; nothing but the package registries is
# reachable here, so the step must find Debian's rg already in its download cache under exactly this name. The cache
# directory is named after the @vscode/ripgrep version: code-server 4.100.3 ships 1.15.11; 1.15.14 is seeded too because
# some of its builds resolve that one.
ripgrep_package_versions=(1.15.11 1.15.14)
ripgrep_archive_name="ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz"

log() { printf '[setup/vscode] %s\n' "$*" >&2; }
started_at=$(date +%s)

# --- Debian packages -------------------------------------------------------------------------------------------------
apt_packages=(build-essential pkg-config python3 libkrb5-dev libsecret-1-dev libx11-dev libxkbfile-dev ripgrep chromium)
missing_apt_packages=()
for package in "${apt_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing_apt_packages+=("$package")
  fi
done
if ((${#missing_apt_packages[@]})); then
  log "installing Debian packages: ${missing_apt_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing_apt_packages[@]}" >/dev/null
fi
command -v chromium >/dev/null || { log "chromium is not on PATH after installing it"; exit 1; }
command -v rg >/dev/null || { log "rg is not on PATH after installing ripgrep"; exit 1; }

# --- npm dependencies from the committed lock files ------------------------------------------------------------------
# npm ci deletes node_modules and reinstalls, which takes seconds; a stamp holding the lock file's hash lets a warm run
# skip it while still reinstalling whenever the lock file changes.
install_locked_npm_dependencies() {
  local package_dir="$1"
  local stamp_file="$package_dir/node_modules/.sandlink-lock-sha256"
  local lock_hash
  lock_hash="$(sha256sum "$package_dir/package-lock.json" | cut -d' ' -f1)"
  if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$lock_hash" ]]; then
    return 0
  fi
  log "npm ci in ${package_dir#"$repo_root"/}"
  local npm_log
  npm_log="$(mktemp)"
  if ! (cd "$package_dir" && npm ci --no-audit --no-fund --loglevel=error >"$npm_log" 2>&1); then
    grep -v 'Unknown user config' "$npm_log" >&2 || true
    rm -f "$npm_log"
    log "npm ci failed in $package_dir"
    exit 1
  fi
  rm -f "$npm_log"
  printf '%s' "$lock_hash" >"$stamp_file"
}
install_locked_npm_dependencies "$repo_root/vscode-extension"
install_locked_npm_dependencies "$repo_root/tests/vscode"

# --- code-server -----------------------------------------------------------------------------------------------------
code_server_binary="$code_server_dir/node_modules/.bin/code-server"
if [[ ! -f "$code_server_dir/.installed" || ! -x "$code_server_binary" ]]; then
  log "installing code-server@$code_server_version into $code_server_dir (a few minutes, once per machine)"
  mkdir -p "$cache_dir"
  temporary_dir="${TMPDIR:-/tmp}"
  for ripgrep_package_version in "${ripgrep_package_versions[@]}"; do
    ripgrep_cache_dir="$temporary_dir/vscode-ripgrep-cache-$ripgrep_package_version"
    mkdir -p "$ripgrep_cache_dir"
    if [[ ! -s "$ripgrep_cache_dir/$ripgrep_archive_name" ]]; then
      tar -czf "$ripgrep_cache_dir/$ripgrep_archive_name" -C "$(dirname "$(command -v rg)")" rg
    fi
  done
  # Install beside the final directory and rename at the end, so an interrupted install never looks finished.
  staging_dir="$code_server_dir.partial"
  rm -rf "$staging_dir"
  mkdir -p "$staging_dir"
  if ! (
    cd "$staging_dir" &&
      npm_config_yes=true npm_config_unsafe_perm=true \
        npm install --prefix "$staging_dir" --no-audit --no-fund --loglevel=error "code-server@$code_server_version" \
        >"$staging_dir.log" 2>&1
  ) || [[ ! -x "$staging_dir/node_modules/.bin/code-server" ]]; then
    grep -v 'Unknown user config' "$staging_dir.log" | tail -40 >&2 || true
    log "code-server install failed (full log: $staging_dir.log)"
    exit 1
  fi
  rm -f "$staging_dir.log"
  rm -rf "$code_server_dir"
  mv "$staging_dir" "$code_server_dir"
  # npm's .bin link is relative, so it survives the rename; check it still runs before calling the install done.
  "$code_server_binary" --version >/dev/null || { log "code-server does not start after install"; exit 1; }
  touch "$code_server_dir/.installed"
fi

log "ready in $(($(date +%s) - started_at)) s (code-server: $code_server_binary)"
