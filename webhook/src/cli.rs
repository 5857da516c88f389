//! Command line of `kite-webhook` (in the library so the manifest tests can parse the
//! Deployment's arguments with it).
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::certs::Names;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Kite's admission webhook: injects kite-init into opted-in pods"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the webhook over TLS.
    Serve(Serve),
    /// Create a CA and a serving certificate (plus the Secret and caBundle patch).
    Certs(Certs),
    /// Create a CA, an agent serving pair and a client pair for the agent's optional gRPC TLS.
    GrpcCerts(GrpcCerts),
}

#[derive(Debug, clap::Args)]
pub struct GrpcCerts {
    /// Directory for ca.crt, agent.crt, agent.key, client.crt and client.key.
    #[arg(long, default_value = "kite-grpc-certs")]
    pub out_dir: PathBuf,
    /// DNS names or IP addresses clients use for the agents (repeatable).
    #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    pub names: Vec<String>,
    /// The client certificate's common name.
    #[arg(long, default_value = "kite-tui")]
    pub client: String,
    /// Validity of the agent's and the client's certificates in days (the CA's is ten times longer).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub days: i64,
}

#[derive(Debug, clap::Args)]
pub struct Serve {
    /// Address to listen on.
    #[arg(long, env = "KITE_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub addr: SocketAddr,
    /// Serving certificate (PEM), read again when it changes.
    #[arg(
        long,
        env = "KITE_WEBHOOK_TLS_CERT",
        default_value = "/etc/kite-webhook/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(
        long,
        env = "KITE_WEBHOOK_TLS_KEY",
        default_value = "/etc/kite-webhook/tls/tls.key"
    )]
    pub tls_key: PathBuf,
    /// Image of the injected init container.
    #[arg(long, env = "KITE_INIT_IMAGE", default_value_t = crate::Injector::default().image)]
    pub init_image: String,
    /// imagePullPolicy of the injected init container.
    #[arg(long, env = "KITE_INIT_PULL_POLICY", default_value_t = crate::Injector::default().pull_policy)]
    pub init_pull_policy: String,
    /// Command of the injected init container.
    #[arg(
        long,
        env = "KITE_INIT_COMMAND",
        default_value = "kite-init",
        value_delimiter = ' '
    )]
    pub init_command: Vec<String>,
    /// How long the init container waits for the node agent.
    #[arg(long, env = "KITE_INIT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub init_timeout: Duration,
    /// The agent's socket directory on the nodes (a hostPath in the pod).
    #[arg(long, env = "KITE_SOCKET_DIR", default_value_t = crate::Injector::default().socket_dir)]
    pub socket_dir: String,
    /// The agent's socket file name in that directory (the agent's `--socket`).
    #[arg(long, env = "KITE_SOCKET_NAME", default_value_t = crate::Injector::default().socket_name)]
    pub socket_name: String,
    /// Kite's own namespace, never injected.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kite-system")]
    pub namespace: String,
    /// Other namespaces never injected (kube-system always is).
    #[arg(long = "exclude-namespace", value_name = "NAMESPACE")]
    pub exclude: Vec<String>,
    /// Reviews read and decided at once (besides a budget of 3 MiB of review bodies at once,
    /// which keeps the webhook under the Deployment's 64 MiB limit).
    #[arg(long, default_value_t = crate::server::Limits::default().max_reviews)]
    pub max_reviews: usize,
    /// A connection with no request in progress for this long is closed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// A request's headers must arrive within this long (HTTP/1), its body within twice that.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct Certs {
    /// Directory for ca.crt, tls.crt, tls.key, secret.json and ca-bundle-patch.json.
    #[arg(long, default_value = "kite-webhook-certs")]
    pub out_dir: PathBuf,
    /// The webhook Service.
    #[arg(long, default_value_t = Names::default().service)]
    pub service: String,
    /// Its namespace.
    #[arg(long, default_value_t = Names::default().namespace)]
    pub namespace: String,
    /// Name of the Secret to write.
    #[arg(long, default_value_t = Names::default().secret)]
    pub secret: String,
    /// Validity of the serving certificate in days (the CA's is ten times longer).
    #[arg(long, default_value_t = Names::default().days, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub days: i64,
    /// More DNS names or IP addresses for the certificate (e.g. 127.0.0.1 for local tests).
    #[arg(long = "extra-name")]
    pub extra: Vec<String>,
}
