#!/usr/bin/env bash
# Installs the Debian packages xdistill builds against. Idempotent: does nothing when all are present.
set -euo pipefail
pkgs=(build-essential cmake pkg-config clang libopenblas-dev libpcre2-dev libutf8proc-dev libcjson-dev libyaml-dev zlib1g-dev libmicrohttpd-dev curl jq)
# libFuzzer for the fuzz smoke test (package name follows the clang version Debian ships).
if apt-cache show libclang-rt-14-dev >/dev/null 2>&1; then pkgs+=(libclang-rt-14-dev); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "install-deps: installing ${missing[*]}" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
