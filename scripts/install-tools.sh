#!/usr/bin/env bash
# Installs the system tools the tests use, once: Debian's jsonnet (the stock CLI
# that CI renders configs with) and promtool (package prometheus). Idempotent.
set -euo pipefail
missing=()
command -v jsonnet >/dev/null 2>&1 || missing+=(jsonnet)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-tools: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1
  fi
fi
echo "install-tools: apt-get install ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
