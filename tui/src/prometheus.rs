//! `--prometheus URL`: the same views fed from Kite's series in a Prometheus-compatible server
//! (Prometheus, Thanos, Mimir, VictoriaMetrics) through its HTTP query API, instead of one
//! stream per agent.
//!
//! Every refresh asks four instant queries (see [`Queries`]) over the agents' native
//! histograms (`http_server_request_duration_seconds`, `http_client_…`, `rpc_server_call_…`,
//! `rpc_client_call_…`) and byte counters (`kite_{http,rpc}_{request,response}_bytes_total`):
//! the histograms summed per endpoint and status (totals since each agent started, and
//! `rate()` over `--window`), `histogram_quantile` of the same sums for p50/p90/p99, and the
//! byte counters with their rates. Grouping by workload or namespace is a `sum by` in PromQL,
//! so the server sends one row per group, not one per endpoint. The answers become a
//! [`v1::Snapshot`], so the dashboard and `--once` show them like an agent's.

use std::{collections::BTreeMap, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use kite_proto::v1;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    Error,
    app::{AgentEvent, Event, Grouping},
};

/// The histogram families the agent exports: (name, direction, gRPC).
const FAMILIES: [(&str, v1::Direction, bool); 4] = [
    (
        "http_server_request_duration_seconds",
        v1::Direction::Inbound,
        false,
    ),
    (
        "http_client_request_duration_seconds",
        v1::Direction::Outbound,
        false,
    ),
    (
        "rpc_server_call_duration_seconds",
        v1::Direction::Inbound,
        true,
    ),
    (
        "rpc_client_call_duration_seconds",
        v1::Direction::Outbound,
        true,
    ),
];

/// The byte counters: (name, gRPC, response).
const BYTES: [(&str, bool, bool); 4] = [
    ("kite_http_request_bytes_total", false, false),
    ("kite_http_response_bytes_total", false, true),
    ("kite_rpc_request_bytes_total", true, false),
    ("kite_rpc_response_bytes_total", true, true),
];

/// Percentiles asked, with the `kite_q` label value each one comes back with.
const QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")];

/// The labels one endpoint's series are summed by (the agent's own series carry the method
/// and status too): who measured it (`instance`, the node), whose sockets (pod or cgroup),
/// the server address, and the scheme (`https`: TLS plaintext).
const ENDPOINT_LABELS: &str = "instance, k8s_node_name, k8s_namespace_name, k8s_pod_name, \
     k8s_workload_kind, k8s_workload_name, cgroup, server_address, server_port, url_scheme";

/// The labels a row's statuses are told apart by, beside its own.
const STATUS_LABELS: &str = "http_response_status_code, rpc_response_status_code, \
     network_protocol_version";

/// The labels of a row under `g`.
fn group_labels(g: Grouping) -> &'static str {
    match g {
        Grouping::Endpoint => ENDPOINT_LABELS,
        // A pod without an owner is its own workload (its name), as in the direct view; a
        // cgroup that is no pod's is one too.
        Grouping::Workload => "k8s_namespace_name, k8s_workload_name, k8s_pod_name, cgroup",
        Grouping::Namespace => "k8s_namespace_name",
    }
}

/// `sum by (row labels, extra) (expr(name))`. Grouped by workload, a pod without an owner is
/// its own workload: its series are summed by pod instead (`k8s_pod_name` then names the
/// row). Only whole sums are relabelled afterwards: `label_replace` of a native histogram
/// sample gives 0 in Debian's Prometheus.
fn summed(g: Grouping, name: &str, expr: &dyn Fn(&str) -> String, extra: &str) -> String {
    match g {
        Grouping::Workload => format!(
            "(sum by (k8s_namespace_name, k8s_workload_name, cgroup{extra}) ({}) \
             or sum by (k8s_namespace_name, k8s_pod_name, cgroup{extra}) ({}))",
            expr(&format!("{name}{{k8s_workload_name!=\"\"}}")),
            expr(&format!("{name}{{k8s_workload_name=\"\"}}")),
        ),
        _ => format!("sum by ({}{extra}) ({})", group_labels(g), expr(name)),
    }
}

