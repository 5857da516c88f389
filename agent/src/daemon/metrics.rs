//! Prometheus exposition: OpenTelemetry HTTP semantic-convention histograms built from the
//! cumulative kernel histograms, plus Kite's self-metrics. Encoding reads the shared state
//! only (never the maps), so a scrape never waits on the data plane.
//!
//! Bucket boundaries are a coarse subset of the kernel's own bucket edges, chosen near the
//! OpenTelemetry HTTP boundaries (extended below 5 ms for fast services): every `le` is an
//! exact kernel edge, so bucket counts are exact, not interpolated.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use bytes::Bytes;

use kite_common::{
    hist::{OVERFLOW_BUCKET, bucket_index, bucket_lower_ns},
    maps::{Direction, Method, Stat},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::state::{Guards, Shared, State};
use crate::stats::{Histogram, Series};

/// Target boundaries, seconds; each is replaced by the nearest kernel edge.
const TARGET_EDGES: [f64; 23] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.007_5, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
];

/// The kernel bucket indices whose lower edges are the Prometheus `le` boundaries.
pub fn edges() -> &'static [usize] {
    static EDGES: OnceLock<Vec<usize>> = OnceLock::new();
    EDGES.get_or_init(|| {
        let mut v: Vec<usize> = TARGET_EDGES
            .iter()
            .map(|s| {
                let ns = (s * 1e9) as u64;
                let i = bucket_index(ns);
                // The nearer of this bucket's lower edge and the next one.
                let (lo, hi) = (bucket_lower_ns(i), bucket_lower_ns(i + 1));
                if ns - lo <= hi - ns { i } else { i + 1 }
            })
            .filter(|i| *i < OVERFLOW_BUCKET)
            .collect();
        v.dedup();
        v
    })
}

/// `le` boundary (seconds) and cumulative count for every Prometheus bucket, the last one
/// `+Inf`. Per-bucket (non-cumulative) counts, as prometheus-client expects them.
fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    let edges = edges();
    let mut out = Vec::with_capacity(edges.len() + 1);
    let mut below_prev = 0u64;
    for &i in edges {
        let below = h.count_below(bucket_lower_ns(i));
        out.push((bucket_lower_ns(i) as f64 / 1e9, below - below_prev));
        below_prev = below;
    }
    out.push((f64::INFINITY, h.count() - below_prev));
    out
}

type Labels = Vec<(String, String)>;

/// Kite's collector: everything is computed from the shared state at scrape time.
#[derive(Debug)]
pub struct KiteCollector {
    shared: Shared,
}

impl KiteCollector {
    /// A registry with Kite's collector.
    pub fn registry(shared: Shared) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(KiteCollector { shared }));
        r
    }
}

#[derive(Default)]
struct Agg {
    series: Series,
}

