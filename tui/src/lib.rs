//! `kite-tui`: a top-style live view of Kite's node agents.
//!
//! It follows the `kite.v1` `Watch` stream of one or more agents (several merge into one
//! table; each row names its node), shows the endpoints they measure with RPS, p50/p90/p99,
//! errors and bytes, and opens a detail view of one endpoint with its latency distribution
//! and history. `--once` prints one snapshot as a table or JSON instead; `--kube` finds the
//! agents of a cluster and reaches them through port-forwards of the Kubernetes API.
//!
//! The parts follow the data: [`client`] (one task per agent, feeding a channel) →
//! [`app`] (state, no IO: `Event` → `Action` → `update`) → `ui` (drawing, read-only) on a
//! terminal run by [`tui`].
//!
//! ```no_run
//! use kite_tui::{app::{App, AgentEvent, Event}, tui};
//! use ratatui::{Terminal, backend::TestBackend};
//! # async fn demo(snapshot: kite_proto::v1::Snapshot) {
//! let mut app = App::new(vec!["127.0.0.1:7777".into()], (80, 24));
//! tui::handle(&mut app, Event::Agent(0, AgentEvent::Snapshot(Box::new(snapshot))));
//! let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
//! terminal.draw(|f| f.render_widget(&app, f.area())).unwrap();
//! println!("{}", terminal.backend());
//! # }
//! ```
#![deny(missing_docs)]

pub mod app;
pub mod client;
mod error;
pub mod human;
pub mod kube;
pub mod once;
pub mod tui;
mod ui;

use std::time::Duration;

use clap::Parser;

pub use error::Error;
pub use ui::table_body_height;

/// Command line of `kite-tui`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "kite-tui",
    version,
    about = "A top-style live view of the HTTP endpoints Kite's node agents measure",
    after_help = "Keys: arrows/j/k move, Enter detail, s/S sort, / filter, space pause, ? help, q quit.\n\
                  In a cluster: `kubectl -n kite-system port-forward ds/kite-agent 7777` then `kite-tui`,\n\
                  or `kite-tui --kube` to port-forward to every node's agent by itself."
)]
pub struct Config {
    /// Agent gRPC address, `host:port` (repeatable: several agents merge into one view).
    /// Default 127.0.0.1:7777 unless --kube is given.
    #[arg(long = "addr", value_name = "HOST:PORT")]
    pub addrs: Vec<String>,
    /// Find the agent pods through the Kubernetes API (kubeconfig or in-cluster) and reach
    /// each one through its own port-forward.
    #[arg(long)]
    pub kube: bool,
    /// Namespace of the agent pods (with --kube).
    #[arg(long, default_value = kube::DEFAULT_NAMESPACE)]
    pub kube_namespace: String,
    /// Label selector of the agent pods (with --kube).
    #[arg(long, default_value = kube::DEFAULT_SELECTOR)]
    pub kube_selector: String,
    /// gRPC port of the agents inside their pods (with --kube).
    #[arg(long, default_value_t = kite_proto::DEFAULT_GRPC_PORT)]
    pub kube_port: u16,
    /// Print one snapshot (a `List` per agent) and exit; non-zero when no agent answers.
    #[arg(long)]
    pub once: bool,
    /// Output of --once.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: once::Format,
    /// How long --once waits for each agent.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Config {
    /// The agents to follow: the `--addr`s (or the default address), plus with `--kube` each
    /// node's agent pod.
    pub async fn targets(&self) -> Result<Vec<client::Target>, Error> {
        let mut targets = self
            .addrs
            .iter()
            .map(|a| client::Target::parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        if self.kube {
            let kube_client = ::kube::Client::try_default()
                .await
                .map_err(|e| Error::Kube {
                    what: "connecting to the Kubernetes API (kubeconfig or in-cluster)".into(),
                    source: Box::new(e),
                })?;
            let pods = kube::discover(
                &kube_client,
                &self.kube_namespace,
                &self.kube_selector,
                None,
            )
            .await?;
            targets.extend(pods.into_iter().map(|p| {
                client::Target::Pod(std::sync::Arc::new(kube::PodTarget::new(
                    kube_client.clone(),
                    &self.kube_namespace,
                    &self.kube_selector,
                    &p.node,
                    self.kube_port,
                )))
            }));
        } else if targets.is_empty() {
            targets.push(client::Target::parse(&format!(
                "127.0.0.1:{}",
                kite_proto::DEFAULT_GRPC_PORT
            ))?);
        }
        Ok(targets)
    }
}
