//! Kite's enrollment protocol, shared by the node agent (server side) and `kite-init` (client).
//!
//! A pod's init container connects to the agent's unix socket and sends one JSON line, the
//! [`Hello`]; the agent answers with one JSON line, the [`Ack`]. The agent trusts the kernel for
//! *which* cgroup to measure (the peer's pid from `SO_PEERCRED`); the hello only names the pod for
//! the series' labels (and, `routes`, the pod's own route patterns, [`routes`]), and its uid
//! must match the pod cgroup's.
//!
//! ```text
//! → {"version":1,"pod":"web-0","namespace":"shop","uid":"…","container":"kite-init","routes":["/orders/{id}"]}
//! ← {"ok":true,"cgroup":"/kubepods.slice/…/kubepods-pod….slice","message":"attached"}
//! ← {"ok":false,"error":"the peer (pid 42, cgroup /user.slice) is not inside a Kubernetes pod cgroup"}
//! ```

pub mod client;
pub mod routes;
mod wire;

pub use client::{EnrollError, Request, enroll};
pub use wire::{Ack, Hello, HelloError, MAX_HELLO, VERSION, read_hello};
