#!/usr/bin/env bash
# The README's main command: builds Presage (installing protoc first on a fresh Debian
# machine: etcd-client's build needs it) and runs `presage up` on config/demo.yaml.
# Arguments go to `presage up`, e.g. `scripts/up.sh --config my-mesh.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/need.sh
need protoc:protobuf-compiler kill:procps
exec cargo run --release --quiet -- up "$@"
