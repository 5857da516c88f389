//! Kite's kernel programs.
//!
//! * `kite_ingress` / `kite_egress` (`cgroup_skb`): every IPv4/IPv6 TCP packet of the attached
//!   cgroup's sockets. Packets of tracked HTTP connections go through the shared state machine
//!   ([`kite_common::http::Conn`]); a completed request updates the per-CPU histogram of its
//!   endpoint. Nothing per request is sent to user space.
//!   Connection state lives in the socket (socket-local storage, `SOCKETS`), created for
//!   established sockets only.
//! * `kite_listener` (`cgroup_skb`, reached by tail call from `kite_ingress`): data that arrives
//!   on a listening socket (deferred accept, a lost final handshake ACK) is parsed on a state
//!   parked by address in `PENDING`; the connection's socket takes it over with its first
//!   packet.
//! * `kite_sock_release` (`cgroup/sock_release`): records what a closing socket still holds and
//!   marks its state dead.
//! * `kite_sock_state` (`tp_btf/inet_sock_set_state`): a socket reaching `TCP_CLOSE` loses its
//!   state (recorded first if it was never released).
//!
//! The packet programs always return 1: packets are never dropped or changed.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no compare-and-swap, so `core`'s atomics offer no
// `fetch_add`; the intrinsic compiles to the BPF atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod h2;
mod route;
mod tls;

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE, BPF_TCP_CLOSE,
        BPF_TCP_ESTABLISHED, BPF_TCP_LISTEN, bpf_sock,
    },
    btf_maps::SkStorage,
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_loop, bpf_sk_fullsock, bpf_sk_storage_delete, bpf_sk_storage_get,
            bpf_skb_cgroup_id, bpf_skb_load_bytes, bpf_tcp_sock,
        },
    },
    macros::{btf_map, btf_tracepoint, cgroup_skb, cgroup_sock, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, ProgramArray},
    programs::{BtfTracePointContext, SkBuffContext, SockContext},
};
use kite_common::{
    h2::opens_h2,
    hist,
    http::{
        Completion, Conn, MAX_STEPS, Payload, ROLE_CLIENT, ROLE_SERVER, START_LEN, Scratch,
        Segment, Sink, WINDOW, opens_connection,
    },
    maps::{
        BudgetKey, DEFAULT_BUDGET_DIVISOR, DEFAULT_MAX_BUDGETS, DEFAULT_MAX_ENDPOINTS,
        DEFAULT_MAX_OVERFLOW, DEFAULT_MAX_PENDING, DEFAULT_MAX_SOCKETS, Direction, EndpointKey,
        EndpointStats, LIVE_H2_SOCKETS, LIVE_PENDING, LIVE_PENDING_SWEPT, LIVE_SLOTS, LIVE_SOCKETS,
        PendingKey, Protocol, RPC_OTHER, STAT_COUNT, Stat, TRANSPORT_TCP,
    },
};

/// [`Conn::role`] of a state whose socket was released: nothing more is measured on it.
const ROLE_NONE: u8 = 0;

/// Connection state of tracked HTTP connections, in the socket itself (socket-local storage):
/// the kernel frees it with the socket. Bounded softly by [`MAX_SOCKETS`] (live states are
/// counted in [`LIVE`]); beyond, new connections are not tracked ([`Stat::SocketsMapFull`]).
#[btf_map(name = "SOCKETS")]
static SOCKETS: SkStorage<Conn> = SkStorage::new();

/// Soft bound on live connection states; set by the loader.
#[unsafe(no_mangle)]
static MAX_SOCKETS: u32 = DEFAULT_MAX_SOCKETS;

#[inline(always)]
fn max_sockets() -> u64 {
    // SAFETY: reading a global; volatile so the loader's value is used, not the default.
    unsafe { core::ptr::read_volatile(&MAX_SOCKETS) as u64 }
}

/// Live-entry counts (`LIVE_*` slots), updated with atomic adds: user space reads the number
/// of connection states with one lookup (socket storage cannot be listed).
#[map(name = "LIVE")]
static LIVE: Array<u64> = Array::with_max_entries(LIVE_SLOTS, 0);

/// Connections whose data reached their listener before their socket existed, by address.
/// Bounded; when full, such a connection's first request is not counted
/// ([`Stat::PendingFull`]). Entries move to the socket with its first packet.
#[map(name = "PENDING")]
static PENDING: HashMap<PendingKey, Conn> =
    HashMap::with_max_entries(DEFAULT_MAX_PENDING, BPF_F_NO_PREALLOC);

/// Slot 0: `kite_listener`, slot 1: `kite_h2_ingress`, slot 2: `kite_h2_hold` (egress has its
/// own array, `TAILS_TX`). The listener path is a tail call because a state pointer into
/// `PENDING` and one into `SOCKETS` are different types to the verifier: inlined in one program,
/// the parser would be verified twice (twice the instructions, a deeper stack).
#[map(name = "TAILS")]
pub(crate) static TAILS: ProgramArray = ProgramArray::with_max_entries(3, 0);

/// [`TAILS`] slot of `kite_listener`.
const TAIL_LISTENER: u32 = 0;

/// [`TAILS`] slot of `kite_h2_ingress`.
pub(crate) const TAIL_H2: u32 = 1;

/// [`TAILS`] slot of `kite_h2_hold` (received HTTP/2 segments held beyond a gap: copied,
/// then parsed once the gap is).
pub(crate) const TAIL_H2_HOLD: u32 = 2;

/// Per-endpoint histograms. Bounded; when full, requests of new keys are recorded in their
/// overflow endpoint ([`Stat::EndpointsMapFull`], [`OVERFLOW`]).
#[map(name = "ENDPOINTS")]
static ENDPOINTS: PerCpuHashMap<EndpointKey, EndpointStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

/// Distinct endpoint keys each (cgroup, direction) may hold in [`ENDPOINTS`]; set by the loader.
#[unsafe(no_mangle)]
static ENDPOINT_BUDGET: u32 = DEFAULT_MAX_ENDPOINTS / DEFAULT_BUDGET_DIVISOR;

#[inline(always)]
fn endpoint_budget() -> u64 {
    // SAFETY: reading a global; volatile so the loader's value is used, not the default.
    unsafe { core::ptr::read_volatile(&ENDPOINT_BUDGET) as u64 }
}

/// Live endpoint keys per (cgroup, direction), overflow keys excluded: raised here when a key
/// is inserted, lowered by the agent when it removes entries. Preallocated (an insert never
/// fails for memory); when full, further pairs go unbudgeted ([`Stat::BudgetsMapFull`]).
#[map(name = "BUDGETS")]
static BUDGETS: HashMap<BudgetKey, u64> = HashMap::with_max_entries(DEFAULT_MAX_BUDGETS, 0);

/// Overflow endpoints (address `::`, port 0): requests beyond their (cgroup, direction)'s
/// budget, or whose own entry could not be allocated. One value shared by all CPUs,
/// preallocated and added to atomically: recording here never allocates. When full,
/// [`Stat::OverflowMapFull`].
#[map(name = "OVERFLOW")]
static OVERFLOW: HashMap<EndpointKey, EndpointStats> =
    HashMap::with_max_entries(DEFAULT_MAX_OVERFLOW, 0);

/// Self-metric counters, indexed by [`Stat`].
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Per-CPU working memory: the parser's segment cursor and payload window, and the copies of
/// the packet's headers (kept here rather than on the 512-byte stack, which the parser's call
/// chain needs).
///
/// The cursor lives here rather than on the stack on purpose: the verifier does not track the
/// values inside map memory, so the `bpf_loop` callback's states converge after one iteration
/// instead of being explored once per byte position. Every use is bounded by explicit checks.
#[repr(C)]
pub(crate) struct Work {
    seg: Segment,
    scratch: Scratch,
    /// The packet's first 40 bytes: an IPv4 header without options and the TCP header's first
    /// 20 bytes, or the IPv6 header. 8-aligned (copied word by word, see [`headers`]).
    hdr: [u8; 40],
    /// Address key of the packet's connection, for [`PENDING`].
    key: PendingKey,
    /// The TCP header's first 16 bytes.
    tcp: [u8; 16],
    /// Destination address (IPv6 or IPv4-mapped).
    dst: [u8; 16],
    /// First payload bytes, to decide whether tracking starts.
    head: [u8; START_LEN],
}

