#!/usr/bin/env bash
# Does the kernel's verifier accept kite-common's HTTP/2 machine? Builds a scratch cgroup_skb
# program that drives H2Conn::begin / bpf_loop(step) / end on map-memory state (as the real
# programs drive the HTTP/1 machine) and loads it with aya; prints the verified instruction
# counts (limit 1 000 000). Root; Debian's rustc-web and bpf-linker as in shared TOOLCHAIN.md.
# Not part of the workspace (its own [workspace] tables); nothing is attached or pinned.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC=/usr/bin/rustc
(
  cd prog
  RUSTC_BOOTSTRAP=1 CARGO_ENCODED_RUSTFLAGS=$(printf -- '--cfg=bpf_target_arch="x86_64"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf') \
    /usr/bin/cargo build --release --target bpfel-unknown-none -Z build-std=core
)
(cd load && cargo build --release)
load/target/release/h2v-load prog/target/bpfel-unknown-none/release/h2v
