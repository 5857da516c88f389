//! An impaired network link between two network namespaces, for tests that need what a real
//! network does to TCP: loss, duplication, delay, reordering, and chosen segments lost or held
//! back by rule.
//!
//! This kernel has no netem, so the link is made in user space: each namespace gets a tun
//! device (`IFF_TUN | IFF_NO_PI`, MTU 1500, no offloads, so segments are wire-sized), and two
//! forwarder threads of the test process move IP packets between the two devices, one thread
//! per direction, deciding for every packet what happens to it. Decisions are deterministic
//! for a given packet sequence (a seeded RNG per direction, reset whenever the direction's
//! [`Impair`] is replaced); the packet sequence itself depends on TCP's timing.
//!
//! ```no_run
//! use std::time::Duration;
//! use kite_testkit::impair::{Dir, Impair, Link, Rule};
//!
//! let link = Link::new("demo");
//! // A → B: 5 % loss, 10 % of the packets held back 3 ms (later ones overtake them), 1 ms.
//! link.set_both(
//!     Impair::default()
//!         .loss(0.05)
//!         .reorder(0.10, Duration::from_millis(3))
//!         .delay(Duration::from_millis(1)),
//! );
//! // B → A: also hold back every segment starting with a status line by 5 ms.
//! link.set(
//!     Dir::BtoA,
//!     Impair::default().rule(Rule::hold_prefix(b"HTTP/1.1 ", Duration::from_millis(5))),
//! );
//! let server = link.b().run_in(|| std::net::TcpListener::bind((Link::B_ADDR, 8080)).unwrap());
//! // ... a client in `link.a()` connects to `Link::B_ADDR:8080` ...
//! assert!(link.counts(Dir::BtoA).held > 0);
//! ```
//!
//! Everything (threads, devices, namespaces) is removed when the [`Link`] drops, also when a
//! test panics. Declare the link before the servers that run in its namespaces, so they are
//! stopped first.

use std::{
    collections::{BTreeSet, BinaryHeap, HashSet},
    fs,
    net::Ipv4Addr,
    ops::Sub,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{Netns, Rng, run_ok};

/// A direction of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Packets sent by namespace A to namespace B.
    AtoB,
    /// Packets sent by namespace B to namespace A.
    BtoA,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::AtoB => 0,
            Dir::BtoA => 1,
        }
    }
}

/// What a [`Rule`] looks for in a TCP segment (IPv4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// A segment whose TCP payload starts with these bytes.
    PayloadPrefix(Vec<u8>),
    /// The first segment with payload seen on each connection (per direction).
    FirstPayload,
    /// Any segment with payload.
    AnyPayload,
}

/// What a [`Rule`] does to a segment it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Lose it.
    Drop,
    /// Hold it back this long (on top of the link's delay), so later packets overtake it.
    Hold(Duration),
    /// Send it twice.
    Duplicate,
}

/// A rule applied to TCP segments before the random impairments. The first rule that matches
/// a segment applies; the random ones then still apply to it unless it was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matcher: Match,
    pub action: Action,
    /// Fire at most once per connection (4-tuple): e.g. drop a segment once and let its
    /// retransmission through.
    pub once_per_conn: bool,
}

impl Rule {
    /// Hold back every segment whose payload starts with `prefix` by `hold`.
    pub fn hold_prefix(prefix: &[u8], hold: Duration) -> Self {
        Self {
            matcher: Match::PayloadPrefix(prefix.to_vec()),
            action: Action::Hold(hold),
            once_per_conn: false,
        }
    }

    /// Drop every segment whose payload starts with `prefix` once per connection (its
    /// retransmission passes, unless it is dropped at random).
    pub fn drop_prefix_once(prefix: &[u8]) -> Self {
        Self {
            matcher: Match::PayloadPrefix(prefix.to_vec()),
            action: Action::Drop,
            once_per_conn: true,
        }
    }

    /// Drop the first segment with payload of each connection, once.
    pub fn drop_first_payload() -> Self {
        Self {
            matcher: Match::FirstPayload,
            action: Action::Drop,
            once_per_conn: true,
        }
    }

    /// Fire at most once per connection.
    pub fn once(mut self) -> Self {
        self.once_per_conn = true;
        self
    }
}