const _: () = assert!(core::mem::offset_of!(Work, hdr) % 8 == 0);

///
/// Two slots: a program interrupted on its CPU by a softirq (an egress program in process
/// context, a packet received meanwhile) must not find its cursor and window overwritten, so
/// each nesting level has its own (see [`enter`]).
#[map(name = "WORK")]
pub(crate) static WORK: PerCpuArray<Work> = PerCpuArray::with_max_entries(2, 0);

/// Per-CPU nesting depth of the `cgroup_skb` programs (process context, then softirq).
#[map(name = "NEST")]
static NEST: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Enters a program run: the [`WORK`] slot of this nesting level.
#[inline(always)]
pub(crate) fn enter() -> u32 {
    match NEST.get_ptr_mut(0) {
        // SAFETY: this CPU's value; an interrupting run restores it before this one resumes.
        Some(p) => unsafe {
            let d = *p;
            *p = d + 1;
            d & 1
        },
        None => 0,
    }
}

/// Leaves a program run (see [`enter`]).
#[inline(always)]
pub(crate) fn leave() {
    if let Some(p) = NEST.get_ptr_mut(0) {
        // SAFETY: as in `enter`.
        unsafe { *p = (*p).saturating_sub(1) };
    }
}

/// The endpoint key a record is built in, one per nesting level as [`WORK`]: in map memory
/// because the key on the stack put the deepest call chain over the verifier's 512 bytes.
#[map(name = "KEYS")]
static KEYS: PerCpuArray<EndpointKey> = PerCpuArray::with_max_entries(2, 0);

/// This run's [`KEYS`] slot (the [`enter`] level of the innermost run on this CPU).
#[inline(always)]
pub(crate) fn key_slot() -> *mut EndpointKey {
    let d = match NEST.get_ptr_mut(0) {
        // SAFETY: this CPU's value.
        Some(p) => unsafe { *p },
        None => 1,
    };
    KEYS.get_ptr_mut(d.wrapping_sub(1) & 1)
        .unwrap_or(core::ptr::null_mut())
}

/// Never written: the zero value new map entries are copied from (too big for the stack).
#[map(name = "ZERO_CONN")]
static ZERO_CONN: Array<Conn> = Array::with_max_entries(1, 0);

/// Never written: the zero histogram new endpoints start from.
#[map(name = "ZERO_STATS")]
static ZERO_STATS: Array<EndpointStats> = Array::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn bump(stat: Stat, n: u64) {
    bump_at(stat as u32, n);
}

/// Adds `n` to the [`STATS`] counter at index `i` (a [`Stat`] as `u32`).
#[inline(always)]
pub(crate) fn bump_at(i: u32, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(i) {
        // SAFETY: a per-CPU value of this CPU; programs do not migrate while running.
        unsafe { *p += n };
    }
}

const E2BIG: i32 = 7;
const EEXIST: i32 = 17;

/// Adds `n` to a `u64` shared by all CPUs, atomically.
#[inline(always)]
pub(crate) fn xadd64(p: *mut u64, n: u64) {
    // SAFETY: a map value; one atomic instruction.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}

/// The entry of an endpoint key not in [`ENDPOINTS`] yet, null if none: inserted within its
/// (cgroup, direction)'s budget. Beyond the budget, or when an insert fails while the map is
/// not full (the per-CPU allocation cache is empty in a burst of new keys; tried twice), the
/// request is recorded here in the pair's overflow endpoint (in [`OVERFLOW`], with its real
/// method and status) and null returned. Kept out of line: only requests of new keys (and
/// overflow requests) come here.
#[inline(never)]
fn new_endpoint(key: &mut EndpointKey, latency_ns: u64, req: u64, resp: u64) -> *mut EndpointStats {
    let Some(zero) = ZERO_STATS.get(0) else {
        return core::ptr::null_mut();
    };
    let bk = key.budget_key();
    let mut live = BUDGETS.get_ptr_mut(&bk);
    if live.is_none() {
        let _ = BUDGETS.insert(&bk, 0, BPF_NOEXIST as u64);
        live = BUDGETS.get_ptr_mut(&bk);
        if live.is_none() {
            bump(Stat::BudgetsMapFull, 1);
        }
    }
    match live {
        // SAFETY: a map value, read once.
        Some(n) if unsafe { core::ptr::read_volatile(n) } >= endpoint_budget() => {
            bump(Stat::EndpointBudgetOverflow, 1);
        }
        _ => {
            let mut r = ENDPOINTS.insert(&*key, zero, BPF_NOEXIST as u64);
            if r.is_err() && r != Err(-E2BIG) && r != Err(-EEXIST) {
                r = ENDPOINTS.insert(&*key, zero, BPF_NOEXIST as u64);
            }
            match r {
                Ok(()) => {
                    if let Some(n) = live {
                        xadd64(n, 1);
                    }
                }
                // Inserted by another CPU meanwhile.
                Err(e) if e == -EEXIST => {}
                // The map is full: the request still counts, in the overflow endpoint.
                Err(e) if e == -E2BIG => {
                    bump(Stat::EndpointsMapFull, 1);
                    return overflow(key, latency_ns, req, resp, zero);
                }
                Err(_) => {
                    bump(Stat::EndpointAllocFailed, 1);
                    return overflow(key, latency_ns, req, resp, zero);
                }
            }
            return match ENDPOINTS.get_ptr_mut(&*key) {
                Some(p) => p,
                None => {
                    bump(Stat::EndpointsMapFull, 1);
                    core::ptr::null_mut()
                }
            };
        }
    }
    overflow(key, latency_ns, req, resp, zero)
}

/// Records an exchange in the overflow endpoint of `key`'s (cgroup, direction, method, status).
#[inline(always)]
fn overflow(
    key: &mut EndpointKey,
    latency_ns: u64,
    req: u64,
    resp: u64,
    zero: &EndpointStats,
) -> *mut EndpointStats {
    key.addr = [0; 16];
    key.port = 0;
    let mut s = OVERFLOW.get_ptr_mut(&*key);
    if s.is_none() {
        let _ = OVERFLOW.insert(&*key, zero, BPF_NOEXIST as u64);
        s = OVERFLOW.get_ptr_mut(&*key);
    }
    let Some(s) = s else {
        bump(Stat::OverflowMapFull, 1);
        return core::ptr::null_mut();
    };
    let b = hist::bucket_index(latency_ns);
    // SAFETY: a map value shared by all CPUs: atomic adds only.
    unsafe {
        xadd64(&raw mut (*s).count, 1);
        xadd64(&raw mut (*s).latency_sum_ns, latency_ns);
        xadd64(&raw mut (*s).req_bytes, req);
        xadd64(&raw mut (*s).resp_bytes, resp);
        if b < hist::NUM_BUCKETS {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*s).buckets[b], 1);
        }
    }
    bump(Stat::Requests, 1);
    core::ptr::null_mut()
}

