//! Loading Kite's eBPF programs, attaching them to cgroups, reading their maps.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        ProgramArray, RingBuf, SkStorage,
    },
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock,
        cgroup_skb::CgroupSkbLinkId, cgroup_sock::CgroupSockLinkId,
    },
};
use kite_common::{
    hist::NUM_BUCKETS,
    http::Conn,
    maps::{
        BUDGETS_MAP, BudgetKey, DEFAULT_BUDGET_DIVISOR, DEFAULT_MAX_ENDPOINTS, DEFAULT_MAX_SOCKETS,
        ENDPOINT_BUDGET_GLOBAL, ENDPOINTS_MAP, EndpointKey, EndpointStats, LIVE_H2_HOLDS,
        LIVE_H2_SOCKETS, LIVE_MAP, LIVE_PENDING, LIVE_PENDING_SWEPT, LIVE_SOCKETS,
        MAX_SOCKETS_GLOBAL, OVERFLOW_MAP, PENDING_MAP, PendingKey, ROUTES_GLOBAL, RPC_NAMES_MAP,
        SOCKETS_MAP, STAT_COUNT, STATS_MAP, Stat,
    },
};
use log::{debug, warn};

use crate::{
    Error,
    cgroup::{Cgroup, is_within},
};

/// The compiled eBPF object (built by `build.rs` from `ebpf/kite-ebpf`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kite"));

const INGRESS: &str = "kite_ingress";
const EGRESS: &str = "kite_egress";
const RELEASE: &str = "kite_sock_release";
const EMPTY: &str = "kite_empty";
const LISTENER: &str = "kite_listener";
const SOCK_STATE: &str = "kite_sock_state";
/// The HTTP/2 parser of received packets (tail call from [`INGRESS`]).
const H2_INGRESS: &str = "kite_h2_ingress";
/// The HTTP/2 parser of sent packets (tail call from [`EGRESS`]).
const H2_EGRESS: &str = "kite_h2_egress";
/// Received HTTP/2 segments held beyond a gap, copied and parsed once the gap is (tail call
/// from [`H2_INGRESS`] and from itself).
const H2_HOLD: &str = "kite_h2_hold";
/// Program array through which `kite_ingress` reaches [`LISTENER`] (slot 0) and
/// [`H2_INGRESS`] (slot 1), and `kite_h2_ingress` [`H2_HOLD`] (slot 2).
const TAILS_MAP: &str = "TAILS";
/// Program array through which `kite_egress` reaches [`H2_EGRESS`] (slot 0): a program may
/// only tail-call programs of its own attach type.
const TAILS_TX_MAP: &str = "TAILS_TX";
/// The kernel tracepoint [`SOCK_STATE`] runs on.
const SOCK_STATE_TP: &str = "inet_sock_set_state";

/// [`Options::budget`] when (cgroup, direction) pairs are not budgeted.
pub const NO_BUDGET: u32 = u32::MAX;

/// Map sizes, fixed at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Bound of the connection states (socket-local storage, so a soft bound kept by the
    /// programs' live count).
    pub max_sockets: u32,
    /// Bound of the endpoint-histogram map.
    pub max_endpoints: u32,
    /// Distinct endpoint keys one (cgroup, direction) may hold in the endpoint map; requests
    /// beyond go to its overflow endpoint. 0: [`Options::default_budget`].
    pub endpoint_budget: u32,
    /// HTTP/1 requests get a route (`kite_common::route`): per-route histograms, at most
    /// `MAX_RPC_PER_ENDPOINT` per endpoint. Off: one histogram per (method, status).
    pub routes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_sockets: DEFAULT_MAX_SOCKETS,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
            endpoint_budget: 0,
            routes: true,
        }
    }
}

impl Options {
    /// The budget of `max_endpoints`: an eighth of the map; none ([`NO_BUDGET`]) for maps
    /// under 2048 entries, where an eighth (under 256 keys) would send one ordinary service's
    /// own endpoints to overflow.
    pub fn default_budget(max_endpoints: u32) -> u32 {
        let b = max_endpoints / DEFAULT_BUDGET_DIVISOR;
        if b >= 256 { b } else { NO_BUDGET }
    }

    /// The endpoint budget in force.
    pub fn budget(&self) -> u32 {
        if self.endpoint_budget == 0 {
            Self::default_budget(self.max_endpoints)
        } else {
            self.endpoint_budget
        }
    }
}

