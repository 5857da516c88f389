//! The OpenTelemetry HTTP and RPC semantic conventions (v1.44.0) against real traffic and a
//! real Prometheus: every label of every `http_*` and `rpc_*` series Prometheus stored is
//! checked against a table of the conventions (name, allowed values, when present), and the
//! label values against the clients' own view of each exchange (curl's status code and HTTP
//! version; a gRPC client's method and grpc-status per call). Also the agent's own metrics
//! (`kite_build_info`, `process_*`, the `kite_ebpf_*` families) against `ps`, `prlimit` and
//! the traffic.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use kite_common::{
    h2::hpack::path_id,
    maps::{GRPC_STATUS_NAMES, rpc_id},
};
use kite_proto::v1;
use kite_testkit::{
    grpc::{self, Stack},
    *,
};
use serde_json::Value;

use super::agent::{Agent, hello, hello_from};

/// Where the test servers listen: not the clients' address, so `server_address` is seen to
/// be the server's.
const SERVER_IP: &str = "127.0.0.3";

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

/// Allowed values of an attribute.
#[derive(Clone, Copy)]
enum Values {
    /// One of these.
    OneOf(&'static [&'static str]),
    /// A final HTTP status code: three digits, 100–599.
    Status,
    /// Equal to the series' `http_response_status_code`.
    TheStatus,
    /// A gRPC status code's name (`OK`, `NOT_FOUND`, …).
    GrpcStatus,
    /// Equal to the series' `rpc_response_status_code`.
    TheGrpcStatus,
    /// A gRPC method: `package.Service/Method`, `rpc#<8 hex digits>` (name not learnt yet)
    /// or `_OTHER`.
    RpcMethod,
    /// A route (Kite's `url_template`): a path without query or fragment whose identifier
    /// segments are `*`, `*`, `rpc#<8 hex digits>` (text not learnt yet) or `_OTHER`.
    Route,
    /// A port, 1–65535.
    Port,
    /// An IP address (Kite knows addresses, not host names).
    Ip,
    /// An absolute cgroup path.
    Path,
    /// Any non-empty value.
    Any,
}

/// When an attribute is on a series.
#[derive(Clone, Copy)]
enum When {
    Always,
    /// `error_type`: server side on 5xx, client side on 4xx and 5xx.
    OnError,
    /// `error_type` of gRPC calls: server side on UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
    /// INTERNAL, UNAVAILABLE, DATA_LOSS; client side on every status but OK.
    OnRpcError,
    /// Series of pods.
    Pod,
    /// Series of pods named by their own hello, the Kubernetes API not followed.
    Unverified,
    /// Series of pods whose owner the Kubernetes API told.
    PodOwner,
    /// Series of pods, or any series while the agent follows the Kubernetes API.
    Kubernetes,
    /// Series of cgroups that are not pods.
    NotPod,
    /// Histogram buckets only.
    Bucket,
    /// HTTP/1 series of a known method (routes are on by default; an `_OTHER` method's target
    /// is not read).
    Http1,
}

/// What the test knows about where a series comes from.
struct Ctx {
    /// The agent follows the Kubernetes API.
    api: bool,
    /// Server ports of the servers running in a pod.
    pod_ports: Vec<String>,
}

impl Ctx {
    fn is_pod(&self, series: &BTreeMap<String, String>) -> bool {
        let name = &series["__name__"];
        (name.starts_with("http_server_") || name.starts_with("rpc_server_"))
            && self.pod_ports.contains(&series["server_port"])
    }
}

/// The conventions of `http.server.request.duration` / `http.client.request.duration` in
/// Prometheus' spelling, as Kite exports them (README "Prometheus"), plus the labels
/// Prometheus adds itself.
const CONVENTIONS: &[(&str, Values, When)] = &[
    ("http_request_method", Values::OneOf(METHODS), When::Always),
    ("http_response_status_code", Values::Status, When::Always),
    ("error_type", Values::TheStatus, When::OnError),
    (
        "network_protocol_version",
        Values::OneOf(&["1.0", "1.1", "2"]),
        When::Always,
    ),
    (
        "url_scheme",
        Values::OneOf(&["http", "https"]),
        When::Always,
    ),
    // Kite's own choice (DESIGN.md, Routes): the route it infers from the path, under the
    // name OpenTelemetry gives templates not made by the application (`url.template`);
    // `http.route` is left to application-made templates.
    ("url_template", Values::Route, When::Http1),
    ("server_address", Values::Ip, When::Always),
    ("server_port", Values::Port, When::Always),
    ("cgroup", Values::Path, When::NotPod),
    ("k8s_namespace_name", Values::Any, When::Pod),
    ("k8s_pod_name", Values::Any, When::Pod),
    ("k8s_workload_kind", Values::Any, When::PodOwner),
    ("k8s_workload_name", Values::Any, When::PodOwner),
    (
        "kite_unverified",
        Values::OneOf(&["true"]),
        When::Unverified,
    ),
    ("k8s_node_name", Values::Any, When::Kubernetes),
    // Prometheus' own.
    ("__name__", Values::Any, When::Always),
    ("instance", Values::Any, When::Always),
    ("job", Values::Any, When::Always),
    ("le", Values::Any, When::Bucket),
];

