//! Test fixtures: cgroups, network namespaces, real servers and load generators, and a
//! Kite instance watching a cgroup while the load runs. Everything a test creates is removed
//! when its guard drops, also when the test fails.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use kite_agent::{
    cgroup::{Cgroup, Hierarchy},
    ebpf::{Kite, Options},
    stats::{Collector, EndpointId, Histogram, Interval},
};
use kite_common::maps::{Direction, STAT_COUNT, Stat};

/// Whether kernel tests can run. Without root they are skipped with a message, unless
/// `KITE_REQUIRE_EBPF=1` (CI), where a skip is a failure.
pub fn ebpf_available(test: &str) -> bool {
    // SAFETY: trivial libc call.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("KITE_REQUIRE_EBPF").as_deref() == Ok("1") {
        panic!("{test}: KITE_REQUIRE_EBPF=1 but not running as root: eBPF tests cannot run");
    }
    eprintln!(
        "SKIPPED {test}: needs root to load eBPF programs (set KITE_REQUIRE_EBPF=1 to fail instead)"
    );
    false
}

/// Load tests compare rates and latencies: one at a time, so they do not slow each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kernel/servers")
}

fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cgroup made for one test, under `/kite-test`. On drop its processes are killed and it is
/// removed.
pub struct TestCgroup {
    pub cgroup: Cgroup,
    pub hierarchy: Hierarchy,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let hierarchy = Hierarchy::discover().expect("cgroup v2 mounted");
        let rel = format!("/kite-test/{}", unique(name));
        fs::create_dir_all(hierarchy.mount().join(rel.trim_start_matches('/')))
            .expect("create test cgroup");
        let cgroup = hierarchy.cgroup(&rel).expect("test cgroup");
        Self { cgroup, hierarchy }
    }

    pub fn procs_file(&self) -> PathBuf {
        self.cgroup.dir.join("cgroup.procs")
    }

    /// A child cgroup (e.g. a container scope under a pod).
    pub fn child(&self, name: &str) -> Cgroup {
        let dir = self.cgroup.dir.join(name);
        fs::create_dir_all(&dir).expect("create child cgroup");
        self.hierarchy.cgroup(&dir).unwrap()
    }

    fn kill_all(dir: &Path) {
        for _ in 0..50 {
            let mut any = false;
            let mut dirs = vec![dir.to_path_buf()];
            while let Some(d) = dirs.pop() {
                if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        any = true;
                        // SAFETY: plain syscall.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                if let Ok(rd) = fs::read_dir(&d) {
                    dirs.extend(
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
            if !any {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn remove_tree(dir: &Path) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove_tree(&e.path());
                }
            }
        }
        for _ in 0..100 {
            match fs::remove_dir(dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        Self::kill_all(&self.cgroup.dir);
        Self::remove_tree(&self.cgroup.dir);
    }
}

/// A network namespace made for one test (loopback up); deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let name = unique(&format!("kt-{name}"));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        run_ok(
            Command::new("ip").args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]),
        );
        ns
    }

    /// Runs a command inside the namespace and waits for it.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process, killed and reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where and how to start a process.
#[derive(Default, Clone, Copy)]
pub struct Place<'a> {
    pub cgroup: Option<&'a TestCgroup>,
    pub cgroup_path: Option<&'a Path>,
    pub netns: Option<&'a Netns>,
}

/// A command placed in a cgroup (joined before exec, so every socket it makes belongs to the
/// cgroup) and/or a network namespace.
pub fn command(place: Place<'_>, args: &[&str]) -> Command {
    let mut cmd = match place.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).args(args);
            c
        }
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    let procs = place
        .cgroup
        .map(|c| c.procs_file())
        .or_else(|| place.cgroup_path.map(|p| p.join("cgroup.procs")));
    if let Some(procs) = procs {
        // SAFETY: only async-signal-safe work between fork and exec (open/write/close).
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, "0"));
        }
    }
    cmd
}

