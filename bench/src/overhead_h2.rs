//! HTTP/2 on the measured traffic (issue 13): h2load → nghttpd (prior-knowledge h2c) on
//! loopback, unmonitored, with the empty `cgroup_skb` program and with Kite on nghttpd's
//! cgroup; eBPF ns per stream from the kernel's run-time statistics, as the HTTP/1 rows.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use kite_testkit::{Place, TestCgroup, command, free_port, h2::nghttpd};

use crate::{
    median,
    overhead::{Attached, Opts},
    report,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Baseline,
    Empty,
    Kite,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Baseline, Mode::Empty, Mode::Kite];

    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "unmonitored",
            Mode::Empty => "empty cgroup_skb program",
            Mode::Kite => "Kite on nghttpd's cgroup",
        }
    }
}

/// What one h2load run reported.
struct Run {
    /// Streams that got a 2xx.
    succeeded: u64,
    /// Its own requests per second.
    rps: f64,
}

/// `h2load -D secs -c conns -m streams -t 1` (its own duration; no per-request log, which
/// would cost the client as much as the requests).
fn h2load(url: &str, secs: u64, conns: u32, streams: u32) -> Run {
    let (d, c, m) = (secs.to_string(), conns.to_string(), streams.to_string());
    let out = command(
        Place::default(),
        &[
            "timeout", "60", "h2load", "-D", &d, "-c", &c, "-m", &m, "-t", "1", url,
        ],
    )
    .output()
    .expect("h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    // `finished in 3.00s, 41234.67 req/s, …` and `requests: N total, N started, N done,
    // N succeeded, 0 failed, 0 errored, 0 timeout`.
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
        .unwrap_or_else(|| panic!("no `finished in` line: {text}"));
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("requests: "))
            .and_then(|l| {
                l.split(", ")
                    .find_map(|f| f.strip_suffix(name).map(|v| v.trim().parse().ok()))
            })
            .flatten()
            .unwrap_or_else(|| panic!("no `{name}` in h2load's `requests:` line: {text}"))
    };
    let (succeeded, failed, errored) = (field(" succeeded"), field(" failed"), field(" errored"));
    assert_eq!(failed + errored, 0, "h2load saw failures: {text}");
    Run { succeeded, rps }
}

#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    ns_per_stream: Vec<f64>,
    runs_per_stream: Vec<f64>,
}

/// Runs the HTTP/2 rows; returns their Markdown section.
pub fn run(o: &Opts) -> String {
    let cg = TestCgroup::new("bench-h2");
    let port = free_port();
    let _srv = nghttpd(Place::in_cgroup(&cg), port);
    let url = format!("http://127.0.0.1:{port}/");
    let shapes = [1u32, 10];
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### HTTP/2 (h2load → nghttpd)\n\n\
         h2load (1 thread, {} connections, prior-knowledge h2c, {} s per run) → nghttpd (1 \
         thread, a 19-byte file) in its own cgroup on loopback; one stream at a time per \
         connection (as wrk's requests above) and 10 at a time; {} rounds, modes rotating; \
         medians (spread: lowest–highest). eBPF ns/stream is the programs' kernel run time \
         (`kite_ingress`/`kite_egress` and the `kite_h2_*` they tail-call, the socket \
         programs) over h2load's succeeded streams.\n",
        o.conns, o.secs, o.rounds
    );
    for m in shapes {
        let mut out: BTreeMap<Mode, Samples> = BTreeMap::new();
        for round in 0..o.rounds {
            for k in 0..Mode::ALL.len() {
                let mode = Mode::ALL[(k + round) % Mode::ALL.len()];
                let att = match mode {
                    Mode::Baseline => Attached::default(),
                    Mode::Empty => Attached::empty(&cg),
                    Mode::Kite => Attached::kite(&cg),
                };
                let (t0, n0) = att.stats();
                let r = h2load(&url, o.secs, o.conns, m);
                let (t1, n1) = att.stats();
                let s = out.entry(mode).or_default();
                s.rps.push(r.rps);
                if mode != Mode::Baseline {
                    let n = r.succeeded.max(1) as f64;
                    s.ns_per_stream.push((t1 - t0).as_nanos() as f64 / n);
                    s.runs_per_stream.push((n1 - n0) as f64 / n);
                }
                eprintln!(
                    "  h2 -m {m} round {round}: {:<26} {:>9.0} streams/s",
                    mode.name(),
                    r.rps
                );
                drop(att);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let base = median(&mut out[&Mode::Baseline].rps.clone());
        let empty = median(&mut out[&Mode::Empty].ns_per_stream.clone());
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.0}–{hi:.0}")
        };
        let rows: Vec<Vec<String>> = out
            .iter()
            .map(|(mode, s)| {
                let rps = median(&mut s.rps.clone());
                let ns =
                    (!s.ns_per_stream.is_empty()).then(|| median(&mut s.ns_per_stream.clone()));
                vec![
                    mode.name().to_string(),
                    format!("{rps:.0}"),
                    format!("{:.3}×", rps / base),
                    ns.map_or("–".into(), |n| format!("{n:.0}")),
                    ns.map_or("–".into(), |_| spread(&s.ns_per_stream)),
                    ns.map_or("–".into(), |n| format!("{:.1}×", n / empty)),
                    if s.runs_per_stream.is_empty() {
                        "–".into()
                    } else {
                        format!("{:.2}", median(&mut s.runs_per_stream.clone()))
                    },
                ]
            })
            .collect();
        let _ = writeln!(
            md,
            "{m} stream{} at a time per connection:\n",
            if m == 1 { "" } else { "s" }
        );
        md += &report::table(
            &[
                "mode",
                "streams/s",
                "× unmonitored",
                "eBPF ns/stream",
                "spread",
                "× empty",
                "program runs/stream",
            ],
            &rows,
        );
    }
    md
}
