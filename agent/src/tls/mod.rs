//! TLS through OpenSSL (issue 14): every [`RESCAN`] the agent lists the processes of the
//! attached cgroups (and their descendants), finds the `libssl` each one maps in
//! `/proc/PID/maps`, and attaches one set of uprobes per distinct file (device and inode),
//! opened through `/proc/PID/map_files/…` so a container's own copy is the one probed. The
//! programs filter by cgroup (`TLS_CGROUPS`, the ids this scan found), so other users of the
//! same file pay only that lookup. A file no measured process maps any more is detached.
//!
//! The scan's file-system work (cgroup walk, `/proc/PID/maps`, opening the libraries, searching
//! executables for static TLS) runs on its own thread ([`Tls::tick`]), with its own deadline
//! ([`SCAN_DEADLINE`]): the data-plane thread only applies a finished scan (uprobe attach and
//! detach, the cgroup map), so a slow scan never delays a poll. Each library is opened while
//! the process that maps it is known to be alive and attached through that open file
//! (`/proc/self/fd/N`), so a process exiting meanwhile cannot make the attach fail.
//!
//! Processes whose TLS Kite cannot see (Go's `crypto/tls`, statically linked OpenSSL or
//! BoringSSL as in Node and Envoy, rustls) are reported: [`Tls::unsupported`], and one log
//! line per binary.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    io::Read,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray},
    programs::{
        BtfTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use log::{debug, info, warn};

use crate::{Error, ebpf::Kite};

/// How often the processes of the attached cgroups are scanned: a process started in a
/// measured cgroup is measured within this (plus one poll).
pub const RESCAN: Duration = Duration::from_secs(2);
/// A scan's own deadline: processes not looked at by then are left for the next scan (the
/// report says how many; a partial scan detaches nothing). An executable being searched
/// when it passes is searched to its end ([`MAX_EXE_SCAN`] bounds that).
pub const SCAN_DEADLINE: Duration = Duration::from_secs(5);

const ENTRY: &str = "kite_ssl_entry";
const RET: &str = "kite_ssl_ret";
const FREE: &str = "kite_ssl_free";
/// The HTTP/2 machine over TLS plaintext, tail-called by [`RET`] through [`TAILS_MAP`] slot 0.
const H2: &str = "kite_ssl_h2";
const TAILS_MAP: &str = "TLS_TAILS";
/// The tracepoint programs and the kernel tracepoints they run on.
const TRACEPOINTS: [(&str, &str); 3] = [
    ("kite_tls_send", "sock_send_length"),
    ("kite_tls_recv", "sock_recv_length"),
    ("kite_tls_sock_state", "inet_sock_set_state"),
];
const CGROUPS_MAP: &str = "TLS_CGROUPS";
/// The TLS programs' counters and their slots (the kernel's `TLS_STAT_*`).
const STATS_MAP: &str = "TLS_STATS";
const STAT_REBOUND: u32 = 0;
const STAT_STALE_CLOSE: u32 = 1;
const STAT_H2: u32 = 2;
const STAT_H2_OPENED: u32 = 3;
/// Bound of [`CGROUPS_MAP`] (the kernel map's `max_entries`): cgroups beyond are not
/// measured, and said in a warning.
pub const MAX_CGROUPS: usize = 4096;
/// Most processes looked at per scan; beyond, the rest are skipped (a warning says so).
pub const MAX_PROCESSES: usize = 65_536;
/// Most distinct libssl files probed at once.
pub const MAX_LIBRARIES: usize = 256;
/// Most executables whose kind is remembered between scans (forgotten all at once beyond).
const MAX_EXE_CACHE: usize = 4096;
/// Bytes of an executable searched for a statically linked TLS stack.
const MAX_EXE_SCAN: u64 = 512 << 20;

/// Attach cookies of [`ENTRY`] (the kernel's `CALL_READ`, `CALL_EX`).
const CALL_READ: u64 = 1;
const CALL_EX: u64 = 2;
/// The OpenSSL functions probed: name and cookie.
const CALLS: [(&str, u64); 4] = [
    ("SSL_read", CALL_READ),
    ("SSL_read_ex", CALL_READ | CALL_EX),
    ("SSL_write", 0),
    ("SSL_write_ex", CALL_EX),
];

/// A file: device (as `/proc/PID/maps` prints it, `major:minor`) and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// Device, `major << 20 | minor` (the kernel's encoding).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

struct Lib {
    /// The path the first process that mapped it gave it.
    path: String,
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// A process whose TLS Kite does not see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// Process id.
    pub pid: u32,
    /// Its executable (as `/proc/PID/exe` names it).
    pub exe: String,
    /// What its TLS is: `go`, `static-openssl`, `rustls`.
    pub kind: &'static str,
}

/// What one scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Processes looked at.
    pub processes: usize,
    /// Processes listed in a `cgroup.procs` that were gone before their maps (or the library
    /// they map) could be read: they exited during the scan, nothing to probe for them.
    pub vanished: usize,
    /// Processes left for the next scan: [`SCAN_DEADLINE`] passed first.
    pub deferred: usize,
    /// The file-system part of the scan (off the data-plane thread for [`Tls::tick`]).
    pub took: Duration,
    /// cgroups measured (the attached ones and their descendants).
    pub cgroups: usize,
    /// Distinct libssl files probed after the scan.
    pub libraries: usize,
    /// Files newly probed.
    pub attached: Vec<String>,
    /// Files no longer probed.
    pub detached: Vec<String>,
}

