//! A Kite agent in this process, measuring one test cgroup.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use clap::Parser as _;
use kite_agent::daemon::{Config, run};
use kite_proto::v1::{Detail, ListRequest, Snapshot, kite_client::KiteClient};
use kite_testkit::{TestCgroup, free_port, unique};
use tokio_util::sync::CancellationToken;

/// A running agent; stopped (everything detached) and its files removed on drop.
pub struct InProcessAgent {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    state_dir: PathBuf,
    shutdown: CancellationToken,
    thread: Option<thread::JoinHandle<Result<(), kite_agent::Error>>>,
}

impl InProcessAgent {
    /// Starts an agent measuring `cg` with windows of `interval`, and waits until it is ready.
    pub fn start(cg: &TestCgroup, interval: &str) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_on(cg, interval, grpc, "tui-test-node")
    }

    /// Like [`start`](Self::start), serving gRPC on `grpc` (e.g. the address of an agent
    /// that was stopped, to restart it) and naming its node `node`.
    pub fn start_on(cg: &TestCgroup, interval: &str, grpc: SocketAddr, node: &str) -> Self {
        Self::start_with(Some(cg), interval, grpc, node)
    }

    /// An agent of node `node` that measures no cgroup until pods say hello on its
    /// [`socket`](Self::socket) (as on a node without the Kubernetes API).
    pub fn start_for_pods(interval: &str, node: &str) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_with(None, interval, grpc, node)
    }

    fn start_with(cg: Option<&TestCgroup>, interval: &str, grpc: SocketAddr, node: &str) -> Self {
        let state_dir = std::env::temp_dir().join(unique("kite-tui-agent"));
        std::fs::create_dir_all(&state_dir).unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let socket = state_dir.join("kite.sock");
        let mut args = vec![
            "kite-agent".to_string(),
            "--grpc-addr".into(),
            grpc.to_string(),
            "--metrics-addr".into(),
            metrics.to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--interval".into(),
            interval.into(),
            "--node-name".into(),
            node.into(),
            "--kube".into(),
            "off".into(),
        ];
        if let Some(cg) = cg {
            args.extend(["--cgroup".into(), cg.cgroup.path.clone()]);
        }
        let config = Config::try_parse_from(args).expect("agent arguments");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = thread::Builder::new()
            .name("kite-agent".into())
            .spawn(move || {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("agent runtime")
                    .block_on(run(config, token))
            })
            .unwrap();
        let mut agent = Self {
            grpc,
            metrics,
            state_dir,
            shutdown,
            thread: Some(thread),
        };
        // Without a cgroup there is nothing to poll (no generation, not ready): the socket
        // that pods say hello on is what such an agent offers first.
        agent.wait_ready(cg.is_some());
        agent
    }

    fn wait_ready(&mut self, polling: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = if polling {
                http_status(self.metrics, "/readyz") == Some(200)
            } else {
                self.socket().exists() && http_status(self.metrics, "/healthz") == Some(200)
            };
            if ready {
                return;
            }
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let r = self.thread.take().unwrap().join();
                panic!("kite-agent stopped: {r:?}");
            }
            assert!(
                Instant::now() < deadline,
                "kite-agent not ready in 30 s (socket {}: {}, /healthz {:?}, /readyz {:?})",
                self.socket().display(),
                self.socket().exists(),
                http_status(self.metrics, "/healthz"),
                http_status(self.metrics, "/readyz"),
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its enrollment socket (pods' hellos).
    pub fn socket(&self) -> PathBuf {
        self.state_dir.join("kite.sock")
    }

    /// `host:port` of its gRPC server.
    pub fn addr(&self) -> String {
        self.grpc.to_string()
    }

    /// Its `List`, as a client of our own sees it (histograms included, like `--once`).
    pub fn list(&self) -> Snapshot {
        let url = format!("http://{}", self.grpc);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut c = KiteClient::connect(url)
                    .await
                    .expect("connect to the agent");
                c.list(ListRequest {
                    filter: None,
                    detail: Some(Detail {
                        histogram: true,
                        history: 0,
                    }),
                })
                .await
                .expect("List")
                .into_inner()
            })
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            // gRPC shuts down once its clients are gone; do not hang a failing test on it.
            let deadline = Instant::now() + Duration::from_secs(15);
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                eprintln!("kite-agent did not stop within 15 s");
            }
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The status code of a plain HTTP/1.0 GET.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split(' ').nth(1)?.parse().ok()
}
