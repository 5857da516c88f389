//! What Kite costs the traffic it measures: wrk → nginx on loopback, unmonitored, with an
//! empty `cgroup_skb` program (the price of any such program), with Kite on nginx's cgroup,
//! with Kite on the root cgroup (both ends parsed), and with the peer a user would run
//! instead: haproxy as a sidecar proxy in nginx's cgroup, exporting the same RED metrics
//! through its Prometheus exporter.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kite_agent::ebpf::EmptyProgram;
use kite_testkit::{
    Place, Proc, TestCgroup, byte_sink, free_port, nginx, spawn, wait_for_port, wrk_for,
};

use crate::{cpu_time, median, report};

/// Options.
#[derive(clap::Args, Clone)]
#[group(id = "overhead")]
pub struct Opts {
    /// Rounds (each runs every mode once, in rotating order).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    pub conns: u32,
    /// Only the keep-alive shape (quicker, for iterating on the eBPF code).
    #[arg(long)]
    pub keep_alive_only: bool,
    /// Leave out the haproxy sidecar mode.
    #[arg(long)]
    pub no_proxy: bool,
    /// Another kite-loader build (e.g. a copy made before a change to the eBPF code): one more
    /// mode, on nginx's cgroup, alternating with the others, for an A/B comparison in one run.
    #[arg(long)]
    pub compare_loader: Option<PathBuf>,
    /// Only the HTTP/2 rows (h2load → nghttpd).
    #[arg(long)]
    pub h2_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Baseline,
    Empty,
    Kite,
    KiteRoot,
    Proxy,
    KiteB,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Baseline,
        Mode::Empty,
        Mode::Kite,
        Mode::KiteRoot,
        Mode::Proxy,
        Mode::KiteB,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "unmonitored",
            Mode::Empty => "empty cgroup_skb program",
            Mode::Kite => "Kite on nginx's cgroup",
            Mode::KiteRoot => "Kite on the root cgroup",
            Mode::Proxy => "haproxy sidecar (no Kite)",
            Mode::KiteB => "Kite (--compare-loader build)",
        }
    }
}

#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    ns_per_req: Vec<f64>,
    runs_per_req: Vec<f64>,
    /// The monitor's user-space CPU: kite-loader's, or haproxy's.
    loader_mcpu: Vec<f64>,
    /// The programs' kernel time per second of wall time.
    ebpf_mcpu: Vec<f64>,
}

/// The kite-loader binary built next to this one.
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe.parent().expect("exe dir").join(name);
    assert!(
        p.exists(),
        "{} not found: build it (cargo build --release -p kite-agent)",
        p.display()
    );
    p
}

pub(crate) struct Loader {
    child: Child,
}

impl Loader {
    pub(crate) fn start(cgroup: Option<&str>) -> Self {
        Self::start_from(&sibling("kite-loader"), cgroup, &[])
    }

    /// With OpenSSL probed (`--tls`), for the HTTPS row.
    fn start_tls(cgroup: Option<&str>) -> Self {
        Self::start_from(&sibling("kite-loader"), cgroup, &["--tls"])
    }

