//! Talking to agents: where they are ([`Target`]), one connection ([`connect`]), the `Watch`
//! stream of one agent with reconnects and backoff ([`follow`]), and one `List` ([`list`]).
//!
//! Each agent is followed by its own task that only sends [`Event`]s to the UI's channel, so a
//! slow or dead agent never holds up the screen or the other agents.

use std::{sync::Arc, time::Duration};

use kite_proto::{
    DEFAULT_GRPC_PORT,
    v1::{self, Detail, Filter, ListRequest, Snapshot, WatchRequest, kite_client::KiteClient},
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::{
    Error,
    app::{AgentEvent, EntryKey, Event},
    kube::PodTarget,
};

/// Largest snapshot accepted (10 000 endpoints with histograms and history are ≈ 20 MB).
pub const MAX_MESSAGE: usize = 256 << 20;
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// First and longest pause between reconnects.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));
/// A stream that brings nothing for this long (at least; more for slow windows) is dead.
pub const STALL: Duration = Duration::from_secs(10);
/// History points asked for the focused endpoint (the agent keeps 60 by default).
pub const HISTORY: u32 = 60;
/// How long a `List` for the focused endpoint may take.
pub const FOCUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Where an agent is.
#[derive(Clone, Debug)]
pub enum Target {
    /// A gRPC address (`http://host:port`).
    Addr(String),
    /// The agent pod of one node, through a port-forward of the Kubernetes API.
    Pod(Arc<PodTarget>),
}

impl Target {
    /// An address as given on the command line: `host:port`, `host` (port 7777), or
    /// `http://host:port`.
    pub fn parse(addr: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Addr {
            addr: addr.to_string(),
            reason: reason.to_string(),
        };
        let a = addr.trim();
        if a.is_empty() {
            return Err(bad("empty"));
        }
        let rest = match a.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => return Err(bad("agents speak plain gRPC (http://)")),
            Some(_) => return Err(bad("unknown scheme")),
            None => a,
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("a path is not allowed"));
        }
        // host, host:port, [v6], [v6]:port, or a bare v6 address.
        let with_port = if rest.starts_with('[') {
            if rest.ends_with(']') {
                format!("{rest}:{DEFAULT_GRPC_PORT}")
            } else {
                rest.to_string()
            }
        } else {
            match rest.matches(':').count() {
                0 => format!("{rest}:{DEFAULT_GRPC_PORT}"),
                1 => rest.to_string(),
                _ => format!("[{rest}]:{DEFAULT_GRPC_PORT}"),
            }
        };
        let (host, port) = with_port.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        port.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        Ok(Target::Addr(format!("http://{with_port}")))
    }

    /// How the UI names it.
    pub fn label(&self) -> String {
        match self {
            Target::Addr(url) => url.trim_start_matches("http://").to_string(),
            Target::Pod(p) => p.label(),
        }
    }

    /// `host:port` to probe after a failure that a Kite agent does not cause: plain
    /// addresses only (a port-forward or our own TLS would make the probe say nothing true).
    fn probe_addr(&self) -> Option<&str> {
        match self {
            Target::Addr(url) if TLS.get().is_none() => url.strip_prefix("http://"),
            _ => None,
        }
    }

    /// More about the last failure than the gRPC error says (the pod side of a port-forward).
    fn hint(&self) -> Option<String> {
        match self {
            Target::Addr(_) => None,
            Target::Pod(p) => p.take_error(),
        }
    }
}

