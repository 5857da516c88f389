//! What Kite costs the traffic it measures: wrk → nginx on loopback, unmonitored, with an
//! empty `cgroup_skb` program (the price of any such program), with Kite on nginx's cgroup,
//! and with Kite on the root cgroup (both ends parsed).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kite_agent::ebpf::EmptyProgram;
use kite_testkit::{Place, TestCgroup, free_port, nginx, wrk_for};

use crate::{cpu_time, kite_bpf_stats, median, report};

/// Options.
#[derive(clap::Args, Clone)]
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Baseline,
    Empty,
    Kite,
    KiteRoot,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Baseline, Mode::Empty, Mode::Kite, Mode::KiteRoot];

    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "unmonitored",
            Mode::Empty => "empty cgroup_skb program",
            Mode::Kite => "Kite on nginx's cgroup",
            Mode::KiteRoot => "Kite on the root cgroup",
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
    loader_mcpu: Vec<f64>,
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

struct Loader {
    child: Child,
}

impl Loader {
    fn start(cgroup: Option<&str>) -> Self {
        let mut cmd = Command::new(sibling("kite-loader"));
        cmd.args(["-s", "1", "bench"]);
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

fn run_shape(o: &Opts, cg: &TestCgroup, port: u16, close: bool) -> BTreeMap<Mode, Samples> {
    let url = format!("http://127.0.0.1:{port}/");
    let headers: &[&str] = if close { &["Connection: close"] } else { &[] };
    let mut out: BTreeMap<Mode, Samples> = BTreeMap::new();
    for round in 0..o.rounds {
        for k in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(k + round) % Mode::ALL.len()];
            let mut empty = None;
            let mut loader = None;
            match mode {
                Mode::Baseline => {}
                Mode::Empty => {
                    empty = Some(EmptyProgram::attach(&cg.cgroup).expect("empty program"))
                }
                Mode::Kite => loader = Some(Loader::start(Some(&cg.cgroup.path))),
                Mode::KiteRoot => loader = Some(Loader::start(None)),
            }
            let bpf = |empty: &Option<EmptyProgram>| match empty {
                Some(e) => {
                    let s = e.stats();
                    (s.run_time, s.run_count)
                }
                None => kite_bpf_stats(),
            };
            let (t0, n0) = bpf(&empty);
            let cpu0 = loader.as_ref().map(|l| cpu_time(l.child.id()));
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
            let s = out.entry(mode).or_default();
            s.rps.push(w.rps());
            s.p50_us.push(w.p50_us);
            s.p99_us.push(w.p99_us);
            if mode != Mode::Baseline {
                let req = w.requests.max(1) as f64;
                s.ns_per_req.push((t1 - t0).as_nanos() as f64 / req);
                s.runs_per_req.push((n1 - n0) as f64 / req);
            }
            if let (Some(l), Some(c0)) = (&loader, cpu0) {
                s.loader_mcpu
                    .push((cpu_time(l.child.id()) - c0).as_secs_f64() / wall * 1000.0);
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
    let cg = TestCgroup::new("bench-overhead");
    let port = free_port();
    let _nginx = nginx(
        Place {
            cgroup: Some(&cg),
            ..Place::default()
        },
        port,
    );
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Overhead on the measured traffic\n\n\
         wrk (2 threads, {} connections, {} s per run) → nginx (1 worker, a 17-byte `return 200`) \
         on loopback; {} rounds, every mode once per round in rotating order; medians. \
         RPS × is against the unmonitored runs of the same invocation. eBPF ns/request is the \
         kernel's BPF run time of the programs divided by wrk's requests (all packets of a \
         request: request, response, ACKs, and for one-per-connection the handshake and close); \
         the empty program's row is what any `cgroup_skb` program costs here.\n",
        o.conns, o.secs, o.rounds
    );
    let shapes: &[bool] = if o.keep_alive_only {
        &[false]
    } else {
        &[false, true]
    };
    for &close in shapes {
        let res = run_shape(o, &cg, port, close);
        let base = median(&mut res[&Mode::Baseline].rps.clone());
        let rows: Vec<Vec<String>> = res
            .iter()
            .map(|(mode, s)| {
                let m = |v: &Vec<f64>| {
                    if v.is_empty() {
                        "–".to_string()
                    } else {
                        format!("{:.0}", median(&mut v.clone()))
                    }
                };
                let rps = median(&mut s.rps.clone());
                vec![
                    mode.name().to_string(),
                    format!("{rps:.0}"),
                    format!("{:.3}×", rps / base),
                    format!("{} µs", m(&s.p50_us)),
                    format!("{} µs", m(&s.p99_us)),
                    m(&s.ns_per_req),
                    if s.runs_per_req.is_empty() {
                        "–".into()
                    } else {
                        format!("{:.1}", median(&mut s.runs_per_req.clone()))
                    },
                    if s.loader_mcpu.is_empty() {
                        "–".into()
                    } else {
                        format!("{:.1}", median(&mut s.loader_mcpu.clone()))
                    },
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
                "program runs/request",
                "kite-loader mCPU",
            ],
            &rows,
        );
    }
    md
}
