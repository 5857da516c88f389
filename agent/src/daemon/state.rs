//! What the agent knows, shared between the data-plane thread (the only writer) and the
//! readers (gRPC, Prometheus, enrollment). Readers hold the lock only to copy out what they
//! need; the writer takes it only for in-memory updates, after the map reads, so a reader never
//! waits on a syscall.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use kite_common::maps::STAT_COUNT;

use super::listen::ListenerCounters;
use crate::{
    cgroup::{Cgroup, is_within},
    ebpf::{Options, ProgramStats},
    pods::pod_of_path,
    route_pattern::RoutePattern,
    rpc_names::{Rpc, RpcNames},
    stats::{Collector, EndpointStats},
};

/// Kubernetes identity of a pod (or of one of its containers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub uid: String,
    /// Owning workload kind (Deployment, StatefulSet, DaemonSet, Job, …), when known.
    pub kind: String,
    /// Owning workload name, when known.
    pub name: String,
    /// Pod labels, when known.
    pub labels: BTreeMap<String, String>,
    /// Whether namespace and name come from the Kubernetes API (`false`: from the pod's own
    /// hello, accepted from an allowed peer without the API; marked in the labels).
    pub verified: bool,
}

/// Why a cgroup is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Given on the command line.
    Static,
    /// A pod said hello on the enrollment socket.
    Enrolled,
}

impl Source {
    /// `static` / `enrolled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Enrolled => "enrolled",
        }
    }
}

/// An attached cgroup.
#[derive(Clone, Debug)]
pub struct AttachmentInfo {
    /// The cgroup.
    pub cgroup: Cgroup,
    /// Why.
    pub source: Source,
    /// Since when.
    pub since: SystemTime,
    /// The pod, for enrolled cgroups.
    pub workload: Option<Workload>,
    /// The pod's own route patterns (its `kite.io/routes`, from the hello that enrolled it),
    /// applied to its cgroups' routes before `--route`'s.
    pub routes: Vec<RoutePattern>,
}

/// Counters of the agent itself (the eBPF programs' own are in [`State::counters`]).
#[derive(Clone, Debug, Default)]
pub struct AgentCounters {
    /// Pods attached through the socket.
    pub enrolled: u64,
    /// Hellos refused (peer not in a pod, uid mismatch, …).
    pub enroll_refused: u64,
    /// Hellos that could not be read (malformed, oversized, timeout).
    pub enroll_bad: u64,
    /// Pods enrolled without their route patterns (`kite.io/routes` malformed or beyond its
    /// bounds).
    pub enroll_routes_refused: u64,
    /// Cgroups detached because they disappeared.
    pub vanished: u64,
    /// Polls that failed to read the maps.
    pub poll_errors: u64,
    /// Series dropped after their cgroup's grace period.
    pub expired_endpoints: u64,
    /// Endpoints evicted for idleness while their (cgroup, direction) was at its budget.
    pub idle_endpoints: u64,
    /// `--cgroup`s found removed (detached, waited for).
    pub static_removed: u64,
    /// `--cgroup`s attached after the start: re-created with a new id, or appeared.
    pub static_attached_later: u64,
}

