//! `kite-agent`, the node daemon: the eBPF data plane, the gRPC API, the Prometheus endpoint,
//! the enrollment socket and Kubernetes metadata, wired together under one cancellation token.
//!
//! ```text
//! data-plane thread ──(poll every interval)──▶ State ◀── gRPC (List, Watch, Info)
//!        ▲ attach/detach                         ▲   ◀── /metrics, /healthz, /readyz
//!        └── enrollment socket (pod hellos)      └── Kubernetes pod watcher (labels, owners)
//! ```

pub mod dataplane;
pub mod enroll;
pub mod grpc;
pub mod kube;
pub mod metrics;
pub mod state;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    Router, extract::State as AxState, http::StatusCode, response::IntoResponse, routing::get,
};
use clap::{Parser, ValueEnum};
use kite_proto::v1::kite_server::KiteServer;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::{
    dataplane::{DataPlane, Settings},
    state::{Shared, Source, State},
};
use crate::{
    Error,
    cgroup::Hierarchy,
    ebpf::{Kite, Options},
};

/// Whether to follow pod metadata through the Kubernetes API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KubeMode {
    /// When running in a cluster (`KUBERNETES_SERVICE_HOST` is set).
    Auto,
    /// Always (kubeconfig or in-cluster config).
    On,
    /// Never.
    Off,
}

/// Command line of `kite-agent`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "kite-agent",
    version,
    about = "Kite's node agent: measures HTTP/1.x traffic of pods and cgroups with eBPF and serves it over gRPC and Prometheus"
)]
pub struct Config {
    /// gRPC listen address (kite.v1, health, reflection). In a cluster: the pod IP.
    #[arg(long, env = "KITE_GRPC_ADDR", default_value = "127.0.0.1:7777")]
    pub grpc_addr: SocketAddr,
    /// Prometheus listen address (/metrics, /healthz, /readyz).
    #[arg(long, env = "KITE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Unix socket where pods' init containers say hello.
    #[arg(long, env = "KITE_SOCKET", default_value = "/var/run/kite/kite.sock")]
    pub socket: PathBuf,
    /// cgroup to measure from the start (repeatable): a path relative to the cgroup2 mount or
    /// an absolute path under it. For use without Kubernetes.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,
    /// How often the kernel maps are read (one window of the statistics).
    #[arg(long, env = "KITE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Node name reported with every endpoint (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Enter the cgroup namespace of PID 1 first, so cgroup paths read from /proc are the
    /// host's (set in the DaemonSet, which runs with hostPID).
    #[arg(long)]
    pub host_cgroupns: bool,
    /// Follow pod metadata (labels, owners) through the Kubernetes API.
    #[arg(long, value_enum, env = "KITE_KUBE", default_value = "auto")]
    pub kube: KubeMode,
    /// Intervals of history kept per endpoint (for sparklines).
    #[arg(long, default_value_t = crate::stats::DEFAULT_HISTORY)]
    pub history: usize,
    /// How long the series of a pod that went away stay visible.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub gone_grace: Duration,
    /// Where enrolled pods are remembered across restarts.
    #[arg(long, env = "KITE_STATE_DIR", default_value = "/var/run/kite")]
    pub state_dir: PathBuf,
    /// Most connections tracked at once.
    #[arg(long, default_value_t = Options::default().max_sockets)]
    pub max_sockets: u32,
    /// Most (cgroup, endpoint, method, status) histograms.
    #[arg(long, default_value_t = Options::default().max_endpoints)]
    pub max_endpoints: u32,
}

impl Config {
    fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        })
    }
}

/// Enters PID 1's cgroup namespace (see [`Config::host_cgroupns`]).
pub fn enter_host_cgroupns() -> Result<(), Error> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open("/proc/1/ns/cgroup").map_err(|e| Error::Io {
        what: "opening /proc/1/ns/cgroup (is the agent running with hostPID?)".into(),
        source: e,
    })?;
    // SAFETY: plain syscall with a valid fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWCGROUP) } != 0 {
        return Err(Error::Io {
            what: "entering the host's cgroup namespace".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[derive(Clone)]
struct Health {
    shared: Shared,
    interval: Duration,
}

async fn healthz(AxState(h): AxState<Health>) -> impl IntoResponse {
    let st = h.shared.read();
    let since = st.polled_at.elapsed().unwrap_or_default();
    if st.generation > 0 && since > h.interval * 5 + Duration::from_secs(5) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no poll for {since:?}\n"),
        )
    } else {
        (StatusCode::OK, "ok\n".to_string())
    }
}

async fn readyz(AxState(h): AxState<Health>) -> impl IntoResponse {
    if h.shared.read().generation > 0 {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics_handler(
    AxState(reg): AxState<Arc<prometheus_client::registry::Registry>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = metrics::Format::from_accept(accept);
    match metrics::render(&reg, format) {
        Ok(body) => {
            if body.len() > 1 << 20 {
                // Thousands of endpoints render to tens of megabytes; give the pages back once
                // the answer is on its way rather than keep them as the process's high-water
                // mark.
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    // SAFETY: plain glibc call.
                    unsafe { libc::malloc_trim(0) };
                });
            }
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, format.content_type())],
                body,
            )
                .into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

