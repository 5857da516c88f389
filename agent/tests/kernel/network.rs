//! Kite over a real, imperfect network: two network namespaces joined through
//! `kite_testkit::impair::Link`, a user-space forwarder that loses, reorders, delays and holds
//! back segments. Loopback never does any of that, so these are the tests of Kite's stream
//! logic against what TCP really puts on a wire between nodes.
//!
//! The server always runs in namespace B (`Link::B_ADDR`), the client in namespace A. Inbound
//! tests start the server inside the measured cgroup; outbound tests start the client there.
//! The client is `servers/client.py` (a process, so it can be placed in the cgroup): it times
//! every request from the write of its batch to the read that brought its response's first
//! byte, and reports method and status per request.
//!
//! Latency is compared at p50 only, against servers with a known delay ([`DELAY_MS`]).

use std::{
    collections::BTreeMap,
    fs,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use kite_common::{
    http::QUEUE_DEPTH,
    maps::{Direction, Stat},
};
use kite_testkit::{
    impair::{Counts, Dir, Impair, Link, Rule},
    *,
};

/// Server delay of every timed request, in ms.
///
/// Inbound, Kite times a request at the server's socket while the client also counts the
/// link: 2 × 1 ms of delay, reordering holds, the forwarder, and the retransmission of a lost
/// first segment, which shifts a tail of requests by 10–200 ms that the server never sees.
/// All requests therefore get the same delay: then that tail moves the client's p50 by its
/// round trip only (≈ 2–3 ms, ≈ 2 % of 146 ms), while a spread of delays would let it pull the
/// median through the spread. 146 ms is in the middle of one of Kite's histogram buckets
/// (142.6–151.0 ms, 1/16 of an octave wide), so Kite's interpolated p50 is not pushed to a
/// bucket edge either. With 50 connections in parallel, 2000 requests take ≈ 6 s.
const DELAY_MS: u32 = 146;
const LATENCY_TOL: f64 = 0.05;
const PORT: u16 = 8080;

/// One request of a plan (see `servers/client.py`).
struct Req {
    m: &'static str,
    p: String,
    body: usize,
    /// Body made of `GET / HTTP/1.1\r\n` lines (else `x`s).
    lines: bool,
}

fn req(m: &'static str, p: impl Into<String>) -> Req {
    Req {
        m,
        p: p.into(),
        body: 0,
        lines: false,
    }
}

/// Connections, each a list of batches (one write each), each a list of requests.
struct Plan {
    parallel: usize,
    conns: Vec<Vec<Vec<Req>>>,
}

impl Plan {
    fn requests(&self) -> usize {
        self.conns.iter().flatten().map(Vec::len).sum()
    }

    fn json(&self) -> String {
        let conns: Vec<serde_json::Value> = self
            .conns
            .iter()
            .map(|batches| {
                batches
                    .iter()
                    .map(|b| {
                        b.iter()
                            .map(|r| {
                                serde_json::json!({
                                    "m": r.m, "p": r.p, "body": r.body,
                                    "fill": if r.lines { "lines" } else { "x" },
                                })
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect()
            })
            .collect();
        serde_json::json!({ "parallel": self.parallel, "conns": conns }).to_string()
    }
}

/// What the client saw.
struct Outcome {
    /// (method, status, latency) per request.
    results: Vec<(String, u16, Duration)>,
}

/// The method as Kite records it: the known methods by name, anything else `_OTHER`.
fn kite_method(m: &str) -> String {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if KNOWN.contains(&m) { m } else { "_OTHER" }.to_string()
}

impl Outcome {
    fn by_method_status(&self) -> BTreeMap<(String, u16), u64> {
        let mut m = BTreeMap::new();
        for (method, status, _) in &self.results {
            *m.entry((kite_method(method), *status)).or_default() += 1;
        }
        m
    }

    /// Mean latency, seconds.
    fn mean(&self) -> f64 {
        self.results.iter().map(|r| r.2.as_secs_f64()).sum::<f64>() / self.results.len() as f64
    }

    /// Nearest-rank quantile, seconds.
    fn quantile(&self, q: f64) -> f64 {
        let mut v: Vec<Duration> = self.results.iter().map(|r| r.2).collect();
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1].as_secs_f64()
    }
}

/// Runs `client.py` with `plan` against the server in B, placed as `place` says.
fn run_client(place: Place<'_>, plan: &Plan) -> Outcome {
    let path = std::env::temp_dir().join(unique("kite-plan"));
    fs::write(&path, plan.json()).unwrap();
    let script = dir().join("client.py");
    let port = PORT.to_string();
    let host = Link::B_ADDR.to_string();
    let out = command(
        place,
        &[
            "python3",
            script.to_str().unwrap(),
            &host,
            &port,
            path.to_str().unwrap(),
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .output()
    .expect("run client.py");
    let _ = fs::remove_file(&path);
    assert!(
        out.status.success(),
        "client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("client.py JSON");
    let errors = v["errors"].as_array().unwrap();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    let results = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_u64().unwrap() as u16,
                Duration::from_nanos(r[2].as_u64().unwrap()),
            )
        })
        .collect();
    Outcome { results }
}

/// Kite's counts of the watched endpoint, per (method, status).
fn kite_counts(w: &Watch, dir: Direction) -> BTreeMap<(String, u16), u64> {
    let mut m = BTreeMap::new();
    for ep in w.collector().endpoints() {
        if ep.id.direction == dir && ep.id.port == PORT {
            for ((method, status, ..), s) in ep.totals.iter() {
                if s.count > 0 {
                    *m.entry((method.as_str().to_string(), *status)).or_default() += s.count;
                }
            }
        }
    }
    m
}

/// Connection state Kite holds (all cgroups).
fn socket_state(w: &Watch) -> usize {
    w.kite.sockets().expect("read socket state").len()
}

/// Waits (≤ 5 s) for the connection state to return to `baseline`; returns what is left.
fn settle_socket_state(w: &Watch, baseline: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket_state(w) != baseline && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    socket_state(w)
}

fn print_counters(w: &Watch) {
    let c = w.counters();
    let nonzero: Vec<String> = Stat::ALL
        .iter()
        .filter(|s| c[**s as usize] > 0)
        .map(|s| format!("{s:?}={}", c[*s as usize]))
        .collect();
    eprintln!("  Kite counters: {}", nonzero.join(" "));
}

fn print_link(link: &Link) -> (Counts, Counts) {
    let (ab, ba) = (link.counts(Dir::AtoB), link.counts(Dir::BtoA));
    eprintln!("  link A→B (requests): {ab:?}\n  link B→A (responses): {ba:?}");
    assert_eq!(
        ab.write_errors + ba.write_errors,
        0,
        "the forwarder could not write"
    );
    assert_eq!(
        link.kernel_drops(),
        0,
        "the tun devices lost packets nobody asked for"
    );
    (ab, ba)
}

/// Everything one test made, dropped in this order: the server, the cgroup (its
/// processes), the link and its namespaces.
struct Net {
    _server: Proc,
    cg: TestCgroup,
    link: Link,
    inbound: bool,
}

impl Net {
    /// A link and a server in B (`script`, from `testkit/servers`), inside the cgroup when
    /// `inbound`.
    fn new(name: &str, inbound: bool, script: &str) -> Self {
        let link = Link::new(name);
        let cg = TestCgroup::new(name);
        let path = dir().join(script);
        let server = spawn(
            Place {
                cgroup: inbound.then_some(&cg),
                netns: Some(link.b()),
                ..Place::default()
            },
            &[
                "python3",
                path.to_str().unwrap(),
                &Link::B_ADDR.to_string(),
                &PORT.to_string(),
            ],
        );
        wait_for_port(&format!("{}:{PORT}", Link::B_ADDR), Some(link.b()));
        Self {
            _server: server,
            cg,
            link,
            inbound,
        }
    }

    fn direction(&self) -> Direction {
        if self.inbound {
            Direction::Inbound
        } else {
            Direction::Outbound
        }
    }

    fn watch(&self) -> Watch {
        let mut w = Watch::new(&self.cg);
        w.target(self.direction(), PORT);
        w
    }

    /// Where the client runs: namespace A, inside the cgroup when outbound.
    fn client_place(&self) -> Place<'_> {
        Place {
            cgroup: (!self.inbound).then_some(&self.cg),
            netns: Some(self.link.a()),
            ..Place::default()
        }
    }
}

/// Checks that all run before the test fails, so one run shows every figure that is off.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            let m = msg();
            eprintln!("  FAILED: {m}");
            self.0.push(m);
        }
    }

    /// `|kite - truth| / truth <= tol`
    fn close(&mut self, what: &str, kite: f64, truth: f64, tol: f64) {
        let err = (kite - truth) / truth;
        eprintln!(
            "  {what}: Kite {kite:.4} client {truth:.4} ({:+.2}%)",
            err * 100.0
        );
        self.check(err.abs() <= tol, || {
            format!(
                "{what}: Kite {kite:.4} vs client {truth:.4}: {:.2}% off (allowed {:.0}%)",
                err.abs() * 100.0,
                tol * 100.0
            )
        });
    }

    /// Exact per (method, status) counts, and never more of a method than was sent.
    fn counts_exact(&mut self, w: &Watch, dir: Direction, r: &Outcome) {
        let kite = kite_counts(w, dir);
        let client = r.by_method_status();
        eprintln!("  client: {client:?}\n  Kite:   {kite:?}");
        let per_method = |m: &BTreeMap<(String, u16), u64>| {
            let mut out: BTreeMap<String, u64> = BTreeMap::new();
            for ((method, _), n) in m {
                *out.entry(method.clone()).or_default() += n;
            }
            out
        };
        let (km, cm) = (per_method(&kite), per_method(&client));
        for (method, n) in &km {
            let sent = cm.get(method).copied().unwrap_or(0);
            self.check(*n <= sent, || {
                format!("phantom requests: Kite counted {n} {method} but the client sent {sent}")
            });
        }
        let total = kite.values().sum::<u64>();
        self.check(total == r.results.len() as u64, || {
            format!(
                "Kite counted {total} requests, the client made {}",
                r.results.len()
            )
        });
        self.check(kite == client, || {
            format!("per (method, status): Kite {kite:?} vs client {client:?}")
        });
    }

    /// Kite's mean (exact: from the latency sum, not the buckets) against the client's, where
    /// both time the same thing (outbound: the client's own socket).
    fn mean_if_outbound(&mut self, w: &Watch, dir: Direction, r: &Outcome) {
        if dir == Direction::Outbound {
            let kite = w.total().mean().expect("requests").as_secs_f64();
            self.close("mean", kite, r.mean(), LATENCY_TOL);
        }
    }

    /// What every test over the link checks: exact counts, p50, and the exact mean where
    /// client and Kite time the same thing.
    fn counts_and_latency(&mut self, w: &Watch, dir: Direction, r: &Outcome) {
        self.counts_exact(w, dir, r);
        self.close("p50", kite_q(w, 0.5), r.quantile(0.5), LATENCY_TOL);
        self.mean_if_outbound(w, dir, r);
    }

    fn finish(self) {
        assert!(self.0.is_empty(), "{}", self.0.join("\n"));
    }
}