/// Counters of the TLS programs kept in their own map (`TLS_STATS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// An `SSL*` with state did I/O on another recognised socket (OpenSSL reused it for a
    /// new connection): the old state's finished requests recorded, the rest counted as the
    /// HTTP machine's release counts them, and a fresh state started.
    pub rebound: u64,
    /// A socket reached `TCP_CLOSE` after its `SSL*` had moved to another connection: the
    /// close was ignored (it would have ended the new connection's state).
    pub stale_closes: u64,
    /// TLS connections carrying HTTP/2 (their plaintext starts with the client preface)
    /// that found the kernel's HTTP/2-in-TLS states full (1 024): not measured.
    pub h2_unsupported: u64,
    /// TLS connections carrying HTTP/2, measured by the HTTP/2 machine.
    pub h2_opened: u64,
}

/// The uprobe side of TLS: which files are probed and for which cgroups.
#[derive(Default)]
pub struct Tls {
    loaded: bool,
    /// Loading the programs failed once (said then): not tried again.
    broken: bool,
    libs: BTreeMap<FileId, Lib>,
    cgroups: BTreeSet<u64>,
    unsupported: Vec<Unsupported>,
    /// Files that could not be probed (logged once each).
    failed: BTreeSet<FileId>,
    /// The synchronous [`Tls::scan`]'s own file-system side.
    discoverer: Discoverer,
    /// The scan thread of [`Tls::tick`] (started at the first tick).
    background: Option<Background>,
    /// When [`Tls::tick`] last started a scan.
    last_start: Option<Instant>,
    /// The system refused the scan thread (said once): [`Tls::tick`] scans synchronously.
    no_thread: bool,
}

/// The file-system side of a scan, with what it remembers between scans.
#[derive(Default)]
struct Discoverer {
    /// Executable → its static TLS kind (`None`: none found).
    exe_kinds: HashMap<FileId, Option<&'static str>>,
    /// Executables reported in the log already.
    logged: BTreeSet<FileId>,
}

/// A libssl a scanned process maps, opened while that process was alive.
struct Found {
    pid: u32,
    /// Its path in the process's mount namespace.
    path: String,
    /// The open file: attached through `/proc/self/fd/N`.
    file: fs::File,
}

/// What the file-system side of a scan found.
struct Discovery {
    cgroups: BTreeSet<u64>,
    /// The libraries to probe, opened (at most [`MAX_LIBRARIES`]).
    wanted: BTreeMap<FileId, Found>,
    /// Every library a scanned process maps (probed ones stay probed).
    seen: BTreeSet<FileId>,
    unsupported: Vec<Unsupported>,
    processes: usize,
    vanished: usize,
    deferred: usize,
    took: Duration,
}

