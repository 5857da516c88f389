//! `kite-tui`: see [`kite_tui`].
use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use kite_tui::{Config, once, tui};
use tokio_util::sync::CancellationToken;

async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(server) = config.prometheus()? {
        return prometheus(config, server).await;
    }
    if config.once {
        let targets = config.targets().await.context("finding the agents")?;
        let answers = once::fetch(&targets, config.timeout).await;
        return print(&answers, config.output);
    }
    let thresholds = config.thresholds()?;
    let (targets, cluster) = config
        .dashboard_targets()
        .await
        .context("finding the agents")?;
    let shutdown = CancellationToken::new();
    tui::cancel_on_signals(shutdown.clone());
    tui::run(targets, cluster, thresholds, shutdown).await?;
    anyhow::ensure!(!tui::panicked(), "stopped after a panic (see above)");
    Ok(())
}

/// `--once` output on stdout, warnings on stderr.
fn print(answers: &[once::Answer], format: once::Format) -> anyhow::Result<()> {
    let (out, warnings) = once::render(answers, format)?;
    for w in warnings {
        eprintln!("kite-tui: warning: {w}");
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .context("writing the output")?;
    stdout.flush().context("writing the output")?;
    Ok(())
}

/// `--prometheus`: one snapshot (`--once`) or the dashboard over the server.
async fn prometheus(config: Config, server: kite_tui::prometheus::Server) -> anyhow::Result<()> {
    if config.once {
        // One sentence when the server fails, is not one, or holds no Kite series.
        let (snapshot, _) = server
            .snapshot(config.group, config.window, config.timeout)
            .await?;
        let answers = [once::Answer {
            agent: server.url.clone(),
            result: Ok(snapshot),
        }];
        return print(&answers, config.output);
    }
    let shutdown = CancellationToken::new();
    tui::cancel_on_signals(shutdown.clone());
    tui::run_prometheus(
        server,
        config.refresh,
        config.window,
        config.thresholds()?,
        shutdown,
    )
    .await?;
    anyhow::ensure!(!tui::panicked(), "stopped after a panic (see above)");
    Ok(())
}

fn main() -> ExitCode {
    let config = Config::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kite-tui: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    // Agent tasks may be in the middle of a connection attempt: do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Contexts, then the error; kite_tui::Error already names its own causes.
            let mut parts = Vec::new();
            for cause in e.chain() {
                parts.push(cause.to_string());
                if cause.downcast_ref::<kite_tui::Error>().is_some() {
                    break;
                }
            }
            eprintln!("kite-tui: {}", parts.join(": "));
            ExitCode::FAILURE
        }
    }
}
