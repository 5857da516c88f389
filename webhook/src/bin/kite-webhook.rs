//! `kite-webhook`: Kite's mutating admission webhook (`serve`) and its certificates (`certs`).
use std::{collections::BTreeSet, sync::Arc};

use anyhow::Context as _;
use clap::Parser as _;
use kite_webhook::{
    Injector,
    certs::{self, Names},
    cli::{Cli, Command, Serve},
    server::{self, FileCert},
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // Before any thread exists: two malloc arenas (glibc's default is 8 per core), so memory
    // freed after a large review on one worker thread is reused by the next review on another
    // instead of each arena keeping its own high-water mark; and a fixed mmap threshold, so a
    // review's large buffers always come from mmap and go back to the kernel when freed (the
    // default threshold grows to the largest buffer freed, after which they stay in the
    // arenas). Both keep the server under its 64 MiB limit.
    // SAFETY: plain glibc calls, made while the process has one thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
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
            let mut bundle = certs::generate(&names, &c.extra)?;
            bundle.keep_previous_ca(&c.out_dir);
            bundle.write(&names, &c.out_dir)?;
            println!(
                "wrote {dir}/{{ca.crt,tls.crt,tls.key,secret.json,ca-bundle-patch.json}} for {dns}\n\
                 install with (in this order):\n  \
                 kubectl patch mutatingwebhookconfiguration {cfg} --type=json --patch-file {dir}/ca-bundle-patch.json\n  \
                 kubectl apply -f {dir}/secret.json",
                dir = c.out_dir.display(),
                dns = names.dns_names()[2],
                cfg = names.webhook_config,
            );
            Ok(())
        }
        Command::GrpcCerts(g) => {
            certs::grpc_bundle(&g.names, &g.client, g.days)?.write(&g.out_dir)?;
            println!(
                "wrote {dir}/{{ca.crt,agent.crt,agent.key,client.crt,client.key}}\n  \
                 kite-agent --grpc-tls-cert {dir}/agent.crt --grpc-tls-key {dir}/agent.key --grpc-client-ca {dir}/ca.crt\n  \
                 kite-tui --tls-cert {dir}/client.crt --tls-key {dir}/client.key --ca {dir}/ca.crt",
                dir = g.out_dir.display()
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
        socket_name: s.socket_name,
        timeout: s.init_timeout,
        excluded_namespaces: excluded,
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
    let limits = server::Limits {
        max_reviews: s.max_reviews,
        idle: s.idle_timeout,
        header_read: s.header_timeout,
        body_read: s.header_timeout * 2,
        ..server::Limits::default()
    };
    server::serve(
        listener,
        cert,
        server::router(Arc::new(injector), limits),
        limits,
        shutdown,
    )
    .await?;
    Ok(())
}