/// `label_replace(e, "label", "value", "", "")`: marks which part of a query a series is.
fn mark(e: &str, label: &str, value: &str) -> String {
    format!("label_replace({e}, \"{label}\", \"{value}\", \"\", \"\")")
}

/// The four queries of one refresh under a grouping, over `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct Queries {
    /// The histograms summed per row and status, since each agent started and as rates
    /// (`kite_family`: which family; `kite_w`: `t` total, `w` the window's rate).
    pub histograms: String,
    /// `histogram_quantile` of each row's histogram (`kite_q`: `p50` … `p99`, `kite_w`).
    pub quantiles: String,
    /// Request and response bytes per row (`kite_bytes`: which counter, `kite_w`).
    pub bytes: String,
    /// Whether any Kite histogram is there at all, native or classic (asked only when the
    /// others find nothing, to say why).
    pub presence: String,
}

impl Queries {
    /// The queries for grouping `g` with rates over `window`.
    pub fn new(g: Grouping, window: Duration) -> Self {
        let w = format!("{}s", window.as_secs().max(1));
        let total = |s: &str| s.to_string();
        let rate = |s: &str| format!("rate({s}[{w}])");
        let mut histograms = Vec::new();
        let mut quantiles = Vec::new();
        for (i, (name, _, _)) in FAMILIES.iter().enumerate() {
            let family = i.to_string();
            for (kw, over) in [
                ("t", &total as &dyn Fn(&str) -> String),
                ("w", &rate as &dyn Fn(&str) -> String),
            ] {
                // Count and sum as floats: `label_replace` of a native histogram sample
                // gives 0 in Debian's Prometheus, while floats pass through.
                let per_status = summed(g, name, over, &format!(", {STATUS_LABELS}"));
                for part in ["count", "sum"] {
                    let e = format!("histogram_{part}({per_status})");
                    histograms.push(mark(
                        &mark(&mark(&e, "kite_family", &family), "kite_w", kw),
                        "kite_v",
                        part,
                    ));
                }
                for (q, label) in QUANTILES {
                    let e = format!("histogram_quantile({q}, {})", summed(g, name, over, ""));
                    quantiles.push(mark(
                        &mark(&mark(&e, "kite_family", &family), "kite_w", kw),
                        "kite_q",
                        label,
                    ));
                }
            }
        }
        let mut bytes = Vec::new();
        for (i, (name, _, _)) in BYTES.iter().enumerate() {
            for (kw, over) in [
                ("t", &total as &dyn Fn(&str) -> String),
                ("w", &rate as &dyn Fn(&str) -> String),
            ] {
                let e = summed(g, name, over, ", kite_side");
                bytes.push(mark(&mark(&e, "kite_bytes", &i.to_string()), "kite_w", kw));
            }
        }
        let presence = FAMILIES
            .iter()
            .map(|(n, _, _)| format!("count({n}) or count({n}_count)"))
            .collect::<Vec<_>>()
            .join(" or ");
        Self {
            histograms: histograms.join(" or "),
            quantiles: quantiles.join(" or "),
            bytes: bytes.join(" or "),
            presence,
        }
    }
}

/// A Prometheus-compatible server's query API.
#[derive(Debug, Clone)]
pub struct Server {
    /// As given (`http://host:port[/prefix]`).
    pub url: String,
    /// `host:port`.
    authority: String,
    /// The path before `/api/v1/…`, without a trailing slash.
    prefix: String,
}

/// What one refresh cost: queries sent and series they returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// HTTP requests.
    pub queries: usize,
    /// Series in their answers.
    pub series: usize,
}

