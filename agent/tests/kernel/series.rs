//! The cap on exported label sets (`--max-series`) against real traffic and real Prometheus
//! servers (one scraping the classic text, one the protobuf format with native histograms):
//! 20 000 distinct endpoints give at most the cap plus one `otel_metric_overflow="true"` series
//! per family, the overflow is counted, and Prometheus' sums still equal the client's own
//! request count and bytes.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use kite_testkit::*;

use super::agent::{Agent, http_get};

/// Addresses 127.2.x.y: `n` distinct server endpoints of one nginx listening on 0.0.0.0.
fn addrs(n: usize, port: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 2, (i / 250) as u8, (i % 250 + 1) as u8], port)))
        .collect()
}

/// The value of a query with one result. A scrape that failed (a debug-build agent encoding
/// 20 000 endpoints for two scrapers on a busy machine may miss the scrape timeout) leaves
/// the target's series stale until the next one: asked again for up to 15 s.
fn value(prom: &Prometheus, q: &str) -> f64 {
    prom.wait_for_scalar(q, Duration::from_secs(15))
}

#[test]
fn twenty_thousand_endpoints_give_the_cap_plus_one_overflow_series_and_exact_totals() {
    if !ebpf_available("twenty_thousand_endpoints_give_the_cap_plus_one_overflow_series") {
        return;
    }
    let _serial = serial();
    const ENDPOINTS: usize = 20_000;
    // The default --max-series.
    let cap = kite_agent::daemon::metrics::DEFAULT_MAX_SERIES;
    let cg = TestCgroup::new("agent-series");
    let port = free_port();
    let _nginx = nginx_on(Place::in_cgroup(&cg), port, &["0.0.0.0"]);
    // A kernel map and budget with room for every endpoint: the cap under test is the
    // agent's, not the kernel's.
    let agent = Agent::start(&[
        "--cgroup",
        &cg.cgroup.path,
        "--max-endpoints",
        "32768",
        "--endpoint-budget",
        "32768",
    ]);
    // Every 3 s: a debug build encodes 20 000 endpoints in about a second, more when the
    // machine is busy, and the two scrapers' formats alternate (each scrape is encoded).
    let every = Duration::from_secs(3);
    let prom = Prometheus::start_every(&[agent.metrics], false, every);
    let native = Prometheus::start_every(&[agent.metrics], true, every);
    // One request to each of 20 000 addresses, a new connection each, in rounds: the kernel
    // allocates a new key's per-CPU entry from per-CPU memory it populates in the background,
    // which a burst of new keys runs dry (those requests are recorded in the cgroup's overflow
    // endpoint, counted endpoint_alloc_failed); a later round gives the key its own entry.
    // Measured: 3 000 to 11 000 entries after the first round, 13 000 to 20 000 after 20 s.
    let many = addrs(ENDPOINTS, port);
    let t0 = Instant::now();
    let mut requests = 0;
    let mut rounds = 0;
    let entries = || {
        let text = http_get(agent.metrics, "/metrics").unwrap().1;
        text.lines()
            .find_map(|l| l.strip_prefix("kite_map_entries{map=\"endpoints\"} "))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    while rounds < 12 && t0.elapsed() < Duration::from_secs(20) {
        let report = client(&Load {
            addr: many[0],
            more_addrs: &many[1..],
            conns: 4,
            per_conn: ENDPOINTS / 4,
            close: true,
            ..Load::default()
        });
        assert_eq!(
            report.requests(),
            ENDPOINTS as u64,
            "the client stopped early"
        );
        assert_eq!(report.statuses.get(&200), Some(&report.requests()));
        requests += report.requests();
        rounds += 1;
        thread::sleep(Duration::from_millis(1000));
        let n = entries();
        eprintln!(
            "  round {rounds}: {n} endpoint entries after {:?}",
            t0.elapsed()
        );
        if n >= ENDPOINTS * 95 / 100 {
            break;
        }
    }
    let request_bytes =
        requests * "GET / HTTP/1.1\r\nHost: kite-test\r\nConnection: close\r\n\r\n".len() as u64;
    eprintln!(
        "  {requests} requests to {ENDPOINTS} addresses in {rounds} rounds, {:?}",
        t0.elapsed()
    );

    // Prometheus' sum over all series (the overflow one included) reaches the client's count.
    let count_q = "sum(http_server_request_duration_seconds_count)";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = prom.scalar(count_q).unwrap_or(0.0) as u64;
        if n == requests {
            break;
        }
        assert!(n < requests, "Prometheus counts {n}, the client {requests}");
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw all {requests} requests ({n})"
        );
        thread::sleep(Duration::from_millis(500));
    }
    let q = |q: &str| value(&prom, q);
    let endpoints = q("kite_map_entries{map=\"endpoints\"}") as usize;
    // Label sets many times the cap, whatever the kernel could allocate in the time.
    assert!(endpoints >= cap * 5, "only {endpoints} endpoints");
    // At most the cap plus one overflow series in each family, the cap reached.
    let series = q("count(http_server_request_duration_seconds_count)") as usize;
    assert_eq!(series, cap + 1, "histogram series");
    assert_eq!(
        q("count(http_server_request_duration_seconds_count{otel_metric_overflow=\"true\"})"),
        1.0
    );
    assert_eq!(
        q("count(http_server_request_duration_seconds_bucket{le=\"+Inf\"})") as usize,
        cap + 1
    );
    assert_eq!(
        prom.scalar("count(http_client_request_duration_seconds_count)"),
        None,
        "nginx sent no request"
    );
    assert_eq!(
        q("count(kite_http_request_bytes_total{kite_side=\"server\"})") as usize,
        cap + 1
    );
    assert_eq!(
        q("count(kite_http_response_bytes_total{kite_side=\"server\"})") as usize,
        cap + 1
    );
    // The overflow series carries no endpoint labels (only the node's, which every series has).
    let overflow_labels: Vec<String> = prom.api(
        "series",
        &[(
            "match[]",
            "http_server_request_duration_seconds_count{otel_metric_overflow=\"true\"}",
        )],
    )[0]
    .as_object()
    .unwrap()
    .keys()
    .cloned()
    .collect();
    for l in &overflow_labels {
        assert!(
            [
                "__name__",
                "instance",
                "job",
                "k8s_node_name",
                "otel_metric_overflow"
            ]
            .contains(&l.as_str()),
            "overflow series label {l}: {overflow_labels:?}"
        );
    }
    // Totals equal the traffic: requests (also in every histogram's +Inf bucket) and bytes.
    assert_eq!(
        q("sum(http_server_request_duration_seconds_bucket{le=\"+Inf\"})") as u64,
        requests
    );
    assert_eq!(
        q("sum(kite_http_request_bytes_total{kite_side=\"server\"})") as u64,
        request_bytes
    );
    // The overflow is counted: label sets folded, and the requests in them.
    let folded = q("kite_series_overflow_total{kite_side=\"server\"}") as usize;
    let in_overflow =
        q("http_server_request_duration_seconds_count{otel_metric_overflow=\"true\"}");
    assert_eq!(
        q("kite_series_overflow_requests_total{kite_side=\"server\"}"),
        in_overflow
    );
    assert_eq!(
        q("kite_series_folded{kite_side=\"server\"}") as usize,
        folded
    );
    assert_eq!(q("kite_series_limit") as usize, cap);
    // Every label set beyond the cap was folded: one per kernel endpoint here (every request
    // was a GET answered 200), and the cgroup's overflow endpoint if a burst of new keys
    // found no room for some (a separate map, not in the entries above).
    assert!(
        folded == endpoints - cap || folded == endpoints + 1 - cap,
        "{folded} label sets folded, {endpoints} endpoints"
    );
    eprintln!(
        "  {series} series, {folded} label sets folded holding {in_overflow} requests; Prometheus sum {requests}"
    );
    // The same through the protobuf format, parsed by Prometheus itself: one native histogram
    // per exported label set, the overflow one included, their counts summing to the traffic.
    native.wait_for_value(
        "histogram_count(sum(http_server_request_duration_seconds))",
        requests as f64,
        Duration::from_secs(30),
    );
    let nq = |q: &str| value(&native, q);
    assert_eq!(
        nq("count(http_server_request_duration_seconds)") as usize,
        cap + 1
    );
    assert_eq!(
        nq("histogram_count(http_server_request_duration_seconds{otel_metric_overflow=\"true\"})"),
        in_overflow
    );
    assert_eq!(
        nq("sum(kite_http_request_bytes_total{kite_side=\"server\"})") as u64,
        request_bytes
    );
    // The classic text stays small and lint-clean; the exported series do not change
    // between scrapes (no label set flaps in or out).
    let (code, text) = http_get(agent.metrics, "/metrics").unwrap();
    assert_eq!(code, 200);
    eprintln!("  /metrics: {:.1} MB", text.len() as f64 / 1e6);
    assert!(text.len() <= 10_000_000, "{} bytes", text.len());
    promtool_check(&text).unwrap();
    let ports = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect()
    };
    thread::sleep(Duration::from_secs(1));
    // A second round of requests to every address: the same label sets, the counts doubled.
    let again = client(&Load {
        addr: many[0],
        more_addrs: &many[1..],
        conns: 4,
        per_conn: ENDPOINTS / 4,
        close: true,
        deadline: Some(Instant::now() + Duration::from_secs(40)),
        ..Load::default()
    })
    .requests();
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.scalar(count_q).unwrap_or(0.0) as u64 != requests + again {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the second round"
        );
        thread::sleep(Duration::from_millis(500));
    }
    let (_, text2) = http_get(agent.metrics, "/metrics").unwrap();
    assert_eq!(ports(&text), ports(&text2), "exported label sets changed");
    assert_eq!(q(count_q) as u64, requests + again);
    // Keys the kernel could only allocate now are new label sets: folded, the cap being full.
    let endpoints2 = q("kite_map_entries{map=\"endpoints\"}") as usize;
    assert_eq!(
        q("kite_series_overflow_total{kite_side=\"server\"}") as usize - folded,
        endpoints2 - endpoints
    );
    // Slow polls (20 000 histograms in a debug build) are reported at most once a minute.
    let slow = agent.log().matches("a poll took").count();
    eprintln!("  'a poll took' warnings: {slow}");
    assert!(slow <= 1, "{slow} slow-poll warnings:\n{}", agent.log());
}
