//! The HTTPS endpoint: `POST /mutate`, `POST /mutate/namespace`, `GET /healthz`.
//!
//! TLS is rustls; the certificate and key are read from PEM files and read again when they
//! change (a renewed Secret shows up in the mounted volume without a restart).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::inject::{Injector, Scope};

/// Largest review accepted (the API server's own object limit is 3 MiB; a review may carry two).
const MAX_BODY: usize = 8 << 20;
/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

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

/// The HTTP routes, without TLS (tests and other servers can mount them).
pub fn router(injector: Arc<Injector>) -> Router {
    Router::new()
        .route(POD_PATH, post(mutate_pod))
        .route(NAMESPACE_PATH, post(mutate_namespace))
        .route(HEALTH_PATH, get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(injector)
}

async fn mutate_pod(State(i): State<Arc<Injector>>, body: Bytes) -> Response {
    mutate(&i, &body, Scope::Pod)
}

async fn mutate_namespace(State(i): State<Arc<Injector>>, body: Bytes) -> Response {
    mutate(&i, &body, Scope::Namespace)
}

fn mutate(injector: &Injector, body: &[u8], scope: Scope) -> Response {
    let answer = injector.review(body, scope);
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_REQUEST);
    let json = answer.to_json();
    (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// A certificate read from files, read again when they change.
#[derive(Debug)]
pub struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl FileCert {
    /// Reads `cert` (PEM chain) and `key` (PEM private key).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, ServerError> {
        let ck = read_pair(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.into(),
            key: key.into(),
            current: RwLock::new((Arc::new(ck), modified(cert, key))),
        }))
    }

    /// Reads the files again if they changed; keeps the old pair if the new one is bad.
    pub fn reload_if_changed(&self) {
        let stamp = modified(&self.cert, &self.key);
        if self.current.read().map(|c| c.1 == stamp).unwrap_or(true) {
            return;
        }
        match read_pair(&self.cert, &self.key) {
            Ok(ck) => {
                info!(cert = %self.cert.display(), "serving certificate reloaded");
                if let Ok(mut c) = self.current.write() {
                    *c = (Arc::new(ck), stamp);
                }
            }
            Err(e) => warn!("keeping the current certificate: {e}"),
        }
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, ServerError> {
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
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)?;
    Ok(CertifiedKey::new(certs, signer))
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
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(cert.clone())?);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "kite-webhook listening (TLS)");
    }
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
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, "TLS handshake: {e}"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%peer, "connection: {e}") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