impl Server {
    /// Parses `--prometheus`: `http://host:port` with an optional path prefix (as served
    /// behind a proxy, `http://host/prometheus`).
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Flag(format!("--prometheus {url:?}: {reason}"));
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err(bad(
                "only http:// is supported (put an HTTPS server behind `kubectl port-forward` \
                 or a local proxy)",
            ));
        } else {
            return Err(bad("expected http://host:port"));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("expected http://host:port"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !p.contains(']')
        }) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let prefix = path.trim_end_matches('/');
        Ok(Self {
            url: url.to_string(),
            authority,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            },
        })
    }

    /// One instant query: the `result` vector.
    async fn query(&self, q: &str, timeout: Duration) -> Result<Vec<Value>, Error> {
        match tokio::time::timeout(timeout, self.post(q)).await {
            Ok(r) => r,
            Err(_) => Err(self.err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }

    fn err(&self, what: String) -> Error {
        Error::Prometheus(format!("{}: {what}", self.url))
    }

    async fn post(&self, q: &str) -> Result<Vec<Value>, Error> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| {
                self.err(match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                    _ => format!("cannot connect: {e}"),
                })
            })?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| self.err(format!("HTTP: {e}")))?;
        tokio::spawn(conn);
        let body = format!("query={}", form_encode(q));
        let req = hyper::Request::post(format!("{}/api/v1/query", self.prefix))
            .header(hyper::header::HOST, &self.authority)
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.err(format!("request: {e}")))?;
        let resp = send.send_request(req).await.map_err(|e| {
            self.err(format!(
                "does not answer HTTP/1.1 ({e}): is this a Prometheus?"
            ))
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.err(format!("reading the answer: {e}")))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
            self.err(format!(
                "answers HTTP {} but is not a Prometheus query API (POST {}/api/v1/query gave no JSON)",
                status.as_u16(),
                self.prefix
            ))
        })?;
        if v["status"] != "success" {
            return Err(match v["error"].as_str() {
                Some(e) => self.err(format!("the query failed: {e}")),
                None => self.err(format!(
                    "answers HTTP {} but is not a Prometheus query API (no \"status\" in its JSON)",
                    status.as_u16()
                )),
            });
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// One refresh under grouping `g`: every row as an endpoint of one snapshot (its `node`
    /// is the URL), and what it cost.
    pub async fn snapshot(
        &self,
        g: Grouping,
        window: Duration,
        timeout: Duration,
    ) -> Result<(v1::Snapshot, Cost), Error> {
        let q = Queries::new(g, window);
        let (h, p, b) = tokio::try_join!(
            self.query(&q.histograms, timeout),
            self.query(&q.quantiles, timeout),
            self.query(&q.bytes, timeout),
        )?;
        let cost = Cost {
            queries: 3,
            series: h.len() + p.len() + b.len(),
        };
        if h.is_empty() {
            let any = self.query(&q.presence, timeout).await?;
            return Err(
                self.err(if any.iter().any(|s| value(s).is_some_and(|v| v > 0.0)) {
                    "has Kite's classic histograms only: start it with \
                 --enable-feature=native-histograms (kite-tui reads native histograms)"
                        .into()
                } else {
                    "no Kite series (no http_server_request_duration_seconds or the other Kite \
                 families): is it scraping the agents' /metrics?"
                        .into()
                }),
            );
        }
        let snapshot = build(g, window, &h, &p, &b, &self.url);
        Ok((snapshot, cost))
    }
}

/// `application/x-www-form-urlencoded` of a value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A sample's value: a float, or a native histogram's count.
fn value(s: &Value) -> Option<f64> {
    if let Some(v) = s["value"][1].as_str() {
        return v.parse().ok();
    }
    s["histogram"][1]["count"].as_str()?.parse().ok()
}

fn label<'a>(s: &'a Value, name: &str) -> &'a str {
    s["metric"][name].as_str().unwrap_or("")
}

/// The names of the labels in a `by (…)` list.
fn names(by: &str) -> Vec<&str> {
    by.split(',').map(str::trim).collect()
}

/// The gRPC status names Kite writes, by code (the agent's table).
use kite_common::maps::GRPC_STATUS_NAMES as GRPC_STATUSES;

