#!/usr/bin/env bash
# Presage's forecaster vs seasonal naive vs Nixtla statsforecast (AutoETS, MSTL+AutoETS)
# on the shared real traces, in one run. Usage: bench/forecast/run.sh [ORIGINS at h = 60; default 12] [--presage-only]
# Needs ../shared/traces (the team's trace folder beside the repository). statsforecast
# goes into a virtualenv under target/ (Debian's Python refuses system-wide pip).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=target/benchpy/bin/python
[ -x "$py" ] || python3 -m venv target/benchpy
"$py" -c "import statsforecast" 2>/dev/null || "$py" -m pip install --quiet statsforecast
cargo build --release --bin presage
exec "$py" bench/forecast/bench.py "$@"
