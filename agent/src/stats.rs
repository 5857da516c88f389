//! From cumulative kernel counters to windowed per-endpoint statistics.
//!
//! The kernel keeps cumulative counters per (cgroup, direction, endpoint, method, status). Every
//! poll, [`Collector::update`] subtracts the previous reading and folds the difference into
//! one [`EndpointStats`] per (cgroup, direction, endpoint): the last interval's RPS, latency
//! percentiles, error counts and byte rates, a short history for sparklines, and cumulative
//! totals (for Prometheus).

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use kite_common::{
    hist::{
        NUM_BUCKETS, Native, OVERFLOW_BUCKET, bucket_index, bucket_lower_ns, bucket_upper_ns,
        native_of,
    },
    maps::{Direction, EndpointKey, Method, Protocol, TRANSPORT_TLS, Version},
};

use crate::ebpf::RawStats;

/// Latency histogram over the kernel's bucket layout, with 64-bit counts.
///
/// Sparse: only non-empty buckets are stored, sorted by index. A service's latencies fill a
/// few dozen of the 435 buckets at most, so an agent with thousands of endpoints keeps
/// kilobytes, not megabytes, per endpoint.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<(u16, u64)>,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.nonzero().map(|(i, c)| (bucket_lower_ns(i), c)))
            .finish()
    }
}

impl Histogram {
    /// A histogram from dense bucket counts (index `i` is bucket `i`; extra ones ignored).
    pub fn from_counts(counts: impl IntoIterator<Item = u64>) -> Self {
        Self {
            buckets: counts
                .into_iter()
                .take(NUM_BUCKETS)
                .enumerate()
                .filter(|(_, c)| *c > 0)
                .map(|(i, c)| (i as u16, c))
                .collect(),
        }
    }

    /// Adds one observation (user-space use: tests, simulations).
    pub fn record(&mut self, ns: u64) {
        let i = bucket_index(ns) as u16;
        match self.buckets.binary_search_by_key(&i, |(b, _)| *b) {
            Ok(k) => self.buckets[k].1 += 1,
            Err(k) => self.buckets.insert(k, (i, 1)),
        }
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, c)| c).sum()
    }

    /// Adds another histogram's counts.
    pub fn add(&mut self, other: &Histogram) {
        if other.buckets.is_empty() {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets.clone_from(&other.buckets);
            return;
        }
        let mut out = Vec::with_capacity(self.buckets.len().max(other.buckets.len()));
        merge_sparse(&self.buckets, &other.buckets, |i, x, y| {
            out.push((i, x + y))
        });
        self.buckets = out;
    }

    /// Non-empty buckets: (index, count), by index.
    pub fn nonzero(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.buckets.iter().map(|(i, c)| (*i as usize, *c))
    }

    /// Observations of at most `ns` nanoseconds, exact when `ns` is a bucket's upper edge (as
    /// every classic boundary is): a Prometheus `le` bucket.
    pub fn count_at_most(&self, ns: u64) -> u64 {
        self.nonzero()
            .take_while(|(i, _)| bucket_upper_ns(*i) <= ns)
            .map(|(_, c)| c)
            .sum()
    }

    /// Non-empty native-histogram (schema 4) buckets, by bucket: the kernel buckets merged
    /// where a classic boundary split one.
    pub fn native(&self) -> impl Iterator<Item = (Native, u64)> + '_ {
        let mut it = self.nonzero().map(|(i, c)| (native_of(i), c)).peekable();
        std::iter::from_fn(move || {
            let (b, mut c) = it.next()?;
            while let Some((_, more)) = it.next_if(|(n, _)| *n == b) {
                c += more;
            }
            Some((b, c))
        })
    }

    /// The `q`-quantile (0 ≤ q ≤ 1), in nanoseconds, as Prometheus' `histogram_quantile`
    /// computes it over the native histogram: the native bucket holding the observation of
    /// rank `q·n`, interpolated linearly inside it (the overflow bucket: its lower edge).
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * n as f64;
        let mut cum = 0u64;
        let mut last = None;
        for (b, c) in self.native() {
            last = Some(b);
            if (cum + c) as f64 >= target {
                let (lo, hi) = (b.lower_seconds() * 1e9, b.upper_seconds() * 1e9);
                if b == Native::Overflow {
                    return Some(lo);
                }
                let frac = ((target - cum as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lo + frac * (hi - lo));
            }
            cum += c;
        }
        last.map(|b| b.lower_seconds() * 1e9)
    }

    /// Upper edge of the highest non-empty bucket (the lower edge for the overflow bucket).
    pub fn max(&self) -> Option<f64> {
        let (i, _) = self.nonzero().last()?;
        Some(if i == OVERFLOW_BUCKET {
            bucket_lower_ns(i) as f64
        } else {
            bucket_upper_ns(i) as f64
        })
    }
}

