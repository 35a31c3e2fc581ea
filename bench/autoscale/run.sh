#!/usr/bin/env bash
# Autoscaling benchmark (issue 7): builds the release binary and replays the shared
# traces through Presage's planner, HPA, KPA and the oracle. Arguments: traces (paths
# under ../shared/traces), default: all in bench.py's list.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin presage
python3 bench/autoscale/bench.py "$@"
