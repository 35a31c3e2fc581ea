#!/usr/bin/env bash
# Builds a release `presage` optimised with a profile of its own work (profile-guided
# optimisation): an instrumented build runs the proxy under HTTP/1.1, h2c and TLS load
# (standalone and as a sidecar), the forecaster and the planner's replay on the shared
# traces (scripts/pgo_train.py); LLVM then builds again knowing which branches and
# calls are hot. Functions the training never ran are optimised for size, so the
# training covers every path a benchmark measures.
#
# Usage: bash scripts/pgo.sh   -> target/pgo/presage   (two release builds and a relink:
#                                 15-40 min here, with the machine's speed)
# Needs llvm-profdata of rustc's LLVM major version (Debian: llvm-<major>; installed
# when missing, as root) and what the training runs: nginx (the upstream), h2load, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/need.sh
need nginx:nginx-light h2load:nghttp2-client curl:curl openssl:openssl

host=$(rustc -vV | sed -n 's/^host: //p')
major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=
for p in "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" "llvm-profdata-$major"; do
  if command -v "$p" >/dev/null; then profdata=$p; break; fi
done
if [ -z "$profdata" ]; then
  need_package "llvm-$major"
  profdata=llvm-profdata-$major
fi

dir=${PGO_DIR:-$PWD/target/pgo}
rm -rf "$dir/data" && mkdir -p "$dir/data"
# --target keeps RUSTFLAGS off build scripts and proc macros: only the binary is
# instrumented, and only it writes profiles.
RUSTFLAGS="-Cprofile-generate=$dir/data" \
  cargo build --release -p presage --target "$host" --target-dir "$dir/gen"
python3 scripts/pgo_train.py "$dir/gen/$host/release/presage"
"$profdata" merge -o "$dir/merged.profdata" "$dir/data"
build_with_profile() {
  RUSTFLAGS="-Cprofile-use=$dir/merged.profdata" \
    cargo build --release -p presage --target "$host" --target-dir "$dir/use"
}
build_with_profile
# The build's own hot-code list (bench/proxy/hot_code.py; root, a real disk): the profile
# inlines differently, so few of link/hot.order's names are in this binary and an idle
# proxy maps code from all over it. Measured on the build, then linked again with it.
export PRESAGE_HOT_ORDER=$dir/hot.order
if python3 bench/proxy/hot_code.py "$dir/use/$host/release/presage"; then
  build_with_profile
else
  echo "the hot-code list was not measured (above): the build keeps link/hot.order's" >&2
fi
cp "$dir/use/$host/release/presage" "$dir/presage"
echo "built $dir/presage"