/// A small map kept as a sorted vector: an endpoint has a handful of status codes and methods,
/// and a `BTreeMap` node per endpoint would weigh more than the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Ord + Copy, V: Default> SmallMap<K, V> {
    /// The value for `k`, inserted with its default if missing.
    pub fn entry(&mut self, k: K) -> &mut V {
        let i = match self.0.binary_search_by(|(x, _)| x.cmp(&k)) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (k, V::default()));
                i
            }
        };
        &mut self.0[i].1
    }
}

impl<K: Ord, V> SmallMap<K, V> {
    /// The value for `k`.
    pub fn get(&self, k: &K) -> Option<&V> {
        self.0
            .binary_search_by(|(x, _)| x.cmp(k))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Entries by key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Values by key.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Values by key, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.0.iter_mut().map(|(_, v)| v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Ord, V> std::ops::Index<&K> for SmallMap<K, V> {
    type Output = V;
    fn index(&self, k: &K) -> &V {
        self.get(k).expect("no such key")
    }
}

impl<K: Ord, V, const N: usize> From<[(K, V); N]> for SmallMap<K, V> {
    fn from(mut a: [(K, V); N]) -> Self {
        a.sort_by(|x, y| x.0.cmp(&y.0));
        Self(a.into_iter().collect())
    }
}

impl<'a, K, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// How the overflow endpoint's address is shown ([`EndpointId::is_overflow`]).
pub const OVERFLOW_ADDRESS: &str = "_OTHER";

/// What an endpoint's exchanges speak: the HTTP version of the responses, or gRPC.
///
/// Part of the endpoint's identity: a port answering HTTP/1.1 and HTTP/2 (an `h2c` upgrade)
/// is two rows, so that a row's percentiles and errors describe one kind of exchange (a gRPC
/// call's status is a grpc-status, not an HTTP one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AppProtocol {
    /// HTTP/1.x whose version the key does not say (no kernel program writes that).
    Http1,
    /// `HTTP/1.0` responses.
    Http10,
    /// `HTTP/1.1` responses.
    Http11,
    /// HTTP/2 streams that are not gRPC calls.
    Http2,
    /// gRPC calls (HTTP/2, `content-type: application/grpc`).
    Grpc,
}

impl AppProtocol {
    /// From a kernel key.
    pub fn of(key: &EndpointKey) -> Self {
        if Protocol::from_u8(key.protocol) == Protocol::Grpc {
            return Self::Grpc;
        }
        match Version::from_u8(key.version) {
            Version::Http10 => Self::Http10,
            Version::Http11 => Self::Http11,
            Version::Http2 => Self::Http2,
            Version::Unknown => Self::Http1,
        }
    }

    /// `HTTP/1.1`, `HTTP/1.0`, `HTTP/2`, `gRPC` (`HTTP/1.x` when the version is unknown).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.x",
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
            Self::Grpc => "gRPC",
        }
    }

    /// Whether its calls carry a grpc-status and a method id instead of an HTTP status.
    pub const fn is_grpc(self) -> bool {
        matches!(self, Self::Grpc)
    }
}

impl fmt::Display for AppProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One endpoint as the tables show it: a cgroup's view of one server address, speaking one
/// protocol, in plaintext or TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId {
    /// cgroup id of the sockets.
    pub cgroup_id: u64,
    /// Inbound (server) or outbound (client).
    pub direction: Direction,
    /// Server address (IPv4 shown as IPv4).
    pub addr: IpAddr,
    /// Server port.
    pub port: u16,
    /// HTTP version or gRPC.
    pub protocol: AppProtocol,
    /// Measured from TLS plaintext (issue 14): `url_scheme="https"`.
    pub tls: bool,
}

impl EndpointId {
    /// The endpoint of a kernel key (method and status dropped).
    pub fn of(key: &EndpointKey) -> Self {
        let v6 = Ipv6Addr::from(key.addr);
        Self {
            cgroup_id: key.cgroup_id,
            direction: Direction::from_u8(key.direction).unwrap_or(Direction::Inbound),
            addr: v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            port: key.port,
            protocol: AppProtocol::of(key),
            tls: key.transport == TRANSPORT_TLS,
        }
    }

    /// The protocol as shown, with TLS: `HTTP/1.1`, `HTTP/2+TLS`, `gRPC+TLS`.
    pub fn protocol_label(&self) -> String {
        if self.tls {
            format!("{}+TLS", self.protocol)
        } else {
            self.protocol.to_string()
        }
    }

    /// Whether this is its cgroup's overflow endpoint (address `::`, port 0): the requests
    /// beyond its endpoint budget, whatever their server.
    pub fn is_overflow(&self) -> bool {
        self.port == 0 && self.addr.is_unspecified()
    }

