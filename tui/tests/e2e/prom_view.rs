//! `kite-tui --prometheus` (issue 16, point 4): Debian's Prometheus (native histograms)
//! scrapes two in-process agents of a simulated node — pods in a kubelet-like cgroup tree
//! that say hello on the agents' sockets, as kite-init does — and `--once -o json` over the
//! Prometheus shows the endpoints and counts the agents show directly, and the same sums by
//! namespace and by workload, grouped in PromQL.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use kite_testkit::{
    Load, Place, Prometheus, TestCgroup, client, ebpf_available, free_port, python_httpd, serial,
    wait_for_port,
};
use serde_json::Value;

use crate::{TUI, agent::InProcessAgent};

/// One simulated pod: its cgroup and one container scope, as the kubelet (systemd driver)
/// and containerd lay them out.
struct Pod {
    namespace: &'static str,
    name: &'static str,
    container: PathBuf,
}

impl Pod {
    /// Makes the cgroups under `root` and says hello on `socket` from inside the container,
    /// as kite-init does; panics unless the agent attached.
    fn enroll(
        root: &TestCgroup,
        socket: &std::path::Path,
        namespace: &'static str,
        name: &'static str,
        seed: u32,
    ) -> Self {
        let uid = format!("{:08x}-1c2b-4e3f-9a8b-{:012x}", seed, std::process::id());
        let pod = root.child(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let container = pod
            .dir
            .join(format!("cri-containerd-{:0>64}.scope", format!("{seed:x}")));
        std::fs::create_dir_all(&container).unwrap();
        let hello = format!(
            "{{\"version\":1,\"pod\":\"{name}\",\"namespace\":\"{namespace}\",\"uid\":\"{uid}\"}}\n"
        );
        let said = say_hello(&container, socket, &hello);
        assert!(said.contains("\"ok\":true"), "{namespace}/{name}: {said}");
        Self {
            namespace,
            name,
            container,
        }
    }

    fn place(&self) -> Place<'_> {
        Place {
            cgroup_path: Some(&self.container),
            ..Place::default()
        }
    }
}