/// What happens to the packets of one direction. The default passes everything unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Impair {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is sent twice.
    pub duplicate: f64,
    /// Fixed delay of every packet.
    pub delay: Duration,
    /// Probability that a packet is held back by [`Impair::reorder_by`] on top of the delay,
    /// so the packets behind it overtake it.
    pub reorder: f64,
    pub reorder_by: Duration,
    /// Rules on TCP segments, tried in order.
    pub rules: Vec<Rule>,
    /// Seed of the direction's RNG (any value; 0 is replaced by a fixed non-zero one).
    pub seed: u64,
}

impl Default for Impair {
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            delay: Duration::ZERO,
            reorder: 0.0,
            reorder_by: Duration::ZERO,
            rules: Vec::new(),
            seed: 0x6b69_7465_6c69_6e6b,
        }
    }
}

impl Impair {
    pub fn loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }
    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    pub fn reorder(mut self, p: f64, by: Duration) -> Self {
        self.reorder = p;
        self.reorder_by = by;
        self
    }
    pub fn rule(mut self, r: Rule) -> Self {
        self.rules.push(r);
        self
    }
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
}

/// What a direction did since the link was made. Subtract two readings for an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets read from the sending side.
    pub packets: u64,
    /// Packets written to the receiving side (duplicates included).
    pub forwarded: u64,
    /// Packets lost (at random or by rule).
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Packets held back (at random for reordering, or by rule).
    pub held: u64,
    /// Packets written while a packet that arrived before them was still held: the reorders
    /// that really happened.
    pub overtaken: u64,
    /// Segments a [`Rule`] applied to.
    pub rule_hits: u64,
    /// Writes to the receiving device that failed.
    pub write_errors: u64,
}