fn bind_error(what: &str, addr: &SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    let what = format!("listening for {what} on {addr}");
    move |source| Error::Io { what, source }
}

/// Runs the agent until `shutdown` is cancelled, then detaches everything.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    if config.host_cgroupns {
        enter_host_cgroupns()?;
    }
    let hierarchy = Hierarchy::discover()?;
    let options = Options {
        max_sockets: config.max_sockets,
        max_endpoints: config.max_endpoints,
    };
    // Resolve every static cgroup before loading anything: a typo is reported at once.
    let statics = config
        .cgroups
        .iter()
        .map(|p| hierarchy.cgroup(p))
        .collect::<Result<Vec<_>, _>>()?;
    let kite = Kite::load(options)?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(bind_error("gRPC", &config.grpc_addr))?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(bind_error("Prometheus", &config.metrics_addr))?;
    let node = config.node();
    let shared = Shared::new(State::new(
        node.clone(),
        config.interval,
        config.history,
        options,
    ));
    let (notify_tx, notify_rx) = watch::channel(0u64);
    let (dataplane, dp_thread) = DataPlane::spawn(
        kite,
        shared.clone(),
        notify_tx,
        Settings {
            interval: config.interval,
            gone_grace: config.gone_grace,
            hierarchy: hierarchy.clone(),
        },
        shutdown.clone(),
    );
    for cg in statics {
        let r = dataplane.attach(cg.clone(), Source::Static, None).await?;
        info!(cgroup = %cg.path, id = cg.id, "attached: {r:?}");
    }
    let enroller = enroll::Enroller::new(
        hierarchy.clone(),
        dataplane.clone(),
        shared.clone(),
        config.state_dir.join("enrolled.json"),
    );
    enroller.restore().await;

    // gRPC: kite.v1, health, reflection.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<KiteServer<grpc::KiteService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kite_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Serve {
            what: "building gRPC reflection".into(),
            source: Box::new(e),
        })?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kite_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Serve {
            what: "building gRPC reflection".into(),
            source: Box::new(e),
        })?;
    let svc = grpc::KiteService::new(shared.clone(), notify_rx);
    let grpc_shutdown = shutdown.clone();
    let grpc_addr = grpc_listener.local_addr().ok();
    let grpc = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(KiteServer::new(svc))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                grpc_shutdown.cancelled_owned(),
            )
            .await
    });

    // Prometheus and probes.
    let registry = Arc::new(metrics::KiteCollector::registry(shared.clone()));
    let health = Health {
        shared: shared.clone(),
        interval: config.interval,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler).with_state(registry))
        .route("/healthz", get(healthz).with_state(health.clone()))
        .route("/readyz", get(readyz).with_state(health));
    let metrics_shutdown = shutdown.clone();
    let metrics_addr = metrics_listener.local_addr().ok();
    let http = tokio::spawn(async move {
        axum::serve(metrics_listener, app)
            .with_graceful_shutdown(metrics_shutdown.cancelled_owned())
            .await
    });

    // Enrollment socket.
    let enroll_task = {
        let socket = config.socket.clone();
        let shutdown = shutdown.clone();
        let enroller = enroller.clone();
        tokio::spawn(async move { enroller.serve(&socket, shutdown).await })
    };

    // Kubernetes metadata.
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let kube_task = match config.kube {
        KubeMode::On => Some(kube::spawn(shared.clone(), node.clone(), shutdown.clone())),
        KubeMode::Auto if in_cluster => {
            Some(kube::spawn(shared.clone(), node.clone(), shutdown.clone()))
        }
        _ => None,
    };

    info!(
        node = %node,
        grpc = ?grpc_addr,
        metrics = ?metrics_addr,
        socket = %config.socket.display(),
        "kite-agent running"
    );
    shutdown.cancelled().await;
    info!("shutting down");
    type Boxed = Box<dyn std::error::Error + Send + Sync>;
    let grpc: Result<Result<(), Boxed>, _> = grpc.await.map(|r| r.map_err(Boxed::from));
    let http: Result<Result<(), Boxed>, _> = http.await.map(|r| r.map_err(Boxed::from));
    for (what, r) in [("gRPC", grpc), ("HTTP", http)] {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("{what} server: {e}"),
            Err(e) => warn!("{what} server task: {e}"),
        }
    }
    let _ = enroll_task.await;
    if let Some(t) = kube_task {
        let _ = t.await;
    }
    let _ = tokio::task::spawn_blocking(move || dp_thread.join()).await;
    remove_socket(&config.socket);
    Ok(())
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!("removing {}: {e}", path.display());
    }
}