fn series_labels(
    st: &State,
    ep: &crate::stats::EndpointStats,
    method: Method,
    status: u16,
) -> Labels {
    let (path, workload) = st.describe(ep);
    let mut l: Labels = vec![
        ("http_request_method".into(), method.as_str().into()),
        ("http_response_status_code".into(), status.to_string()),
        ("server_address".into(), ep.id.host()),
        ("server_port".into(), ep.id.port.to_string()),
    ];
    match workload {
        Some(w) => {
            l.push(("k8s_namespace_name".into(), w.namespace));
            l.push(("k8s_pod_name".into(), w.pod));
            if !w.name.is_empty() {
                l.push(("k8s_workload_kind".into(), w.kind));
                l.push(("k8s_workload_name".into(), w.name));
            }
            if !w.verified {
                // Names from the pod's own hello, not the Kubernetes API.
                l.push(("kite_unverified".into(), "true".into()));
            }
        }
        None => l.push((
            "cgroup".into(),
            path.unwrap_or_else(|| ep.id.cgroup_id.to_string()),
        )),
    }
    l.push(("k8s_node_name".into(), st.node.clone()));
    l
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
                let mut l = series_labels(&st, ep, Method::Other, 0);
                l.drain(..4);
                let side = match ep.id.direction {
                    Direction::Inbound => "server",
                    Direction::Outbound => "client",
                };
                l.push(("kite_side".into(), side.into()));
                *overflow.entry(l).or_default() += ep.totals.values().map(|s| s.count).sum::<u64>();
            }
            for ((method, status), s) in &ep.totals {
                let labels = series_labels(&st, ep, *method, *status);
                let slot = match ep.id.direction {
                    Direction::Inbound => &mut by_dir[0],
                    Direction::Outbound => &mut by_dir[1],
                };
                let agg = slot.entry(labels).or_default();
                agg.series.count += s.count;
                agg.series.latency_sum_ns += s.latency_sum_ns;
                agg.series.req_bytes += s.req_bytes;
                agg.series.resp_bytes += s.resp_bytes;
                agg.series.hist.add(&s.hist);
            }
        }
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
                m.encode_family(labels)?.encode_histogram::<Labels>(
                    s.latency_sum_ns as f64 / 1e9,
                    s.count,
                    &buckets(&s.hist),
                    None,
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
        self_metrics(&st, &mut enc)
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), fmt::Error> {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn self_metrics(st: &State, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    gauge(
        enc,
        "kite_attached_cgroups",
        "cgroups Kite's programs are attached to",
        st.attachments.len() as i64,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "kite_map_entries",
            "Entries in Kite's eBPF maps (sockets: tracked connections; endpoints: histograms)",
            None,
            MetricType::Gauge,
        )?;
        for (map, v) in [
            ("sockets", st.sockets_used),
            ("endpoints", st.endpoints_used),
        ] {
            ConstGauge::new(v as i64)
                .encode(m.encode_family(&vec![("map".to_string(), map.to_string())])?)?;
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "kite_map_max_entries",
            "Bound of Kite's eBPF maps",
            None,
            MetricType::Gauge,
        )?;
        for (map, v) in [
            ("sockets", st.options.max_sockets),
            ("endpoints", st.options.max_endpoints),
        ] {
            ConstGauge::new(v as i64)
                .encode(m.encode_family(&vec![("map".to_string(), map.to_string())])?)?;
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "kite_ebpf_events",
            "Counters of Kite's eBPF programs: packets, connections, requests, and what the parser could not follow (sync_lost, seq_gaps, step_budget), map overflows (sockets_map_full, endpoints_map_full) and pipelining overflow",
            None,
            MetricType::Counter,
        )?;
        for s in Stat::ALL {
            ConstCounter::new(st.counters[s as usize])
                .encode(m.encode_family(&vec![("event".to_string(), s.name().to_string())])?)?;
        }
    }
    ConstCounter::new(st.bpf.run_time.as_secs_f64()).encode(enc.encode_descriptor(
        "kite_ebpf_run_time",
        "Time spent in Kite's eBPF programs (kernel BPF statistics; 0 unless enabled)",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?)?;
    ConstCounter::new(st.bpf.run_count).encode(enc.encode_descriptor(
        "kite_ebpf_runs",
        "Runs of Kite's eBPF programs (kernel BPF statistics; 0 unless enabled)",
        None,
        MetricType::Counter,
    )?)?;
    {
        let mut m = enc.encode_descriptor(
            "kite_agent_events",
            "Agent events: enrollments (enrolled, refused, bad), vanished cgroups, poll errors, expired endpoints, idle endpoints evicted at a budget, --cgroups removed and attached later (re-created or appeared)",
            None,
            MetricType::Counter,
        )?;
        let a = &st.agent;
        for (name, v) in [
            ("enrolled", a.enrolled),
            ("enroll_refused", a.enroll_refused),
            ("enroll_bad", a.enroll_bad),
            ("vanished_cgroups", a.vanished),
            ("poll_errors", a.poll_errors),
            ("expired_endpoints", a.expired_endpoints),
            ("idle_endpoints", a.idle_endpoints),
            ("static_cgroup_removed", a.static_removed),
            ("static_cgroup_attached_later", a.static_attached_later),
        ] {
            ConstCounter::new(v)
                .encode(m.encode_family(&vec![("event".to_string(), name.to_string())])?)?;
        }
    }
    guard_metrics(st, enc)?;
    gauge(
        enc,
        "kite_waiting_cgroups",
        "--cgroup paths that do not exist (yet, or any more): waited for, not attached",
        st.waiting_cgroups.len() as i64,
    )?;
    gauge(
        enc,
        "kite_kubernetes_metadata",
        "1 when pod metadata is followed through the Kubernetes API",
        st.kubernetes as i64,
    )
}

fn guard_metrics(st: &State, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let g = &st.guards;
    {
        let mut m = enc.encode_descriptor(
            "kite_listener_events",
            "Connections of the agent's listeners (grpc, metrics, enroll): accepted, refused beyond the connection cap, closed idle (nothing written within the idle deadline), closed for a slow request header",
            None,
            MetricType::Counter,
        )?;
        for (listener, c) in [
            ("grpc", &g.grpc),
            ("metrics", &g.metrics),
            ("enroll", &g.enroll),
        ] {
            for (event, v) in c.values() {
                ConstCounter::new(v).encode(m.encode_family(&vec![
                    ("listener".to_string(), listener.to_string()),
                    ("event".to_string(), event.to_string()),
                ])?)?;
            }
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "kite_watch_events",
            "Watch streams: started, refused (RESOURCE_EXHAUSTED beyond --max-watch-streams), snapshots skipped because a client did not read in time (latest wins)",
            None,
            MetricType::Counter,
        )?;
        for (event, v) in [
            ("started", &g.watch_started),
            ("refused", &g.watch_refused),
            ("skipped_snapshots", &g.watch_skipped),
        ] {
            ConstCounter::new(v.load(Relaxed))
                .encode(m.encode_family(&vec![("event".to_string(), event.to_string())])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "kite_scrape_events",
        "/metrics answers: expositions encoded (once per poll and format), scrapes served bytes encoded for another, served the previous poll's exposition (--max-scrapes expositions still being read), cut at the send deadline",
        None,
        MetricType::Counter,
    )?;
    for (event, v) in [
        ("encoded", &g.scrape_encoded),
        ("shared", &g.scrape_shared),
        ("stale", &g.scrape_stale),
        ("send_timeout", &g.scrape_send_timeout),
    ] {
        ConstCounter::new(v.load(Relaxed))
            .encode(m.encode_family(&vec![("event".to_string(), event.to_string())])?)?;
    }
    Ok(())
}

/// Exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, for scrapers that ask for it.
    OpenMetrics,
    /// The classic Prometheus text format (0.0.4), the default: every client and
    /// `promtool check metrics` read it.
    Prometheus,
}

impl Format {
    /// From an HTTP `Accept` header.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The text exposition.
pub fn render(registry: &Registry, format: Format) -> Result<String, fmt::Error> {
    render_sized(registry, format, 0)
}

/// The text exposition into a buffer of `capacity` bytes to start with (the previous size: the
/// buffer then never doubles past what it needs).
pub fn render_sized(
    registry: &Registry,
    format: Format,
    capacity: usize,
) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(capacity);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?
        }
    }
    Ok(out)
}

