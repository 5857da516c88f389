//! What answers at an address that did not speak `kite.v1` (issue 16, point 6): one sentence
//! instead of h2 noise ("frame with invalid size", "operation was canceled" three times).
//!
//! After a failed connection or call to an address, [`explain`] looks once at what is there:
//! a refused connection is said as such; a gRPC server without the Kite service from its
//! status; otherwise it opens at most two short TCP connections of its own (each bounded by
//! [`PROBE_TIMEOUT`]): a TLS ClientHello (a TLS record back: TLS is required; our bytes back:
//! an echo server), then an HTTP/1.1 request (`HTTP/` back: an HTTP server, not a Kite agent).
//! [`Explainer`] keeps the last answer, so a retry that fails the same way does not probe again
//! and the sentence shown stays the same.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::Error;

/// How long one probe connection may take (connect, write, first answer).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of an answer looked at.
const READ_MAX: usize = 512;

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Answers a TLS ClientHello with a TLS record.
    Tls,
    /// Sends back what it is sent.
    Echo,
    /// Answers an HTTP/1 request with an HTTP/1 status line.
    Http1,
    /// Accepts, then closes or says nothing we know.
    Unknown,
}

/// How the answer `reply` to the bytes `sent` classifies.
pub fn classify(sent: &[u8], reply: &[u8]) -> Peer {
    if reply.len() >= 5 && sent.starts_with(reply) {
        Peer::Echo
    } else if reply.starts_with(b"HTTP/1.") || reply.starts_with(b"HTTP/0.9") {
        Peer::Http1
    } else if reply.len() >= 3 && matches!(reply[0], 0x15 | 0x16) && reply[1] == 0x03 {
        // A handshake or an alert record of TLS 1.x.
        Peer::Tls
    } else {
        Peer::Unknown
    }
}

/// The first bytes a TLS 1.3/1.2 client sends to `host` (rustls' ClientHello).
fn client_hello(host: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| rustls_pki_types::ServerName::try_from("localhost").unwrap());
    let mut out = Vec::new();
    if let Ok(mut conn) = rustls::ClientConnection::new(Arc::new(config), name) {
        while conn.wants_write() {
            if conn.write_tls(&mut out).is_err() {
                break;
            }
        }
    }
    out
}

/// Sends `bytes` to `addr` and returns what came back within [`PROBE_TIMEOUT`] (`None`: no
/// connection).
async fn exchange(addr: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let talk = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(bytes).await.ok()?;
        let mut buf = vec![0u8; READ_MAX];
        let mut n = 0;
        // Until READ_MAX bytes, the end of the stream, or the deadline (outside).
        while n < buf.len() {
            match s.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k;
                    // An echo or a status line is recognisable from its first bytes.
                    if classify(bytes, &buf[..n]) != Peer::Unknown {
                        break;
                    }
                }
            }
        }
        buf.truncate(n);
        Some(buf)
    };
    let mut got = None;
    let r = tokio::time::timeout(PROBE_TIMEOUT, async {
        got = talk.await;
    })
    .await;
    let _ = r;
    got.or(Some(Vec::new()))
}

/// What is at `addr` (`host:port`), from at most two probe connections.
pub async fn probe(addr: &str) -> Peer {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    let hello = client_hello(host);
    if let Some(reply) = exchange(addr, &hello).await {
        match classify(&hello, &reply) {
            Peer::Unknown => {}
            found => return found,
        }
    }
    let get = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kite-tui\r\nConnection: close\r\n\r\n"
    );
    match exchange(addr, get.as_bytes()).await {
        Some(reply) => classify(get.as_bytes(), &reply),
        None => Peer::Unknown,
    }
}

/// The sentence for what a probe found at `target`, if it says more than the error.
fn sentence(target: &str, peer: Peer) -> Option<String> {
    let what = match peer {
        Peer::Http1 => "answers HTTP but is not a Kite agent (no kite.v1.Kite service)",
        Peer::Echo => {
            "is not a Kite agent: it echoes what it is sent (a TCP service that does not speak HTTP)"
        }
        Peer::Tls => {
            ": TLS required (it answers a TLS handshake); an agent serving gRPC over TLS needs \
             --tls-cert, --tls-key and --ca"
        }
        Peer::Unknown => return None,
    };
    let sep = if what.starts_with(':') { "" } else { " " };
    Some(format!("{target}{sep}{what}"))
}