/// The conventions of `rpc.server.call.duration` / `rpc.client.call.duration` (semantic
/// conventions v1.44.0, gRPC) in Prometheus' spelling, with the endpoint and owner labels
/// Kite gives every series. `rpc_method` and `rpc_response_status_code` are absent only for
/// calls whose path or grpc-status the kernel could not know (a connection joined midway),
/// which this traffic does not make.
const RPC_CONVENTIONS: &[(&str, Values, When)] = &[
    ("rpc_system_name", Values::OneOf(&["grpc"]), When::Always),
    ("rpc_method", Values::RpcMethod, When::Always),
    ("rpc_response_status_code", Values::GrpcStatus, When::Always),
    ("error_type", Values::TheGrpcStatus, When::OnRpcError),
    ("server_address", Values::Ip, When::Always),
    ("server_port", Values::Port, When::Always),
    ("cgroup", Values::Path, When::NotPod),
    ("k8s_namespace_name", Values::Any, When::Pod),
    ("k8s_pod_name", Values::Any, When::Pod),
    ("k8s_workload_kind", Values::Any, When::PodOwner),
    ("k8s_workload_name", Values::Any, When::PodOwner),
    (
        "kite_unverified",
        Values::OneOf(&["true"]),
        When::Unverified,
    ),
    ("k8s_node_name", Values::Any, When::Kubernetes),
    ("__name__", Values::Any, When::Always),
    ("instance", Values::Any, When::Always),
    ("job", Values::Any, When::Always),
    ("le", Values::Any, When::Bucket),
];

/// The table of a series' family.
fn conventions(series: &BTreeMap<String, String>) -> &'static [(&'static str, Values, When)] {
    if series["__name__"].starts_with("rpc_") {
        RPC_CONVENTIONS
    } else {
        CONVENTIONS
    }
}

fn allowed(v: Values, value: &str, series: &BTreeMap<String, String>) -> bool {
    match v {
        Values::OneOf(list) => list.contains(&value),
        Values::Status => {
            value.len() == 3 && value.parse::<u16>().is_ok_and(|s| (100..=599).contains(&s))
        }
        Values::TheStatus => {
            series.get("http_response_status_code").map(String::as_str) == Some(value)
        }
        Values::GrpcStatus => GRPC_STATUS_NAMES.contains(&value),
        Values::TheGrpcStatus => {
            series.get("rpc_response_status_code").map(String::as_str) == Some(value)
        }
        Values::RpcMethod => {
            let id = value
                .strip_prefix("rpc#")
                .is_some_and(|h| h.len() == 8 && u32::from_str_radix(h, 16).is_ok());
            let name = value.split_once('/').is_some_and(|(s, m)| {
                !s.is_empty() && !m.is_empty() && !m.contains('/') && !s.starts_with('/')
            });
            value == "_OTHER" || id || name
        }
        Values::Route => {
            let id = value
                .strip_prefix("rpc#")
                .is_some_and(|h| h.len() == 8 && u32::from_str_radix(h, 16).is_ok());
            let path = value.starts_with('/')
                && !value.contains(['?', '#', ' '])
                && !value
                    .split('/')
                    .any(|seg| seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty());
            value == "_OTHER" || value == "*" || id || path
        }
        Values::Port => value.parse::<u16>().is_ok_and(|p| p > 0),
        Values::Ip => value.parse::<std::net::IpAddr>().is_ok(),
        Values::Path => value.starts_with('/'),
        Values::Any => !value.is_empty(),
    }
}

