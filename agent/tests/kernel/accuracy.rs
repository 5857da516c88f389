//! Kite's numbers against the load generator's own, for the traffic shapes people run.
//!
//! The servers answer after delays drawn from a fixed mix, so p50, p90 and p99 fall in
//! different groups and the comparison is about Kite's latency math, not about loopback
//! overhead: Kite times a request at the server's socket (first request byte in → first
//! response byte out) while a client also counts its own kernel and scheduling time, some tens
//! of microseconds that a bare static page would be made of.
//!
//! wrk corrects its latency histogram for coordinated omission (`stats_correct`: every sample
//! above twice the mean per-connection interval gets synthetic companions), so its percentiles
//! are raw latencies only when no sample exceeds twice the mean. wrk runs therefore use a
//! narrow mix ([`WRK_MIX`], checked by [`check_wrk`]); the wide mix ([`MIX`]) is compared with
//! the timing client of `support`, which reports every request's own latency.

use std::{net::SocketAddr, time::Duration};

use kite_common::maps::{Direction, Stat};

use kite_testkit::*;

/// 20 paths: 16 × 8 ms, 3 × 10 ms, 1 × 14 ms. The largest stays under twice the mean even
/// with a few milliseconds of scheduling noise, so wrk reports raw latencies.
pub const WRK_MIX: [&str; 20] = [
    "/d/8", "/d/8", "/d/8", "/d/8", "/d/10", "/d/8", "/d/8", "/d/8", "/d/8", "/d/8", "/d/14",
    "/d/8", "/d/8", "/d/10", "/d/8", "/d/8", "/d/8", "/d/8", "/d/10", "/d/8",
];

/// 20 paths: 16 × 2 ms, 3 × 10 ms, 1 × 40 ms.
pub const MIX: [&str; 20] = [
    "/d/2", "/d/2", "/d/2", "/d/2", "/d/10", "/d/2", "/d/2", "/d/2", "/d/2", "/d/2", "/d/40",
    "/d/2", "/d/2", "/d/10", "/d/2", "/d/2", "/d/2", "/d/2", "/d/10", "/d/2",
];

const LATENCY_TOL: f64 = 0.10;
const RPS_TOL: f64 = 0.02;

/// Runs `load` under a new [`Watch`] of `cg` and returns both; runs it again (three times at
/// most, each with its own Watch) while wrk's coordinated-omission correction may have moved
/// its percentiles ([`Wrk::percentiles_comparable`]), since then they cannot be compared with
/// anything. Kite's figures are never what decides a retry.
fn watched_wrk(
    cg: &TestCgroup,
    dir: Direction,
    port: u16,
    load: impl Fn() -> Wrk + Sync,
) -> (Watch, Wrk) {
    let mut attempt = 1;
    loop {
        let mut w = Watch::new(cg);
        w.target(dir, port);
        let r = w.during(&load);
        if r.percentiles_comparable() || attempt == 3 {
            return (w, r);
        }
        eprintln!(
            "  wrk's max {} µs ≥ 2 × {:.0} µs ({} samples that high): its percentiles are \
             corrected, running again",
            r.max_us,
            r.mean_interval_us(),
            r.over_2x
        );
        attempt += 1;
    }
}

fn check_wrk(w: &Watch, r: &Wrk) {
    eprintln!("  wrk: {r:?}");
    assert_eq!(r.socket_errors(), 0, "wrk saw socket errors");
    assert!(
        r.percentiles_comparable(),
        "wrk corrected its latencies for coordinated omission (max {} µs ≥ 2 × {} µs, \
         {} samples that high, up to {} added): narrow the delay mix",
        r.max_us,
        r.mean_interval_us(),
        r.over_2x,
        r.corrected_bound()
    );
    assert_eq!(w.total().requests, r.requests, "Kite's count vs wrk's");
    let rps = w.windowed_rps(r.started.unwrap(), r.finished.unwrap());
    assert_close("RPS", rps, r.rps(), RPS_TOL);
    assert_close("p50", kite_q(w, 0.50), r.p50_us / 1e6, LATENCY_TOL);
    assert_close("p90", kite_q(w, 0.90), r.p90_us / 1e6, LATENCY_TOL);
    assert_close("p99", kite_q(w, 0.99), r.p99_us / 1e6, LATENCY_TOL);
    for (status, n) in &r.statuses {
        let status: u16 = status.parse().unwrap();
        assert_eq!(
            w.total().by_status.get(&status).copied().unwrap_or(0),
            *n,
            "requests with status {status}"
        );
    }
    // wrk's "Non-2xx or 3xx responses" against Kite's 4xx + 5xx.
    assert_eq!(w.total().status_4xx + w.total().status_5xx, r.status_errors);
    assert_eq!(w.counter(Stat::SyncLost), 0);
    assert_eq!(w.counter(Stat::OrphanResponses), 0);
}

