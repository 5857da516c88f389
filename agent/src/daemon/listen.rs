//! Bounds on the agent's TCP listeners (gRPC and Prometheus), whatever clients do: a cap on
//! open connections, an idle deadline and, for HTTP/1, a header-read deadline.
//!
//! The idle deadline counts only what the agent *writes*: a connection the agent has written
//! nothing to for [`Limits::idle`] is closed. That one rule closes idle connections, slowloris
//! clients (they trickle a request the agent never answers) and clients that stopped reading
//! (their writes cannot progress), while a Watch stream or a large scrape that is being read
//! stays open.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tracing::{debug, warn};

use super::state::Guards;

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most connections open at once; more are closed at once (counted).
    pub max_connections: usize,
    /// A connection the agent wrote nothing to for this long is closed.
    pub idle: Duration,
    /// HTTP/1 only: a request's headers must arrive within this long.
    pub header_read: Duration,
}

/// What the limits did, per listener (exported as `kite_listener_events`).
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed at once because [`Limits::max_connections`] were open.
    pub refused: AtomicU64,
    /// Connections closed after [`Limits::idle`] without the agent writing anything.
    pub idle_closed: AtomicU64,
    /// HTTP/1 connections closed because a request's headers took longer than
    /// [`Limits::header_read`].
    pub header_timeouts: AtomicU64,
}

impl ListenerCounters {
    /// (event name, value) pairs.
    pub fn values(&self) -> [(&'static str, u64); 4] {
        [
            ("accepted", self.accepted.load(Ordering::Relaxed)),
            ("refused", self.refused.load(Ordering::Relaxed)),
            ("idle_closed", self.idle_closed.load(Ordering::Relaxed)),
            (
                "header_timeout",
                self.header_timeouts.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// Where a listener counts (its part of the shared [`Guards`]).
#[derive(Clone)]
pub struct Counters {
    guards: Arc<Guards>,
    pick: fn(&Guards) -> &ListenerCounters,
}

impl Counters {
    /// The listener's counters picked out of `guards`.
    pub fn new(guards: Arc<Guards>, pick: fn(&Guards) -> &ListenerCounters) -> Self {
        Self { guards, pick }
    }

    fn get(&self) -> &ListenerCounters {
        (self.pick)(&self.guards)
    }
}

/// A connection under an idle deadline, holding its slot of the connection cap.
pub struct TimedIo {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    expired: bool,
    counters: Counters,
    _permit: OwnedSemaphorePermit,
}

impl TimedIo {
    fn new(
        inner: TcpStream,
        idle: Duration,
        counters: Counters,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            expired: false,
            counters,
            _permit: permit,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.peer_addr().ok()
    }

    /// Fails once the deadline has passed (and registers the waker for it otherwise).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.expired || self.deadline.as_mut().poll(cx).is_ready() {
            if !self.expired {
                self.expired = true;
                self.counters
                    .get()
                    .idle_closed
                    .fetch_add(1, Ordering::Relaxed);
                debug!(peer = ?self.peer_addr(), "closing a connection idle for {:?}", self.idle);
            }
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "nothing written to the connection within the idle deadline",
            ));
        }
        Ok(())
    }

    fn wrote(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            self.wrote();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            self.wrote();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for TimedIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepts connections within the limits: beyond [`Limits::max_connections`] open ones, a new
/// connection is closed at once.
pub struct Acceptor {
    listener: TcpListener,
    limits: Limits,
    slots: Arc<Semaphore>,
    counters: Counters,
    what: &'static str,
}

impl Acceptor {
    /// Wraps a bound listener.
    pub fn new(
        listener: TcpListener,
        limits: Limits,
        counters: Counters,
        what: &'static str,
    ) -> Self {
        Self {
            listener,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            counters,
            what,
        }
    }

    /// The next connection within the limits.
    pub async fn accept(&self) -> TimedIo {
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: wait rather than spin.
                    warn!("accepting {} connections: {e}", self.what);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            self.counters.get().accepted.fetch_add(1, Ordering::Relaxed);
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    return TimedIo::new(stream, self.limits.idle, self.counters.clone(), permit);
                }
                Err(_) => {
                    self.counters.get().refused.fetch_add(1, Ordering::Relaxed);
                    debug!(
                        "{} connection refused: {} already open",
                        self.what, self.limits.max_connections
                    );
                    drop(stream);
                }
            }
        }
    }

    /// The connections as a stream (for tonic's `serve_with_incoming_shutdown`).
    pub fn into_stream(self) -> impl Stream<Item = io::Result<TimedIo>> + Send + 'static {
        futures_util::stream::unfold(self, |a| async move {
            let io = a.accept().await;
            Some((Ok(io), a))
        })
    }
}