impl AgentCounters {
    /// Each counter with the name Prometheus (`event` label) and gRPC (`Info`) give it.
    pub fn named(&self) -> [(&'static str, u64); 10] {
        [
            ("enrolled", self.enrolled),
            ("enroll_refused", self.enroll_refused),
            ("enroll_bad", self.enroll_bad),
            ("enroll_routes_refused", self.enroll_routes_refused),
            ("vanished_cgroups", self.vanished),
            ("poll_errors", self.poll_errors),
            ("expired_endpoints", self.expired_endpoints),
            ("idle_endpoints", self.idle_endpoints),
            ("static_cgroup_removed", self.static_removed),
            ("static_cgroup_attached_later", self.static_attached_later),
        ]
    }
}

/// Counters of the bounds the agent keeps whatever its clients do (atomics: the listeners
/// update them without taking the state's lock). Exported as `kite_listener_events`,
/// `kite_watch_events` and `kite_scrape_events`.
#[derive(Debug, Default)]
pub struct Guards {
    /// The gRPC listener.
    pub grpc: ListenerCounters,
    /// The Prometheus listener.
    pub metrics: ListenerCounters,
    /// The enrollment socket.
    pub enroll: ListenerCounters,
    /// Watch streams opened.
    pub watch_started: AtomicU64,
    /// Watch streams refused with `RESOURCE_EXHAUSTED` (too many open).
    pub watch_refused: AtomicU64,
    /// Snapshots Watch streams skipped because their client did not read in time (latest wins).
    pub watch_skipped: AtomicU64,
    /// `/metrics` expositions encoded (at most one per interval and format).
    pub scrape_encoded: AtomicU64,
    /// Scrapes answered with bytes already encoded for another scraper.
    pub scrape_shared: AtomicU64,
    /// Scrapes answered with the previous poll's exposition because `--max-scrapes` were
    /// still being read.
    pub scrape_stale: AtomicU64,
    /// Scrapes cut because the scraper did not read the answer within the send deadline.
    pub scrape_send_timeout: AtomicU64,
}

impl Guards {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The agent's shared state.
pub struct State {
    /// Node name.
    pub node: String,
    /// When the agent started.
    pub started: SystemTime,
    /// Polling interval.
    pub interval: Duration,
    /// Windowed statistics.
    pub collector: Collector,
    /// Wall-clock time of the last poll.
    pub polled_at: SystemTime,
    /// Length of the last window.
    pub window: Duration,
    /// Number of polls so far.
    pub generation: u64,
    /// Attached cgroups by path.
    pub attachments: BTreeMap<String, AttachmentInfo>,
    /// Enrolled cgroups that vanished, by path, with when (their series expire after a grace
    /// period).
    pub gone: BTreeMap<String, SystemTime>,
    /// cgroup id → path, for the cgroups under attachments.
    pub paths: HashMap<u64, String>,
    /// Pods known from the Kubernetes API, by uid.
    pub pods: HashMap<String, Workload>,
    /// Whether Kubernetes metadata is being followed.
    pub kubernetes: bool,
    /// eBPF self-metric counters.
    pub counters: [u64; STAT_COUNT as usize],
    /// Tracked connections (read every few polls).
    pub sockets_used: u64,
    /// Endpoint histograms in the kernel map.
    pub endpoints_used: u64,
    /// Map sizes.
    pub options: Options,
    /// Most label sets the http_* Prometheus families export (`--max-series`).
    pub max_series: usize,
    /// Time spent in the eBPF programs.
    pub bpf: ProgramStats,
    /// The agent's own counters.
    pub agent: AgentCounters,
    /// Counters of the client-facing bounds.
    pub guards: Arc<Guards>,
    /// `--cgroup`s that do not exist (yet, or any more): waited for, not attached.
    pub waiting_cgroups: Vec<String>,
    /// gRPC method names the kernel told, by method id (bounded, see [`RpcNames`]).
    pub rpc_names: RpcNames,
    /// libssl files probed for TLS plaintext (`crate::tls`).
    pub tls_libraries: usize,
    /// Processes of the attached cgroups whose TLS Kite does not see (Go, static OpenSSL,
    /// rustls): `exe (pid N, kind)`.
    pub tls_unsupported: Vec<String>,
    /// The TLS programs' own counters (`TLS_STATS`), read every poll.
    pub tls_kernel: crate::tls::KernelCounters,
}

/// The shared state behind its lock.
#[derive(Clone)]
pub struct Shared(Arc<RwLock<State>>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Shared {
    /// Wraps a state.
    pub fn new(state: State) -> Self {
        Self(Arc::new(RwLock::new(state)))
    }

    /// Reads (a poisoned lock still reads: a panicking writer left consistent data behind or
    /// the process is going down anyway).
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes.
    pub fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// A fresh state.
    pub fn new(node: String, interval: Duration, history: usize, options: Options) -> Self {
        let now = SystemTime::now();
        Self {
            node,
            started: now,
            interval,
            collector: Collector::new(std::time::Instant::now(), history),
            polled_at: now,
            window: interval,
            generation: 0,
            attachments: BTreeMap::new(),
            gone: BTreeMap::new(),
            paths: HashMap::new(),
            pods: HashMap::new(),
            kubernetes: false,
            counters: [0; STAT_COUNT as usize],
            sockets_used: 0,
            endpoints_used: 0,
            options,
            max_series: super::metrics::DEFAULT_MAX_SERIES,
            bpf: ProgramStats::default(),
            agent: AgentCounters::default(),
            guards: Arc::default(),
            waiting_cgroups: Vec::new(),
            rpc_names: RpcNames::default(),
            tls_libraries: 0,
            tls_unsupported: Vec::new(),
            tls_kernel: Default::default(),
        }
    }

    /// The path of a cgroup id, if known.
    pub fn path_of(&self, cgroup_id: u64) -> Option<&str> {
        self.paths.get(&cgroup_id).map(String::as_str)
    }

    /// Who a cgroup belongs to: an enrolled pod (from its hello) or a pod known from the
    /// Kubernetes API, found through the pod uid in the cgroup path; enriched with what the
    /// API knows (labels, owner).
    pub fn workload_of(&self, path: &str) -> Option<Workload> {
        let pod = pod_of_path(path);
        let from_api = pod.as_ref().and_then(|p| self.pods.get(&p.uid));
        let enrolled = self
            .attachments
            .values()
            .filter(|a| is_within(path, &a.cgroup.path))
            .find_map(|a| a.workload.as_ref());
        match (enrolled, from_api) {
            (_, Some(api)) => Some(api.clone()),
            (Some(e), None) => Some(e.clone()),
            (None, None) => None,
        }
    }

    /// The route patterns of the pod a cgroup belongs to (its `kite.io/routes`); none for
    /// other cgroups.
    pub fn pod_routes(&self, cgroup_id: u64) -> &[RoutePattern] {
        let Some(path) = self.path_of(cgroup_id) else {
            return &[];
        };
        self.attachments
            .values()
            .filter(|a| !a.routes.is_empty() && is_within(path, &a.cgroup.path))
            .map(|a| a.routes.as_slice())
            .next()
            .unwrap_or_default()
    }

    /// How HTTP/1 route `id` of an endpoint is shown, and whether by a user's pattern
    /// (`http_route`): the endpoint's pod's patterns first, then `--route`'s, then the
    /// heuristic's route ([`RpcNames::route`]).
    pub fn route_name(&self, ep: &EndpointStats, id: u32) -> (Rpc<'_>, bool) {
        self.rpc_names.route(self.pod_routes(ep.id.cgroup_id), id)
    }

    /// An endpoint's cgroup path and workload.
    pub fn describe(&self, ep: &EndpointStats) -> (Option<String>, Option<Workload>) {
        let path = self.path_of(ep.id.cgroup_id).map(str::to_string);
        let workload = path.as_deref().and_then(|p| self.workload_of(p));
        (path, workload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_from_enrollment_then_api() {
        let mut s = State::new("n".into(), Duration::from_secs(1), 4, Options::default());
        let pod = "/kubepods/besteffort/pod0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b";
        let hello = Workload {
            namespace: "shop".into(),
            pod: "web-0".into(),
            uid: "0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b".into(),
            ..Workload::default()
        };
        s.attachments.insert(
            pod.into(),
            AttachmentInfo {
                cgroup: Cgroup {
                    path: pod.into(),
                    dir: "/x".into(),
                    id: 1,
                },
                source: Source::Enrolled,
                since: SystemTime::now(),
                workload: Some(hello.clone()),
                routes: Vec::new(),
            },
        );
        let ctr = format!("{pod}/abc");
        assert_eq!(s.workload_of(&ctr), Some(hello.clone()));
        assert_eq!(s.workload_of("/system.slice/x.service"), None);
        let api = Workload {
            kind: "StatefulSet".into(),
            name: "web".into(),
            ..hello.clone()
        };
        s.pods.insert(hello.uid.clone(), api.clone());
        assert_eq!(s.workload_of(&ctr), Some(api));
    }
}
