//! Prometheus exposition: OpenTelemetry HTTP and RPC semantic-convention histograms built from
//! the cumulative kernel histograms, plus Kite's self-metrics. Encoding reads the shared state
//! only (never the maps), so a scrape never waits on the data plane.
//!
//! - [`buckets`]: the histogram buckets Prometheus sees;
//! - [`labels`]: the OpenTelemetry attributes of a series;
//! - [`self_metrics`]: the agent's own counters and gauges;
//! - [`exposition`]: formats, content negotiation and the encode-once cache.

use std::{collections::BTreeMap, fmt, sync::Mutex};

use kite_common::maps::Direction;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
    registry::{Registry, Unit},
};

use super::state::Shared;
use crate::stats::{EndpointId, Series, SeriesKey};

mod buckets;
mod cap;
mod exposition;
mod labels;
mod self_metrics;

pub use buckets::edges;
pub use cap::{DEFAULT_MAX_SERIES, OVERFLOW_LABEL};
pub use exposition::{Exposition, Format, render, render_sized};

use buckets::{Sparse, buckets};
use labels::{owner_labels, rpc_labels, series_labels};
use self_metrics::{gauge, self_metrics};

type Labels = Vec<(String, String)>;

/// Kite's collector: everything is computed from the shared state at scrape time.
#[derive(Debug)]
pub struct KiteCollector {
    shared: Shared,
    /// Which label sets are exported (`--max-series`), kept across scrapes.
    cap: Mutex<cap::Cap>,
}

impl KiteCollector {
    /// A registry with Kite's collector.
    pub fn registry(shared: Shared) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(KiteCollector {
            shared,
            cap: Mutex::default(),
        }));
        r
    }
}

#[derive(Default)]
struct Agg<'a> {
    series: Series,
    /// The kernel series folded into it (endpoint × method × status × version), by an id
    /// stable across scrapes: what the series cap accounts overflow by.
    parts: Vec<(u64, &'a Series)>,
}

/// The histogram families: HTTP server and client, gRPC server and client (indexes into the
/// per-family arrays of the encoder and the series cap).
const FAMILIES: [(&str, &str); 4] = [
    (
        "http_server_request_duration",
        "Duration of HTTP server requests (request's first byte in to response's first byte out), measured by Kite's eBPF programs",
    ),
    (
        "http_client_request_duration",
        "Duration of HTTP client requests (request out to response's first byte in), measured by Kite's eBPF programs",
    ),
    (
        "rpc_server_call_duration",
        "Duration of gRPC server calls (request's first byte in to response's first byte out), measured by Kite's eBPF programs",
    ),
    (
        "rpc_client_call_duration",
        "Duration of gRPC client calls (request out to response's first byte in), measured by Kite's eBPF programs",
    ),
];

/// Number of histogram families.
const N_FAMILIES: usize = FAMILIES.len();

/// Per-family label sets of one scrape.
type ByFamily<'a> = [BTreeMap<Labels, Agg<'a>>; N_FAMILIES];

/// The family of an endpoint's series.
fn family(id: &EndpointId) -> usize {
    let side = match id.direction {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    };
    if id.protocol.is_grpc() {
        2 + side
    } else {
        side
    }
}

/// The id of one kernel series.
fn part_id(ep: &EndpointId, key: &SeriesKey) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    (ep, key).hash(&mut h);
    h.finish()
}