fn expected(when: When, series: &BTreeMap<String, String>, ctx: &Ctx) -> bool {
    let name = &series["__name__"];
    let server = name.starts_with("http_server_") || name.starts_with("rpc_server_");
    match when {
        When::Always => true,
        When::Http1 => {
            series
                .get("network_protocol_version")
                .is_some_and(|v| v != "2")
                && series["http_request_method"] != "_OTHER"
        }
        When::OnError => {
            let status: u16 = series["http_response_status_code"].parse().unwrap();
            if server { status >= 500 } else { status >= 400 }
        }
        When::OnRpcError => {
            let status = series
                .get("rpc_response_status_code")
                .map_or("", String::as_str);
            let server_errors = [
                "UNKNOWN",
                "DEADLINE_EXCEEDED",
                "UNIMPLEMENTED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS",
            ];
            if server {
                server_errors.contains(&status)
            } else {
                !status.is_empty() && status != "OK"
            }
        }
        When::Pod => ctx.is_pod(series),
        When::Unverified => ctx.is_pod(series) && !ctx.api,
        When::PodOwner => ctx.is_pod(series) && ctx.api,
        When::Kubernetes => ctx.is_pod(series) || ctx.api,
        When::NotPod => !ctx.is_pod(series),
        When::Bucket => name.ends_with("_bucket"),
    }
}

/// Checks one series against [`CONVENTIONS`] or [`RPC_CONVENTIONS`]; the problems found.
fn check_series(series: &BTreeMap<String, String>, ctx: &Ctx) -> Vec<String> {
    let mut bad = Vec::new();
    let table = conventions(series);
    for (k, v) in series {
        match table.iter().find(|(n, _, _)| n == k) {
            None => bad.push(format!("label {k} is not in the conventions")),
            Some((_, values, _)) if !allowed(*values, v, series) => {
                bad.push(format!("{k}={v:?} is not an allowed value"))
            }
            Some(_) => {}
        }
    }
    for (name, _, when) in table {
        let want = expected(*when, series, ctx);
        if want != series.contains_key(*name) {
            bad.push(format!(
                "{name} should be {}",
                if want { "present" } else { "absent" }
            ));
        }
    }
    bad
}