/// The scan thread: roots in, discoveries out.
struct Background {
    tx: mpsc::Sender<Vec<PathBuf>>,
    rx: mpsc::Receiver<Discovery>,
    in_flight: bool,
}

fn load_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    Error::Load(Box::new(e))
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, Error> {
    ebpf.program_mut(name).ok_or_else(|| Error::Io {
        what: format!("the eBPF object has no program {name}"),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

impl Tls {
    /// Nothing probed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The TLS programs' own counters (`TLS_STATS`, summed over the CPUs; zero when the map
    /// cannot be read).
    pub fn kernel_counters(kite: &mut Kite) -> KernelCounters {
        let Some(Ok(arr)) = kite
            .ebpf_mut()
            .map(STATS_MAP)
            .map(PerCpuArray::<&MapData, u64>::try_from)
        else {
            return KernelCounters::default();
        };
        let sum = |slot: u32| -> u64 {
            arr.get(&slot, 0)
                .map(|v| v.iter().copied().fold(0u64, u64::wrapping_add))
                .unwrap_or(0)
        };
        KernelCounters {
            rebound: sum(STAT_REBOUND),
            stale_closes: sum(STAT_STALE_CLOSE),
            h2_unsupported: sum(STAT_H2),
            h2_opened: sum(STAT_H2_OPENED),
        }
    }

    /// Processes (of the last scan) whose TLS Kite does not see.
    pub fn unsupported(&self) -> &[Unsupported] {
        &self.unsupported
    }

    /// Files probed now, by the path they were found at.
    pub fn libraries(&self) -> impl Iterator<Item = &str> {
        self.libs.values().map(|l| l.path.as_str())
    }

    /// Loads the TLS programs now (the verifier takes ≈ 0.9 s over `kite_ssl_ret` here), so
    /// that the first scan finding a libssl only attaches: the data plane calls it at its
    /// start, before it polls. Otherwise the first scan that finds a libssl loads them.
    pub fn prepare(&mut self, kite: &mut Kite) -> Result<(), Error> {
        if self.broken || self.loaded {
            return Ok(());
        }
        let r = self.load(kite.ebpf_mut());
        self.broken = r.is_err();
        r
    }

    /// Loads the uprobe programs and attaches the socket tracepoints (once).
    fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), Error> {
        if self.loaded {
            return Ok(());
        }
        for name in [ENTRY, RET, FREE, H2] {
            let p: &mut UProbe = program(ebpf, name)?.try_into().map_err(load_error)?;
            p.load().map_err(load_error)?;
            if let Some(n) = p.info().ok().and_then(|i| i.verified_instruction_count()) {
                debug!("{name}: {n} instructions verified");
            }
        }
        let p: &mut UProbe = program(ebpf, H2)?.try_into().map_err(load_error)?;
        let fd = p
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(load_error)?;
        let mut tails: ProgramArray<&mut MapData> = ebpf
            .map_mut(TAILS_MAP)
            .ok_or_else(|| Error::Io {
                what: format!("the eBPF object has no map {TAILS_MAP}"),
                source: std::io::ErrorKind::NotFound.into(),
            })?
            .try_into()
            .map_err(load_error)?;
        tails.set(0, &fd, 0).map_err(load_error)?;
        let btf = Btf::from_sys_fs().map_err(load_error)?;
        for (name, tp) in TRACEPOINTS {
            let p: &mut BtfTracePoint = program(ebpf, name)?.try_into().map_err(load_error)?;
            p.load(tp, &btf).map_err(load_error)?;
            p.attach().map_err(|e| Error::Attach {
                action: "attaching",
                program: name,
                cgroup: format!("tp_btf/{tp}"),
                source: Box::new(e),
            })?;
        }
        self.loaded = true;
        Ok(())
    }

    /// Scans the processes of `kite`'s attached cgroups: probes the libssl files they map,
    /// unprobes those none maps any more, and updates the measured cgroups. Synchronous (the
    /// caller waits for the file-system work); the agent's data plane uses [`Tls::tick`].
    pub fn scan(&mut self, kite: &mut Kite) -> Result<ScanReport, Error> {
        let d = self
            .discoverer
            .discover(&roots(kite), Instant::now() + SCAN_DEADLINE);
        self.apply(kite, d)
    }

    /// The data plane's scan, every [`RESCAN`], never waiting for the file system: starts a
    /// scan on the scan thread when one is due, and applies a finished one (`Some`). A scan
    /// still running is not started again.
    pub fn tick(&mut self, kite: &mut Kite) -> Option<Result<ScanReport, Error>> {
        if self.background.is_none() && !self.no_thread {
            self.background = spawn_background();
            self.no_thread = self.background.is_none();
        }
        if self.no_thread {
            // No thread (said once in the log): scan here, every RESCAN.
            if self.last_start.is_some_and(|t| t.elapsed() < RESCAN) {
                return None;
            }
            self.last_start = Some(Instant::now());
            return Some(self.scan(kite));
        }
        let bg = self.background.as_mut()?;
        if bg.in_flight {
            match bg.rx.try_recv() {
                Ok(d) => {
                    bg.in_flight = false;
                    return Some(self.apply(kite, d));
                }
                Err(mpsc::TryRecvError::Empty) => return None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    warn!("TLS: the scan thread stopped; starting another");
                    self.background = None;
                    return None;
                }
            }
        }
        if self.last_start.is_none_or(|t| t.elapsed() >= RESCAN) {
            self.last_start = Some(Instant::now());
            if bg.tx.send(roots(kite)).is_ok() {
                bg.in_flight = true;
            } else {
                self.background = None;
            }
        }
        None
    }

    /// Applies a discovery: the measured cgroups, attaches and detaches.
    fn apply(&mut self, kite: &mut Kite, d: Discovery) -> Result<ScanReport, Error> {
        let Discovery {
            cgroups,
            wanted,
            seen,
            unsupported,
            processes,
            vanished,
            deferred,
            took,
        } = d;
        let mut report = ScanReport {
            processes,
            vanished,
            deferred,
            took,
            ..ScanReport::default()
        };
        self.unsupported = unsupported;
        if self.broken {
            return Ok(report);
        }
        if !wanted.is_empty()
            && !self.loaded
            && let Err(e) = self.load(kite.ebpf_mut())
        {
            self.broken = true;
            return Err(e);
        }
        if self.loaded {
            self.set_cgroups(kite.ebpf_mut(), &cgroups)?;
        }
        report.cgroups = self.cgroups.len();
        // Detach what nobody maps any more (known only from a scan that saw every process).
        let gone: Vec<FileId> = self
            .libs
            .keys()
            .filter(|id| deferred == 0 && !seen.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(lib) = self.libs.remove(&id) {
                detach(kite.ebpf_mut(), lib.links);
                info!(
                    "TLS: {} no longer probed (no measured process maps it)",
                    lib.path
                );
                report.detached.push(lib.path);
            }
        }
        self.failed.retain(|id| seen.contains(id));
        for (id, Found { pid, path, file }) in wanted {
            if self.libs.contains_key(&id) || self.failed.contains(&id) {
                continue;
            }
            if self.libs.len() >= MAX_LIBRARIES {
                warn!(
                    "TLS: {MAX_LIBRARIES} libssl files probed already; {path} (pid {pid}) is not"
                );
                self.failed.insert(id);
                continue;
            }
            let open = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            let attached = attach(kite.ebpf_mut(), &open);
            drop(file);
            match attached {
                Ok(links) => {
                    info!(
                        "TLS: probing {path} (device {}:{}, inode {}, found in pid {pid})",
                        id.dev >> 20,
                        id.dev & 0xfffff,
                        id.ino
                    );
                    report.attached.push(path.clone());
                    self.libs.insert(id, Lib { path, links });
                }
                Err(e) => {
                    warn!("TLS: probing {path} (pid {pid}) failed: {e}");
                    self.failed.insert(id);
                }
            }
        }
        report.libraries = self.libs.len();
        Ok(report)
    }

    /// Makes the kernel's measured-cgroup set equal to `want` (at most [`MAX_CGROUPS`]).
    fn set_cgroups(&mut self, ebpf: &mut Ebpf, want: &BTreeSet<u64>) -> Result<(), Error> {
        let mut map: BpfHashMap<&mut MapData, u64, u8> = ebpf
            .map_mut(CGROUPS_MAP)
            .ok_or_else(|| Error::Io {
                what: format!("the eBPF object has no map {CGROUPS_MAP}"),
                source: std::io::ErrorKind::NotFound.into(),
            })?
            .try_into()
            .map_err(|e| Error::Map {
                map: CGROUPS_MAP,
                source: Box::new(e),
            })?;
        let want: BTreeSet<u64> = want.iter().copied().take(MAX_CGROUPS).collect();
        for id in self.cgroups.difference(&want) {
            let _ = map.remove(id);
        }
        for id in want.difference(&self.cgroups) {
            map.insert(id, 1, 0).map_err(|e| Error::Map {
                map: CGROUPS_MAP,
                source: Box::new(e),
            })?;
        }
        self.cgroups = want;
        Ok(())
    }
}

impl Discoverer {
    /// The file-system side of a scan of the cgroups under `roots`: stops looking at more
    /// processes at `deadline`.
    fn discover(&mut self, roots: &[PathBuf], deadline: Instant) -> Discovery {
        let started = Instant::now();
        let mut cgroups = BTreeSet::new();
        let mut pids = Vec::new();
        for root in roots {
            walk(root, &mut cgroups, &mut pids);
        }
        if cgroups.len() > MAX_CGROUPS {
            warn!(
                "TLS: {} cgroups under the attached ones, only {MAX_CGROUPS} are measured",
                cgroups.len()
            );
        }
        if pids.len() > MAX_PROCESSES {
            warn!(
                "TLS: {} processes in the attached cgroups, only {MAX_PROCESSES} are scanned",
                pids.len()
            );
            pids.truncate(MAX_PROCESSES);
        }
        pids.sort_unstable();
        pids.dedup();
        let mut d = Discovery {
            cgroups,
            wanted: BTreeMap::new(),
            seen: BTreeSet::new(),
            unsupported: Vec::new(),
            processes: 0,
            vanished: 0,
            deferred: 0,
            took: Duration::ZERO,
        };
        let mut over = 0usize;
        for (i, &pid) in pids.iter().enumerate() {
            if Instant::now() >= deadline {
                d.deferred = pids.len() - i;
                break;
            }
            d.processes += 1;
            match libssl_of(pid) {
                Maps::Gone => d.vanished += 1,
                Maps::Libssl(id, path, open) => {
                    if !d.seen.insert(id) {
                        continue;
                    }
                    if d.wanted.len() >= MAX_LIBRARIES {
                        over += 1;
                        continue;
                    }
                    // Opened now, while the process is known to be alive: the attach goes
                    // through this file even if the process exits meanwhile.
                    match fs::File::open(&open) {
                        Ok(file) => {
                            d.wanted.insert(id, Found { pid, path, file });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            d.seen.remove(&id);
                            d.vanished += 1;
                        }
                        Err(e) => debug!("TLS: opening {} (pid {pid}): {e}", open.display()),
                    }
                }
                Maps::NoLibssl => {
                    if let Some(u) = self.static_tls(pid) {
                        d.unsupported.push(u);
                    }
                }
            }
        }
        if over > 0 {
            warn!(
                "TLS: {over} more libssl files than the {MAX_LIBRARIES} probed at most: not probed"
            );
        }
        d.took = started.elapsed();
        d
    }

    /// The static TLS stack of a process's executable, reported once per binary in the log.
    fn static_tls(&mut self, pid: u32) -> Option<Unsupported> {
        let exe_link = PathBuf::from(format!("/proc/{pid}/exe"));
        let meta = fs::metadata(&exe_link).ok()?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        if self.exe_kinds.len() >= MAX_EXE_CACHE && !self.exe_kinds.contains_key(&id) {
            self.exe_kinds.clear();
        }
        let kind = *self
            .exe_kinds
            .entry(id)
            .or_insert_with(|| static_tls_kind(&exe_link));
        let kind = kind?;
        let exe = fs::read_link(&exe_link)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| exe_link.display().to_string());
        if self.logged.len() >= MAX_EXE_CACHE {
            self.logged.clear();
        }
        if self.logged.insert(id) {
            let what = match kind {
                "go" => "Go's crypto/tls",
                "rustls" => "rustls",
                _ => "a statically linked OpenSSL/BoringSSL",
            };
            warn!(
                "TLS: {exe} (pid {pid}) uses {what}, which Kite does not probe: its HTTPS traffic is not measured"
            );
        }
        Some(Unsupported { pid, exe, kind })
    }
}

