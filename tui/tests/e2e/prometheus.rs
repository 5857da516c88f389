//! Prometheus tells the same truth as `kite-tui --once`: two real Prometheus servers (Debian's,
//! one with native histograms, one classic) scrape a real agent while a server with a known,
//! smooth latency distribution takes bounded load.

use std::{net::SocketAddr, process::Command, time::Duration};

use kite_testkit::{
    Load, Place, Prometheus, TestCgroup, client, ebpf_available, free_port, promtool_check,
    python_httpd, serial,
};
use serde_json::Value;

use crate::{TUI, agent::InProcessAgent};

/// The classic bucket (index of the first `le` at or above) holding `secs`.
fn classic_bucket(secs: f64) -> usize {
    kite_agent::daemon::metrics::edges()
        .position(|le| secs <= le)
        .unwrap_or(usize::MAX)
}

fn within(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want,
        "{what}: {got:.6} s vs {want:.6} s (more than {:.0} % apart)",
        tol * 100.0
    );
}

#[test]
fn native_histogram_quantiles_agree_with_the_tui_and_the_client() {
    if !ebpf_available("native_histogram_quantiles_agree_with_the_tui_and_the_client") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("tui-prom");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let agent = InProcessAgent::start(&cg, "500ms");
    let native = Prometheus::start(&[agent.metrics], true);
    let classic = Prometheus::start(&[agent.metrics], false);

    // Delays spread evenly over 1–20 ms in 0.1 ms steps: every quantile is well defined.
    let delays: Vec<String> = (0..=190)
        .map(|i| format!("/d/{:.1}", 1.0 + i as f64 / 10.0))
        .collect();
    let paths: Vec<&str> = delays.iter().map(String::as_str).collect();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let report = client(&Load {
        addr,
        conns: 8,
        per_conn: 382,
        paths: &paths,
        ..Load::default()
    });
    let n = report.requests();
    assert_eq!(n, 8 * 382);
    assert_eq!(report.statuses.get(&200), Some(&n));

    // Both servers have scraped the whole load.
    let sel = format!("server_port=\"{port}\"");
    let timeout = Duration::from_secs(30);
    native.wait_for_value(
        &format!("histogram_count(sum(http_server_request_duration_seconds{{{sel}}}))"),
        n as f64,
        timeout,
    );
    classic.wait_for_value(
        &format!("sum(http_server_request_duration_seconds_count{{{sel}}})"),
        n as f64,
        timeout,
    );

    // The TUI over the same window: the agent's totals since the load began.
    let out = Command::new(TUI)
        .args(["--once", "-o", "json", "--addr", &agent.addr()])
        .output()
        .expect("run kite-tui");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("a JSON document");
    let ep = doc["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"]["port"] == port && e["id"]["direction"] == "inbound")
        .unwrap_or_else(|| panic!("no endpoint on {port}: {doc:#}"))
        .clone();
    assert_eq!(ep["totals"]["requests"], n);

    for (q, key) in [
        (0.5, "p50_seconds"),
        (0.9, "p90_seconds"),
        (0.99, "p99_seconds"),
    ] {
        let prom = native
            .scalar(&format!(
                "histogram_quantile({q}, sum(http_server_request_duration_seconds{{{sel}}}))"
            ))
            .unwrap_or_else(|| panic!("no native p{q}"));
        let tui = ep["totals"][key].as_f64().unwrap();
        let own = report.quantile(q).as_secs_f64();
        eprintln!("  q={q}: native Prometheus {prom:.6} s, kite-tui {tui:.6} s, client {own:.6} s");
        within(&format!("q={q} Prometheus vs kite-tui"), prom, tui, 0.05);
        // The client's clock holds the kernel's (see `le` below): never below the kernel's
        // figure (2.2 %, half a native bucket, for interpolation), above it by the client's
        // own overhead, which is 0.5–1 ms on this loaded two-core machine.
        assert!(
            prom <= own * 1.025 && prom >= own * 0.95 - 0.001,
            "q={q}: Prometheus {prom:.6} s, the client {own:.6} s: more than 2.5 % above \
             or 5 % + 1 ms below"
        );
    }

    // The classic histogram: p99 within one classic bucket of the client's.
    let classic_p99 = classic
        .scalar(&format!(
            "histogram_quantile(0.99, sum by (le) (http_server_request_duration_seconds_bucket{{{sel}}}))"
        ))
        .expect("classic p99");
    let own_p99 = report.quantile(0.99).as_secs_f64();
    let (a, b) = (classic_bucket(classic_p99), classic_bucket(own_p99));
    eprintln!("  classic p99 {classic_p99:.6} s (bucket {a}), client {own_p99:.6} s (bucket {b})");
    assert!(
        a.abs_diff(b) <= 1,
        "classic p99 {classic_p99} vs client {own_p99}"
    );
    // `le="0.01"` exists and holds the requests that took at most 10 ms. The kernel's clock
    // runs inside the client's (request in, response out, both between the client's write and
    // its read), so every request the client saw take ≤ 10 ms is in, and what else is in took
    // the client at most 10 ms plus its own overhead: the client–kernel gap at the median,
    // twice over and at least a quarter millisecond, then 5 % for the stragglers the client's
    // scheduler delayed further. An edge that counted below 10 ms falls under the lower bound;
    // one that counted beyond 10 ms plus the client's own overhead, over the upper one.
    let le10 = classic
        .scalar(&format!(
            "sum(http_server_request_duration_seconds_bucket{{{sel},le=\"0.01\"}})"
        ))
        .expect("le=\"0.01\"");
    let client_at_most = |secs: f64| {
        report
            .latencies
            .iter()
            .filter(|l| l.as_secs_f64() <= secs)
            .count() as f64
    };
    let gap = (report.quantile(0.5).as_secs_f64() - ep["totals"]["p50_seconds"].as_f64().unwrap())
        .max(0.0);
    let slack = (2.0 * gap).max(0.000_25);
    let (low, high) = (client_at_most(0.01), client_at_most(0.01 + slack) * 1.05);
    eprintln!(
        "  le=0.01: {le10} requests; the client saw {low} in ≤ 10 ms, {high:.0} in ≤ {:.2} ms (+5 %)",
        (0.01 + slack) * 1e3
    );
    assert!(
        le10 >= low && le10 <= high,
        "le=\"0.01\" holds {le10}, outside [{low}, {high:.0}]"
    );

    // The protobuf exposition was parsed by Prometheus itself: the target is up and the
    // non-histogram families are there too.
    for p in [&native, &classic] {
        assert_eq!(p.scalar("up{job=\"kite\"}"), Some(1.0));
        assert_eq!(p.scalar("kite_attached_cgroups"), Some(1.0));
    }
    // And the text one passes Prometheus' linter.
    let text = http_text(agent.metrics);
    promtool_check(&text).unwrap_or_else(|r| panic!("promtool: {r}"));
}

/// `/metrics` as text.
fn http_text(addr: SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}
