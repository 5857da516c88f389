//! Kite against the real kernel: real servers (nginx, Python) in test cgroups, real clients
//! (wrk, a timing client), Kite's own eBPF programs attached. Needs root; without it every
//! test skips with a message, unless `KITE_REQUIRE_EBPF=1`, where that is a failure.

mod accuracy;
mod agent;
mod fairness;
mod grpc;
mod h2;
mod hostile;
mod lifecycle;
mod loader;
mod network;
mod pod_routes;
mod robustness;
mod routes;
mod semconv;
mod series;
mod tls;
mod verdict;