fn check_client(w: &Watch, r: &ClientReport) {
    check_client_at(w, r, &[0.50, 0.90, 0.99]);
}

/// [`check_client`] comparing only the quantiles `qs`.
fn check_client_at(w: &Watch, r: &ClientReport, qs: &[f64]) {
    assert_eq!(
        w.total().requests,
        r.requests(),
        "Kite's count vs the client's"
    );
    let rps = w.windowed_rps(r.started, r.finished);
    assert_close("RPS", rps, r.rps(), RPS_TOL);
    for &q in qs {
        assert_close(
            &format!("p{}", (q * 100.0) as u32),
            kite_q(w, q),
            r.quantile(q).as_secs_f64(),
            LATENCY_TOL,
        );
    }
    for (status, n) in &r.statuses {
        assert_eq!(w.total().by_status.get(status).copied().unwrap_or(0), *n);
    }
    assert_eq!(w.counter(Stat::SyncLost), 0);
}

#[test]
fn keep_alive_nginx_with_wrk() {
    if !ebpf_available("keep_alive_nginx_with_wrk") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("ka-nginx");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let url = format!("http://127.0.0.1:{port}");
    let (w, r) = watched_wrk(&cg, Direction::Inbound, port, || {
        wrk(Place::default(), &url, 4, 400, &WRK_MIX, &[])
    });
    check_wrk(&w, &r);
}

#[test]
fn keep_alive_python_with_wrk() {
    if !ebpf_available("keep_alive_python_with_wrk") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("ka-py");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let url = format!("http://127.0.0.1:{port}");
    let (w, r) = watched_wrk(&cg, Direction::Inbound, port, || {
        wrk(Place::default(), &url, 4, 400, &WRK_MIX, &[])
    });
    check_wrk(&w, &r);
}

#[test]
fn keep_alive_wide_latency_mix_with_timing_client() {
    if !ebpf_available("keep_alive_wide_latency_mix_with_timing_client") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("ka-wide");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = w.during(|| {
        client(&Load {
            addr,
            conns: 4,
            per_conn: 500,
            depth: 1,
            paths: &MIX,
            close: false,
            ..Load::default()
        })
    });
    check_client(&w, &r);
}

#[test]
fn one_request_per_connection_nginx_with_wrk() {
    if !ebpf_available("one_request_per_connection_nginx_with_wrk") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("close-nginx");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let url = format!("http://127.0.0.1:{port}");
    let (w, r) = watched_wrk(&cg, Direction::Inbound, port, || {
        wrk(
            Place::default(),
            &url,
            4,
            400,
            &WRK_MIX,
            &["Connection: close"],
        )
    });
    check_wrk(&w, &r);
    // Every connection was tracked and forgotten again.
    assert_eq!(w.counter(Stat::ConnsOpened), r.requests);
    assert_eq!(w.counter(Stat::ConnsClosed), r.requests);
}

#[test]
fn pipelining_depth_4() {
    if !ebpf_available("pipelining_depth_4") {
        return;
    }
    let _serial = serial();
    for server in ["nginx", "python"] {
        eprintln!("server: {server}");
        let cg = TestCgroup::new("pipeline");
        let port = free_port();
        let place = Place::in_cgroup(&cg);
        let (_n, _p) = if server == "nginx" {
            (Some(nginx(place, port)), None)
        } else {
            (None, Some(python_httpd(place, "127.0.0.1", port, false)))
        };
        let mut w = Watch::new(&cg);
        w.target(Direction::Inbound, port);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let r = w.during(|| {
            client(&Load {
                addr,
                conns: 4,
                per_conn: 400,
                depth: 4,
                paths: &MIX,
                close: false,
                ..Load::default()
            })
        });
        check_client(&w, &r);
        assert_eq!(w.counter(Stat::PipelineOverflow), 0);
    }
}

