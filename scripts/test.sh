#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian machine it first installs what the build
# and the tests need: protoc (etcd-client's build), and the real clients and servers the
# tests talk to (curl, h2load, openssl, etcd; ip, iptables, runuser, setpriv and python3 for the
# network-namespace test of transparent interception; kubectl, which the machine has, and
# kubernetes-validate from PyPI for the deploy/ tests). Everything else comes from Cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/need.sh
need protoc:protobuf-compiler curl:curl h2load:nghttp2-client openssl:openssl etcd:etcd-server kill:procps \
  nats-server:nats-server \
  ip:iproute2 iptables:iptables runuser:util-linux setpriv:util-linux python3:python3
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
# kubernetes-validate (PyPI; bundles the Kubernetes OpenAPI schemas) for the deploy/ tests,
# in a virtualenv under target/.
if [ ! -x target/py/bin/kubernetes-validate ]; then
  python3 -c 'import ensurepip, venv' 2>/dev/null || need_package python3-venv
  python3 -m venv target/py
  target/py/bin/pip install -q kubernetes-validate==1.37.0
fi

exec cargo nextest run --workspace --profile ci "$@"
