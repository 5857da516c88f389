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
pub mod probe;
pub mod prometheus;
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
    after_help = "Keys: arrows/j/k move, Enter detail, 1-9/0 or s/</> sort by a column, S reverse, d direction, / filter, space pause, ? help, q quit.\n\
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
    /// Port-forwards --kube keeps open at most (one per node's agent; a larger cluster shows
    /// this many nodes and says so: use --prometheus for any size).
    #[arg(long, default_value_t = kube::DEFAULT_MAX_FORWARDS)]
    pub kube_max_forwards: usize,
    /// Read Kite's series from this Prometheus-compatible server (`http://host:port`, its
    /// query API) instead of the agents: any cluster size, one set of queries per refresh.
    #[arg(long, value_name = "URL", conflicts_with_all = ["addrs", "kube"])]
    pub prometheus: Option<String>,
    /// How often the --prometheus view is refreshed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub refresh: Duration,
    /// The range of --prometheus' `rate()` (the RPS and percentiles shown); at least two of
    /// the server's scrape intervals.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// Rows of --once: endpoints, or (with --prometheus) summed per workload or namespace
    /// in PromQL.
    #[arg(long, value_enum, default_value = "endpoint")]
    pub group: app::Grouping,
    /// Print one snapshot (a `List` per agent) and exit; non-zero when no agent answers.
    #[arg(long)]
    pub once: bool,
    /// Output of --once.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: once::Format,
    /// Client certificate (PEM) for agents serving gRPC over TLS (`kite-agent
    /// --grpc-tls-cert`); with --tls-key and --ca every --addr is reached over TLS.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "ca"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// CA that signed the agents' certificates (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub ca: Option<std::path::PathBuf>,
    /// Latencies from this one are yellow in the table.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub latency_warn: Duration,
    /// Latencies from this one are red in the table (more than --latency-warn).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub latency_bad: Duration,
    /// How long --once waits for each agent.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Config {
    /// The `--prometheus` server, if given (with its flags checked).
    pub fn prometheus(&self) -> Result<Option<prometheus::Server>, Error> {
        if self.group != app::Grouping::Endpoint && (self.prometheus.is_none() || !self.once) {
            return Err(Error::Flag(
                "--group is for --once with --prometheus (the dashboard groups with `g`)".into(),
            ));
        }
        let Some(url) = &self.prometheus else {
            return Ok(None);
        };
        if self.window < Duration::from_secs(2) || self.refresh.is_zero() {
            return Err(Error::Flag(format!(
                "--window ({}) must be at least 2s and --refresh more than 0",
                humantime::format_duration(self.window)
            )));
        }
        prometheus::Server::parse(url).map(Some)
    }

    /// The latency colours of `--latency-warn` and `--latency-bad`.
    pub fn thresholds(&self) -> Result<app::Thresholds, Error> {
        if self.latency_bad <= self.latency_warn {
            return Err(Error::Flag(format!(
                "--latency-bad ({}) must be more than --latency-warn ({})",
                humantime::format_duration(self.latency_bad),
                humantime::format_duration(self.latency_warn)
            )));
        }
        Ok(app::Thresholds {
            warn: self.latency_warn.as_secs_f64(),
            bad: self.latency_bad.as_secs_f64(),
        })
    }

    /// The agents to follow: the `--addr`s (or the default address), plus with `--kube` each
    /// node's agent pod.
    pub async fn targets(&self) -> Result<Vec<client::Target>, Error> {
        let mut targets = self.addr_targets()?;
        if self.kube {
            let kube_client = kube_client().await?;
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
        }
        Ok(targets)
    }

    /// The `--addr`s (the default address without them and without --kube), TLS set up.
    fn addr_targets(&self) -> Result<Vec<client::Target>, Error> {
        if let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.ca) {
            client::use_tls(cert, key, ca)?;
        }
        let mut targets = self
            .addrs
            .iter()
            .map(|a| client::Target::parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        if !self.kube && targets.is_empty() {
            targets.push(client::Target::parse(&format!(
                "127.0.0.1:{}",
                kite_proto::DEFAULT_GRPC_PORT
            ))?);
        }
        Ok(targets)
    }

    /// What the dashboard follows: the `--addr`s, and with `--kube` the agent DaemonSet
    /// (watched: nodes join and leave while it runs).
    pub async fn dashboard_targets(
        &self,
    ) -> Result<(Vec<client::Target>, Option<(::kube::Client, kube::Cluster)>), Error> {
        let targets = self.addr_targets()?;
        if !self.kube {
            return Ok((targets, None));
        }
        if self.kube_max_forwards == 0 {
            return Err(Error::Flag("--kube-max-forwards must be at least 1".into()));
        }
        let cluster = kube::Cluster {
            namespace: self.kube_namespace.clone(),
            selector: self.kube_selector.clone(),
            port: self.kube_port,
            max_forwards: self.kube_max_forwards,
            first_index: targets.len(),
        };
        Ok((targets, Some((kube_client().await?, cluster))))
    }
}

/// A client of the Kubernetes API (kubeconfig or in-cluster).
async fn kube_client() -> Result<::kube::Client, Error> {
    ::kube::Client::try_default()
        .await
        .map_err(|e| Error::Kube {
            what: "connecting to the Kubernetes API (kubeconfig or in-cluster)".into(),
            source: Box::new(e),
        })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Config;

    #[test]
    fn latency_thresholds_are_flags_and_must_be_in_order() {
        let t = Config::try_parse_from(["kite-tui"])
            .unwrap()
            .thresholds()
            .unwrap();
        assert_eq!((t.warn, t.bad), (0.1, 0.5));
        let t =
            Config::try_parse_from(["kite-tui", "--latency-warn", "5ms", "--latency-bad", "20ms"])
                .unwrap()
                .thresholds()
                .unwrap();
        assert_eq!((t.warn, t.bad), (0.005, 0.02));
        let e = Config::try_parse_from(["kite-tui", "--latency-warn", "1s"])
            .unwrap()
            .thresholds()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--latency-bad (500ms) must be more than --latency-warn (1s)"
        );
    }
}
