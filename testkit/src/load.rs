//! Load generators: wrk (with exact counts) and a timing client.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use crate::{Place, command, dir, unique};

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
    /// Samples (wrk's, corrected ones included) at or above twice
    /// [`Wrk::mean_interval_us`], counted from the top up to 200.
    #[serde(default)]
    pub over_2x: u64,
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
    /// Samples wrk's coordinated-omission correction may have added: a sample `x` at or
    /// above twice the interval `E` brings at most `x / E - 1` more (at `x - E`, `x - 2E`,
    /// ...), and no sample is above the max.
    pub fn corrected_bound(&self) -> u64 {
        let e = self.mean_interval_us();
        if self.max_us < 2.0 * e {
            return 0;
        }
        let per = (self.max_us / e - 1.0).floor().max(1.0) as u64;
        self.over_2x.max(1) * per
    }

    /// Whether wrk's percentiles are its measured ones, near enough to compare with: wrk
    /// corrects for coordinated omission by adding samples for each one at or above twice
    /// its mean interval; when what it may have added is at most 1.5 % of the requests (a
    /// few slow outliers on a busy host: 7 of 1 200 at 3× the interval were seen), every
    /// percentile moves by less than that in rank — p99 is then read between p97.5 and p99,
    /// inside the tests' 10 % on the distributions they use.
    pub fn percentiles_comparable(&self) -> bool {
        self.corrected_bound() as f64 <= 0.015 * self.requests as f64
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

/// Runs wrk for a fixed time (`threads` threads, `conns` connections) and returns its summary.
/// For benchmarks: counts are not exact (requests in flight at the end are cut off).
pub fn wrk_for(
    place: Place<'_>,
    url: &str,
    threads: u32,
    conns: u32,
    duration: Duration,
    headers: &[&str],
) -> Wrk {
    let script = dir().join("summary.lua");
    let (t, c) = (threads.to_string(), conns.to_string());
    let d = format!("{}s", duration.as_secs().max(1));
    let mut args: Vec<&str> = vec![
        "wrk",
        "-t",
        &t,
        "-c",
        &c,
        "-d",
        &d,
        "-s",
        script.to_str().unwrap(),
    ];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    let started = Instant::now();
    let out = command(place, &args).output().expect("run wrk");
    let finished = Instant::now();
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
    /// The index in [`Load::paths`] of each latency's request.
    pub path_of: Vec<usize>,
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
    /// More server addresses: each new connection goes to the next one (with `addr` first).
    pub more_addrs: &'a [SocketAddr],
    /// Each connection sends at most one batch per `pace` (a fixed request rate).
    pub pace: Option<Duration>,
    /// Stop early at this time.
    pub deadline: Option<Instant>,
    /// Connection `c`'s `i`-th request takes path `(c·stride + i) mod len` (0: `c + i`, every
    /// connection walking the same few paths; `per_conn`: every request its own path).
    pub stride: usize,
}

impl Default for Load<'_> {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            conns: 1,
            per_conn: 1,
            depth: 1,
            paths: &["/"],
            close: false,
            more_addrs: &[],
            pace: None,
            deadline: None,
            stride: 0,
        }
    }
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
    type PerThread = (Vec<Duration>, Vec<usize>, BTreeMap<u16, u64>);
    let per_thread: Vec<PerThread> = thread::scope(|s| {
        let handles: Vec<_> = (0..load.conns)
            .map(|c| {
                let load = load.clone();
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(load.per_conn.min(1 << 20));
                    let mut path_of = Vec::with_capacity(load.per_conn.min(1 << 20));
                    let mut statuses = BTreeMap::new();
                    let mut nth_conn = c;
                    let mut connect = || {
                        let addr = if load.more_addrs.is_empty() {
                            load.addr
                        } else {
                            let k = nth_conn % (load.more_addrs.len() + 1);
                            nth_conn += load.conns;
                            if k == 0 {
                                load.addr
                            } else {
                                load.more_addrs[k - 1]
                            }
                        };
                        let s = TcpStream::connect(addr).expect("connect");
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
                    let mut next = Instant::now();
                    while i < load.per_conn && load.deadline.is_none_or(|d| Instant::now() < d) {
                        if let Some(p) = load.pace {
                            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                                thread::sleep(wait);
                            }
                            next += p;
                        }
                        let n = load.depth.min(load.per_conn - i);
                        let mut batch = Vec::new();
                        let first_path = c * load.stride.max(1) + i;
                        for k in 0..n {
                            let j = (first_path + k) % load.paths.len();
                            path_of.push(j);
                            let path = load.paths[j];
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
                    (lat, path_of, statuses)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let finished = Instant::now();
    let mut report = ClientReport {
        latencies: Vec::new(),
        path_of: Vec::new(),
        statuses: BTreeMap::new(),
        started,
        finished,
    };
    for (l, p, st) in per_thread {
        report.latencies.extend(l);
        report.path_of.extend(p);
        for (k, v) in st {
            *report.statuses.entry(k).or_default() += v;
        }
    }
    report
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
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
