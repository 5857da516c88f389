//! The Kite node agent as a library: load Kite's eBPF programs, attach them to cgroups, read
//! the per-endpoint histograms they fill, and turn successive readings into windowed stats.
//!
//! ```no_run
//! use kite_agent::{cgroup::Hierarchy, ebpf::{Kite, Options}};
//! # fn main() -> Result<(), kite_agent::Error> {
//! let h = Hierarchy::discover()?;
//! let mut kite = Kite::load(Options::default())?;
//! kite.attach(&h.cgroup("/my-service")?)?;
//! for (key, stats) in kite.endpoints()? {
//!     println!("{}:{} {} requests", std::net::Ipv6Addr::from(key.addr), key.port, stats.count);
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod cgroup;
pub mod daemon;
pub mod ebpf;
mod error;
pub mod human;
pub mod loader;
pub mod pods;
pub mod route_pattern;
pub mod rpc_names;
pub mod stats;
pub mod tls;

pub use error::Error;
