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

# valgrind >= 3.22 (cachegrind's instrumentation toggles) beside the distribution's own,
# where that is older (Debian 12 ships 3.19): Debian 13's build, unpacked under
# $NEW_VALGRIND, so the tests count with both. Nothing else on the system changes.
NEW_VALGRIND=${PERFREPLAY_NEW_VALGRIND_DIR:-/opt/perfreplay-valgrind}
vg_version=$(valgrind --version | sed -n 's/^valgrind-\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
if [ ! -x "$NEW_VALGRIND/bin/valgrind" ] && [ -n "$vg_version" ] \
  && [ "$(echo "$vg_version" | awk '{print ($1 * 100 + $2 < 322)}')" = 1 ] \
  && command -v dpkg >/dev/null 2>&1 && [ "$(dpkg --print-architecture)" = amd64 ] \
  && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: need root to unpack valgrind >= 3.22 under $NEW_VALGRIND" >&2
    exit 1
  fi
  apt_dir=$(mktemp -d)
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
  apt-get -qq "${apt_opts[@]}" update
  (cd "$apt_dir" && apt-get -qq "${apt_opts[@]}" download valgrind)
  rm -rf "$NEW_VALGRIND"
  mkdir -p "$NEW_VALGRIND/bin"
  dpkg -x "$apt_dir"/valgrind_*.deb "$NEW_VALGRIND/root"
  cat >"$NEW_VALGRIND/bin/valgrind" <<WRAP
#!/bin/sh
VALGRIND_LIB=$NEW_VALGRIND/root/usr/libexec/valgrind exec $NEW_VALGRIND/root/usr/bin/valgrind "\$@"
WRAP
  chmod +x "$NEW_VALGRIND/bin/valgrind"
  rm -rf "$apt_dir"
fi

if [ ! -f "$(npm root -g)/speedscope/package.json" ]; then
  npm install -g --silent speedscope@1.25.0
fi
echo "system deps: $(chromium --version 2>/dev/null | head -1); $(valgrind --version)$(
  [ -x "$NEW_VALGRIND/bin/valgrind" ] && echo " and $("$NEW_VALGRIND/bin/valgrind" --version) in $NEW_VALGRIND"
); speedscope $(node -p "require('$(npm root -g)/speedscope/package.json').version")"
