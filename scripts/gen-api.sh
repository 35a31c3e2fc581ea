#!/usr/bin/env bash
# Regenerates api/src/gen/ from api/proto after a schema change (needs protoc:
# `apt-get install -y protobuf-compiler`). The output is checked in.
set -euo pipefail
cd "$(dirname "$0")/../api/codegen"
cargo run --quiet
cd ../..
cargo fmt -p presage-api
