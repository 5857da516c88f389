//! The `kite.v1.Kite` gRPC service: snapshots of the shared state as protobuf.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::Stream;

use kite_common::maps::{Direction, Stat};
use kite_proto::v1::{
    self, AgentInfo, Detail, Filter, InfoRequest, ListRequest, Snapshot, WatchRequest,
    kite_server::Kite,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::state::{Guards, Shared, State, Workload};
use crate::{
    rpc_names::{grpc_failed, grpc_status_name},
    stats::{AppProtocol, EndpointId, EndpointStats, Interval, SeriesKey},
};

/// The service.
pub struct KiteService {
    shared: Shared,
    notify: watch::Receiver<u64>,
    shutdown: CancellationToken,
    limits: WatchLimits,
    watch_slots: Arc<Semaphore>,
    list_slots: Semaphore,
}

/// Bounds of the Watch streams.
#[derive(Clone, Copy, Debug)]
pub struct WatchLimits {
    /// Most streams open at once; more are refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// Longest interval between snapshots: a connection the agent writes nothing to for the
    /// idle deadline is closed, so a stream writes at least twice within it.
    pub max_interval: Duration,
}

/// `List` snapshots built at once.
const LIST_CONCURRENCY: usize = 4;

impl KiteService {
    /// A service over the shared state; `notify` changes after every poll. Watch streams
    /// are bounded by `limits` and end at `shutdown`.
    pub fn new(
        shared: Shared,
        notify: watch::Receiver<u64>,
        limits: WatchLimits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shared,
            notify,
            shutdown,
            limits,
            watch_slots: Arc::new(Semaphore::new(limits.max_streams)),
            list_slots: Semaphore::new(LIST_CONCURRENCY),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn direction(d: Direction) -> v1::Direction {
    match d {
        Direction::Inbound => v1::Direction::Inbound,
        Direction::Outbound => v1::Direction::Outbound,
    }
}

/// The protocol of an endpoint as protobuf.
pub fn protocol(p: AppProtocol) -> v1::Protocol {
    match p {
        AppProtocol::Http1 => v1::Protocol::Unspecified,
        AppProtocol::Http10 => v1::Protocol::Http10,
        AppProtocol::Http11 => v1::Protocol::Http11,
        AppProtocol::Http2 => v1::Protocol::Http2,
        AppProtocol::Grpc => v1::Protocol::Grpc,
    }
}

/// Per-status counts; gRPC codes with their names.
fn statuses(iv: &Interval, grpc: bool) -> Vec<v1::StatusCount> {
    iv.by_status
        .iter()
        .map(|(s, c)| v1::StatusCount {
            status: *s as u32,
            count: *c,
            name: if grpc {
                grpc_status_name(*s).unwrap_or_default()
            } else {
                String::new()
            },
        })
        .collect()
}

/// Cumulative counters of the kernel series that pass `keep`.
fn totals(ep: &EndpointStats, keep: impl Fn(&SeriesKey) -> bool) -> v1::Totals {
    let mut total = crate::stats::Series::default();
    let (mut s4, mut s5, mut rpc_errors, mut rpc_server_errors) = (0, 0, 0, 0);
    let grpc = ep.id.protocol.is_grpc();
    for (k, v) in ep.totals.iter().filter(|(k, _)| keep(k)) {
        total.add(v);
        let status = k.1;
        if grpc {
            rpc_errors += grpc_failed(status, false) as u64 * v.count;
            rpc_server_errors += grpc_failed(status, true) as u64 * v.count;
        } else if (400..500).contains(&status) {
            s4 += v.count;
        } else if status >= 500 {
            s5 += v.count;
        }
    }
    v1::Totals {
        requests: total.count,
        status_4xx: s4,
        status_5xx: s5,
        request_bytes: total.req_bytes,
        response_bytes: total.resp_bytes,
        latency_sum_seconds: total.latency_sum_ns as f64 / 1e9,
        p50_seconds: total.hist.quantile(0.50).map(|ns| ns / 1e9),
        p90_seconds: total.hist.quantile(0.90).map(|ns| ns / 1e9),
        p99_seconds: total.hist.quantile(0.99).map(|ns| ns / 1e9),
        rpc_errors,
        rpc_server_errors,
    }
}

/// The methods of a gRPC endpoint (`grpc`), or the routes of an HTTP/1 one: every id in its
/// totals, with the window's figures.
fn calls(st: &State, ep: &EndpointStats, iv: &Interval, grpc: bool) -> Vec<v1::RpcMethod> {
    if ep.id.protocol.is_grpc() != grpc {
        return Vec::new();
    }
    let mut ids: Vec<u32> = ep
        .totals
        .iter()
        .map(|(k, _)| k.3)
        .filter(|&id| grpc || id != kite_common::maps::RPC_NONE)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // Routes shown under one name (a user pattern — the pod's own first —, a collapsed
    // position) are one entry (the first id stands for them).
    let mut named: Vec<(String, Vec<u32>)> = Vec::new();
    for id in ids {
        let shown = if grpc {
            st.rpc_names.get(id)
        } else {
            st.route_name(ep, id).0
        };
        let name = shown.label().unwrap_or_default();
        match named.iter_mut().find(|(n, _)| !grpc && *n == name) {
            Some((_, group)) => group.push(id),
            None => named.push((name, vec![id])),
        }
    }
    named
        .into_iter()
        .map(|(name, group)| {
            let mut last = Interval::default();
            for id in &group {
                if let Some(iv) = iv.by_rpc.get(id) {
                    last.merge(iv);
                }
            }
            v1::RpcMethod {
                name,
                id: group[0],
                last: Some(v1::Window {
                    seconds: iv.secs,
                    ..window(&last)
                }),
                totals: Some(totals(ep, |k| group.contains(&k.3))),
                statuses: statuses(&last, grpc),
            }
        })
        .collect()
}

/// The window fields of an interval.
pub fn window(iv: &Interval) -> v1::Window {
    v1::Window {
        seconds: iv.secs,
        requests: iv.requests,
        rps: iv.rps(),
        p50_seconds: secs(iv.quantile(0.50)),
        p90_seconds: secs(iv.quantile(0.90)),
        p99_seconds: secs(iv.quantile(0.99)),
        max_seconds: secs(iv.max()),
        mean_seconds: secs(iv.mean()),
        status_4xx: iv.status_4xx,
        status_5xx: iv.status_5xx,
        error_ratio: iv.error_ratio(),
        server_error_ratio: iv.server_error_ratio(),
        request_bytes: iv.req_bytes,
        response_bytes: iv.resp_bytes,
        request_bytes_per_second: iv.req_bytes_per_sec(),
        response_bytes_per_second: iv.resp_bytes_per_sec(),
        rpc_errors: iv.rpc_errors,
        rpc_server_errors: iv.rpc_server_errors,
    }
}

/// Label of a workload whose names come from its own hello, not the Kubernetes API.
pub const UNVERIFIED_LABEL: &str = "kite.io/unverified";

/// A workload as protobuf; `container` from the cgroup path when there is one.
pub fn workload(w: &Workload, container: Option<String>) -> v1::Workload {
    v1::Workload {
        namespace: w.namespace.clone(),
        pod: w.pod.clone(),
        pod_uid: w.uid.clone(),
        workload_kind: w.kind.clone(),
        workload_name: w.name.clone(),
        container: container.unwrap_or_default(),
        labels: {
            let mut l: HashMap<String, String> = w.labels.clone().into_iter().collect();
            if !w.verified {
                l.insert(UNVERIFIED_LABEL.into(), "true".into());
            }
            l
        },
    }
}

/// The native-histogram (schema 4) buckets, the ones Prometheus and the percentiles use.
fn histogram(iv: &Interval) -> v1::Histogram {
    v1::Histogram {
        buckets: iv
            .hist
            .native()
            .map(|(b, count)| v1::Bucket {
                lower_seconds: b.lower_seconds(),
                upper_seconds: b.upper_seconds(),
                count,
            })
            .collect(),
    }
}

struct Described<'a> {
    ep: &'a EndpointStats,
    path: Option<String>,
    workload: Option<Workload>,
}

fn matches(f: &Filter, d: &Described<'_>, iv: &Interval) -> bool {
    let w = d.workload.as_ref();
    if !f.namespace.is_empty() && w.is_none_or(|w| w.namespace != f.namespace) {
        return false;
    }
    if !f.pod.is_empty() && w.is_none_or(|w| w.pod != f.pod) {
        return false;
    }
    let dir = v1::Direction::try_from(f.direction).unwrap_or(v1::Direction::Unspecified);
    if dir != v1::Direction::Unspecified && dir != direction(d.ep.id.direction) {
        return false;
    }
    if f.active_only && iv.requests == 0 {
        return false;
    }
    if !f.text.is_empty() {
        let needle = f.text.to_lowercase();
        let mut hay = vec![d.ep.id.address(), d.ep.id.protocol_label()];
        if let Some(p) = &d.path {
            hay.push(p.clone());
        }
        if let Some(w) = w {
            hay.extend([w.namespace.clone(), w.pod.clone(), w.name.clone()]);
        }
        if !hay.iter().any(|h| h.to_lowercase().contains(&needle)) {
            return false;
        }
    }
    true
}

fn endpoint(st: &State, d: &Described<'_>, iv: &Interval, detail: &Detail) -> v1::Endpoint {
    let ep = d.ep;
    let container = d
        .path
        .as_deref()
        .and_then(crate::pods::pod_of_path)
        .and_then(|p| p.container);
    let last_active = SystemTime::now()
        .checked_sub(ep.last_active.elapsed())
        .unwrap_or(UNIX_EPOCH);
    let n_hist = (detail.history as usize).min(ep.history.len());
    v1::Endpoint {
        id: Some(v1::EndpointId {
            node: st.node.clone(),
            cgroup_id: ep.id.cgroup_id,
            cgroup_path: d.path.clone().unwrap_or_default(),
            direction: direction(ep.id.direction) as i32,
            ip: ep.id.host(),
            port: ep.id.port as u32,
            protocol: protocol(ep.id.protocol) as i32,
            tls: ep.id.tls,
        }),
        workload: d.workload.as_ref().map(|w| workload(w, container)),
        last: Some(window(iv)),
        totals: Some(totals(ep, |_| true)),
        history: ep
            .history
            .iter()
            .skip(ep.history.len() - n_hist)
            .map(|p| v1::Point {
                rps: p.rps as f64,
                p50_seconds: p.p50_ns as f64 / 1e9,
                p99_seconds: p.p99_ns as f64 / 1e9,
                error_ratio: p.error_ratio as f64,
            })
            .collect(),
        histogram: detail.histogram.then(|| histogram(iv)),
        statuses: statuses(iv, ep.id.protocol.is_grpc()),
        methods: iv
            .by_method
            .iter()
            .map(|(m, c)| v1::MethodCount {
                method: m.as_str().to_string(),
                count: *c,
            })
            .collect(),
        last_active_unix_ms: unix_ms(last_active),
        rpcs: calls(st, ep, iv, true),
        routes: calls(st, ep, iv, false),
    }
}

/// A snapshot of the state: every endpoint that passes the filter. `windows` replaces the
/// endpoints' last intervals (for Watch streams slower than the agent's interval).
pub fn snapshot(
    st: &State,
    filter: &Filter,
    detail: &Detail,
    windows: Option<(&HashMap<EndpointId, Interval>, f64)>,
) -> Snapshot {
    let empty = Interval::default();
    let endpoints = st
        .collector
        .endpoints()
        .filter_map(|ep| {
            let (path, workload) = st.describe(ep);
            let d = Described { ep, path, workload };
            let iv = match windows {
                Some((w, _)) => w.get(&ep.id).unwrap_or(&empty),
                None => &ep.last,
            };
            matches(filter, &d, iv).then(|| endpoint(st, &d, iv, detail))
        })
        .collect();
    Snapshot {
        time_unix_ms: unix_ms(st.polled_at),
        window_seconds: windows.map_or(st.window.as_secs_f64(), |(_, s)| s),
        node: st.node.clone(),
        endpoints,
    }
}

/// What `Info` answers.
pub fn info(st: &State) -> AgentInfo {
    let mut counters: Vec<v1::Counter> = Stat::ALL
        .iter()
        .map(|s| v1::Counter {
            name: format!("ebpf_{}", s.name()),
            value: st.counters[*s as usize],
        })
        .collect();
    for (name, value) in st.agent.named() {
        counters.push(v1::Counter {
            name: name.into(),
            value,
        });
    }
    for (name, value) in st.rpc_names.counters.named() {
        counters.push(v1::Counter {
            name: format!("rpc_names_{name}"),
            value,
        });
    }
    counters.push(v1::Counter {
        name: "rpc_names".into(),
        value: st.rpc_names.len() as u64,
    });
    counters.push(v1::Counter {
        name: "waiting_cgroups".into(),
        value: st.waiting_cgroups.len() as u64,
    });
    counters.push(v1::Counter {
        name: "tls_unsupported_processes".into(),
        value: st.tls_unsupported.len() as u64,
    });
    AgentInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        node: st.node.clone(),
        kernel: kernel_release(),
        interval_seconds: st.interval.as_secs_f64(),
        started_unix_ms: unix_ms(st.started),
        attachments: st
            .attachments
            .values()
            .map(|a| v1::Attachment {
                cgroup_path: a.cgroup.path.clone(),
                cgroup_id: a.cgroup.id,
                source: a.source.as_str().into(),
                attached_unix_ms: unix_ms(a.since),
                workload: a.workload.as_ref().map(|w| workload(w, None)),
            })
            .collect(),
        counters,
        sockets: Some(v1::MapUsage {
            used: st.sockets_used,
            max: st.options.max_sockets as u64,
        }),
        endpoints: Some(v1::MapUsage {
            used: st.endpoints_used,
            max: st.options.max_endpoints as u64,
        }),
        bpf_run_time_ns: st.bpf.run_time.as_nanos() as u64,
        bpf_run_count: st.bpf.run_count,
        kubernetes: st.kubernetes,
    }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// One Watch stream's state. The stream is pulled: a snapshot is built only when the HTTP/2
/// layer has room for it, so a client that stops reading holds at most the one snapshot being
/// sent, and the next one it gets is the latest (the polls in between are counted as skipped).
struct WatchState {
    shared: Shared,
    notify: watch::Receiver<u64>,
    shutdown: CancellationToken,
    filter: Filter,
    detail: Detail,
    every: u64,
    first: bool,
    last_gen: u64,
    acc: HashMap<EndpointId, Interval>,
    acc_secs: f64,
    polls: u64,
    guards: Arc<Guards>,
    _slot: OwnedSemaphorePermit,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<Snapshot, Status>, Self)> {
        if self.first {
            self.first = false;
            let snap = {
                let st = self.shared.read();
                self.last_gen = st.generation;
                snapshot(&st, &self.filter, &self.detail, None)
            };
            self.notify.mark_unchanged();
            return Some((Ok(snap), self));
        }
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                changed = self.notify.changed() => if changed.is_err() { return None },
            }
            let generation = *self.notify.borrow_and_update();
            // Polls that happened while the client was not reading.
            let missed = generation.saturating_sub(self.last_gen + 1);
            self.last_gen = generation;
            let snap = {
                let st = self.shared.read();
                if self.every == 1 {
                    self.guards
                        .watch_skipped
                        .fetch_add(missed, Ordering::Relaxed);
                    Some(snapshot(&st, &self.filter, &self.detail, None))
                } else {
                    if missed > 0 {
                        self.guards
                            .watch_skipped
                            .fetch_add(missed.div_ceil(self.every), Ordering::Relaxed);
                    }
                    // The missed polls' windows are lost: the window covers what was seen
                    // (window_seconds says how long).
                    self.polls += 1 + missed;
                    for ep in st.collector.endpoints() {
                        self.acc.entry(ep.id).or_default().append(&ep.last);
                    }
                    self.acc_secs += st.window.as_secs_f64();
                    (self.polls >= self.every).then(|| {
                        snapshot(
                            &st,
                            &self.filter,
                            &self.detail,
                            Some((&self.acc, self.acc_secs)),
                        )
                    })
                }
            };
            if let Some(s) = snap {
                self.acc.clear();
                self.acc_secs = 0.0;
                self.polls = 0;
                return Some((Ok(s), self));
            }
        }
    }
}

