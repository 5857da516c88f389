//! The webhook binary against clients that do not play along: connections that finish the TLS
//! handshake and then say nothing, or trickle a request, and many large reviews at once. Real
//! TLS (rustls client trusting the CA from `kite-webhook certs`), real process, loopback only.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use kite_testkit::free_port;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kite-webhook");

struct Webhook {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Webhook {
    fn start(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kite-webhook-limits-{}-{}",
            std::process::id(),
            free_port()
        ));
        let out = Command::new(BIN)
            .args(["certs", "--extra-name", "127.0.0.1", "--out-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        let port = free_port();
        let child = Command::new(BIN)
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let w = Self { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the webhook did not come up");
            thread::sleep(Duration::from_millis(50));
        }
        w
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        tls_config(&self.dir.join("ca.crt"))
    }

    fn peak_rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TCP connection with the TLS handshake done.
fn connect(port: u16, config: &Arc<rustls::ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// Waits until the server closes `tls` (or `limit` passes); how long it lived.
fn lifetime(mut tls: Tls, t0: Instant, trickle: Option<&[u8]>, limit: Duration) -> Duration {
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut i = 0;
    let mut buf = [0u8; 1024];
    while t0.elapsed() < limit {
        if let Some(bytes) = trickle {
            if tls
                .write_all(&bytes[i % bytes.len()..i % bytes.len() + 1])
                .is_err()
                || tls.flush().is_err()
            {
                return t0.elapsed();
            }
            i += 1;
        }
        match tls.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return t0.elapsed(),
        }
    }
    t0.elapsed()
}

#[test]
fn idle_and_slow_connections_after_the_handshake_are_closed() {
    let w = Webhook::start(&["--idle-timeout", "2s", "--header-timeout", "1s"]);
    let config = w.tls();
    let slow: &[u8] = b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-a: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let lived: Vec<(&str, Duration)> = thread::scope(|s| {
        let mut hs = Vec::new();
        for i in 0..80 {
            let config = config.clone();
            let trickle = (i % 2 == 1).then_some(slow);
            hs.push((
                if trickle.is_some() { "slow" } else { "idle" },
                s.spawn(move || {
                    let tls = connect(w.port, &config);
                    let t0 = Instant::now();
                    lifetime(tls, t0, trickle, Duration::from_secs(20))
                }),
            ));
        }
        hs.into_iter()
            .map(|(k, h)| (k, h.join().unwrap()))
            .collect()
    });
    for kind in ["idle", "slow"] {
        let max = lived
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .max()
            .unwrap();
        eprintln!("  {kind}: 40 connections after the TLS handshake, the longest lived {max:?}");
        // idle: the 2 s idle deadline; slow: the 1 s header deadline.
        let bound = if kind == "idle" { 3500 } else { 2500 };
        assert!(max < Duration::from_millis(bound), "{kind}: {max:?}");
    }
    // Still serving.
    let mut tls = connect(w.port, &config);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// An opted-in pod review of about `size` bytes: one container with many environment
/// variables (many small JSON objects: the parse's worst case per byte).
fn big_review(size: usize, n: usize) -> Vec<u8> {
    let per = 80;
    let env: Vec<Value> = (0..size / per)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": format!("{:0>50}", i)}))
        .collect();
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{n:012}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("big-{n}"), "namespace": "shop",
                             "labels": {"kite.io/monitor": "true"}},
                "spec": {"containers": [{"name": "app", "image": "nginx", "env": env}]}
            }
        }
    }))
    .unwrap()
}

/// POSTs `body` to /mutate (with `Expect: 100-continue`, as large uploads do: the body goes
/// out only once the server asks for it); the status and the response body.
fn post(port: u16, config: &Arc<rustls::ClientConfig>, body: &[u8]) -> (u16, Vec<u8>) {
    let mut tls = connect(port, config);
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        tls,
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    tls.flush().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = |out: &[u8]| out.windows(4).position(|w| w == b"\r\n\r\n");
    while head_end(&out).is_none() {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "closed before an answer");
        out.extend_from_slice(&buf[..n]);
    }
    if out.starts_with(b"HTTP/1.1 100") {
        out.drain(..head_end(&out).unwrap() + 4);
        tls.write_all(body).unwrap();
        tls.flush().unwrap();
    }
    let _ = tls.read_to_end(&mut out);
    let head = head_end(&out).expect("a response");
    let code = std::str::from_utf8(&out[..head]).unwrap()[9..12]
        .parse()
        .unwrap();
    (code, out[head + 4..].to_vec())
}

fn post_all(w: &Webhook, reviews: &[Vec<u8>]) -> (Vec<(u16, Vec<u8>)>, Duration) {
    let config = w.tls();
    let t0 = Instant::now();
    let answers = thread::scope(|s| {
        let hs: Vec<_> = reviews
            .iter()
            .map(|r| {
                let config = config.clone();
                s.spawn(move || post(w.port, &config, r))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (answers, t0.elapsed())
}

#[test]
fn sixteen_concurrent_large_reviews_fit_the_memory_limit() {
    let w = Webhook::start(&[]);
    let mib = |b: u64| b as f64 / 1048576.0;
    // 7 MB: above the body limit, refused before being read.
    let huge: Vec<Vec<u8>> = (0..16).map(|n| big_review(7_000_000, n)).collect();
    let (answers, took) = post_all(&w, &huge);
    let peak_huge = w.peak_rss();
    eprintln!(
        "  16 concurrent reviews of {:.1} MB: {:?} in {took:?}, webhook peak RSS {:.1} MiB",
        huge[0].len() as f64 / 1e6,
        answers
            .iter()
            .map(|a| a.0)
            .collect::<std::collections::BTreeSet<_>>(),
        mib(peak_huge)
    );
    for (code, body) in &answers {
        assert_eq!(*code, 413, "{}", String::from_utf8_lossy(body));
    }
    drop(huge);
    // Just under the limit (a Pod of many small env entries, the parse's worst case per
    // byte): all answered with a patch, one budget's worth at a time.
    let large: Vec<Vec<u8>> = (0..16).map(|n| big_review(3_000_000, n)).collect();
    assert!(large[0].len() < 3 << 20);
    let (answers, took) = post_all(&w, &large);
    let peak = w.peak_rss();
    eprintln!(
        "  16 concurrent reviews of {:.1} MB: all answered in {took:?}, webhook peak RSS {:.1} MiB",
        large[0].len() as f64 / 1e6,
        mib(peak)
    );
    for (code, body) in &answers {
        assert_eq!(*code, 200, "{}", String::from_utf8_lossy(body));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["response"]["allowed"], true, "{v}");
        assert!(v["response"]["patch"].is_string(), "{v}");
    }
    // The Deployment's limit is 64 MiB.
    assert!(peak < 64 << 20, "peak RSS {:.1} MiB", mib(peak));
}
