//! `kite-tui --once`: one `List` per agent, printed as a table or a JSON document, for scripts
//! and tests.
//!
//! The JSON document mirrors `kite.v1`: `endpoints` holds every endpoint of every agent that
//! answered, in the agents' order and in each agent's `List` order, one object per
//! `v1::Endpoint` with the same ids and counts; `agents` says which agents answered.
//!
//! ```json
//! {"agents": [{"agent": "127.0.0.1:7777", "ok": true, "node": "n1", "time_unix_ms": 1, "window_seconds": 1.0, "endpoints": 1, "error": null}],
//!  "endpoints": [{"agent": "127.0.0.1:7777", "name": "shop/web-1",
//!                 "id": {"node": "n1", "cgroup_id": 42, "cgroup_path": "/…", "direction": "inbound", "ip": "10.0.0.1", "port": 80, "address": "10.0.0.1:80", "protocol": "HTTP/1.1", "tls": false},
//!                 "workload": {"namespace": "shop", "pod": "web-1", …},
//!                 "last": {"seconds": 1.0, "requests": 950, "rps": 950.0, "p50_seconds": 0.0005, …},
//!                 "totals": {"requests": 12345, …}, "statuses": [{"status": 200, "count": 950}],
//!                 "methods": [{"method": "GET", "count": 950}], "histogram": [{"lower_seconds": …, "upper_seconds": …, "count": 3}],
//!                 "last_active_unix_ms": 1, "rpcs": []}]}
//! ```
//!
//! A gRPC endpoint's `statuses` are grpc-status codes with their `name` (`OK`, `NOT_FOUND`;
//! null when not known) and its `rpcs` one object per method:
//!
//! ```json
//! {"name": "helloworld.Greeter/SayHello", "id": 305419896, "last": {…}, "totals": {…},
//!  "statuses": [{"status": 0, "count": 90, "name": "OK"}]}
//! ```

use std::{collections::BTreeMap, time::Duration};

use kite_proto::v1;
use serde::Serialize;

use crate::{
    Error,
    app::Entry,
    client::{Target, list},
    human,
};

/// What one agent answered.
#[derive(Debug)]
pub struct Answer {
    /// The agent's label.
    pub agent: String,
    /// Its snapshot, or why there is none.
    pub result: Result<v1::Snapshot, Error>,
}

/// Asks every agent at once, each within `timeout`.
pub async fn fetch(targets: &[Target], timeout: Duration) -> Vec<Answer> {
    futures_util::future::join_all(targets.iter().map(|t| async move {
        Answer {
            agent: t.label(),
            result: list(t, timeout).await,
        }
    }))
    .await
}

/// The JSON document (see the module documentation).
#[derive(Debug, Serialize)]
pub struct Document {
    /// One per agent asked.
    pub agents: Vec<AgentDoc>,
    /// Every endpoint of the agents that answered.
    pub endpoints: Vec<EndpointDoc>,
}