/// What [`Kite::attach`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// The programs now run on the cgroup (replacing attachments of its descendants, which it
    /// covers).
    New {
        /// Descendant cgroups whose own attachments were dropped.
        replaced: Vec<String>,
    },
    /// The cgroup was attached already.
    Already,
    /// An ancestor cgroup is attached, so the cgroup is measured already; attaching again
    /// would count its traffic twice.
    CoveredBy(String),
}

struct Links {
    ingress: CgroupSkbLinkId,
    egress: CgroupSkbLinkId,
    release: CgroupSockLinkId,
}

/// A cgroup the programs are attached to.
pub struct Attachment {
    /// The cgroup.
    pub cgroup: Cgroup,
    links: Links,
}

/// Cumulative per-endpoint counters as read from the kernel, summed over CPUs.
///
/// `buckets` are the non-empty histogram buckets `(index, count)`, by index, with the kernel's
/// 32-bit wrapping counts (see [`kite_common::maps::EndpointStats`]): subtract them with
/// `wrapping_sub`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawStats {
    /// Completed requests.
    pub count: u64,
    /// Sum of latencies, ns.
    pub latency_sum_ns: u64,
    /// Request bytes.
    pub req_bytes: u64,
    /// Response bytes.
    pub resp_bytes: u64,
    /// Non-empty histogram buckets (wrapping counts).
    pub buckets: Vec<(u16, u32)>,
}

impl RawStats {
    /// Sums the per-CPU values of one key.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a EndpointStats>) -> Self {
        let mut dense = [0u32; NUM_BUCKETS];
        let mut out = RawStats {
            count: 0,
            latency_sum_ns: 0,
            req_bytes: 0,
            resp_bytes: 0,
            buckets: Vec::new(),
        };
        for v in per_cpu {
            out.count = out.count.wrapping_add(v.count);
            out.latency_sum_ns = out.latency_sum_ns.wrapping_add(v.latency_sum_ns);
            out.req_bytes = out.req_bytes.wrapping_add(v.req_bytes);
            out.resp_bytes = out.resp_bytes.wrapping_add(v.resp_bytes);
            for (o, b) in dense.iter_mut().zip(v.buckets.iter()) {
                *o = o.wrapping_add(*b);
            }
        }
        out.buckets = dense
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != 0)
            .map(|(i, c)| (i as u16, *c))
            .collect();
        out
    }
}

/// Run-time statistics of one program (kernel BPF stats; zero unless enabled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Total time spent in the program.
    pub run_time: Duration,
    /// Number of runs.
    pub run_count: u64,
}

/// How long a connection parked for a socket that never appeared is kept (an abandoned
/// handshake after data reached a listener): see [`Kite::sweep_pending`].
pub const PENDING_MAX_AGE: Duration = Duration::from_secs(30);

/// The loaded programs and the cgroups they are attached to. Dropping it detaches everything.
pub struct Kite {
    ebpf: Ebpf,
    attachments: BTreeMap<String, Attachment>,
    options: Options,
    /// gRPC method names from the kernel ([`Kite::rpc_names`]).
    rpc_names: RingBuf<MapData>,
}

/// A gRPC method name the kernel sent ([`Kite::rpc_names`]): once per method id, the first
/// time it decoded a gRPC `:path` with that id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcName {
    /// The method id ([`EndpointKey::rpc`]: `rpc_id` of the path's FNV-1a).
    pub rpc: u32,
    /// The path as sent (`/package.Service/Method`), at most
    /// [`kite_common::h2::hpack::PATH_BUF`] bytes.
    pub path: Vec<u8>,
    /// The path was longer than that and is cut: its hash is not `rpc` (a name checked
    /// against its id, as `rpc_names::RpcNames::learn` does, refuses it).
    pub truncated: bool,
    /// An HTTP/1 route's text (`kite_common::route`), not a gRPC `:path`.
    pub route: bool,
}

