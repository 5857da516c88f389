//! A pod's own route patterns (its `kite.io/routes`, carried by the hello) through the agent's
//! restart: kept in the state file, applied again to that pod only. (The webhook → kite-init →
//! agent path is `webhook/tests/node.rs`.)

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use kite_testkit::*;

use super::agent::{Agent, hello_from};

const UID: &str = "5b0c8e61-3f2a-4d7c-9e1b-2a4f6c8d0e13";

/// The server `_count`s on `port`, summed per (route label, value).
fn routes_on(agent: &Agent, port: u16) -> BTreeMap<(String, String), u64> {
    let port_label = format!("server_port=\"{port}\"");
    let mut out = BTreeMap::new();
    for l in agent.metrics_text().lines().filter(|l| {
        l.starts_with("http_server_request_duration_seconds_count{") && l.contains(&port_label)
    }) {
        let Some((labels, value)) = l.rsplit_once(' ') else {
            continue;
        };
        for key in ["http_route", "url_template"] {
            if let Some((_, rest)) = labels.split_once(&format!("{key}=\"")) {
                let v = rest.split('"').next().unwrap_or_default().to_string();
                *out.entry((key.to_string(), v)).or_default() +=
                    value.parse::<f64>().unwrap() as u64;
            }
        }
    }
    out
}

/// Waits until the routes on `port` are `want`.
fn wait_routes(agent: &Agent, port: u16, want: &BTreeMap<(String, String), u64>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = routes_on(agent, port);
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "routes on {port}: {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` requests per path of `paths` to 127.0.0.1:`port`, one connection.
fn send(port: u16, paths: &[&str], n: usize) -> u64 {
    client(&Load {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        conns: 1,
        per_conn: n * paths.len(),
        paths,
        ..Load::default()
    })
    .requests()
}

#[test]
fn a_pods_patterns_survive_the_agents_restart_and_stay_its_own() {
    if !ebpf_available("a_pods_patterns_survive_the_agents_restart_and_stay_its_own") {
        return;
    }
    let _serial = serial();
    let root = TestCgroup::new("pod-routes");
    let pod = root.child(&format!("kubepods/pod{UID}"));
    let app = root.child(&format!("kubepods/pod{UID}/app"));
    let init = root.child(&format!("kubepods/pod{UID}/init"));
    let host = root.child("host");
    let (pod_port, host_port) = (free_port(), free_port());
    let _pod_nginx = nginx_on(
        Place {
            cgroup_path: Some(&app.dir),
            ..Place::default()
        },
        pod_port,
        &["127.0.0.1"],
    );
    let _host_nginx = nginx_on(
        Place {
            cgroup_path: Some(&host.dir),
            ..Place::default()
        },
        host_port,
        &["127.0.0.1"],
    );
    let agent = Agent::start(&["--cgroup", &host.path]);
    let hello = serde_json::json!({"version": 1, "pod": "p", "namespace": "n", "uid": UID,
                                   "routes": ["/status/{code}"]});
    let ack = hello_from(&init.dir, &agent.socket, &hello.to_string());
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        ack["message"],
        "attached with route patterns /status/{code}"
    );
    let paths = ["/status/200", "/status/404"];
    let route = |k: &str, v: &str| BTreeMap::from([((k.to_string(), v.to_string()), 100)]);
    let round = |agent: &Agent| {
        assert_eq!(send(pod_port, &paths, 50), 100);
        assert_eq!(send(host_port, &paths, 50), 100);
        // The pod's pattern on its series; the other cgroup's route is the heuristic's.
        wait_routes(agent, pod_port, &route("http_route", "/status/{code}"));
        wait_routes(agent, host_port, &route("url_template", "/status/*"));
    };
    round(&agent);
    // SIGKILL, then a new agent with the same state directory: the pod is re-attached from
    // the state file with its patterns (its init container does not run again). The new
    // agent's counts start from zero.
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(agent.proc.child.id() as i32, libc::SIGKILL) };
    let mut agent = agent;
    agent.proc.child.wait().unwrap();
    let restarted = agent.restart();
    let att = restarted.info().attachments;
    assert!(att.iter().any(|a| a.cgroup_path == pod.path), "{att:?}");
    round(&restarted);
}
