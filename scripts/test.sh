#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian machine it first installs what the tests
# talk to (real clients and servers); everything else comes from Cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  else
    echo "missing: ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

exec cargo nextest run --workspace --profile ci "$@"
