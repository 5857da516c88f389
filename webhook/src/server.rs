//! The HTTPS endpoint: `POST /mutate`, `POST /mutate/namespace`, `GET /healthz`, `GET /metrics`.
//!
//! TLS is rustls; the certificate and key are read from PEM files and read again when they
//! change (a renewed Secret shows up in the mounted volume without a restart).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::inject::{Injector, Scope};

/// Largest review accepted. etcd refuses requests above 1.5 MiB by default, so no Pod a
/// cluster stores is larger, and a CREATE review carries one object; twice that leaves room
/// for the envelope and for clusters with a raised etcd limit. Larger ones get a 413 before
/// their body is read (the pod is then admitted unchanged: `failurePolicy: Ignore`).
pub const MAX_BODY: usize = 3 << 20;
/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Bounds of the server whatever its clients do, sized for its 64 MiB memory limit. A review
/// costs about 14 times its body while it is decided (the body, the JSON tree of the object,
/// its copy and the typed Pod; measured with an object made of small env entries, the worst
/// case per byte), so the bodies being decided at once are limited in bytes
/// (`review_budget`, a [`MAX_BODY`] by default: ≈ 42 MiB of work) as well as in number; the
/// others wait, holding only their connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Reviews read and decided at once.
    pub max_reviews: usize,
    /// Bytes of review bodies read and decided at once.
    pub review_budget: usize,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// A connection with no request in progress for this long is closed (HTTP/1 and HTTP/2).
    pub idle: Duration,
    /// HTTP/1: a request's headers must arrive within this long.
    pub header_read: Duration,
    /// A request's body must arrive within this long (else 408).
    pub body_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_reviews: 16,
            review_budget: MAX_BODY,
            max_connections: 256,
            idle: Duration::from_secs(30),
            header_read: Duration::from_secs(5),
            body_read: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
struct Shared {
    injector: Arc<Injector>,
    reviews: Arc<Semaphore>,
    /// Permits are KiB of review body.
    budget: Arc<Semaphore>,
    budget_kib: u32,
    body_read: Duration,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A certificate or key file is missing or unreadable.
    #[error("reading {path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the key or configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Path of the per-pod opt-in ([`Scope::Pod`]).
pub const POD_PATH: &str = "/mutate";
/// Path of the per-namespace opt-in ([`Scope::Namespace`]).
pub const NAMESPACE_PATH: &str = "/mutate/namespace";
/// Liveness and readiness.
pub const HEALTH_PATH: &str = "/healthz";
/// Prometheus text exposition (the serving certificate's expiry).
pub const METRICS_PATH: &str = "/metrics";
/// The gauge of the serving certificate's `notAfter`: `failurePolicy: Ignore` turns an expired
/// certificate into pods silently started without injection, so this is what to alert on.
pub const EXPIRY_METRIC: &str = "kite_webhook_certificate_expiry_timestamp_seconds";

/// The HTTP routes, without TLS (tests and other servers can mount them).
pub fn router(injector: Arc<Injector>, limits: Limits) -> Router {
    let shared = Shared {
        injector,
        reviews: Arc::new(Semaphore::new(limits.max_reviews.max(1))),
        budget: Arc::new(Semaphore::new((limits.review_budget / 1024).max(64))),
        budget_kib: (limits.review_budget / 1024).max(64) as u32,
        body_read: limits.body_read,
    };
    Router::new()
        .route(POD_PATH, post(mutate_pod))
        .route(NAMESPACE_PATH, post(mutate_namespace))
        .route(HEALTH_PATH, get(|| async { "ok\n" }))
        .with_state(shared)
}

async fn mutate_pod(State(s): State<Shared>, req: Request) -> Response {
    mutate(&s, req, Scope::Pod).await
}

async fn mutate_namespace(State(s): State<Shared>, req: Request) -> Response {
    mutate(&s, req, Scope::Namespace).await
}

async fn mutate(s: &Shared, req: Request, scope: Scope) -> Response {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if length.is_some_and(|n| n > MAX_BODY) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a review is at most {MAX_BODY} bytes\n"),
        )
            .into_response();
    }
    // The body is read only with a slot and its share of the budget: waiting reviews cost
    // their connection, not their body. Without a length, the largest share.
    let Ok(_slot) = s.reviews.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let kib = (length.unwrap_or(MAX_BODY) / 1024 + 1).min(s.budget_kib as usize) as u32;
    let Ok(_share) = s.budget.acquire_many(kib).await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let body =
        match tokio::time::timeout(s.body_read, axum::body::to_bytes(req.into_body(), MAX_BODY))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a review is at most {MAX_BODY} bytes\n"),
                )
                    .into_response();
            }
            Err(_) => {
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the review did not arrive within {:?}\n", s.body_read),
                )
                    .into_response();
            }
        };
    let large = body.len() > 256 << 10;
    let answer = s.injector.review(&body, scope);
    drop(body);
    if large {
        // The parse's pages go back to the system, not to the next review's high-water mark.
        // SAFETY: plain glibc call.
        unsafe { libc::malloc_trim(0) };
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_REQUEST);
    let json = answer.to_json();
    (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// Requests in progress on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| *self.last.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
    }
}