/// Records one finished exchange (an HTTP/1 request, an HTTP/2 stream, a TLS request) under
/// `key` (built by the caller in [`key_slot`]'s memory; `key` may be rewritten into its overflow
/// key): the endpoint's per-CPU histogram in [`ENDPOINTS`], created within its (cgroup,
/// direction)'s budget, else the overflow endpoint. Counts [`Stat::Requests`]. The one recording
/// path of every sink (HTTP/1 [`KernelSink`], HTTP/2 and TLS).
///
/// `on_new` is called when `key` is not in [`ENDPOINTS`]: it may change the key (a gRPC method
/// or HTTP/1 route beyond its endpoint's bound becomes `RPC_OTHER`) and returns whether it
/// did, so the changed key is looked up before a new entry is made.
#[inline(always)]
pub(crate) fn record_endpoint_with(
    key: &mut EndpointKey,
    latency_ns: u64,
    req: u64,
    resp: u64,
    on_new: impl FnOnce(&mut EndpointKey) -> bool,
) {
    let stats = match ENDPOINTS.get_ptr_mut(&*key) {
        Some(p) => p,
        None => {
            let found = if on_new(key) {
                ENDPOINTS.get_ptr_mut(&*key)
            } else {
                None
            };
            let p = match found {
                Some(p) => p,
                None => new_endpoint(key, latency_ns, req, resp),
            };
            if p.is_null() {
                return;
            }
            p
        }
    };
    let b = hist::bucket_index(latency_ns);
    // SAFETY: a per-CPU value of this CPU.
    unsafe {
        (*stats).count += 1;
        (*stats).latency_sum_ns += latency_ns;
        (*stats).req_bytes += req;
        (*stats).resp_bytes += resp;
        if b < hist::NUM_BUCKETS {
            (*stats).buckets[b] = (*stats).buckets[b].wrapping_add(1);
        }
    }
    bump(Stat::Requests, 1);
}

struct KernelSink;

/// A `101 Switching Protocols` exchange held back by [`KernelSink`] until the packet that
/// carried it is done (`h2::upgrade`): an `Upgrade: h2c` answered with `101` becomes HTTP/2
/// stream 1 (measured there, not here), any other switch is recorded as HTTP/1 as before.
#[repr(C)]
pub(crate) struct Upgrade {
    /// Address of the connection's [`Conn`] (0: nothing held).
    pub(crate) owner: u64,
    /// The exchange.
    pub(crate) done: Completion,
    /// When the packet carrying the end of the `101` was seen.
    pub(crate) now_ns: u64,
    /// Sequence number of the byte after the `101` response.
    pub(crate) resp_end: u32,
    /// Explicit padding.
    pub(crate) _pad: u32,
}

/// One [`Upgrade`] per nesting level, as [`WORK`].
#[map(name = "UPGRADE")]
pub(crate) static UPGRADE: PerCpuArray<Upgrade> = PerCpuArray::with_max_entries(2, 0);

/// This run's nesting level (the [`WORK`] / [`UPGRADE`] slot).
#[inline(always)]
pub(crate) fn level() -> u32 {
    match NEST.get_ptr_mut(0) {
        // SAFETY: this CPU's value.
        Some(p) => unsafe { (*p).wrapping_sub(1) & 1 },
        None => 0,
    }
}

/// Holds a `101` back (see [`Upgrade`]). (Recording it here instead would make the deepest
/// call chain one call deeper than the verifier allows.)
/// The exchange comes by value: a `&Completion` would put it on `Conn::complete`'s stack.
#[inline(never)]
fn hold_upgrade(conn: &Conn, latency_ns: u64, req_bytes: u64, resp_bytes: u64, method: u32) {
    let l = level();
    let (Some(u), Some(w)) = (UPGRADE.get_ptr_mut(l), WORK.get_ptr(l)) else {
        // Per-CPU array lookups within bounds do not fail.
        return;
    };
    // SAFETY: this CPU's map values.
    unsafe {
        (*u).owner = core::ptr::from_ref(conn) as u64;
        (*u).done = Completion {
            latency_ns,
            req_bytes,
            resp_bytes,
            status: 101,
            method: method as u8,
        };
        (*u).now_ns = (*w).seg.now_ns;
        (*u).resp_end = (*w).seg.seq.wrapping_add((*w).seg.pos);
    }
}

/// Records one HTTP/1 exchange of `conn`, read from TCP payload.
#[inline(always)]
pub(crate) fn record_http1(conn: &Conn, done: &Completion) {
    record_http1_over(conn, done, TRANSPORT_TCP);
}

/// Records one HTTP/1 exchange of `conn` carried by `transport` (TCP, or TLS plaintext).
#[inline(always)]
pub(crate) fn record_http1_over(conn: &Conn, done: &Completion, transport: u8) {
    let direction = if conn.role == ROLE_SERVER {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let key = key_slot();
    if key.is_null() {
        return;
    }
    // SAFETY: this run's slot of a per-CPU map (see `key_slot`).
    let key = unsafe { &mut *key };
    *key = EndpointKey {
        cgroup_id: conn.cgroup_id,
        addr: conn.addr,
        port: conn.port,
        status: done.status,
        direction: direction as u8,
        method: done.method,
        version: conn.response_version(),
        protocol: Protocol::Http as u8,
        rpc: conn.open_route(),
        transport,
        _pad: [0; 3],
    };
    // A route beyond its endpoint's bound becomes `_OTHER` (the bound gRPC methods have).
    record_endpoint_with(
        key,
        done.latency_ns,
        done.req_bytes,
        done.resp_bytes,
        |k: &mut EndpointKey| k.rpc > RPC_OTHER && h2::bound_rpc(k),
    );
}

impl Sink for KernelSink {
    #[inline(always)]
    fn record(&mut self, conn: &Conn, done: &Completion) {
        if done.status == 101 {
            // Nothing is live across this call (the packet programs' stack is at its limit).
            hold_upgrade(
                conn,
                done.latency_ns,
                done.req_bytes,
                done.resp_bytes,
                done.method as u32,
            );
            return;
        }
        record_http1(conn, done);
    }

    #[inline(always)]
    fn add(&mut self, stat: Stat, n: u64) {
        bump(stat, n);
    }

    #[inline(always)]
    fn route(&mut self, conn: &Conn, id: u32) {
        route::route_name(conn, id);
    }
}

/// Payload bytes of the packet, `base` being the offset of the TCP payload.
#[repr(C)]
pub(crate) struct Skb {
    pub(crate) skb: *mut __sk_buff,
    pub(crate) base: u32,
}

impl Payload for Skb {
    #[inline(always)]
    fn load(&mut self, off: u32, dst: &mut Scratch, len: u32) -> bool {
        // The verifier needs a 64-bit bound on `len`. A volatile read hides the value from LLVM,
        // so the mask and checks below are emitted as written instead of folded into the
        // caller's 32-bit arithmetic.
        let len = len as u64;
        // SAFETY: reading a local.
        let len = unsafe { core::ptr::read_volatile(&len) } & 0x1ff;
        if len == 0 || len > WINDOW as u64 {
            return false;
        }
        // SAFETY: `dst` has room for WINDOW bytes; the helper checks the packet bounds.
        unsafe {
            bpf_skb_load_bytes(
                self.skb as *const c_void,
                self.base + off,
                dst as *mut Scratch as *mut c_void,
                len as u32,
            ) == 0
        }
    }
}

/// What the `bpf_loop` callback needs; lives on the program's stack.
#[repr(C)]
struct Walk {
    conn: *mut Conn,
    work: *mut Work,
    skb: Skb,
}

/// One parser step per `bpf_loop` iteration; 1 stops the loop.
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on the caller's stack; its pointers are map values.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let (conn, work) = unsafe { (&mut *w.conn, &mut *w.work) };
    if conn.step(
        &mut work.seg,
        &mut work.scratch,
        &mut w.skb,
        &mut KernelSink,
    ) {
        0
    } else {
        1
    }
}

const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;

