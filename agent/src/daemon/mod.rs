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
pub mod flags;
pub mod grpc;
pub mod kube;
pub mod listen;
pub mod metrics;
pub mod state;
pub mod statics;

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
    state::{Shared, State},
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

/// What to do with a `--cgroup` missing at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MissingCgroup {
    /// Wait for it; it is attached when it appears.
    Wait,
    /// Refuse to start.
    Fail,
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
    /// gRPC over TLS with client certificates (off by default).
    #[command(flatten)]
    pub grpc_tls: listen::GrpcTls,
    /// Prometheus listen address (/metrics, /healthz, /readyz).
    #[arg(long, env = "KITE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Unix socket where pods' init containers say hello.
    #[arg(long, env = "KITE_SOCKET", default_value = "/var/run/kite/kite.sock")]
    pub socket: PathBuf,
    /// Without the Kubernetes API, a peer with this uid may enroll (repeatable; root always
    /// may). With the API, any peer may ask: the API says which pods run on this node.
    #[arg(long = "enroll-uid", value_name = "UID")]
    pub enroll_uids: Vec<u32>,
    /// Without the Kubernetes API, a peer with this primary or supplementary gid may enroll
    /// (repeatable).
    #[arg(long = "enroll-gid", value_name = "GID")]
    pub enroll_gids: Vec<u32>,
    /// Make the socket mode 0660 with this group (default: 0666, every local process may ask).
    #[arg(long, value_name = "GID")]
    pub socket_group: Option<u32>,
    /// cgroup to measure from the start (repeatable): a path relative to the cgroup2 mount or
    /// an absolute path under it. For use without Kubernetes.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,
    /// Probe OpenSSL for TLS plaintext (measures HTTPS). Off by default: the uprobes cost every
    /// caller of a probed libssl a trap per call, up to a tenfold slowdown of an HTTPS server on
    /// a nested VM (see DESIGN.md, TLS: cost).
    #[arg(long, env = "KITE_TLS")]
    pub tls: bool,
    /// How often the kernel maps are read (one window of the statistics); 100ms to 10m.
    #[arg(long, env = "KITE_INTERVAL", default_value = "1s", value_parser = flags::interval)]
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
    /// Intervals of history kept per endpoint (for sparklines); 1 to 60.
    #[arg(long, default_value_t = crate::stats::DEFAULT_HISTORY, value_parser = flags::history)]
    pub history: usize,
    /// How long the series of a pod that went away stay visible; 0s to 1day.
    #[arg(long, default_value = "2m", value_parser = flags::gone_grace)]
    pub gone_grace: Duration,
    /// Endpoints without a request for this long are evicted when their cgroup holds its
    /// whole --endpoint-budget in that direction (its budget comes back); 1s to 30days, or 0:
    /// never.
    #[arg(long, default_value = "10m", value_parser = flags::endpoint_idle)]
    pub endpoint_idle: Duration,
    /// Where enrolled pods are remembered across restarts.
    #[arg(long, env = "KITE_STATE_DIR", default_value = "/var/run/kite")]
    pub state_dir: PathBuf,
    /// Most connections tracked at once; 1 to 16777216.
    #[arg(long, default_value_t = Options::default().max_sockets, value_parser = flags::max_sockets)]
    pub max_sockets: u32,
    /// What to do with a `--cgroup` that does not exist at start: wait for it (attached when it
    /// appears) or refuse to start.
    #[arg(long, value_enum, default_value = "wait")]
    pub missing_cgroup: MissingCgroup,
    /// Most (cgroup, endpoint, method, status) histograms; 16 to 262144.
    #[arg(long, default_value_t = Options::default().max_endpoints, value_parser = flags::max_endpoints)]
    pub max_endpoints: u32,
    /// Most distinct endpoint histograms one cgroup may hold in one direction (requests beyond
    /// are shown as one `_OTHER` endpoint), at most --max-endpoints; 0: an eighth of
    /// --max-endpoints, none below 2048.
    #[arg(long, default_value_t = 0, value_parser = flags::endpoint_budget)]
    pub endpoint_budget: u32,
    /// Per-route figures for HTTP/1 (`/orders/*`: the path with identifier-like segments as
    /// `*`, at most 64 routes per endpoint, the rest `_OTHER`): `on` or `off`.
    #[arg(long, env = "KITE_ROUTES", default_value = "on", value_parser = flags::on_off, action = clap::ArgAction::Set)]
    pub routes: bool,
    /// A route pattern (`/api/orders/{id}`; `{name}` one segment, a last `**` the rest),
    /// repeatable, at most 64: routes that match are shown under it (Prometheus `http_route`),
    /// the first that matches wins.
    #[arg(long = "route", value_name = "PATTERN", value_parser = flags::route_pattern)]
    pub route_patterns: Vec<crate::route_pattern::RoutePattern>,
    /// Most label sets the http_* Prometheus families export (server and client together);
    /// label sets beyond, in the order they appear, are folded into one series per family
    /// labelled `otel_metric_overflow="true"` and counted in `kite_series_overflow_total`;
    /// 1 to 262144.
    #[arg(long, default_value_t = metrics::DEFAULT_MAX_SERIES, value_parser = flags::max_series)]
    pub max_series: usize,
    /// Most Watch streams open at once (1 to 1024); more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 8, value_parser = flags::max_watch_streams)]
    pub max_watch_streams: usize,
    /// Most /metrics expositions alive at once (the newest and those slow scrapers are still
    /// reading), 1 to 64; beyond it scrapers get the newest one even if a poll old.
    #[arg(long, default_value_t = 2, value_parser = flags::max_scrapes)]
    pub max_scrapes: usize,
    /// Most connections open at once on each of the gRPC and Prometheus listeners; 1 to 65536.
    #[arg(long, default_value_t = 256, value_parser = flags::max_connections)]
    pub max_connections: usize,
    /// A gRPC or Prometheus connection the agent wrote nothing to for this long is closed
    /// (idle clients, slowloris, clients that stopped reading); 1s to 1h.
    #[arg(long, default_value = "30s", value_parser = flags::idle_timeout)]
    pub idle_timeout: Duration,
    /// An HTTP request's headers (Prometheus listener) must arrive within this long; 100ms to
    /// 10m.
    #[arg(long, default_value = "5s", value_parser = flags::header_timeout)]
    pub header_timeout: Duration,
    /// On SIGTERM, how long open requests may take to finish before the agent exits anyway
    /// (a second signal exits at once); 0s to 10m.
    #[arg(long, default_value = "5s", value_parser = flags::shutdown_timeout)]
    pub shutdown_timeout: Duration,
}

