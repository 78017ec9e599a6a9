#!/usr/bin/env bash
# Installs the system tools the tests use, once: Debian's jsonnet (the stock CLI
# that CI renders configs with), promtool (package prometheus), and chromium with
# chromium-driver (the status page's browser tests drive them through selenium), and
# a C compiler with the Python headers (scripts/build_native.py compiles the data path).
# Idempotent. The tests skip the browser, saying so, only where it cannot be installed.
set -euo pipefail
missing=()
command -v jsonnet >/dev/null 2>&1 || missing+=(jsonnet)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
"${PYTHON:-python3}" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)
browser=()
command -v chromium >/dev/null 2>&1 || browser+=(chromium)
command -v chromedriver >/dev/null 2>&1 || browser+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && [ ${#browser[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-tools: need root (or sudo) to apt-get install ${missing[*]} ${browser[*]}" >&2
    [ ${#missing[@]} -eq 0 ] && exit 0  # only the browser: its tests will skip
    exit 1
  fi
fi
install() {
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
echo "install-tools: apt-get install ${missing[*]} ${browser[*]}" >&2
$SUDO apt-get update -qq
[ ${#missing[@]} -eq 0 ] || install "${missing[@]}"
if [ ${#browser[@]} -gt 0 ] && ! install "${browser[@]}"; then
  echo "install-tools: could not install ${browser[*]}: the browser tests will be skipped" >&2
fi
