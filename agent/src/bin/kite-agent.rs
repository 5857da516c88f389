//! `kite-agent`: see [`kite_agent::daemon`].
use std::process::ExitCode;

use clap::Parser as _;
use kite_agent::daemon::{Config, run};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Log filter when `KITE_LOG` is unset. kube's client logs every failed request of the pod
/// watcher at ERROR; the agent reports an unreachable API server once itself (see
/// `daemon::kube::follow`), so those repeats are hidden unless asked for.
const DEFAULT_LOG: &str = "info,kube_client=off,kube_runtime=warn";

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    // Allocations of 1 MiB and more (a /metrics answer for thousands of endpoints) get their
    // own mappings and go back to the system when freed, instead of fragmenting the heap; a
    // fixed threshold also stops glibc from raising it after the first large free.
    // SAFETY: plain glibc call before any thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KITE_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            shutdown.cancel();
        });
    }
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kite-agent: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