impl Collector for KiteCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let st = self.shared.read();
        // Containers of one pod (or sockets of one cgroup seen under several ids) fold into one
        // series per label set.
        let mut by_family: ByFamily = Default::default();
        // Requests in each cgroup's overflow endpoint, by its labels without the endpoint's.
        let mut overflow: BTreeMap<Labels, u64> = BTreeMap::new();
        for ep in st.collector.endpoints() {
            if ep.id.is_overflow() {
                let mut l = owner_labels(&st, ep);
                let side = match ep.id.direction {
                    Direction::Inbound => "server",
                    Direction::Outbound => "client",
                };
                l.push(("kite_side".into(), side.into()));
                *overflow.entry(l).or_default() += ep.totals.values().map(|s| s.count).sum::<u64>();
            }
            let f = family(&ep.id);
            for (key, s) in &ep.totals {
                let (method, status, version, rpc) = *key;
                let labels = if ep.id.protocol.is_grpc() {
                    rpc_labels(&st, ep, rpc, status)
                } else {
                    series_labels(&st, ep, method, status, version, rpc)
                };
                let agg = by_family[f].entry(labels).or_default();
                agg.parts.push((part_id(&ep.id, key), s));
                agg.series.add(s);
            }
        }
        // At most --max-series label sets; the rest in one overflow series per family.
        let folded = self
            .cap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(st.max_series, &mut by_family);
        for (i, (name, help)) in FAMILIES.into_iter().enumerate() {
            if by_family[i].is_empty() {
                continue;
            }
            let mut m =
                enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for (labels, agg) in &by_family[i] {
                let s = &agg.series;
                // Classic buckets in the text formats, native ones too in protobuf.
                let sparse = Sparse::new(&s.hist);
                // The count is the buckets' sum: a per-CPU read torn by a concurrent update
                // must not leave `_count` below the buckets (Prometheus rejects that).
                m.encode_family(labels)?
                    .encode_histogram_with_native::<Labels>(
                        s.latency_sum_ns as f64 / 1e9,
                        s.hist.count(),
                        &buckets(&s.hist),
                        None,
                        sparse.native(),
                    )?;
            }
        }
        for (proto, families) in [("http", [0, 1]), ("rpc", [2, 3])] {
            let (req_help, resp_help) = if proto == "http" {
                (
                    "HTTP request bytes (headers and body) seen by Kite",
                    "HTTP response bytes (headers and body) seen by Kite",
                )
            } else {
                (
                    "gRPC request bytes (HTTP/2 frames of the call's stream, frame headers included) seen by Kite",
                    "gRPC response bytes (HTTP/2 frames of the call's stream, frame headers included) seen by Kite",
                )
            };
            if families.iter().all(|f| by_family[*f].is_empty()) {
                continue;
            }
            for (what, help) in [("request", req_help), ("response", resp_help)] {
                let name = format!("kite_{proto}_{what}");
                let mut m =
                    enc.encode_descriptor(&name, help, Some(&Unit::Bytes), MetricType::Counter)?;
                for (dir, f) in ["server", "client"].iter().zip(families) {
                    for (labels, agg) in &by_family[f] {
                        let mut l = labels.clone();
                        l.push(("kite_side".into(), (*dir).into()));
                        let v = if what == "request" {
                            agg.series.req_bytes
                        } else {
                            agg.series.resp_bytes
                        };
                        ConstCounter::new(v).encode(m.encode_family(&l)?)?;
                    }
                }
            }
        }
        if st.options.budget() != crate::ebpf::NO_BUDGET {
            gauge(
                &mut enc,
                "kite_endpoint_budget",
                "Distinct endpoint histograms one cgroup may hold in one direction (--endpoint-budget); requests beyond go to its server_address=\"_OTHER\" endpoint",
                st.options.budget() as i64,
            )?;
        }
        if !overflow.is_empty() {
            let mut m = enc.encode_descriptor(
                "kite_endpoint_budget_overflow",
                "Requests of a cgroup recorded in its overflow endpoint (server_address=\"_OTHER\"): beyond its endpoint budget, or whose own histogram could not be allocated",
                None,
                MetricType::Counter,
            )?;
            for (l, n) in &overflow {
                ConstCounter::new(*n).encode(m.encode_family(l)?)?;
            }
        }
        let rpc_seen = by_family[2..].iter().any(|m| !m.is_empty());
        series_cap_metrics(&mut enc, st.max_series, &folded, rpc_seen)?;
        self_metrics(&st, &mut enc)
    }
}

