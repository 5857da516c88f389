#!/usr/bin/env bash
# Runs Kite's whole test suite: unit tests, property tests and the real-kernel tests (eBPF
# programs loaded into this kernel, real nginx/Python servers, real wrk load). Needs root for
# the kernel tests; without root they skip with a message unless KITE_REQUIRE_EBPF=1.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
    scripts/install-deps.sh
fi
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
exec cargo test --locked --no-fail-fast "$@"