/// The roots of a scan: the attached cgroups' directories.
fn roots(kite: &Kite) -> Vec<PathBuf> {
    kite.attachments().map(|a| a.cgroup.dir.clone()).collect()
}

/// Starts the scan thread (`None`, said in the log, when the system refuses a thread).
fn spawn_background() -> Option<Background> {
    let (tx, requests) = mpsc::channel::<Vec<PathBuf>>();
    let (results, rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("kite-tls-scan".into())
        .spawn(move || {
            let mut d = Discoverer::default();
            while let Ok(roots) = requests.recv() {
                let found = d.discover(&roots, Instant::now() + SCAN_DEADLINE);
                if results.send(found).is_err() {
                    break;
                }
            }
        });
    match spawned {
        Ok(_) => Some(Background {
            tx,
            rx,
            in_flight: false,
        }),
        Err(e) => {
            warn!("TLS: no scan thread ({e}); scanning on the data-plane thread");
            None
        }
    }
}

/// Collects the cgroup ids (directory inodes) under `dir` and the processes in them.
fn walk(dir: &Path, cgroups: &mut BTreeSet<u64>, pids: &mut Vec<u32>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if cgroups.len() > MAX_CGROUPS * 4 {
            return;
        }
        let Ok(meta) = fs::metadata(&d) else { continue };
        cgroups.insert(meta.ino());
        if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
}

/// What a process's `/proc/PID/maps` says about libssl.
enum Maps {
    /// Its file id, the path in its mount namespace, and a path the agent can open it through
    /// (`/proc/PID/map_files/START-END`).
    Libssl(FileId, String, PathBuf),
    NoLibssl,
    /// The process is gone (its maps cannot be read).
    Gone,
}

fn libssl_of(pid: u32) -> Maps {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Maps::Gone;
    };
    match parse_maps(&maps) {
        Some((id, path, range)) => Maps::Libssl(
            id,
            path.to_string(),
            PathBuf::from(format!("/proc/{pid}/map_files/{range}")),
        ),
        None => Maps::NoLibssl,
    }
}