/// The cap's own gauge and counters: per side (`kite_side`), the gRPC families' with
/// `rpc_system_name="grpc"` as well (only once there are any, so the HTTP ones keep their one
/// series per side).
fn series_cap_metrics(
    enc: &mut DescriptorEncoder,
    max: usize,
    folded: &[cap::Folded; N_FAMILIES],
    rpc_seen: bool,
) -> Result<(), fmt::Error> {
    gauge(
        enc,
        "kite_series_limit",
        "Label sets the http_* and rpc_* histogram families export at most (--max-series, all of them together); beyond, they are folded into the series labelled otel_metric_overflow=\"true\"",
        max as i64,
    )?;
    let rpc = rpc_seen || folded[2..].iter().any(|f| f.total > 0);
    let sides: Vec<(Labels, &cap::Folded)> = folded
        .iter()
        .enumerate()
        .filter(|(f, _)| *f < 2 || rpc)
        .map(|(f, folded)| {
            let mut l: Labels = vec![(
                "kite_side".into(),
                if f % 2 == 0 { "server" } else { "client" }.into(),
            )];
            if f >= 2 {
                l.push(("rpc_system_name".into(), "grpc".into()));
            }
            (l, folded)
        })
        .collect();
    for (name, help, value) in [
        (
            "kite_series_overflow",
            "Label sets folded into the otel_metric_overflow=\"true\" series so far (also those gone since)",
            (|f: &cap::Folded| f.total) as fn(&cap::Folded) -> u64,
        ),
        (
            "kite_series_overflow_requests",
            "Requests recorded in the otel_metric_overflow=\"true\" series (its _count)",
            |f: &cap::Folded| f.requests,
        ),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (l, f) in &sides {
            ConstCounter::new(value(f)).encode(m.encode_family(l)?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "kite_series_folded",
        "Label sets in the otel_metric_overflow=\"true\" series now",
        None,
        MetricType::Gauge,
    )?;
    for (l, f) in &sides {
        prometheus_client::metrics::gauge::ConstGauge::new(f.now as i64)
            .encode(m.encode_family(l)?)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, Instant};

    use kite_common::{
        h2::hpack::path_id,
        hist::bucket_index,
        maps::{
            EndpointKey, GRPC_STATUS_UNKNOWN, Method, Protocol, RPC_NONE, TRANSPORT_TCP,
            TRANSPORT_TLS, Version, rpc_id,
        },
    };

    use super::*;
    use crate::{daemon::state::State, ebpf::Options, ebpf::RawStats};

    pub(crate) const UNARY: &str = "/kite.test.Echo/Unary";
    pub(crate) const LOOKUP: &str = "/kite.test.Echo/Lookup";

    fn key(port: u16, dir: Direction, status: u16) -> EndpointKey {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        EndpointKey {
            cgroup_id: 7,
            addr,
            port,
            status,
            direction: dir as u8,
            method: Method::Get as u8,
            version: Version::Http11 as u8,
            protocol: Protocol::Http as u8,
            rpc: RPC_NONE,
            transport: TRANSPORT_TCP,
            _pad: [0; 3],
        }
    }

    fn grpc(port: u16, dir: Direction, path: &str, status: u16) -> EndpointKey {
        EndpointKey {
            method: Method::Post as u8,
            version: Version::Http2 as u8,
            protocol: Protocol::Grpc as u8,
            rpc: rpc_id(path_id(path.as_bytes())),
            ..key(port, dir, status)
        }
    }

    fn raw(n: u64, ns: u64) -> RawStats {
        RawStats {
            count: n,
            latency_sum_ns: n * ns,
            req_bytes: n * 50,
            resp_bytes: n * 70,
            buckets: vec![(bucket_index(ns) as u16, n as u32)],
        }
    }

    /// An agent state after one poll of HTTP/1.1, HTTP/2 over TLS and gRPC calls both ways
    /// (the name of `Unary` learnt, `Lookup`'s not).
    pub(crate) fn state() -> Shared {
        let mut st = State::new("n".into(), Duration::from_secs(1), 4, Options::default());
        st.paths.insert(7, "/kite-test/app".into());
        st.rpc_names
            .learn(rpc_id(path_id(UNARY.as_bytes())), UNARY.as_bytes());
        let h2 = EndpointKey {
            version: Version::Http2 as u8,
            transport: TRANSPORT_TLS,
            ..key(8443, Direction::Inbound, 200)
        };
        let reading = vec![
            (key(8080, Direction::Inbound, 200), raw(3, 1_000_000)),
            (h2, raw(4, 2_000_000)),
            (grpc(50051, Direction::Inbound, UNARY, 0), raw(5, 3_000_000)),
            (
                grpc(50051, Direction::Inbound, UNARY, 14),
                raw(2, 3_000_000),
            ),
            (
                grpc(50051, Direction::Inbound, LOOKUP, 5),
                raw(1, 3_000_000),
            ),
            (
                grpc(50051, Direction::Outbound, LOOKUP, 5),
                raw(1, 4_000_000),
            ),
            (
                grpc(50051, Direction::Outbound, UNARY, GRPC_STATUS_UNKNOWN),
                raw(6, 4_000_000),
            ),
        ];
        st.collector.update(Instant::now(), reading);
        Shared::new(st)
    }

    fn text(shared: &Shared) -> String {
        let r = KiteCollector::registry(shared.clone());
        String::from_utf8(render(&r, Format::Prometheus).unwrap()).unwrap()
    }

    /// The value of the one sample of `family` whose line has every one of `labels`.
    fn value(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
        let mut found = text.lines().filter(|l| {
            l.strip_prefix(family).is_some_and(|r| r.starts_with('{'))
                && labels.iter().all(|x| l.contains(x))
        });
        let line = found.next()?;
        assert!(
            found.next().is_none(),
            "{family} {labels:?}: several samples"
        );
        line.rsplit(' ').next()?.parse().ok()
    }

    #[test]
    fn grpc_calls_are_rpc_metrics_and_http2_and_tls_are_http_ones() {
        let t = text(&state());
        let server = "rpc_server_call_duration_seconds_count";
        let unary = "rpc_method=\"kite.test.Echo/Unary\"";
        assert_eq!(
            value(&t, server, &[unary, "rpc_response_status_code=\"OK\""]),
            Some(5.0)
        );
        assert_eq!(
            value(
                &t,
                server,
                &[
                    unary,
                    "rpc_response_status_code=\"UNAVAILABLE\"",
                    "error_type=\"UNAVAILABLE\"",
                    "rpc_system_name=\"grpc\"",
                    "server_port=\"50051\"",
                ]
            ),
            Some(2.0)
        );
        // Lookup's name is not known: its id, never a guess; NOT_FOUND is no server error.
        let lookup = format!(
            "rpc_method=\"rpc#{:08x}\"",
            rpc_id(path_id(LOOKUP.as_bytes()))
        );
        let line = t
            .lines()
            .find(|l| l.starts_with(server) && l.contains(&lookup))
            .unwrap();
        assert!(
            line.contains("rpc_response_status_code=\"NOT_FOUND\""),
            "{line}"
        );
        assert!(!line.contains("error_type"), "{line}");
        let client = "rpc_client_call_duration_seconds_count";
        assert_eq!(
            value(&t, client, &[&lookup, "error_type=\"NOT_FOUND\""]),
            Some(1.0)
        );
        // An unknown grpc-status: no status attribute and no error.
        let unknown = t
            .lines()
            .find(|l| l.starts_with(client) && l.contains(unary))
            .unwrap();
        assert!(!unknown.contains("rpc_response_status_code"), "{unknown}");
        assert!(!unknown.contains("error_type"), "{unknown}");
        assert!(unknown.ends_with(" 6"), "{unknown}");
        // Classic buckets as for HTTP.
        assert_eq!(
            value(
                &t,
                "rpc_server_call_duration_seconds_bucket",
                &[unary, "rpc_response_status_code=\"OK\"", "le=\"0.005\""]
            ),
            Some(5.0)
        );
        // HTTP/2 over TLS is HTTP: version 2, https; gRPC is not counted again as HTTP.
        let http = "http_server_request_duration_seconds_count";
        assert_eq!(
            value(
                &t,
                http,
                &["network_protocol_version=\"2\"", "url_scheme=\"https\""]
            ),
            Some(4.0)
        );
        assert_eq!(
            value(
                &t,
                http,
                &["network_protocol_version=\"1.1\"", "url_scheme=\"http\""]
            ),
            Some(3.0)
        );
        assert!(
            !t.lines()
                .any(|l| l.starts_with("http_") && l.contains("50051"))
        );
        assert!(
            !t.lines()
                .any(|l| l.starts_with("rpc_") && l.contains("http_"))
        );
        // Byte counters of gRPC calls: 7 client calls of 50 request bytes each.
        let client_bytes: f64 = t
            .lines()
            .filter(|l| {
                l.starts_with("kite_rpc_request_bytes_total{") && l.contains("kite_side=\"client\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(client_bytes, 350.0);
        assert_eq!(
            kite_testkit::promtool_check(&t),
            Ok(()),
            "promtool check metrics"
        );
    }

    #[test]
    fn the_series_cap_folds_rpc_label_sets_and_counts_them() {
        let shared = state();
        shared.write().max_series = 3;
        let t = text(&shared);
        // 7 label sets, 3 admitted (the busiest: 6, 5 and 4 requests); the rest folded into
        // each family's overflow series, their calls and label sets counted.
        let overflow = "otel_metric_overflow=\"true\"";
        assert_eq!(
            value(&t, "rpc_server_call_duration_seconds_count", &[overflow]),
            Some(3.0)
        );
        assert_eq!(
            value(
                &t,
                "http_server_request_duration_seconds_count",
                &[overflow]
            ),
            Some(3.0)
        );
        assert_eq!(
            value(&t, "rpc_client_call_duration_seconds_count", &[overflow]),
            Some(1.0)
        );
        let rpc_server = ["kite_side=\"server\"", "rpc_system_name=\"grpc\""];
        assert_eq!(
            value(&t, "kite_series_overflow_total", &rpc_server),
            Some(2.0)
        );
        assert_eq!(
            value(&t, "kite_series_overflow_requests_total", &rpc_server),
            Some(3.0)
        );
        // The HTTP families' own, unlabelled by rpc_system_name.
        let http_server = t
            .lines()
            .find(|l| {
                l.starts_with("kite_series_overflow_total{")
                    && l.contains("kite_side=\"server\"")
                    && !l.contains("rpc_system_name")
            })
            .unwrap();
        assert!(http_server.ends_with(" 1"), "{http_server}");
        assert_eq!(kite_testkit::promtool_check(&t), Ok(()));
    }
}