#[test]
fn fixed_50ms_delay() {
    if !ebpf_available("fixed_50ms_delay") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("delay50");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let url = format!("http://127.0.0.1:{port}");
    // 800 requests, about 5 s: wrk's run also counts its start (threads, connects), which
    // against 320 requests (2 s) made its RPS 1.3–1.6 % lower than Kite's windows.
    let (w, r) = watched_wrk(&cg, Direction::Inbound, port, || {
        wrk(Place::default(), &url, 8, 100, &["/d/50"], &[])
    });
    check_wrk(&w, &r);
    let p50 = kite_q(&w, 0.5);
    assert!((0.050..0.055).contains(&p50), "p50 {p50}");
}

#[test]
fn mixed_status_codes() {
    if !ebpf_available("mixed_status_codes") {
        return;
    }
    let _serial = serial();
    // Python answers with delays (80 % 8 ms, 20 % 12 ms), so latencies compare too.
    let paths = [
        "/status/200/8",
        "/status/404/8",
        "/status/200/8",
        "/status/500/12",
        "/status/200/8",
        "/status/200/8",
        "/status/404/8",
        "/status/200/8",
        "/status/503/12",
        "/status/201/8",
    ];
    let cg = TestCgroup::new("status-py");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let url = format!("http://127.0.0.1:{port}");
    let (w, r) = watched_wrk(&cg, Direction::Inbound, port, || {
        wrk(Place::default(), &url, 4, 300, &paths, &[])
    });
    check_wrk(&w, &r);
    let t = w.total();
    assert_eq!(t.status_4xx, r.statuses["404"]);
    assert_eq!(t.status_5xx, r.statuses["500"] + r.statuses["503"]);
    assert_close("error ratio", t.error_ratio(), 0.4, 1e-9);

    // nginx's own `return` codes: exact per-status counts.
    let cg = TestCgroup::new("status-nginx");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let url = format!("http://127.0.0.1:{port}");
    let paths = [
        "/status/200",
        "/status/404",
        "/status/500",
        "/status/200",
        "/status/302",
    ];
    let (w, r) = watched_wrk(&cg, Direction::Inbound, port, || {
        wrk(Place::default(), &url, 2, 2000, &paths, &[])
    });
    assert_eq!(w.total().requests, r.requests);
    for (status, n) in &r.statuses {
        let status: u16 = status.parse().unwrap();
        assert_eq!(w.total().by_status[&status], *n, "status {status}");
    }
}

#[test]
fn outbound_requests_from_a_client_in_the_cgroup() {
    if !ebpf_available("outbound_requests_from_a_client_in_the_cgroup") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("outbound");
    let port = free_port();
    // The server runs outside the cgroup; wrk inside it.
    let _srv = python_httpd(Place::default(), "127.0.0.1", port, false);
    let url = format!("http://127.0.0.1:{port}");
    let place = Place::in_cgroup(&cg);
    // Like the other wrk shapes: run again while wrk's own figures are corrected.
    let (w, r) = watched_wrk(&cg, Direction::Outbound, port, || {
        wrk(place, &url, 4, 400, &WRK_MIX, &[])
    });
    check_wrk(&w, &r);
    assert!(
        w.endpoints()
            .iter()
            .all(|e| e.direction == Direction::Outbound
                && e.address() == format!("127.0.0.1:{port}")),
        "{:?}",
        w.endpoints()
    );
}

#[test]
fn keep_alive_long_run_has_stable_windows() {
    if !ebpf_available("keep_alive_long_run_has_stable_windows") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("windows");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // One connection, 5 ms per request: ~200 RPS for ~3 s.
    let r = w.during(|| {
        client(&Load {
            addr,
            conns: 1,
            per_conn: 600,
            depth: 1,
            paths: &["/d/5"],
            close: false,
            ..Load::default()
        })
    });
    // One connection and 600 samples: p99 is the sixth-slowest request, which the client's own
    // scheduling on a busy two-core machine moves by milliseconds (seen: 8.5 ms against the
    // server's 5.5 ms while a build ran). The percentile tests with more samples cover p99.
    check_client_at(&w, &r, &[0.50, 0.90]);
    // The endpoint's history holds the recent windows with their own RPS.
    let ep = w.collector().endpoints().next().unwrap();
    let busy: Vec<f32> = ep
        .history
        .iter()
        .map(|p| p.rps)
        .filter(|r| *r > 0.0)
        .collect();
    assert!(busy.len() >= 4, "{:?}", ep.history);
    assert!(busy.iter().all(|r| *r < 260.0), "{busy:?}");
    assert!(ep.last_active.elapsed() < Duration::from_secs(2));
}