    /// The address as shown (`_OTHER` for the overflow endpoint, as OpenTelemetry names an
    /// aggregate of values it does not list).
    pub fn host(&self) -> String {
        if self.is_overflow() {
            OVERFLOW_ADDRESS.to_string()
        } else {
            self.addr.to_string()
        }
    }

    /// `addr:port`, with brackets for IPv6; `_OTHER` for the overflow endpoint.
    pub fn address(&self) -> String {
        if self.is_overflow() {
            return OVERFLOW_ADDRESS.to_string();
        }
        match self.addr {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        }
    }
}

/// Requests of one (method, status) pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Series {
    /// Requests.
    pub count: u64,
    /// Sum of latencies, ns.
    pub latency_sum_ns: u64,
    /// Request bytes.
    pub req_bytes: u64,
    /// Response bytes.
    pub resp_bytes: u64,
    /// Latency distribution.
    pub hist: Histogram,
}

impl Series {
    /// Adds another series' counts.
    pub fn add(&mut self, o: &Series) {
        self.count += o.count;
        self.latency_sum_ns += o.latency_sum_ns;
        self.req_bytes += o.req_bytes;
        self.resp_bytes += o.resp_bytes;
        self.hist.add(&o.hist);
    }

    /// What a new kernel reading adds to this cumulative series. The kernel's counters are
    /// cumulative too, so the series itself is the previous reading (no copy of it is kept);
    /// histogram buckets are 32-bit and wrapping in the kernel, so they are compared modulo
    /// 2^32. A reading below the series (the kernel entry was removed and created again)
    /// counts from zero.
    fn delta(cur: &RawStats, total: &Series) -> Series {
        if cur.count < total.count {
            return Series::delta(cur, &Series::default());
        }
        let before: Vec<(u16, u32)> = total
            .hist
            .buckets
            .iter()
            .map(|(i, c)| (*i, *c as u32))
            .collect();
        let mut out = Vec::with_capacity(cur.buckets.len());
        // A bucket absent from one side reads 0; its wrapping difference still comes out right.
        merge_sparse(&cur.buckets, &before, |i, c, p| {
            let d = c.wrapping_sub(p) as u64;
            if d > 0 {
                out.push((i, d));
            }
        });
        Series {
            count: cur.count - total.count,
            latency_sum_ns: cur.latency_sum_ns.wrapping_sub(total.latency_sum_ns),
            req_bytes: cur.req_bytes.wrapping_sub(total.req_bytes),
            resp_bytes: cur.resp_bytes.wrapping_sub(total.resp_bytes),
            hist: Histogram { buckets: out },
        }
    }
}

/// Walks two index-sorted sparse bucket lists together, calling `f(index, a, b)` for every
/// index present in either (an absent count reads as the default, 0).
fn merge_sparse<A: Copy + Default, B: Copy + Default>(
    a: &[(u16, A)],
    b: &[(u16, B)],
    mut f: impl FnMut(u16, A, B),
) {
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                f(x.0, x.1, y.1);
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                f(x.0, x.1, B::default());
                i += 1;
            }
            (Some(x), None) => {
                f(x.0, x.1, B::default());
                i += 1;
            }
            (_, Some(y)) => {
                f(y.0, A::default(), y.1);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

/// Statistics of one interval (or of a whole run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interval {
    /// Length of the interval, seconds.
    pub secs: f64,
    /// Requests completed in it.
    pub requests: u64,
    /// Responses with a 4xx status.
    pub status_4xx: u64,
    /// Responses with a 5xx status.
    pub status_5xx: u64,
    /// Request bytes.
    pub req_bytes: u64,
    /// Response bytes.
    pub resp_bytes: u64,
    /// Sum of latencies, ns.
    pub latency_sum_ns: u64,
    /// Latency distribution.
    pub hist: Histogram,
    /// Requests per status code (gRPC endpoints: per grpc-status code,
    /// [`GRPC_STATUS_UNKNOWN`](kite_common::maps::GRPC_STATUS_UNKNOWN) when not known).
    pub by_status: SmallMap<u16, u64>,
    /// Requests per method.
    pub by_method: SmallMap<Method, u64>,
    /// gRPC calls that ended with a known grpc-status other than `OK` (an error for the
    /// caller, as OpenTelemetry's gRPC client conventions say).
    pub rpc_errors: u64,
    /// gRPC calls that ended with one of the statuses OpenTelemetry's gRPC server conventions
    /// call errors (`UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`,
    /// `UNAVAILABLE`, `DATA_LOSS`).
    pub rpc_server_errors: u64,
    /// gRPC endpoints: the same figures per method id ([`crate::rpc_names`]); HTTP/1 ones per
    /// route id (`kite_common::route`); their own `by_rpc` stay empty. Bounded by the
    /// kernel's bound of methods (routes) per endpoint.
    pub by_rpc: SmallMap<u32, Interval>,
}

