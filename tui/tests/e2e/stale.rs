//! Two agents on two cgroups in a real terminal; one stops and comes back (issue 16, point 3).

use std::time::Duration;

use kite_testkit::{Place, TestCgroup, ebpf_available, free_port, nginx, serial};

use crate::{TUI, agent::InProcessAgent, dashboard::Loads, tmux::Tmux};

const WAIT: Duration = Duration::from_secs(20);

/// The line of the row of `addr` measured on `node`.
fn row<'a>(screen: &'a str, node: &str, addr: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.first() == Some(&node) && f.contains(&addr)
    })
}

/// The age a stale row shows (`✗12s name` → 12), if it is marked stale.
fn stale_age(line: &str) -> Option<u64> {
    let rest = line.split('✗').nth(1)?;
    rest.split('s').next()?.parse().ok()
}

#[test]
fn an_agent_that_stops_keeps_its_rows_greyed_and_stale_until_it_is_back() {
    if !ebpf_available("an_agent_that_stops_keeps_its_rows_greyed_and_stale_until_it_is_back") {
        return;
    }
    let _serial = serial();
    let (cg_a, cg_b) = (
        TestCgroup::new("tui-stale-a"),
        TestCgroup::new("tui-stale-b"),
    );
    let (port_a, port_b) = (free_port(), free_port());
    let _srv_a = nginx(Place::in_cgroup(&cg_a), port_a);
    let _srv_b = nginx(Place::in_cgroup(&cg_b), port_b);
    let agent_a = InProcessAgent::start_on(
        &cg_a,
        "1s",
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        "node-a",
    );
    let grpc_b = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent_b = InProcessAgent::start_on(&cg_b, "1s", grpc_b, "node-b");
    let (a, b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));
    let mut loads = Loads::new();
    loads.start(&a, 1, Duration::from_millis(20));
    loads.start(&b, 1, Duration::from_millis(20));

    let tmux = Tmux::new(160, 40);
    tmux.text(&format!(
        "{TUI} --addr {} --addr {}; echo \"EXIT_CODE $?\"",
        agent_a.addr(),
        agent_b.addr()
    ));
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("both agents' endpoints", WAIT, |s| {
        row(s, "node-a", &a).is_some() && row(s, "node-b", &b).is_some()
    });
    assert!(!s.contains("stale)"), "{s}");
    assert!(stale_age(row(&s, "node-b", &b).unwrap()).is_none(), "{s}");

    // Agent b stops: its row stays, marked stale with the time since its last snapshot, and
    // the agent line says it is down; a's row is live.
    let label_b = agent_b.addr();
    drop(agent_b);
    let s = tmux.wait_for("b's row stale", WAIT, |s| {
        row(s, "node-b", &b).is_some_and(|l| stale_age(l).is_some())
            && s.contains("1 stale")
            && s.lines()
                .any(|l| l.contains(&label_b) && l.contains("last snapshot"))
    });
    assert!(
        stale_age(row(&s, "node-a", &a).expect("a's row")).is_none(),
        "{s}"
    );
    let first = stale_age(row(&s, "node-b", &b).unwrap()).unwrap();
    // The age grows while it stays down.
    let s = tmux.wait_for("the stale age to grow", WAIT, |s| {
        row(s, "node-b", &b)
            .and_then(stale_age)
            .is_some_and(|age| age >= first + 2)
    });
    assert!(row(&s, "node-a", &a).is_some(), "{s}");
    // x hides the stale rows, x again shows them.
    tmux.keys(&["x"]);
    tmux.wait_for("b's row hidden", WAIT, |s| {
        row(s, "node-b", &b).is_none() && row(s, "node-a", &a).is_some() && s.contains("hidden")
    });
    tmux.keys(&["x"]);
    tmux.wait_for("b's row shown again", WAIT, |s| {
        row(s, "node-b", &b).is_some()
    });

    // Agent b comes back on the same address: its row is live again.
    let agent_b = InProcessAgent::start_on(&cg_b, "1s", grpc_b, "node-b");
    let s = tmux.wait_for("b live again", WAIT, |s| {
        row(s, "node-b", &b).is_some_and(|l| stale_age(l).is_none())
            && !s.contains("stale)")
            && s.lines()
                .any(|l| l.contains(&agent_b.addr()) && l.contains("connected"))
    });
    assert!(row(&s, "node-a", &a).is_some(), "{s}");

    tmux.keys(&["q"]);
    tmux.wait_for("kite-tui to exit", WAIT, |s| s.contains("EXIT_CODE 0"));
    drop(loads);
}