/// `/metrics` answers, bounded whatever scrapers do.
///
/// The exposition is encoded at most once per poll (and format) and the same bytes go to every
/// scraper of that poll. At most `max_alive` expositions exist at once: one still being read
/// by a slow scraper counts until it is done, and each answer must be read within a send
/// deadline. When a new poll's exposition would exceed that, scrapers get the newest one
/// already encoded (a poll older, counted as `stale`) instead of a new copy.
pub struct Exposition {
    registry: Registry,
    shared: Shared,
    max_alive: usize,
    send_deadline: Duration,
    cache: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    newest: Option<Cached>,
    /// Every exposition handed out and maybe still being sent.
    alive: Vec<Weak<Body>>,
}

struct Cached {
    generation: u64,
    format: Format,
    body: Arc<Body>,
}

/// An encoded exposition, shared by its readers.
struct Body(String);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Keeps its exposition alive while its bytes are being sent.
struct Share(Arc<Body>);

impl AsRef<[u8]> for Share {
    fn as_ref(&self) -> &[u8] {
        self.0.0.as_bytes()
    }
}

/// A chunk of the answer handed to the HTTP layer at a time.
const CHUNK: usize = 64 * 1024;

impl Exposition {
    /// Over the shared state.
    pub fn new(shared: Shared, max_alive: usize, send_deadline: Duration) -> Self {
        Self {
            registry: KiteCollector::registry(shared.clone()),
            shared,
            max_alive: max_alive.max(1),
            send_deadline,
            cache: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    async fn body(&self, format: Format) -> Result<(Format, Arc<Body>), fmt::Error> {
        let (generation, guards) = {
            let st = self.shared.read();
            (st.generation, st.guards.clone())
        };
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.newest.as_ref()
            && c.generation == generation
            && c.format == format
        {
            Guards::inc(&guards.scrape_shared);
            return Ok((c.format, c.body.clone()));
        }
        let hint = cache
            .newest
            .as_ref()
            .map_or(0, |c| c.body.0.len() + c.body.0.len() / 16);
        // The cache's own reference does not count: it is dropped before encoding.
        cache.newest = cache
            .newest
            .take()
            .filter(|c| Arc::strong_count(&c.body) > 1);
        cache.alive.retain(|w| w.strong_count() > 0);
        if cache.alive.len() >= self.max_alive
            && let Some(c) = cache.newest.as_ref()
        {
            // Slow readers still hold the previous expositions: no new copy.
            Guards::inc(&guards.scrape_stale);
            return Ok((c.format, c.body.clone()));
        }
        cache.newest = None;
        cache.alive.retain(|w| w.strong_count() > 0);
        let text = render_sized(&self.registry, format, hint)?;
        Guards::inc(&guards.scrape_encoded);
        if text.len() > 1 << 20 {
            // Thousands of endpoints render to tens of megabytes; give the pages back once
            // the answer is on its way rather than keep them as the process's high-water mark.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                // SAFETY: plain glibc call.
                unsafe { libc::malloc_trim(0) };
            });
        }
        let body = Arc::new(Body(text));
        cache.alive.push(Arc::downgrade(&body));
        cache.newest = Some(Cached {
            generation,
            format,
            body: body.clone(),
        });
        Ok((format, body))
    }

