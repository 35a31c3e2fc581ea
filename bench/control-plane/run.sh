#!/usr/bin/env bash
# Control plane at scale: 100, 1,000 and 10,000 simulated proxies (discovery + telemetry
# streams, one HTTP/2 connection each) against one `presage control-plane` on this machine.
# Prints, per size: convergence p50/p99 from an endpoint change until every proxy ACKs,
# control-plane RSS and CPU, and telemetry reports ingested per second.
# Usage: bench/control-plane/run.sh [SIZES...]   (default: 100 1000 10000)
# The control plane runs on CPU 1 and the simulator on CPU 0 (taskset), as in bench/proxy.
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("$@")
((${#sizes[@]})) || sizes=(100 1000 10000)
command -v taskset >/dev/null || { apt-get update -qq && apt-get install -y -qq util-linux; }
cargo build --release --bin presage --example xds_sim
# 10,000 proxies need 10,000 sockets in each process.
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
trap 'kill "${cp:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
for n in "${sizes[@]}"; do
  rm -rf "$work/store"
  taskset -c 1 target/release/presage control-plane --grpc 127.0.0.1:0 --api 127.0.0.1:0 \
    --store "$work/store/cp.redb" >"$work/cp.out" 2>"$work/cp.err" &
  cp=$!
  for _ in $(seq 100); do grep -q '^presage: ready' "$work/cp.out" 2>/dev/null && break; sleep 0.1; done
  grpc=$(sed -n 's/^presage: grpc on //p' "$work/cp.out")
  api=$(sed -n 's/^presage: api on //p' "$work/cp.out")
  taskset -c 0 target/release/examples/xds_sim --grpc "http://$grpc" --api "$api" --cp-pid "$cp" \
    --proxies "$n" --changes 10 --report-interval-ms 1000 --telemetry-secs 10
  kill "$cp"; wait "$cp" 2>/dev/null || true
done