#[inline(always)]
pub(crate) fn mapped_v4(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// What the programs need of a TCP packet's headers besides the copies in [`Work`].
pub(crate) struct Tcp {
    /// Offset of the payload.
    pub(crate) base: u32,
    /// Payload length.
    pub(crate) len: u32,
    pub(crate) fin: bool,
}

impl Tcp {
    #[inline(always)]
    pub(crate) fn sport(w: &Work) -> u16 {
        u16::from_be_bytes([w.tcp[0], w.tcp[1]])
    }

    #[inline(always)]
    pub(crate) fn dport(w: &Work) -> u16 {
        u16::from_be_bytes([w.tcp[2], w.tcp[3]])
    }
}

/// The packet's source address (IPv4 mapped) into `w.key.remote`, from the IP header that
/// [`headers`] read into `w.hdr`.
#[inline(always)]
pub(crate) fn source(w: &mut Work) {
    if w.hdr[0] >> 4 == 4 {
        w.key.remote = mapped_v4([w.hdr[12], w.hdr[13], w.hdr[14], w.hdr[15]]);
    } else {
        w.key.remote.copy_from_slice(&w.hdr[8..24]);
    }
}

/// Copies `len` packet bytes at `off` to `dst` (map memory).
#[inline(always)]
pub(crate) fn load_bytes(ctx: &SkBuffContext, off: u32, dst: *mut u8, len: u32) -> Result<(), i64> {
    // SAFETY: `dst` has room for `len` bytes; the helper checks the packet bounds.
    let r = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const c_void, off, dst.cast(), len) };
    if r == 0 { Ok(()) } else { Err(r) }
}

/// Reads the IP and TCP headers into `w`; `None` for anything but a first (or only) TCP
/// fragment. With `src`, the source address goes to `w.key.remote`.
#[inline(always)]
pub(crate) fn headers(ctx: &SkBuffContext, w: &mut Work, src: bool) -> Result<Option<Tcp>, i64> {
    // One copy covers an IPv4 header without options and the TCP header's first 20 bytes
    // (every IPv4 TCP packet has them), or the whole IPv6 header: helper calls cost more than
    // the bytes. Read straight from the packet when its linear part holds them (TCP's headers
    // always are, in the kernel's receive and send paths), else through the helper.
    // SAFETY: context fields; the verifier turns them into packet pointers.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if data + 40 <= end {
        let from = data as *const u64;
        let to = w.hdr.as_mut_ptr().cast::<u64>();
        // SAFETY: 40 bytes of packet, bounds checked above; `hdr` is 8-aligned. The packet
        // may not be: BPF on this architecture loads unaligned packet words (the verifier
        // allows it, the JIT emits plain moves), and a word load is what is wanted here.
        unsafe {
            *to = *from;
            *to.add(1) = *from.add(1);
            *to.add(2) = *from.add(2);
            *to.add(3) = *from.add(3);
            *to.add(4) = *from.add(4);
        }
    } else {
        load_bytes(ctx, 0, w.hdr.as_mut_ptr(), 40)?;
    }
    let v = w.hdr[0] >> 4;
    let l4 = match v {
        4 => {
            let h = &w.hdr;
            let frag = u16::from_be_bytes([h[6], h[7]]);
            if h[9] != IPPROTO_TCP || frag & 0x1fff != 0 {
                return Ok(None);
            }
            let ihl = ((h[0] & 0x0f) as u32) * 4;
            if ihl == 20 {
                w.tcp.copy_from_slice(&w.hdr[20..36]);
            } else {
                load_bytes(ctx, ihl, w.tcp.as_mut_ptr(), 16)?;
            }
            let h = &w.hdr;
            w.dst = mapped_v4([h[16], h[17], h[18], h[19]]);
            ihl
        }
        6 => {
            if w.hdr[6] != IPPROTO_TCP {
                return Ok(None);
            }
            w.dst.copy_from_slice(&w.hdr[24..40]);
            load_bytes(ctx, 40, w.tcp.as_mut_ptr(), 16)?;
            40
        }
        _ => return Ok(None),
    };
    if src {
        source(w);
    }
    let doff = ((w.tcp[12] >> 4) as u32) * 4;
    let fin = w.tcp[13] & TCP_FIN != 0;
    let base = l4 + doff;
    let len = ctx.len().saturating_sub(base);
    Ok(Some(Tcp { base, len, fin }))
}

/// Adds `d` (wrapping: `u64::MAX` subtracts one) to a [`LIVE`] slot, atomically.
#[inline(always)]
pub(crate) fn live_add(slot: u32, d: u64) {
    if let Some(p) = LIVE.get_ptr_mut(slot) {
        // SAFETY: a map value; the add is one atomic instruction (`lock xadd`).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, d) };
    }
}

#[inline(always)]
pub(crate) fn live(slot: u32) -> u64 {
    // SAFETY: a map value, read once.
    LIVE.get_ptr(slot)
        .map_or(0, |p| unsafe { core::ptr::read_volatile(p) })
}

/// Whether [`PENDING`] may hold entries: the common path skips its lookups when it is empty.
#[inline(always)]
fn pending_live() -> bool {
    live(LIVE_PENDING) != live(LIVE_PENDING_SWEPT)
}

#[inline(always)]
fn sockets_ptr() -> *mut c_void {
    core::ptr::from_ref(&SOCKETS).cast_mut().cast()
}

/// The connection state of a socket, if it has one.
#[inline(always)]
pub(crate) fn storage(sk: *mut c_void) -> *mut Conn {
    // SAFETY: `sk` is a socket pointer checked by the verifier.
    unsafe { bpf_sk_storage_get(sockets_ptr(), sk, core::ptr::null_mut(), 0) }.cast()
}

/// Creates the state of a full socket, copied from `init` (zero if null). Another CPU may
/// have created it meanwhile: then that one is returned, with `false`.
#[inline(always)]
fn create(sk: *mut bpf_sock, init: *mut Conn) -> Option<(*mut Conn, bool)> {
    // SAFETY: as above; `init` is null or a map value of the same type.
    let c: *mut Conn = unsafe {
        bpf_sk_storage_get(
            sockets_ptr(),
            sk.cast(),
            init.cast(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast();
    if !c.is_null() {
        return Some((c, true));
    }
    let c = storage(sk.cast());
    if c.is_null() { None } else { Some((c, false)) }
}

/// Sockets whose stream did not start with an HTTP/1.x request: their packets return after
/// this one lookup. Decided only when Kite saw the stream's first byte (a connection Kite joins
/// midway is checked at every segment start until a request starts it). One byte per socket,
/// freed with it: bounded by the sockets of the enrolled cgroups.
#[btf_map(name = "VERDICTS")]
static VERDICTS: SkStorage<u8> = SkStorage::new();

#[inline(always)]
fn verdicts_ptr() -> *mut c_void {
    core::ptr::from_ref(&VERDICTS).cast_mut().cast()
}

/// Whether the packet's socket was judged not HTTP: checked before anything else, so such a
/// socket's packets touch nothing but their socket and this one value (each run of a bulk
/// transfer follows a large copy: every other line Kite would touch is a cache miss).
#[inline(always)]
fn judged_early(ctx: &SkBuffContext) -> bool {
    let sk = ctx_sock(ctx);
    !sk.is_null() && judged(sk)
}

/// Whether the socket was judged not HTTP.
#[inline(always)]
fn judged(sk: *mut bpf_sock) -> bool {
    // SAFETY: `sk` is a socket pointer checked by the verifier.
    !unsafe { bpf_sk_storage_get(verdicts_ptr(), sk.cast(), core::ptr::null_mut(), 0) }.is_null()
}

/// Judges the socket not HTTP (see [`VERDICTS`]).
#[inline(always)]
fn judge(sk: *mut bpf_sock) {
    // SAFETY: a full socket; the new value is zero.
    let v = unsafe {
        bpf_sk_storage_get(
            verdicts_ptr(),
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    };
    if !v.is_null() {
        bump(Stat::NotHttp, 1);
    }
}

/// Whether the packet carries the first byte of its direction's stream: nothing of it was
/// received (acknowledged, for sent data) before, and the segment starts where the stream does.
#[inline(always)]
fn stream_start(sk: *mut bpf_sock, w: &Work, rx: bool) -> bool {
    // SAFETY: plain helper call on a full socket; null-checked.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return false;
    }
    let seq = u32::from_be_bytes([w.tcp[4], w.tcp[5], w.tcp[6], w.tcp[7]]);
    // SAFETY: a TCP socket's fields, readable by this program type.
    unsafe {
        if rx {
            (*tp).bytes_received == 0 && seq == (*tp).rcv_nxt
        } else {
            // The acknowledgment of the SYN counts one byte (`tcp_snd_una_update`): a sent
            // stream's first byte is at `snd_una` with `bytes_acked` 1 (0 never happens once
            // established, so outbound streams were never judged).
            (*tp).bytes_acked <= 1 && seq == (*tp).snd_una
        }
    }
}

/// Whether the payload at `base` starts an HTTP message that opens tracking.
#[inline(always)]
fn starts_http(ctx: &SkBuffContext, w: &mut Work, base: u32, len: u32) -> Result<bool, i64> {
    let n = if len < START_LEN as u32 {
        len as usize
    } else {
        START_LEN
    };
    if n == START_LEN {
        load_bytes(ctx, base, w.head.as_mut_ptr(), START_LEN as u32)?;
    } else {
        w.head = [0; START_LEN];
        let mut i = 0;
        while i < START_LEN {
            if i < n {
                load_bytes(ctx, base + i as u32, &mut w.head[i], 1)?;
            }
            i += 1;
        }
    }
    Ok(opens_connection(&w.head, n))
}

/// Whether a stream starts like an HTTP/2 SETTINGS frame (length, type 4, flags, stream 0):
/// a server's first bytes, sent before the client preface may have arrived. Such a stream is
/// not judged, so that the preface still starts tracking.
#[inline(always)]
fn h2_settings(h: &[u8; START_LEN], n: usize) -> bool {
    n >= 9 && h[3] == 4 && h[5] == 0 && h[6] == 0 && h[7] == 0 && h[8] == 0 && h[0] == 0
}

/// For data coming in on a socket that has received none of its stream yet, ahead of the
/// stream's first byte: that byte's sequence number (`rcv_nxt`, the kernel's next expected).
#[inline(always)]
fn first_byte_ahead(sk: *mut bpf_sock, w: &Work) -> Option<u32> {
    // SAFETY: plain helper call on a full socket; null-checked.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return None;
    }
    // SAFETY: a TCP socket's fields, readable by this program type.
    let (nxt, got) = unsafe { ((*tp).rcv_nxt, (*tp).bytes_received) };
    let seq = u32::from_be_bytes([w.tcp[4], w.tcp[5], w.tcp[6], w.tcp[7]]);
    if got == 0 && (seq.wrapping_sub(nxt) as i32) > 0 {
        Some(nxt)
    } else {
        None
    }
}

/// The packet's socket (any kind: request and time-wait sockets too), if it has one.
#[inline(always)]
pub(crate) fn ctx_sock(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: reading the context's socket pointer.
    unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk }
}

/// The packet's full socket, if it has one.
#[inline(always)]
pub(crate) fn full_sock(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: reading the context's socket pointer; the helper accepts it or null-checks.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return sk;
        }
        bpf_sk_fullsock(sk)
    }
}