impl RpcName {
    /// Decodes one ring-buffer record (`maps::RPC_NAMES_MAP`); `None` if it is malformed.
    pub fn parse(rec: &[u8]) -> Option<Self> {
        use kite_common::h2::hpack::PATH_BUF;
        if rec.len() < 8 + PATH_BUF {
            return None;
        }
        use kite_common::maps::{NAME_CUT, NAME_ROUTE};
        let id = u32::from_le_bytes(rec[0..4].try_into().ok()?);
        let word = u32::from_le_bytes(rec[4..8].try_into().ok()?);
        let len = (word & !(NAME_ROUTE | NAME_CUT)) as usize;
        let kept = len.min(PATH_BUF);
        Some(Self {
            rpc: kite_common::maps::rpc_id(id),
            path: rec[8..8 + kept].to_vec(),
            truncated: len > PATH_BUF || word & NAME_CUT != 0,
            route: word & NAME_ROUTE != 0,
        })
    }
}

fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            // EPERM: missing privileges. (The verifier's refusals are EACCES or EINVAL, and are
            // load errors, not permission problems.)
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn load_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    if permission_denied(&e) {
        Error::NotPermitted(Box::new(e))
    } else {
        Error::Load(Box::new(e))
    }
}

impl Kite {
    /// Loads the programs into the kernel (not attached anywhere yet).
    pub fn load(options: Options) -> Result<Self, Error> {
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it where allowed.
        let rlim = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: plain syscall with a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
            debug!(
                "could not lift RLIMIT_MEMLOCK: {}",
                io::Error::last_os_error()
            );
        }
        let mut ebpf = EbpfLoader::new()
            .override_global(MAX_SOCKETS_GLOBAL, &options.max_sockets, true)
            .override_global(ENDPOINT_BUDGET_GLOBAL, &options.budget(), true)
            .override_global(ROUTES_GLOBAL, &u32::from(options.routes), true)
            .map_max_entries(ENDPOINTS_MAP, options.max_endpoints)
            .load(EBPF_OBJECT)
            .map_err(load_error)?;
        for name in [INGRESS, EGRESS, LISTENER, H2_INGRESS, H2_EGRESS, H2_HOLD] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?.try_into().map_err(load_error)?;
            prog.load().map_err(load_error)?;
            // The verifier's budget is one million instructions per program: say how much of
            // it each one takes.
            if let Some(n) = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count())
            {
                debug!("{name}: {n} instructions verified");
            }
        }
        // Tail calls: the listener's and the HTTP/2 parsers, each with its own budget.
        set_tail(&mut ebpf, TAILS_MAP, 0, LISTENER)?;
        set_tail(&mut ebpf, TAILS_MAP, 1, H2_INGRESS)?;
        set_tail(&mut ebpf, TAILS_MAP, 2, H2_HOLD)?;
        set_tail(&mut ebpf, TAILS_TX_MAP, 0, H2_EGRESS)?;
        let prog: &mut CgroupSock = program(&mut ebpf, RELEASE)?
            .try_into()
            .map_err(load_error)?;
        prog.load().map_err(load_error)?;
        // Frees the state of sockets that close without a release (never accepted, orphaned):
        // one attachment for the whole system, living as long as `ebpf`.
        let btf = Btf::from_sys_fs().map_err(load_error)?;
        let prog: &mut BtfTracePoint = program(&mut ebpf, SOCK_STATE)?
            .try_into()
            .map_err(load_error)?;
        prog.load(SOCK_STATE_TP, &btf).map_err(load_error)?;
        prog.attach().map_err(|e| Error::Attach {
            action: "attaching",
            program: SOCK_STATE,
            cgroup: format!("tp_btf/{SOCK_STATE_TP}"),
            source: Box::new(e),
        })?;
        let rpc_names = RingBuf::try_from(
            ebpf.take_map(RPC_NAMES_MAP)
                .ok_or_else(|| missing_map(RPC_NAMES_MAP))?,
        )
        .map_err(map_error(RPC_NAMES_MAP))?;
        Ok(Self {
            ebpf,
            attachments: BTreeMap::new(),
            options,
            rpc_names,
        })
    }

    /// The gRPC method names the kernel sent since the last call (each method once in the
    /// programs' life; at most ≈ 450 wait between two calls, more are counted as
    /// `Stat::RpcNamesDropped` and sent again at the method's next literal `:path`). Never
    /// blocks.
    pub fn rpc_names(&mut self) -> Vec<RpcName> {
        let mut out = Vec::new();
        while let Some(rec) = self.rpc_names.next() {
            match RpcName::parse(&rec) {
                Some(n) => out.push(n),
                None => warn!(
                    "a malformed gRPC name record ({} bytes) was ignored",
                    rec.len()
                ),
            }
        }
        out
    }

    /// The loaded object, for the programs attached elsewhere (the TLS uprobes, `crate::tls`).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Map sizes this instance was loaded with.
    pub fn options(&self) -> Options {
        self.options
    }

    /// Attaches the programs to `cgroup` (ingress, egress and socket release). Only sockets
    /// created in the cgroup or its descendants afterwards *and* their accepted connections
    /// are seen in full; existing connections are picked up at their next request.
    pub fn attach(&mut self, cgroup: &Cgroup) -> Result<Attached, Error> {
        if self.attachments.contains_key(&cgroup.path) {
            return Ok(Attached::Already);
        }
        if let Some(anc) = self.attachments.keys().find(|p| is_within(&cgroup.path, p)) {
            return Ok(Attached::CoveredBy(anc.clone()));
        }
        let dir = File::open(&cgroup.dir).map_err(|e| Error::Io {
            what: format!("opening cgroup {}", cgroup.dir.display()),
            source: e,
        })?;
        let fail = |program, source| Error::Attach {
            action: "attaching",
            program,
            cgroup: cgroup.path.clone(),
            source: Box::new(source),
        };
        let ingress = skb(&mut self.ebpf, INGRESS)?
            .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .map_err(|e| fail(INGRESS, e))?;
        let egress = match skb(&mut self.ebpf, EGRESS)?.attach(
            &dir,
            CgroupSkbAttachType::Egress,
            CgroupAttachMode::Single,
        ) {
            Ok(l) => l,
            Err(e) => {
                let _ = skb(&mut self.ebpf, INGRESS)?.detach(ingress);
                return Err(fail(EGRESS, e));
            }
        };
        let release = match sock(&mut self.ebpf)?.attach(&dir, CgroupAttachMode::Single) {
            Ok(l) => l,
            Err(e) => {
                let _ = skb(&mut self.ebpf, INGRESS)?.detach(ingress);
                let _ = skb(&mut self.ebpf, EGRESS)?.detach(egress);
                return Err(fail(RELEASE, e));
            }
        };
        // Descendants are covered now; their own attachments would count twice.
        let replaced: Vec<String> = self
            .attachments
            .keys()
            .filter(|p| is_within(p, &cgroup.path))
            .cloned()
            .collect();
        for p in &replaced {
            self.detach(p)?;
        }
        self.attachments.insert(
            cgroup.path.clone(),
            Attachment {
                cgroup: cgroup.clone(),
                links: Links {
                    ingress,
                    egress,
                    release,
                },
            },
        );
        Ok(Attached::New { replaced })
    }

    /// Detaches the programs from the cgroup at `path`. A cgroup that vanished meanwhile
    /// (its links died with it) detaches without error.
    pub fn detach(&mut self, path: &str) -> Result<Cgroup, Error> {
        let att = self
            .attachments
            .remove(path)
            .ok_or_else(|| Error::NotAttached(path.to_string()))?;
        let gone = !att.cgroup.dir.exists();
        let results = [
            skb(&mut self.ebpf, INGRESS)?.detach(att.links.ingress),
            skb(&mut self.ebpf, EGRESS)?.detach(att.links.egress),
            sock(&mut self.ebpf)?.detach(att.links.release),
        ];
        for (r, program) in results.into_iter().zip([INGRESS, EGRESS, RELEASE]) {
            if let Err(e) = r {
                if gone {
                    debug!("detaching {program} from vanished cgroup {path}: {e}");
                } else {
                    warn!("detaching {program} from cgroup {path}: {e}");
                }
            }
        }
        Ok(att.cgroup)
    }

    /// Detaches every cgroup.
    pub fn detach_all(&mut self) {
        let paths: Vec<String> = self.attachments.keys().cloned().collect();
        for p in paths {
            let _ = self.detach(&p);
        }
    }

    /// The attached cgroups, by path.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.attachments.values()
    }

    /// Whether the cgroup at `path` is attached or covered by an attached ancestor.
    pub fn covers(&self, path: &str) -> bool {
        self.attachments.keys().any(|p| is_within(path, p))
    }

    /// Every endpoint histogram, summed over CPUs.
    pub fn endpoints(&self) -> Result<Vec<(EndpointKey, RawStats)>, Error> {
        let map: PerCpuHashMap<&MapData, EndpointKey, EndpointStats> = self.map(ENDPOINTS_MAP)?;
        let mut out = Vec::new();
        for item in map.iter() {
            match item {
                Ok((k, v)) => out.push((k, RawStats::sum(v.iter()))),
                // A key removed between get_next_key and lookup: skip it.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_error(ENDPOINTS_MAP)(e)),
            }
        }
        // The overflow endpoints: one value for all CPUs.
        let map: BpfHashMap<&MapData, EndpointKey, EndpointStats> = self.map(OVERFLOW_MAP)?;
        for item in map.iter() {
            match item {
                Ok((k, v)) => out.push((k, RawStats::sum([&v]))),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_error(OVERFLOW_MAP)(e)),
            }
        }
        Ok(out)
    }

    /// Removes endpoint histograms for which `drop` says so (e.g. of cgroups that are gone).
    /// Returns how many were removed.
    pub fn remove_endpoints(
        &mut self,
        drop: impl Fn(&EndpointKey) -> bool,
    ) -> Result<usize, Error> {
        let mut map: PerCpuHashMap<&mut MapData, EndpointKey, EndpointStats> =
            self.map_mut(ENDPOINTS_MAP)?;
        let doomed: Vec<EndpointKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| drop(k))
            .collect();
        let mut freed: BTreeMap<BudgetKey, u64> = BTreeMap::new();
        for k in &doomed {
            if map.remove(k).is_ok() && !k.is_overflow() {
                *freed.entry(k.budget_key()).or_default() += 1;
            }
        }
        let mut overflow: BpfHashMap<&mut MapData, EndpointKey, EndpointStats> =
            self.map_mut(OVERFLOW_MAP)?;
        let spilled: Vec<EndpointKey> = overflow
            .keys()
            .filter_map(Result::ok)
            .filter(|k| drop(k))
            .collect();
        for k in &spilled {
            let _ = overflow.remove(k);
        }
        self.free_budget(&freed);
        Ok(doomed.len() + spilled.len())
    }

    /// Gives (cgroup, direction) pairs back the budget of `freed` removed keys; a pair left
    /// with none is forgotten. Read and written back, not atomic: a key the kernel inserts in
    /// between may go uncounted, so a budget is exact to within the keys inserted meanwhile.
    fn free_budget(&mut self, freed: &BTreeMap<BudgetKey, u64>) {
        let Ok(mut budgets) = self.map_mut::<BpfHashMap<&mut MapData, BudgetKey, u64>>(BUDGETS_MAP)
        else {
            return;
        };
        for (k, n) in freed {
            match budgets.get(k, 0) {
                Ok(live) if live > *n => {
                    let _ = budgets.insert(k, live - n, 0);
                }
                Ok(_) => {
                    let _ = budgets.remove(k);
                }
                Err(_) => {}
            }
        }
    }

    /// Live endpoint keys per (cgroup, direction), as the kernel counts them for budgets.
    pub fn budgets(&self) -> Result<Vec<(BudgetKey, u64)>, Error> {
        let map: BpfHashMap<&MapData, BudgetKey, u64> = self.map(BUDGETS_MAP)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// The tracked connections. Their state lives in the sockets themselves (socket-local
    /// storage, which cannot be listed), so this is their count, kept exact by the programs.
    pub fn sockets(&self) -> Result<LiveSockets, Error> {
        Ok(LiveSockets(self.socket_count()?))
    }

    /// Number of connection states alive now (sockets tracked).
    pub fn socket_count(&self) -> Result<u64, Error> {
        self.live(LIVE_SOCKETS)
    }

    /// Number of HTTP/2 connection states alive now (in their own socket storage).
    pub fn h2_socket_count(&self) -> Result<u64, Error> {
        self.live(LIVE_H2_SOCKETS)
    }

    /// Number of HTTP/2 hold buffers alive now (received segments held beyond a gap; each
    /// goes when nothing is held any more, or with its connection).
    pub fn h2_hold_count(&self) -> Result<u64, Error> {
        self.live(LIVE_H2_HOLDS)
    }

    /// The connection state of one socket (e.g. a listener's, which must have none), if any.
    pub fn socket_state(&self, socket: &impl AsRawFd) -> Result<Option<Conn>, Error> {
        let map: SkStorage<&MapData, Conn> = self.map(SOCKETS_MAP)?;
        match map.get(socket, 0) {
            Ok(c) => Ok(Some(c)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(SOCKETS_MAP)(e)),
        }
    }

    /// Connections waiting for their socket (their data reached the listener first).
    pub fn pending(&self) -> Result<Vec<(PendingKey, Conn)>, Error> {
        let map: BpfHashMap<&MapData, PendingKey, Conn> = self.map(PENDING_MAP)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Removes waiting connections whose last data is older than `max_age` (their socket never
    /// appeared: the handshake was abandoned). Returns how many.
    pub fn sweep_pending(&mut self, max_age: Duration) -> Result<usize, Error> {
        if self.pending_count()? == 0 {
            // Usually: two lookups instead of walking the map.
            return Ok(0);
        }
        let now = monotonic_ns();
        let doomed: Vec<PendingKey> = self
            .pending()?
            .into_iter()
            .filter(|(_, c)| now.saturating_sub(c.last_ns) > max_age.as_nanos() as u64)
            .map(|(k, _)| k)
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut removed = 0u64;
        {
            let mut map: BpfHashMap<&mut MapData, PendingKey, Conn> = self.map_mut(PENDING_MAP)?;
            for k in &doomed {
                if map.remove(k).is_ok() {
                    removed += 1;
                }
            }
        }
        // The programs compare this with their own count to know whether anything waits.
        let swept = self.live(LIVE_PENDING_SWEPT)? + removed;
        let mut live: Array<&mut MapData, u64> = self.map_mut(LIVE_MAP)?;
        live.set(LIVE_PENDING_SWEPT, swept, 0)
            .map_err(map_error(LIVE_MAP))?;
        Ok(removed as usize)
    }

    /// Number of connections waiting for their socket.
    pub fn pending_count(&self) -> Result<u64, Error> {
        Ok(self
            .live(LIVE_PENDING)?
            .wrapping_sub(self.live(LIVE_PENDING_SWEPT)?))
    }

    fn live(&self, slot: u32) -> Result<u64, Error> {
        let map: Array<&MapData, u64> = self.map(LIVE_MAP)?;
        map.get(&slot, 0).map_err(map_error(LIVE_MAP))
    }

    /// Self-metric counters, summed over CPUs, indexed by [`Stat`].
    pub fn counters(&self) -> Result<[u64; STAT_COUNT as usize], Error> {
        let map: PerCpuArray<&MapData, u64> = self.map(STATS_MAP)?;
        let mut out = [0u64; STAT_COUNT as usize];
        for s in Stat::ALL {
            let v = map.get(&(s as u32), 0).map_err(map_error(STATS_MAP))?;
            out[s as usize] = v.iter().sum();
        }
        Ok(out)
    }

    /// Kernel run-time statistics of the programs, summed.
    pub fn program_stats(&self) -> ProgramStats {
        let mut out = ProgramStats::default();
        for name in [
            INGRESS, EGRESS, LISTENER, H2_INGRESS, H2_EGRESS, H2_HOLD, RELEASE, SOCK_STATE,
        ] {
            let info = match self.ebpf.program(name) {
                Some(aya::programs::Program::CgroupSkb(p)) => p.info(),
                Some(aya::programs::Program::CgroupSock(p)) => p.info(),
                Some(aya::programs::Program::BtfTracePoint(p)) => p.info(),
                _ => continue,
            };
            if let Ok(info) = info {
                out.run_time += info.run_time();
                out.run_count += info.run_count();
            }
        }
        out
    }

    /// A map of the object, typed.
    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, Error>
    where
        T: TryFrom<&'a Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or_else(|| missing_map(name))?;
        T::try_from(map).map_err(map_error(name))
    }

    /// A map of the object, typed, writable.
    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, Error>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or_else(|| missing_map(name))?;
        T::try_from(map).map_err(map_error(name))
    }
}