/// The first executable mapping of a `libssl.so*` in a `/proc/PID/maps` text: file id, path
/// and address range.
fn parse_maps(maps: &str) -> Option<(FileId, &str, &str)> {
    for line in maps.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(dev), Some(ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some(path) = f.next() else { continue };
        let base = path.rsplit('/').next().unwrap_or(path);
        if !base.starts_with("libssl.so") || !perms.contains('x') {
            continue;
        }
        let (maj, min) = dev.split_once(':')?;
        let dev = (u64::from_str_radix(maj, 16).ok()? << 20) | u64::from_str_radix(min, 16).ok()?;
        let ino = ino.parse().ok()?;
        return Some((FileId { dev, ino }, path, range));
    }
    None
}

/// What statically linked TLS an executable carries, from the names it contains.
fn static_tls_kind(exe: &Path) -> Option<&'static str> {
    const NEEDLES: [(&[u8], &str); 4] = [
        (b"crypto/tls.(*Conn).Read", "go"),
        (b"rustls", "rustls"),
        (b"SSL_write_ex", "static-openssl"),
        (b"SSL_CTX_new", "static-openssl"),
    ];
    let mut f = fs::File::open(exe).ok()?.take(MAX_EXE_SCAN);
    let mut buf = vec![0u8; 1 << 20];
    let keep = 64;
    let mut have = 0;
    loop {
        let n = f.read(&mut buf[have..]).ok()?;
        if n == 0 {
            return None;
        }
        let end = have + n;
        for (needle, kind) in NEEDLES {
            if buf[..end].windows(needle.len()).any(|w| w == needle) {
                return Some(kind);
            }
        }
        let tail = end.saturating_sub(keep);
        buf.copy_within(tail..end, 0);
        have = end - tail;
    }
}