/// 5 % loss, 10 % of the packets held back 2 ms (so later ones overtake them), 1 ms delay,
/// each way.
fn lossy() -> Impair {
    Impair::default()
        .loss(0.05)
        .reorder(0.10, Duration::from_millis(2))
        .delay(Duration::from_millis(1))
}

/// 2000 keep-alive requests on 50 connections: GETs of 1 B–200 KB (log-uniform), POSTs with
/// 8 KB bodies (half of them made of `GET / HTTP/1.1` lines), some 404s and 500s; all answered
/// after [`DELAY_MS`].
fn lossy_plan(seed: u64) -> Plan {
    let mut rng = Rng(seed);
    let mut unit = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let conns = (0..50)
        .map(|_| {
            (0..40)
                .map(|_| {
                    let kind = unit();
                    let size = (200_000f64.ln() * unit()).exp() as usize;
                    let lines = unit() < 0.5;
                    let r = if kind < 0.55 {
                        req("GET", format!("/big/{size}/{DELAY_MS}"))
                    } else if kind < 0.80 {
                        Req {
                            body: 8192,
                            lines,
                            ..req("POST", format!("/big/{size}/{DELAY_MS}"))
                        }
                    } else if kind < 0.90 {
                        req("GET", format!("/status/404/{DELAY_MS}"))
                    } else {
                        Req {
                            body: 8192,
                            lines,
                            ..req("POST", format!("/status/500/{DELAY_MS}"))
                        }
                    };
                    vec![r]
                })
                .collect()
        })
        .collect();
    Plan {
        parallel: 50,
        conns,
    }
}

