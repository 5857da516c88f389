//! Fair kernel maps: one cgroup calling thousands of distinct endpoints keeps to its budget
//! (the rest in one overflow endpoint, totals exact) and cannot blind another cgroup; a burst
//! of new endpoints is not lost to the kernel's per-CPU allocation cache.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use kite_agent::ebpf::{Kite, Options};
use kite_common::maps::{Direction, EndpointKey, Stat};

use kite_testkit::*;

use crate::agent::Agent;

/// HTTP/1.1 client: one `GET /` (Connection: close) to each of `n` distinct addresses
/// 127.0.x.y on `port`, `batch` connections at once (all connected and sent before any is
/// read). Prints the number of 200 responses.
const CLIENT: &str = r#"
import socket, sys
port, n, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ok = 0
addrs = ["127.0.%d.%d" % (1 + i // 250, 1 + i % 250) for i in range(n)]
for start in range(0, n, batch):
    socks = []
    for a in addrs[start:start + batch]:
        s = socket.create_connection((a, port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        socks.append(s)
    for s in socks:
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        if data.startswith(b"HTTP/1.1 200"):
            ok += 1
print(ok)
"#;

/// Runs [`CLIENT`] in `cg`; the number of 200 responses.
fn distinct_calls(cg: &TestCgroup, port: u16, n: usize, batch: usize) -> u64 {
    let out = command(
        Place {
            cgroup: Some(cg),
            ..Place::default()
        },
        &[
            "python3",
            "-c",
            CLIENT,
            &port.to_string(),
            &n.to_string(),
            &batch.to_string(),
        ],
    )
    .output()
    .expect("run python3");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("client's count")
}

/// Requests per (own keys, overflow) of one cgroup in one direction, from the kernel map.
fn split(kite: &Kite, cgroup_id: u64, dir: Direction) -> (usize, u64, u64) {
    let (mut keys, mut own, mut overflow) = (0, 0, 0);
    for (k, v) in kite.endpoints().expect("read endpoints") {
        if k.cgroup_id != cgroup_id || k.direction != dir as u8 {
            continue;
        }
        if k.is_overflow() {
            overflow += v.count;
        } else {
            keys += 1;
            own += v.count;
        }
    }
    (keys, own, overflow)
}

fn budget_of(kite: &Kite, cgroup_id: u64, dir: Direction) -> Option<u64> {
    kite.budgets()
        .expect("read budgets")
        .into_iter()
        .find(|(k, _)| k.cgroup_id == cgroup_id && k.direction == dir as u8)
        .map(|(_, n)| n)
}

#[test]
fn one_cgroup_keeps_to_its_budget_and_cannot_blind_another() {
    if !ebpf_available("one_cgroup_keeps_to_its_budget_and_cannot_blind_another") {
        return;
    }
    let _serial = serial();
    // A map of 512 that A's 700 distinct endpoints would fill by themselves; a budget of 64.
    const MAP: u32 = 512;
    const BUDGET: u32 = 64;
    const CALLS: usize = 700;
    let a = TestCgroup::new("fair-a");
    let b = TestCgroup::new("fair-b");
    // A's servers: one nginx outside the watched cgroups answering on every 127.0.0.0/8 address.
    let port_a = free_port();
    let _servers_a = nginx_on(Place::default(), port_a, &["0.0.0.0"]);
    let port_b = free_port();
    let _server_b = nginx(Place::in_cgroup(&b), port_b);
    let mut w = Watch::with_options(
        &a,
        Options {
            max_endpoints: MAP,
            endpoint_budget: BUDGET,
            ..Options::default()
        },
    );
    w.kite.attach(&b.cgroup).expect("attach B");
    let started = Instant::now();
    let ok_a = distinct_calls(&a, port_a, CALLS, 50);
    assert_eq!(ok_a, CALLS as u64, "A's client");
    let (keys, own, overflow) = split(&w.kite, a.cgroup.id, Direction::Outbound);
    eprintln!(
        "A: {CALLS} distinct endpoints in {:?}: {keys} keys ({own} requests) + overflow {overflow}; \
         budget_overflow {} alloc_failed {} map_full {}",
        started.elapsed(),
        w.counter(Stat::EndpointBudgetOverflow),
        w.counter(Stat::EndpointAllocFailed),
        w.counter(Stat::EndpointsMapFull),
    );
    assert_eq!(keys, BUDGET as usize, "A holds exactly its budget of keys");
    assert_eq!(own + overflow, ok_a, "A's totals are its traffic");
    assert_eq!(
        overflow,
        w.counter(Stat::EndpointBudgetOverflow) + w.counter(Stat::EndpointAllocFailed)
            - w.counter(Stat::OverflowMapFull)
    );
    assert!(w.counter(Stat::EndpointBudgetOverflow) >= (CALLS as u64) - BUDGET as u64 - 8);
    assert_eq!(w.counter(Stat::EndpointsMapFull), 0);
    assert_eq!(
        budget_of(&w.kite, a.cgroup.id, Direction::Outbound),
        Some(BUDGET as u64)
    );
    // The overflow endpoint is one key per (method, status): here GET 200.
    let overflow_keys: Vec<EndpointKey> = w
        .kite
        .endpoints()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.cgroup_id == a.cgroup.id && k.is_overflow())
        .collect();
    assert_eq!(overflow_keys.len(), 1, "{overflow_keys:?}");

    // B's new server, after A went over its budget: measured exactly.
    w.target(Direction::Inbound, port_b);
    let addr: SocketAddr = format!("127.0.0.1:{port_b}").parse().unwrap();
    let r = w.during(|| {
        client(&Load {
            addr,
            conns: 4,
            per_conn: 250,
            depth: 1,
            ..Load::default()
        })
    });
    assert_eq!(r.requests(), 1000);
    assert_eq!(w.total().requests, r.requests(), "B is measured exactly");
    let (b_keys, b_own, b_overflow) = split(&w.kite, b.cgroup.id, Direction::Inbound);
    assert_eq!((b_keys, b_own, b_overflow), (1, 1000, 0));

    // A goes quiet and its entries are removed (as the agent does): its budget is given back.
    let removed = w
        .kite
        .remove_endpoints(|k| k.cgroup_id == a.cgroup.id)
        .unwrap();
    assert_eq!(removed, BUDGET as usize + 1);
    assert_eq!(budget_of(&w.kite, a.cgroup.id, Direction::Outbound), None);
    let again = distinct_calls(&a, port_a, 10, 10);
    assert_eq!(again, 10);
    let (keys, own, overflow) = split(&w.kite, a.cgroup.id, Direction::Outbound);
    assert_eq!((keys, own, overflow), (10, 10, 0));
    assert_eq!(
        budget_of(&w.kite, a.cgroup.id, Direction::Outbound),
        Some(10)
    );
}

#[test]
fn burst_of_new_endpoints_is_not_lost() {
    if !ebpf_available("burst_of_new_endpoints_is_not_lost") {
        return;
    }
    let _serial = serial();
    const CALLS: usize = 6_000;
    let a = TestCgroup::new("burst");
    let port = free_port();
    let _servers = nginx_on(Place::default(), port, &["0.0.0.0"]);
    let w = Watch::with_options(
        &a,
        Options {
            endpoint_budget: 16_384,
            ..Options::default()
        },
    );
    let started = Instant::now();
    let ok = distinct_calls(&a, port, CALLS, 500);
    assert_eq!(ok, CALLS as u64);
    let (keys, own, overflow) = split(&w.kite, a.cgroup.id, Direction::Outbound);
    let c: BTreeMap<&str, u64> = [
        Stat::EndpointAllocFailed,
        Stat::OverflowMapFull,
        Stat::EndpointsMapFull,
        Stat::EndpointBudgetOverflow,
    ]
    .into_iter()
    .map(|s| (s.name(), w.counter(s)))
    .collect();
    eprintln!(
        "burst: {CALLS} new endpoints in {:?}: {keys} keys ({own} requests) + overflow {overflow}; {c:?}",
        started.elapsed()
    );
    assert_eq!(c["endpoints_map_full"], 0, "the map is far from full");
    assert_eq!(c["endpoint_budget_overflow"], 0);
    assert_eq!(c["overflow_map_full"], 0);
    assert_eq!(own + overflow, ok, "every request recorded");
    assert_eq!(overflow, c["endpoint_alloc_failed"]);
    assert_eq!(keys as u64, own, "one request per endpoint");
}

/// Requests of the cgroup's outbound endpoints in a `List`: (own endpoints, their requests,
/// requests of the `_OTHER` endpoint).
fn listed(agent: &Agent, cgroup_id: u64) -> (usize, u64, u64) {
    let (mut n, mut own, mut other) = (0, 0, 0);
    for e in agent.list().endpoints {
        let id = e.id.as_ref().unwrap();
        if id.cgroup_id != cgroup_id {
            continue;
        }
        let requests = e.totals.as_ref().map_or(0, |t| t.requests);
        if id.ip == "_OTHER" {
            assert_eq!(id.port, 0);
            other += requests;
        } else {
            n += 1;
            own += requests;
        }
    }
    (n, own, other)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_shows_the_overflow_endpoint_and_gives_an_idle_budget_back() {
    if !ebpf_available("agent_shows_the_overflow_endpoint_and_gives_an_idle_budget_back") {
        return;
    }
    let _serial = serial();
    let a = TestCgroup::new("fair-agent");
    let port = free_port();
    let _servers = nginx_on(Place::default(), port, &["0.0.0.0"]);
    let agent = Agent::start(&[
        "--cgroup",
        &a.cgroup.path,
        "--max-endpoints",
        "512",
        "--endpoint-budget",
        "16",
        "--endpoint-idle",
        "2s",
    ]);
    assert_eq!(distinct_calls(&a, port, 40, 40), 40);
    // 16 endpoints of their own, the other 24 requests in `_OTHER`.
    wait_until("the overflow endpoint", 10, || {
        listed(&agent, a.cgroup.id) == (16, 16, 24)
    });
    let text = agent.metrics_text();
    assert!(
        text.lines().any(
            |l| l.starts_with("http_client_request_duration_seconds_count{")
                && l.contains("server_address=\"_OTHER\"")
                && l.contains("server_port=\"0\"")
                && l.ends_with(" 24")
        ),
        "{text}"
    );
    assert!(text.contains("kite_endpoint_budget 16"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("kite_endpoint_budget_overflow_total{")
                && l.contains("kite_side=\"client\"")
                && l.ends_with(" 24")),
        "{text}"
    );
    assert_eq!(agent.counter("ebpf_endpoint_budget_overflow"), 24);
    // Quiet for longer than --endpoint-idle while at its budget: its 16 endpoints are evicted
    // (the overflow endpoint stays), and the next new endpoints get entries of their own.
    wait_until("idle endpoints evicted", 15, || {
        agent.counter("idle_endpoints") == 16
    });
    assert_eq!(listed(&agent, a.cgroup.id), (0, 0, 24));
    assert_eq!(distinct_calls(&a, port, 10, 10), 10);
    wait_until("new endpoints of its own", 10, || {
        listed(&agent, a.cgroup.id) == (10, 10, 24)
    });
    assert_eq!(agent.counter("ebpf_endpoint_budget_overflow"), 24);
}

#[test]
fn a_full_map_still_counts_every_request() {
    if !ebpf_available("a_full_map_still_counts_every_request") {
        return;
    }
    let _serial = serial();
    let a = TestCgroup::new("fair-full");
    let port = free_port();
    let _servers = nginx_on(Place::default(), port, &["0.0.0.0"]);
    // A map of 16 (too small for a default budget): the 24 requests beyond it go to overflow.
    let w = Watch::with_options(
        &a,
        Options {
            max_endpoints: 16,
            ..Options::default()
        },
    );
    assert_eq!(distinct_calls(&a, port, 40, 10), 40);
    let (keys, own, overflow) = split(&w.kite, a.cgroup.id, Direction::Outbound);
    assert_eq!((keys, own, overflow), (16, 16, 24));
    assert_eq!(w.counter(Stat::EndpointsMapFull), 24);
    assert_eq!(w.counter(Stat::EndpointBudgetOverflow), 0);
    assert_eq!(w.counter(Stat::OverflowMapFull), 0);
}