/// TLS with a client certificate for every `--addr` (`--tls-cert`, `--tls-key`, `--ca`).
static TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// Reaches every address target over TLS, presenting `cert`, trusting only `ca`.
pub fn use_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> Result<(), Error> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let bad = |p: &std::path::Path, e: &dyn std::fmt::Display| Error::Tls {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let certs = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, Error> {
        let v = CertificateDer::pem_file_iter(p)
            .map_err(|e| bad(p, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(p, &e))?;
        if v.is_empty() {
            return Err(bad(p, &"no certificate in the file"));
        }
        Ok(v)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| bad(ca, &e))?;
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(cert, &e))?
    .with_root_certificates(roots)
    .with_client_auth_cert(certs(cert)?, key_der)
    .map_err(|e| bad(key, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let _ = TLS.set(Arc::new(config));
    Ok(())
}

/// A TLS connection to `uri`'s host and port, verified against the `--ca`.
async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    uri: tonic::codegen::http::Uri,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>
{
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(|c| c == '[' || c == ']');
    let port = uri.port_u16().unwrap_or(DEFAULT_GRPC_PORT);
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(hyper_util::rt::TokioIo::new(tls))
}

/// Connects to an agent.
pub async fn connect(target: &Target) -> Result<KiteClient<Channel>, Error> {
    let label = target.label();
    let url = match target {
        Target::Addr(url) => url.clone(),
        Target::Pod(p) => p.authority(),
    };
    let endpoint = Endpoint::from_shared(url)
        .map_err(|e| Error::Addr {
            addr: label.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = match target {
        Target::Addr(_) => match TLS.get().cloned() {
            None => endpoint.connect().await,
            Some(config) => {
                endpoint
                    .connect_with_connector(tower::service_fn(move |uri| {
                        tls_connect(config.clone(), uri)
                    }))
                    .await
            }
        },
        Target::Pod(p) => {
            let p = p.clone();
            endpoint
                .connect_with_connector(tower::service_fn(move |_| {
                    let p = p.clone();
                    async move { p.open().await.map(hyper_util::rt::TokioIo::new) }
                }))
                .await
        }
    }
    .map_err(|source| Error::Connect {
        target: label,
        source,
    })?;
    Ok(KiteClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
}

/// One `List` call (histograms included, no history), within `timeout`.
pub async fn list(target: &Target, timeout: Duration) -> Result<Snapshot, Error> {
    let label = target.label();
    let call = async {
        let mut client = connect(target).await?;
        client
            .list(ListRequest {
                filter: None,
                detail: Some(Detail {
                    histogram: true,
                    history: 0,
                }),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|status| Error::Rpc {
                target: label.clone(),
                status: Box::new(status),
            })
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(snap)) => Ok(snap),
        Ok(Err(e)) => Err(crate::probe::explain(with_hint(e, target), target.probe_addr()).await),
        Err(_) => Err(with_hint(
            Error::Timeout {
                target: label.clone(),
                timeout,
            },
            target,
        )),
    }
}

fn with_hint(e: Error, target: &Target) -> Error {
    match (target.hint(), e) {
        (Some(hint), Error::Connect { target, source }) => Error::PortForward {
            pod: target,
            reason: format!("{}: {hint}", crate::error::one_line(&source)),
        },
        (_, e) => e,
    }
}

/// Exponential backoff: `min`, doubling, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Starting at `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// The pause before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to `min` (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Why a stream stopped, in one sentence (see [`crate::probe`]), without the agent's name
/// in front (the UI shows which agent).
async fn stream_error(
    target: &Target,
    e: Error,
    explainer: &mut crate::probe::Explainer,
) -> String {
    let text = explainer
        .explain(with_hint(e, target), target.probe_addr())
        .await;
    let label = target.label();
    match text.strip_prefix(&label) {
        Some(rest) if rest.starts_with(": ") => rest[2..].to_string(),
        Some(rest) if rest.starts_with(' ') => rest[1..].to_string(),
        _ => text,
    }
}

/// Which endpoint the UI shows in detail (see `App::focus`).
pub type Focus = watch::Receiver<Option<EntryKey>>;

/// Whether the UI needs every endpoint's histogram (`App::wants_histograms`: grouped views
/// merge them); the stream is asked again with or without them when it changes.
pub type Histograms = watch::Receiver<bool>;

/// Follows agent `index` until `shutdown`: connects, forwards every snapshot of its `Watch`
/// stream to `tx`, and after a failure reports it and tries again with [`Backoff`]. Returns
/// when cancelled or when the UI is gone.
///
/// The stream's snapshots are lean (no history, no histograms: 10 000 endpoints are then
/// ≈ 4 MB a second instead of ≈ 26 MB); when `focus` names one of this agent's endpoints, its
/// history and histogram are fetched with a small `List` after every snapshot and whenever
/// the focus changes, and sent as [`AgentEvent::Focus`].
pub async fn follow(
    index: usize,
    target: Target,
    tx: mpsc::Sender<Event>,
    mut focus: Focus,
    mut histograms: Histograms,
    shutdown: CancellationToken,
) {
    let send = |e: AgentEvent| {
        let tx = tx.clone();
        async move { tx.send(Event::Agent(index, e)).await.is_ok() }
    };
    let mut backoff = Backoff::new(BACKOFF.0, BACKOFF.1);
    let mut explainer = crate::probe::Explainer::default();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if !send(AgentEvent::Connecting { attempt }).await {
            return;
        }
        let mut streamed = false;
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = watch_stream(&target, &tx, index, &mut focus, &mut histograms, &mut streamed) => r,
        };
        if streamed {
            backoff.reset();
            explainer.reset();
            attempt = 0;
        }
        let error = match result {
            Ok(()) => "the agent ended the stream".to_string(),
            Err(e) => tokio::select! {
                _ = shutdown.cancelled() => return,
                text = stream_error(&target, e, &mut explainer) => text,
            },
        };
        let delay = backoff.next_delay();
        if !send(AgentEvent::Down {
            error,
            retry_in: delay,
        })
        .await
        {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The focused endpoint with history and histogram, if it is one of agent `index`'s. Errors
/// are left to the stream to report.
async fn fetch_focus(
    client: &mut KiteClient<Channel>,
    index: usize,
    focus: &Focus,
) -> Option<v1::Endpoint> {
    let key = focus.borrow().clone().filter(|k| k.agent == index)?;
    let id = v1::EndpointId {
        ip: key.ip.clone(),
        port: key.port,
        ..Default::default()
    };
    let request = ListRequest {
        filter: Some(Filter {
            text: id.address(),
            direction: key.direction,
            ..Filter::default()
        }),
        detail: Some(Detail {
            histogram: true,
            history: HISTORY,
        }),
    };
    let snap = tokio::time::timeout(FOCUS_TIMEOUT, client.list(request))
        .await
        .ok()?
        .ok()?
        .into_inner();
    snap.endpoints.into_iter().find(|e| {
        e.id.as_ref().is_some_and(|id| {
            id.cgroup_id == key.cgroup_id
                && id.ip == key.ip
                && id.port == key.port
                && id.protocol == key.protocol
                && id.tls == key.tls
        })
    })
}

/// A `Watch` call, lean (no history), with or without every endpoint's histogram. An agent
/// that accepts the connection but never answers the call is down, not "connecting" for ever.
async fn open_watch(
    client: &mut KiteClient<Channel>,
    label: &str,
    histogram: bool,
) -> Result<tonic::Streaming<Snapshot>, Error> {
    let call = client.watch(WatchRequest {
        interval_ms: 0,
        filter: None,
        detail: Some(Detail {
            histogram,
            history: 0,
        }),
    });
    tokio::time::timeout(STALL, call)
        .await
        .map_err(|_| Error::Timeout {
            target: label.to_string(),
            timeout: STALL,
        })?
        .map(|r| r.into_inner())
        .map_err(|status| Error::Rpc {
            target: label.to_string(),
            status: Box::new(status),
        })
}

/// One connection: streams until it fails. `streamed` tells whether a snapshot came through.
async fn watch_stream(
    target: &Target,
    tx: &mpsc::Sender<Event>,
    index: usize,
    focus: &mut Focus,
    histograms: &mut Histograms,
    streamed: &mut bool,
) -> Result<(), Error> {
    let label = target.label();
    let rpc = |status| Error::Rpc {
        target: label.clone(),
        status: Box::new(status),
    };
    let mut client = connect(target).await?;
    let mut with_histograms = *histograms.borrow_and_update();
    let mut stream = open_watch(&mut client, &label, with_histograms).await?;
    let mut histograms_open = true;
    let send = |e: AgentEvent| async move { tx.send(Event::Agent(index, e)).await.is_ok() };
    let mut stall = STALL;
    // One deadline per snapshot: focus changes (someone scrolling) must not keep a silent
    // stream looking alive.
    let mut deadline = tokio::time::Instant::now() + stall;
    let mut focus_open = true;
    loop {
        let snap = tokio::select! {
            changed = histograms.changed(), if histograms_open => {
                if changed.is_err() {
                    histograms_open = false;
                } else if *histograms.borrow_and_update() != with_histograms {
                    // The same connection, a new call; the old stream is dropped (cancelled).
                    with_histograms = !with_histograms;
                    stream = open_watch(&mut client, &label, with_histograms).await?;
                    deadline = tokio::time::Instant::now() + stall;
                }
                continue;
            }
            changed = focus.changed(), if focus_open => {
                if changed.is_err() {
                    focus_open = false;
                } else if let Some(ep) = fetch_focus(&mut client, index, focus).await
                    && !send(AgentEvent::Focus(Box::new(ep))).await
                {
                    return Ok(());
                }
                continue;
            }
            msg = tokio::time::timeout_at(deadline, stream.message()) => {
                msg.map_err(|_| Error::Timeout {
                    target: label.clone(),
                    timeout: stall,
                })?
            }
        };
        let Some(snap) = snap.map_err(rpc)? else {
            return Ok(());
        };
        if !*streamed {
            *streamed = true;
            if !send(AgentEvent::Connected).await {
                return Ok(());
            }
        }
        // NaN or infinite windows from the wire fall back to STALL instead of panicking.
        stall = STALL.max(
            Duration::try_from_secs_f64((snap.window_seconds * 5.0).clamp(0.0, 3600.0))
                .unwrap_or(STALL),
        );
        deadline = tokio::time::Instant::now() + stall;
        if !send(AgentEvent::Snapshot(Box::new(snap))).await {
            return Ok(());
        }
        if let Some(ep) = fetch_focus(&mut client, index, focus).await
            && !send(AgentEvent::Focus(Box::new(ep))).await
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use kite_proto::v1::{
        AgentInfo, InfoRequest,
        kite_server::{Kite, KiteServer},
    };
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[test]
    fn addresses_get_a_scheme_and_a_port() {
        let url = |a: &str| match Target::parse(a).unwrap() {
            Target::Addr(u) => u,
            Target::Pod(_) => unreachable!(),
        };
        assert_eq!(url("127.0.0.1:7777"), "http://127.0.0.1:7777");
        assert_eq!(url("localhost"), "http://localhost:7777");
        assert_eq!(url("http://10.0.0.2:9000/"), "http://10.0.0.2:9000");
        assert_eq!(url("[::1]:7000"), "http://[::1]:7000");
        assert_eq!(url("[::1]"), "http://[::1]:7777");
        assert_eq!(url("::1"), "http://[::1]:7777");
        for bad in [
            "",
            "https://x:1",
            "x:0",
            "x:port",
            "ftp://x",
            "x:1/path",
            ":7777",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Target::parse("node-1:7777").unwrap().label(), "node-1:7777");
    }

    #[test]
    fn backoff_doubles_up_to_a_cap_and_resets() {
        let mut b = Backoff::new(BACKOFF.0, BACKOFF.1);
        let delays: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 250);
    }

    /// An agent that answers `Watch` with `n` snapshots and then ends the stream.
    struct Fake {
        n: usize,
    }

    #[tonic::async_trait]
    impl Kite for Fake {
        type WatchStream = tokio_stream_shim::Stream;
        async fn watch(
            &self,
            _: tonic::Request<WatchRequest>,
        ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
            let items = (0..self.n)
                .map(|i| {
                    Ok(Snapshot {
                        node: format!("fake-{i}"),
                        window_seconds: 1.0,
                        ..Default::default()
                    })
                })
                .collect();
            Ok(tonic::Response::new(tokio_stream_shim::Stream::new(items)))
        }
        async fn list(
            &self,
            _: tonic::Request<ListRequest>,
        ) -> Result<tonic::Response<Snapshot>, tonic::Status> {
            Ok(tonic::Response::new(Snapshot {
                node: "fake".into(),
                ..Default::default()
            }))
        }
        async fn info(
            &self,
            _: tonic::Request<InfoRequest>,
        ) -> Result<tonic::Response<AgentInfo>, tonic::Status> {
            Err(tonic::Status::unimplemented("no info"))
        }
    }

    /// A stream over a fixed list (no extra dependency for it).
    mod tokio_stream_shim {
        use std::{
            collections::VecDeque,
            pin::Pin,
            task::{Context, Poll},
        };

        use kite_proto::v1::Snapshot;

        pub struct Stream(VecDeque<Result<Snapshot, tonic::Status>>);

        impl Stream {
            pub fn new(items: Vec<Result<Snapshot, tonic::Status>>) -> Self {
                Self(items.into())
            }
        }

        /// One item, then open for ever.
        pub struct Open(pub Option<Snapshot>);

        impl futures_util::Stream for Open {
            type Item = Result<Snapshot, tonic::Status>;
            fn poll_next(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                match self.0.take() {
                    Some(s) => Poll::Ready(Some(Ok(s))),
                    None => Poll::Pending,
                }
            }
        }

        impl futures_util::Stream for Stream {
            type Item = Result<Snapshot, tonic::Status>;
            fn poll_next(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                Poll::Ready(self.0.pop_front())
            }
        }
    }

    async fn serve(n: usize) -> (SocketAddr, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(KiteServer::new(Fake { n }))
                .serve_with_incoming_shutdown(
                    futures_util::stream::unfold(listener, |l| async move {
                        let r = l.accept().await.map(|(s, _)| s);
                        Some((r, l))
                    }),
                    t.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        (addr, token)
    }

    async fn next(rx: &mut mpsc::Receiver<Event>) -> AgentEvent {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Event::Agent(0, e))) => e,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn follow_streams_then_reports_the_end_and_reconnects() {
        let (addr, server) = serve(2).await;
        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let target = Target::parse(&addr.to_string()).unwrap();
        let (_focus_tx, focus) = watch::channel(None);
        let (_hist_tx, histograms) = watch::channel(false);
        let task = tokio::spawn(follow(0, target, tx, focus, histograms, shutdown.clone()));
        assert_eq!(next(&mut rx).await, AgentEvent::Connecting { attempt: 1 });
        assert_eq!(next(&mut rx).await, AgentEvent::Connected);
        for i in 0..2 {
            match next(&mut rx).await {
                AgentEvent::Snapshot(s) => assert_eq!(s.node, format!("fake-{i}")),
                e => panic!("{e:?}"),
            }
        }
        // A stream that delivered resets the backoff.
        assert_eq!(
            next(&mut rx).await,
            AgentEvent::Down {
                error: "the agent ended the stream".into(),
                retry_in: BACKOFF.0,
            }
        );
        assert_eq!(next(&mut rx).await, AgentEvent::Connecting { attempt: 1 });
        // The agent goes away: failures back off.
        server.cancel();
        let mut delays = Vec::new();
        while delays.len() < 3 {
            if let AgentEvent::Down { retry_in, error } = next(&mut rx).await {
                assert!(!error.is_empty());
                delays.push(retry_in);
            }
        }
        assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
        assert!(delays[2] > delays[0], "failures must back off: {delays:?}");
        assert!(delays.iter().all(|d| *d <= BACKOFF.1), "{delays:?}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("follow stops when cancelled")
            .unwrap();
    }

    /// An agent whose `Watch` sends one snapshot naming the histogram flag it was asked
    /// with (`h=true`), then stays open.
    struct Flags;

    #[tonic::async_trait]
    impl Kite for Flags {
        type WatchStream = tokio_stream_shim::Open;
        async fn watch(
            &self,
            r: tonic::Request<WatchRequest>,
        ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
            let h = r.into_inner().detail.is_some_and(|d| d.histogram);
            Ok(tonic::Response::new(tokio_stream_shim::Open(Some(
                Snapshot {
                    node: format!("h={h}"),
                    window_seconds: 1.0,
                    ..Default::default()
                },
            ))))
        }
        async fn list(
            &self,
            _: tonic::Request<ListRequest>,
        ) -> Result<tonic::Response<Snapshot>, tonic::Status> {
            Err(tonic::Status::unimplemented("no list"))
        }
        async fn info(
            &self,
            _: tonic::Request<InfoRequest>,
        ) -> Result<tonic::Response<AgentInfo>, tonic::Status> {
            Err(tonic::Status::unimplemented("no info"))
        }
    }

    #[tokio::test]
    async fn the_stream_is_asked_again_with_histograms_on_the_same_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = CancellationToken::new();
        let t = server.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(KiteServer::new(Flags))
                .serve_with_incoming_shutdown(
                    futures_util::stream::unfold(listener, |l| async move {
                        let r = l.accept().await.map(|(s, _)| s);
                        Some((r, l))
                    }),
                    t.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let (_focus_tx, focus) = watch::channel(None);
        let (hist_tx, histograms) = watch::channel(false);
        let target = Target::parse(&addr.to_string()).unwrap();
        let task = tokio::spawn(follow(0, target, tx, focus, histograms, shutdown.clone()));
        assert_eq!(next(&mut rx).await, AgentEvent::Connecting { attempt: 1 });
        assert_eq!(next(&mut rx).await, AgentEvent::Connected);
        let node = |e: AgentEvent| match e {
            AgentEvent::Snapshot(s) => s.node,
            e => panic!("{e:?}"),
        };
        assert_eq!(node(next(&mut rx).await), "h=false");
        // Grouping on: the next snapshot comes from a call with histograms, and no
        // reconnect (no Down, no Connecting) in between.
        hist_tx.send_replace(true);
        assert_eq!(node(next(&mut rx).await), "h=true");
        hist_tx.send_replace(false);
        assert_eq!(node(next(&mut rx).await), "h=false");
        shutdown.cancel();
        server.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("follow stops when cancelled")
            .unwrap();
    }

    #[tokio::test]
    async fn list_reports_refused_connections_and_answers() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target = Target::parse(&format!("127.0.0.1:{port}")).unwrap();
        let err = list(&target, Duration::from_secs(5)).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("127.0.0.1:{port}: ")) && text.contains("refused"),
            "{text}"
        );
        let (addr, server) = serve(0).await;
        let snap = list(
            &Target::parse(&addr.to_string()).unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(snap.node, "fake");
        server.cancel();
    }
}