fn lossy_link_counts_exactly(inbound: bool) {
    let net = Net::new("lossy", inbound, "httpd.py");
    let mut w = net.watch();
    let baseline = socket_state(&w);
    net.link.set_both(lossy());
    let plan = lossy_plan(if inbound { 11 } else { 12 });
    let place = net.client_place();
    let r = w.during(|| run_client(place, &plan));
    let (ab, ba) = print_link(&net.link);
    print_counters(&w);
    assert_eq!(r.results.len(), plan.requests());
    // The impairments happened both ways.
    assert!(ab.dropped > 0 && ba.dropped > 0);
    assert!(ab.overtaken > 0 && ba.overtaken > 0);
    let mut c = Checks::default();
    c.counts_and_latency(&w, net.direction(), &r);
    let left = settle_socket_state(&w, baseline);
    eprintln!("  connection state: {left} (baseline {baseline})");
    c.check(left == baseline, || {
        format!("connection state left behind: {left} entries, baseline {baseline}")
    });
    c.finish();
}

#[test]
fn lossy_link_inbound_counts_exactly() {
    if !ebpf_available("lossy_link_inbound_counts_exactly") {
        return;
    }
    let _serial = serial();
    lossy_link_counts_exactly(true);
}

#[test]
fn lossy_link_outbound_counts_exactly() {
    if !ebpf_available("lossy_link_outbound_counts_exactly") {
        return;
    }
    let _serial = serial();
    lossy_link_counts_exactly(false);
}

