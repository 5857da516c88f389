//! HTTP/1 routes (issue 15): per-route counts and latencies from the kernel, identifiers in
//! paths collapsed to `*`, and a bounded number of routes per endpoint whatever a client
//! invents.

use std::collections::BTreeMap;

use kite_agent::{daemon::dataplane::learn_rpc_names, rpc_names::RpcNames, stats::Interval};
use kite_common::maps::{Direction, MAX_RPC_PER_ENDPOINT, RPC_OTHER, Stat};
use kite_testkit::*;

/// A deterministic generator for the ids in the paths (no dependency for randomness).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

/// The routes Kite shows for the watched endpoint: route text → figures.
fn routes(w: &mut Watch) -> BTreeMap<String, Interval> {
    let mut names = RpcNames::default();
    learn_rpc_names(&mut names, w.kite.rpc_names());
    w.total()
        .by_rpc
        .iter()
        .map(|(id, iv)| {
            let name = names
                .get(*id)
                .label()
                .unwrap_or_else(|| format!("unknown {id:08x}"));
            (name, iv.clone())
        })
        .collect()
}

/// `conns` × `per_conn` requests, every one its own path of `paths`, to the server on `port`
/// in `cg`, with Kite watching.
fn watched(
    cg: &TestCgroup,
    port: u16,
    paths: &[String],
    conns: usize,
    per_conn: usize,
) -> (Watch, ClientReport) {
    let mut w = Watch::new(cg);
    w.target(Direction::Inbound, port);
    let report = w.during(|| each_its_path(port, paths, conns, per_conn));
    (w, report)
}

/// `conns` × `per_conn` requests to 127.0.0.1:`port`, every one its own path of `paths`.
fn each_its_path(port: u16, paths: &[String], conns: usize, per_conn: usize) -> ClientReport {
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    client(&Load {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        conns,
        per_conn,
        paths: &refs,
        stride: per_conn,
        ..Load::default()
    })
}

#[test]
fn five_routes_three_with_ids_counted_exactly_with_their_latencies() {
    if !ebpf_available("five_routes_three_with_ids_counted_exactly_with_their_latencies") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("routes-five");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    // Five templates, each with its own delay (ms); three carry an identifier, fresh for every
    // request.
    let templates: [(&str, f64); 5] = [
        ("/orders/*", 6.0),
        ("/users/*/profile", 9.0),
        ("/api/v1/items/*", 12.0),
        ("/health", 3.0),
        ("/static/app.css", 15.0),
    ];
    let (conns, per_conn) = (20usize, 500usize);
    let mut rng = Lcg(0x5eed);
    let paths: Vec<String> = (0..conns * per_conn)
        .map(|j| {
            let (_, ms) = templates[j % 5];
            let path = match j % 5 {
                0 => format!("/orders/{}", rng.next() % 10_000_000),
                1 => {
                    let (a, b) = (rng.next(), rng.next());
                    format!(
                        "/users/{:08x}-{:04x}-{:04x}-{:04x}-{:012x}/profile",
                        a as u32,
                        (a >> 32) as u16,
                        b as u16,
                        (b >> 16) as u16,
                        (b >> 32) & 0xffff_ffff_ffff
                    )
                }
                2 => format!("/api/v1/items/{:016x}", rng.next() | 1 << 52),
                3 => "/health".to_string(),
                _ => "/static/app.css".to_string(),
            };
            format!("{path}?delay={ms}")
        })
        .collect();
    let (mut w, report) = watched(&cg, port, &paths, conns, per_conn);
    assert_eq!(report.requests(), (conns * per_conn) as u64);
    let seen = routes(&mut w);
    eprintln!(
        "  routes: {:?}",
        seen.iter()
            .map(|(n, iv)| (n.as_str(), iv.requests))
            .collect::<Vec<_>>()
    );
    let want: Vec<&str> = {
        let mut v: Vec<&str> = templates.iter().map(|t| t.0).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), want);
    assert_eq!(w.total().requests, report.requests());
    for (k, (name, _)) in templates.iter().enumerate() {
        // The client's own latencies of this template's requests.
        let mut own: Vec<f64> = report
            .latencies
            .iter()
            .zip(&report.path_of)
            .filter(|(_, j)| *j % 5 == k)
            .map(|(l, _)| l.as_secs_f64())
            .collect();
        own.sort_by(f64::total_cmp);
        let iv = &seen[*name];
        assert_eq!(
            iv.requests,
            own.len() as u64,
            "{name}: Kite's count vs the client's"
        );
        let kite_p50 = iv.hist.quantile(0.5).unwrap() / 1e9;
        let own_p50 = own[own.len().div_ceil(2) - 1];
        eprintln!("  {name}: p50 Kite {kite_p50:.6} s, client {own_p50:.6} s");
        assert_close(&format!("{name} p50"), kite_p50, own_p50, 0.10);
    }
    assert_eq!(w.counter(Stat::RpcOther), 0);
}