/// One agent in the JSON document.
#[derive(Debug, Serialize)]
pub struct AgentDoc {
    /// As named on the command line.
    pub agent: String,
    /// Whether it answered.
    pub ok: bool,
    /// Its node.
    pub node: Option<String>,
    /// When its snapshot was taken.
    pub time_unix_ms: Option<u64>,
    /// Length of its windows.
    pub window_seconds: Option<f64>,
    /// How many endpoints it listed.
    pub endpoints: usize,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// `v1::EndpointId` with a readable direction and the address.
#[derive(Debug, Serialize)]
pub struct IdDoc {
    /// Node that measured it.
    pub node: String,
    /// cgroup id.
    pub cgroup_id: u64,
    /// cgroup path.
    pub cgroup_path: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Server IP.
    pub ip: String,
    /// Server port.
    pub port: u32,
    /// `ip:port`.
    pub address: String,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `gRPC` (`HTTP/1.x` when not said).
    pub protocol: &'static str,
    /// Measured from TLS plaintext.
    pub tls: bool,
}

/// `v1::Workload`.
#[derive(Debug, Serialize)]
pub struct WorkloadDoc {
    /// Namespace.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Owner kind.
    pub kind: String,
    /// Owner name.
    pub name: String,
    /// Container.
    pub container: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
}

/// `v1::Window`.
#[derive(Debug, Serialize)]
pub struct WindowDoc {
    /// Window length.
    pub seconds: f64,
    /// Requests completed.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Percentiles and extremes (null when idle).
    pub p50_seconds: Option<f64>,
    /// p90.
    pub p90_seconds: Option<f64>,
    /// p99.
    pub p99_seconds: Option<f64>,
    /// Slowest.
    pub max_seconds: Option<f64>,
    /// Mean.
    pub mean_seconds: Option<f64>,
    /// 4xx responses.
    pub status_4xx: u64,
    /// 5xx responses.
    pub status_5xx: u64,
    /// (4xx + 5xx) / requests.
    pub error_ratio: f64,
    /// 5xx / requests.
    pub server_error_ratio: f64,
    /// Request bytes.
    pub request_bytes: u64,
    /// Response bytes.
    pub response_bytes: u64,
    /// Request bytes per second.
    pub request_bytes_per_second: f64,
    /// Response bytes per second.
    pub response_bytes_per_second: f64,
    /// gRPC calls that failed (a known grpc-status but OK).
    pub rpc_errors: u64,
    /// gRPC calls with a server error status.
    pub rpc_server_errors: u64,
}

impl WindowDoc {
    fn of(w: &v1::Window) -> Self {
        Self {
            seconds: w.seconds,
            requests: w.requests,
            rps: w.rps,
            p50_seconds: w.p50_seconds,
            p90_seconds: w.p90_seconds,
            p99_seconds: w.p99_seconds,
            max_seconds: w.max_seconds,
            mean_seconds: w.mean_seconds,
            status_4xx: w.status_4xx,
            status_5xx: w.status_5xx,
            error_ratio: w.error_ratio,
            server_error_ratio: w.server_error_ratio,
            request_bytes: w.request_bytes,
            response_bytes: w.response_bytes,
            request_bytes_per_second: w.request_bytes_per_second,
            response_bytes_per_second: w.response_bytes_per_second,
            rpc_errors: w.rpc_errors,
            rpc_server_errors: w.rpc_server_errors,
        }
    }
}

/// `v1::Totals`.
#[derive(Debug, Serialize)]
pub struct TotalsDoc {
    /// Requests since first seen.
    pub requests: u64,
    /// 4xx.
    pub status_4xx: u64,
    /// 5xx.
    pub status_5xx: u64,
    /// Request bytes.
    pub request_bytes: u64,
    /// Response bytes.
    pub response_bytes: u64,
    /// Sum of latencies.
    pub latency_sum_seconds: f64,
    /// p50 over all requests.
    pub p50_seconds: Option<f64>,
    /// p90.
    pub p90_seconds: Option<f64>,
    /// p99.
    pub p99_seconds: Option<f64>,
    /// gRPC calls that failed.
    pub rpc_errors: u64,
    /// gRPC calls with a server error status.
    pub rpc_server_errors: u64,
}

impl TotalsDoc {
    fn of(t: &v1::Totals) -> Self {
        Self {
            requests: t.requests,
            status_4xx: t.status_4xx,
            status_5xx: t.status_5xx,
            request_bytes: t.request_bytes,
            response_bytes: t.response_bytes,
            latency_sum_seconds: t.latency_sum_seconds,
            p50_seconds: t.p50_seconds,
            p90_seconds: t.p90_seconds,
            p99_seconds: t.p99_seconds,
            rpc_errors: t.rpc_errors,
            rpc_server_errors: t.rpc_server_errors,
        }
    }
}

/// A status code count.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    /// Status code (gRPC: the grpc-status code, 65535 when not known).
    pub status: u32,
    /// Responses.
    pub count: u64,
    /// gRPC: the code's name (`OK`, `NOT_FOUND`), null when not known; HTTP: null.
    pub name: Option<String>,
}

impl StatusDoc {
    fn all(statuses: &[v1::StatusCount]) -> Vec<Self> {
        statuses
            .iter()
            .map(|s| StatusDoc {
                status: s.status,
                count: s.count,
                name: (!s.name.is_empty()).then(|| s.name.clone()),
            })
            .collect()
    }
}

/// One gRPC method of an endpoint.
#[derive(Debug, Serialize)]
pub struct RpcDoc {
    /// `package.Service/Method`, `rpc#<id>` while not learnt, `_OTHER`; null when unknowable.
    pub name: Option<String>,
    /// Method id.
    pub id: u32,
    /// Its calls in the last window.
    pub last: WindowDoc,
    /// Since first seen.
    pub totals: TotalsDoc,
    /// Last window per grpc-status.
    pub statuses: Vec<StatusDoc>,
}