/// How long a scraper may take to read one answer.
const SCRAPE_SEND_DEADLINE: Duration = Duration::from_secs(30);

/// Per-item sizes of the worst-case memory formula ([`Config::worst_case_memory`]), bytes.
/// Measured (docs/benchmarks.md, `hostile` kernel tests) and rounded up.
pub mod sizes {
    /// The process with nothing measured (runtime, loaded programs' user-space side).
    pub const BASE: u64 = 16 << 20;
    /// State of one kernel endpoint entry (totals, last interval, 60-point history, paths).
    pub const STATE_PER_ENDPOINT: u64 = 3 * 1024;
    /// `/metrics` text of one exported label set (a histogram of 21 buckets plus byte
    /// counters: 5.8 KB measured with a cgroup label, 10.2 KB with typical Kubernetes names).
    pub const EXPOSITION_PER_SERIES: u64 = 11 * 1024;
    /// The label sets and aggregates built for one endpoint entry while an exposition is
    /// encoded (one encoding at a time), before the series cap folds them.
    pub const ENCODING_PER_ENDPOINT: u64 = 2 * 1024;
    /// One endpoint in one Watch snapshot with histograms and history (0.2 KB encoded
    /// measured with sparse histograms; the in-memory message is a few times that).
    pub const SNAPSHOT_PER_ENDPOINT: u64 = 1024;
    /// One gRPC or Prometheus connection at most (HTTP/2 windows and buffers).
    pub const PER_CONNECTION: u64 = 64 * 1024;
    /// One enrollment connection (a task and a 4 KiB hello buffer).
    pub const PER_ENROLLMENT: u64 = 8 * 1024;
    /// Enrollment connections at once.
    pub const ENROLLMENTS: u64 = 1024;
}