/// gRPC statuses OpenTelemetry's server conventions call errors.
const GRPC_SERVER_ERRORS: [&str; 6] = [
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
];

/// One row being built.
#[derive(Default)]
struct Row {
    ep: v1::Endpoint,
    /// Requests by protocol version (the row's protocol is the busiest one's).
    versions: BTreeMap<String, f64>,
    statuses: BTreeMap<u32, (f64, String)>,
}

/// The snapshot of one refresh's answers (see [`Queries`]).
pub fn build(
    g: Grouping,
    window: Duration,
    histograms: &[Value],
    quantiles: &[Value],
    bytes: &[Value],
    url: &str,
) -> v1::Snapshot {
    let by = names(group_labels(g));
    let key = |s: &Value, family: usize| -> (usize, Vec<String>) {
        (family, by.iter().map(|l| label(s, l).to_string()).collect())
    };
    let secs = window.as_secs().max(1) as f64;
    let mut rows: BTreeMap<(usize, Vec<String>), Row> = BTreeMap::new();
    for s in histograms {
        let Ok(f) = label(s, "kite_family").parse::<usize>() else {
            continue;
        };
        let Some(&(_, direction, grpc)) = FAMILIES.get(f) else {
            continue;
        };
        let Some(v) = value(s).filter(|v| v.is_finite()) else {
            continue;
        };
        // (requests, latency seconds): a count sample or a sum sample.
        let (count, sum) = if label(s, "kite_v") == "sum" {
            (0.0, v)
        } else {
            (v, 0.0)
        };
        let row = rows
            .entry(key(s, f))
            .or_insert_with(|| new_row(g, s, direction, grpc, secs));
        let total = label(s, "kite_w") == "t";
        let (code, name) = if grpc {
            let n = label(s, "rpc_response_status_code");
            match GRPC_STATUSES.iter().position(|x| *x == n) {
                Some(c) => (c as u32, n.to_string()),
                None => (u32::from(u16::MAX), String::new()),
            }
        } else {
            (
                label(s, "http_response_status_code").parse().unwrap_or(0),
                String::new(),
            )
        };
        let server_error = if grpc {
            GRPC_SERVER_ERRORS.contains(&name.as_str())
        } else {
            (500..600).contains(&code)
        };
        let client_error = if grpc {
            !server_error && code != 0
        } else {
            (400..500).contains(&code)
        };
        if total {
            let t = row.ep.totals.get_or_insert_with(Default::default);
            let n = count.round() as u64;
            t.requests += n;
            t.latency_sum_seconds += sum;
            if grpc {
                t.rpc_errors += if code != 0 { n } else { 0 };
                t.rpc_server_errors += if server_error { n } else { 0 };
            } else {
                t.status_4xx += if client_error { n } else { 0 };
                t.status_5xx += if server_error { n } else { 0 };
            }
            let st = row.statuses.entry(code).or_insert((0.0, name));
            st.0 += count;
            *row.versions
                .entry(label(s, "network_protocol_version").to_string())
                .or_default() += count;
        } else {
            let w = row.ep.last.get_or_insert_with(Default::default);
            let n = (count * secs).round() as u64;
            w.rps += count;
            w.requests += n;
            if sum > 0.0 {
                // The window's mean, weighted by rate: Σ sum / Σ count below.
                *w.mean_seconds.get_or_insert(0.0) += sum;
            }
            if grpc {
                w.rpc_errors += if code != 0 { n } else { 0 };
                w.rpc_server_errors += if server_error { n } else { 0 };
            } else {
                w.status_4xx += if client_error { n } else { 0 };
                w.status_5xx += if server_error { n } else { 0 };
            }
        }
    }
    for s in quantiles {
        let Ok(f) = label(s, "kite_family").parse::<usize>() else {
            continue;
        };
        let Some(row) = rows.get_mut(&key(s, f)) else {
            continue;
        };
        let Some(v) = value(s).filter(|v| v.is_finite()) else {
            continue;
        };
        let (p50, p90, p99) = if label(s, "kite_w") == "t" {
            let t = row.ep.totals.get_or_insert_with(Default::default);
            (&mut t.p50_seconds, &mut t.p90_seconds, &mut t.p99_seconds)
        } else {
            let w = row.ep.last.get_or_insert_with(Default::default);
            (&mut w.p50_seconds, &mut w.p90_seconds, &mut w.p99_seconds)
        };
        match label(s, "kite_q") {
            "p50" => *p50 = Some(v),
            "p90" => *p90 = Some(v),
            "p99" => *p99 = Some(v),
            _ => {}
        }
    }
    for s in bytes {
        let Some(&(_, grpc, response)) = label(s, "kite_bytes")
            .parse::<usize>()
            .ok()
            .and_then(|i| BYTES.get(i))
        else {
            continue;
        };
        let inbound = label(s, "kite_side") == "server";
        let f = FAMILIES
            .iter()
            .position(|&(_, d, gr)| gr == grpc && (d == v1::Direction::Inbound) == inbound)
            .unwrap_or(0);
        let Some(row) = rows.get_mut(&key(s, f)) else {
            continue;
        };
        let Some(v) = value(s).filter(|v| v.is_finite()) else {
            continue;
        };
        if label(s, "kite_w") == "t" {
            let t = row.ep.totals.get_or_insert_with(Default::default);
            let slot = if response {
                &mut t.response_bytes
            } else {
                &mut t.request_bytes
            };
            *slot += v.round() as u64;
        } else {
            let w = row.ep.last.get_or_insert_with(Default::default);
            if response {
                w.response_bytes_per_second += v;
                w.response_bytes += (v * secs).round() as u64;
            } else {
                w.request_bytes_per_second += v;
                w.request_bytes += (v * secs).round() as u64;
            }
        }
    }
    let endpoints = rows.into_values().map(finish).collect();
    v1::Snapshot {
        time_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        window_seconds: secs,
        node: url.to_string(),
        endpoints,
    }
}

