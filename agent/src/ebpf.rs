//! Loading Kite's eBPF programs, attaching them to cgroups, reading their maps.

use std::{collections::BTreeMap, fs::File, io, os::fd::OwnedFd, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, cgroup_skb::CgroupSkbLinkId,
        cgroup_sock::CgroupSockLinkId,
    },
};
use kite_common::{
    hist::NUM_BUCKETS,
    http::Conn,
    maps::{
        DEFAULT_MAX_ENDPOINTS, DEFAULT_MAX_SOCKETS, ENDPOINTS_MAP, EndpointKey, EndpointStats,
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

/// Map sizes, fixed at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Bound of the connection-state map.
    pub max_sockets: u32,
    /// Bound of the endpoint-histogram map.
    pub max_endpoints: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_sockets: DEFAULT_MAX_SOCKETS,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
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

/// The loaded programs and the cgroups they are attached to. Dropping it detaches everything.
pub struct Kite {
    ebpf: Ebpf,
    attachments: BTreeMap<String, Attachment>,
    options: Options,
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
            .map_max_entries(SOCKETS_MAP, options.max_sockets)
            .map_max_entries(ENDPOINTS_MAP, options.max_endpoints)
            .load(EBPF_OBJECT)
            .map_err(load_error)?;
        for name in [INGRESS, EGRESS] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?.try_into().map_err(load_error)?;
            prog.load().map_err(load_error)?;
        }
        let prog: &mut CgroupSock = program(&mut ebpf, RELEASE)?
            .try_into()
            .map_err(load_error)?;
        prog.load().map_err(load_error)?;
        Ok(Self {
            ebpf,
            attachments: BTreeMap::new(),
            options,
        })
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
        for k in &doomed {
            let _ = map.remove(k);
        }
        Ok(doomed.len())
    }

    /// The tracked connections (socket cookie, state).
    pub fn sockets(&self) -> Result<Vec<(u64, Conn)>, Error> {
        let map: BpfHashMap<&MapData, u64, Conn> = self.map(SOCKETS_MAP)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Forgets connection state for which `drop` says so (sockets whose cgroup was detached
    /// before they closed, so their release program never ran). Returns how many.
    pub fn remove_sockets(&mut self, drop: impl Fn(u64, &Conn) -> bool) -> Result<usize, Error> {
        let doomed: Vec<u64> = self
            .sockets()?
            .into_iter()
            .filter(|(k, c)| drop(*k, c))
            .map(|(k, _)| k)
            .collect();
        let mut map: BpfHashMap<&mut MapData, u64, Conn> = self.map_mut(SOCKETS_MAP)?;
        for k in &doomed {
            let _ = map.remove(k);
        }
        Ok(doomed.len())
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

    /// Kernel run-time statistics of the three programs, summed.
    pub fn program_stats(&self) -> ProgramStats {
        let mut out = ProgramStats::default();
        for name in [INGRESS, EGRESS, RELEASE] {
            let info = match self.ebpf.program(name) {
                Some(aya::programs::Program::CgroupSkb(p)) => p.info(),
                Some(aya::programs::Program::CgroupSock(p)) => p.info(),
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