#[test]
fn a_crawler_gets_the_route_budget_and_the_rest_is_other() {
    if !ebpf_available("a_crawler_gets_the_route_budget_and_the_rest_is_other") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("routes-crawler");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    // 50 000 distinct paths of words (no identifier: each is its own route).
    let (conns, per_conn) = (16usize, 3_125usize);
    let mut rng = Lcg(0xc4a1);
    let word = |rng: &mut Lcg, n: usize| -> String {
        (0..n)
            .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
            .collect()
    };
    let paths: Vec<String> = (0..conns * per_conn)
        .map(|_| format!("/{}/{}", word(&mut rng, 6), word(&mut rng, 7)))
        .collect();
    let distinct: std::collections::BTreeSet<&String> = paths.iter().collect();
    assert!(distinct.len() > 49_000);
    let (mut w, report) = watched(&cg, port, &paths, conns, per_conn);
    let n = report.requests();
    assert_eq!(n, (conns * per_conn) as u64);
    assert_eq!(w.total().requests, n, "every request counted");
    let budget = MAX_RPC_PER_ENDPOINT as usize;
    let by_rpc = &w.total().by_rpc;
    let other = by_rpc.get(&RPC_OTHER).map_or(0, |iv| iv.requests);
    eprintln!(
        "  {} routes, {other} requests as _OTHER, {} counted _OTHER by the kernel",
        by_rpc.len(),
        w.counter(Stat::RpcOther)
    );
    assert!(
        by_rpc.len() <= budget + 1,
        "{} routes > {budget} + _OTHER",
        by_rpc.len()
    );
    assert_eq!(w.counter(Stat::RpcOther), other);
    // Each admitted route had one request (or two CPUs' worth at the bound).
    assert!(other >= n - 2 * budget as u64, "{other} of {n} as _OTHER");
    // Only the admitted routes were named: the name registry stays small.
    let seen = routes(&mut w);
    let named = seen.keys().filter(|k| k.starts_with('/')).count();
    assert!(
        named <= budget,
        "{named} route names for a budget of {budget}"
    );
    assert!(seen.contains_key("_OTHER"));
}

#[test]
fn routes_off_gives_one_series_per_method_and_status() {
    if !ebpf_available("routes_off_gives_one_series_per_method_and_status") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("routes-off");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let paths = ["/orders/1", "/users/2", "/health"];
    let mut w = Watch::with_options(
        &cg,
        kite_agent::ebpf::Options {
            routes: false,
            ..Default::default()
        },
    );
    w.target(Direction::Inbound, port);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let report = w.during(|| {
        client(&Load {
            addr,
            conns: 3,
            per_conn: 100,
            paths: &paths,
            ..Load::default()
        })
    });
    assert_eq!(w.total().requests, report.requests());
    assert!(w.total().by_rpc.is_empty(), "routes while off");
    assert_eq!(routes(&mut w).len(), 0);
}

