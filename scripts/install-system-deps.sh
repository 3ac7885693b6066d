#!/usr/bin/env bash
# What the real-parts tests need beyond PyPI: Debian's Chromium and valgrind (deterministic
# mode), and npm's speedscope app.
# Idempotent: installs only what is missing.
set -euo pipefail

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: need root to apt-get install ${need_apt[*]}; run: sudo $0" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -f "$(npm root -g)/speedscope/package.json" ]; then
  npm install -g --silent speedscope@1.25.0
fi
echo "system deps: $(chromium --version 2>/dev/null | head -1); $(valgrind --version); speedscope $(node -p "require('$(npm root -g)/speedscope/package.json').version")"