/// Every segment that starts a response is held back, so the segments of its body overtake
/// it (the server writes headers and body separately; 3000 bytes of body are three segments).
///
/// Outbound the hold is 20 ms: Kite must time the response when its status line arrives (when
/// the client can read it), and timing it at the body's arrival would be 12 % short, beyond
/// the 5 % and the histogram's resolution (buckets 1/16 of an octave: 8.4 ms wide here).
/// Inbound Kite times at the server, before the link, so the hold is 3 ms, which the client's
/// latency holds and Kite's does not.
fn overtaken_status_line(inbound: bool) {
    let net = Net::new("overtake", inbound, "httpd.py");
    let mut w = net.watch();
    let hold = Duration::from_millis(if inbound { 3 } else { 20 });
    net.link.set(
        Dir::BtoA,
        Impair::default().rule(Rule::hold_prefix(b"HTTP/1.1 ", hold)),
    );
    let conns = (0..10)
        .map(|c| {
            (0..20)
                .map(|i| {
                    let p = if (c + i) % 5 == 0 {
                        format!("/status/404/{DELAY_MS}")
                    } else {
                        format!("/big/3000/{DELAY_MS}")
                    };
                    vec![req("GET", p)]
                })
                .collect()
        })
        .collect();
    let plan = Plan {
        parallel: 10,
        conns,
    };
    let place = net.client_place();
    let r = w.during(|| run_client(place, &plan));
    let (_, ba) = print_link(&net.link);
    print_counters(&w);
    assert_eq!(r.results.len(), 200);
    // Every response's first segment was held and overtaken (404s have a body segment too).
    assert!(ba.held >= 200, "{ba:?}");
    assert!(ba.overtaken >= 200, "{ba:?}");
    let mut c = Checks::default();
    c.counts_and_latency(&w, net.direction(), &r);
    c.finish();
}

#[test]
fn overtaken_status_line_inbound() {
    if !ebpf_available("overtaken_status_line_inbound") {
        return;
    }
    let _serial = serial();
    overtaken_status_line(true);
}

#[test]
fn overtaken_status_line_outbound() {
    if !ebpf_available("overtaken_status_line_outbound") {
        return;
    }
    let _serial = serial();
    overtaken_status_line(false);
}

