#!/usr/bin/env bash
# Presage vs nginx vs HAProxy as reverse proxies, side by side in one run on this machine.
# Usage: bench/proxy/run.sh [ROUNDS]   (default 3; results are medians over rounds)
# Installs what it needs on Debian (nginx, haproxy, wrk, h2load) and oha from crates.io.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# oha: rate-limited load with latency percentiles and coordinated-omission correction.
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --bin presage
exec python3 bench/proxy/bench.py "${1:-3}"