/// Most bytes of a libssl read to find its internal functions.
const MAX_LIB_READ: u64 = 64 << 20;

/// File offsets of OpenSSL 3's `ssl_read_internal` and `ssl_write_internal`, the functions
/// `SSL_read`, `SSL_read_ex`, `SSL_write` and `SSL_write_ex` all call with `(SSL *, buf, num,
/// size_t *done)` (1 on success): found as the targets of the `_ex` forms' first
/// instruction pair, `sub $8,%rsp; call rel32`, and checked to start with a `push` (x86
/// uprobes emulate `push`, so their breakpoint needs no out-of-line step, which costs
/// ≈ 25 µs a hit on this machine: `kite-bench tls-cost`). `None` for any other layout.
fn internal_functions(path: &Path) -> Option<(u64, u64)> {
    let mut data = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_LIB_READ)
        .read_to_end(&mut data)
        .ok()?;
    let read = call_target(&data, dynsym_offset(&data, "SSL_read_ex")?)?;
    let write = call_target(&data, dynsym_offset(&data, "SSL_write_ex")?)?;
    Some((read, write))
}

/// The file offset of `sub $8,%rsp; call rel32` at `at`'s call target, when it starts with a
/// `push` (`50+r`, or `41 50+r`).
fn call_target(data: &[u8], at: usize) -> Option<u64> {
    let code = data.get(at..at + 9)?;
    if code[..5] != [0x48, 0x83, 0xec, 0x08, 0xe8] {
        return None;
    }
    let rel = i32::from_le_bytes(code[5..9].try_into().ok()?);
    // Addresses equal file offsets inside one section (checked by the caller's section).
    let target = (at as i64 + 9 + rel as i64) as usize;
    let first = data.get(target..target + 2)?;
    let push = (0x50..=0x57).contains(&first[0])
        || (first[0] == 0x41 && (0x50..=0x57).contains(&first[1]));
    push.then_some(target as u64)
}

