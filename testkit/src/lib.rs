//! Kite's test and benchmark fixtures: cgroups, network namespaces, real servers (nginx,
//! Python) and load generators (wrk, a timing client), and Kite watching a cgroup while load
//! runs. Everything made here is removed when its guard drops, also when a test fails.
//!
//! Used by the agent's real-kernel tests and by `kite-bench`.

pub mod grpc;
pub mod h2;
pub mod impair;
pub mod load;
pub mod prometheus;
pub mod servers;
pub mod sys;
pub mod tls;
pub mod watch;

use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU32, Ordering},
};

pub use load::*;
pub use prometheus::*;
pub use servers::*;
pub use sys::*;
pub use watch::*;

/// Whether kernel tests can run. Without root they are skipped with a message, unless
/// `KITE_REQUIRE_EBPF=1` (CI), where a skip is a failure.
pub fn ebpf_available(test: &str) -> bool {
    // SAFETY: trivial libc call.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("KITE_REQUIRE_EBPF").as_deref() == Ok("1") {
        panic!("{test}: KITE_REQUIRE_EBPF=1 but not running as root: eBPF tests cannot run");
    }
    eprintln!(
        "SKIPPED {test}: needs root to load eBPF programs (set KITE_REQUIRE_EBPF=1 to fail instead)"
    );
    false
}

/// Load tests compare rates and latencies: one at a time, so they do not slow each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A single-threaded tokio runtime for a test's async client calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A tokio runtime with `threads` workers, for tests that keep many streams busy at once.
pub fn rt_multi(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
