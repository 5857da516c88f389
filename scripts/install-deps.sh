#!/usr/bin/env bash
# Installs what building, testing and demonstrating Kite need on a Debian 12 machine, skipping
# whatever is already there. Needs root (apt). Safe to run again.
#
# The eBPF programs are Rust (aya-ebpf) built with Debian's rustc-web (it ships the library
# source that `-Z build-std=core` needs) and bpf-linker against the same LLVM; see DESIGN.md.
set -euo pipefail

log() { printf '\033[1m[deps]\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export DEBIAN_FRONTEND=noninteractive

missing=()
need() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || missing+=("$1"); }

apt_install() {
    [ $# -gt 0 ] || return 0
    log "apt-get install $*"
    if [ -z "${KITE_APT_UPDATED:-}" ]; then
        apt-get update -q >/dev/null
        export KITE_APT_UPDATED=1
    fi
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# Toolchain for the eBPF side.
for p in rustc-web rust-web-src cargo-web; do need "$p"; done
apt_install "${missing[@]}"
missing=()
llvm_major=$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
need "llvm-${llvm_major}-dev"
# Servers, clients and tools the tests and the demo run.
for p in nginx-light libnginx-mod-http-echo wrk curl python3 python3-pip iproute2 iptables procps \
    util-linux gcc libc6-dev bpftool prometheus tmux nghttp2-client nghttp2-server golang-go \
    golang-google-grpc-dev openssl; do
    need "$p"
done
# deploy/runtime-check.py (the agent under a real container runtime): runc, debootstrap for the
# image's root filesystem, PyYAML to read the rendered manifests.
for p in runc debootstrap python3-yaml; do need "$p"; done
# `kubectl kustomize` renders deploy/ in the manifest tests. deploy/ needs kustomize v4 or
# later (kubectl ≥ 1.22: a var taken from a list element, directories as resources). These
# machines come with one; Debian's kubernetes-client (1.20, kustomize v2) is only a fallback
# that renders the base but not all of it, and says so below.
command -v kubectl >/dev/null || need kubernetes-client
for p in ${KITE_EXTRA_PACKAGES:-}; do need "$p"; done
apt_install "${missing[@]}"

# The reflection-only gRPC client of the agent tests.
if ! python3 -c 'import grpc, grpc_reflection, google.protobuf' 2>/dev/null; then
    log "pip install grpcio grpcio-reflection protobuf"
    python3 -m pip install -q --disable-pip-version-check --break-system-packages grpcio grpcio-reflection protobuf 2>&1 \
        | grep -v "Running pip as the 'root' user" >&2 || true
    python3 -c 'import grpc, grpc_reflection, google.protobuf'
fi

# Debian starts the services it installs where it can; tests start their own.
for svc in prometheus nginx; do
    if [ -x "/etc/init.d/$svc" ]; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
done

if ! command -v cargo >/dev/null; then
    echo "install-deps.sh: no cargo on PATH (rustup's toolchain is expected for the host build)" >&2
    exit 1
fi

want_linker="bpf-linker 0.13.0"
if ! bpf-linker --version 2>/dev/null | grep -q "^${want_linker}"; then
    log "cargo install bpf-linker (LLVM ${llvm_major})"
    LLVM_PREFIX="/usr/lib/llvm-${llvm_major}" cargo install bpf-linker@0.13.0 --locked \
        --no-default-features --features "llvm-${llvm_major}" -q
fi

kustomize=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')
if [ -z "$kustomize" ] || [ "$kustomize" -lt 4 ]; then
    log "warning: this kubectl's kustomize is older than v4; the deploy/ manifest tests need v4+ (kubectl ≥ 1.22)"
fi

log "ready"