/// The file offset of dynamic symbol `name` in an ELF64 little-endian file, when its section
/// maps addresses to file offsets one to one (so a `call`'s target inside it is one too).
fn dynsym_offset(data: &[u8], name: &str) -> Option<usize> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    if data.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let section = |i: usize| -> Option<(u32, u64, u64, u64, u32)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        // sh_type, sh_addr, sh_offset, sh_size, sh_link
        Some((
            u32_at(h + 4)?,
            u64_at(h + 0x10)?,
            u64_at(h + 0x18)?,
            u64_at(h + 0x20)?,
            u32_at(h + 0x28)?,
        ))
    };
    const SHT_DYNSYM: u32 = 11;
    let (_, _, symoff, symsize, link) = (0..shnum.min(4096))
        .filter_map(section)
        .find(|s| s.0 == SHT_DYNSYM)?;
    let (_, _, stroff, strsize, _) = section(link as usize)?;
    let strtab = data.get(stroff as usize..(stroff + strsize) as usize)?;
    for i in 0..(symsize / 24).min(1 << 20) {
        let e = (symoff + i * 24) as usize;
        let st_name = u32_at(e)? as usize;
        let Some(n) = strtab.get(st_name..) else {
            continue;
        };
        let n = &n[..n.iter().position(|&b| b == 0).unwrap_or(n.len())];
        if n != name.as_bytes() {
            continue;
        }
        let shndx = u16_at(e + 6)? as usize;
        let value = u64_at(e + 8)?;
        let (_, addr, off, size, _) = section(shndx)?;
        if addr != off || value < addr || value >= addr + size {
            return None;
        }
        return Some(value as usize);
    }
    None
}