impl Drop for WatchState {
    /// A client that stopped reading for good (its connection closed at the idle deadline)
    /// never pulls again: the snapshots it missed are counted here.
    fn drop(&mut self) {
        if self.first {
            return;
        }
        let missed = self.notify.borrow().saturating_sub(self.last_gen + 1);
        if missed > 0 {
            self.guards
                .watch_skipped
                .fetch_add(missed.div_ceil(self.every), Ordering::Relaxed);
        }
    }
}

#[tonic::async_trait]
impl Kite for KiteService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let guards = self.shared.read().guards.clone();
        let slot = self.watch_slots.clone().try_acquire_owned().map_err(|_| {
            Guards::inc(&guards.watch_refused);
            Status::resource_exhausted(format!(
                "{} Watch streams are open, the agent's limit (--max-watch-streams); \
                 retry later, or use List",
                self.limits.max_streams
            ))
        })?;
        Guards::inc(&guards.watch_started);
        let req = request.into_inner();
        let base = self.shared.read().interval;
        // Every how many polls a snapshot goes out (at least one snapshot per max_interval).
        let most = (self.limits.max_interval.as_millis() / base.as_millis().max(1)).max(1) as u64;
        let every = ((req.interval_ms as f64 / base.as_millis().max(1) as f64).round() as u64)
            .clamp(1, most);
        let state = WatchState {
            shared: self.shared.clone(),
            notify: self.notify.clone(),
            shutdown: self.shutdown.clone(),
            filter: req.filter.unwrap_or_default(),
            detail: req.detail.unwrap_or_default(),
            every,
            first: true,
            last_gen: 0,
            acc: HashMap::new(),
            acc_secs: 0.0,
            polls: 0,
            guards,
            _slot: slot,
        };
        let stream = futures_util::stream::unfold(state, WatchState::next);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<Snapshot>, Status> {
        // A few snapshots are built at once; more requests wait their turn.
        let _slot = self
            .list_slots
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let req = request.into_inner();
        let snap = snapshot(
            &self.shared.read(),
            &req.filter.unwrap_or_default(),
            &req.detail.unwrap_or_default(),
            None,
        );
        Ok(Response::new(snap))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<AgentInfo>, Status> {
        Ok(Response::new(info(&self.shared.read())))
    }
}