/// A row's identity from its first series.
fn new_row(g: Grouping, s: &Value, direction: v1::Direction, grpc: bool, secs: f64) -> Row {
    let l = |n: &str| label(s, n).to_string();
    let namespace = l("k8s_namespace_name");
    let (workload, cgroup_path, ip, port, node) = match g {
        Grouping::Endpoint => {
            let workload = (!namespace.is_empty()).then(|| v1::Workload {
                namespace: namespace.clone(),
                pod: l("k8s_pod_name"),
                workload_kind: l("k8s_workload_kind"),
                workload_name: l("k8s_workload_name"),
                ..Default::default()
            });
            let node = match l("k8s_node_name") {
                n if n.is_empty() => l("instance"),
                n => n,
            };
            (
                workload,
                l("cgroup"),
                l("server_address"),
                l("server_port").parse().unwrap_or(0),
                node,
            )
        }
        Grouping::Workload => {
            let name = match l("k8s_workload_name") {
                w if w.is_empty() => l("k8s_pod_name"),
                w => w,
            };
            let workload = (!namespace.is_empty()).then(|| v1::Workload {
                namespace: namespace.clone(),
                workload_name: name.clone(),
                ..Default::default()
            });
            let path = if namespace.is_empty() {
                l("cgroup")
            } else {
                format!("{namespace}/{name}")
            };
            (workload, path, String::new(), 0, String::new())
        }
        Grouping::Namespace => {
            let workload = (!namespace.is_empty()).then(|| v1::Workload {
                namespace: namespace.clone(),
                ..Default::default()
            });
            let path = if namespace.is_empty() {
                "(no namespace)".to_string()
            } else {
                namespace.clone()
            };
            (workload, path, String::new(), 0, String::new())
        }
    };
    Row {
        ep: v1::Endpoint {
            id: Some(v1::EndpointId {
                node,
                cgroup_id: 0,
                cgroup_path,
                direction: direction as i32,
                ip,
                port,
                protocol: if grpc {
                    v1::Protocol::Grpc as i32
                } else {
                    v1::Protocol::Unspecified as i32
                },
                tls: label(s, "url_scheme") == "https",
            }),
            workload,
            last: Some(v1::Window {
                seconds: secs,
                ..Default::default()
            }),
            totals: Some(v1::Totals::default()),
            ..Default::default()
        },
        ..Row::default()
    }
}