/// `BENCH`: the microbenchmark's copy of this path (`kite_bench`, run by `BPF_PROG_TEST_RUN`
/// on canned packets): the socket's state is a fresh copy of a canned one ([`bench_conn`]),
/// everything else is the real path.
#[inline(always)]
fn on_packet<const BENCH: bool>(ctx: &SkBuffContext, rx: bool, slot: u32) -> Result<(), i64> {
    bump(Stat::Packets, 1);
    let work = WORK.get_ptr_mut(slot).ok_or(0)?;
    // SAFETY: this CPU's map value; programs do not migrate while running.
    let w = unsafe { &mut *work };
    // A connection waiting in PENDING is taken over by its socket's first packet, usually the
    // ACK of the data that reached the listener: while something waits, bare ACKs look too.
    let claiming = pending_live();
    let Some(p) = headers(ctx, w, claiming)? else {
        return Ok(());
    };
    if BENCH && bench_stop(STOP_HEADERS) {
        return Ok(());
    }
    if p.len == 0 && !p.fin && !claiming {
        return Ok(());
    }
    // The storage helpers take the context's socket as it is (they return nothing for a
    // socket that is not a full one): the common path makes no `bpf_sk_fullsock` call.
    let sk = ctx_sock(ctx);
    if sk.is_null() {
        return Ok(());
    }
    let mut conn = storage(sk.cast());
    if BENCH {
        conn = bench_conn(sk.cast());
        if bench_stop(STOP_STORAGE) {
            return Ok(());
        }
    }
    if conn.is_null() {
        if judged(sk) {
            // Not HTTP: decided at the stream's first byte.
            return Ok(());
        }
        if !h2::h2_storage(sk.cast()).is_null() || (BENCH && bench_h2()) {
            // An HTTP/2 connection: parsed by `kite_h2_*`, which enter on their own.
            if p.len > 0 {
                leave();
                if BENCH {
                    bench_h2_tail(ctx);
                } else {
                    h2::tail(ctx, rx);
                }
                let _ = enter();
            }
            return Ok(());
        }
        // SAFETY: the context's socket, non-null.
        let sk = unsafe { bpf_sk_fullsock(sk) };
        if sk.is_null() {
            return Ok(());
        }
        // SAFETY: a full socket: `state` is readable.
        let state = if BENCH {
            BPF_TCP_ESTABLISHED
        } else {
            unsafe { (*sk).state }
        };
        if state == BPF_TCP_LISTEN {
            // Data on a listener: the connection's socket does not exist yet (deferred
            // accept, or the final handshake ACK was lost). Parsed by `kite_listener`.
            if rx && p.len > 0 {
                // `kite_listener` enters on its own: this run ends here if the jump works.
                leave();
                // SAFETY: jumps to a program of the same type; on failure nothing happens.
                unsafe { TAILS.tail_call(ctx, TAIL_LISTENER) };
                let _ = enter();
            }
            return Ok(());
        }
        if claiming {
            // `w.key.remote` holds the packet's source: the peer for a packet coming in.
            if rx {
                w.key.local = w.dst;
                w.key.local_port = Tcp::dport(w);
                w.key.remote_port = Tcp::sport(w);
            } else {
                w.key.local = w.key.remote;
                w.key.remote = w.dst;
                w.key.local_port = Tcp::sport(w);
                w.key.remote_port = Tcp::dport(w);
            }
            if let Some(pc) = PENDING.get_ptr_mut(&w.key) {
                if let Some((c, new)) = create(sk, pc) {
                    if new {
                        live_add(LIVE_SOCKETS, 1);
                        bump(Stat::ConnsOpened, 1);
                    }
                    if PENDING.remove(&w.key).is_ok() {
                        live_add(LIVE_PENDING, u64::MAX);
                        bump(Stat::PendingClaimed, 1);
                    }
                    conn = c;
                }
            }
        }
        if conn.is_null() {
            // Track a connection from its first request on, and only while it is established:
            // a request reaching a socket its server already closed starts nothing.
            if p.len == 0 || state != BPF_TCP_ESTABLISHED {
                return Ok(());
            }
            // A segment coming in ahead of the stream's very first byte (that one was lost or
            // overtaken): tracking starts at the first byte, whatever this segment looks like
            // (a body made of request lines must not become a request).
            let ahead_of = if rx { first_byte_ahead(sk, w) } else { None };
            if ahead_of.is_none() {
                let http = starts_http(ctx, w, p.base, p.len)?;
                let n = if p.len < START_LEN as u32 {
                    p.len as usize
                } else {
                    START_LEN
                };
                // The client preface (which HTTP/1 would take for a request with method
                // `PRI`) at the stream's first byte: an HTTP/2 connection (prior knowledge).
                if !BENCH && opens_h2(&w.head, n) && stream_start(sk, w, rx) {
                    if h2::open(ctx, sk, w, rx) {
                        leave();
                        h2::tail(ctx, rx);
                        let _ = enter();
                    }
                    return Ok(());
                }
                if !http {
                    // `BENCH`: a test run's socket has no TCP state (not at its stream's
                    // start); the join test runs, nothing is joined.
                    if stream_start(sk, w, rx) {
                        if !BENCH && !h2_settings(&w.head, n) {
                            tls::client_hello(ctx, sk, w, rx);
                            judge(sk);
                        }
                    } else if !(BENCH && bench_stop(STOP_JOIN))
                        && h2::join::<BENCH>(ctx, sk, w, rx, ((p.base as u64) << 32) | p.len as u64)
                    {
                        // Joined midway: `kite_h2_*` parses this packet.
                        leave();
                        h2::tail(ctx, rx);
                        let _ = enter();
                    }
                    return Ok(());
                }
            }
            if BENCH {
                // The dummy socket of a test run gets no state.
                return Ok(());
            }
            if live(LIVE_SOCKETS) >= max_sockets() {
                bump(Stat::SocketsMapFull, 1);
                return Ok(());
            }
            let Some((c, new)) = create(sk, core::ptr::null_mut()) else {
                bump(Stat::SocketsMapFull, 1);
                return Ok(());
            };
            if new {
                // The packet's destination is the endpoint either way: the server's own
                // address for a request coming in, the server's address for a request going out.
                let role = if rx { ROLE_SERVER } else { ROLE_CLIENT };
                // SAFETY: plain helper call; `c` points at the new storage.
                unsafe {
                    let cg = bpf_skb_cgroup_id(ctx.skb.skb);
                    (*c).init(role, cg, w.dst, Tcp::dport(w), bpf_ktime_get_ns());
                    if route::routes_on() {
                        (*c).enable_routes();
                    }
                    if let Some(first) = ahead_of {
                        (*c).start_rx_at(first);
                    }
                }
                live_add(LIVE_SOCKETS, 1);
                bump(Stat::ConnsOpened, 1);
            }
            conn = c;
        }
    }
    // SAFETY: socket storage of this socket.
    if unsafe { (*conn).role == ROLE_NONE || (*conn).ignored() } || (p.len == 0 && !p.fin) {
        // Released by its process (what still arrives is not measured), given up (not
        // HTTP/1.x, or upgraded: an `Upgrade: h2c` has an HTTP/2 state now), or a bare ACK.
        if !BENCH && p.len > 0 && unsafe { (*conn).role != ROLE_NONE && (*conn).ignored() } {
            // One instance per direction: a program may only reference its own direction's
            // program array (`h2::tail`).
            let _ = if rx {
                upgraded::<true>(ctx)
            } else {
                upgraded::<false>(ctx)
            };
        }
        return Ok(());
    }
    parse::<BENCH, false>(ctx, conn, work, rx, &p);
    Ok(())
}

