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