/// Inbound, every POST's header segment is held back 3 ms, so the segments of its 8 KB body
/// (made of `GET / HTTP/1.1` lines) arrive first: each POST counted once, timed from when its
/// header arrived, and no GET made up from the body.
#[test]
fn overtaken_post_header_inbound() {
    if !ebpf_available("overtaken_post_header_inbound") {
        return;
    }
    let _serial = serial();
    let net = Net::new("post-hold", true, "httpd.py");
    let mut w = net.watch();
    net.link.set(
        Dir::AtoB,
        Impair::default().rule(Rule::hold_prefix(b"POST ", Duration::from_millis(3))),
    );
    let conns = (0..10)
        .map(|_| {
            (0..20)
                .map(|_| {
                    vec![Req {
                        body: 8192,
                        lines: true,
                        ..req("POST", format!("/status/201/{DELAY_MS}"))
                    }]
                })
                .collect()
        })
        .collect();
    let plan = Plan {
        parallel: 10,
        conns,
    };
    let place = net.client_place();
    let r = w.during(|| run_client(place, &plan));
    let (ab, _) = print_link(&net.link);
    print_counters(&w);
    assert_eq!(r.results.len(), 200);
    assert!(ab.held >= 200 && ab.overtaken >= 200, "{ab:?}");
    let mut c = Checks::default();
    c.counts_and_latency(&w, net.direction(), &r);
    c.finish();
}

/// The first segment with payload of every connection is lost once, each way: the first
/// request's header (a POST's body segments then arrive before it) and the first response's
/// status line come only with their retransmission.
fn lost_first_segments(inbound: bool) {
    let net = Net::new("lost-first", inbound, "httpd.py");
    let mut w = net.watch();
    net.link.set(
        Dir::AtoB,
        Impair::default().rule(Rule::drop_first_payload()),
    );
    net.link.set(
        Dir::BtoA,
        Impair::default().rule(Rule::drop_first_payload()),
    );
    let conns = (0..10)
        .map(|c| {
            (0..10)
                .map(|i| {
                    let r = if (c + i) % 2 == 0 {
                        Req {
                            body: 8192,
                            lines: true,
                            ..req("POST", format!("/big/3000/{DELAY_MS}"))
                        }
                    } else {
                        req("GET", format!("/big/3000/{DELAY_MS}"))
                    };
                    vec![r]
                })
                .collect()
        })
        .collect();
    let plan = Plan {
        parallel: 10,
        conns,
    };
    let place = net.client_place();
    let r = w.during(|| run_client(place, &plan));
    let (ab, ba) = print_link(&net.link);
    print_counters(&w);
    assert_eq!(r.results.len(), 100);
    assert_eq!(
        (ab.rule_hits, ba.rule_hits),
        (10, 10),
        "one loss per connection each way"
    );
    let mut c = Checks::default();
    c.counts_and_latency(&w, net.direction(), &r);
    c.finish();
}

#[test]
fn lost_first_segments_inbound() {
    if !ebpf_available("lost_first_segments_inbound") {
        return;
    }
    let _serial = serial();
    lost_first_segments(true);
}

#[test]
fn lost_first_segments_outbound() {
    if !ebpf_available("lost_first_segments_outbound") {
        return;
    }
    let _serial = serial();
    lost_first_segments(false);
}

/// A fifth of the packets sent twice and a tenth overtaken, each way: every request once.
#[test]
fn duplicated_segments_counted_once() {
    if !ebpf_available("duplicated_segments_counted_once") {
        return;
    }
    let _serial = serial();
    for inbound in [true, false] {
        eprintln!("inbound: {inbound}");
        let net = Net::new("dup", inbound, "httpd.py");
        let mut w = net.watch();
        net.link.set_both(
            Impair::default()
                .duplicate(0.2)
                .reorder(0.1, Duration::from_millis(2))
                .delay(Duration::from_millis(1)),
        );
        let conns = (0..10)
            .map(|c| {
                (0..20)
                    .map(|i| {
                        let r = if (c + i) % 3 == 0 {
                            Req {
                                body: 8192,
                                lines: true,
                                ..req("POST", format!("/big/20000/{DELAY_MS}"))
                            }
                        } else {
                            req("GET", format!("/big/5000/{DELAY_MS}"))
                        };
                        vec![r]
                    })
                    .collect()
            })
            .collect();
        let plan = Plan {
            parallel: 10,
            conns,
        };
        let place = net.client_place();
        let r = w.during(|| run_client(place, &plan));
        let (ab, ba) = print_link(&net.link);
        print_counters(&w);
        assert_eq!(r.results.len(), 200);
        assert!(ab.duplicated > 0 && ba.duplicated > 0);
        let mut c = Checks::default();
        c.counts_and_latency(&w, net.direction(), &r);
        c.finish();
    }
}

