//! The agent's optional gRPC TLS with client certificates: certificates from `kite-webhook
//! grpc-certs`, the agent's own listener (`daemon::listen`: its connection limits, then
//! rustls with the client-certificate verifier, then tonic) serving gRPC health, and a real
//! independent client (Python grpcio): refused without a client certificate and with one
//! from another CA, answered with one from the CA.
use std::{path::Path, process::Command, sync::Arc, time::Duration};

use kite_agent::daemon::{listen, state::Guards};

const BIN: &str = env!("CARGO_BIN_EXE_kite-webhook");

/// A health Check over TLS with Python's grpcio: "SERVING" or the error's status code.
const CLIENT: &str = r#"
import sys, grpc
port, ca, cert, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
read = lambda p: open(p, "rb").read() if p != "-" else None
creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
ch = grpc.secure_channel(f"localhost:{port}", creds)
check = ch.unary_unary("/grpc.health.v1.Health/Check",
                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    r = check(b"", timeout=5)
    print("SERVING" if r == b"\x08\x01" else f"answer {r!r}")
except grpc.RpcError as e:
    print(e.code().name)
"#;

fn certs(dir: &Path) {
    let out = Command::new(BIN)
        .args(["grpc-certs", "--out-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn call(port: u16, dir: &Path, cert: Option<(&Path, &Path)>) -> String {
    let (c, k) = cert
        .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
        .unwrap_or(("-".into(), "-".into()));
    let out = Command::new("python3")
        .args(["-c", CLIENT, &port.to_string()])
        .arg(dir.join("ca.crt"))
        .args([c, k])
        .output()
        .expect("python3 with grpcio (scripts/install-deps.sh)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
        + &String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("Error") && !l.contains("WARNING"))
            .collect::<String>()
}

/// What OpenSSL's own client reports when it connects (with `cert`, a certificate and key,
/// or without) and waits a second for the server's answer: in TLS 1.3 a refusal of the
/// client's certificate comes after the client's Finished, as an alert naming the reason.
fn openssl(port: u16, ca: &Path, cert: Option<(&Path, &Path)>) -> String {
    let cert = cert
        .map(|(c, k)| format!("-cert {} -key {}", c.display(), k.display()))
        .unwrap_or_default();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep 1 | timeout 10 openssl s_client -connect 127.0.0.1:{port} -servername \
             localhost -alpn h2 -CAfile {} -verify_return_error {cert} 2>&1",
            ca.display()
        ))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn grpc_tls_refuses_clients_without_a_certificate_of_its_ca() {
    // Removed on drop, also when an assertion fails.
    let tmp = kite_testkit::TempDir::new("kite-grpc-tls");
    let (ours, other) = (tmp.path().join("ours"), tmp.path().join("other"));
    certs(&ours);
    certs(&other);
    let tls = listen::GrpcTls {
        grpc_tls_cert: Some(ours.join("agent.crt")),
        grpc_tls_key: Some(ours.join("agent.key")),
        grpc_client_ca: Some(ours.join("ca.crt")),
    }
    .server_config()
    .unwrap();
    assert!(tls.is_some());
    // Off unless given.
    assert!(
        listen::GrpcTls::default()
            .server_config()
            .unwrap()
            .is_none()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = listen::Acceptor::new(
        listener,
        listen::Limits {
            max_connections: 16,
            idle: Duration::from_secs(30),
            header_read: Duration::from_secs(5),
        },
        listen::Counters::new(Arc::new(Guards::default()), |g| &g.grpc),
        "gRPC",
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = {
        let shutdown = shutdown.clone();
        rt.spawn(async move {
            let (_reporter, health) = tonic_health::server::health_reporter();
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(
                    acceptor.into_grpc_stream(tls),
                    shutdown.cancelled_owned(),
                )
                .await
        })
    };

    let with_ours = call(
        port,
        &ours,
        Some((&ours.join("client.crt"), &ours.join("client.key"))),
    );
    let without = call(port, &ours, None);
    let with_other = call(
        port,
        &ours,
        Some((&other.join("client.crt"), &other.join("client.key"))),
    );
    let openssl_without = openssl(port, &ours.join("ca.crt"), None);
    let openssl_other = openssl(
        port,
        &ours.join("ca.crt"),
        Some((&other.join("client.crt"), &other.join("client.key"))),
    );
    // The server keeps serving after refusals.
    let again = call(
        port,
        &ours,
        Some((&ours.join("client.crt"), &ours.join("client.key"))),
    );
    shutdown.cancel();
    rt.block_on(server).unwrap().unwrap();
    assert_eq!(with_ours, "SERVING");
    assert!(
        without.starts_with("UNAVAILABLE"),
        "no client certificate: {without}"
    );
    assert!(
        with_other.starts_with("UNAVAILABLE"),
        "another CA's certificate: {with_other}"
    );
    assert_eq!(again, "SERVING");
    // The refusal says why, as an independent TLS client reports it: TLS 1.3's
    // certificate_required (116) without one; with the other CA's, decrypt_error (51): both
    // CAs are named "kite gRPC CA", so the issuer found by name is ours and its signature
    // check fails.
    assert!(
        openssl_without.contains("alert certificate required"),
        "{openssl_without}"
    );
    assert!(
        openssl_other.contains("alert decrypt error"),
        "{openssl_other}"
    );
}

/// `kite-tui --once` reaches the agent's own Kite service (its state without a data plane:
/// no endpoints yet) over the same TLS listener with `--tls-cert/--tls-key/--ca`, and fails,
/// saying why, without them.
#[test]
fn kite_tui_connects_with_its_client_certificate() {
    use kite_agent::{
        daemon::{grpc, state},
        ebpf::Options,
    };
    let dir = kite_testkit::TempDir::new("kite-grpc-tui");
    let tmp = dir.path().join("ours");
    let other = dir.path().join("other");
    certs(&tmp);
    certs(&other);
    let tls = listen::GrpcTls {
        grpc_tls_cert: Some(tmp.join("agent.crt")),
        grpc_tls_key: Some(tmp.join("agent.key")),
        grpc_client_ca: Some(tmp.join("ca.crt")),
    }
    .server_config()
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let shared = state::Shared::new(state::State::new(
        "node-tls".into(),
        Duration::from_secs(1),
        60,
        Options {
            max_sockets: 1024,
            max_endpoints: 1024,
            endpoint_budget: 0,
            routes: true,
        },
    ));
    let guards = shared.read().guards.clone();
    let acceptor = listen::Acceptor::new(
        listener,
        listen::Limits {
            max_connections: 16,
            idle: Duration::from_secs(30),
            header_read: Duration::from_secs(5),
        },
        listen::Counters::new(guards, |g| &g.grpc),
        "gRPC",
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (_notify_tx, notify_rx) = tokio::sync::watch::channel(0u64);
    let svc = grpc::KiteService::new(
        shared,
        notify_rx,
        grpc::WatchLimits {
            max_streams: 4,
            max_interval: Duration::from_secs(15),
        },
        shutdown.clone(),
    );
    let server = {
        let shutdown = shutdown.clone();
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(kite_proto::v1::kite_server::KiteServer::new(svc))
                .serve_with_incoming_shutdown(
                    acceptor.into_grpc_stream(tls),
                    shutdown.cancelled_owned(),
                )
                .await
        })
    };
    let exe = std::env::current_exe().unwrap();
    let tui = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("kite-tui");
    assert!(
        tui.exists(),
        "build kite-tui first (cargo build -p kite-tui)"
    );
    let addr = format!("localhost:{port}");
    let with = Command::new(&tui)
        .args(["--once", "-o", "json", "--timeout", "5s", "--addr", &addr])
        .arg("--tls-cert")
        .arg(tmp.join("client.crt"))
        .arg("--tls-key")
        .arg(tmp.join("client.key"))
        .arg("--ca")
        .arg(tmp.join("ca.crt"))
        .output()
        .unwrap();
    let run = |args: &[&Path]| {
        let mut cmd = Command::new(&tui);
        cmd.args(["--once", "-o", "json", "--timeout", "5s", "--addr", &addr]);
        for (flag, path) in ["--tls-cert", "--tls-key", "--ca"].iter().zip(args) {
            cmd.arg(flag).arg(path);
        }
        cmd.output().unwrap()
    };
    let without = run(&[]);
    // A client certificate of another CA: the agent refuses it in the handshake.
    let foreign = run(&[
        &other.join("client.crt"),
        &other.join("client.key"),
        &tmp.join("ca.crt"),
    ]);
    // Our client certificate, but another CA to verify the agent with: kite-tui refuses it.
    let untrusted = run(&[
        &tmp.join("client.crt"),
        &tmp.join("client.key"),
        &other.join("ca.crt"),
    ]);
    shutdown.cancel();
    rt.block_on(server).unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&with.stderr);
    assert!(with.status.success(), "with the certificate: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&with.stdout).unwrap();
    assert_eq!(json["agents"][0]["ok"], true, "{json}");
    assert_eq!(json["agents"][0]["node"], "node-tls", "{json}");
    assert_eq!(without.status.code(), Some(1));
    let why = String::from_utf8_lossy(&without.stderr);
    assert!(why.contains("no agent answered"), "{why}");
    assert!(
        why.contains("TLS required") && why.contains("--tls-cert, --tls-key and --ca"),
        "without the flags kite-tui must say which: {why}"
    );
    let why = String::from_utf8_lossy(&foreign.stderr);
    assert_eq!(foreign.status.code(), Some(1), "{why}");
    let why = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{why}");
}