/// Attaches the probe set to the library at `path`: on OpenSSL 3's two internal functions
/// when [`internal_functions`] finds them (two entry probes and two return probes, none
/// stepped out of line at its breakpoint), else on the four public ones.
fn attach(ebpf: &mut Ebpf, path: &Path) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
    let mut links = Vec::new();
    let internal = internal_functions(path);
    let r = (|| {
        if let Some((read, write)) = internal {
            for (off, cookie) in [(read, CALL_READ | CALL_EX), (write, CALL_EX)] {
                for name in [ENTRY, RET] {
                    let p: &mut UProbe = program(ebpf, name)
                        .map_err(|e| e.to_string())?
                        .try_into()
                        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
                    let point = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(off),
                        cookie: (name == ENTRY).then_some(cookie),
                    };
                    let l = p
                        .attach(point, path, UProbeScope::AllProcesses)
                        .map_err(|e| format!("internal function at {off:#x}: {e}"))?;
                    links.push((name, l));
                }
            }
        }
        for (sym, cookie) in CALLS {
            if internal.is_some() {
                break;
            }
            for name in [ENTRY, RET] {
                let p: &mut UProbe = program(ebpf, name)
                    .map_err(|e| e.to_string())?
                    .try_into()
                    .map_err(|e: aya::programs::ProgramError| e.to_string())?;
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::Symbol(sym),
                    cookie: (name == ENTRY).then_some(cookie),
                };
                match p.attach(point, path, UProbeScope::AllProcesses) {
                    Ok(l) => links.push((name, l)),
                    // OpenSSL before 1.1.1 has no `_ex` forms.
                    Err(e) if sym.ends_with("_ex") => debug!("TLS: {sym}: {e}"),
                    Err(e) => return Err(format!("{sym}: {e}")),
                }
            }
        }
        let p: &mut UProbe = program(ebpf, FREE)
            .map_err(|e| e.to_string())?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        links.push((
            FREE,
            p.attach("SSL_free", path, UProbeScope::AllProcesses)
                .map_err(|e| format!("SSL_free: {e}"))?,
        ));
        Ok(())
    })();
    match r {
        Ok(()) => Ok(links),
        Err(e) => {
            detach(ebpf, links);
            Err(e)
        }
    }
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (name, link) in links {
        if let Some(p) = ebpf
            .program_mut(name)
            .and_then(|p| <&mut UProbe>::try_from(p).ok())
            && let Err(e) = p.detach(link)
        {
            warn!("TLS: detaching {name}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_openssl_3s_internal_read_and_write() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !lib.exists() {
            return;
        }
        let (read, write) = internal_functions(lib).expect("this machine's OpenSSL 3.0");
        assert_ne!(read, write);
        assert!(internal_functions(Path::new("/bin/sh")).is_none());
    }

    #[test]
    fn finds_the_executable_libssl_mapping() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000050000 r-xp 00001000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000060000-7f0000070000 r-xp 00001000 fe:01 99 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
";
        let (id, path, range) = parse_maps(maps).unwrap();
        assert_eq!(
            id,
            FileId {
                dev: (0xfe << 20) | 1,
                ino: 1234
            }
        );
        assert_eq!(path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert_eq!(range, "7f0000001000-7f0000050000");
        assert!(parse_maps("7f-80 r-xp 0 fe:01 5 /usr/lib/libssl3.so.x\n").is_none());
        assert!(parse_maps("7f-80 r-xp 0 00:00 0 \n").is_none());
    }
}
