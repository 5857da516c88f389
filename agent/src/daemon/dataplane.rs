//! The data-plane thread: the only owner of the loaded eBPF programs. It attaches and detaches
//! cgroups on request and, every interval, reads the maps and folds them into the shared
//! [`State`], then tells the watchers a new snapshot is there.

use std::{
    collections::HashSet,
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::state::{AttachmentInfo, Shared, Source, Workload};
use crate::{
    Error,
    cgroup::{Cgroup, Hierarchy, is_within},
    ebpf::{Attached, Kite, PENDING_MAX_AGE, RpcName},
    rpc_names::RpcNames,
    stats::EndpointId,
    tls::Tls,
};
use kite_common::maps::BudgetKey;

/// Requests to the data-plane thread.
enum Command {
    Attach {
        cgroup: Cgroup,
        source: Source,
        workload: Option<Workload>,
        reply: oneshot::Sender<Result<Attached, Error>>,
    },
    Detach {
        path: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// Talks to the data-plane thread.
#[derive(Clone)]
pub struct DataPlane {
    tx: mpsc::Sender<Command>,
}

/// How often freed memory is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// Most cgroups indexed under one attachment.
const INDEX_LIMIT: usize = 100_000;
/// At most one "a poll took" warning this often; the ones in between are counted in the next.
const SLOW_POLL_WARN_EVERY: Duration = Duration::from_secs(60);

/// Feeds the method names the kernel sent into the bounded registry (which checks each
/// against its id and counts what it refuses; a name the kernel cut short is refused as
/// invalid).
pub fn learn_rpc_names(names: &mut RpcNames, new: Vec<RpcName>) {
    for n in new {
        if n.route {
            names.learn_route(n.rpc, &n.path, n.truncated);
        } else if n.truncated {
            names.counters.invalid += 1;
        } else {
            names.learn(n.rpc, &n.path);
        }
    }
}

/// Lets one event through every `every`, counting the ones held back meanwhile.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLimit {
    /// At most one event per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// An event at `now`: `Some(events held back since the last one let through)` when this
    /// one may be reported, `None` when it is held back.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// Settings of the data-plane thread.
pub struct Settings {
    /// Polling interval.
    pub interval: Duration,
    /// How long series of a vanished cgroup stay visible.
    pub gone_grace: Duration,
    /// Endpoints without a request for this long are evicted (kernel entry and series) when
    /// their (cgroup, direction) is at its endpoint budget, giving the budget back; zero:
    /// never.
    pub endpoint_idle: Duration,
    /// The cgroup hierarchy.
    pub hierarchy: Hierarchy,
    /// Probe OpenSSL for TLS plaintext (`--tls`).
    pub tls: bool,
}

impl DataPlane {
    /// Starts the thread. It stops (detaching everything) when `shutdown` is cancelled; the
    /// returned handle joins it.
    pub fn spawn(
        kite: Kite,
        shared: Shared,
        notify: watch::Sender<u64>,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> (Self, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("kite-dataplane".into())
            .spawn(move || Worker::new(kite, shared, notify, settings).run(rx, shutdown))
            .expect("spawn the data-plane thread");
        (Self { tx }, handle)
    }

    /// Attaches the programs to a cgroup.
    pub async fn attach(
        &self,
        cgroup: Cgroup,
        source: Source,
        workload: Option<Workload>,
    ) -> Result<Attached, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Attach {
            cgroup,
            source,
            workload,
            reply,
        })?;
        rx.await.map_err(|_| stopped())?
    }

    /// Detaches the programs from a cgroup.
    pub async fn detach(&self, path: String) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Detach { path, reply })?;
        rx.await.map_err(|_| stopped())?
    }

    fn send(&self, c: Command) -> Result<(), Error> {
        self.tx.send(c).map_err(|_| stopped())
    }
}

fn stopped() -> Error {
    Error::Io {
        what: "the data-plane thread has stopped".into(),
        source: std::io::Error::other("stopped"),
    }
}

struct Worker {
    kite: Kite,
    shared: Shared,
    notify: watch::Sender<u64>,
    settings: Settings,
    last_sweep: Instant,
    unknown_ids_at: Option<Instant>,
    slow_polls: RateLimit,
    /// TLS uprobes on the libssl files of the attached cgroups' processes.
    tls: Tls,
}

