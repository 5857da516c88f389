//! Kite's mutating admission webhook.
//!
//! Pods that opt in get Kite's init container (`kite-init`), which tells the node agent over its
//! unix socket that the pod exists; the agent then measures the pod's cgroup. See [`inject`] for
//! what is injected and when, [`server`] for the TLS endpoint and [`certs`] for the certificates
//! a cluster without cert-manager needs.

pub mod certs;
pub mod cli;
pub mod inject;
pub mod server;

pub use inject::{Injector, Scope};