/// A method count.
#[derive(Debug, Serialize)]
pub struct MethodDoc {
    /// Method.
    pub method: String,
    /// Requests.
    pub count: u64,
}

/// A histogram bucket.
#[derive(Debug, Serialize)]
pub struct BucketDoc {
    /// Lower edge.
    pub lower_seconds: f64,
    /// Upper edge (null for the last, unbounded bucket).
    pub upper_seconds: Option<f64>,
    /// Requests.
    pub count: u64,
}

/// One endpoint in the JSON document.
#[derive(Debug, Serialize)]
pub struct EndpointDoc {
    /// The agent that listed it.
    pub agent: String,
    /// `namespace/pod` or the cgroup path, as the table shows it.
    pub name: String,
    /// Identity.
    pub id: IdDoc,
    /// Kubernetes identity, when known.
    pub workload: Option<WorkloadDoc>,
    /// The last window.
    pub last: WindowDoc,
    /// Since first seen.
    pub totals: TotalsDoc,
    /// Last window per status code.
    pub statuses: Vec<StatusDoc>,
    /// Last window per method.
    pub methods: Vec<MethodDoc>,
    /// Latency distribution of the last window (non-empty buckets).
    pub histogram: Vec<BucketDoc>,
    /// When it last had a request.
    pub last_active_unix_ms: u64,
    /// gRPC endpoints: their methods.
    pub rpcs: Vec<RpcDoc>,
}

fn direction(d: v1::Direction) -> &'static str {
    match d {
        v1::Direction::Inbound => "inbound",
        v1::Direction::Outbound => "outbound",
        v1::Direction::Unspecified => "unspecified",
    }
}

impl EndpointDoc {
    fn new(agent: &str, node: &str, ep: &v1::Endpoint) -> Self {
        let e = Entry::new(0, node, ep.clone());
        let id = ep.id.clone().unwrap_or_default();
        let w = ep.last.unwrap_or_default();
        let t = ep.totals.unwrap_or_default();
        Self {
            agent: agent.to_string(),
            name: e.name,
            id: IdDoc {
                node: e.node,
                cgroup_id: id.cgroup_id,
                cgroup_path: id.cgroup_path.clone(),
                direction: direction(e.direction),
                address: id.address(),
                protocol: id.protocol().label(),
                tls: id.tls,
                ip: id.ip,
                port: id.port,
            },
            workload: ep.workload.as_ref().map(|w| WorkloadDoc {
                namespace: w.namespace.clone(),
                pod: w.pod.clone(),
                pod_uid: w.pod_uid.clone(),
                kind: w.workload_kind.clone(),
                name: w.workload_name.clone(),
                container: w.container.clone(),
                labels: w.labels.clone().into_iter().collect(),
            }),
            last: WindowDoc::of(&w),
            totals: TotalsDoc::of(&t),
            statuses: StatusDoc::all(&ep.statuses),
            methods: ep
                .methods
                .iter()
                .map(|m| MethodDoc {
                    method: m.method.clone(),
                    count: m.count,
                })
                .collect(),
            histogram: ep
                .histogram
                .iter()
                .flat_map(|h| &h.buckets)
                .map(|b| BucketDoc {
                    lower_seconds: b.lower_seconds,
                    upper_seconds: b.upper_seconds.is_finite().then_some(b.upper_seconds),
                    count: b.count,
                })
                .collect(),
            last_active_unix_ms: ep.last_active_unix_ms,
            rpcs: ep
                .rpcs
                .iter()
                .map(|m| RpcDoc {
                    name: (!m.name.is_empty()).then(|| m.name.clone()),
                    id: m.id,
                    last: WindowDoc::of(&m.last.unwrap_or_default()),
                    totals: TotalsDoc::of(&m.totals.unwrap_or_default()),
                    statuses: StatusDoc::all(&m.statuses),
                })
                .collect(),
        }
    }
}

/// The JSON document of these answers.
pub fn document(answers: &[Answer]) -> Document {
    let mut doc = Document {
        agents: Vec::new(),
        endpoints: Vec::new(),
    };
    for a in answers {
        match &a.result {
            Ok(s) => {
                doc.agents.push(AgentDoc {
                    agent: a.agent.clone(),
                    ok: true,
                    node: Some(s.node.clone()),
                    time_unix_ms: Some(s.time_unix_ms),
                    window_seconds: Some(s.window_seconds),
                    endpoints: s.endpoints.len(),
                    error: None,
                });
                doc.endpoints.extend(
                    s.endpoints
                        .iter()
                        .map(|ep| EndpointDoc::new(&a.agent, &s.node, ep)),
                );
            }
            Err(e) => doc.agents.push(AgentDoc {
                agent: a.agent.clone(),
                ok: false,
                node: None,
                time_unix_ms: None,
                window_seconds: None,
                endpoints: 0,
                error: Some(e.to_string()),
            }),
        }
    }
    doc
}