/// Statuses, protocol, ratios and the mean of a built row.
fn finish(mut row: Row) -> v1::Endpoint {
    let ep = &mut row.ep;
    if let Some(id) = ep.id.as_mut()
        && id.protocol != v1::Protocol::Grpc as i32
    {
        let busiest = row
            .versions
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(v, _)| v.as_str());
        id.protocol = match busiest {
            Some("2") => v1::Protocol::Http2,
            Some("1.0") => v1::Protocol::Http10,
            Some("1.1") => v1::Protocol::Http11,
            _ => v1::Protocol::Unspecified,
        } as i32;
    }
    ep.statuses = row
        .statuses
        .into_iter()
        .filter(|(_, (n, _))| *n >= 0.5)
        .map(|(status, (n, name))| v1::StatusCount {
            status,
            count: n.round() as u64,
            name,
        })
        .collect();
    if let Some(w) = ep.last.as_mut() {
        if let Some(m) = w.mean_seconds.as_mut() {
            *m = if w.rps > 0.0 { *m / w.rps } else { 0.0 };
        }
        if w.rps <= 0.0 {
            w.mean_seconds = None;
        }
        let n = w.requests.max(1) as f64;
        w.server_error_ratio = (w.status_5xx + w.rpc_server_errors) as f64 / n;
        w.error_ratio = (w.status_4xx + w.status_5xx + w.rpc_errors) as f64 / n;
    }
    row.ep
}