impl Interval {
    fn add(&mut self, method: Method, status: u16, grpc: bool, rpc: Option<u32>, s: &Series) {
        self.add_one(method, status, grpc, s);
        if let Some(id) = rpc {
            self.by_rpc.entry(id).add_one(method, status, grpc, s);
        }
    }

    fn add_one(&mut self, method: Method, status: u16, grpc: bool, s: &Series) {
        self.requests += s.count;
        if grpc {
            if crate::rpc_names::grpc_failed(status, false) {
                self.rpc_errors += s.count;
            }
            if crate::rpc_names::grpc_failed(status, true) {
                self.rpc_server_errors += s.count;
            }
        } else if (400..500).contains(&status) {
            self.status_4xx += s.count;
        } else if status >= 500 {
            self.status_5xx += s.count;
        }
        self.req_bytes += s.req_bytes;
        self.resp_bytes += s.resp_bytes;
        self.latency_sum_ns += s.latency_sum_ns;
        self.hist.add(&s.hist);
        if s.count > 0 {
            *self.by_status.entry(status) += s.count;
            *self.by_method.entry(method) += s.count;
        }
    }

    /// Merges another interval of the same length (e.g. the same endpoint seen from two
    /// cgroups).
    pub fn merge(&mut self, o: &Interval) {
        self.requests += o.requests;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.rpc_errors += o.rpc_errors;
        self.rpc_server_errors += o.rpc_server_errors;
        self.req_bytes += o.req_bytes;
        self.resp_bytes += o.resp_bytes;
        self.latency_sum_ns += o.latency_sum_ns;
        self.hist.add(&o.hist);
        for (k, v) in &o.by_status {
            *self.by_status.entry(*k) += v;
        }
        for (k, v) in &o.by_method {
            *self.by_method.entry(*k) += v;
        }
        for (k, v) in &o.by_rpc {
            self.by_rpc.entry(*k).merge(v);
        }
        self.set_secs(self.secs.max(o.secs));
    }

    /// Appends the next window of the same endpoint (the result spans both).
    pub fn append(&mut self, later: &Interval) {
        let secs = self.secs + later.secs;
        self.merge(later);
        self.set_secs(secs);
    }

    /// Sets the length of the interval and of its methods' intervals.
    pub fn set_secs(&mut self, secs: f64) {
        self.secs = secs;
        for m in self.by_rpc.values_mut() {
            m.secs = secs;
        }
    }

    /// Requests per second.
    pub fn rps(&self) -> f64 {
        per_sec(self.requests, self.secs)
    }

    /// Request bytes per second.
    pub fn req_bytes_per_sec(&self) -> f64 {
        per_sec(self.req_bytes, self.secs)
    }

    /// Response bytes per second.
    pub fn resp_bytes_per_sec(&self) -> f64 {
        per_sec(self.resp_bytes, self.secs)
    }

    /// Share of requests answered with 4xx or 5xx, or gRPC calls that failed (any known
    /// status but `OK`); 0 when idle.
    pub fn error_ratio(&self) -> f64 {
        ratio(
            self.status_4xx + self.status_5xx + self.rpc_errors,
            self.requests,
        )
    }

    /// Share of requests answered with 5xx, or gRPC calls with a server error status (0 when
    /// idle).
    pub fn server_error_ratio(&self) -> f64 {
        ratio(self.status_5xx + self.rpc_server_errors, self.requests)
    }

    /// Latency quantile (0..=1).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.hist.quantile(q).map(ns_to_duration)
    }

    /// Highest latency seen (bucket upper edge).
    pub fn max(&self) -> Option<Duration> {
        self.hist.max().map(ns_to_duration)
    }

    /// Mean latency.
    pub fn mean(&self) -> Option<Duration> {
        (self.requests > 0).then(|| Duration::from_nanos(self.latency_sum_ns / self.requests))
    }
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b > 0 { a as f64 / b as f64 } else { 0.0 }
}

fn ns_to_duration(ns: f64) -> Duration {
    Duration::from_nanos(ns.round() as u64)
}

/// A point of an endpoint's history (one interval). `f32` keeps 60 points of thousands of
/// endpoints small; sparklines need no more precision.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    /// Requests per second.
    pub rps: f32,
    /// Median latency, ns (0 when idle).
    pub p50_ns: f32,
    /// 99th percentile latency, ns (0 when idle).
    pub p99_ns: f32,
    /// Share of 4xx/5xx responses.
    pub error_ratio: f32,
}

