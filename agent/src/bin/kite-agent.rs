//! `kite-agent`: see [`kite_agent::daemon`].
use std::{process::ExitCode, time::Duration};

use clap::Parser as _;
use kite_agent::daemon::{Config, run};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Log filter when `KITE_LOG` is unset. kube's client logs every failed request of the pod
/// watcher at ERROR; the agent reports an unreachable API server once itself (see
/// `daemon::kube::follow`), so those repeats are hidden unless asked for.
const DEFAULT_LOG: &str = "info,kube_client=off,kube_runtime=warn";

/// How long the runtime may take to stop its tasks once the agent is done.
const RUNTIME_STOP: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(msg) = config.check() {
        use clap::CommandFactory as _;
        Config::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
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
    // setns(2) moves only the calling thread: before the runtime starts its workers, or they
    // read /proc/<pid>/cgroup relative to the container's own cgroup namespace.
    if config.host_cgroupns
        && let Err(e) = kite_agent::daemon::enter_host_cgroupns()
    {
        eprintln!("kite-agent: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kite-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = rt.block_on(async {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return Err(anyhow::anyhow!("cannot install signal handlers"));
        };
        let signals = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            signals.cancel();
            // The first signal drains within --shutdown-timeout; a second one exits now (the
            // kernel drops the eBPF links with the process).
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting at once");
            std::process::exit(1);
        });
        run(config, shutdown.clone())
            .await
            .map_err(anyhow::Error::from)
    });
    // Tasks still holding clients (past the drain deadline) are dropped, not waited for.
    rt.shutdown_timeout(RUNTIME_STOP);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kite-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