impl Config {
    /// The most memory this configuration can take whatever clients do, bytes:
    ///
    /// ```text
    /// BASE + E × (STATE + ENCODING + SNAPSHOT × 2W) + EXPOSITION × (min(E, M) + 4) × (S + 3)
    ///      + 2C × PER_CONNECTION + 1024 × PER_ENROLLMENT
    /// ```
    ///
    /// E `--max-endpoints` plus the overflow endpoints' map (`DEFAULT_MAX_OVERFLOW`), M
    /// `--max-series` (label sets exported, plus an overflow series per histogram family: HTTP
    /// and gRPC, server and client), S
    /// `--max-scrapes` (expositions alive, plus one per format of the three when none of it is
    /// cached), W `--max-watch-streams` (each holds one snapshot being built and one in its
    /// HTTP/2 buffer), C `--max-connections` (gRPC and Prometheus each). The DaemonSet's memory
    /// limit is checked against it (webhook/tests/manifests.rs).
    pub fn worst_case_memory(&self) -> u64 {
        use sizes::*;
        let e = self.max_endpoints as u64 + kite_common::maps::DEFAULT_MAX_OVERFLOW as u64;
        let per_endpoint = STATE_PER_ENDPOINT
            + ENCODING_PER_ENDPOINT
            + SNAPSHOT_PER_ENDPOINT * 2 * self.max_watch_streams as u64;
        let series = e.min(self.max_series as u64) + 4;
        let expositions = self.max_scrapes as u64 + 3;
        BASE + e * per_endpoint
            + EXPOSITION_PER_SERIES * series * expositions
            + 2 * self.max_connections as u64 * PER_CONNECTION
            + ENROLLMENTS * PER_ENROLLMENT
    }

    /// Checks what one flag's range cannot: a sentence naming the flags otherwise.
    pub fn check(&self) -> Result<(), String> {
        flags::check_budget(self.max_endpoints, self.endpoint_budget)?;
        let max = crate::route_pattern::MAX_PATTERNS;
        if self.route_patterns.len() > max {
            return Err(format!(
                "--route was given {} times: at most {max} patterns",
                self.route_patterns.len()
            ));
        }
        Ok(())
    }

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
    AxState(x): AxState<Arc<metrics::Exposition>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    x.answer(accept).await
}

fn bind_error(what: &str, addr: &SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    let what = format!("listening for {what} on {addr}");
    move |source| Error::Io { what, source }
}