/// Number of tracked connections (see [`Kite::sockets`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSockets(pub u64);

impl LiveSockets {
    /// How many.
    pub fn len(&self) -> usize {
        self.0 as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall with a valid struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map {
        map,
        source: Box::new(source),
    }
}

fn missing_map(name: &'static str) -> Error {
    map_error(name)(MapError::InvalidName { name: name.into() })
}

impl Drop for Kite {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// A `cgroup_skb` program that does nothing, attached to a cgroup (ingress and egress): the
/// baseline cost of any such program, for benchmarks. Detached on drop.
pub struct EmptyProgram {
    ebpf: Ebpf,
    links: Option<(CgroupSkbLinkId, CgroupSkbLinkId)>,
}

impl EmptyProgram {
    /// Loads the empty program and attaches it to `cgroup`.
    pub fn attach(cgroup: &Cgroup) -> Result<Self, Error> {
        let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(load_error)?;
        let prog = skb(&mut ebpf, EMPTY)?;
        prog.load().map_err(load_error)?;
        let dir = File::open(&cgroup.dir).map_err(|e| Error::Io {
            what: format!("opening cgroup {}", cgroup.dir.display()),
            source: e,
        })?;
        let fail = |source| Error::Attach {
            action: "attaching",
            program: EMPTY,
            cgroup: cgroup.path.clone(),
            source: Box::new(source),
        };
        let i = prog
            .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .map_err(fail)?;
        let e = prog
            .attach(&dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(fail)?;
        Ok(Self {
            ebpf,
            links: Some((i, e)),
        })
    }

    /// Kernel run-time statistics of the program.
    pub fn stats(&self) -> ProgramStats {
        match self.ebpf.program(EMPTY) {
            Some(aya::programs::Program::CgroupSkb(p)) => p.info().map_or_else(
                |_| ProgramStats::default(),
                |i| ProgramStats {
                    run_time: i.run_time(),
                    run_count: i.run_count(),
                },
            ),
            _ => ProgramStats::default(),
        }
    }
}

impl Drop for EmptyProgram {
    fn drop(&mut self) {
        if let (Some((i, e)), Ok(p)) = (self.links.take(), skb(&mut self.ebpf, EMPTY)) {
            let _ = p.detach(i);
            let _ = p.detach(e);
        }
    }
}

/// Turns on the kernel's BPF run-time statistics for as long as the returned fd lives
/// (`kernel.bpf_stats_enabled` without touching the sysctl).
pub fn enable_run_time_stats() -> Result<OwnedFd, Error> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| Error::Io {
        what: "enabling BPF run-time statistics".into(),
        source: io::Error::other(e),
    })
}

/// Puts the loaded `cgroup_skb` program `prog` at `index` of the program array `map`.
fn set_tail(ebpf: &mut Ebpf, map: &'static str, index: u32, prog: &str) -> Result<(), Error> {
    let fd = skb(ebpf, prog)?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(load_error)?;
    let mut tails: ProgramArray<&mut MapData> = ebpf
        .map_mut(map)
        .ok_or_else(|| missing_map(map))?
        .try_into()
        .map_err(map_error(map))?;
    tails.set(index, &fd, 0).map_err(map_error(map))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program, Error> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Load(format!("program {name} missing from the eBPF object").into()))
}

