//! Debian's Prometheus scraping agents, its HTTP API, and `promtool check metrics`.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Place, Proc, free_port, spawn, unique, wait_for_port};

/// A directory removed (with everything in it) when the guard drops.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty directory under the system's temp dir.
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Prometheus server scraping `targets` every second; stopped and its data removed on drop.
pub struct Prometheus {
    pub addr: SocketAddr,
    // Field order: the process stops before its directory goes.
    _proc: Proc,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes `targets` at 1 s; with `native`, native histograms are enabled (Prometheus then
    /// asks for the protobuf format first).
    pub fn start(targets: &[SocketAddr], native: bool) -> Self {
        Self::start_every(targets, native, Duration::from_secs(1))
    }

    /// Scrapes `targets` every `interval` (also the scrape timeout), whole seconds.
    pub fn start_every(targets: &[SocketAddr], native: bool, interval: Duration) -> Self {
        let dir = TempDir::new("kite-prom");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let every = interval.as_secs().max(1);
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global: {{ scrape_interval: {every}s, scrape_timeout: {every}s, evaluation_interval: 1s }}\n\
                 scrape_configs:\n  - job_name: kite\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let mut args = vec![
            "prometheus".to_string(),
            format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        if native {
            args.push("--enable-feature=native-histograms".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = spawn(Place::default(), &args);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for_port(&addr.to_string(), None);
        Self {
            addr,
            _proc: proc,
            _dir: dir,
        }
    }

    /// `GET /api/v1/<path>` with form parameters; the `data` member of the answer.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sG", &format!("http://{}/api/v1/{path}", self.addr)]);
        for (k, v) in params {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd.output().expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(v["status"], "success", "{path} {params:?}: {v}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    pub fn query(&self, q: &str) -> Vec<Value> {
        self.api("query", &[("query", q)])["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The value of a query that yields one sample, `None` when it yields none (or NaN).
    pub fn scalar(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        let v: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
        v.is_finite().then_some(v)
    }

    /// Waits until `q` yields `want` (within `timeout`); panics with the last value otherwise.
    pub fn wait_for_value(&self, q: &str, want: f64, timeout: Duration) {
        self.poll(q, timeout, |v| v == Some(want), &format!("want {want}"));
    }

    /// The value of `q` once it yields one (within `timeout`): a scrape that failed leaves the
    /// target's series stale until the next one.
    pub fn wait_for_scalar(&self, q: &str, timeout: Duration) -> f64 {
        self.poll(q, timeout, |v| v.is_some(), "want a result")
            .expect("a result")
    }

    /// Asks `q` every 300 ms until `done` accepts its value; panics at `timeout`.
    fn poll(
        &self,
        q: &str,
        timeout: Duration,
        done: impl Fn(Option<f64>) -> bool,
        want: &str,
    ) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.scalar(q);
            if done(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: {q} = {v:?}, {want}; targets: {}",
                self.api("targets", &[])
            );
            thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `promtool check metrics` on an exposition: `Err` with promtool's report unless it is clean.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && report.trim().is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}
