//! gRPC servers and clients on three real stacks — grpc-go (Debian's), Python's grpcio
//! (C-core) and tonic (hyper's h2) — with one service and one command line
//! (`servers/grpc_echo.py` documents both), so a test pairs any client with any server.

use std::{
    collections::BTreeMap,
    io::Read,
    path::PathBuf,
    process::Stdio,
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{Place, Proc, command, servers, spawn, wait_for_port};

/// The service every stack serves.
pub const SERVICE: &str = "kite.test.Echo";

/// A gRPC implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// grpc-go 1.33 (Debian's golang-google-grpc-dev), built offline in GOPATH mode.
    Go,
    /// Python's grpcio (gRPC C-core).
    Python,
    /// tonic 0.14 (hyper's h2), the `kite-grpc-echo` binary of this crate.
    Tonic,
}

impl Stack {
    pub const ALL: [Stack; 3] = [Stack::Go, Stack::Python, Stack::Tonic];

    /// The program and its leading arguments.
    fn argv(self) -> Vec<String> {
        match self {
            Stack::Go => vec![go_binary().display().to_string()],
            Stack::Python => vec![
                "python3".into(),
                servers::dir().join("grpc_echo.py").display().to_string(),
            ],
            Stack::Tonic => vec![sibling("kite-grpc-echo").display().to_string()],
        }
    }
}

/// A binary of this workspace next to the running test's (`target/<profile>/`).
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    // Tests run from `target/<profile>/deps/`, benchmarks from `target/<profile>/`.
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile dir")
    } else {
        dir
    };
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p kite-testkit --bins`; `cargo test` at \
         the workspace root builds it)",
        bin.display()
    );
    bin
}

/// Builds `servers/grpc_echo.go` once per test process (see `servers::go_build`), into
/// `target/kite-grpc-echo-go`.
pub fn go_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        servers::go_build(
            "grpc_echo.go",
            "kite-grpc-echo-go",
            "golang-go golang-google-grpc-dev",
        )
    })
    .clone()
}

/// A stack's server on 127.0.0.1:`port` (inside `place`), ready when this returns.
pub fn server(stack: Stack, place: Place<'_>, port: u16) -> Proc {
    let argv = stack.argv();
    let port_s = port.to_string();
    let mut args: Vec<&str> = argv.iter().map(String::as_str).collect();
    args.extend(["server", &port_s]);
    let p = spawn(place, &args);
    wait_for_port(&format!("127.0.0.1:{port}"), place.netns);
    p
}

/// One call as its client saw it.
#[derive(Clone, Debug)]
pub struct Call {
    /// `Unary`, `Lookup` or `Stream`.
    pub method: String,
    /// The gRPC status code the client received.
    pub code: i32,
    /// Milliseconds from the call's start to its first response message (or its status, if
    /// none came).
    pub first_ms: f64,
    /// Milliseconds from the call's start to its status.
    pub end_ms: f64,
}

impl Call {
    /// The call's `:path`.
    pub fn path(&self) -> String {
        format!("/{SERVICE}/{}", self.method)
    }
}

/// What a client reported, call by call.
#[derive(Clone, Debug, Default)]
pub struct Calls(pub Vec<Call>, pub Echoed);

/// Calls whose churning metadata the server sent back (0 without churn).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Echoed(pub u64);

impl Calls {
    /// Calls per (`:path`, status code).
    pub fn counts(&self) -> BTreeMap<(String, i32), u64> {
        let mut m = BTreeMap::new();
        for c in &self.0 {
            *m.entry((c.path(), c.code)).or_insert(0) += 1;
        }
        m
    }

    /// Milliseconds to the first response message of the calls to `method`, sorted.
    pub fn first_ms(&self, method: &str) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .0
            .iter()
            .filter(|c| c.method == method)
            .map(|c| c.first_ms)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// The calls a client makes for `spec` (see [`client`]): (method, status code) per call.
pub fn planned(calls: usize, spec: &str) -> BTreeMap<(String, i32), u64> {
    let plan: Vec<(String, i32)> = spec
        .split(',')
        .map(|item| {
            let f: Vec<&str> = item.split(':').collect();
            (format!("/{SERVICE}/{}", f[0]), f[2].parse().expect("code"))
        })
        .collect();
    let mut m = BTreeMap::new();
    for i in 0..calls {
        *m.entry(plan[i % plan.len()].clone()).or_insert(0) += 1;
    }
    m
}

/// Runs a stack's client (inside `place`) to its end: `calls` calls cycling through `spec`
/// (`METHOD:DELAY_MS:CODE[:N],…`), `concurrency` at a time over one HTTP/2 connection.
/// Fails the test after `timeout`.
pub fn client(
    stack: Stack,
    place: Place<'_>,
    target: &str,
    calls: usize,
    concurrency: usize,
    spec: &str,
    timeout: Duration,
) -> Calls {
    run_client(
        stack,
        place,
        target,
        (calls, concurrency),
        spec,
        false,
        timeout,
    )
}

/// [`client`] with unique metadata on every call, echoed back by the server, so both
/// directions' HPACK dynamic tables fill and evict all along the connection.
pub fn churning_client(
    stack: Stack,
    place: Place<'_>,
    target: &str,
    calls: usize,
    concurrency: usize,
    spec: &str,
    timeout: Duration,
) -> Calls {
    run_client(
        stack,
        place,
        target,
        (calls, concurrency),
        spec,
        true,
        timeout,
    )
}

fn run_client(
    stack: Stack,
    place: Place<'_>,
    target: &str,
    (calls, concurrency): (usize, usize),
    spec: &str,
    churn: bool,
    timeout: Duration,
) -> Calls {
    let argv = stack.argv();
    let (calls_s, conc_s) = (calls.to_string(), concurrency.to_string());
    let mut args: Vec<&str> = argv.iter().map(String::as_str).collect();
    args.extend(["client", target, &calls_s, &conc_s, spec]);
    if churn {
        args.push("churn");
    }
    let mut child = command(place, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    // Read while it runs: thousands of calls overflow a pipe's buffer.
    let pipes = (child.stdout.take(), child.stderr.take());
    let reader = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = reader(pipes.0.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = reader(pipes.1.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{stack:?} client did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (
        stdout.join().expect("stdout"),
        stderr.join().expect("stderr"),
    );
    assert!(
        status.success(),
        "{stack:?} client failed: {}",
        String::from_utf8_lossy(&stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "{stack:?} client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&stdout)
        )
    });
    let calls = v["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| Call {
            method: c[0].as_str().expect("method").to_owned(),
            code: c[1].as_i64().expect("code") as i32,
            first_ms: c[2].as_f64().expect("first"),
            end_ms: c[3].as_f64().expect("end"),
        })
        .collect();
    Calls(calls, Echoed(v["echoed"].as_u64().unwrap_or(0)))
}