    /// Answers one scrape.
    pub async fn answer(&self, accept: Option<&str>) -> axum::response::Response {
        use axum::{http::StatusCode, response::IntoResponse as _};
        let format = Format::from_accept(accept);
        let guards = self.shared.read().guards.clone();
        let (format, body) = match self.body(format).await {
            Ok(b) => b,
            Err(_) => {
                return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response();
            }
        };
        let body = Bytes::from_owner(Share(body));
        let len = body.len();
        let deadline = tokio::time::Instant::now() + self.send_deadline;
        // The exposition stays alive until its last chunk is taken (or the connection drops).
        let chunks = futures_util::stream::unfold((body, 0usize), move |(body, at)| {
            let guards = guards.clone();
            async move {
                if at >= body.len() {
                    return None;
                }
                if tokio::time::Instant::now() > deadline {
                    Guards::inc(&guards.scrape_send_timeout);
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the scraper did not read the answer within the send deadline",
                    );
                    return Some((Err(e), (Bytes::new(), 0)));
                }
                let end = (at + CHUNK).min(body.len());
                let chunk = body.slice(at..end);
                // The last chunk releases the whole exposition once sent.
                let rest = if end >= body.len() {
                    Bytes::new()
                } else {
                    body
                };
                Some((Ok(chunk), (rest, if end >= len { 0 } else { end })))
            }
        });
        (
            StatusCode::OK,
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    format.content_type().to_string(),
                ),
                (axum::http::header::CONTENT_LENGTH, len.to_string()),
            ],
            axum::body::Body::from_stream(chunks),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_exact_kernel_edges_near_the_targets() {
        let e = edges();
        assert!(e.len() >= 20 && e.len() <= 30, "{}", e.len());
        for (i, t) in e.iter().zip(TARGET_EDGES) {
            let le = bucket_lower_ns(*i) as f64 / 1e9;
            assert!((le - t).abs() / t <= 1.0 / 32.0 + 1e-9, "{le} vs {t}");
        }
        assert!(e.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn buckets_partition_the_histogram() {
        let mut h = Histogram::default();
        for ns in [
            50_000,
            900_000,
            3_000_000,
            3_000_000,
            200_000_000,
            100_000_000_000,
        ] {
            h.record(ns);
        }
        let b = buckets(&h);
        assert_eq!(b.len(), edges().len() + 1);
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), 6);
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 1));
        // Cumulative at le ≈ 5 ms: the 50 µs, 900 µs and two 3 ms requests.
        let mut cum = 0;
        for (le, c) in &b {
            cum += c;
            if (*le - 0.005).abs() < 0.0002 {
                assert_eq!(cum, 4);
            }
        }
    }
}