/// Runs the agent until `shutdown` is cancelled, then detaches everything.
/// `config.host_cgroupns` is the caller's to apply with [`enter_host_cgroupns`] before any
/// thread starts (kite-agent's main does): setns(2) moves only the calling thread.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Before anything else: a second agent on the same socket refuses to start.
    let claim = enroll::claim_socket(&config.socket)?;
    let hierarchy = Hierarchy::discover()?;
    let options = Options {
        max_sockets: config.max_sockets,
        max_endpoints: config.max_endpoints,
        endpoint_budget: config.endpoint_budget,
        routes: config.routes,
    };
    // With --missing-cgroup fail, a typo is reported before loading anything.
    if config.missing_cgroup == MissingCgroup::Fail {
        for p in &config.cgroups {
            hierarchy.cgroup(p)?;
        }
    }
    // Unreadable TLS files are reported before anything is loaded.
    let grpc_tls = config
        .grpc_tls
        .server_config()
        .map_err(|source| Error::Io {
            what: "setting up gRPC TLS (--grpc-tls-cert, --grpc-tls-key, --grpc-client-ca)".into(),
            source,
        })?;
    let kite = Kite::load(options)?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(bind_error("gRPC", &config.grpc_addr))?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(bind_error("Prometheus", &config.metrics_addr))?;
    let node = config.node();
    let mut state = State::new(node.clone(), config.interval, config.history, options);
    state.max_series = config.max_series;
    state
        .rpc_names
        .set_route_patterns(config.route_patterns.clone());
    let shared = Shared::new(state);
    let (notify_tx, notify_rx) = watch::channel(0u64);
    let (dataplane, dp_thread) = DataPlane::spawn(
        kite,
        shared.clone(),
        notify_tx,
        Settings {
            interval: config.interval,
            gone_grace: config.gone_grace,
            endpoint_idle: config.endpoint_idle,
            hierarchy: hierarchy.clone(),
            tls: config.tls,
        },
        shutdown.clone(),
    );
    let statics_task = statics::start(
        &config.cgroups,
        config.missing_cgroup == MissingCgroup::Fail,
        hierarchy.clone(),
        dataplane.clone(),
        shared.clone(),
        config.interval.min(Duration::from_secs(1)),
        shutdown.clone(),
    )
    .await?;
    let enroller = enroll::Enroller::new(
        enroll::Policy {
            uids: config.enroll_uids.clone(),
            gids: config.enroll_gids.clone(),
            socket_group: config.socket_group,
        },
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
    let svc = grpc::KiteService::new(
        shared.clone(),
        notify_rx,
        grpc::WatchLimits {
            max_streams: config.max_watch_streams,
            max_interval: config.idle_timeout / 2,
        },
        shutdown.clone(),
    );
    let grpc_shutdown = shutdown.clone();
    let grpc_addr = grpc_listener.local_addr().ok();
    let guards = shared.read().guards.clone();
    let limits = listen::Limits {
        max_connections: config.max_connections,
        idle: config.idle_timeout,
        header_read: config.header_timeout,
    };
    let grpc_incoming = listen::Acceptor::new(
        grpc_listener,
        limits,
        listen::Counters::new(guards.clone(), |g| &g.grpc),
        "gRPC",
    );
    let grpc = tokio::spawn(async move {
        tonic::transport::Server::builder()
            // Per connection; the Watch cap is global.
            .max_concurrent_streams(Some(32))
            .http2_max_header_list_size(Some(16 * 1024))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(KiteServer::new(svc))
            .serve_with_incoming_shutdown(
                grpc_incoming.into_grpc_stream(grpc_tls),
                grpc_shutdown.cancelled_owned(),
            )
            .await
    });

    // Prometheus and probes.
    let exposition = Arc::new(metrics::Exposition::new(
        shared.clone(),
        config.max_scrapes,
        SCRAPE_SEND_DEADLINE,
    ));
    let health = Health {
        shared: shared.clone(),
        interval: config.interval,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler).with_state(exposition))
        .route("/healthz", get(healthz).with_state(health.clone()))
        .route("/readyz", get(readyz).with_state(health));
    let metrics_shutdown = shutdown.clone();
    let metrics_addr = metrics_listener.local_addr().ok();
    let metrics_incoming = listen::Acceptor::new(
        metrics_listener,
        limits,
        listen::Counters::new(guards.clone(), |g| &g.metrics),
        "Prometheus",
    );
    let http = tokio::spawn(listen::serve_http(metrics_incoming, app, metrics_shutdown));

    // Enrollment socket.
    let claim = Arc::new(claim);
    let enroll_task = {
        let claim = claim.clone();
        let shutdown = shutdown.clone();
        let enroller = enroller.clone();
        tokio::spawn(async move {
            let r = enroller.serve(&claim, shutdown).await;
            if let Err(e) = &r {
                tracing::error!("enrollment socket: {e}");
            }
            r
        })
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
    let deadline = config.shutdown_timeout;
    info!("shutting down: open requests get {deadline:?} to finish");
    let drain = async {
        match grpc.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("gRPC server: {e}"),
            Err(e) => warn!("gRPC server task: {e}"),
        }
        if let Err(e) = http.await {
            warn!("HTTP server task: {e}");
        }
        let _ = enroll_task.await;
        let _ = statics_task.await;
        if let Some(t) = kube_task {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(deadline, drain).await.is_err() {
        warn!("requests still open after {deadline:?}: closing them");
    }
    // The data-plane thread sees the cancellation within 100 ms and detaches.
    let _ = tokio::task::spawn_blocking(move || dp_thread.join()).await;
    // Still under the claim: the socket file is this agent's.
    remove_socket(claim.socket());
    drop(claim);
    Ok(())
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!("removing {}: {e}", path.display());
    }
}
