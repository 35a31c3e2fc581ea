#!/usr/bin/env bash
# Presage's forecaster vs seasonal naive vs Nixtla statsforecast (AutoETS, MSTL+AutoETS)
# on the shared real traces, in one run. Usage: bench/forecast/run.sh [ORIGINS]
# Needs ../shared/traces (the team's trace folder beside the repository).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -c "import statsforecast" 2>/dev/null || pip install --quiet statsforecast
cargo build --release --bin presage
exec python3 bench/forecast/bench.py "${1:-5}"