fn skb<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSkb, Error> {
    program(ebpf, name)?.try_into().map_err(load_error)
}

fn sock(ebpf: &mut Ebpf) -> Result<&mut CgroupSock, Error> {
    program(ebpf, RELEASE)?.try_into().map_err(load_error)
}

#[cfg(test)]
mod tests {
    use kite_common::{
        h2::hpack::{PATH_BUF, path_id},
        maps::rpc_id,
    };

    use super::RpcName;

    fn record(path: &[u8]) -> Vec<u8> {
        let mut r = path_id(path).to_le_bytes().to_vec();
        r.extend((path.len() as u32).to_le_bytes());
        let mut bytes = path[..path.len().min(PATH_BUF)].to_vec();
        bytes.resize(PATH_BUF, 0);
        r.extend(bytes);
        r
    }

    #[test]
    fn rpc_name_records_decode() {
        let p = b"/kite.test.Echo/Unary";
        let n = RpcName::parse(&record(p)).unwrap();
        assert_eq!(n.rpc, rpc_id(path_id(p)));
        assert_eq!(n.path, p);
        assert!(!n.truncated);
        let long = vec![b'a'; PATH_BUF + 10];
        let n = RpcName::parse(&record(&long)).unwrap();
        assert!(n.truncated);
        assert_eq!(n.path.len(), PATH_BUF);
        assert!(RpcName::parse(&[0; 8]).is_none());
    }
}