/// The checker itself: a series as Kite exports it passes, and each way of breaking the
/// conventions is caught (so the real-traffic test below can fail).
#[test]
fn the_table_catches_what_the_conventions_forbid() {
    let ctx = Ctx {
        api: false,
        pod_ports: vec!["9000".into()],
    };
    let good: BTreeMap<String, String> = [
        ("__name__", "http_client_request_duration_seconds_count"),
        ("instance", "127.0.0.1:9464"),
        ("job", "kite"),
        ("http_request_method", "_OTHER"),
        ("http_response_status_code", "404"),
        ("error_type", "404"),
        ("network_protocol_version", "1.1"),
        ("url_scheme", "http"),
        ("server_address", "127.0.0.3"),
        ("server_port", "9000"),
        ("cgroup", "/kite-test/x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(check_series(&good, &ctx), Vec::<String>::new());
    let with = |k: &str, v: Option<&str>| {
        let mut s = good.clone();
        match v {
            Some(v) => s.insert(k.into(), v.into()),
            None => s.remove(k),
        };
        check_series(&s, &ctx)
    };
    for (k, v) in [
        ("http_request_method", Some("PURGE")),
        ("http_response_status_code", Some("0")),
        ("error_type", Some("500")),
        ("error_type", None),
        ("network_protocol_version", Some("HTTP/1.1")),
        ("url_scheme", None),
        ("server_address", Some("localhost")),
        ("server_port", Some("0")),
        ("k8s_node_name", Some("n")),
        ("k8s_pod_name", Some("p")),
        ("cgroup", None),
        ("http_route", Some("/x")),
        // An `_OTHER` method's target is not read: no route.
        ("url_template", Some("/orders/*")),
    ] {
        assert!(!with(k, v).is_empty(), "{k}={v:?} passed");
    }
    // A server-side 404 is no error; the server side of a pod carries its names and node.
    let mut server = good.clone();
    server.insert(
        "__name__".into(),
        "http_server_request_duration_seconds_count".into(),
    );
    server.remove("error_type");
    assert!(
        !check_series(&server, &ctx).is_empty(),
        "a pod's series without its names"
    );
    server.insert("server_port".into(), "9001".into());
    assert_eq!(check_series(&server, &ctx), Vec::<String>::new());
    // A known method's HTTP/1 series carries its route, and only a route.
    let mut get = good.clone();
    get.insert("http_request_method".into(), "GET".into());
    get.insert("url_template".into(), "/orders/*".into());
    assert_eq!(check_series(&get, &ctx), Vec::<String>::new());
    for bad in [Some("/orders/123"), Some("/orders?id=1"), None] {
        let mut s = get.clone();
        match bad {
            Some(v) => s.insert("url_template".into(), v.into()),
            None => s.remove("url_template"),
        };
        assert!(
            !check_series(&s, &ctx).is_empty(),
            "url_template={bad:?} passed"
        );
    }
    // TLS: https is a scheme; anything else is not.
    let mut tls = good.clone();
    tls.insert("url_scheme".into(), "https".into());
    assert_eq!(check_series(&tls, &ctx), Vec::<String>::new());
    tls.insert("url_scheme".into(), "grpc".into());
    assert!(!check_series(&tls, &ctx).is_empty());
}

/// The RPC table's checker: a gRPC series as Kite exports it passes, and each way of breaking
/// the RPC conventions (or carrying an HTTP label over) is caught.
#[test]
fn the_rpc_table_catches_what_the_conventions_forbid() {
    let ctx = Ctx {
        api: false,
        pod_ports: vec!["9000".into()],
    };
    let good: BTreeMap<String, String> = [
        ("__name__", "rpc_client_call_duration_seconds_bucket"),
        ("instance", "127.0.0.1:9464"),
        ("job", "kite"),
        ("le", "0.005"),
        ("rpc_system_name", "grpc"),
        ("rpc_method", "kite.test.Echo/Lookup"),
        ("rpc_response_status_code", "NOT_FOUND"),
        ("error_type", "NOT_FOUND"),
        ("server_address", "127.0.0.1"),
        ("server_port", "50051"),
        ("cgroup", "/kite-test/x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(check_series(&good, &ctx), Vec::<String>::new());
    let with = |base: &BTreeMap<String, String>, k: &str, v: Option<&str>| {
        let mut s = base.clone();
        match v {
            Some(v) => s.insert(k.into(), v.into()),
            None => s.remove(k),
        };
        check_series(&s, &ctx)
    };
    assert_eq!(
        with(&good, "rpc_method", Some("rpc#1a2b3c4d")),
        Vec::<String>::new()
    );
    for (k, v) in [
        ("rpc_system_name", Some("grpc-go")),
        ("rpc_system_name", None),
        ("rpc_method", Some("/kite.test.Echo/Lookup")),
        ("rpc_method", Some("rpc#xyz")),
        ("rpc_method", None),
        ("rpc_response_status_code", Some("5")),
        ("rpc_response_status_code", None),
        ("error_type", Some("UNAVAILABLE")),
        ("error_type", None),
        // The pre-1.38 names, and HTTP labels, are not in the conventions.
        ("rpc_system", Some("grpc")),
        ("rpc_grpc_status_code", Some("5")),
        ("http_request_method", Some("POST")),
        ("network_protocol_version", Some("2")),
        ("url_scheme", Some("http")),
        ("server_port", Some("0")),
    ] {
        assert!(!with(&good, k, v).is_empty(), "{k}={v:?} passed");
    }
    // Server side: NOT_FOUND is the caller's error, not the server's; UNAVAILABLE is both.
    let mut server = good.clone();
    server.insert(
        "__name__".into(),
        "rpc_server_call_duration_seconds_count".into(),
    );
    server.remove("le");
    assert!(
        !check_series(&server, &ctx).is_empty(),
        "NOT_FOUND as a server error"
    );
    server.remove("error_type");
    assert_eq!(check_series(&server, &ctx), Vec::<String>::new());
    let mut unavailable = server.clone();
    unavailable.insert("rpc_response_status_code".into(), "UNAVAILABLE".into());
    assert!(!check_series(&unavailable, &ctx).is_empty());
    unavailable.insert("error_type".into(), "UNAVAILABLE".into());
    assert_eq!(check_series(&unavailable, &ctx), Vec::<String>::new());
    // OK is never an error, on either side.
    let mut ok = good.clone();
    ok.insert("rpc_response_status_code".into(), "OK".into());
    ok.insert("error_type".into(), "OK".into());
    assert!(!check_series(&ok, &ctx).is_empty(), "OK as an error");
    ok.remove("error_type");
    assert_eq!(check_series(&ok, &ctx), Vec::<String>::new());
}

/// One exchange as curl saw it: (method as the conventions name it, status, version).
type Exchange = (String, u16, String);

/// Runs curl from inside `cg`: one connection, one request; curl's own status code and HTTP
/// version of the response.
fn curl(cg: &TestCgroup, http10: bool, method: &str, url: &str) -> (u16, String) {
    let mut args = vec!["curl", "-s", "-o", "/dev/null", "--max-time", "10"];
    args.push(if http10 { "--http1.0" } else { "--http1.1" });
    args.extend(["-X", method, "-w", "%{http_code} %{http_version}", url]);
    let out = command(
        Place {
            cgroup: Some(cg),
            ..Place::default()
        },
        &args,
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, version) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("curl: {text}"));
    // curl's %{http_version} is the response's version; 7.88 writes HTTP/1.0 as "1".
    let version = if version == "1" { "1.0" } else { version };
    (code.parse().unwrap(), version.to_string())
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn http_attributes_follow_the_semantic_conventions() {
    if !ebpf_available("http_attributes_follow_the_semantic_conventions") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("semconv");
    let place = Place::in_cgroup(&cg);
    // Python's http.server answers in HTTP/1.0 (its default protocol_version), whatever the
    // request's version; the test server (anyhttpd.py: every method routed) in HTTP/1.1.
    let docs = TempDir::new("kite-semconv-docs");
    std::fs::write(docs.path().join("index.html"), "hello\n").unwrap();
    let (p10, p11) = (free_port(), free_port());
    let _s10 = spawn(
        place,
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            SERVER_IP,
            "--directory",
            docs.path().to_str().unwrap(),
            &p10.to_string(),
        ],
    );
    let any = servers::dir().join("anyhttpd.py");
    let _s11 = spawn(
        place,
        &[
            "python3",
            any.to_str().unwrap(),
            SERVER_IP,
            &p11.to_string(),
        ],
    );
    wait_for_port(&format!("{SERVER_IP}:{p10}"), None);
    wait_for_port(&format!("{SERVER_IP}:{p11}"), None);
    let agent = Agent::start(&["--cgroup", &cg.cgroup.path]);
    // A pod (kubelet's cgroupfs layout) enrolled by its init container's hello; the agent does
    // not follow the Kubernetes API (--kube off), so its names are marked unverified.
    let node = TestCgroup::new("semconv-node");
    let pod_rel = "kubepods/besteffort/pod6b1c9a40-3d2e-4f5a-8b7c-9d0e1f2a3b4c";
    let _pod = node.child(pod_rel);
    let app = node.child(&format!("{pod_rel}/app"));
    let init = node.child(&format!("{pod_rel}/init"));
    let answer = hello_from(
        &init.dir,
        &agent.socket,
        &hello("shop", "web-0", "6b1c9a40-3d2e-4f5a-8b7c-9d0e1f2a3b4c"),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    let ppod = free_port();
    let _spod = python_httpd(
        Place {
            cgroup_path: Some(&app.dir),
            ..Place::default()
        },
        SERVER_IP,
        ppod,
        false,
    );
    let prom = Prometheus::start(&[agent.metrics], false);

    // HTTP/1.0 and 1.1 clients; 2xx, 4xx and 5xx; standard and custom methods.
    let u10 = |p: &str| format!("http://{SERVER_IP}:{p10}{p}");
    let u11 = |p: &str| format!("http://{SERVER_IP}:{p11}{p}");
    let upod = |p: &str| format!("http://{SERVER_IP}:{ppod}{p}");
    let plan: Vec<(bool, &str, String)> = vec![
        (true, "GET", u10("/")),
        (false, "GET", u10("/")),
        (false, "GET", u10("/missing")),
        // http.server has no handler for it: 501.
        (true, "PURGE", u10("/")),
        (true, "GET", u11("/status/503")),
        (false, "GET", u11("/status/404")),
        (false, "POST", u11("/status/201")),
        (false, "FOO", u11("/")),
        (true, "DELETE", u11("/status/500")),
        // To the pod's server, from the host cgroup.
        (false, "GET", upod("/status/404")),
        (true, "GET", upod("/status/502")),
    ];
    let mut truth: BTreeMap<(u16, Exchange), u64> = BTreeMap::new();
    for round in 0..2 {
        for (http10, method, url) in &plan {
            let (status, version) = curl(&cg, *http10, method, url);
            assert!(
                status >= 200,
                "round {round}: curl {method} {url}: {status}"
            );
            let method = if METHODS.contains(method) {
                *method
            } else {
                "_OTHER"
            };
            let port: u16 = url
                .rsplit(':')
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            *truth
                .entry((port, (method.to_string(), status, version)))
                .or_default() += 1;
        }
    }
    let requests: u64 = truth.values().sum();
    // Each exchange is seen from both ends (clients and servers are in measured cgroups).
    for side in ["server", "client"] {
        prom.wait_for_value(
            &format!("sum(http_{side}_request_duration_seconds_count)"),
            requests as f64,
            Duration::from_secs(30),
        );
    }

    // Every label of every http_* series, as Prometheus stored it.
    let series = prom.api("series", &[("match[]", "{__name__=~\"http_.+\"}")]);
    let series = series.as_array().unwrap();
    assert!(!series.is_empty());
    let ctx = Ctx {
        api: false,
        pod_ports: vec![ppod.to_string()],
    };
    let mut problems = Vec::new();
    for s in series {
        let l = labels_of(s);
        for p in check_series(&l, &ctx) {
            problems.push(format!("{p}: {l:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The values are the exchanges curl made: per side, (port, method, status, version) with
    // curl's counts; the server is the address the requests went to.
    for side in ["server", "client"] {
        let got = prom.query(&format!(
            "sum by (server_address, server_port, http_request_method, http_response_status_code, network_protocol_version) (http_{side}_request_duration_seconds_count)"
        ));
        let mut seen: BTreeMap<(u16, Exchange), u64> = BTreeMap::new();
        for r in &got {
            let m = labels_of(&r["metric"]);
            assert_eq!(m["server_address"], SERVER_IP, "{side}: {m:?}");
            let key = (
                m["server_port"].parse().unwrap(),
                (
                    m["http_request_method"].clone(),
                    m["http_response_status_code"].parse().unwrap(),
                    m["network_protocol_version"].clone(),
                ),
            );
            let n: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            *seen.entry(key).or_default() += n as u64;
        }
        assert_eq!(seen, truth, "{side} side against curl");
    }
    // Both versions, a custom method, and error_type on both sides were exercised.
    let q = |e: &str| prom.query(e).len();
    assert!(q("http_server_request_duration_seconds_count{network_protocol_version=\"1.0\"}") > 0);
    assert!(q("http_server_request_duration_seconds_count{network_protocol_version=\"1.1\"}") > 0);
    assert!(q("http_server_request_duration_seconds_count{http_request_method=\"_OTHER\"}") > 0);
    assert!(q("http_server_request_duration_seconds_count{error_type=\"501\"}") > 0);
    assert_eq!(
        q("http_server_request_duration_seconds_count{error_type=\"404\"}"),
        0
    );
    assert!(q("http_client_request_duration_seconds_count{error_type=\"404\"}") > 0);
    // The pod's series carry its names and the node, the host cgroup's neither.
    let pod_sel = format!(
        "http_server_request_duration_seconds_count{{server_port=\"{ppod}\",k8s_namespace_name=\"shop\",k8s_pod_name=\"web-0\",k8s_node_name=\"test-node\"}}"
    );
    assert_eq!(q(&pod_sel), 2);
    assert_eq!(
        q("http_client_request_duration_seconds_count{k8s_node_name!=\"\"}"),
        0
    );
    assert_eq!(promtool_check(&agent.metrics_text()), Ok(()));
}

/// The `:path` of a series' `rpc_method`: the name with its slash, or the path among `paths`
/// whose method id the `rpc#<id>` form names (the agent has not learnt the name yet).
fn path_of(method: &str, paths: &[String]) -> String {
    match method.strip_prefix("rpc#") {
        Some(hex) => {
            let id = u32::from_str_radix(hex, 16).unwrap();
            paths
                .iter()
                .find(|p| rpc_id(path_id(p.as_bytes())) == id)
                .unwrap_or_else(|| panic!("{method} is none of the client's methods"))
                .clone()
        }
        None => format!("/{method}"),
    }
}

/// gRPC calls (Python's grpcio, server and client in the measured cgroup, so each call is seen
/// from both ends): every `rpc_*` series Prometheus stored follows [`RPC_CONVENTIONS`], the
/// calls leave nothing in the `http_*` families, and the calls per (side, method, grpc-status)
/// are the client's; `List` has the endpoint as gRPC with the same methods and counts.
#[test]
fn rpc_attributes_follow_the_semantic_conventions() {
    if !ebpf_available("rpc_attributes_follow_the_semantic_conventions") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("semconv-rpc");
    let place = Place::in_cgroup(&cg);
    let port = free_port();
    let _server = grpc::server(Stack::Python, place, port);
    let agent = Agent::start(&["--cgroup", &cg.cgroup.path]);
    let prom = Prometheus::start(&[agent.metrics], false);
    // OK, NOT_FOUND (the caller's error only) and UNAVAILABLE (the server's too).
    const SPEC: &str = "Unary:1:0,Lookup:1:5,Unary:1:14,Lookup:1:0";
    const CALLS: usize = 40;
    let calls = grpc::client(
        Stack::Python,
        place,
        &format!("127.0.0.1:{port}"),
        CALLS,
        4,
        SPEC,
        Duration::from_secs(60),
    );
    assert_eq!(
        calls.counts(),
        grpc::planned(CALLS, SPEC),
        "the client's calls"
    );
    for side in ["server", "client"] {
        prom.wait_for_value(
            &format!("sum(rpc_{side}_call_duration_seconds_count)"),
            CALLS as f64,
            Duration::from_secs(30),
        );
    }
    let series = prom.api("series", &[("match[]", "{__name__=~\"rpc_.+\"}")]);
    let series = series.as_array().unwrap();
    assert!(!series.is_empty());
    let ctx = Ctx {
        api: false,
        pod_ports: Vec::new(),
    };
    let mut problems = Vec::new();
    for s in series {
        let l = labels_of(s);
        for p in check_series(&l, &ctx) {
            problems.push(format!("{p}: {l:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let paths: Vec<String> = calls.counts().keys().map(|(p, _)| p.clone()).collect();
    let want: BTreeMap<(String, String), u64> = calls
        .counts()
        .into_iter()
        .map(|((path, code), n)| ((path, GRPC_STATUS_NAMES[code as usize].to_string()), n))
        .collect();
    for side in ["server", "client"] {
        let got = prom.query(&format!(
            "sum by (rpc_method, rpc_response_status_code, server_port) (rpc_{side}_call_duration_seconds_count)"
        ));
        let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
        for r in &got {
            let m = labels_of(&r["metric"]);
            assert_eq!(m["server_port"], port.to_string(), "{side}: {m:?}");
            let n: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            eprintln!(
                "  {side}: rpc_method={} rpc_response_status_code={} {n}",
                m["rpc_method"], m["rpc_response_status_code"]
            );
            *seen
                .entry((
                    path_of(&m["rpc_method"], &paths),
                    m["rpc_response_status_code"].clone(),
                ))
                .or_default() += n as u64;
        }
        assert_eq!(seen, want, "{side} side against the client");
    }
    let q = |e: &str| prom.query(e).len();
    // The kernel sent each method's name once and the agent learnt it: no series by id.
    assert_eq!(
        q("{__name__=~\"rpc_.+_count\",rpc_method=~\"rpc#.*\"}"),
        0,
        "methods still shown by id"
    );
    assert!(q("rpc_server_call_duration_seconds_count{rpc_method=\"kite.test.Echo/Lookup\"}") > 0);
    // gRPC is not counted again as HTTP.
    assert_eq!(
        q(&format!(
            "{{__name__=~\"http_.+_count\",server_port=\"{port}\"}}"
        )),
        0
    );
    assert!(q("rpc_server_call_duration_seconds_count{error_type=\"UNAVAILABLE\"}") > 0);
    assert_eq!(
        q("rpc_server_call_duration_seconds_count{error_type=\"NOT_FOUND\"}"),
        0
    );
    assert!(q("rpc_client_call_duration_seconds_count{error_type=\"NOT_FOUND\"}") > 0);

    // kite.v1: a gRPC endpoint per side with the client's methods and counts.
    let snap = agent.list();
    for dir in [v1::Direction::Inbound, v1::Direction::Outbound] {
        let ep = snap
            .endpoints
            .iter()
            .find(|e| {
                e.id.as_ref()
                    .is_some_and(|id| id.port == u32::from(port) && id.direction == dir as i32)
            })
            .unwrap_or_else(|| panic!("no {dir:?} endpoint on {port}"));
        let id = ep.id.as_ref().unwrap();
        assert_eq!(id.protocol(), v1::Protocol::Grpc, "{dir:?}");
        assert!(!id.tls);
        let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
        for m in &ep.rpcs {
            let path = path_of(&m.name, &paths);
            assert_eq!(rpc_id(path_id(path.as_bytes())), m.id, "{m:?}");
            let t = m.totals.unwrap_or_default();
            // Totals per method against the client's calls of that method.
            let calls_of: u64 = want
                .iter()
                .filter(|((p, _), _)| *p == path)
                .map(|(_, n)| n)
                .sum();
            assert_eq!(t.requests, calls_of, "{dir:?} {path}");
            got.insert((path, String::new()), t.requests);
        }
        assert_eq!(got.len(), 2, "{dir:?}: methods {:?}", ep.rpcs);
    }
    assert_eq!(promtool_check(&agent.metrics_text()), Ok(()));
}

/// The value of an unlabelled sample (`name value`) or of `name{labels}` in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Figures of process `pid` as `ps` and `prlimit` (procps, util-linux) report them.
struct Ps {
    rss_bytes: f64,
    vsz_bytes: f64,
    cpu_seconds: f64,
    elapsed_seconds: f64,
    max_fds: f64,
}

fn ps(pid: u32) -> Ps {
    let pid = pid.to_string();
    let out = run_ok(std::process::Command::new("ps").args([
        "-o",
        "rss=,vsz=,times=,etimes=",
        "-p",
        &pid,
    ]));
    let f: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let lim = run_ok(std::process::Command::new("prlimit").args([
        "--nofile",
        "--output",
        "SOFT",
        "--noheadings",
        "--pid",
        &pid,
    ]));
    Ps {
        rss_bytes: f[0] * 1024.0,
        vsz_bytes: f[1] * 1024.0,
        cpu_seconds: f[2],
        elapsed_seconds: f[3],
        max_fds: String::from_utf8_lossy(&lim.stdout).trim().parse().unwrap(),
    }
}

#[test]
fn agent_reports_its_build_its_process_and_ebpf_counters_that_add_up() {
    if !ebpf_available("agent_reports_its_build_its_process_and_ebpf_counters_that_add_up") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("selfmetrics");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), SERVER_IP, port, false);
    let agent = Agent::start(&["--cgroup", &cg.cgroup.path]);
    // One connection and one request per curl, seen from both ends.
    let curls = 5u64;
    for _ in 0..curls {
        let (status, _) = curl(&cg, false, "GET", &format!("http://{SERVER_IP}:{port}/d/1"));
        assert_eq!(status, 200);
    }
    // Every connection ends (curl has exited; the server closes when it reads EOF).
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = agent.metrics_text();
        let closed = sample(
            &text,
            "kite_ebpf_connections_closed_total{how=\"released\"}",
        )
        .unwrap()
            + sample(&text, "kite_ebpf_connections_closed_total{how=\"reaped\"}").unwrap();
        if sample(&text, "kite_ebpf_requests_total") == Some((2 * curls) as f64)
            && closed == (2 * curls) as f64
        {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(promtool_check(&text), Ok(()));
    // Families by unit: the connections opened are those that ended; requests add up.
    assert_eq!(
        sample(&text, "kite_ebpf_connections_opened_total"),
        Some((2 * curls) as f64)
    );
    assert!(!text.contains("kite_ebpf_events"), "the catch-all is gone");
    for family in [
        "kite_ebpf_packets_total",
        "kite_ebpf_payload_packets_total",
        "kite_ebpf_segments_total{event=\"retransmit\"}",
        "kite_ebpf_connections_untracked_total{reason=\"not_http\"}",
        "kite_ebpf_requests_overflow_total{reason=\"endpoint_budget\"}",
        "kite_ebpf_requests_lost_total{reason=\"unanswered\"}",
        "kite_ebpf_stream_events_total{event=\"sync_lost\"}",
        "kite_ebpf_http2_connections_total{event=\"joined\"}",
        "kite_ebpf_http2_events_total{event=\"late_start\"}",
        "kite_ebpf_tls_events_total{event=\"rebound\"}",
        "kite_ebpf_tls_events_total{event=\"h2_unsupported\"}",
    ] {
        assert!(sample(&text, family).is_some(), "{family} missing");
    }
    assert_eq!(
        sample(
            &text,
            &format!(
                "kite_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0),
        "{text}"
    );

    // The process figures against ps and prlimit, read around the scrape.
    let before = ps(agent.proc.child.id());
    let text = agent.metrics_text();
    let after = ps(agent.proc.child.id());
    let get = |n: &str| sample(&text, n).unwrap_or_else(|| panic!("{n} missing"));
    let within = |v: f64, lo: f64, hi: f64, what: &str| {
        assert!(v >= lo && v <= hi, "{what}: {v} not in [{lo}, {hi}]");
    };
    let rss = get("process_resident_memory_bytes");
    within(
        rss,
        before.rss_bytes.min(after.rss_bytes) * 0.9,
        before.rss_bytes.max(after.rss_bytes) * 1.1,
        "rss",
    );
    let vsz = get("process_virtual_memory_bytes");
    within(
        vsz,
        before.vsz_bytes.min(after.vsz_bytes) * 0.9,
        before.vsz_bytes.max(after.vsz_bytes) * 1.1,
        "vsz",
    );
    // ps prints whole seconds.
    let cpu = get("process_cpu_seconds_total");
    within(
        cpu,
        before.cpu_seconds - 1.0,
        after.cpu_seconds + 1.0,
        "cpu",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    within(
        get("process_start_time_seconds"),
        now - after.elapsed_seconds - 2.0,
        now - before.elapsed_seconds + 2.0,
        "start time",
    );
    assert_eq!(get("process_max_fds"), after.max_fds);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", agent.proc.child.id()))
        .unwrap()
        .count() as f64;
    within(get("process_open_fds"), fds - 4.0, fds + 4.0, "open fds");
}