impl Worker {
    fn new(kite: Kite, shared: Shared, notify: watch::Sender<u64>, settings: Settings) -> Self {
        Self {
            kite,
            shared,
            notify,
            settings,
            last_sweep: Instant::now(),
            unknown_ids_at: None,
            slow_polls: RateLimit::new(SLOW_POLL_WARN_EVERY),
            tls: Tls::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        if self.settings.tls
            && let Err(e) = self.tls.prepare(&mut self.kite)
        {
            warn!("TLS: {e}");
        }
        let mut next = Instant::now() + self.settings.interval;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Wake at least every 100 ms to notice the shutdown.
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match rx.recv_timeout(wait) {
                Ok(cmd) => self.command(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next {
                self.poll();
                next += self.settings.interval;
                if next < Instant::now() {
                    // Fell behind (a slow poll): skip ahead rather than poll in a burst.
                    next = Instant::now() + self.settings.interval;
                }
            }
            if self.settings.tls {
                self.scan_tls();
            }
        }
        info!("detaching from all cgroups");
        self.kite.detach_all();
    }

    /// Probes the libssl files the attached cgroups' processes map (`crate::tls`), every
    /// [`crate::tls::RESCAN`]; the file-system work runs on the TLS scan thread, this applies it.
    fn scan_tls(&mut self) {
        match self.tls.tick(&mut self.kite) {
            None => return,
            Some(Err(e)) => warn!("TLS: {e}"),
            Some(Ok(_)) => {}
        }
        let mut st = self.shared.write();
        st.tls_libraries = self.tls.libraries().count();
        st.tls_unsupported = self
            .tls
            .unsupported()
            .iter()
            .map(|u| format!("{} (pid {}, {})", u.exe, u.pid, u.kind))
            .collect();
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Attach {
                cgroup,
                source,
                workload,
                reply,
            } => {
                let r = self.kite.attach(&cgroup);
                if let Ok(att) = &r {
                    let mut st = self.shared.write();
                    if let Attached::New { replaced } = att {
                        for p in replaced {
                            st.attachments.remove(p);
                        }
                    }
                    if !matches!(att, Attached::CoveredBy(_)) {
                        st.gone.remove(&cgroup.path);
                        let index = self
                            .settings
                            .hierarchy
                            .index_under(&cgroup.path, INDEX_LIMIT);
                        st.paths.extend(index);
                        let entry =
                            st.attachments
                                .entry(cgroup.path.clone())
                                .or_insert(AttachmentInfo {
                                    cgroup: cgroup.clone(),
                                    source,
                                    since: SystemTime::now(),
                                    workload: None,
                                    routes: Vec::new(),
                                });
                        if workload.is_some() {
                            entry.workload = workload;
                        }
                    } else if let Some(w) = workload {
                        // Measured through an ancestor: remember who the pod is all the same.
                        st.attachments
                            .entry(cgroup.path.clone())
                            .or_insert(AttachmentInfo {
                                cgroup: cgroup.clone(),
                                source,
                                since: SystemTime::now(),
                                workload: None,
                                routes: Vec::new(),
                            })
                            .workload = Some(w);
                    }
                }
                let _ = reply.send(r);
            }
            Command::Detach { path, reply } => {
                let r = self.kite.detach(&path).map(|_| ());
                let mut st = self.shared.write();
                if st.attachments.remove(&path).is_some() {
                    st.gone.insert(path, SystemTime::now());
                }
                let _ = reply.send(r.or_else(|e| match e {
                    // Known only as covered by an ancestor: nothing was attached.
                    Error::NotAttached(_) => Ok(()),
                    e => Err(e),
                }));
            }
        }
    }

    fn poll(&mut self) {
        let started = Instant::now();
        let reading = self.kite.endpoints();
        let counters = self.kite.counters();
        let tls_kernel = crate::tls::Tls::kernel_counters(&mut self.kite);
        let rpc_names = self.new_rpc_names();
        let bpf = self.kite.program_stats();
        if self.last_sweep.elapsed() >= TRIM_EVERY {
            self.last_sweep = Instant::now();
            // A scrape of thousands of endpoints renders tens of megabytes of text; hand the
            // freed pages back to the system instead of keeping the high-water mark.
            // SAFETY: plain glibc call.
            unsafe { libc::malloc_trim(0) };
        }
        let sockets = self.sweep_sockets();
        let vanished = self.vanished_cgroups();
        for path in &vanished {
            info!(cgroup = %path, "cgroup vanished, detaching");
            if let Err(e) = self.kite.detach(path) {
                debug!(cgroup = %path, "detach: {e}");
            }
        }
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut unknown = false;
        let full_pairs = self.pairs_at_budget();
        let (expired, idle) = {
            let mut st = self.shared.write();
            match reading {
                Ok(r) => {
                    st.endpoints_used = r.len() as u64;
                    unknown = r.iter().any(|(k, _)| !st.paths.contains_key(&k.cgroup_id));
                    st.collector.update(now, r);
                }
                Err(e) => {
                    st.agent.poll_errors += 1;
                    warn!("reading the endpoint map: {e}");
                }
            }
            if let Ok(c) = counters {
                st.counters = c;
            }
            st.tls_kernel = tls_kernel;
            learn_rpc_names(&mut st.rpc_names, rpc_names);
            if let Some(n) = sockets {
                st.sockets_used = n;
            }
            st.bpf = bpf;
            st.window = wall
                .duration_since(st.polled_at)
                .unwrap_or(self.settings.interval);
            st.polled_at = wall;
            for p in vanished {
                st.attachments.remove(&p);
                st.gone.insert(p, wall);
                st.agent.vanished += 1;
            }
            let expired = self.expire(&mut st, wall);
            let idle = self.idle_endpoints(&mut st, now, &full_pairs);
            (expired, idle)
        };
        if !idle.is_empty() {
            match self
                .kite
                .remove_endpoints(|k| idle.contains(&EndpointId::of(k)))
            {
                Ok(n) => debug!("evicted {n} idle endpoint histograms"),
                Err(e) => warn!("evicting idle endpoints: {e}"),
            }
        }
        if !expired.is_empty() {
            match self
                .kite
                .remove_endpoints(|k| expired.contains(&k.cgroup_id))
            {
                Ok(n) => debug!("removed {n} expired endpoint histograms"),
                Err(e) => warn!("removing expired endpoints: {e}"),
            }
        }
        if unknown {
            self.refresh_paths();
        }
        let generation = {
            let mut st = self.shared.write();
            st.generation += 1;
            st.generation
        };
        self.notify.send_replace(generation);
        let took = started.elapsed();
        if took > self.settings.interval / 2
            && let Some(held) = self.slow_polls.hit(Instant::now())
        {
            let interval = self.settings.interval;
            if held > 0 {
                warn!(
                    "a poll took {took:?} (interval {interval:?}); {held} more polls took over half the interval since the last such warning (at most one a minute)"
                );
            } else {
                warn!("a poll took {took:?} (interval {interval:?})");
            }
        }
    }

    /// gRPC method names the kernel sent since the last poll (read before the state's lock is
    /// taken).
    fn new_rpc_names(&mut self) -> Vec<RpcName> {
        self.kite.rpc_names()
    }

    /// (cgroup, direction) pairs holding their whole endpoint budget.
    fn pairs_at_budget(&self) -> HashSet<BudgetKey> {
        if self.settings.endpoint_idle.is_zero() {
            return HashSet::new();
        }
        let budget = self.kite.options().budget() as u64;
        match self.kite.budgets() {
            Ok(b) => b
                .into_iter()
                .filter(|(_, n)| *n >= budget)
                .map(|(k, _)| k)
                .collect(),
            Err(e) => {
                debug!("reading endpoint budgets: {e}");
                HashSet::new()
            }
        }
    }

    /// Drops the series of endpoints idle for `endpoint_idle` whose (cgroup, direction) is in
    /// `full` (at its budget); returns them (to remove from the kernel map too, which gives
    /// the budget back). The overflow endpoint stays.
    fn idle_endpoints(
        &self,
        st: &mut super::state::State,
        now: Instant,
        full: &HashSet<BudgetKey>,
    ) -> HashSet<EndpointId> {
        let idle = self.settings.endpoint_idle;
        if full.is_empty() {
            return HashSet::new();
        }
        let ids: HashSet<EndpointId> = st
            .collector
            .endpoints()
            .filter(|e| {
                !e.id.is_overflow()
                    && now.saturating_duration_since(e.last_active) >= idle
                    && full.contains(&BudgetKey {
                        cgroup_id: e.id.cgroup_id,
                        direction: e.id.direction as u8,
                        _pad: [0; 7],
                    })
            })
            .map(|e| e.id)
            .collect();
        if !ids.is_empty() {
            st.collector.retain(|e| !ids.contains(&e.id));
            st.agent.idle_endpoints += ids.len() as u64;
        }
        ids
    }

    /// Enrolled cgroups whose directory is gone (the pod ended).
    fn vanished_cgroups(&self) -> Vec<String> {
        let st = self.shared.read();
        st.attachments
            .values()
            .filter(|a| a.source == Source::Enrolled && !a.cgroup.dir.exists())
            .map(|a| a.cgroup.path.clone())
            .collect()
    }

    /// Drops the series of cgroups gone for longer than the grace period; returns their ids
    /// (to remove from the kernel map too).
    fn expire(&self, st: &mut super::state::State, now: SystemTime) -> HashSet<u64> {
        let grace = self.settings.gone_grace;
        let expired: Vec<String> = st
            .gone
            .iter()
            .filter(|(_, at)| now.duration_since(**at).unwrap_or_default() >= grace)
            .map(|(p, _)| p.clone())
            .collect();
        let mut ids = HashSet::new();
        for p in expired {
            st.gone.remove(&p);
            ids.extend(
                st.paths
                    .iter()
                    .filter(|(_, path)| is_within(path, &p))
                    .map(|(id, _)| *id),
            );
        }
        if !ids.is_empty() {
            let before = st.collector.endpoints().count();
            st.collector.retain(|e| !ids.contains(&e.id.cgroup_id));
            st.agent.expired_endpoints += (before - st.collector.endpoints().count()) as u64;
            st.paths.retain(|id, _| !ids.contains(id));
        }
        ids
    }

    /// Counts tracked connections (the programs keep the count: one lookup) and removes
    /// connections parked for a socket that never appeared. Connection state lives in the
    /// sockets and is freed with them, also for cgroups detached meanwhile.
    fn sweep_sockets(&mut self) -> Option<u64> {
        match self.kite.sweep_pending(PENDING_MAX_AGE) {
            Ok(n) if n > 0 => debug!("removed {n} connections that never got a socket"),
            Ok(_) => {}
            Err(e) => warn!("sweeping the pending-connection map: {e}"),
        }
        match self.kite.socket_count() {
            Ok(n) => Some(n),
            Err(e) => {
                warn!("counting connection states: {e}");
                None
            }
        }
    }

    /// Learns the paths of new cgroups under the attachments (new containers, or sockets of
    /// cgroups created after the attach). At most every few seconds.
    fn refresh_paths(&mut self) {
        if self
            .unknown_ids_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.unknown_ids_at = Some(Instant::now());
        let roots: Vec<String> = self.shared.read().attachments.keys().cloned().collect();
        let mut found = std::collections::HashMap::new();
        for r in roots {
            found.extend(self.settings.hierarchy.index_under(&r, INDEX_LIMIT));
        }
        self.shared.write().paths.extend(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_feed_the_registry_and_cut_ones_are_refused() {
        use kite_common::{h2::hpack::path_id, maps::rpc_id};
        let path = b"/kite.test.Echo/Unary".to_vec();
        let id = rpc_id(path_id(&path));
        let route = kite_common::route::route_id_of_text(b"/orders/*");
        let mut names = RpcNames::default();
        learn_rpc_names(
            &mut names,
            vec![
                RpcName {
                    rpc: id,
                    path: path.clone(),
                    truncated: false,
                    route: false,
                },
                RpcName {
                    rpc: 0x1234_5678,
                    path: path[..8].to_vec(),
                    truncated: true,
                    route: false,
                },
                // A route, and a route cut by the kernel: kept with a mark.
                RpcName {
                    rpc: route,
                    path: b"/orders/*".to_vec(),
                    truncated: false,
                    route: true,
                },
                RpcName {
                    rpc: 0x2345_6789,
                    path: b"/a/very/long".to_vec(),
                    truncated: true,
                    route: true,
                },
            ],
        );
        assert_eq!(names.get(route), crate::rpc_names::Rpc::Name("/orders/*"));
        assert_eq!(
            names.get(0x2345_6789),
            crate::rpc_names::Rpc::Name("/a/very/long…")
        );
        assert_eq!(
            names.get(id),
            crate::rpc_names::Rpc::Name("kite.test.Echo/Unary")
        );
        assert_eq!((names.counters.learnt, names.counters.invalid), (3, 1));
        assert!(matches!(
            names.get(0x1234_5678),
            crate::rpc_names::Rpc::Id(_)
        ));
    }

    #[test]
    fn slow_poll_warnings_are_one_a_minute_with_the_count_of_the_others() {
        let mut r = RateLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(r.hit(t0), Some(0));
        // A slow poll every 10 ms for 59 s: none reported.
        let held = (1..5_900)
            .filter_map(|i| r.hit(t0 + Duration::from_millis(10 * i)))
            .count();
        assert_eq!(held, 0);
        // The first after a minute reports the 5 899 held back, then counting starts again.
        assert_eq!(r.hit(t0 + Duration::from_secs(60)), Some(5_899));
        assert_eq!(r.hit(t0 + Duration::from_secs(61)), None);
        assert_eq!(r.hit(t0 + Duration::from_secs(121)), Some(1));
    }
}
