//! One endpoint as the dashboard shows it ([`Entry`]), how it is told apart across snapshots
//! ([`EntryKey`]), matched by the filter and sorted ([`SortKey`]).

use std::cmp::Ordering;

use kite_proto::v1;

/// Identifies an endpoint across snapshots: which agent, which cgroup, which direction, which
/// address, which protocol (a port answering HTTP/1.1 and HTTP/2 is two endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    /// Index of the agent.
    pub agent: usize,
    /// cgroup id.
    pub cgroup_id: u64,
    /// `v1::Direction` as a number.
    pub direction: i32,
    /// Server IP.
    pub ip: String,
    /// Server port.
    pub port: u32,
    /// `v1::Protocol` as a number.
    pub protocol: i32,
    /// Measured from TLS plaintext.
    pub tls: bool,
}

/// One endpoint, ready to show.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Who it is.
    pub key: EntryKey,
    /// `namespace/pod`, or the cgroup path when the cgroup is not a known pod.
    pub name: String,
    /// `ip:port`.
    pub addr: String,
    /// The node that measured it.
    pub node: String,
    /// Inbound or outbound.
    pub direction: v1::Direction,
    /// `HTTP/1.1`, `HTTP/2`, `gRPC`, with `+TLS` when measured from TLS plaintext.
    pub protocol: String,
    /// The owning workload's name (the pod's when it has no owner), empty when not known.
    pub workload: String,
    /// Everything the agent said about it.
    pub ep: v1::Endpoint,
}

impl Entry {
    /// An endpoint of a snapshot of agent `agent` (whose node is `node`).
    pub fn new(agent: usize, node: &str, ep: v1::Endpoint) -> Self {
        let id = ep.id.as_ref();
        let direction = id
            .and_then(|id| v1::Direction::try_from(id.direction).ok())
            .unwrap_or(v1::Direction::Unspecified);
        let cgroup_path = id.map_or("", |id| id.cgroup_path.as_str());
        let name = match ep.workload.as_ref() {
            Some(w) if !w.pod.is_empty() => format!("{}/{}", w.namespace, w.pod),
            _ if !cgroup_path.is_empty() => cgroup_path.to_string(),
            _ => format!("cgroup {}", id.map_or(0, |id| id.cgroup_id)),
        };
        let workload = match ep.workload.as_ref() {
            Some(w) if !w.workload_name.is_empty() => w.workload_name.clone(),
            Some(w) => w.pod.clone(),
            None => String::new(),
        };
        let node = match id {
            Some(id) if !id.node.is_empty() => id.node.clone(),
            _ => node.to_string(),
        };
        Self {
            key: EntryKey {
                agent,
                cgroup_id: id.map_or(0, |id| id.cgroup_id),
                direction: direction as i32,
                ip: id.map(|id| id.ip.clone()).unwrap_or_default(),
                port: id.map_or(0, |id| id.port),
                protocol: id.map_or(0, |id| id.protocol),
                tls: id.is_some_and(|id| id.tls),
            },
            addr: id.map(|id| id.address()).unwrap_or_default(),
            protocol: id.map(|id| id.protocol_label()).unwrap_or_default(),
            name,
            node,
            workload,
            direction,
            ep,
        }
    }

    pub(super) fn window(&self) -> Option<&v1::Window> {
        self.ep.last.as_ref()
    }

    /// Whether it is a gRPC endpoint (its statuses are grpc-status codes).
    pub fn is_grpc(&self) -> bool {
        self.ep.id.as_ref().is_some_and(|id| id.is_grpc())
    }

    /// Its calls by what was called: a gRPC endpoint's methods, an HTTP/1 endpoint's routes
    /// (the agent sends one list or the other, in the same message).
    pub fn calls(&self) -> &[v1::RpcMethod] {
        if self.ep.rpcs.is_empty() {
            &self.ep.routes
        } else {
            &self.ep.rpcs
        }
    }

    /// Requests per second in the last window.
    pub fn rps(&self) -> f64 {
        self.window().map_or(0.0, |w| w.rps)
    }

    /// p50 of the last window, seconds.
    pub fn p50(&self) -> Option<f64> {
        self.window().and_then(|w| w.p50_seconds)
    }

    /// p90 of the last window, seconds.
    pub fn p90(&self) -> Option<f64> {
        self.window().and_then(|w| w.p90_seconds)
    }

    /// p99 of the last window, seconds.
    pub fn p99(&self) -> Option<f64> {
        self.window().and_then(|w| w.p99_seconds)
    }