/// HEAD and GET alternating, 32 in one write (twice the queue), then 20 sequential requests
/// on the same connection.
#[test]
fn pipelined_beyond_the_queue_then_sequential() {
    if !ebpf_available("pipelined_beyond_the_queue_then_sequential") {
        return;
    }
    let _serial = serial();
    for inbound in [true, false] {
        eprintln!("inbound: {inbound}");
        let net = Net::new("pipe32", inbound, "httpd.py");
        let mut w = net.watch();
        net.link
            .set_both(Impair::default().delay(Duration::from_millis(1)));
        let pipelined: Vec<Req> = (0..32)
            .map(|i| req(if i % 2 == 0 { "HEAD" } else { "GET" }, "/"))
            .collect();
        let mut batches = vec![pipelined];
        batches.extend((0..20).map(|_| vec![req("GET", "/status/201")]));
        let plan = Plan {
            parallel: 1,
            conns: vec![batches],
        };
        let place = net.client_place();
        let r = w.during(|| run_client(place, &plan));
        print_link(&net.link);
        print_counters(&w);
        assert_eq!(r.results.len(), 52);
        let kite = kite_counts(&w, net.direction());
        eprintln!("  Kite: {kite:?}");
        let client = r.by_method_status();
        for (k, n) in &kite {
            assert!(
                *n <= client.get(k).copied().unwrap_or(0),
                "phantom {k:?}: {kite:?}"
            );
        }
        assert_eq!(
            kite.get(&("GET".to_string(), 201)).copied().unwrap_or(0),
            20,
            "the sequential requests after the overflow"
        );
        let overflow = w.counter(Stat::PipelineOverflow);
        assert_eq!(overflow, (32 - QUEUE_DEPTH) as u64, "overflow counted");
        assert_eq!(kite.values().sum::<u64>(), 52 - overflow);
    }
}

/// Methods outside the known list, on keep-alive connections between GETs and on
/// connections of their own: recorded as `_OTHER`.
#[test]
fn unknown_methods_are_other() {
    if !ebpf_available("unknown_methods_are_other") {
        return;
    }
    let _serial = serial();
    for inbound in [true, false] {
        eprintln!("inbound: {inbound}");
        let net = Net::new("other", inbound, "anyhttpd.py");
        let mut w = net.watch();
        net.link
            .set_both(Impair::default().delay(Duration::from_millis(1)));
        let round = || {
            vec![
                vec![req("PURGE", "/")],
                vec![req("GET", "/")],
                vec![Req {
                    body: 20,
                    ..req("QUERY", "/")
                }],
                vec![req("get", "/")],
                vec![req("PROPFIND", "/")],
            ]
        };
        let mut conns: Vec<Vec<Vec<Req>>> = (0..2)
            .map(|_| (0..5).flat_map(|_| round()).collect())
            .collect();
        conns.extend(round().into_iter().map(|b| vec![b]));
        let plan = Plan { parallel: 2, conns };
        let place = net.client_place();
        let r = w.during(|| run_client(place, &plan));
        print_counters(&w);
        assert_eq!(r.results.len(), 55);
        let mut c = Checks::default();
        c.counts_exact(&w, net.direction(), &r);
        c.finish();
        let kite = kite_counts(&w, net.direction());
        assert_eq!(kite.get(&("_OTHER".to_string(), 200)), Some(&44));
        assert_eq!(kite.get(&("GET".to_string(), 200)), Some(&11));
    }
}
