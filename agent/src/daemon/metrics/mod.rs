//! Prometheus exposition: OpenTelemetry HTTP semantic-convention histograms built from the
//! cumulative kernel histograms, plus Kite's self-metrics. Encoding reads the shared state
//! only (never the maps), so a scrape never waits on the data plane.
//!
//! - [`buckets`]: the histogram buckets Prometheus sees;
//! - [`labels`]: the OpenTelemetry attributes of a series;
//! - [`self_metrics`]: the agent's own counters and gauges;
//! - [`exposition`]: formats, content negotiation and the encode-once cache.

use std::{collections::BTreeMap, fmt, sync::Mutex};

use kite_common::maps::{Direction, Method, Version};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
    registry::{Registry, Unit},
};

use super::state::Shared;
use crate::stats::Series;

mod buckets;
mod cap;
mod exposition;
mod labels;
mod self_metrics;

pub use buckets::edges;
pub use cap::{DEFAULT_MAX_SERIES, OVERFLOW_LABEL};
pub use exposition::{Exposition, Format, render, render_sized};

use buckets::{Sparse, buckets};
use labels::{owner_labels, series_labels};
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

/// The id of one kernel series.
fn part_id(ep: &crate::stats::EndpointId, key: &(Method, u16, Version)) -> u64 {
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
        let mut by_dir: [BTreeMap<Labels, Agg>; 2] = [BTreeMap::new(), BTreeMap::new()];
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
            for ((method, status, version), s) in &ep.totals {
                let labels = series_labels(&st, ep, *method, *status, *version);
                let slot = match ep.id.direction {
                    Direction::Inbound => &mut by_dir[0],
                    Direction::Outbound => &mut by_dir[1],
                };
                let agg = slot.entry(labels).or_default();
                agg.parts
                    .push((part_id(&ep.id, &(*method, *status, *version)), s));
                agg.series.count += s.count;
                agg.series.latency_sum_ns += s.latency_sum_ns;
                agg.series.req_bytes += s.req_bytes;
                agg.series.resp_bytes += s.resp_bytes;
                agg.series.hist.add(&s.hist);
            }
        }
        // At most --max-series label sets; the rest in one overflow series per family.
        let folded = self
            .cap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(st.max_series, &mut by_dir);
        for (i, (name, help)) in [
            (
                "http_server_request_duration",
                "Duration of HTTP server requests (request's first byte in to response's first byte out), measured by Kite's eBPF programs",
            ),
            (
                "http_client_request_duration",
                "Duration of HTTP client requests (request out to response's first byte in), measured by Kite's eBPF programs",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            if by_dir[i].is_empty() {
                continue;
            }
            let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for (labels, agg) in &by_dir[i] {
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
        for (what, help) in [
            (
                "request",
                "HTTP request bytes (headers and body) seen by Kite",
            ),
            (
                "response",
                "HTTP response bytes (headers and body) seen by Kite",
            ),
        ] {
            if by_dir.iter().all(BTreeMap::is_empty) {
                break;
            }
            let name = format!("kite_http_{what}");
            let mut m =
                enc.encode_descriptor(&name, help, Some(&Unit::Bytes), MetricType::Counter)?;
            for (dir, map) in ["server", "client"].iter().zip(&by_dir) {
                for (labels, agg) in map {
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
        series_cap_metrics(&mut enc, st.max_series, &folded)?;
        self_metrics(&st, &mut enc)
    }
}

/// The cap's own gauge and counters.
fn series_cap_metrics(
    enc: &mut DescriptorEncoder,
    max: usize,
    folded: &[cap::Folded; 2],
) -> Result<(), fmt::Error> {
    gauge(
        enc,
        "kite_series_limit",
        "Label sets the http_* families export at most (--max-series, server and client together); beyond, they are folded into the series labelled otel_metric_overflow=\"true\"",
        max as i64,
    )?;
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
        for (side, f) in ["server", "client"].iter().zip(folded) {
            let l: Labels = vec![("kite_side".into(), (*side).into())];
            ConstCounter::new(value(f)).encode(m.encode_family(&l)?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "kite_series_folded",
        "Label sets in the otel_metric_overflow=\"true\" series now",
        None,
        MetricType::Gauge,
    )?;
    for (side, f) in ["server", "client"].iter().zip(folded) {
        let l: Labels = vec![("kite_side".into(), (*side).into())];
        prometheus_client::metrics::gauge::ConstGauge::new(f.now as i64)
            .encode(m.encode_family(&l)?)?;
    }
    Ok(())
}
