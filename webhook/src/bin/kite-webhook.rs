//! `kite-webhook`: Kite's mutating admission webhook (`serve`) and its certificates (`certs`).
use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kite_webhook::{
    Injector,
    certs::{self, Names},
    server::{self, FileCert},
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Kite's admission webhook: injects kite-init into opted-in pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the webhook over TLS.
    Serve(Serve),
    /// Create a CA and a serving certificate (plus the Secret and caBundle patch).
    Certs(Certs),
}

#[derive(Debug, clap::Args)]
struct Serve {
    /// Address to listen on.
    #[arg(long, env = "KITE_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    addr: SocketAddr,
    /// Serving certificate (PEM), read again when it changes.
    #[arg(
        long,
        env = "KITE_WEBHOOK_TLS_CERT",
        default_value = "/etc/kite-webhook/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(
        long,
        env = "KITE_WEBHOOK_TLS_KEY",
        default_value = "/etc/kite-webhook/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// Image of the injected init container.
    #[arg(long, env = "KITE_INIT_IMAGE", default_value_t = Injector::default().image)]
    init_image: String,
    /// imagePullPolicy of the injected init container.
    #[arg(long, env = "KITE_INIT_PULL_POLICY", default_value_t = Injector::default().pull_policy)]
    init_pull_policy: String,
    /// Command of the injected init container.
    #[arg(
        long,
        env = "KITE_INIT_COMMAND",
        default_value = "kite-init",
        value_delimiter = ' '
    )]
    init_command: Vec<String>,
    /// How long the init container waits for the node agent.
    #[arg(long, env = "KITE_INIT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    init_timeout: Duration,
    /// The agent's socket directory on the nodes (a hostPath in the pod).
    #[arg(long, env = "KITE_SOCKET_DIR", default_value_t = Injector::default().socket_dir)]
    socket_dir: String,
    /// Kite's own namespace, never injected.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kite-system")]
    namespace: String,
    /// Other namespaces never injected (kube-system always is).
    #[arg(long = "exclude-namespace", value_name = "NAMESPACE")]
    exclude: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct Certs {
    /// Directory for ca.crt, tls.crt, tls.key, secret.json and ca-bundle-patch.json.
    #[arg(long, default_value = "kite-webhook-certs")]
    out_dir: PathBuf,
    /// The webhook Service.
    #[arg(long, default_value_t = Names::default().service)]
    service: String,
    /// Its namespace.
    #[arg(long, default_value_t = Names::default().namespace)]
    namespace: String,
    /// Name of the Secret to write.
    #[arg(long, default_value_t = Names::default().secret)]
    secret: String,
    /// Validity of the serving certificate in days.
    #[arg(long, default_value_t = Names::default().days)]
    days: i64,
    /// More DNS names or IP addresses for the certificate (e.g. 127.0.0.1 for local tests).
    #[arg(long = "extra-name")]
    extra: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KITE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(s) => serve(s).await,
        Command::Certs(c) => {
            let names = Names {
                service: c.service,
                namespace: c.namespace,
                secret: c.secret,
                days: c.days,
                ..Names::default()
            };
            let bundle = certs::generate(&names, &c.extra)?;
            bundle.write(&names, &c.out_dir)?;
            println!(
                "wrote {dir}/{{ca.crt,tls.crt,tls.key,secret.json,ca-bundle-patch.json}} for {dns}\n\
                 install with:\n  kubectl apply -f {dir}/secret.json\n  \
                 kubectl patch mutatingwebhookconfiguration {cfg} --type=json --patch-file {dir}/ca-bundle-patch.json",
                dir = c.out_dir.display(),
                dns = names.dns_names()[2],
                cfg = names.webhook_config,
            );
            Ok(())
        }
    }
}

async fn serve(s: Serve) -> anyhow::Result<()> {
    let mut excluded: BTreeSet<String> = s.exclude.into_iter().collect();
    excluded.insert("kube-system".into());
    excluded.insert(s.namespace.clone());
    let injector = Injector {
        image: s.init_image,
        pull_policy: s.init_pull_policy,
        command: s.init_command,
        socket_dir: s.socket_dir,
        timeout: s.init_timeout,
        excluded_namespaces: excluded,
        ..Injector::default()
    };
    let cert = FileCert::load(&s.tls_cert, &s.tls_key)?;
    let listener = tokio::net::TcpListener::bind(s.addr)
        .await
        .with_context(|| format!("listening on {}", s.addr))?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            shutdown.cancel();
        });
    }
    server::serve(listener, cert, server::router(Arc::new(injector)), shutdown).await?;
    Ok(())
}