impl Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            packets: self.packets - o.packets,
            forwarded: self.forwarded - o.forwarded,
            dropped: self.dropped - o.dropped,
            duplicated: self.duplicated - o.duplicated,
            held: self.held - o.held,
            overtaken: self.overtaken - o.overtaken,
            rule_hits: self.rule_hits - o.rule_hits,
            write_errors: self.write_errors - o.write_errors,
        }
    }
}

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    held: AtomicU64,
    overtaken: AtomicU64,
    rule_hits: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn read(&self) -> Counts {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            packets: r(&self.packets),
            forwarded: r(&self.forwarded),
            dropped: r(&self.dropped),
            duplicated: r(&self.duplicated),
            held: r(&self.held),
            overtaken: r(&self.overtaken),
            rule_hits: r(&self.rule_hits),
            write_errors: r(&self.write_errors),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

struct DirState {
    config: Mutex<Impair>,
    generation: AtomicU64,
    counters: Counters,
}

struct Shared {
    stop: AtomicBool,
    dirs: [DirState; 2],
}

/// Two network namespaces joined by an impaired point-to-point link. See the module docs.
pub struct Link {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    // Dropped after the threads are joined: closing a tun device's last fd removes it.
    _tuns: [Arc<OwnedFd>; 2],
    /// Device names, in A and in B.
    devs: [String; 2],
    a: Netns,
    b: Netns,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a new tun device in the calling thread's network namespace; returns its fd and name.
fn open_tun(name: &str) -> (OwnedFd, String) {
    assert!(name.len() < libc::IFNAMSIZ, "tun name {name} too long");
    // SAFETY: plain syscall with a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) };
    assert!(
        rc == 0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    let len = req.name.iter().position(|&c| c == 0).unwrap_or(0);
    (fd, String::from_utf8_lossy(&req.name[..len]).into_owned())
}

impl Link {
    /// Address of namespace A's end of the link.
    pub const A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
    /// Address of namespace B's end of the link.
    pub const B_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);

    /// Two new namespaces joined by a link that passes everything unchanged until told
    /// otherwise ([`Link::set`]).
    pub fn new(name: &str) -> Self {
        let a = Netns::new(&format!("{name}-a"));
        let b = Netns::new(&format!("{name}-b"));
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            dirs: [(); 2].map(|_| DirState {
                config: Mutex::new(Impair::default()),
                generation: AtomicU64::new(0),
                counters: Counters::default(),
            }),
        });
        let tag = crate::unique("");
        // `unique` gives "-<pid>-<n>": keep the name short and free of dashes.
        let tag: String = tag.chars().filter(|c| c.is_ascii_digit()).collect();
        let tag = &tag[tag.len().saturating_sub(10)..];
        let mut tuns = Vec::new();
        let mut devs = Vec::new();
        // Create the devices here, then move them; the fds keep working in the namespace.
        for (ns, side, local, peer) in [
            (&a, 'a', Self::A_ADDR, Self::B_ADDR),
            (&b, 'b', Self::B_ADDR, Self::A_ADDR),
        ] {
            let (fd, dev) = open_tun(&format!("kt{tag}{side}"));
            run_ok(Command::new("ip").args(["link", "set", &dev, "netns", &ns.name]));
            let ip = |args: &[&str]| {
                run_ok(Command::new("ip").args(["-n", &ns.name]).args(args));
            };
            // No IPv6 on the link: no router solicitations or DAD in the packet counts.
            let _ = Command::new("ip")
                .args(["netns", "exec", &ns.name, "sysctl", "-qw"])
                .arg(format!("net.ipv6.conf.{dev}.disable_ipv6=1"))
                .status();
            ip(&[
                "addr",
                "add",
                &local.to_string(),
                "peer",
                &format!("{peer}/32"),
                "dev",
                &dev,
            ]);
            ip(&[
                "link",
                "set",
                "dev",
                &dev,
                "mtu",
                "1500",
                "txqueuelen",
                "1000",
                "up",
            ]);
            tuns.push(Arc::new(fd));
            devs.push(dev);
        }
        let devs: [String; 2] = [devs[0].clone(), devs[1].clone()];
        let tuns: [Arc<OwnedFd>; 2] = [tuns[0].clone(), tuns[1].clone()];
        let mut threads = Vec::new();
        for dir in [Dir::AtoB, Dir::BtoA] {
            let (src, dst) = match dir {
                Dir::AtoB => (tuns[0].clone(), tuns[1].clone()),
                Dir::BtoA => (tuns[1].clone(), tuns[0].clone()),
            };
            let shared = shared.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("impair-{dir:?}"))
                    .spawn(move || Forwarder::new(dir, shared).run(&src, &dst))
                    .expect("spawn forwarder"),
            );
        }
        Self {
            shared,
            threads,
            _tuns: tuns,
            devs,
            a,
            b,
        }
    }

    /// Namespace A (address [`Link::A_ADDR`]).
    pub fn a(&self) -> &Netns {
        &self.a
    }

    /// Namespace B (address [`Link::B_ADDR`]).
    pub fn b(&self) -> &Netns {
        &self.b
    }

    /// Replaces the impairments of one direction (its RNG and rule state start again).
    pub fn set(&self, dir: Dir, imp: Impair) {
        let d = &self.shared.dirs[dir.index()];
        *d.config.lock().unwrap_or_else(|e| e.into_inner()) = imp;
        d.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The same impairments both ways (B → A with a different seed, so the two directions do
    /// not lose the same packet numbers).
    pub fn set_both(&self, imp: Impair) {
        let seed = imp.seed;
        self.set(Dir::BtoA, imp.clone().seed(seed.rotate_left(17) ^ 0x9e37));
        self.set(Dir::AtoB, imp);
    }

    /// What a direction did so far.
    pub fn counts(&self, dir: Dir) -> Counts {
        self.shared.dirs[dir.index()].counters.read()
    }
}

impl Link {
    /// Packets the kernel dropped at the two tun devices (a full queue while the forwarder
    /// lagged): losses nobody asked for, which tests can check are 0.
    pub fn kernel_drops(&self) -> u64 {
        let mut n = 0;
        for (ns, dev) in [(&self.a, &self.devs[0]), (&self.b, &self.devs[1])] {
            let out = run_ok(
                Command::new("ip").args(["-n", &ns.name, "-s", "-j", "link", "show", "dev", dev]),
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j JSON");
            let stats = &v[0]["stats64"];
            for dir in ["rx", "tx"] {
                n += stats[dir]["dropped"].as_u64().expect("dropped counter");
            }
        }
        n
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Then the tun fds close (removing the devices) and the namespaces are deleted.
    }
}

impl Netns {
    /// Moves the calling thread into this namespace. Only for threads the test made for it
    /// (see [`Netns::run_in`]); new threads it spawns start in the namespace too.
    pub fn enter_thread(&self) {
        enter_netns(&self.name);
    }

    /// Runs `f` on a new thread inside this namespace and returns its result (panics are
    /// passed on). Sockets made there belong to the namespace for their whole life, whichever
    /// thread uses them later.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        thread::scope(|s| {
            let h = s.spawn(|| {
                self.enter_thread();
                f()
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Starts `f` on a new thread inside this namespace.
    pub fn spawn_in<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> JoinHandle<R> {
        let name = self.name.clone();
        thread::spawn(move || {
            enter_netns(&name);
            f()
        })
    }
}

fn enter_netns(name: &str) {
    let path = format!("/run/netns/{name}");
    let f = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: plain syscall on an open namespace file.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert!(rc == 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// A TCP connection as one direction sees it: (source, source port, destination, port).
type Flow = (u32, u16, u32, u16);

/// A TCP segment's connection and payload.
struct Segment<'a> {
    flow: Flow,
    payload: &'a [u8],
}

fn tcp_segment(p: &[u8]) -> Option<Segment<'_>> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != libc::IPPROTO_TCP as u8 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
    // Fragments other than the first carry no TCP header.
    if u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0 || total < ihl + 20 {
        return None;
    }
    let t = &p[ihl..total];
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < 20 || doff > t.len() {
        return None;
    }
    let src = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
    let dst = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
    let sport = u16::from_be_bytes([t[0], t[1]]);
    let dport = u16::from_be_bytes([t[2], t[3]]);
    Some(Segment {
        flow: (src, sport, dst, dport),
        payload: &t[doff..],
    })
}

/// A packet waiting for its release time; the heap pops the earliest (then the first read).
struct Pending {
    at: Instant,
    seq: u64,
    packet: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Bound on per-connection rule state (flows); cleared when exceeded.
const MAX_FLOWS: usize = 1 << 16;

struct Forwarder {
    dir: Dir,
    shared: Arc<Shared>,
    generation: u64,
    config: Impair,
    rng: Rng,
    /// Flows that already had a segment with payload.
    had_payload: HashSet<Flow>,
    /// (rule, flow) pairs of once-per-connection rules that fired.
    fired: HashSet<(usize, Flow)>,
    heap: BinaryHeap<Pending>,
    /// Read order numbers of the packets in the heap (the first copy's, for duplicates).
    waiting: BTreeSet<u64>,
    next_seq: u64,
}

impl Forwarder {
    fn new(dir: Dir, shared: Arc<Shared>) -> Self {
        Self {
            dir,
            shared,
            generation: u64::MAX,
            config: Impair::default(),
            rng: Rng(1),
            had_payload: HashSet::new(),
            fired: HashSet::new(),
            heap: BinaryHeap::new(),
            waiting: BTreeSet::new(),
            next_seq: 0,
        }
    }

    fn state(&self) -> &DirState {
        &self.shared.dirs[self.dir.index()]
    }

    fn refresh(&mut self) {
        let g = self.state().generation.load(Ordering::SeqCst);
        if g != self.generation {
            self.generation = g;
            let config = self
                .state()
                .config
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            self.config = config;
            self.rng = Rng(if self.config.seed == 0 {
                0x1234_5678_9abc_def1
            } else {
                self.config.seed
            });
            self.had_payload.clear();
            self.fired.clear();
        }
    }

    /// A uniform number in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Decides what happens to a packet: `None` when lost, else (copies, extra hold).
    fn decide(&mut self, p: &[u8]) -> Option<(u32, Duration)> {
        let shared = self.shared.clone();
        let c = &shared.dirs[self.dir.index()].counters;
        let mut copies = 1u32;
        let mut hold = Duration::ZERO;
        if let Some(seg) = tcp_segment(p).filter(|s| !s.payload.is_empty()) {
            if self.had_payload.len() >= MAX_FLOWS {
                self.had_payload.clear();
            }
            if self.fired.len() >= MAX_FLOWS {
                self.fired.clear();
            }
            let first = self.had_payload.insert(seg.flow);
            let hit = self.config.rules.iter().enumerate().find(|(i, r)| {
                let matches = match &r.matcher {
                    Match::PayloadPrefix(pre) => seg.payload.starts_with(pre),
                    Match::FirstPayload => first,
                    Match::AnyPayload => true,
                };
                matches && !(r.once_per_conn && self.fired.contains(&(*i, seg.flow)))
            });
            if let Some((i, r)) = hit {
                bump(&c.rule_hits);
                if r.once_per_conn {
                    self.fired.insert((i, seg.flow));
                }
                match r.action {
                    Action::Drop => {
                        bump(&c.dropped);
                        return None;
                    }
                    Action::Hold(d) => {
                        bump(&c.held);
                        hold += d;
                    }
                    Action::Duplicate => {
                        bump(&c.duplicated);
                        copies += 1;
                    }
                }
            }
        }
        // Always draw the same numbers per packet, so one impairment's setting does not shift
        // the others' choices.
        let (l, d, r) = (self.unit(), self.unit(), self.unit());
        if l < self.config.loss {
            bump(&c.dropped);
            return None;
        }
        if d < self.config.duplicate {
            bump(&c.duplicated);
            copies += 1;
        }
        if r < self.config.reorder && !self.config.reorder_by.is_zero() {
            bump(&c.held);
            hold += self.config.reorder_by;
        }
        Some((copies, hold))
    }

    fn release_due(&mut self, dst: RawFd) {
        let now = Instant::now();
        while self.heap.peek().is_some_and(|p| p.at <= now) {
            let p = self.heap.pop().expect("peeked");
            let c = &self.shared.dirs[self.dir.index()].counters;
            self.waiting.remove(&p.seq);
            // A packet read before this one is still waiting: this one overtook it.
            if self.waiting.first().is_some_and(|&s| s < p.seq) {
                bump(&c.overtaken);
            }
            // SAFETY: writing a buffer we own to an open fd.
            let n = unsafe { libc::write(dst, p.packet.as_ptr().cast(), p.packet.len()) };
            if n == p.packet.len() as isize {
                bump(&c.forwarded);
            } else {
                bump(&c.write_errors);
            }
        }
    }

    fn run(mut self, src: &OwnedFd, dst: &OwnedFd) {
        let mut buf = vec![0u8; 65536];
        while !self.shared.stop.load(Ordering::SeqCst) {
            self.refresh();
            self.release_due(dst.as_raw_fd());
            let wait = self
                .heap
                .peek()
                .map_or(Duration::from_millis(50), |p| {
                    p.at.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(50));
            let mut pfd = libc::pollfd {
                fd: src.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ts = libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            };
            // SAFETY: one valid pollfd, a valid timespec, no signal mask.
            let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            if rc <= 0 {
                continue;
            }
            // Everything that is there now, bounded so due packets are not starved.
            for _ in 0..256 {
                // SAFETY: reading into a buffer we own from an open non-blocking fd.
                let n = unsafe { libc::read(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                let now = Instant::now();
                let packet = &buf[..n as usize];
                bump(&self.state().counters.packets);
                let Some((copies, hold)) = self.decide(packet) else {
                    continue;
                };
                let at = now + self.config.delay + hold;
                let seq = self.next_seq;
                self.next_seq += u64::from(copies);
                self.waiting.insert(seq);
                for k in 0..copies {
                    self.heap.push(Pending {
                        at,
                        seq: seq + u64::from(k),
                        packet: packet.to_vec(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{Shutdown, SocketAddr, TcpListener, TcpStream},
        process::Command,
    };

    use super::*;

    fn root(test: &str) -> bool {
        crate::ebpf_available(test)
    }

    fn netns_names() -> String {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    }

    /// A server in B that reads everything until EOF and sends it back, one connection.
    fn echo_server(link: &Link, port: u16) -> JoinHandle<()> {
        let l = link
            .b()
            .run_in(|| TcpListener::bind((Link::B_ADDR, port)).unwrap());
        thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            s.write_all(&all).unwrap();
        })
    }

    /// Sends `data` through the link and returns what came back.
    fn round_trip(link: &Link, port: u16, data: &[u8]) -> Vec<u8> {
        let srv = echo_server(link, port);
        let back = link.a().run_in(|| {
            let mut s = TcpStream::connect(SocketAddr::from((Link::B_ADDR, port))).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(data).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).unwrap();
            back
        });
        srv.join().unwrap();
        back
    }

    #[test]
    fn impair_tcp_transfer_through_loss_arrives_intact() {
        if !root("impair_tcp_transfer_through_loss_arrives_intact") {
            return;
        }
        let link = Link::new("loss");
        link.set_both(
            Impair::default()
                .loss(0.05)
                .reorder(0.10, Duration::from_millis(2))
                .delay(Duration::from_millis(1)),
        );
        let data = Rng(42).bytes(1 << 20);
        let back = round_trip(&link, 7000, &data);
        assert!(back == data, "{} bytes came back altered", back.len());
        let (ab, ba) = (link.counts(Dir::AtoB), link.counts(Dir::BtoA));
        eprintln!("  A→B {ab:?}\n  B→A {ba:?}");
        assert!(ab.dropped > 0 && ba.dropped > 0);
        assert!(ab.held > 0 && ab.overtaken > 0);
        // Roughly 5 %: with ≈ 1000 segments each way, far from 1 % or 10 %.
        let ratio = ab.dropped as f64 / ab.packets as f64;
        assert!((0.02..0.09).contains(&ratio), "A→B loss ratio {ratio}");
        assert_eq!(ab.write_errors + ba.write_errors, 0);
        assert_eq!(
            link.kernel_drops(),
            0,
            "the devices lost packets themselves"
        );
    }

    #[test]
    fn impair_hold_back_rule_delivers_held_segment_after_a_later_one() {
        if !root("impair_hold_back_rule_delivers_held_segment_after_a_later_one") {
            return;
        }
        let link = Link::new("hold");
        link.set(
            Dir::AtoB,
            Impair::default().rule(Rule::hold_prefix(b"FIRST", Duration::from_millis(100))),
        );
        let port = 7001;
        let l = link
            .b()
            .run_in(|| TcpListener::bind((Link::B_ADDR, port)).unwrap());
        let srv = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = vec![0u8; 11];
            s.read_exact(&mut got).unwrap();
            let at = Instant::now();
            (got, at)
        });
        let sent = link.a().run_in(|| {
            let mut s = TcpStream::connect(SocketAddr::from((Link::B_ADDR, port))).unwrap();
            s.set_nodelay(true).unwrap();
            let sent = Instant::now();
            s.write_all(b"FIRST").unwrap();
            thread::sleep(Duration::from_millis(5));
            s.write_all(b"SECOND").unwrap();
            thread::sleep(Duration::from_millis(300));
            sent
        });
        let (got, at) = srv.join().unwrap();
        assert_eq!(&got, b"FIRSTSECOND");
        let c = link.counts(Dir::AtoB);
        eprintln!("  A→B {c:?}, FIRST readable after {:?}", at - sent);
        assert!(c.rule_hits >= 1 && c.held >= 1);
        // SECOND went out while FIRST was held.
        assert!(c.overtaken >= 1, "{c:?}");
        // The application could read FIRST only once the held segment (or its
        // retransmission) arrived, after SECOND.
        assert!(at - sent >= Duration::from_millis(5));
    }

    #[test]
    fn impair_drop_first_payload_once_and_duplicates_and_delay() {
        if !root("impair_drop_first_payload_once_and_duplicates_and_delay") {
            return;
        }
        let link = Link::new("dup");
        link.set(
            Dir::AtoB,
            Impair::default()
                .duplicate(0.5)
                .delay(Duration::from_millis(20))
                .rule(Rule::drop_first_payload()),
        );
        link.set(
            Dir::BtoA,
            Impair::default().delay(Duration::from_millis(20)),
        );
        let data = Rng(7).bytes(100_000);
        let t = Instant::now();
        let back = round_trip(&link, 7002, &data);
        let took = t.elapsed();
        assert!(back == data);
        // Let the last packets (FIN, ACKs) through their delay.
        thread::sleep(Duration::from_millis(300));
        let c = link.counts(Dir::AtoB);
        eprintln!("  A→B {c:?} in {took:?}");
        assert_eq!(
            c.rule_hits, 1,
            "one connection, its first payload dropped once"
        );
        assert!(c.dropped >= 1 && c.duplicated > 0);
        assert_eq!(c.forwarded, c.packets - c.dropped + c.duplicated);
        // Handshake, data and FIN each cross a 40 ms round trip at least once.
        assert!(took >= Duration::from_millis(80), "{took:?}");
    }

    #[test]
    fn impair_link_is_removed_on_drop_and_on_panic() {
        if !root("impair_link_is_removed_on_drop_and_on_panic") {
            return;
        }
        let names = {
            let link = Link::new("gone");
            let names = (link.a().name.clone(), link.b().name.clone());
            let all = netns_names();
            assert!(all.contains(&names.0) && all.contains(&names.1));
            // The devices live in the namespaces, with their addresses.
            let out = link.a().run(&["ip", "-4", "addr"]);
            assert!(String::from_utf8_lossy(&out.stdout).contains("10.201.0.1 peer 10.201.0.2"));
            names
        };
        let all = netns_names();
        assert!(!all.contains(&names.0) && !all.contains(&names.1), "{all}");
        let r = std::panic::catch_unwind(|| {
            let link = Link::new("panic");
            let n = link.b().name.clone();
            std::panic::panic_any(n);
        });
        let n = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(!netns_names().contains(&n));
    }
}