/// A plain table of these answers, busiest endpoints first; a gRPC endpoint's methods on rows
/// under it (busiest first).
pub fn table(answers: &[Answer]) -> String {
    let multi = answers.len() > 1;
    let mut entries: Vec<Entry> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.result.as_ref().ok().map(|s| (i, s)))
        .flat_map(|(i, s)| {
            s.endpoints
                .iter()
                .map(move |ep| Entry::new(i, &s.node, ep.clone()))
        })
        .collect();
    entries.sort_by(|a, b| {
        b.rps()
            .partial_cmp(&a.rps())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.addr.cmp(&b.addr))
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut rows: Vec<Vec<String>> = vec![];
    let mut head = vec![];
    if multi {
        head.push("NODE".to_string());
    }
    head.extend(
        [
            "NAME", "ENDPOINT", "DIR", "PROTO", "RPS", "P50", "P90", "P99", "ERR%", "4XX%", "B/S",
        ]
        .map(String::from),
    );
    rows.push(head);
    // ERR%: server errors; 4XX%: the caller's (as the dashboard).
    let numbers = |w: &v1::Window| {
        let s = crate::app::Stats::of(w);
        [
            human::rate(w.rps),
            human::latency(w.p50_seconds),
            human::latency(w.p90_seconds),
            human::latency(w.p99_seconds),
            human::percent(s.error_ratio()),
            human::percent(s.client_error_ratio()),
            human::bytes(w.request_bytes_per_second + w.response_bytes_per_second),
        ]
    };
    for e in &entries {
        let mut r = vec![];
        if multi {
            r.push(e.node.clone());
        }
        r.extend([
            e.name.clone(),
            e.addr.clone(),
            e.direction.short().to_string(),
            e.protocol.clone(),
        ]);
        r.extend(numbers(&e.ep.last.unwrap_or_default()));
        rows.push(r);
        let mut methods: Vec<&v1::RpcMethod> = e.ep.rpcs.iter().collect();
        methods.sort_by(|a, b| {
            let rps = |m: &v1::RpcMethod| m.last.map_or(0.0, |w| w.rps);
            rps(b).total_cmp(&rps(a)).then_with(|| a.name.cmp(&b.name))
        });
        for m in methods {
            let mut r = vec![];
            if multi {
                r.push(String::new());
            }
            let name = if m.name.is_empty() {
                "(method unknown)"
            } else {
                &m.name
            };
            r.extend([
                format!("  └ {name}"),
                String::new(),
                String::new(),
                String::new(),
            ]);
            r.extend(numbers(&m.last.unwrap_or_default()));
            rows.push(r);
        }
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    // Text columns left-aligned, numbers right-aligned.
    let text_cols = if multi { 5 } else { 4 };
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| {
                let pad = widths[c] - v.chars().count();
                if c < text_cols {
                    format!("{v}{}", " ".repeat(pad))
                } else {
                    format!("{}{v}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Output format of `--once`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, busiest first.
    Table,
    /// One JSON document: every endpoint of each agent's `List`, and which agents answered.
    Json,
}

/// What `--once` prints on stdout, and the warnings for stderr. Fails when no agent answered.
pub fn render(answers: &[Answer], format: Format) -> Result<(String, Vec<String>), Error> {
    let errors: Vec<String> = answers
        .iter()
        .filter_map(|a| a.result.as_ref().err().map(|e| e.to_string()))
        .collect();
    if errors.len() == answers.len() {
        return Err(Error::NoAnswer { errors });
    }
    let out = match format {
        Format::Table => table(answers),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&document(answers))
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            s.push('\n');
            s
        }
    };
    Ok((out, errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::tests::{endpoint, greeter, snapshot};

    fn answers() -> Vec<Answer> {
        let mut s = *snapshot(
            "node-a",
            vec![
                endpoint(Some(("shop", "web-1")), "", 80, 120.0, Some(4.0), 0.0),
                endpoint(None, "/system.slice/nginx.service", 443, 950.5, None, 0.1),
            ],
        );
        s.endpoints[0].histogram = Some(v1::Histogram {
            buckets: vec![v1::Bucket {
                lower_seconds: 60.0,
                upper_seconds: f64::INFINITY,
                count: 2,
            }],
        });
        vec![
            Answer {
                agent: "127.0.0.1:7777".into(),
                result: Ok(s),
            },
            Answer {
                agent: "10.0.0.9:7777".into(),
                result: Err(Error::Timeout {
                    target: "10.0.0.9:7777".into(),
                    timeout: Duration::from_secs(5),
                }),
            },
        ]
    }

    #[test]
    fn json_keeps_list_order_ids_and_counts_and_names_failures() {
        let (out, warnings) = render(&answers(), Format::Json).unwrap();
        assert_eq!(warnings, ["10.0.0.9:7777: no answer within 5s"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let eps = v["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0]["name"], "shop/web-1");
        assert_eq!(eps[0]["id"]["port"], 80);
        assert_eq!(eps[0]["id"]["direction"], "inbound");
        assert_eq!(eps[0]["id"]["address"], "10.0.0.1:80");
        assert_eq!(eps[0]["last"]["requests"], 120);
        assert_eq!(
            eps[0]["histogram"][0]["upper_seconds"],
            serde_json::Value::Null
        );
        assert_eq!(eps[1]["name"], "/system.slice/nginx.service");
        assert_eq!(eps[1]["last"]["p99_seconds"], serde_json::Value::Null);
        assert_eq!(v["agents"][0]["ok"], true);
        assert_eq!(v["agents"][0]["endpoints"], 2);
        assert_eq!(v["agents"][1]["ok"], false);
        assert_eq!(
            v["agents"][1]["error"],
            "10.0.0.9:7777: no answer within 5s"
        );
    }

    #[test]
    fn table_is_aligned_and_busiest_first() {
        let (out, _) = render(&answers(), Format::Table).unwrap();
        insta::assert_snapshot!(out, @r"
        NODE    NAME                         ENDPOINT      DIR  PROTO     RPS     P50     P90     P99  ERR%  4XX%     B/S
        node-a  /system.slice/nginx.service  10.0.0.1:443  in   HTTP/1.1  950       -       -       -  9.99   0.0  1.05MB
        node-a  shop/web-1                   10.0.0.1:80   in   HTTP/1.1  120  1.00ms  2.00ms  4.00ms   0.0   0.0   132kB
        ");
    }

    #[test]
    fn grpc_endpoints_list_their_methods_and_named_statuses() {
        let a = vec![Answer {
            agent: "127.0.0.1:7777".into(),
            result: Ok(*snapshot("node-a", vec![greeter()])),
        }];
        let (out, _) = render(&a, Format::Table).unwrap();
        insta::assert_snapshot!(out, @r"
        NAME                             ENDPOINT        DIR  PROTO     RPS     P50     P90     P99  ERR%  4XX%  B/S
        shop/greeter-0                   10.0.0.1:50051  in   gRPC+TLS  342  3.00ms  6.00ms  12.0ms  1.46  4.39   0B
          └ helloworld.Greeter/SayHello                                 300  1.00ms  2.00ms  4.00ms  1.67  5.00   0B
          └ helloworld.Greeter/Lookup                                    40  3.00ms  6.00ms  12.0ms   0.0   0.0   0B
          └ rpc#9abcdef0                                                  2   250µs   500µs  1.00ms   0.0   0.0   0B
        ");
        let (out, _) = render(&a, Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ep = &v["endpoints"][0];
        assert_eq!(ep["id"]["protocol"], "gRPC");
        assert_eq!(ep["id"]["tls"], true);
        assert_eq!(ep["last"]["rpc_errors"], 20);
        let m = &ep["rpcs"][0];
        assert_eq!(m["name"], "helloworld.Greeter/SayHello");
        assert_eq!(m["id"], 0x1a2b_3c4d);
        assert_eq!(m["last"]["requests"], 300);
        assert_eq!(m["statuses"][1]["name"], "NOT_FOUND");
        assert_eq!(m["statuses"][1]["status"], 5);
        assert_eq!(m["totals"]["rpc_errors"], 2000);
    }

    #[test]
    fn no_answer_is_an_error_with_every_reason() {
        let a = vec![Answer {
            agent: "x:1".into(),
            result: Err(Error::Timeout {
                target: "x:1".into(),
                timeout: Duration::from_secs(1),
            }),
        }];
        let err = render(&a, Format::Json).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no agent answered: x:1: no answer within 1s"
        );
    }
}