/// Whether the chain of `e` has an I/O error of kind `kind`.
fn has_io_kind(e: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == kind
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `e` said in one sentence when it can be: `Error::Refused`, `Error::NotAgent`; anything
/// else unchanged. `addr` is the `host:port` dialled (`None`: not a plain address, e.g. a
/// port-forward or TLS of our own, where a probe would say nothing true).
pub async fn explain(e: Error, addr: Option<&str>) -> Error {
    // Only failures a Kite agent does not cause are probed: a transport that is not h2 or
    // not gRPC (an agent's own statuses, e.g. RESOURCE_EXHAUSTED, are left as they are).
    let (target, refused, unimplemented) = match &e {
        Error::Connect { target, source } => (
            target.clone(),
            has_io_kind(source, std::io::ErrorKind::ConnectionRefused),
            false,
        ),
        Error::Rpc { target, status }
            if matches!(
                status.code(),
                tonic::Code::Internal
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Unimplemented
                    | tonic::Code::Unavailable
            ) =>
        {
            (
                target.clone(),
                has_io_kind(status.as_ref(), std::io::ErrorKind::ConnectionRefused),
                status.code() == tonic::Code::Unimplemented,
            )
        }
        _ => return e,
    };
    if refused {
        return Error::Refused { target };
    }
    if unimplemented {
        return Error::NotAgent {
            target: target.clone(),
            what: format!(
                "{target} answers gRPC but is not a Kite agent (no kite.v1.Kite service)"
            ),
        };
    }
    let Some(addr) = addr else { return e };
    match sentence(&target, probe(addr).await) {
        Some(what) => Error::NotAgent { target, what },
        None => e,
    }
}

/// The kind of a failure, for [`Explainer`]: the variant and the gRPC code.
fn kind(e: &Error) -> String {
    match e {
        Error::Rpc { status, .. } => format!("rpc {:?}", status.code()),
        Error::Connect { .. } => "connect".into(),
        other => other.to_string(),
    }
}

/// [`explain`] for one agent across retries. A refused connection is said as such (no
/// probe). Once a probe found that something else answers, any later transport failure is
/// said the same way without probing again (h2 words one failure differently from one try to
/// the next: "frame with invalid size", "broken pipe"); a failure the probe could not place
/// is probed again only when its kind (variant, gRPC code) changes.
#[derive(Debug, Default)]
pub struct Explainer {
    /// The last failure's kind, what was said, and whether a probe placed it.
    last: Option<(String, String, bool)>,
    /// Probes made.
    explained: u32,
}

impl Explainer {
    /// The sentence for `e`.
    pub async fn explain(&mut self, e: Error, addr: Option<&str>) -> String {
        let probed = matches!(&e, Error::Connect { .. } | Error::Rpc { .. });
        let quick = explain(e, None).await;
        if !probed || matches!(quick, Error::Refused { .. } | Error::NotAgent { .. }) {
            // Refused, UNIMPLEMENTED, or not a transport failure: no probe needed.
            let said = quick.to_string();
            let placed = matches!(quick, Error::NotAgent { .. });
            self.last = Some((kind(&quick), said.clone(), placed));
            return said;
        }
        let k = kind(&quick);
        if let Some((last_kind, said, placed)) = &self.last
            && (*placed || *last_kind == k)
        {
            return said.clone();
        }
        self.explained += 1;
        let e = explain(quick, addr).await;
        let placed = matches!(e, Error::NotAgent { .. });
        let said = e.to_string();
        self.last = Some((k, said.clone(), placed));
        said
    }

    /// Forgets the last failure (after a stream that delivered).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use kite_testkit::{
        Place, free_port, grpc, nginx, spawn,
        tls::{Certs, python_https},
        wait_for_port,
    };

    use super::*;
    use crate::client::{Target, list};

    #[test]
    fn replies_classify() {
        let hello = client_hello("127.0.0.1");
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        assert_eq!(classify(&hello, &hello[..40]), Peer::Echo);
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\n", b"HTTP/1.0 400 Bad"),
            Peer::Http1
        );
        assert_eq!(
            classify(&hello, &[0x15, 0x03, 0x03, 0x00, 0x02, 2, 70]),
            Peer::Tls
        );
        assert_eq!(classify(&hello, b""), Peer::Unknown);
        assert_eq!(classify(b"GET", b"\x00\x00\x12\x04"), Peer::Unknown);
    }

    /// What `kite-tui --once` says about `addr` (the `List` it makes, explained).
    async fn said(addr: &str) -> String {
        let target = Target::parse(addr).unwrap();
        list(&target, Duration::from_secs(5))
            .await
            .expect_err("not an agent")
            .to_string()
    }

    fn python(script: &str, port: u16) -> kite_testkit::Proc {
        let path = kite_testkit::servers::dir().join(script);
        let port_s = port.to_string();
        let p = spawn(
            Place::default(),
            &["python3", path.to_str().unwrap(), "127.0.0.1", &port_s],
        );
        wait_for_port(&format!("127.0.0.1:{port}"), None);
        p
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let addr = format!("127.0.0.1:{}", free_port());
        assert_eq!(said(&addr).await, format!("{addr}: connection refused"));
    }

    #[tokio::test]
    async fn http1_servers_are_not_kite_agents() {
        let sentence = |addr: &str| {
            format!("{addr} answers HTTP but is not a Kite agent (no kite.v1.Kite service)")
        };
        // Python's http.server (the test server's routes) and Debian's nginx.
        let port = free_port();
        let _py = kite_testkit::python_httpd(Place::default(), "127.0.0.1", port, false);
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(said(&addr).await, sentence(&addr));
        let port = free_port();
        let _nginx = nginx(Place::default(), port);
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(said(&addr).await, sentence(&addr));
    }

    #[tokio::test]
    async fn a_tcp_echo_server_is_not_a_kite_agent() {
        let port = free_port();
        let _echo = python("echo.py", port);
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(
            said(&addr).await,
            format!(
                "{addr} is not a Kite agent: it echoes what it is sent (a TCP service that \
                 does not speak HTTP)"
            )
        );
    }

    #[tokio::test]
    async fn tls_servers_say_tls_is_required() {
        let certs = Certs::new();
        let sentence = |addr: &str| {
            format!(
                "{addr}: TLS required (it answers a TLS handshake); an agent serving gRPC over \
                 TLS needs --tls-cert, --tls-key and --ca"
            )
        };
        // Python's ssl (closes on a plaintext h2 preface) and nginx with `ssl`.
        let port = free_port();
        let _py = python_https(Place::default(), port, &certs);
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(said(&addr).await, sentence(&addr));
        let port = free_port();
        let _nginx = kite_testkit::tls::nginx_tls(Place::default(), port, &certs);
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(said(&addr).await, sentence(&addr));
    }

    #[tokio::test]
    async fn a_grpc_server_without_the_kite_service_is_not_a_kite_agent() {
        let port = free_port();
        let _srv = grpc::server(grpc::Stack::Python, Place::default(), port);
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(
            said(&addr).await,
            format!("{addr} answers gRPC but is not a Kite agent (no kite.v1.Kite service)")
        );
    }

    #[tokio::test]
    async fn retries_that_fail_the_same_way_are_explained_once() {
        let port = free_port();
        let _py = kite_testkit::python_httpd(Place::default(), "127.0.0.1", port, false);
        let addr = format!("127.0.0.1:{port}");
        let target = Target::parse(&addr).unwrap();
        let mut explainer = Explainer::default();
        let mut texts = Vec::new();
        for _ in 0..3 {
            let e = match crate::client::connect(&target).await {
                Err(e) => e,
                Ok(mut c) => c
                    .info(kite_proto::v1::InfoRequest {})
                    .await
                    .map(|_| ())
                    .map_err(|status| Error::Rpc {
                        target: addr.clone(),
                        status: Box::new(status),
                    })
                    .expect_err("an HTTP/1 server"),
            };
            texts.push(explainer.explain(e, Some(&addr)).await);
        }
        assert_eq!(explainer.explained, 1, "{texts:?}");
        assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
        assert!(texts[0].contains("is not a Kite agent"), "{texts:?}");
    }
}