#[test]
fn the_agent_shows_routes_in_kite_v1_and_prometheus_and_user_patterns_win() {
    if !ebpf_available("the_agent_shows_routes_in_kite_v1_and_prometheus_and_user_patterns_win") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("routes-agent");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let agent =
        crate::agent::Agent::start(&["--cgroup", &cg.cgroup.path, "--route", "/files/{name}"]);
    // `/orders/<n>` by the heuristic; `/files/<word>` only by the user's pattern.
    let paths: Vec<String> = (0..60)
        .map(|i| {
            if i % 2 == 0 {
                format!("/orders/{i}")
            } else {
                format!("/files/report{}", ["a", "b", "c"][i % 3])
            }
        })
        .collect();
    let report = each_its_path(port, &paths, 2, 30);
    assert_eq!(report.requests(), 60);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let routes = loop {
        let snap = agent.list();
        let ep = snap.endpoints.iter().find(|e| {
            e.id.as_ref().is_some_and(|id| id.port == port as u32)
                && e.totals.as_ref().is_some_and(|t| t.requests == 60)
        });
        if let Some(ep) = ep {
            let names: BTreeMap<String, u64> = ep
                .routes
                .iter()
                .map(|r| (r.name.clone(), r.totals.as_ref().unwrap().requests))
                .collect();
            if !names.keys().any(|n| n.starts_with("rpc#")) {
                break names;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no routes for port {port}: {snap:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        routes,
        BTreeMap::from([
            ("/files/{name}".to_string(), 30),
            ("/orders/*".to_string(), 30)
        ])
    );
    let text = agent.metrics_text();
    let sel = format!("server_port=\"{port}\"");
    let line = |label: &str| {
        text.lines().any(|l| {
            l.starts_with("http_server_request_duration_seconds_count")
                && l.contains(&sel)
                && l.contains(label)
        })
    };
    assert!(line("url_template=\"/orders/*\""), "{text}");
    assert!(line("http_route=\"/files/{name}\""), "{text}");
}

#[test]
fn a_crawler_leaves_the_agent_and_prometheus_bounded() {
    if !ebpf_available("a_crawler_leaves_the_agent_and_prometheus_bounded") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("routes-crawl-agent");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let agent = crate::agent::Agent::start(&["--cgroup", &cg.cgroup.path]);
    let pid = agent.proc.child.id();
    let (conns, per_conn) = (16usize, 3_125usize);
    let mut rng = Lcg(0xfeed);
    let paths: Vec<String> = (0..conns * per_conn)
        .map(|_| {
            let w: String = (0..10)
                .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
                .collect();
            format!("/crawl/{w}")
        })
        .collect();
    // Warm: the agent's own allocations before the crawl.
    client(&Load {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        conns: 1,
        per_conn: 10,
        paths: &["/warm"],
        ..Load::default()
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (before, _) = crate::hostile::rss(pid);
    let report = each_its_path(port, &paths, conns, per_conn);
    let n = report.requests() + 10;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let snap = agent.list();
        let total: u64 = snap
            .endpoints
            .iter()
            .filter(|e| e.id.as_ref().is_some_and(|id| id.port == port as u32))
            .map(|e| e.totals.as_ref().map_or(0, |t| t.requests))
            .sum();
        if total == n {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{total} of {n} counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (after, peak) = crate::hostile::rss(pid);
    let text = agent.metrics_text();
    let sel = format!("server_port=\"{port}\"");
    let series = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count") && l.contains(&sel))
        .count();
    let budget = MAX_RPC_PER_ENDPOINT as usize;
    eprintln!(
        "  {n} requests of {} distinct paths: {series} series on the port, agent RSS {:.1} → {:.1} MiB (peak {:.1})",
        paths.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    assert!(
        series <= budget + 1,
        "{series} series > {budget} routes + _OTHER"
    );
    assert!(text.contains("url_template=\"_OTHER\""));
    // The admitted words are ids in fact: the agent's collapse shows them as one route.
    assert!(text.contains("url_template=\"/crawl/*\""), "{text}");
    // The collapse's own bound (8 192 prefixes) is far: nothing went unfollowed, and it says so.
    assert!(
        text.lines()
            .any(|l| l == "kite_route_prefixes_untracked_total 0"),
        "{text}"
    );
    assert!(
        series <= 3,
        "{series} series: the collapse should have merged the words"
    );
    assert!(
        after < before + 16 * 1048576,
        "the agent grew by {} MiB",
        (after - before) / 1048576
    );
}