    fn start_from(exe: &std::path::Path, cgroup: Option<&str>, extra: &[&str]) -> Self {
        let mut cmd = Command::new(exe);
        cmd.args(["-s", "1", "bench"]).args(extra);
        if let Some(c) = cgroup {
            cmd.args(["--cgroup", c]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kite-loader");
        // The first line says the programs are attached.
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert!(line.contains("measuring"), "kite-loader: {line}");
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        Self { child }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// haproxy 2.6 as a sidecar in front of nginx: one thread (as nginx has one worker),
/// keep-alive to nginx, its built-in Prometheus exporter on `/metrics`.
pub struct Haproxy {
    proc: Proc,
    dir: PathBuf,
    /// Port clients use.
    pub port: u16,
}

impl Haproxy {
    fn start(cg: &TestCgroup, backend: u16) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(kite_testkit::unique("kite-haproxy"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = format!(
            "global\n    nbthread 1\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n\
             \x20   timeout server 30s\n    option http-keep-alive\n    http-reuse always\n\
             frontend fe\n    bind 127.0.0.1:{port}\n\
             \x20   http-request use-service prometheus-exporter if {{ path /metrics }}\n\
             \x20   default_backend be\n\
             backend be\n    server nginx 127.0.0.1:{backend}\n"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, conf).unwrap();
        let check = Command::new("haproxy")
            .args(["-c", "-q", "-f", path.to_str().unwrap()])
            .output()
            .expect("haproxy (apt-get install haproxy)");
        assert!(
            check.status.success(),
            "haproxy config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let proc = spawn(
            Place {
                cgroup: Some(cg),
                ..Place::default()
            },
            &["haproxy", "-db", "-f", path.to_str().unwrap()],
        );
        wait_for_port(&format!("127.0.0.1:{port}"), None);
        let h = Self { proc, dir, port };
        // The exporter answers with haproxy's own request counters.
        let m = h.metrics();
        assert!(
            m.contains("haproxy_frontend_http_requests_total"),
            "haproxy /metrics: {}",
            &m[..m.len().min(300)]
        );
        h
    }

    /// One scrape of the exporter.
    fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    /// Requests haproxy counted on its frontend (its exporter's figure).
    fn requests(&self) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with("haproxy_frontend_http_requests_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn pid(&self) -> u32 {
        self.proc.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a mode attached to the measured cgroup: nothing, the empty program, or Kite (with
/// the ids of the programs its loader loaded: other people's Kite instances are not counted).
#[derive(Default)]
pub(crate) struct Attached {
    empty: Option<EmptyProgram>,
    _loader: Option<Loader>,
    ours: std::collections::BTreeSet<u32>,
}

impl Attached {
    /// The empty program on `cg`.
    pub(crate) fn empty(cg: &TestCgroup) -> Self {
        Self {
            empty: Some(EmptyProgram::attach(&cg.cgroup).expect("empty program")),
            ..Self::default()
        }
    }

    /// Kite on `cg`.
    pub(crate) fn kite(cg: &TestCgroup) -> Self {
        let before = kite_programs();
        let loader = Loader::start(Some(&cg.cgroup.path));
        let ours = kite_programs().difference(&before).copied().collect();
        Self {
            empty: None,
            _loader: Some(loader),
            ours,
        }
    }

    /// Run time and run count of the attached programs so far.
    pub(crate) fn stats(&self) -> (Duration, u64) {
        match &self.empty {
            Some(e) => {
                let s = e.stats();
                (s.run_time, s.run_count)
            }
            None => bpf_stats(&self.ours),
        }
    }
}

/// Ids of the loaded programs whose name starts with `kite_`, the empty one left out.
pub(crate) fn kite_programs() -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| {
            let n = p.name_as_str().unwrap_or_default();
            n.starts_with("kite_") && n != "kite_empty"
        })
        .map(|p| p.id())
        .collect()
}

/// Run time and run count of the programs `ids`, per the kernel's BPF statistics.
pub(crate) fn bpf_stats(ids: &std::collections::BTreeSet<u32>) -> (Duration, u64) {
    let mut t = Duration::ZERO;
    let mut n = 0;
    for p in aya::programs::loaded_programs().flatten() {
        if ids.contains(&p.id()) {
            t += p.run_time();
            n += p.run_count();
        }
    }
    (t, n)
}

fn run_shape(
    o: &Opts,
    cg: &TestCgroup,
    port: u16,
    proxy: Option<&Haproxy>,
    close: bool,
) -> BTreeMap<Mode, Samples> {
    let url = format!("http://127.0.0.1:{port}/");
    let headers: &[&str] = if close { &["Connection: close"] } else { &[] };
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| *m != Mode::Proxy || proxy.is_some())
        .filter(|m| *m != Mode::KiteB || o.compare_loader.is_some())
        .collect();
    let mut out: BTreeMap<Mode, Samples> = BTreeMap::new();
    for round in 0..o.rounds {
        for k in 0..modes.len() {
            let mode = modes[(k + round) % modes.len()];
            let mut empty = None;
            let mut loader = None;
            // The programs this mode loaded (other people's Kite instances on the machine
            // are not counted).
            let mut ours = std::collections::BTreeSet::new();
            let mut url = url.clone();
            match mode {
                Mode::Baseline => {}
                Mode::Empty => {
                    empty = Some(EmptyProgram::attach(&cg.cgroup).expect("empty program"))
                }
                Mode::Kite | Mode::KiteRoot | Mode::KiteB => {
                    let before = kite_programs();
                    let cgroup = (mode != Mode::KiteRoot).then_some(cg.cgroup.path.as_str());
                    loader = Some(match (&o.compare_loader, mode) {
                        (Some(exe), Mode::KiteB) => Loader::start_from(exe, cgroup, &[]),
                        _ => Loader::start(cgroup),
                    });
                    ours = kite_programs().difference(&before).copied().collect();
                }
                Mode::Proxy => {
                    url = format!("http://127.0.0.1:{}/", proxy.unwrap().port);
                }
            }
            let bpf = |empty: &Option<EmptyProgram>| match empty {
                Some(e) => {
                    let s = e.stats();
                    (s.run_time, s.run_count)
                }
                None => bpf_stats(&ours),
            };
            let (t0, n0) = bpf(&empty);
            let monitor = match (&loader, mode) {
                (Some(l), _) => Some(l.child.id()),
                (None, Mode::Proxy) => proxy.map(Haproxy::pid),
                _ => None,
            };
            let cpu0 = monitor.map(cpu_time);
            let counted0 = if mode == Mode::Proxy {
                proxy.and_then(Haproxy::requests)
            } else {
                None
            };
            let started = Instant::now();
            let w = wrk_for(
                Place::default(),
                &url,
                2,
                o.conns,
                Duration::from_secs(o.secs),
                headers,
            );
            let wall = started.elapsed().as_secs_f64();
            let (t1, n1) = bpf(&empty);
            assert_eq!(
                w.status_errors + w.connect_errors + w.read_errors + w.timeouts,
                0,
                "{}: wrk saw errors",
                mode.name()
            );
            if let (Some(c0), Some(c1)) = (counted0, proxy.and_then(Haproxy::requests)) {
                // haproxy's exporter saw the traffic (wrk's requests, give or take those in
                // flight at the end and this scrape).
                assert!(
                    (c1 - c0) >= w.requests as f64 * 0.99,
                    "haproxy counted {} of wrk's {} requests",
                    c1 - c0,
                    w.requests
                );
            }
            let s = out.entry(mode).or_default();
            s.rps.push(w.rps());
            s.p50_us.push(w.p50_us);
            s.p99_us.push(w.p99_us);
            if mode != Mode::Baseline && mode != Mode::Proxy {
                let req = w.requests.max(1) as f64;
                s.ns_per_req.push((t1 - t0).as_nanos() as f64 / req);
                s.runs_per_req.push((n1 - n0) as f64 / req);
                s.ebpf_mcpu.push((t1 - t0).as_secs_f64() / wall * 1000.0);
            }
            if let (Some(pid), Some(c0)) = (monitor, cpu0) {
                s.loader_mcpu
                    .push((cpu_time(pid) - c0).as_secs_f64() / wall * 1000.0);
            }
            eprintln!(
                "  {} round {round}: {:<26} {:>9.0} rps",
                if close { "close" } else { "keep-alive" },
                mode.name(),
                w.rps()
            );
            drop(loader);
            drop(empty);
        }
    }
    out
}

/// Runs the overhead benchmark; returns its Markdown section.
pub fn run(o: &Opts) -> String {
    if o.h2_only {
        return format!(
            "## Overhead on the measured traffic\n\n{}",
            crate::overhead_h2::run(o)
        );
    }
    let cg = TestCgroup::new("bench-overhead");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let proxy = (!o.no_proxy).then(|| Haproxy::start(&cg, port));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Overhead on the measured traffic\n\n\
         wrk (2 threads, {} connections, {} s per run) → nginx (1 worker, a 17-byte `return 200`) \
         on loopback; {} rounds, every mode once per round in rotating order; medians. \
         RPS × is against the unmonitored runs of the same invocation. eBPF ns/request is the \
         kernel's BPF run time of the programs divided by wrk's requests (all packets of a \
         request: request, response, ACKs, and for one-per-connection the handshake and close), \
         and × empty the same against the empty program's; the empty program's row is what any \
         `cgroup_skb` program costs here. The haproxy row is the sidecar a user would run \
         instead: haproxy 2.6 (1 thread, keep-alive to nginx, its Prometheus exporter on \
         `/metrics`) in nginx's cgroup, wrk sending to it. Monitor mCPU is the monitor's own \
         CPU per second of wall time (kite-loader's, or haproxy's); eBPF mCPU the programs' \
         kernel time per second (Kite's cost outside its process).\n",
        o.conns, o.secs, o.rounds
    );
    let shapes: &[bool] = if o.keep_alive_only {
        &[false]
    } else {
        &[false, true]
    };
    for &close in shapes {
        let res = run_shape(o, &cg, port, proxy.as_ref(), close);
        let base = median(&mut res[&Mode::Baseline].rps.clone());
        let empty_ns = res
            .get(&Mode::Empty)
            .map(|s| median(&mut s.ns_per_req.clone()));
        let rows: Vec<Vec<String>> = res
            .iter()
            .map(|(mode, s)| {
                let m = |v: &Vec<f64>, prec: usize| {
                    if v.is_empty() {
                        "–".to_string()
                    } else {
                        format!("{:.*}", prec, median(&mut v.clone()))
                    }
                };
                let rps = median(&mut s.rps.clone());
                vec![
                    mode.name().to_string(),
                    format!("{rps:.0}"),
                    format!("{:.3}×", rps / base),
                    format!("{} µs", m(&s.p50_us, 0)),
                    format!("{} µs", m(&s.p99_us, 0)),
                    m(&s.ns_per_req, 0),
                    match (s.ns_per_req.is_empty(), empty_ns) {
                        (false, Some(e)) if e > 0.0 => {
                            format!("{:.1}×", median(&mut s.ns_per_req.clone()) / e)
                        }
                        _ => "–".into(),
                    },
                    m(&s.runs_per_req, 1),
                    m(&s.loader_mcpu, 1),
                    m(&s.ebpf_mcpu, 1),
                ]
            })
            .collect();
        let _ = writeln!(
            md,
            "### {}\n",
            if close {
                "One request per connection (`Connection: close`)"
            } else {
                "Keep-alive"
            }
        );
        md += &report::table(
            &[
                "mode",
                "RPS",
                "RPS ×",
                "p50",
                "p99",
                "eBPF ns/request",
                "× empty",
                "program runs/request",
                "monitor mCPU",
                "eBPF mCPU",
            ],
            &rows,
        );
    }
    md += &crate::overhead_h2::run(o);
    md += &bulk(o, &cg);
    md += &tls(o);
    md
}

/// Bytes of one bulk transfer.
const BULK: usize = 64 << 20;

/// A non-HTTP bulk transfer into the measured cgroup (a sink in nginx's cgroup; the stream
/// starts like TLS): Kite's ns per program run against the empty program's.
fn bulk(o: &Opts, cg: &TestCgroup) -> String {
    let port = free_port();
    let _sink = byte_sink(Place::in_cgroup(cg), port);
    let transfer = || {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut chunk = vec![0x5a_u8; 64 << 10];
        chunk[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
        for _ in 0..BULK / chunk.len() {
            c.write_all(&chunk).unwrap();
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, BULK.to_string(), "the sink got every byte");
    };
    let modes = [Mode::Empty, Mode::Kite];
    let mut per_run: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    let mut runs: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    for round in 0..o.rounds {
        for k in 0..modes.len() {
            let mode = modes[(k + round) % modes.len()];
            let att = if mode == Mode::Empty {
                Attached::empty(cg)
            } else {
                Attached::kite(cg)
            };
            let (t0, n0) = att.stats();
            transfer();
            let (t1, n1) = att.stats();
            let n = (n1 - n0).max(1) as f64;
            per_run
                .entry(mode)
                .or_default()
                .push((t1 - t0).as_nanos() as f64 / n);
            runs.entry(mode)
                .or_default()
                .push(n / (BULK as f64 / f64::from(1 << 20)));
            drop(att);
        }
    }
    let empty = median(&mut per_run[&Mode::Empty].clone());
    let rows: Vec<Vec<String>> = modes
        .iter()
        .map(|m| {
            let ns = median(&mut per_run[m].clone());
            vec![
                m.name().to_string(),
                format!("{ns:.0}"),
                format!("{:.2}×", ns / empty),
                format!("{:.0}", median(&mut runs[m].clone())),
            ]
        })
        .collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### A non-HTTP connection (bulk transfer)\n\n\
         One connection a round carrying {} MiB in 64 KiB writes into a sink in nginx's cgroup \
         (the stream starts like a TLS record, so Kite judges it not HTTP at its first byte); \
         {} rounds alternating; ns per program run (data segments and the sink's ACKs), \
         medians.\n",
        BULK >> 20,
        o.rounds
    );
    md += &report::table(&["mode", "ns/run", "× empty", "program runs/MiB"], &rows);
    md
}

/// HTTPS (issue 14): wrk → nginx with `ssl` in its own cgroup, unmonitored, with the empty
/// program, with Kite (its packet programs judge the TLS connections, its uprobes on libssl
/// parse the plaintext): RPS, and eBPF ns per request of every Kite program (uprobes and
/// tracepoints included) beside the empty program's.
fn tls(o: &Opts) -> String {
    let certs = kite_testkit::tls::Certs::new();
    let cg = TestCgroup::new("bench-tls");
    let port = free_port();
    let _nginx = kite_testkit::tls::nginx_tls(Place::in_cgroup(&cg), port, &certs);
    let url = format!("https://127.0.0.1:{port}/");
    let modes = [Mode::Baseline, Mode::Empty, Mode::Kite];
    let mut out: BTreeMap<Mode, Samples> = BTreeMap::new();
    for round in 0..o.rounds {
        for k in 0..modes.len() {
            let mode = modes[(k + round) % modes.len()];
            let (mut empty, mut loader, mut ours) = (None, None, Default::default());
            match mode {
                Mode::Empty => {
                    empty = Some(EmptyProgram::attach(&cg.cgroup).expect("empty program"))
                }
                Mode::Kite => {
                    let before = kite_programs();
                    loader = Some(Loader::start_tls(Some(&cg.cgroup.path)));
                    // Its first TLS scan (right after it says it measures) loads the uprobes.
                    std::thread::sleep(Duration::from_millis(1500));
                    ours = kite_programs().difference(&before).copied().collect();
                }
                _ => {}
            }
            let stats = |empty: &Option<EmptyProgram>| match empty {
                Some(e) => {
                    let s = e.stats();
                    (s.run_time, s.run_count)
                }
                None => bpf_stats(&ours),
            };
            let (t0, _) = stats(&empty);
            let w = wrk_for(
                Place::default(),
                &url,
                2,
                o.conns,
                Duration::from_secs(o.secs),
                &[],
            );
            let (t1, _) = stats(&empty);
            assert_eq!(
                w.socket_errors() + w.status_errors,
                0,
                "https: wrk saw errors"
            );
            let s = out.entry(mode).or_default();
            s.rps.push(w.rps());
            s.p50_us.push(w.p50_us);
            if mode != Mode::Baseline {
                s.ns_per_req
                    .push((t1 - t0).as_nanos() as f64 / w.requests.max(1) as f64);
            }
            eprintln!(
                "  https round {round}: {:<26} {:>9.0} rps",
                mode.name(),
                w.rps()
            );
            drop(loader);
            drop(empty);
        }
    }
    let base = median(&mut out[&Mode::Baseline].rps.clone());
    let empty = median(&mut out[&Mode::Empty].ns_per_req.clone());
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|(mode, s)| {
            let rps = median(&mut s.rps.clone());
            let ns = (!s.ns_per_req.is_empty()).then(|| median(&mut s.ns_per_req.clone()));
            vec![
                mode.name().to_string(),
                format!("{rps:.0}"),
                format!("{:.3}×", rps / base),
                format!("{:.0} µs", median(&mut s.p50_us.clone())),
                ns.map_or("–".into(), |n| format!("{n:.0}")),
                ns.map_or("–".into(), |n| format!("{:.1}×", n / empty)),
            ]
        })
        .collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### HTTPS (TLS through OpenSSL)\n\n\
         wrk (2 threads, {} connections, {} s per run) → nginx with `ssl` (1 worker, keep-alive) \
         in its own cgroup; {} rounds rotating; medians. Kite's eBPF ns/request counts all its \
         programs: the packet programs (a judged TLS socket costs one lookup a packet), the \
         uprobes on `SSL_read`/`SSL_write` (entry and return) and the socket tracepoints.\n",
        o.conns, o.secs, o.rounds
    );
    md += &report::table(
        &["mode", "RPS", "RPS ×", "p50", "eBPF ns/request", "× empty"],
        &rows,
    );
    md
}
