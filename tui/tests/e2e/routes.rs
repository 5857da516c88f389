//! Routes in a real terminal: nginx asked three paths by kite-testkit's client, a real agent,
//! and `kite-tui` in tmux: the routes view (`r`) sorts them by p99, the detail view lists
//! each with the generator's own count.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use kite_testkit::{Load, Place, TestCgroup, client, ebpf_available, free_port, nginx, serial};

use crate::{TUI, agent::InProcessAgent, parse_rate, tmux::Tmux};

const WAIT: Duration = Duration::from_secs(20);

/// The paths asked, and the routes the agent makes of them (ids become `*`).
const PATHS: [(&str, &str); 3] = [("/", "/"), ("/d/40", "/d/*"), ("/status/404", "/status/*")];

/// The fields of the line whose first field is `route`.
fn route_line<'a>(screen: &'a str, route: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|t| t.first() == Some(&route))
}

fn line_of(screen: &str, route: &str) -> Option<usize> {
    screen
        .lines()
        .position(|l| l.split_whitespace().next() == Some(route))
}

#[test]
fn routes_show_the_generators_counts_and_sort_by_p99() {
    if !ebpf_available("routes_show_the_generators_counts_and_sort_by_p99") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("tui-routes");
    let port = free_port();
    let _srv = nginx(Place::in_cgroup(&cg), port);
    let agent = InProcessAgent::start(&cg, "1s");

    // 150 requests on each path, one connection, one request per 10 ms or more (≈ 9 s):
    // `/d/40` takes 40 ms (far above a scheduling hiccup of a busy machine), the others well
    // under one.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let load = thread::spawn(move || {
        let paths: Vec<&str> = PATHS.iter().map(|p| p.0).collect();
        let r = client(&Load {
            addr,
            conns: 1,
            per_conn: 450,
            paths: &paths,
            pace: Some(Duration::from_millis(10)),
            deadline: Some(Instant::now() + Duration::from_secs(60)),
            ..Load::default()
        });
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for &j in &r.path_of {
            *counts.entry(PATHS[j].1).or_default() += 1;
        }
        counts
    });

    let tmux = Tmux::new(160, 40);
    tmux.text(&format!(
        "{TUI} --addr {}; echo \"EXIT_CODE $?\"",
        agent.addr()
    ));
    tmux.keys(&["Enter"]);
    let endpoint = format!("127.0.0.1:{port}");
    tmux.wait_for("nginx's endpoint", WAIT, |s| s.contains(&endpoint));

    // The routes view, while the load runs: every route, slowest p99 first.
    tmux.keys(&["r"]);
    let s = tmux.wait_for("the three routes by p99 with traffic", WAIT, |s| {
        s.contains("routes by p99")
            && s.contains("ROUTE")
            && PATHS.iter().all(|(_, r)| {
                route_line(s, r)
                    .and_then(|t| t.get(5).and_then(|f| parse_rate(f)))
                    .is_some_and(|rps| rps > 5.0)
            })
    });
    assert!(s.contains("P99▼"), "{s}");
    assert!(line_of(&s, "/d/*") < line_of(&s, "/"), "{s}");
    assert!(line_of(&s, "/d/*") < line_of(&s, "/status/*"), "{s}");
    // nginx answers /status/404 with 404: the route's 4XX% is 100, its ERR% 0.
    let st = route_line(&s, "/status/*").unwrap();
    assert_eq!((st[9], st[10]), ("0.0", "100"), "{s}");

    // Every request made, by route; the agent has them all.
    let counts = load.join().expect("load");
    assert_eq!(counts.values().sum::<u64>(), 450);
    assert_eq!(counts.len(), 3);

    // Back to the endpoints, then the detail view of nginx's: its routes, each with the
    // requests since first seen (REQ, the 8th field) equal to the generator's.
    tmux.keys(&["r"]);
    tmux.wait_for("the endpoints again", WAIT, |s| {
        !s.contains("routes by") && s.contains(&endpoint)
    });
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("the routes with the generator's counts", WAIT, |s| {
        s.contains("Routes (3)")
            && counts.iter().all(|(route, n)| {
                route_line(s, route).is_some_and(|t| t.get(7) == Some(&n.to_string().as_str()))
            })
    });
    assert!(s.contains("P99 HISTORY"), "{s}");
    tmux.keys(&["q"]);
    tmux.wait_for("kite-tui to exit", WAIT, |s| s.contains("EXIT_CODE 0"));
}