/// What tells an endpoint's kernel series apart: (method, status, HTTP version, gRPC method
/// id). For gRPC endpoints the status is the grpc-status code and the id a
/// [`crate::rpc_names`] id; for HTTP ones the id is
/// [`RPC_NONE`](kite_common::maps::RPC_NONE).
pub type SeriesKey = (Method, u16, Version, u32);

/// Everything known about one endpoint.
#[derive(Clone, Debug)]
pub struct EndpointStats {
    /// Which endpoint.
    pub id: EndpointId,
    /// The last interval.
    pub last: Interval,
    /// Recent intervals, oldest first, at most the collector's history length.
    pub history: VecDeque<Point>,
    /// Cumulative counters per kernel series since the endpoint was first seen.
    pub totals: SmallMap<SeriesKey, Series>,
    /// When it last had a request.
    pub last_active: Instant,
}

impl EndpointStats {
    /// Cumulative counters over all methods and statuses.
    pub fn total(&self) -> Series {
        let mut s = Series::default();
        for v in self.totals.values() {
            s.add(v);
        }
        s
    }
}

/// Turns successive kernel readings into windowed statistics.
pub struct Collector {
    prev_at: Instant,
    endpoints: BTreeMap<EndpointId, EndpointStats>,
    history_len: usize,
}

/// Default number of intervals kept per endpoint.
pub const DEFAULT_HISTORY: usize = 60;

impl Collector {
    /// A collector whose first interval starts at `start` (when the programs were attached).
    pub fn new(start: Instant, history_len: usize) -> Self {
        Self {
            prev_at: start,
            endpoints: BTreeMap::new(),
            history_len: history_len.max(1),
        }
    }

    /// Folds a new reading taken at `now` into the statistics. Endpoints missing from the
    /// reading (removed from the map) stay until [`Collector::retain`] drops them.
    pub fn update(&mut self, now: Instant, reading: Vec<(EndpointKey, RawStats)>) {
        let secs = now.saturating_duration_since(self.prev_at).as_secs_f64();
        self.prev_at = now;
        let mut intervals: BTreeMap<EndpointId, Interval> = BTreeMap::new();
        for (key, raw) in reading {
            let id = EndpointId::of(&key);
            let method = Method::from_u8(key.method);
            let history_len = self.history_len;
            let ep = self.endpoints.entry(id).or_insert_with(|| EndpointStats {
                id,
                last: Interval::default(),
                history: VecDeque::with_capacity(history_len),
                totals: SmallMap::default(),
                last_active: now,
            });
            let version = Version::from_u8(key.version);
            let total = ep.totals.entry((method, key.status, version, key.rpc));
            let delta = Series::delta(&raw, total);
            total.add(&delta);
            if delta.count > 0 {
                ep.last_active = now;
            }
            // gRPC methods, and HTTP/1 routes (`RPC_NONE` when routes are off).
            let grpc = id.protocol.is_grpc();
            let rpc = (grpc || key.rpc != kite_common::maps::RPC_NONE).then_some(key.rpc);
            intervals
                .entry(id)
                .or_default()
                .add(method, key.status, grpc, rpc, &delta);
        }
        for (id, ep) in self.endpoints.iter_mut() {
            let mut iv = intervals.remove(id).unwrap_or_default();
            iv.set_secs(secs);
            let point = Point {
                rps: iv.rps() as f32,
                p50_ns: iv.hist.quantile(0.5).unwrap_or(0.0) as f32,
                p99_ns: iv.hist.quantile(0.99).unwrap_or(0.0) as f32,
                error_ratio: iv.error_ratio() as f32,
            };
            if ep.history.len() == self.history_len {
                ep.history.pop_front();
            }
            ep.history.push_back(point);
            ep.last = iv;
        }
    }

    /// Keeps only the endpoints for which `keep` holds (e.g. drop those idle for long whose
    /// cgroup is gone).
    pub fn retain(&mut self, mut keep: impl FnMut(&EndpointStats) -> bool) {
        self.endpoints.retain(|_, e| keep(e));
    }

    /// All endpoints, ordered by id.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointStats> {
        self.endpoints.values()
    }

    /// One endpoint.
    pub fn endpoint(&self, id: &EndpointId) -> Option<&EndpointStats> {
        self.endpoints.get(id)
    }
}

#[cfg(test)]
mod tests {
    use kite_common::maps::{Direction, Protocol, RPC_NONE, TRANSPORT_TCP};

    use super::*;

    fn key(port: u16, method: Method, status: u16) -> EndpointKey {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        EndpointKey {
            cgroup_id: 9,
            addr,
            port,
            status,
            direction: Direction::Inbound as u8,
            method: method as u8,
            version: Version::Http11 as u8,
            protocol: Protocol::Http as u8,
            rpc: RPC_NONE,
            transport: TRANSPORT_TCP,
            _pad: [0; 3],
        }
    }