    /// The figures of the last window.
    pub fn stats(&self) -> Stats {
        self.window().map(Stats::of).unwrap_or_default()
    }

    /// Kubernetes namespace, empty when not known.
    pub fn namespace(&self) -> &str {
        self.ep
            .workload
            .as_ref()
            .map_or("", |w| w.namespace.as_str())
    }

    /// Owning workload's name (the pod's when it has no owner), empty when not known.
    pub fn workload(&self) -> &str {
        &self.workload
    }

    /// Request and response bytes per second in the last window.
    pub fn bytes_per_second(&self) -> f64 {
        self.window().map_or(0.0, |w| {
            w.request_bytes_per_second + w.response_bytes_per_second
        })
    }

    /// Whether the filter text (lower case) is in its name, address, direction, protocol,
    /// node, cgroup path, workload, container or one of its gRPC methods or routes, ignoring
    /// ASCII case.
    pub fn matches(&self, needle_lower: &str) -> bool {
        if needle_lower.is_empty() {
            return true;
        }
        self.matches_itself(needle_lower)
            || self
                .calls()
                .iter()
                .any(|m| contains_ignore_ascii_case(&m.name, needle_lower))
    }

    /// [`Entry::matches`] without its methods and routes.
    pub(super) fn matches_itself(&self, needle_lower: &str) -> bool {
        let has = |hay: &str| contains_ignore_ascii_case(hay, needle_lower);
        let w = self.ep.workload.as_ref();
        has(&self.name)
            || has(&self.addr)
            || has(self.direction.short())
            || has(&self.protocol)
            || has(&self.node)
            || self.ep.id.as_ref().is_some_and(|id| has(&id.cgroup_path))
            || w.is_some_and(|w| has(&w.workload_name) || has(&w.container))
    }
}

/// Whether `needle` (lower case) occurs in `hay`, ignoring ASCII case, without allocating.
pub(super) fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty()
        || n.len() <= h.len()
            && h.windows(n.len())
                .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// The figures of a row: an endpoint's, a method's, or a group's last window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Requests per second.
    pub rps: f64,
    /// Requests in the window.
    pub requests: u64,
    /// Latency percentiles, seconds (`None`: no request).
    pub p50: Option<f64>,
    /// p90.
    pub p90: Option<f64>,
    /// p99.
    pub p99: Option<f64>,
    /// Server errors: 5xx, or gRPC statuses OpenTelemetry's server conventions call errors.
    pub errors: u64,
    /// The caller's errors: 4xx, or the other gRPC statuses but OK.
    pub client_errors: u64,
    /// Request and response bytes per second.
    pub bytes_per_second: f64,
}

impl Stats {
    /// The figures of a window.
    pub fn of(w: &v1::Window) -> Self {
        Self {
            rps: w.rps,
            requests: w.requests,
            p50: w.p50_seconds,
            p90: w.p90_seconds,
            p99: w.p99_seconds,
            errors: w.status_5xx + w.rpc_server_errors,
            client_errors: w.status_4xx + w.rpc_errors.saturating_sub(w.rpc_server_errors),
            bytes_per_second: w.request_bytes_per_second + w.response_bytes_per_second,
        }
    }

    /// ERR%: server errors / requests (0 when idle).
    pub fn error_ratio(&self) -> f64 {
        ratio(self.errors, self.requests)
    }

    /// 4XX%: the caller's errors / requests (0 when idle).
    pub fn client_error_ratio(&self) -> f64 {
        ratio(self.client_errors, self.requests)
    }
}

fn ratio(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

/// A column of the table, which is also what rows can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// The node that measured it (several agents).
    Node,
    /// Name (`namespace/pod` or cgroup), then address, alphabetically.
    Name,
    /// Kubernetes namespace (when known).
    Namespace,
    /// Owning workload (when known).
    Workload,
    /// Server address and port.
    Endpoint,
    /// Outbound: the workload the server address belongs to, when an agent measures it.
    Server,
    /// Inbound first.
    Dir,
    /// Protocol.
    Proto,
    /// The route (HTTP/1) or gRPC method of a row of the routes view.
    Route,
    /// Requests per second, busiest first.
    Rps,
    /// p50 latency, slowest first.
    P50,
    /// p90 latency, slowest first.
    P90,
    /// p99 latency, slowest first.
    P99,
    /// ERR%: server errors (5xx; gRPC server-error statuses), worst first.
    Errors,
    /// 4XX%: the caller's errors (4xx; other gRPC statuses but OK), worst first.
    ClientErrors,
    /// Bytes per second, largest first.
    Bytes,
}