/// A packet of a connection the HTTP/1 machine gave up: one that switched to HTTP/2
/// (`Upgrade: h2c`) goes to `kite_h2_*`. Out of line, as [`switched`].
#[inline(never)]
fn upgraded<const RX: bool>(ctx: &SkBuffContext) -> i32 {
    let sk = ctx_sock(ctx);
    if !sk.is_null() && !h2::h2_storage(sk.cast()).is_null() {
        leave();
        h2::tail(ctx, RX);
        let _ = enter();
    }
    0
}

/// The connection switched protocols in this packet: a `101` held back ([`Upgrade`]) goes to
/// `kite_h2_*` (an h2c upgrade starts HTTP/2 there, anything else is recorded as HTTP/1). Out
/// of line: the packet programs' deepest call chain is at the verifier's stack limit (and
/// returns `i32`: the verifier allows tail calls in subprograms that return an int).
#[inline(never)]
fn switched<const RX: bool>(ctx: &SkBuffContext, conn: *mut Conn) -> i32 {
    let Some(u) = UPGRADE.get_ptr_mut(level()) else {
        return 0;
    };
    // SAFETY: this CPU's map value; `conn` is this socket's storage.
    unsafe {
        if (*u).owner != conn as u64 {
            return 0;
        }
        leave();
        h2::tail(ctx, RX);
        let _ = enter();
        // The jump failed: record it as HTTP/1.
        (*u).owner = 0;
        record_http1(&*conn, &(*u).done);
    }
    0
}

/// Data that reached a listening socket: parsed on a connection state parked in [`PENDING`].
#[inline(always)]
fn on_listener(ctx: &SkBuffContext, slot: u32) -> Result<(), i64> {
    let work = WORK.get_ptr_mut(slot).ok_or(0)?;
    // SAFETY: this CPU's map value.
    let w = unsafe { &mut *work };
    let Some(p) = headers(ctx, w, true)? else {
        return Ok(());
    };
    if p.len == 0 {
        return Ok(());
    }
    w.key.local = w.dst;
    w.key.local_port = Tcp::dport(w);
    w.key.remote_port = Tcp::sport(w);
    bump(Stat::ListenerData, 1);
    let conn = match PENDING.get_ptr_mut(&w.key) {
        Some(c) => c,
        None => {
            if !starts_http(ctx, w, p.base, p.len)? {
                return Ok(());
            }
            let zero = ZERO_CONN.get(0).ok_or(0)?;
            match PENDING.insert(&w.key, zero, BPF_NOEXIST as u64) {
                Ok(()) => {
                    let c = PENDING.get_ptr_mut(&w.key).ok_or(0)?;
                    // SAFETY: plain helper calls; `c` points at the new map value.
                    unsafe {
                        let cg = bpf_skb_cgroup_id(ctx.skb.skb);
                        (*c).init(ROLE_SERVER, cg, w.dst, w.key.local_port, bpf_ktime_get_ns());
                        if route::routes_on() {
                            (*c).enable_routes();
                        }
                    }
                    live_add(LIVE_PENDING, 1);
                    c
                }
                // Inserted by another CPU meanwhile, or the map is full.
                Err(_) => match PENDING.get_ptr_mut(&w.key) {
                    Some(c) => c,
                    None => {
                        bump(Stat::PendingFull, 1);
                        return Ok(());
                    }
                },
            }
        }
    };
    parse::<false, true>(ctx, conn, work, true, &p);
    Ok(())
}

/// Runs the connection's state machine over the packet's payload (`PARKED`: a state in
/// [`PENDING`]).
#[inline(always)]
fn parse<const BENCH: bool, const PARKED: bool>(
    ctx: &SkBuffContext,
    conn: *mut Conn,
    work: *mut Work,
    rx: bool,
    p: &Tcp,
) {
    // SAFETY: `conn` and `work` are map values; `walk` outlives the bpf_loop call.
    unsafe {
        let t = &(*work).tcp;
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
        // No clock call for a segment inside a body (`needs_clock`: nothing in it reads the
        // time); a parked state's always reads it (its age is how the agent sweeps it).
        let now = if PARKED || (*conn).needs_clock(rx, seq, p.len) {
            bpf_ktime_get_ns()
        } else {
            0
        };
        (*work).seg = Segment::new(rx, p.len, now);
        if BENCH && bench_stop(STOP_CLOCK) {
            return;
        }
        let mut walk = Walk {
            conn,
            work,
            skb: Skb {
                skb: ctx.skb.skb,
                base: p.base,
            },
        };
        let c = &mut *conn;
        if c.begin(&mut (*work).seg, seq, ack, &mut KernelSink)
            && !(BENCH && bench_stop(STOP_BEGIN))
        {
            bpf_loop(
                MAX_STEPS,
                walk_step as *mut c_void,
                &mut walk as *mut Walk as *mut c_void,
                0,
            );
        }
        if BENCH && (bench_stop(STOP_BEGIN) || bench_stop(STOP_LOOP)) {
            return;
        }
        c.end(&mut (*work).seg, p.fin, &mut KernelSink);
        // Read back from `walk` (on the stack already): kept in registers across the calls
        // above, they made the packet programs' frame too big for the verifier's 512 bytes.
        let conn = core::ptr::read_volatile(&walk.conn);
        if !BENCH && (*conn).ignored() {
            let ctx = SkBuffContext::new(core::ptr::read_volatile(&walk.skb.skb));
            let _ = if rx {
                switched::<true>(&ctx, conn)
            } else {
                switched::<false>(&ctx, conn)
            };
        }
    }
}