    fn raw(samples: &[u64], bytes: (u64, u64)) -> RawStats {
        let mut h = Histogram::default();
        samples.iter().for_each(|s| h.record(*s));
        RawStats {
            count: samples.len() as u64,
            latency_sum_ns: samples.iter().sum(),
            req_bytes: bytes.0,
            resp_bytes: bytes.1,
            buckets: h.nonzero().map(|(i, c)| (i as u16, c as u32)).collect(),
        }
    }

    /// Exact quantile of a sorted sample (nearest rank), for comparison.
    fn exact(sorted: &[u64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64
    }

    #[test]
    fn quantiles_within_five_percent_of_exact() {
        // A deterministic spread over 5 decades (xorshift).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut v: Vec<u64> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let e = (x % 5_000) as f64 / 1_000.0; // 0..5
                (1_000.0 * 10f64.powf(e)) as u64 // 1 µs .. 100 ms
            })
            .collect();
        let mut h = Histogram::default();
        v.iter().for_each(|s| h.record(*s));
        v.sort_unstable();
        for q in [0.01, 0.1, 0.5, 0.9, 0.99, 0.999] {
            let (est, ex) = (h.quantile(q).unwrap(), exact(&v, q));
            assert!((est - ex).abs() / ex < 0.05, "q={q} est={est} exact={ex}");
        }
        let max = h.max().unwrap();
        let real = *v.last().unwrap() as f64;
        assert!(max >= real && (max - real) / real < 0.07);
        assert_eq!(h.count(), 20_000);
    }

    #[test]
    fn quantiles_of_a_single_value_and_empty() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.max(), None);
        h.record(50_000_000);
        for q in [0.0, 0.5, 1.0] {
            let est = h.quantile(q).unwrap();
            assert!((est - 50e6).abs() / 50e6 < 0.0625, "{est}");
        }
        h.record(u64::MAX);
        assert_eq!(h.max(), Some(bucket_lower_ns(OVERFLOW_BUCKET) as f64));
    }

    #[test]
    fn count_at_most_classic_edges_is_exact() {
        let mut h = Histogram::default();
        // 50 µs and 0.5 ms are classic edges: `le` includes them.
        for ns in [500, 5_000, 50_000, 50_001, 500_000] {
            h.record(ns);
        }
        assert_eq!(h.count_at_most(953), 1);
        assert_eq!(h.count_at_most(50_000), 3);
        assert_eq!(h.count_at_most(499_999), 4);
        assert_eq!(h.count_at_most(500_000), 5);
        assert_eq!(h.count_at_most(u64::MAX), 5);
    }

    #[test]
    fn native_view_merges_what_a_classic_edge_split() {
        let mut h = Histogram::default();
        // Both sides of the 5 ms classic edge, inside schema-4 bucket -122 (4.89..5.11 ms].
        for ns in [4_999_000, 5_000_000, 5_000_500, 300] {
            h.record(ns);
        }
        assert_eq!(h.nonzero().count(), 3);
        let native: Vec<_> = h.native().collect();
        assert_eq!(native, vec![(Native::Zero, 1), (Native::Bucket(-122), 3)]);
        let b = Native::Bucket(-122);
        assert!(b.lower_seconds() < 0.004_999 && 0.005_000_5 <= b.upper_seconds());
    }

    #[test]
    fn windows_take_deltas_and_fold_methods_and_statuses() {
        let t0 = Instant::now();
        let mut c = Collector::new(t0, 3);
        let ok = key(80, Method::Get, 200);
        let nf = key(80, Method::Get, 404);
        let err = key(80, Method::Post, 503);
        c.update(
            t0 + Duration::from_secs(1),
            vec![
                (ok, raw(&[1_000_000; 8], (800, 8000))),
                (nf, raw(&[2_000_000], (100, 50))),
                (err, raw(&[3_000_000], (200, 10))),
            ],
        );
        let ep = c.endpoints().next().unwrap();
        assert_eq!(ep.id.address(), "127.0.0.1:80");
        assert_eq!(ep.last.requests, 10);
        assert!((ep.last.rps() - 10.0).abs() < 1e-9);
        assert!((ep.last.error_ratio() - 0.2).abs() < 1e-9);
        assert!((ep.last.server_error_ratio() - 0.1).abs() < 1e-9);
        assert_eq!(ep.last.req_bytes, 1100);
        assert_eq!(ep.last.by_status.get(&404), Some(&1));
        assert_eq!(ep.last.by_method.get(&Method::Post), Some(&1));
        let p50 = ep.last.quantile(0.5).unwrap().as_secs_f64();
        assert!((p50 - 0.001).abs() / 0.001 < 0.0625);

        // Second reading: 4 more OK requests in half a second.
        let mut more = vec![1_000_000; 8];
        more.extend([4_000_000; 4]);
        c.update(
            t0 + Duration::from_millis(1500),
            vec![
                (ok, raw(&more, (1200, 12000))),
                (nf, raw(&[2_000_000], (100, 50))),
                (err, raw(&[3_000_000], (200, 10))),
            ],
        );
        let ep = c.endpoints().next().unwrap();
        assert_eq!(ep.last.requests, 4);
        assert!((ep.last.rps() - 8.0).abs() < 1e-9);
        assert_eq!(ep.last.error_ratio(), 0.0);
        assert_eq!(ep.last.req_bytes, 400);
        let p50 = ep.last.quantile(0.5).unwrap().as_secs_f64();
        assert!((p50 - 0.004).abs() / 0.004 < 0.0625, "{p50}");
        assert_eq!(ep.total().count, 14);
        assert_eq!(
            ep.totals[&(Method::Get, 200, Version::Http11, RPC_NONE)].count,
            12
        );
        assert_eq!(ep.history.len(), 2);

        // Idle intervals still produce history points; the ring is bounded.
        for s in 2..6 {
            c.update(
                t0 + Duration::from_secs(s),
                vec![
                    (ok, raw(&more, (1200, 12000))),
                    (nf, raw(&[2_000_000], (100, 50))),
                    (err, raw(&[3_000_000], (200, 10))),
                ],
            );
        }
        let ep = c.endpoints().next().unwrap();
        assert_eq!(ep.history.len(), 3);
        assert!(ep.history.iter().all(|p| p.rps == 0.0));
        assert_eq!(ep.last.requests, 0);
        assert_eq!(ep.last.quantile(0.5), None);
    }

    /// A gRPC call key: `status` is the grpc-status, `rpc` the method id.
    fn grpc_key(port: u16, rpc: u32, status: u16) -> EndpointKey {
        EndpointKey {
            protocol: Protocol::Grpc as u8,
            version: Version::Http2 as u8,
            rpc,
            ..key(port, Method::Post, status)
        }
    }

    #[test]
    fn protocols_and_tls_are_rows_of_their_own_and_grpc_methods_rows_under_them() {
        use kite_common::maps::{GRPC_STATUS_UNKNOWN, TRANSPORT_TLS};
        let t0 = Instant::now();
        let mut c = Collector::new(t0, 3);
        let (a, b) = (0x1234_5678, 0x9abc_def0);
        let h2 = EndpointKey {
            version: Version::Http2 as u8,
            ..key(50051, Method::Get, 404)
        };
        let tls = EndpointKey {
            transport: TRANSPORT_TLS,
            ..key(50051, Method::Get, 200)
        };
        c.update(
            t0 + Duration::from_secs(2),
            vec![
                (key(50051, Method::Get, 200), raw(&[1_000_000; 2], (0, 0))),
                (h2, raw(&[1_000_000], (0, 0))),
                (tls, raw(&[1_000_000], (0, 0))),
                (grpc_key(50051, a, 0), raw(&[2_000_000; 6], (60, 600))),
                (grpc_key(50051, a, 5), raw(&[2_000_000; 2], (20, 200))),
                (grpc_key(50051, b, 14), raw(&[8_000_000; 2], (20, 200))),
                (
                    grpc_key(50051, b, GRPC_STATUS_UNKNOWN),
                    raw(&[8_000_000; 2], (20, 200)),
                ),
            ],
        );
        let rows: Vec<String> = c.endpoints().map(|e| e.id.protocol_label()).collect();
        assert_eq!(rows, ["HTTP/1.1", "HTTP/1.1+TLS", "HTTP/2", "gRPC"]);
        let grpc = c.endpoints().find(|e| e.id.protocol.is_grpc()).unwrap();
        let iv = &grpc.last;
        assert_eq!(iv.requests, 12);
        // grpc-status is not an HTTP status: no 4xx/5xx. NOT_FOUND and UNAVAILABLE fail the
        // caller (4 of 12); only UNAVAILABLE is the server's; the unknown status is neither.
        assert_eq!((iv.status_4xx, iv.status_5xx), (0, 0));
        assert_eq!((iv.rpc_errors, iv.rpc_server_errors), (4, 2));
        assert!((iv.error_ratio() - 4.0 / 12.0).abs() < 1e-9);
        assert!((iv.server_error_ratio() - 2.0 / 12.0).abs() < 1e-9);
        assert_eq!(iv.by_status.get(&GRPC_STATUS_UNKNOWN), Some(&2));
        // Per method: its own counts, statuses, percentiles and rate over the window.
        let ma = &iv.by_rpc[&a];
        assert_eq!((ma.requests, ma.rpc_errors), (8, 2));
        assert!((ma.rps() - 4.0).abs() < 1e-9);
        let p50 = ma.quantile(0.5).unwrap().as_secs_f64();
        assert!((p50 - 0.002).abs() / 0.002 < 0.0625, "{p50}");
        let mb = &iv.by_rpc[&b];
        assert_eq!((mb.requests, mb.rpc_server_errors), (4, 2));
        assert!(mb.quantile(0.5).unwrap() > ma.quantile(0.99).unwrap());
        assert!(ma.by_rpc.is_empty());
        // HTTP/2 rows keep HTTP statuses.
        let h2row = c
            .endpoints()
            .find(|e| e.id.protocol == AppProtocol::Http2)
            .unwrap();
        assert_eq!(h2row.last.status_4xx, 1);
        assert!(h2row.last.by_rpc.is_empty());
        // A slower Watch appends windows: methods keep their sum and the whole length.
        let mut acc = Interval::default();
        acc.append(iv);
        acc.append(iv);
        assert_eq!(acc.by_rpc[&a].requests, 16);
        assert!((acc.by_rpc[&a].secs - 4.0).abs() < 1e-9);
        assert!((acc.by_rpc[&a].rps() - 4.0).abs() < 1e-9);
    }

    #[test]
    fn wrapped_kernel_buckets_give_right_deltas() {
        let t0 = Instant::now();
        let mut c = Collector::new(t0, 10);
        let k = key(1, Method::Get, 200);
        let mut before = raw(&[1_000; 3], (0, 0));
        let b = bucket_index(1_000) as u16;
        before.buckets = vec![(b, u32::MAX - 1)];
        let mut after = before.clone();
        after.buckets = vec![(b, 2)]; // wrapped: +4
        after.count += 4;
        c.update(t0 + Duration::from_secs(1), vec![(k, before)]);
        c.update(t0 + Duration::from_secs(2), vec![(k, after)]);
        let ep = c.endpoints().next().unwrap();
        assert_eq!(ep.last.hist.count(), 4);
        assert_eq!(ep.last.requests, 4);
    }

    #[test]
    fn sparse_merge_adds_and_subtracts_by_bucket() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for ns in [500, 5_000, 5_000, 50_000_000] {
            a.record(ns);
        }
        for ns in [5_000, 900_000, 100_000_000_000] {
            b.record(ns);
        }
        let mut sum = a.clone();
        sum.add(&b);
        assert_eq!(sum.count(), 7);
        let idx: Vec<usize> = sum.nonzero().map(|(i, _)| i).collect();
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "{idx:?}");
        assert_eq!(
            sum.nonzero().find(|(i, _)| *i == bucket_index(5_000)),
            Some((bucket_index(5_000), 3))
        );
        // A bucket that is only in the previous reading wrapped to exactly zero.
        let prev = RawStats {
            count: 1,
            latency_sum_ns: 0,
            req_bytes: 0,
            resp_bytes: 0,
            buckets: vec![(3, u32::MAX), (7, 5)],
        };
        let cur = RawStats {
            count: 3,
            buckets: vec![(7, 6), (9, 1)],
            ..prev.clone()
        };
        let mut total = Series::default();
        total.add(&Series::delta(&prev, &Series::default()));
        let d = Series::delta(&cur, &total);
        assert_eq!(
            d.hist.nonzero().collect::<Vec<_>>(),
            vec![(3, 1), (7, 1), (9, 1)]
        );
        assert_eq!(d.count, 2);
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let mut k = key(443, Method::Get, 200);
        assert_eq!(EndpointId::of(&k).address(), "127.0.0.1:443");
        k.addr = "::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(EndpointId::of(&k).address(), "[::1]:443");
    }

    #[test]
    fn overflow_endpoint_is_shown_as_other() {
        let mut k = key(0, Method::Get, 200);
        assert!(!k.is_overflow(), "127.0.0.1 port 0 is no overflow key");
        k.addr = [0; 16];
        assert!(k.is_overflow());
        let id = EndpointId::of(&k);
        assert!(id.is_overflow());
        assert_eq!(id.address(), "_OTHER");
        assert_eq!(id.host(), "_OTHER");
        k.port = 80;
        assert_eq!(EndpointId::of(&k).address(), "[::]:80");
    }

    #[test]
    fn default_budget_is_an_eighth_of_a_large_map() {
        use crate::ebpf::Options;
        assert_eq!(Options::default().budget(), 2048);
        assert_eq!(Options::default_budget(2), crate::ebpf::NO_BUDGET);
        assert_eq!(Options::default_budget(1024), crate::ebpf::NO_BUDGET);
        assert_eq!(Options::default_budget(2048), 256);
        let o = Options {
            endpoint_budget: 10,
            ..Options::default()
        };
        assert_eq!(o.budget(), 10);
    }
}
