#!/usr/bin/env bash
# Discovery at scale: a real etcd (Debian etcd-server) holding 10,000 instances across 500
# services, one `presage control-plane` watching it, and simulated proxies
# (bench/control-plane/sim.rs) subscribed to every cluster. Each measured change moves
# one instance in etcd; the latency is until every proxy has received it and ACKed.
# Usage: bench/discovery/run.sh [PROXIES] [SERVICES] [INSTANCES]  (default 100 500 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
proxies=${1:-100}; services=${2:-500}; instances=${3:-10000}
. scripts/need.sh
need etcd:etcd-server protoc:protobuf-compiler taskset:util-linux
cargo build --release --bin presage --example xds_sim
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
trap 'kill "${cp:-0}" "${etcd:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(port); pport=$(port)
taskset -c 0 etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "bench=http://127.0.0.1:$pport" >"$work/etcd.log" 2>&1 &
etcd=$!
printf 'discovery:\n  etcd:\n    endpoints: ["127.0.0.1:%s"]\n' "$cport" >"$work/cp.yaml"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$cport/health" >/dev/null && break; sleep 0.1; done
taskset -c 1 target/release/presage control-plane --config "$work/cp.yaml" --grpc 127.0.0.1:0 \
  --api 127.0.0.1:0 --store "$work/store/cp.redb" >"$work/cp.out" 2>"$work/cp.err" &
cp=$!
for _ in $(seq 100); do grep -q '^presage: ready' "$work/cp.out" 2>/dev/null && break; sleep 0.1; done
grpc=$(sed -n 's/^presage: grpc on //p' "$work/cp.out")
api=$(sed -n 's/^presage: api on //p' "$work/cp.out")
[ -n "${PERF:-}" ] && (perf record -F 499 -g -p "$cp" -o "$PERF" -- sleep 40 >/dev/null 2>&1 &)
taskset -c 0 target/release/examples/xds_sim --grpc "http://$grpc" --api "$api" --cp-pid "$cp" \
  --proxies "$proxies" --changes 20 --telemetry-secs 3 \
  --etcd "127.0.0.1:$cport" --services "$services" --instances "$instances"