/// The agent's answer to `hello`, sent from a process in `container`.
fn say_hello(container: &std::path::Path, socket: &std::path::Path, hello: &str) -> String {
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.settimeout(10)\n\
                  s.connect(sys.argv[1])\n\
                  s.sendall(sys.argv[2].encode())\n\
                  print(s.makefile().readline())\n";
    let out = kite_testkit::command(
        Place {
            cgroup_path: Some(container),
            ..Place::default()
        },
        &["python3", "-c", script, socket.to_str().unwrap(), hello],
    )
    .output()
    .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tui(args: &[&str]) -> Value {
    let out: Output = Command::new(TUI).args(args).output().expect("run kite-tui");
    assert!(
        out.status.success(),
        "kite-tui {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON document")
}

/// `kite-tui --prometheus url --once -o json --group group`, rates over 5 s.
fn prometheus_once(url: &str, group: &str) -> Value {
    tui(&[
        "--prometheus",
        url,
        "--window",
        "5s",
        "--once",
        "-o",
        "json",
        "--group",
        group,
    ])
}

fn endpoints(doc: &Value) -> &Vec<Value> {
    doc["endpoints"].as_array().unwrap()
}

/// (direction, address, namespace/pod) → requests, of a JSON document's endpoints.
fn by_endpoint(doc: &Value) -> BTreeMap<(String, String, String), u64> {
    endpoints(doc)
        .iter()
        .map(|e| {
            (
                (
                    e["id"]["direction"].as_str().unwrap().to_string(),
                    e["id"]["address"].as_str().unwrap().to_string(),
                    e["name"].as_str().unwrap().to_string(),
                ),
                e["totals"]["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The row named `name` of a grouped document.
fn group<'a>(doc: &'a Value, name: &str) -> &'a Value {
    endpoints(doc)
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no row {name}: {doc:#}"))
}

#[test]
fn prometheus_view_shows_the_agents_endpoints_and_sums_by_namespace_and_workload() {
    if !ebpf_available(
        "prometheus_view_shows_the_agents_endpoints_and_sums_by_namespace_and_workload",
    ) {
        return;
    }
    let _serial = serial();
    let root = TestCgroup::new("tui-prom-node");
    let agent_a = InProcessAgent::start_for_pods("500ms", "sim-a");
    let agent_b = InProcessAgent::start_for_pods("500ms", "sim-b");
    // Two pods of namespace shop on two agents, one of namespace pay.
    let pods = [
        (
            Pod::enroll(&root, &agent_a.socket(), "shop", "web-a", 1),
            free_port(),
            300,
        ),
        (
            Pod::enroll(&root, &agent_b.socket(), "shop", "web-b", 2),
            free_port(),
            200,
        ),
        (
            Pod::enroll(&root, &agent_a.socket(), "pay", "api-0", 3),
            free_port(),
            100,
        ),
    ];
    let _servers: Vec<_> = pods
        .iter()
        .map(|(pod, port, _)| python_httpd(pod.place(), "127.0.0.1", *port, false))
        .collect();
    for (_, port, _) in &pods {
        wait_for_port(&format!("127.0.0.1:{port}"), None);
    }
    let prom = Prometheus::start(&[agent_a.metrics, agent_b.metrics], true);

    // Delays of 1–5 ms, so that percentiles mean something.
    let delays: Vec<String> = (0..=40)
        .map(|i| format!("/d/{:.1}", 1.0 + i as f64 / 10.0))
        .collect();
    let paths: Vec<&str> = delays.iter().map(String::as_str).collect();
    let mut sent = BTreeMap::new();
    let mut shop_latencies: Vec<f64> = Vec::new();
    for (pod, port, n) in &pods {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let report = client(&Load {
            addr,
            conns: 4,
            per_conn: n / 4,
            paths: &paths,
            ..Load::default()
        });
        assert_eq!(report.requests(), *n as u64);
        if pod.namespace == "shop" {
            shop_latencies.extend(report.latencies.iter().map(Duration::as_secs_f64));
        }
        sent.insert(format!("{}/{}", pod.namespace, pod.name), *n as u64);
    }
    let all: u64 = sent.values().sum();
    // Within one scrape interval: wait until Prometheus holds the whole load.
    prom.wait_for_value(
        "histogram_count(sum(http_server_request_duration_seconds))",
        all as f64,
        Duration::from_secs(30),
    );

    let url = format!("http://{}", prom.addr);
    let direct = tui(&[
        "--once",
        "-o",
        "json",
        "--addr",
        &agent_a.addr(),
        "--addr",
        &agent_b.addr(),
    ]);
    let via = prometheus_once(&url, "endpoint");
    // The same endpoints with the same counts (the load has ended: nothing moves).
    let (d, p) = (by_endpoint(&direct), by_endpoint(&via));
    eprintln!("  direct {d:?}\n  prometheus {p:?}");
    if p.is_empty() {
        let q = kite_tui::prometheus::Queries::new(
            kite_tui::app::Grouping::Endpoint,
            Duration::from_secs(5),
        );
        let h = prom.query(&q.histograms);
        eprintln!(
            "  histograms: {}",
            serde_json::to_string(&h[..h.len().min(2)]).unwrap()
        );
        eprintln!("  document: {via:#}");
    }
    assert_eq!(p, d);
    for (pod, port, n) in &pods {
        let key = (
            "inbound".to_string(),
            format!("127.0.0.1:{port}"),
            format!("{}/{}", pod.namespace, pod.name),
        );
        assert_eq!(p.get(&key), Some(&(*n as u64)), "{key:?}");
    }
    // Each row names the node that measured it (the pods' node label).
    for e in endpoints(&via) {
        let node = e["id"]["node"].as_str().unwrap();
        assert!(node == "sim-a" || node == "sim-b", "{e:#}");
    }

    // By namespace, summed in PromQL across both agents.
    let ns = prometheus_once(&url, "namespace");
    assert_eq!(endpoints(&ns).len(), 2, "{ns:#}");
    let shop = group(&ns, "shop");
    assert_eq!(shop["totals"]["requests"], 500);
    assert_eq!(group(&ns, "pay")["totals"]["requests"], 100);
    // The group's percentiles are those of both pods' requests together (histogram_quantile
    // over the two agents' summed native histograms), not an average of the pods' own: within
    // the bounds the Prometheus test allows against the client's clock (2.5 % above, 5 % + 1
    // ms below: the kernel's interval lies inside the client's).
    // p99 of 500 requests is 5 of them, which the client's scheduler on a loaded machine
    // stretches: it is checked against the pods' own p99 instead — a mixture's quantile lies
    // between its parts' (the agents' own estimates over the same native buckets).
    shop_latencies.sort_by(f64::total_cmp);
    for (q, key) in [
        (0.5, "p50_seconds"),
        (0.9, "p90_seconds"),
        (0.99, "p99_seconds"),
    ] {
        let rank = ((q * shop_latencies.len() as f64).ceil() as usize).max(1) - 1;
        let own = shop_latencies[rank];
        let server = shop["totals"][key].as_f64().unwrap();
        let pods: Vec<f64> = endpoints(&direct)
            .iter()
            .filter(|e| e["workload"]["namespace"] == "shop")
            .map(|e| e["totals"][key].as_f64().unwrap())
            .collect();
        let (lo, hi) = (
            pods.iter().copied().fold(f64::INFINITY, f64::min),
            pods.iter().copied().fold(0.0, f64::max),
        );
        eprintln!(
            "  shop q={q}: Prometheus {server:.6} s, the clients' {own:.6} s, the pods' {pods:?}"
        );
        assert!(
            server >= lo * 0.975 && server <= hi * 1.025,
            "shop q={q}: Prometheus {server} s outside the pods' [{lo}, {hi}]"
        );
        if q < 0.99 {
            assert!(
                server <= own * 1.025 && server >= own * 0.95 - 0.001,
                "shop q={q}: Prometheus {server} s, the clients {own} s"
            );
        }
    }

    // By workload: pods without an owner are their own workload.
    let wl = prometheus_once(&url, "workload");
    let got: BTreeMap<String, u64> = endpoints(&wl)
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["totals"]["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, sent);
}

/// What `kite-tui --prometheus URL --once` says on stderr, failing.
fn once_error(url: &str) -> String {
    let out = Command::new(TUI)
        .args(["--prometheus", url, "--once", "--timeout", "10s"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{url}: succeeded");
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[test]
fn prometheus_errors_are_one_sentence() {
    // Nothing listening.
    let url = format!("http://127.0.0.1:{}", free_port());
    assert_eq!(
        once_error(&url),
        format!("kite-tui: {url}: connection refused")
    );
    // An HTTP server that is not a Prometheus.
    let port = free_port();
    let _httpd = python_httpd(Place::default(), "127.0.0.1", port, false);
    wait_for_port(&format!("127.0.0.1:{port}"), None);
    let url = format!("http://127.0.0.1:{port}");
    let said = once_error(&url);
    assert!(
        said.starts_with(&format!("kite-tui: {url}: answers HTTP "))
            && said
                .ends_with("but is not a Prometheus query API (POST /api/v1/query gave no JSON)"),
        "{said}"
    );
    // A Prometheus that scrapes no agent.
    let prom = Prometheus::start(&[], true);
    let url = format!("http://{}", prom.addr);
    assert_eq!(
        once_error(&url),
        format!(
            "kite-tui: {url}: no Kite series (no http_server_request_duration_seconds or the \
             other Kite families): is it scraping the agents' /metrics?"
        )
    );
    assert_eq!(lines(&once_error(&url)), 1);
}

fn lines(s: &str) -> usize {
    s.lines().count()
}