pub fn spawn(place: Place<'_>, args: &[&str]) -> Proc {
    let child = command(place, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    Proc { child }
}

/// A free TCP port on loopback (bind to 0, then release).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `addr` (inside `netns` if given).
pub fn wait_for_port(addr: &str, netns: Option<&Netns>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = match netns {
            None => TcpStream::connect(addr).is_ok(),
            Some(ns) => Command::new("ip")
                .args(["netns", "exec", &ns.name, "python3", "-c"])
                .arg(format!(
                    "import socket,sys; h,p='{addr}'.rsplit(':',1); s=socket.create_connection((h.strip('[]'),int(p)),1)"
                ))
                .status()
                .is_ok_and(|s| s.success()),
        };
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The test HTTP server (`servers/httpd.py`).
pub fn python_httpd(place: Place<'_>, host: &str, port: u16, dualstack: bool) -> Proc {
    let script = dir().join("httpd.py");
    let port_s = port.to_string();
    let mut args = vec!["python3", script.to_str().unwrap(), host, &port_s];
    if dualstack {
        args.push("--dualstack");
    }
    let p = spawn(place, &args);
    let addr = if host.contains(':') {
        format!("[{}]:{port}", if host == "::" { "::1" } else { host })
    } else {
        format!(
            "{}:{port}",
            if host == "0.0.0.0" { "127.0.0.1" } else { host }
        )
    };
    wait_for_port(&addr, place.netns);
    p
}

/// Debian's nginx with a config made for the test: `/` small static answer, `/d/<ms>` delayed
/// answers (echo module, chunked), `/status/<code>`.
pub struct Nginx {
    pub proc: Proc,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn nginx(place: Place<'_>, port: u16) -> Nginx {
    let dir = std::env::temp_dir().join(unique("kite-nginx"));
    fs::create_dir_all(dir.join("logs")).unwrap();
    let echo = Path::new("/usr/lib/nginx/modules/ngx_http_echo_module.so");
    assert!(
        echo.exists(),
        "nginx echo module missing: apt-get install libnginx-mod-http-echo"
    );
    let mut delays = String::new();
    for ms in [1, 2, 5, 8, 10, 12, 14, 40, 50] {
        delays += &format!(
            "        location = /d/{ms} {{ echo_sleep {}; echo ok; }}\n",
            ms as f64 / 1000.0
        );
    }
    let mut statuses = String::new();
    for code in [200, 201, 404, 500, 503] {
        statuses += &format!(
            "        location = /status/{code} {{ default_type text/plain; return {code} \"status {code}\\n\"; }}\n"
        );
    }
    statuses += "        location = /status/302 { return 302 /moved; }\n";
    let conf = format!(
        "load_module {echo};\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
             access_log off;\n\
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
             uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             keepalive_requests 1000000;\n\
             server {{\n\
                 listen 127.0.0.1:{port};\n\
                 listen [::1]:{port};\n\
                 location = / {{ default_type text/plain; return 200 \"hello from nginx\\n\"; }}\n\
{statuses}\
{delays}\
             }}\n\
         }}\n",
        echo = echo.display(),
        d = dir.display(),
    );
    fs::write(dir.join("nginx.conf"), conf).unwrap();
    let conf_path = dir.join("nginx.conf");
    let check = Command::new("nginx")
        .args([
            "-t",
            "-q",
            "-e",
            "stderr",
            "-c",
            conf_path.to_str().unwrap(),
        ])
        .output()
        .expect("nginx (apt-get install nginx-light)");
    if !check.status.success() {
        let _ = fs::remove_dir_all(&dir);
        panic!("nginx config: {}", String::from_utf8_lossy(&check.stderr));
    }
    let proc = spawn(
        place,
        &["nginx", "-c", conf_path.to_str().unwrap(), "-e", "stderr"],
    );
    wait_for_port(&format!("127.0.0.1:{port}"), place.netns);
    Nginx { proc, dir }
}

/// What wrk reported (through `servers/count.lua`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Wrk {
    pub requests: u64,
    pub duration_us: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub timeouts: u64,
    pub status_errors: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub statuses: BTreeMap<String, u64>,
    #[serde(skip)]
    pub threads: u32,
    #[serde(skip)]
    pub started: Option<Instant>,
    #[serde(skip)]
    pub finished: Option<Instant>,
}

impl Wrk {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
    /// Mean time between requests on one connection, wrk's coordinated-omission interval.
    pub fn mean_interval_us(&self) -> f64 {
        self.duration_us as f64 / (self.requests as f64 / self.threads as f64)
    }
    pub fn socket_errors(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts
    }
}

/// Runs wrk with `threads` connections (one each), each stopping after `per_conn` responses,
/// cycling through `paths`. Extra headers like `Connection: close` go in `headers`.
pub fn wrk(
    place: Place<'_>,
    url: &str,
    threads: u32,
    per_conn: u64,
    paths: &[&str],
    headers: &[&str],
) -> Wrk {
    let script = dir().join("count.lua");
    let marker = std::env::temp_dir().join(unique("kite-wrk-done"));
    let t = threads.to_string();
    let per = per_conn.to_string();
    let mut args: Vec<&str> = vec![
        "wrk",
        "-t",
        &t,
        "-c",
        &t,
        "-d",
        "300s",
        "--timeout",
        "10s",
        "-s",
        script.to_str().unwrap(),
    ];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.extend([url, "--", &per, marker.to_str().unwrap()]);
    args.extend(paths);
    let started = Instant::now();
    let mut child = command(place, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wrk (apt-get install wrk)");
    // Every thread stopped after its count: end wrk's sleep (its SIGINT handler prints the
    // summary with the real run time).
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let done = fs::read_to_string(&marker).map_or(0, |s| s.lines().count());
        if done >= threads as usize || child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "wrk did not finish its requests");
        thread::sleep(Duration::from_millis(2));
    }
    let finished = Instant::now();
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wrk output");
    let _ = fs::remove_file(&marker);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("KITE_WRK "))
        .unwrap_or_else(|| panic!("no summary from wrk: {stdout}"));
    let mut w: Wrk = serde_json::from_str(line).expect("wrk summary JSON");
    w.started = Some(started);
    w.finished = Some(finished);
    w.threads = threads;
    w
}

/// A small blocking HTTP/1.1 client that times every request itself: from the write of the
/// request (or of the pipelined batch holding it) to the read that brought the first byte of
/// its response.
pub struct ClientReport {
    pub latencies: Vec<Duration>,
    pub statuses: BTreeMap<u16, u64>,
    pub started: Instant,
    pub finished: Instant,
}

impl ClientReport {
    pub fn requests(&self) -> u64 {
        self.latencies.len() as u64
    }
    pub fn rps(&self) -> f64 {
        self.requests() as f64 / (self.finished - self.started).as_secs_f64()
    }
    /// Nearest-rank quantile.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }
}

/// Options of [`client`].
#[derive(Clone)]
pub struct Load<'a> {
    pub addr: SocketAddr,
    pub conns: usize,
    pub per_conn: usize,
    pub depth: usize,
    pub paths: &'a [&'a str],
    /// `Connection: close` and a new connection per request.
    pub close: bool,
}

struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
    start: usize,
    /// Arrival time of every byte range read so far: (end offset, time).
    arrivals: Vec<(usize, Instant)>,
    consumed: usize,
}

impl Reader {
    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.s.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                self.arrivals
                    .push((self.consumed + self.buf.len() - self.start, Instant::now()));
                true
            }
        }
    }
    fn arrival_of_next_byte(&mut self) -> Instant {
        while self.buf.len() == self.start {
            assert!(self.fill(), "connection closed early");
        }
        let off = self.consumed;
        self.arrivals
            .iter()
            .find(|(end, _)| *end > off)
            .map(|(_, t)| *t)
            .expect("arrival")
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() - self.start < n {
            assert!(self.fill(), "connection closed early");
        }
        let out = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        self.consumed += n;
        if self.start > 1 << 20 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        out
    }
    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf[self.start..].windows(2).position(|w| w == b"\r\n") {
                let l = self.take(i + 2);
                return String::from_utf8_lossy(&l[..i]).into_owned();
            }
            assert!(self.fill(), "connection closed early");
        }
    }
    /// Reads one response; returns its status and when its first byte arrived.
    fn response(&mut self, head: bool) -> (u16, Instant) {
        let first = self.arrival_of_next_byte();
        let status_line = self.line();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let (mut len, mut chunked) = (None, false);
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        if head || status == 204 || status == 304 {
            return (status, first);
        }
        if chunked {
            loop {
                let size = usize::from_str_radix(self.line().split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    while !self.line().is_empty() {}
                    break;
                }
                self.take(size + 2);
            }
        } else {
            self.take(len.expect("a length"));
        }
        (status, first)
    }
}