/// Packets arriving at the cgroup's sockets.
#[cgroup_skb(ingress)]
pub fn kite_ingress(ctx: SkBuffContext) -> i32 {
    if judged_early(&ctx) {
        return 1;
    }
    let slot = enter();
    let _ = on_packet::<false>(&ctx, true, slot);
    leave();
    1
}

/// Packets leaving the cgroup's sockets.
#[cgroup_skb(egress)]
pub fn kite_egress(ctx: SkBuffContext) -> i32 {
    if judged_early(&ctx) {
        return 1;
    }
    let slot = enter();
    let _ = on_packet::<false>(&ctx, false, slot);
    leave();
    1
}

/// Data segments that arrived on a listening socket (tail call from `kite_ingress`).
#[cgroup_skb(ingress)]
pub fn kite_listener(ctx: SkBuffContext) -> i32 {
    let slot = enter();
    let _ = on_listener(&ctx, slot);
    leave();
    1
}

/// Does nothing: attached in place of Kite's programs, it measures what a `cgroup_skb`
/// program costs by itself (the benchmarks report Kite's cost next to it).
#[cgroup_skb]
pub fn kite_empty(_ctx: SkBuffContext) -> i32 {
    1
}

/// What `kite_bench` runs ([`BENCH_CFG`]).
#[repr(C)]
struct BenchCfg {
    /// 1 + the [`BENCH_CONNS`] slot of the state the packet finds (0: the socket has none).
    conn: u32,
    /// 1: the packet is received (ingress), 0: sent.
    rx: u32,
    /// [`BENCH_PATH`], [`BENCH_COPY`] or [`BENCH_JUDGE`].
    what: u32,
    /// 1: the socket was judged not HTTP ([`VERDICTS`]).
    judged: u32,
}

/// `kite_bench` runs the packet path.
const BENCH_PATH: u32 = 0;
/// `kite_bench` only copies the canned state (the benchmark's own cost, reported apart).
const BENCH_COPY: u32 = 1;
const BENCH_BUCKET_CALLS: u64 = 64;
/// `kite_bench` only judges the socket not HTTP (the benchmark's own cost of that case).
const BENCH_JUDGE: u32 = 3;
/// `kite_bench` runs the packet path of an HTTP/2 connection: `kite_ingress`/`kite_egress` up
/// to the tail call, then `kite_bench_h2` (the path of `kite_h2_*`) on a canned
/// [`H2Conn`](kite_common::h2::H2Conn) ([`BENCH_H2_CONNS`]; `conn` is 1 + its slot).
const BENCH_H2: u32 = 4;
/// `kite_bench` only copies the canned HTTP/2 state (the benchmark's own cost, reported apart).
const BENCH_H2_COPY: u32 = 5;

/// Where `kite_bench` cuts its packet path short (`kite-bench micro --decompose`): 0 runs it
/// whole, else one of the `STOP_*` points. Only the `BENCH` instance of the path reads it.
#[map(name = "BENCH_STOP")]
static BENCH_STOP: Array<u32> = Array::with_max_entries(1, 0);

/// Stop after reading the headers (with what comes before: the `VERDICTS` check, `NEST`, the
/// `packets` counter, `WORK`, the `PENDING` check).
const STOP_HEADERS: u32 = 1;
/// Stop after the `SOCKETS` lookup (and the benchmark's copy of the canned state).
const STOP_STORAGE: u32 = 2;
/// Stop after the segment's clock read and set-up.
const STOP_CLOCK: u32 = 3;
/// Stop after `Conn::begin`.
const STOP_BEGIN: u32 = 4;
/// Stop after the parser's `bpf_loop`.
const STOP_LOOP: u32 = 5;
/// Stop before the HTTP/2 join test of a segment that is not HTTP/1 (`h2::join`).
const STOP_JOIN: u32 = 6;

/// Whether `kite_bench` stops at `at` ([`BENCH_STOP`]).
#[inline(always)]
fn bench_stop(at: u32) -> bool {
    BENCH_STOP.get(0).is_some_and(|s| *s == at)
}

/// The microbenchmark's settings (written by `kite-bench micro`; never used by the agent).
#[map(name = "BENCH_CFG")]
static BENCH_CFG: Array<BenchCfg> = Array::with_max_entries(1, 0);

/// Canned connection states for the microbenchmark (written by user space).
#[map(name = "BENCH_CONNS")]
static BENCH_CONNS: Array<Conn> = Array::with_max_entries(8, 0);

/// Sink of `kite_bench_buckets` and `kite_bench_ktime` results (keeps the calls from being optimised away).
#[map(name = "BENCH_OUT")]
static BENCH_OUT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `kite_bench_h2`, for [`BENCH_H2`] (slot 0, set by `kite-bench micro`).
#[map(name = "BENCH_TAILS")]
static BENCH_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Canned HTTP/2 connection states for the microbenchmark (written by user space).
#[map(name = "BENCH_H2_CONNS")]
static BENCH_H2_CONNS: Array<kite_common::h2::H2Conn> = Array::with_max_entries(8, 0);

/// The state one `kite_bench_h2` run works on (see [`bench_h2_conn`]).
#[map(name = "BENCH_H2_STATE")]
static BENCH_H2_STATE: PerCpuArray<kite_common::h2::H2Conn> = PerCpuArray::with_max_entries(1, 0);

/// The first stream slot the canned packet's stream may use (its home slot; written by user
/// space): [`bench_h2_conn`] copies the slots from there on that the stream table probes.
#[map(name = "BENCH_H2_SLOT")]
static BENCH_H2_SLOT: Array<u32> = Array::with_max_entries(1, 0);

/// Whether `kite_bench` runs [`BENCH_H2`].
#[inline(always)]
fn bench_h2() -> bool {
    BENCH_CFG.get(0).is_some_and(|c| c.what == BENCH_H2)
}

/// Jumps to `kite_bench_h2` (as `h2::tail` to `kite_h2_*`).
#[inline(always)]
fn bench_h2_tail(ctx: &SkBuffContext) {
    // SAFETY: jumps to a program of the same type; on failure nothing happens.
    unsafe {
        let _ = BENCH_TAILS.tail_call(ctx, 0);
    }
}

/// Copies `words` 8-byte words from `from` to `to`, both at byte offset `at`.
#[inline(always)]
fn bench_copy_words(from: *const u64, to: *mut u64, at: usize, words: usize) {
    let mut i = 0;
    while i < words {
        // SAFETY: the callers' ranges lie inside two 8-aligned map values of the same type.
        unsafe { *to.add(at / 8 + i) = *from.add(at / 8 + i) };
        i += 1;
    }
}

/// The canned HTTP/2 state `kite_bench_h2`'s packet finds, copied fresh: everything but the
/// stream table, and the [`H2_PROBES`](kite_common::h2::H2_PROBES) slots from
/// [`BENCH_H2_SLOT`] on (the only ones the canned stream's packet can touch). Null for none.
#[inline(always)]
pub(crate) fn bench_h2_conn() -> *mut kite_common::h2::H2Conn {
    use kite_common::h2::{H2_PROBES, H2_STREAMS, H2Conn, Slot};
    let Some(cfg) = BENCH_CFG.get(0) else {
        return core::ptr::null_mut();
    };
    if cfg.conn == 0 {
        return core::ptr::null_mut();
    }
    let (Some(from), Some(to), Some(first)) = (
        BENCH_H2_CONNS.get(cfg.conn - 1),
        BENCH_H2_STATE.get_ptr_mut(0),
        BENCH_H2_SLOT.get(0),
    ) else {
        return core::ptr::null_mut();
    };
    let from = core::ptr::from_ref(from).cast::<u64>();
    let words = to.cast::<u64>();
    let slots = core::mem::offset_of!(H2Conn, slots);
    let after = slots + core::mem::size_of::<[Slot; H2_STREAMS]>();
    const _: () = assert!(core::mem::size_of::<Slot>() % 8 == 0);
    const _: () = assert!(core::mem::offset_of!(H2Conn, slots) % 8 == 0);
    bench_copy_words(from, words, 0, slots / 8);
    let first = (*first as usize).min(H2_STREAMS - H2_PROBES);
    bench_copy_words(
        from,
        words,
        slots + first * core::mem::size_of::<Slot>(),
        H2_PROBES * core::mem::size_of::<Slot>() / 8,
    );
    bench_copy_words(
        from,
        words,
        after,
        (core::mem::size_of::<H2Conn>() - after) / 8,
    );
    to
}