impl SortKey {
    /// The next column of `shown` after `self` (the first if `self` is not shown).
    pub fn next_in(self, shown: &[SortKey]) -> Self {
        match shown.iter().position(|k| *k == self) {
            Some(i) => shown[(i + 1) % shown.len()],
            None => shown.first().copied().unwrap_or(self),
        }
    }

    /// The column before `self` in `shown`.
    pub fn prev_in(self, shown: &[SortKey]) -> Self {
        match shown.iter().position(|k| *k == self) {
            Some(i) => shown[(i + shown.len() - 1) % shown.len()],
            None => shown.first().copied().unwrap_or(self),
        }
    }

    /// As shown in the header.
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Node => "NODE",
            SortKey::Name => "NAME",
            SortKey::Namespace => "NAMESPACE",
            SortKey::Workload => "WORKLOAD",
            SortKey::Endpoint => "ENDPOINT",
            SortKey::Server => "SERVER",
            SortKey::Dir => "DIR",
            SortKey::Proto => "PROTO",
            SortKey::Route => "ROUTE",
            SortKey::Rps => "RPS",
            SortKey::P50 => "P50",
            SortKey::P90 => "P90",
            SortKey::P99 => "P99",
            SortKey::Errors => "ERR%",
            SortKey::ClientErrors => "4XX%",
            SortKey::Bytes => "B/S",
        }
    }

    /// Whether the natural order is A to Z (text columns) rather than largest first.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            SortKey::Node
                | SortKey::Name
                | SortKey::Namespace
                | SortKey::Workload
                | SortKey::Endpoint
                | SortKey::Server
                | SortKey::Dir
                | SortKey::Proto
                | SortKey::Route
        )
    }

    /// The order of two endpoints by this column (names break ties elsewhere).
    pub(super) fn compare(self, a: &Entry, b: &Entry) -> Ordering {
        match self {
            SortKey::Node => a.node.cmp(&b.node),
            SortKey::Name => Ordering::Equal,
            SortKey::Namespace => a.namespace().cmp(b.namespace()),
            SortKey::Workload => a.workload().cmp(b.workload()),
            SortKey::Endpoint => (&a.key.ip, a.key.port).cmp(&(&b.key.ip, b.key.port)),
            // Needs the agents' pod IPs: sorted by the app (`App::server_workload`).
            SortKey::Server => Ordering::Equal,
            SortKey::Dir => a.key.direction.cmp(&b.key.direction),
            SortKey::Proto => a.protocol.cmp(&b.protocol),
            // Rows of the routes view are sorted by the app (`App::rebuild`).
            SortKey::Route => Ordering::Equal,
            _ => self.compare_stats(&a.stats(), &b.stats()),
        }
    }

    /// The order of two windows (endpoints', or two methods' of one endpoint).
    pub(super) fn compare_windows(
        self,
        a: Option<&v1::Window>,
        b: Option<&v1::Window>,
    ) -> Ordering {
        let s = |w: Option<&v1::Window>| w.map(Stats::of).unwrap_or_default();
        self.compare_stats(&s(a), &s(b))
    }

    /// The order of two rows' figures by this column (`Equal` for text columns).
    pub fn compare_stats(self, a: &Stats, b: &Stats) -> Ordering {
        // Numbers: largest first.
        // A total order even with NaN from the wire (NaN sorts last): std's sorts may panic
        // on comparators that are not.
        let key = |x: f64| if x.is_nan() { f64::NEG_INFINITY } else { x };
        let num = |x: f64, y: f64| key(y).total_cmp(&key(x));
        let lat = |x: Option<f64>| x.unwrap_or(-1.0);
        match self {
            SortKey::Rps => num(a.rps, b.rps),
            SortKey::P50 => num(lat(a.p50), lat(b.p50)),
            SortKey::P90 => num(lat(a.p90), lat(b.p90)),
            SortKey::P99 => num(lat(a.p99), lat(b.p99)),
            SortKey::Errors => num(a.error_ratio(), b.error_ratio()),
            SortKey::ClientErrors => num(a.client_error_ratio(), b.client_error_ratio()),
            SortKey::Bytes => num(a.bytes_per_second, b.bytes_per_second),
            _ => Ordering::Equal,
        }
    }
}