pub fn client(load: &Load<'_>) -> ClientReport {
    let started = Instant::now();
    let per_thread: Vec<(Vec<Duration>, BTreeMap<u16, u64>)> = thread::scope(|s| {
        let handles: Vec<_> = (0..load.conns)
            .map(|c| {
                let load = load.clone();
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(load.per_conn);
                    let mut statuses = BTreeMap::new();
                    let connect = || {
                        let s = TcpStream::connect(load.addr).expect("connect");
                        s.set_nodelay(true).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                        Reader {
                            s,
                            buf: Vec::new(),
                            start: 0,
                            arrivals: Vec::new(),
                            consumed: 0,
                        }
                    };
                    let mut r = connect();
                    let mut i = 0;
                    while i < load.per_conn {
                        let n = load.depth.min(load.per_conn - i);
                        let mut batch = Vec::new();
                        for k in 0..n {
                            let path = load.paths[(c + i + k) % load.paths.len()];
                            let conn_hdr = if load.close {
                                "Connection: close\r\n"
                            } else {
                                ""
                            };
                            batch.extend_from_slice(
                                format!("GET {path} HTTP/1.1\r\nHost: kite-test\r\n{conn_hdr}\r\n")
                                    .as_bytes(),
                            );
                        }
                        let sent = Instant::now();
                        r.s.write_all(&batch).expect("write");
                        for _ in 0..n {
                            let (status, first) = r.response(false);
                            lat.push(first - sent);
                            *statuses.entry(status).or_default() += 1;
                        }
                        i += n;
                        if load.close && i < load.per_conn {
                            r = connect();
                        }
                    }
                    (lat, statuses)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let finished = Instant::now();
    let mut report = ClientReport {
        latencies: Vec::new(),
        statuses: BTreeMap::new(),
        started,
        finished,
    };
    for (l, st) in per_thread {
        report.latencies.extend(l);
        for (k, v) in st {
            *report.statuses.entry(k).or_default() += v;
        }
    }
    report
}

/// Kite attached to a cgroup, polled while load runs.
pub struct Watch {
    pub kite: Kite,
    collector: Collector,
    /// Per poll: (time, interval of the watched endpoint).
    polls: Vec<(Instant, Instant, Interval)>,
    target: Option<(Direction, u16)>,
    total: Interval,
    last_poll: Instant,
}

pub const POLL: Duration = Duration::from_millis(250);

impl Watch {
    pub fn new(cg: &TestCgroup) -> Self {
        Self::with_options(cg, Options::default())
    }

    pub fn with_options(cg: &TestCgroup, options: Options) -> Self {
        let mut kite = Kite::load(options).expect("load Kite's eBPF programs");
        kite.attach(&cg.cgroup).expect("attach");
        let now = Instant::now();
        Self {
            kite,
            collector: Collector::new(now, 8),
            polls: Vec::new(),
            target: None,
            total: Interval::default(),
            last_poll: now,
        }
    }

    /// Follow the endpoint with this direction and port (all cgroups, all addresses).
    pub fn target(&mut self, dir: Direction, port: u16) {
        self.target = Some((dir, port));
    }

    pub fn poll(&mut self) {
        let now = Instant::now();
        self.collector
            .update(now, self.kite.endpoints().expect("read endpoints"));
        let mut iv = Interval {
            secs: now.duration_since(self.last_poll).as_secs_f64(),
            ..Interval::default()
        };
        if let Some((dir, port)) = self.target {
            for ep in self.collector.endpoints() {
                let EndpointId {
                    direction, port: p, ..
                } = ep.id;
                if direction == dir && p == port {
                    iv.merge(&ep.last);
                }
            }
        }
        self.total.merge(&iv);
        self.polls.push((self.last_poll, now, iv));
        self.last_poll = now;
    }

    /// Runs `load` in a thread while polling every [`POLL`]; polls once more after it ended
    /// and the stragglers (release, FIN) had time to land.
    pub fn during<R: Send>(&mut self, load: impl FnOnce() -> R + Send) -> R {
        thread::scope(|s| {
            let h = s.spawn(load);
            while !h.is_finished() {
                thread::sleep(POLL);
                self.poll();
            }
            let r = h.join().unwrap();
            thread::sleep(Duration::from_millis(300));
            self.poll();
            r
        })
    }

    /// Everything seen on the target since attach.
    pub fn total(&self) -> &Interval {
        &self.total
    }

    /// RPS from Kite's own windows that lie inside [from, to] (steady state).
    pub fn windowed_rps(&self, from: Instant, to: Instant) -> f64 {
        let (mut n, mut secs) = (0u64, 0f64);
        for (a, b, iv) in &self.polls {
            if *a >= from && *b <= to {
                n += iv.requests;
                secs += iv.secs;
            }
        }
        assert!(secs > 1.0, "too few windows inside the load ({secs:.2} s)");
        n as f64 / secs
    }

    pub fn histogram(&self) -> &Histogram {
        &self.total.hist
    }

    pub fn counters(&self) -> [u64; STAT_COUNT as usize] {
        self.kite.counters().expect("counters")
    }

    pub fn counter(&self, s: Stat) -> u64 {
        self.counters()[s as usize]
    }

    pub fn endpoints(&self) -> Vec<EndpointId> {
        self.collector.endpoints().map(|e| e.id).collect()
    }

    pub fn collector(&self) -> &Collector {
        &self.collector
    }
}

/// `|a - b| / b <= tol`
pub fn assert_close(what: &str, kite: f64, truth: f64, tol: f64) {
    let err = (kite - truth).abs() / truth;
    assert!(
        err <= tol,
        "{what}: Kite {kite:.4} vs client {truth:.4}: {:.2}% off (allowed {:.0}%)",
        err * 100.0,
        tol * 100.0
    );
    eprintln!(
        "  {what}: Kite {kite:.4} client {truth:.4} ({:+.2}%)",
        (kite - truth) / truth * 100.0
    );
}

/// Kite's quantile (seconds).
pub fn kite_q(w: &Watch, q: f64) -> f64 {
    w.histogram().quantile(q).expect("some requests") / 1e9
}

/// One raw client connection for hand-made exchanges.
pub struct RawConn {
    r: Reader,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self {
            r: Reader {
                s,
                buf: Vec::new(),
                start: 0,
                arrivals: Vec::new(),
                consumed: 0,
            },
        }
    }

    /// Writes `parts` one `write` each, `gap` apart (so each is its own TCP segment), then
    /// reads the response. Returns (status, first write → first response byte).
    pub fn exchange(&mut self, parts: &[&[u8]], gap: Duration, head: bool) -> (u16, Duration) {
        let start = Instant::now();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                thread::sleep(gap);
            }
            self.r.s.write_all(p).expect("write");
        }
        let (status, first) = self.r.response(head);
        (status, first - start)
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