/// The microbenchmark's HTTP/2 packet path ([`BENCH_H2`]): `kite_h2_ingress`/`kite_h2_egress`
/// on a canned state. Reached by tail call from `kite_bench`; never attached.
#[cgroup_skb]
pub fn kite_bench_h2(ctx: SkBuffContext) -> i32 {
    let rx = BENCH_CFG.get(0).is_some_and(|c| c.rx != 0);
    let slot = enter();
    let _ = h2::on_packet::<true>(&ctx, rx, slot);
    leave();
    1
}

/// The canned state `kite_bench`'s packet finds, copied fresh; null for none.
#[inline(always)]
fn bench_conn(sk: *mut c_void) -> *mut Conn {
    let Some(cfg) = BENCH_CFG.get(0) else {
        return core::ptr::null_mut();
    };
    if cfg.conn == 0 || cfg.what == BENCH_H2 {
        return core::ptr::null_mut();
    }
    let Some(from) = BENCH_CONNS.get(cfg.conn - 1) else {
        return core::ptr::null_mut();
    };
    // The copy goes to the test run's dummy socket's own state in `SOCKETS` (freed with the
    // socket when the run ends), so the path finds the same kind of pointer as the real
    // programs do: a per-CPU array's value there made the verifier walk the path apart from
    // the socket-storage one, 430 000 more instructions than `kite_ingress`.
    // SAFETY: the context's socket, non-null (checked by the caller).
    let to: *mut Conn = unsafe {
        bpf_sk_storage_get(
            sockets_ptr(),
            sk,
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast();
    if to.is_null() {
        return core::ptr::null_mut();
    }
    // Word by word: a struct assignment is lowered to byte copies here.
    let from = core::ptr::from_ref(from).cast::<u64>();
    let words = to.cast::<u64>();
    let mut i = 0;
    while i < core::mem::size_of::<Conn>() / 8 {
        // SAFETY: both are 8-aligned map values of `size_of::<Conn>()` bytes, a multiple of 8.
        unsafe { *words.add(i) = *from.add(i) };
        i += 1;
    }
    to
}

/// The microbenchmark's cost of [`hist::bucket_index`]: [`BENCH_BUCKET_CALLS`] calls (a
/// program of its own: `kite_bench`'s stack has no room left).
#[cgroup_skb]
pub fn kite_bench_buckets(_ctx: SkBuffContext) -> i32 {
    // SAFETY: plain helper call.
    let t = unsafe { bpf_ktime_get_ns() };
    let mut acc = 0u64;
    let mut i = 0;
    while i < BENCH_BUCKET_CALLS {
        // Latencies from 1 µs to about a minute.
        acc += hist::bucket_index(((t & 0xfff_ffff) << (i & 15)) | 1000) as u64;
        i += 1;
    }
    if let Some(p) = BENCH_OUT.get_ptr_mut(0) {
        // SAFETY: this CPU's map value.
        unsafe { *p += acc };
    }
    1
}

/// The microbenchmark's cost of `bpf_ktime_get_ns`: [`BENCH_BUCKET_CALLS`] calls.
#[cgroup_skb]
pub fn kite_bench_ktime(_ctx: SkBuffContext) -> i32 {
    let mut acc = 0u64;
    let mut i = 0;
    while i < BENCH_BUCKET_CALLS {
        // SAFETY: plain helper call.
        acc ^= unsafe { bpf_ktime_get_ns() };
        i += 1;
    }
    if let Some(p) = BENCH_OUT.get_ptr_mut(0) {
        // SAFETY: this CPU's map value.
        unsafe { *p += acc };
    }
    1
}

/// The microbenchmark: the packet path of [`kite_ingress`]/[`kite_egress`] with a canned
/// connection state ([`BENCH_CFG`]), run by `BPF_PROG_TEST_RUN` on canned packets (whose dummy
/// socket has no TCP state, so the real programs would stop at the socket). Never attached.
#[cgroup_skb]
pub fn kite_bench(ctx: SkBuffContext) -> i32 {
    let Some(cfg) = BENCH_CFG.get(0) else {
        return 1;
    };
    match cfg.what {
        BENCH_COPY => {
            let sk = ctx_sock(&ctx);
            if !sk.is_null() {
                let _ = bench_conn(sk.cast());
            }
        }
        BENCH_H2_COPY => {
            let _ = bench_h2_conn();
        }
        BENCH_PATH | BENCH_JUDGE | BENCH_H2 => {
            if cfg.judged != 0 {
                // The test run's dummy socket (the same for all its repeats). This lookup is
                // the benchmark's own cost, measured alone by `BENCH_JUDGE`.
                let sk = full_sock(&ctx);
                if !sk.is_null() && !judged(sk) {
                    judge(sk);
                }
            }
            if cfg.what == BENCH_JUDGE {
                return 1;
            }
            // As `kite_ingress`/`kite_egress` begin.
            if judged_early(&ctx) {
                return 1;
            }
            let rx = cfg.rx != 0;
            let slot = enter();
            let _ = on_packet::<true>(&ctx, rx, slot);
            leave();
        }
        _ => {}
    }
    1
}

/// A socket of the cgroup is released: record what it still holds and mark its state dead
/// (this program type cannot delete socket storage; the kernel frees it with the socket, and
/// [`kite_sock_state`] deletes it when the socket reaches `TCP_CLOSE`). A dead state also keeps
/// a request that still arrives after the release from starting a new one.
#[cgroup_sock(sock_release)]
pub fn kite_sock_release(ctx: SockContext) -> i32 {
    let c = storage(ctx.sock.cast());
    if !c.is_null() {
        // SAFETY: socket storage of this socket.
        unsafe {
            if (*c).role != ROLE_NONE {
                // A level of its own: a packet's program may interrupt this one (see `enter`).
                enter();
                (*c).release(&mut KernelSink);
                leave();
                (*c).role = ROLE_NONE;
                live_add(LIVE_SOCKETS, u64::MAX);
                bump(Stat::ConnsClosed, 1);
            }
        }
    }
    // Also after an HTTP/1 state: an `Upgrade: h2c` connection has both.
    h2::release(ctx.sock.cast());
    1
}

/// Any TCP socket of the system changes state: one reaching `TCP_CLOSE` with connection state
/// that was never released (a child never accepted whose listener died, a socket the kernel
/// orphaned) is recorded and freed here, so no state outlives its connection.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn kite_sock_state(ctx: BtfTracePointContext) -> i32 {
    let newstate: i32 = ctx.arg(2);
    if newstate != BPF_TCP_CLOSE as i32 {
        return 0;
    }
    if live(LIVE_SOCKETS) == 0 && live(LIVE_H2_SOCKETS) == 0 {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    // `sk` is the tracepoint's `struct sock *`.
    if live(LIVE_H2_SOCKETS) != 0 {
        h2::release(sk);
        h2::delete(sk);
    }
    let c = storage(sk);
    if c.is_null() {
        return 0;
    }
    // SAFETY: socket storage of this socket.
    unsafe {
        if (*c).role != ROLE_NONE {
            enter();
            (*c).release(&mut KernelSink);
            leave();
            (*c).role = ROLE_NONE;
            live_add(LIVE_SOCKETS, u64::MAX);
            bump(Stat::ConnsReaped, 1);
        }
        bpf_sk_storage_delete(sockets_ptr(), sk);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs with reachable panics; this is never reached.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
