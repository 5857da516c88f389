//! `kite-tui --once` against a real agent, compared with the agent's own `List`.

use std::{net::SocketAddr, process::Command, thread, time::Duration};

use kite_testkit::{Load, Place, TestCgroup, client, ebpf_available, free_port, nginx, serial};
use serde_json::Value;

use crate::{TUI, agent::InProcessAgent};

fn once(args: &[&str]) -> std::process::Output {
    Command::new(TUI)
        .arg("--once")
        .args(args)
        .output()
        .expect("run kite-tui")
}

#[test]
fn once_json_matches_the_agents_list_and_table_shows_the_endpoint() {
    if !ebpf_available("once_json_matches_the_agents_list_and_table_shows_the_endpoint") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("tui-once");
    let port = free_port();
    let _srv = nginx(Place::in_cgroup(&cg), port);
    let agent = InProcessAgent::start(&cg, "500ms");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let report = client(&Load {
        addr,
        conns: 2,
        per_conn: 150,
        paths: &["/", "/status/404"],
        ..Load::default()
    });
    assert_eq!(report.requests(), 300);
    // Three windows without traffic: totals are final and the last window is idle, so both
    // calls below see the same numbers whichever window they fall in.
    thread::sleep(Duration::from_millis(1600));

    let out = once(&["-o", "json", "--addr", &agent.addr()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("a JSON document");
    let list = agent.list();

    let eps = doc["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), list.endpoints.len(), "{doc:#}");
    assert_eq!(doc["agents"][0]["ok"], true);
    assert_eq!(doc["agents"][0]["node"], "tui-test-node");
    assert_eq!(doc["agents"][0]["endpoints"], list.endpoints.len());
    for (d, e) in eps.iter().zip(&list.endpoints) {
        let id = e.id.as_ref().unwrap();
        let dir = match id.direction() {
            kite_proto::v1::Direction::Inbound => "inbound",
            kite_proto::v1::Direction::Outbound => "outbound",
            kite_proto::v1::Direction::Unspecified => "unspecified",
        };
        assert_eq!(d["id"]["node"], id.node.as_str());
        assert_eq!(d["id"]["cgroup_id"], id.cgroup_id);
        assert_eq!(d["id"]["cgroup_path"], id.cgroup_path.as_str());
        assert_eq!(d["id"]["direction"], dir);
        assert_eq!(d["id"]["ip"], id.ip.as_str());
        assert_eq!(d["id"]["port"], id.port);
        let (t, w) = (e.totals.as_ref().unwrap(), e.last.as_ref().unwrap());
        assert_eq!(d["totals"]["requests"], t.requests, "{d:#}");
        assert_eq!(d["totals"]["status_4xx"], t.status_4xx);
        assert_eq!(d["totals"]["status_5xx"], t.status_5xx);
        assert_eq!(d["totals"]["request_bytes"], t.request_bytes);
        assert_eq!(d["totals"]["response_bytes"], t.response_bytes);
        assert_eq!(d["last"]["requests"], w.requests);
    }
    // And they are the load's: 300 requests, half of them 404.
    let ep = eps
        .iter()
        .find(|d| d["id"]["port"] == port && d["id"]["direction"] == "inbound")
        .unwrap_or_else(|| panic!("no endpoint on port {port}: {doc:#}"));
    assert_eq!(ep["totals"]["requests"], 300);
    assert_eq!(ep["totals"]["status_4xx"], 150);
    assert_eq!(ep["id"]["cgroup_path"], cg.cgroup.path.as_str());
    assert_eq!(ep["name"], cg.cgroup.path.as_str());

    // The table: a header and the endpoint's row.
    let out = once(&["--addr", &agent.addr()]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    assert!(
        lines.any(|l| l.contains(&format!("127.0.0.1:{port}")) && l.contains(" in ")),
        "{table}"
    );

    // One agent down among several: still a document, the failure named, a warning.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = once(&["-o", "json", "--addr", &agent.addr(), "--addr", &dead]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("warning: {dead}")), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["agents"][1]["ok"], false);
    assert_eq!(
        doc["endpoints"].as_array().unwrap().len(),
        list.endpoints.len()
    );
}

#[test]
fn once_fails_clearly_when_no_agent_answers() {
    let dead = format!("127.0.0.1:{}", free_port());
    for format in ["table", "json"] {
        let out = once(&["-o", format, "--addr", &dead, "--timeout", "3s"]);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with(&format!("kite-tui: no agent answered: {dead}: "))
                && stderr.contains("refused"),
            "{stderr}"
        );
    }
    let out = once(&["--addr", "https://x:1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid agent address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// gRPC calls through the kernel (Python's grpcio, server and client in the measured cgroup):
/// `--once -o json` has the endpoint as gRPC with the client's methods, per-method call counts
/// and grpc-status names; the table lists the methods under it.
#[test]
fn once_shows_grpc_endpoints_with_their_methods_and_statuses() {
    use kite_testkit::grpc::{self, SERVICE, Stack};
    if !ebpf_available("once_shows_grpc_endpoints_with_their_methods_and_statuses") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("tui-once-grpc");
    let place = Place::in_cgroup(&cg);
    let port = free_port();
    let _srv = grpc::server(Stack::Python, place, port);
    let agent = InProcessAgent::start(&cg, "500ms");
    const SPEC: &str = "Unary:1:0,Lookup:1:5,Unary:1:14";
    let calls = grpc::client(
        Stack::Python,
        place,
        &format!("127.0.0.1:{port}"),
        30,
        3,
        SPEC,
        Duration::from_secs(60),
    );
    assert_eq!(calls.counts(), grpc::planned(30, SPEC));
    thread::sleep(Duration::from_millis(1600));

    let out = once(&["-o", "json", "--addr", &agent.addr()]);
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
        .find(|d| d["id"]["port"] == port && d["id"]["direction"] == "inbound")
        .unwrap_or_else(|| panic!("no endpoint on port {port}: {doc:#}"));
    assert_eq!(ep["id"]["protocol"], "gRPC", "{ep:#}");
    assert_eq!(ep["id"]["tls"], false);
    assert_eq!(ep["totals"]["requests"], 30);
    // 10 NOT_FOUND and 10 UNAVAILABLE failed; only UNAVAILABLE is a server error.
    assert_eq!(ep["totals"]["rpc_errors"], 20);
    assert_eq!(ep["totals"]["rpc_server_errors"], 10);
    assert_eq!(ep["totals"]["status_4xx"], 0);
    // Per method, as the client counted (its names once the kernel sent them, else ids).
    let id_of = |method: &str| {
        let path = format!("/{SERVICE}/{method}");
        kite_common::maps::rpc_id(kite_common::h2::hpack::path_id(path.as_bytes()))
    };
    let rpcs = ep["rpcs"].as_array().unwrap();
    assert_eq!(rpcs.len(), 2, "{ep:#}");
    for (method, calls) in [("Unary", 20), ("Lookup", 10)] {
        let m = rpcs
            .iter()
            .find(|m| m["id"] == id_of(method))
            .unwrap_or_else(|| panic!("no {method}: {ep:#}"));
        let name = m["name"].as_str().unwrap();
        assert!(
            name == format!("{SERVICE}/{method}") || name == format!("rpc#{:08x}", id_of(method)),
            "{name}"
        );
        assert_eq!(m["totals"]["requests"], calls, "{m:#}");
    }
    // The table: the endpoint's row says gRPC, its methods follow it.
    let out = once(&["--addr", &agent.addr()]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(&format!("127.0.0.1:{port}")) && l.contains(" in "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(lines[at].contains("gRPC"), "{table}");
    assert!(lines[at + 1].trim_start().starts_with("└ "), "{table}");
    assert!(lines[at + 2].trim_start().starts_with("└ "), "{table}");
}