#[cfg(test)]
mod tests {
    use kite_common::{h2::hpack::path_id, maps::rpc_id};

    use super::*;
    use crate::daemon::metrics::tests::{LOOKUP, UNARY, state};

    #[test]
    fn list_says_protocol_tls_grpc_methods_and_status_names() {
        let shared = state();
        let snap = snapshot(&shared.read(), &Filter::default(), &Detail::default(), None);
        let by_port = |port: u32, dir: v1::Direction| {
            snap.endpoints
                .iter()
                .find(|e| {
                    e.id.as_ref()
                        .is_some_and(|id| id.port == port && id.direction == dir as i32)
                })
                .unwrap()
        };
        let http = by_port(8080, v1::Direction::Inbound).id.clone().unwrap();
        assert_eq!((http.protocol(), http.tls), (v1::Protocol::Http11, false));
        let h2 = by_port(8443, v1::Direction::Inbound).id.clone().unwrap();
        assert_eq!((h2.protocol(), h2.tls), (v1::Protocol::Http2, true));
        assert_eq!(h2.protocol_label(), "HTTP/2+TLS");

        let g = by_port(50051, v1::Direction::Inbound);
        assert!(g.id.as_ref().unwrap().is_grpc());
        let w = g.last.unwrap();
        // 8 calls: NOT_FOUND and UNAVAILABLE fail (2 + 1), only UNAVAILABLE is the server's.
        assert_eq!((w.requests, w.rpc_errors, w.rpc_server_errors), (8, 3, 2));
        assert_eq!((w.status_4xx, w.status_5xx), (0, 0));
        let names: Vec<(u32, &str, u64)> = g
            .statuses
            .iter()
            .map(|s| (s.status, s.name.as_str(), s.count))
            .collect();
        assert_eq!(
            names,
            [(0, "OK", 5), (5, "NOT_FOUND", 1), (14, "UNAVAILABLE", 2)]
        );
        let t = g.totals.unwrap();
        assert_eq!((t.requests, t.rpc_errors, t.status_5xx), (8, 3, 0));
        // Methods by id: the learnt name, the other by its id; each with its own figures.
        let unary = rpc_id(path_id(UNARY.as_bytes()));
        let lookup = rpc_id(path_id(LOOKUP.as_bytes()));
        let m = |id: u32| g.rpcs.iter().find(|m| m.id == id).unwrap();
        assert_eq!(g.rpcs.len(), 2);
        assert_eq!(m(unary).name, "kite.test.Echo/Unary");
        assert_eq!(m(lookup).name, format!("rpc#{lookup:08x}"));
        let mw = m(unary).last.unwrap();
        assert_eq!((mw.requests, mw.rpc_server_errors), (7, 2));
        assert!((mw.p50_seconds.unwrap() - 0.003).abs() / 0.003 < 0.0625);
        assert_eq!(m(unary).totals.unwrap().requests, 7);
        assert_eq!(m(lookup).statuses[0].name, "NOT_FOUND");
        // An unknown grpc-status is listed as 65535 with no name, and is no error.
        let out = by_port(50051, v1::Direction::Outbound);
        let unknown = out.statuses.iter().find(|s| s.status == 0xffff).unwrap();
        assert_eq!((unknown.count, unknown.name.as_str()), (6, ""));
        assert_eq!(out.last.unwrap().rpc_errors, 1);
        // HTTP endpoints have no methods.
        assert!(by_port(8080, v1::Direction::Inbound).rpcs.is_empty());
        // The text filter finds endpoints by protocol.
        let f = Filter {
            text: "grpc".into(),
            ..Filter::default()
        };
        let only = snapshot(&shared.read(), &f, &Detail::default(), None);
        assert_eq!(only.endpoints.len(), 2);
    }

    #[test]
    fn info_counts_what_the_name_registry_refused() {
        let shared = state();
        shared
            .write()
            .rpc_names
            .learn(rpc_id(path_id(LOOKUP.as_bytes())), b"/kite.test.Echo/Lo");
        let i = info(&shared.read());
        let c = |n: &str| i.counters.iter().find(|c| c.name == n).unwrap().value;
        assert_eq!(c("rpc_names_learnt"), 1);
        assert_eq!(c("rpc_names_mismatched"), 1);
        assert_eq!(c("rpc_names"), 1);
    }
}