/// Follows the server as agent 0 of the dashboard: a snapshot every `every` (and at once
/// when the grouping changes), the rows summed in PromQL under the grouping the UI shows.
/// Failures are reported as [`AgentEvent::Down`] and tried again at the next refresh.
pub async fn follow(
    server: Server,
    tx: mpsc::Sender<Event>,
    mut grouping: watch::Receiver<Grouping>,
    every: Duration,
    window: Duration,
    shutdown: CancellationToken,
) {
    let send = |e: AgentEvent| {
        let tx = tx.clone();
        async move { tx.send(Event::Agent(0, e)).await.is_ok() }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut up = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            r = grouping.changed() => if r.is_err() { return },
        }
        let g = *grouping.borrow_and_update();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = server.snapshot(g, window, every.max(Duration::from_secs(5))) => r,
        };
        let ok = match result {
            Ok((snap, _)) => {
                if !up && !send(AgentEvent::Connected).await {
                    return;
                }
                up = true;
                send(AgentEvent::Snapshot(Box::new(snap))).await
            }
            Err(e) => {
                up = false;
                let text = e.to_string();
                let text = text
                    .strip_prefix(&format!("{}: ", server.url))
                    .unwrap_or(&text)
                    .to_string();
                send(AgentEvent::Down {
                    error: text,
                    retry_in: every,
                })
                .await
            }
        };
        if !ok {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_say_why() {
        let s = Server::parse("http://127.0.0.1:9090").unwrap();
        assert_eq!(
            (s.authority.as_str(), s.prefix.as_str()),
            ("127.0.0.1:9090", "")
        );
        let s = Server::parse("http://prom/monitoring/").unwrap();
        assert_eq!(
            (s.authority.as_str(), s.prefix.as_str()),
            ("prom:80", "/monitoring")
        );
        assert_eq!(
            Server::parse("127.0.0.1:9090").unwrap_err().to_string(),
            "--prometheus \"127.0.0.1:9090\": expected http://host:port"
        );
        assert!(
            Server::parse("https://p:9090")
                .unwrap_err()
                .to_string()
                .contains("only http://")
        );
    }

    #[test]
    fn form_encoding_keeps_promql_intact() {
        assert_eq!(
            form_encode("sum by (a) (x{b=\"1\"})"),
            "sum+by+%28a%29+%28x%7Bb%3D%221%22%7D%29"
        );
    }

    #[test]
    fn queries_group_in_promql() {
        let q = Queries::new(Grouping::Namespace, Duration::from_secs(60));
        assert!(q.histograms.contains(
            "sum by (k8s_namespace_name, http_response_status_code, rpc_response_status_code, \
             network_protocol_version) (rate(http_server_request_duration_seconds[60s]))"
        ));
        assert!(q.quantiles.contains(
            "histogram_quantile(0.99, sum by (k8s_namespace_name) (rpc_client_call_duration_seconds))"
        ));
        let w = Queries::new(Grouping::Workload, Duration::from_secs(5));
        assert!(w.bytes.contains(
            "or sum by (k8s_namespace_name, k8s_pod_name, cgroup, kite_side) \
             (rate(kite_http_request_bytes_total{k8s_workload_name=\"\"}[5s]))"
        ));
    }

    /// The count and sum samples of one series.
    fn hist(labels: Value, w: &str, count: f64, sum: f64) -> [Value; 2] {
        let mut metric = labels;
        metric["kite_family"] = json!("0");
        metric["kite_w"] = json!(w);
        let mut m_sum = metric.clone();
        metric["kite_v"] = json!("count");
        m_sum["kite_v"] = json!("sum");
        [
            json!({"metric": metric, "value": [1.0, count.to_string()]}),
            json!({"metric": m_sum, "value": [1.0, sum.to_string()]}),
        ]
    }

    #[test]
    fn answers_become_endpoints_with_statuses_rates_and_percentiles() {
        let ep = json!({"instance": "a:9", "server_address": "10.0.0.1", "server_port": "80",
                        "url_scheme": "http", "k8s_namespace_name": "shop", "k8s_pod_name": "web-0"});
        let mut ok = ep.clone();
        ok["http_response_status_code"] = json!("200");
        ok["network_protocol_version"] = json!("1.1");
        let mut bad = ok.clone();
        bad["http_response_status_code"] = json!("503");
        let h = [
            hist(ok.clone(), "t", 90.0, 0.09),
            hist(bad.clone(), "t", 10.0, 0.01),
            hist(ok, "w", 0.9, 0.0009),
            hist(bad, "w", 0.1, 0.0001),
        ]
        .concat();
        let mut q = ep.clone();
        q["kite_family"] = json!("0");
        q["kite_w"] = json!("w");
        q["kite_q"] = json!("p99");
        let p = [json!({"metric": q, "value": [1.0, "0.00109"]})];
        let s = build(
            Grouping::Endpoint,
            Duration::from_secs(10),
            &h,
            &p,
            &[],
            "u",
        );
        assert_eq!(s.endpoints.len(), 1);
        let e = &s.endpoints[0];
        let id = e.id.as_ref().unwrap();
        assert_eq!(
            (id.ip.as_str(), id.port, id.node.as_str()),
            ("10.0.0.1", 80, "a:9")
        );
        assert_eq!(id.protocol, v1::Protocol::Http11 as i32);
        assert_eq!(e.workload.as_ref().unwrap().pod, "web-0");
        let t = e.totals.as_ref().unwrap();
        assert_eq!((t.requests, t.status_5xx), (100, 10));
        let w = e.last.as_ref().unwrap();
        assert_eq!((w.rps, w.requests, w.status_5xx), (1.0, 10, 1));
        assert_eq!(w.server_error_ratio, 0.1);
        assert_eq!(w.p99_seconds, Some(0.00109));
        assert_eq!(
            e.statuses
                .iter()
                .map(|s| (s.status, s.count))
                .collect::<Vec<_>>(),
            [(200, 90), (503, 10)]
        );
        assert!((w.mean_seconds.unwrap() - 0.001).abs() < 1e-12);
        assert!((t.latency_sum_seconds - 0.1).abs() < 1e-12);
    }
}