/// A certificate read from files, read again when they change.
#[derive(Debug)]
pub struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    modified: Option<SystemTime>,
    /// The leaf certificate's notAfter, seconds since the epoch.
    not_after: i64,
}

impl FileCert {
    /// Reads `cert` (PEM chain) and `key` (PEM private key).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, ServerError> {
        let (ck, not_after) = read_pair(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.into(),
            key: key.into(),
            current: RwLock::new(Current {
                key: Arc::new(ck),
                modified: modified(cert, key),
                not_after,
            }),
        }))
    }

    /// Reads the files again if they changed; keeps the old pair if the new one is bad.
    pub fn reload_if_changed(&self) {
        let stamp = modified(&self.cert, &self.key);
        if self
            .current
            .read()
            .map(|c| c.modified == stamp)
            .unwrap_or(true)
        {
            return;
        }
        match read_pair(&self.cert, &self.key) {
            Ok((ck, not_after)) => {
                info!(cert = %self.cert.display(), not_after, "serving certificate reloaded");
                if let Ok(mut c) = self.current.write() {
                    *c = Current {
                        key: Arc::new(ck),
                        modified: stamp,
                        not_after,
                    };
                }
            }
            Err(e) => warn!("keeping the current certificate: {e}"),
        }
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

impl FileCert {
    /// The served certificate's notAfter, seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.current
            .read()
            .map(|c| c.not_after)
            .unwrap_or_else(|e| e.into_inner().not_after)
    }

    /// The Prometheus text exposition of the certificate's expiry.
    pub fn exposition(&self) -> String {
        format!(
            "# HELP {EXPIRY_METRIC} When the serving certificate expires (its notAfter), in \
             seconds since the Unix epoch.\n# TYPE {EXPIRY_METRIC} gauge\n{EXPIRY_METRIC} {}\n",
            self.not_after()
        )
    }
}

fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

fn read_pair(cert: &Path, key: &Path) -> Result<(CertifiedKey, i64), ServerError> {
    let pem_err = |p: &Path, reason: String| ServerError::Pem {
        path: p.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(cert, "no certificate in the file".into()));
    }
    let not_after = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| pem_err(cert, format!("the first certificate does not parse: {e}")))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)?;
    Ok((CertifiedKey::new(certs, signer), not_after))
}

/// The rustls configuration serving `cert`, with HTTP/2 and HTTP/1.1.
pub fn tls_config(cert: Arc<FileCert>) -> Result<Arc<ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until `shutdown`, reloading `cert` as it changes.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<FileCert>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(cert.clone())?);
    let router = {
        let cert = cert.clone();
        router.route(
            METRICS_PATH,
            get(move || {
                let text = cert.exposition();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
    };
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "kite-webhook listening (TLS)");
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = reload.tick() => { cert.reload_if_changed(); continue; }
            conn = listener.accept() => match conn {
                Ok(c) => c,
                Err(e) => {
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "{} connections open: closing a new one", limits.max_connections);
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, "TLS handshake: {e}"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let activity = Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                last: std::sync::Mutex::new(tokio::time::Instant::now()),
            });
            let act = activity.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let router = router.clone();
                let act = act.clone();
                act.in_flight.fetch_add(1, Ordering::AcqRel);
                async move {
                    let r = router.oneshot(req.map(axum::body::Body::new)).await;
                    act.touch();
                    act.in_flight.fetch_sub(1, Ordering::AcqRel);
                    r
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read);
            builder.http2().timer(TokioTimer::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            loop {
                let idle_until = activity
                    .idle_since()
                    .map(|t| t + limits.idle)
                    .unwrap_or_else(|| tokio::time::Instant::now() + limits.idle);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r { debug!(%peer, "connection: {e}") }
                        return;
                    }
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(idle_until) => {
                        if activity.idle_since().is_some_and(|t| t.elapsed() >= limits.idle) {
                            debug!(%peer, "closing a connection idle for {:?}", limits.idle);
                            return;
                        }
                    }
                }
            }
        });
    }
}
