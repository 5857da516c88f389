#!/usr/bin/env bash
# Kite's benchmarks: installs what they need, builds in release mode, runs everything and
# writes docs/benchmarks.md. About 10 minutes. Needs root. Extra arguments go to
# `kite-bench all` (e.g. --rounds 3 --secs 3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/run.sh: run as root" >&2
    exit 1
fi
scripts/install-deps.sh
# The overhead benchmark's sidecar-proxy peer (no test needs it, so it is not in install-deps).
command -v haproxy >/dev/null || apt-get install -y -q haproxy
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked -q -p kite-agent -p kite-bench
mkdir -p docs
exec target/release/kite-bench all --write docs/benchmarks.md "$@"