/// Serves an axum app over HTTP/1 on `acceptor` until `shutdown`, then lets open requests
/// finish (the caller bounds how long it waits).
pub async fn serve_http(
    acceptor: Acceptor,
    app: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        server::graceful::GracefulShutdown,
        service::TowerToHyperService,
    };
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(acceptor.limits.header_read);
    loop {
        let io = tokio::select! {
            _ = shutdown.cancelled() => break,
            io = acceptor.accept() => io,
        };
        let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        let counters = acceptor.counters.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    counters
                        .get()
                        .header_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                }
                debug!("HTTP connection: {e}");
            }
        });
    }
    drop(acceptor);
    graceful.shutdown().await;
}

/// gRPC over TLS with client certificates (off unless all three files are given): the way to
/// reach an agent's gRPC from elsewhere than its own network namespace without giving every
/// pod of the cluster every node's traffic metadata. `kite-webhook grpc-certs` makes the CA,
/// the agent's pair and a client pair.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GrpcTls {
    /// gRPC serving certificate (PEM chain); with --grpc-tls-key and --grpc-client-ca, gRPC
    /// is TLS only and every client must present a certificate signed by that CA.
    #[arg(
        long,
        env = "KITE_GRPC_TLS_CERT",
        value_name = "PEM",
        requires_all = ["grpc_tls_key", "grpc_client_ca"]
    )]
    pub grpc_tls_cert: Option<std::path::PathBuf>,
    /// Private key of --grpc-tls-cert (PEM).
    #[arg(
        long,
        env = "KITE_GRPC_TLS_KEY",
        value_name = "PEM",
        requires = "grpc_tls_cert"
    )]
    pub grpc_tls_key: Option<std::path::PathBuf>,
    /// CA whose client certificates gRPC accepts (PEM); clients without one are refused in
    /// the handshake.
    #[arg(
        long,
        env = "KITE_GRPC_CLIENT_CA",
        value_name = "PEM",
        requires = "grpc_tls_cert"
    )]
    pub grpc_client_ca: Option<std::path::PathBuf>,
}

/// Handshakes in progress at once; each has [`HANDSHAKE_TIMEOUT`].
const MAX_HANDSHAKES: usize = 64;
/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl GrpcTls {
    /// The rustls configuration, or `None` when TLS is off. Errors name the file.
    pub fn server_config(&self) -> io::Result<Option<Arc<rustls::ServerConfig>>> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let (Some(cert), Some(key), Some(ca)) = (
            &self.grpc_tls_cert,
            &self.grpc_tls_key,
            &self.grpc_client_ca,
        ) else {
            return Ok(None);
        };
        let bad = |path: &std::path::Path, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reading {}: {e}", path.display()),
            )
        };
        let certs = |path: &std::path::Path| -> io::Result<Vec<CertificateDer<'static>>> {
            let v = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(path, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(path, &e))?;
            if v.is_empty() {
                return Err(bad(path, &"no certificate in the file"));
            }
            Ok(v)
        };
        let chain = certs(cert)?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(ca)? {
            roots.add(c).map_err(|e| bad(ca, &e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad(ca, &e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(cert, &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key_der)
            .map_err(|e| bad(key, &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

/// A gRPC connection: plaintext, or TLS when [`GrpcTls`] is on.
pub enum GrpcIo {
    /// Plaintext.
    Plain(TimedIo),
    /// TLS, the client's certificate verified.
    Tls(Box<tokio_rustls::server::TlsStream<TimedIo>>),
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            GrpcIo::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GrpcIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            GrpcIo::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(io) => Pin::new(io).poll_flush(cx),
            GrpcIo::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            GrpcIo::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for GrpcIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            GrpcIo::Plain(io) => io.connect_info(),
            GrpcIo::Tls(io) => io.get_ref().0.connect_info(),
        }
    }
}

impl Acceptor {
    /// The gRPC connections as a stream: plaintext, or TLS handshakes done at most
    /// [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]; a failed handshake (no
    /// client certificate, one of another CA, a stalled client) closes that connection only.
    pub fn into_grpc_stream(
        self,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::pin::Pin<Box<dyn Stream<Item = io::Result<GrpcIo>> + Send + 'static>> {
        use futures_util::StreamExt as _;
        let Some(tls) = tls else {
            return Box::pin(self.into_stream().map(|io| io.map(GrpcIo::Plain)));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        Box::pin(
            self.into_stream()
                .map(move |io| {
                    let acceptor = acceptor.clone();
                    async move {
                        let io = io.ok()?;
                        let peer = io.peer_addr();
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(tls)) => Some(GrpcIo::Tls(Box::new(tls))),
                            Ok(Err(e)) => {
                                debug!(?peer, "gRPC TLS handshake refused: {e}");
                                None
                            }
                            Err(_) => {
                                debug!(?peer, "gRPC TLS handshake timed out");
                                None
                            }
                        }
                    }
                })
                .buffer_unordered(MAX_HANDSHAKES)
                .filter_map(|io| async move { io.map(Ok) }),
        )
    }
}
