//! Kite's kernel/user ABI and the logic both sides run.
//!
//! * [`maps`]: keys and values of the eBPF maps, read by the agent.
//! * [`route`]: a request target's low-cardinality route, computed byte by byte.
//! * [`hist`]: the latency histogram layout (Prometheus' native buckets, schema 4).
//! * [`h2`]: the per-socket HTTP/2 state machine (prior knowledge and `Upgrade: h2c`).
//! * [`http`]: the per-socket HTTP/1.x state machine. It runs inside the `cgroup_skb` programs
//!   and is unit- and property-tested in user space with the very same code.
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of panics on the kernel path (indices are
//! masked or checked explicitly, no division), so the BPF verifier accepts it.
#![no_std]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod h2;
pub mod hist;
pub mod http;
pub mod maps;
pub mod route;
#[cfg(test)]
mod testing;
