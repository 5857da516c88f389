//! TLS plaintext through uprobes on OpenSSL (issue 14).
//!
//! * The `cgroup_skb` programs recognise a connection whose first bytes are a TLS ClientHello
//!   ([`client_hello`], called where they judge a stream not HTTP): the socket gets a
//!   [`TlsSock`] in [`TLS_SOCKS`] with its endpoint, role and cgroup, as an HTTP connection's
//!   `Conn::init` would, and stays judged (its ciphertext is never parsed, per packet it costs
//!   the verdict lookup only).
//! * `kite_ssl_entry` (uprobe on `SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex`; the
//!   attach cookie says which) keeps the call's `SSL*`, buffer and length pointer per thread
//!   in [`TLS_CALLS`], for threads of the enrolled cgroups only ([`TLS_CGROUPS`]).
//! * `kite_tls_send` / `kite_tls_recv` (`tp_btf/sock_send_length`, `sock_recv_length`: they
//!   fire in the task doing the I/O, inside the SSL call) tie an `SSL*` to its socket the first
//!   time a call does I/O on a recognised socket: the connection's state ([`TlsConn`], an
//!   HTTP/1 [`Conn`] plus a byte count per direction) is created in [`TLS_CONNS`], keyed by
//!   (process, `SSL*`). Any other socket costs one socket-storage lookup.
//! * `kite_ssl_ret` (uretprobe on the same four) feeds the plaintext the call moved to the
//!   connection's HTTP/1 machine, read from user memory in windows of `WINDOW` bytes, with
//!   the running byte counts as sequence numbers and the other direction's count as the
//!   acknowledgment: the plaintext stream has no gaps, so every boundary is exact.
//! * HTTP/2 inside TLS (ALPN `h2`): a request direction whose plaintext starts with the client
//!   preface moves the connection to an [`H2Conn`] in [`TLS_H2`] (same key); the return probe
//!   then tail-calls `kite_ssl_h2` ([`TLS_TAILS`], its own verifier budget), which runs the
//!   HTTP/2 machine over the plaintext with the same synthesized sequence numbers.
//! * `kite_ssl_free` (uprobe on `SSL_free`) and `kite_tls_sock_state`
//!   (`tp_btf/inet_sock_set_state`, `TCP_CLOSE`) record what the connection still holds and
//!   free its state.
//!
//! Nothing here drops or changes traffic, and nothing per request leaves the kernel.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE, BPF_TCP_CLOSE, bpf_sock},
    btf_maps::SkStorage,
    helpers::generated::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_loop, bpf_probe_read_user, bpf_sk_storage_get, bpf_skb_cgroup_id,
    },
    macros::{btf_map, btf_tracepoint, map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::{BtfTracePointContext, ProbeContext, RetProbeContext, SkBuffContext},
};
use kite_common::{
    h2::{H2_MAX_STEPS, H2Conn},
    http::{
        Completion, Conn, MAX_STEPS, Payload, ROLE_CLIENT, ROLE_SERVER, START_LEN, Scratch,
        Segment, Sink, WINDOW,
    },
    maps::{Stat, TRANSPORT_TLS},
};

use crate::{
    ROLE_NONE, Tcp, WORK, Work, bump, enter,
    h2::{H2TlsSink, release_streams},
    leave, level,
};

/// Cookie bit of `kite_ssl_entry`: the function reads (`SSL_read*`), else writes.
const CALL_READ: u64 = 1;
/// Cookie bit: the `_ex` form (`int f(SSL *, void *, size_t, size_t *done)`, 1 on success and
/// the length in `*done`), else the plain one (the length is the return value).
const CALL_EX: u64 = 2;

/// Bound of [`TLS_CONNS`]: TLS connections measured at once (≈ 470 bytes each, allocated on
/// first use: at most ≈ 3.7 MiB).
const MAX_TLS_CONNS: u32 = 8192;

/// A connection's key: the process and its `SSL*` (pointers are per address space).
#[repr(C)]
#[derive(Clone, Copy)]
struct TlsKey {
    tgid: u64,
    ssl: u64,
}

/// A socket whose stream started with a TLS ClientHello (socket storage, freed with it).
#[repr(C)]
struct TlsSock {
    /// cgroup of the socket (as the HTTP/1 path's `Conn::cgroup_id`).
    cgroup_id: u64,
    /// The `SSL*` bound to it (valid with `bound`).
    key: TlsKey,
    /// Endpoint address (local for servers, remote for clients), IPv6 or IPv4-mapped.
    addr: [u8; 16],
    port: u16,
    /// [`ROLE_SERVER`] (the ClientHello arrived) or [`ROLE_CLIENT`] (it left).
    role: u8,
    /// 1 once an `SSL*` is tied to the socket.
    bound: u8,
    _pad: [u8; 4],
    /// The binding's generation ([`TlsConn::generation`] when it was made): the `SSL*` may since
    /// have been freed and handed to another connection, whose state this socket's close
    /// must not end.
    generation: u64,
}

/// One TLS connection's plaintext state.
#[repr(C)]
pub(crate) struct TlsConn {
    conn: Conn,
    /// Plaintext bytes read so far (the received stream's sequence numbers).
    rx: u32,
    /// Plaintext bytes written so far.
    tx: u32,
    /// When this state was bound to its socket (`bpf_ktime_get_ns`): with the key, which
    /// socket it belongs to.
    generation: u64,
    /// 1: the connection carries HTTP/2 (its state in [`TLS_H2`]); `conn` is unused.
    h2: u64,
}

/// Bound of [`TLS_H2`]: HTTP/2-in-TLS connections measured at once (7 872 bytes each,
/// allocated on use: at most ≈ 7.7 MiB). Full: [`TLS_STAT_H2`].
const MAX_TLS_H2: u32 = 1024;

/// HTTP/2 states of TLS connections (ALPN `h2`), keyed as [`TLS_CONNS`]; freed with it.
#[map(name = "TLS_H2")]
static TLS_H2: HashMap<TlsKey, H2Conn> =
    HashMap::with_max_entries(MAX_TLS_H2, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Never written: the zero HTTP/2 state (7 872 bytes, too big for the stack).
#[map(name = "ZERO_H2")]
static ZERO_H2: Array<H2Conn> = Array::with_max_entries(1, 0);

/// Slot 0: `kite_ssl_h2` (the HTTP/2 machine over TLS plaintext, tail-called by the return
/// probes for its own verifier budget).
#[map(name = "TLS_TAILS")]
static TLS_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What `kite_ssl_h2` parses: written by the return probe just before the tail call, one slot
/// per nesting level (as `WORK`).
#[repr(C)]
#[derive(Clone, Copy)]
struct H2Call {
    key: TlsKey,
    buf: u64,
    now: u64,
    /// The running plaintext count of the direction at the call's first byte.
    seq: u32,
    len: u32,
    rx: u32,
    _pad: u32,
}

#[map(name = "TLS_H2_CALL")]
static TLS_H2_CALL: PerCpuArray<H2Call> = PerCpuArray::with_max_entries(2, 0);

/// An SSL read or write in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
struct Call {
    ssl: u64,
    buf: u64,
    /// `size_t *` of the `_ex` forms, 0 for the plain ones.
    done: u64,
    /// Entry time: a write's plaintext leaves when the call starts.
    ts: u64,
    /// The attach cookie (`CALL_*`).
    kind: u64,
}

/// Sockets recognised as TLS by their first bytes.
#[btf_map(name = "TLS_SOCKS")]
static TLS_SOCKS: SkStorage<TlsSock> = SkStorage::new();

/// Plaintext state of bound connections. Bounded; when full a new connection is not measured
/// ([`Stat::TlsConnsFull`]). Freed at `SSL_free` and when the socket reaches `TCP_CLOSE`.
#[map(name = "TLS_CONNS")]
static TLS_CONNS: HashMap<TlsKey, TlsConn> =
    HashMap::with_max_entries(MAX_TLS_CONNS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// SSL calls in progress, by thread (`pid_tgid`). LRU: an entry is deleted by the call's
/// return; only a thread killed inside a call leaves one, which eviction then takes.
#[map(name = "TLS_CALLS")]
static TLS_CALLS: LruHashMap<u64, Call> = LruHashMap::with_max_entries(4096, 0);

/// cgroup v2 ids whose threads are measured (the enrolled cgroups and their descendants),
/// written by the agent: any other user of the same library pays this one lookup.
#[map(name = "TLS_CGROUPS")]
static TLS_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// [`TLS_STATS`] slot: an `SSL*` with state did I/O on another recognised socket (OpenSSL
/// reused it for a new connection without `SSL_free`): the old state released (finished
/// requests recorded, pending ones counted `unanswered`), a fresh one started.
pub const TLS_STAT_REBOUND: u32 = 0;
/// [`TLS_STATS`] slot: a socket reached `TCP_CLOSE` after its `SSL*` had been freed and
/// bound to another connection: the close left the new connection's state alone.
pub const TLS_STAT_STALE_CLOSE: u32 = 1;
/// [`TLS_STATS`] slot: a TLS connection whose plaintext starts with HTTP/2's client preface
/// (ALPN `h2`) found [`TLS_H2`] full: not measured, nothing recorded.
pub const TLS_STAT_H2: u32 = 2;
/// [`TLS_STATS`] slot: HTTP/2 connections inside TLS measured (an [`H2Conn`] in [`TLS_H2`]).
pub const TLS_STAT_H2_OPENED: u32 = 3;
/// Slots of [`TLS_STATS`].
const TLS_STAT_COUNT: u32 = 4;

/// The TLS programs' own counters (per CPU; the agent sums them).
#[map(name = "TLS_STATS")]
static TLS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TLS_STAT_COUNT, 0);

#[inline(always)]
fn tls_bump(slot: u32) {
    if let Some(v) = TLS_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *v += 1 };
    }
}

/// Never written: the zero state new connections start from (too big for the stack).
#[map(name = "ZERO_TLS")]
static ZERO_TLS: Array<TlsConn> = Array::with_max_entries(1, 0);

#[inline(always)]
fn tls_socks_ptr() -> *mut c_void {
    core::ptr::from_ref(&TLS_SOCKS).cast_mut().cast()
}

#[inline(always)]
fn sock_state(sk: *mut c_void) -> *mut TlsSock {
    // SAFETY: `sk` is a socket pointer checked by the verifier.
    unsafe { bpf_sk_storage_get(tls_socks_ptr(), sk, core::ptr::null_mut(), 0) }.cast()
}

/// Whether the first bytes of a stream are a TLS handshake record carrying a ClientHello
/// (content type 22, version 3.x, handshake type 1).
#[inline(always)]
fn is_client_hello(h: &[u8; START_LEN]) -> bool {
    h[0] == 0x16 && h[1] == 3 && h[2] <= 4 && h[5] == 1
}

/// Called by the packet programs for a stream's first bytes that do not start HTTP (`w.head`,
/// zero-padded): a ClientHello makes the socket a TLS connection Kite measures from the
/// plaintext side. `sk` is a full socket; `rx`: the bytes arrive (Kite's side is the server).
#[inline(always)]
pub(crate) fn client_hello(ctx: &SkBuffContext, sk: *mut bpf_sock, w: &Work, rx: bool) {
    if !is_client_hello(&w.head) {
        return;
    }
    // SAFETY: plain helper call.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let port = Tcp::dport(w);
    // SAFETY: a full socket; the new value is zero.
    let s: *mut TlsSock = unsafe {
        bpf_sk_storage_get(
            tls_socks_ptr(),
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast();
    if s.is_null() {
        return;
    }
    // SAFETY: this socket's storage.
    unsafe {
        (*s).cgroup_id = cgroup_id;
        (*s).addr = w.dst;
        (*s).port = port;
        (*s).role = if rx { ROLE_SERVER } else { ROLE_CLIENT };
    }
    bump(Stat::TlsConns, 1);
}

/// Whether the current thread's cgroup is measured.
#[inline(always)]
fn measured() -> bool {
    // SAFETY: plain helper call.
    let cg = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a map value, only tested for presence.
    unsafe { TLS_CGROUPS.get(&cg).is_some() }
}

#[inline(always)]
fn tgid() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_get_current_pid_tgid() >> 32 }
}

/// Entry of `SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex` (cookie: `CALL_*`).
#[uprobe]
pub fn kite_ssl_entry(ctx: ProbeContext) -> u32 {
    if !measured() {
        return 0;
    }
    // SAFETY: plain helper calls.
    let (kind, id, ts) = unsafe {
        (
            bpf_get_attach_cookie(ctx.as_ptr()),
            bpf_get_current_pid_tgid(),
            bpf_ktime_get_ns(),
        )
    };
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let done: u64 = if kind & CALL_EX != 0 {
        ctx.arg(3).unwrap_or(0)
    } else {
        0
    };
    if ssl == 0 || buf == 0 {
        return 0;
    }
    let call = Call {
        ssl,
        buf,
        done,
        ts,
        kind,
    };
    let _ = TLS_CALLS.insert(&id, &call, 0);
    0
}

/// I/O on a socket inside an SSL call of a measured thread ties the `SSL*` to the socket.
/// An `SSL*` that has state already and does I/O on another recognised socket was reused by
/// OpenSSL for a new connection: its old state is released and a fresh one started, so the
/// two connections' bytes never mix.
#[inline(always)]
fn bind(ctx: &BtfTracePointContext) {
    let sk: *mut c_void = ctx.arg(0);
    let s = sock_state(sk);
    if s.is_null() {
        return;
    }
    // SAFETY: this socket's storage.
    if unsafe { (*s).bound } != 0 {
        return;
    }
    // SAFETY: plain helper call.
    let id = unsafe { bpf_get_current_pid_tgid() };
    // SAFETY: a map value, one field read.
    let Some(ssl) = (unsafe { TLS_CALLS.get(&id) }).map(|c| c.ssl) else {
        return;
    };
    let key = TlsKey {
        tgid: id >> 32,
        ssl,
    };
    let Some(zero) = ZERO_TLS.get(0) else {
        return;
    };
    if TLS_CONNS.insert(&key, zero, BPF_NOEXIST as u64).is_err() {
        if TLS_CONNS.get_ptr_mut(&key).is_none() {
            bump(Stat::TlsConnsFull, 1);
            return;
        }
        // The SSL* is bound to another socket: a new connection on a reused SSL*.
        close_state(&key);
        if TLS_CONNS.insert(&key, zero, BPF_NOEXIST as u64).is_err() {
            bump(Stat::TlsConnsFull, 1);
            return;
        }
        tls_bump(TLS_STAT_REBOUND);
    }
    let Some(c) = TLS_CONNS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the new map value and this socket's storage.
    unsafe {
        (*c).conn
            .init((*s).role, (*s).cgroup_id, (*s).addr, (*s).port, now);
        if crate::route::routes_on() {
            (*c).conn.enable_routes();
        }
        (*c).generation = now;
        (*s).key = key;
        (*s).generation = now;
        (*s).bound = 1;
    }
    bump(Stat::TlsBound, 1);
}

/// A socket sent data (`sock_sendmsg` returned), in the sending task.
#[btf_tracepoint(function = "sock_send_length")]
pub fn kite_tls_send(ctx: BtfTracePointContext) -> i32 {
    bind(&ctx);
    0
}

/// A socket received data (`sock_recvmsg` returned), in the receiving task.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn kite_tls_recv(ctx: BtfTracePointContext) -> i32 {
    bind(&ctx);
    0
}

/// Where finished TLS requests go: the endpoint histograms, with `transport` TLS.
struct TlsSink;

impl Sink for TlsSink {
    #[inline(always)]
    fn record(&mut self, conn: &Conn, done: &Completion) {
        crate::record_http1_over(conn, done, TRANSPORT_TLS);
    }

    #[inline(always)]
    fn add(&mut self, stat: Stat, n: u64) {
        bump(stat, n);
    }

    #[inline(always)]
    fn route(&mut self, conn: &Conn, id: u32) {
        crate::route::route_name(conn, id);
    }
}

/// Plaintext in the calling process's memory.
#[repr(C)]
struct UserBuf {
    ptr: u64,
}

impl Payload for UserBuf {
    #[inline(always)]
    fn load(&mut self, off: u32, dst: &mut Scratch, len: u32) -> bool {
        // As `Skb::load`: a 64-bit bound the verifier can see.
        let len = len as u64;
        // SAFETY: reading a local.
        let len = unsafe { core::ptr::read_volatile(&len) } & 0x1ff;
        if len == 0 || len > WINDOW as u64 {
            return false;
        }
        // SAFETY: `dst` has room for WINDOW bytes; the helper checks the user address.
        unsafe {
            bpf_probe_read_user(
                dst as *mut Scratch as *mut c_void,
                len as u32,
                (self.ptr + off as u64) as *const c_void,
            ) == 0
        }
    }
}

/// What the `bpf_loop` callback needs; lives on the program's stack.
#[repr(C)]
struct Walk {
    conn: *mut Conn,
    work: *mut Work,
    buf: UserBuf,
}

extern "C" fn tls_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on the caller's stack; its pointers are map values.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let (conn, work) = unsafe { (&mut *w.conn, &mut *w.work) };
    if conn.step(&mut work.seg, &mut work.scratch, &mut w.buf, &mut TlsSink) {
        0
    } else {
        1
    }
}

/// Return of the four SSL calls: the plaintext they moved goes through the connection's
/// HTTP/1 machine.
#[uretprobe]
pub fn kite_ssl_ret(ctx: RetProbeContext) -> u32 {
    returned(&ctx, ctx.ret())
}

/// The same as [`kite_ssl_ret`] as a plain uprobe on a function's `ret` instruction (the
/// return value in `rax`): x86 uprobes emulate `ret` and `call` instead of stepping them out
/// of line, the step's debug trap being what a probe hit costs most on this machine
/// (`kite-bench tls-cost`). Not used by the agent yet.
#[uprobe]
pub fn kite_ssl_ret_at(ctx: ProbeContext) -> u32 {
    // SAFETY: the probed task's registers, given by the kernel.
    let rax = unsafe { (*ctx.regs).rax };
    returned(&ctx, rax as i32)
}

#[inline(always)]
fn returned<C: EbpfContext>(ctx: &C, ret: i32) -> u32 {
    // SAFETY: plain helper call.
    let id = unsafe { bpf_get_current_pid_tgid() };
    // SAFETY: a map value, copied.
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }).copied() else {
        return 0;
    };
    let _ = TLS_CALLS.remove(&id);
    let len: u64 = if call.done != 0 {
        if ret != 1 {
            return 0;
        }
        let mut n = 0u64;
        // SAFETY: reads the caller's `size_t`; the helper checks the address.
        if unsafe { bpf_probe_read_user((&raw mut n).cast(), 8, call.done as *const c_void) } != 0 {
            return 0;
        }
        n
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    if len == 0 {
        return 0;
    }
    let key = TlsKey {
        tgid: id >> 32,
        ssl: call.ssl,
    };
    let Some(t) = TLS_CONNS.get_ptr_mut(&key) else {
        bump(Stat::TlsUnbound, 1);
        return 0;
    };
    let rx = call.kind & CALL_READ != 0;
    // A read's bytes are the application's when the call returns; a write's when it starts.
    let now = if rx {
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_ns() }
    } else {
        call.ts
    };
    // One SSL call moves at most an `int`'s worth.
    let len = if len > i32::MAX as u64 {
        i32::MAX as u32
    } else {
        len as u32
    };
    let slot = enter();
    if feed(t, &key, slot, rx, call.buf, len, now) && h2_call(&key, rx, call.buf, len, now) {
        // SAFETY: a program of the same type; `kite_ssl_h2` leaves this run's level. On
        // failure (not loaded) this returns and the bytes go unparsed.
        let _ = unsafe { TLS_TAILS.tail_call(ctx, 0) };
    }
    leave();
    0
}

/// Writes what `kite_ssl_h2` parses into this level's [`TLS_H2_CALL`] slot and moves the
/// direction's count past the bytes.
#[inline(never)]
fn h2_call(key: &TlsKey, rx: bool, buf: u64, len: u32, now: u64) -> bool {
    let Some(t) = TLS_CONNS.get_ptr_mut(key) else {
        return false;
    };
    let Some(a) = TLS_H2_CALL.get_ptr_mut(level()) else {
        return false;
    };
    // SAFETY: a map value and this CPU's slot.
    unsafe {
        let seq = if rx { (*t).rx } else { (*t).tx };
        *a = H2Call {
            key: *key,
            buf,
            now,
            seq,
            len,
            rx: rx as u32,
            _pad: 0,
        };
        if rx {
            (*t).rx = seq.wrapping_add(len);
        } else {
            (*t).tx = seq.wrapping_add(len);
        }
    }
    true
}

/// Runs the connection's HTTP/1 machine over `len` plaintext bytes at `buf`. Returns whether
/// the connection carries HTTP/2 instead (the caller hands the bytes to `kite_ssl_h2`).
#[inline(always)]
fn feed(t: *mut TlsConn, key: &TlsKey, slot: u32, rx: bool, buf: u64, len: u32, now: u64) -> bool {
    let Some(work) = WORK.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: `t` and `work` are map values; `walk` outlives the bpf_loop call.
    unsafe {
        let t = &mut *t;
        if t.h2 != 0 {
            return true;
        }
        if t.conn.role == ROLE_NONE {
            return false;
        }
        let (seq, ack) = if rx { (t.rx, t.tx) } else { (t.tx, t.rx) };
        if seq == 0 {
            match h2_first(t, key, rx, buf, len) {
                FIRST_H2 => return true,
                FIRST_SKIP => return false,
                _ => {}
            }
        }
        if t.conn.ignored() {
            return false;
        }
        if rx {
            t.rx = t.rx.wrapping_add(len);
        } else {
            t.tx = t.tx.wrapping_add(len);
        }
        (*work).seg = Segment::new(rx, len, now);
        let mut walk = Walk {
            conn: &mut t.conn,
            work,
            buf: UserBuf { ptr: buf },
        };
        if t.conn.begin(&mut (*work).seg, seq, ack, &mut TlsSink) {
            bpf_loop(
                MAX_STEPS,
                tls_step as *mut c_void,
                &mut walk as *mut Walk as *mut c_void,
                0,
            );
        }
        t.conn.end(&mut (*work).seg, false, &mut TlsSink);
    }
    false
}

/// [`h2_first`]: not HTTP/2's first bytes.
const FIRST_OTHER: u8 = 0;
/// [`h2_first`]: the client preface; the connection is HTTP/2 now.
const FIRST_H2: u8 = 1;
/// [`h2_first`]: not for the HTTP/1 machine: a SETTINGS frame header in the response
/// direction (an HTTP/2 server's preface, sent before the client's was read; counted), or a
/// client preface that found no room ([`TLS_STAT_H2`]).
const FIRST_SKIP: u8 = 2;

/// A direction's first plaintext bytes (`len` at `buf`): HTTP/2 inside TLS (ALPN `h2`) starts
/// with the client preface in the request direction (looked at before the HTTP/1 machine's
/// verdict), and a server may write its SETTINGS before it reads the preface.
#[inline(never)]
fn h2_first(t: &mut TlsConn, key: &TlsKey, rx: bool, buf: u64, len: u32) -> u8 {
    let mut head = [0u8; 8];
    // SAFETY: the helper checks the user address.
    if len < 9
        || unsafe { bpf_probe_read_user(head.as_mut_ptr().cast(), 8, buf as *const c_void) } != 0
    {
        return FIRST_OTHER;
    }
    if (t.conn.role == ROLE_SERVER) == rx {
        if head[..4] != *b"PRI " {
            return FIRST_OTHER;
        }
        return if h2_open(t, key, rx) {
            FIRST_H2
        } else {
            FIRST_SKIP
        };
    }
    if head[3] == 4 && head[4] == 0 && head[5..8] == [0, 0, 0] {
        if rx {
            t.rx = t.rx.wrapping_add(len);
        } else {
            t.tx = t.tx.wrapping_add(len);
        }
        return FIRST_SKIP;
    }
    FIRST_OTHER
}

/// The request direction `req_rx` of connection `t` starts with the client preface: its
/// HTTP/2 state is made in [`TLS_H2`] (request stream at 0, response stream at the other
/// direction's count: a server's SETTINGS may be out already) and the HTTP/1 state retired.
/// Returns whether it was (else [`TLS_STAT_H2`]: not measured).
#[inline(always)]
fn h2_open(t: &mut TlsConn, key: &TlsKey, req_rx: bool) -> bool {
    let role = t.conn.role;
    t.conn.role = ROLE_NONE;
    let Some(zero) = ZERO_H2.get(0) else {
        return false;
    };
    if TLS_H2.insert(key, zero, 0).is_err() {
        tls_bump(TLS_STAT_H2);
        return false;
    }
    let Some(c) = TLS_H2.get_ptr_mut(key) else {
        tls_bump(TLS_STAT_H2);
        return false;
    };
    let other = if req_rx { t.tx } else { t.rx };
    // SAFETY: the new map value.
    unsafe {
        (*c).start_at(req_rx, 0);
        (*c).start_at(!req_rx, other);
        (*c).init(role, t.conn.cgroup_id, t.conn.addr, t.conn.port);
    }
    t.h2 = 1;
    tls_bump(TLS_STAT_H2_OPENED);
    bump(Stat::H2ConnsOpened, 1);
    true
}

/// What the HTTP/2 `bpf_loop` callback needs; lives on the program's stack.
#[repr(C)]
struct H2Walk {
    conn: *mut H2Conn,
    work: *mut Work,
    buf: UserBuf,
}

extern "C" fn h2_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `H2Walk` on the caller's stack; its pointers are map values.
    let w = unsafe { &mut *(ctx as *mut H2Walk) };
    let (conn, work) = unsafe { (&mut *w.conn, &mut *w.work) };
    if conn.step(&mut work.seg, &mut work.scratch, &mut w.buf, &mut H2TlsSink) {
        0
    } else {
        1
    }
}

/// [`H2Conn::begin`] for one call's plaintext (`kite_ssl_h2`): nothing below `seq` will come
/// again. Out of line: its locals stay off the frame under the parser's call chain.
#[inline(never)]
fn h2_begin(c: &mut H2Conn, work: &mut Work, a: &H2Call) -> bool {
    work.seg = Segment::new(a.rx != 0, a.len, a.now);
    c.begin(&mut work.seg, a.seq, a.seq, &mut H2TlsSink)
}

/// The HTTP/2 machine over one SSL call's plaintext (tail call from the return probes, which
/// wrote [`TLS_H2_CALL`] and entered this run's level).
#[uprobe]
pub fn kite_ssl_h2(_ctx: ProbeContext) -> u32 {
    let slot = level();
    if let (Some(a), Some(work)) = (TLS_H2_CALL.get_ptr(slot), WORK.get_ptr_mut(slot)) {
        // SAFETY: this CPU's map values; `walk` outlives the bpf_loop call.
        unsafe {
            if let Some(c) = TLS_H2.get_ptr_mut(&(*a).key)
                && (*c).role != ROLE_NONE
            {
                let mut walk = H2Walk {
                    conn: c,
                    work,
                    buf: UserBuf { ptr: (*a).buf },
                };
                if h2_begin(&mut *c, &mut *work, &*a) {
                    bpf_loop(
                        H2_MAX_STEPS,
                        h2_step as *mut c_void,
                        &mut walk as *mut H2Walk as *mut c_void,
                        0,
                    );
                }
                (*c).end(&mut (*work).seg, &mut H2TlsSink);
            }
        }
    }
    leave();
    0
}

/// Records the HTTP/2 streams connection `key` still holds and frees its state (the caller
/// has entered its level).
#[inline(never)]
fn h2_close(key: &TlsKey) {
    let Some(c) = TLS_H2.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value.
    unsafe {
        if (*c).role != ROLE_NONE {
            release_streams::<H2TlsSink>(c);
            (*c).role = ROLE_NONE;
            bump(Stat::H2ConnsClosed, 1);
        }
    }
    let _ = TLS_H2.remove(key);
}

/// Records what a connection still holds and frees its state.
#[inline(always)]
fn close(key: &TlsKey) {
    if close_state(key) {
        bump(Stat::TlsClosed, 1);
    }
}

/// [`close`] without the count: whether a state was freed.
#[inline(always)]
fn close_state(key: &TlsKey) -> bool {
    let Some(t) = TLS_CONNS.get_ptr_mut(key) else {
        return false;
    };
    enter();
    // SAFETY: a map value.
    unsafe {
        if (*t).h2 != 0 {
            h2_close(key);
        } else if (*t).conn.role != ROLE_NONE {
            (*t).conn.release(&mut TlsSink);
            (*t).conn.role = ROLE_NONE;
        }
    }
    leave();
    TLS_CONNS.remove(key).is_ok()
}

/// `SSL_free(SSL *)`: the connection is over.
#[uprobe]
pub fn kite_ssl_free(ctx: ProbeContext) -> u32 {
    if !measured() {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    close(&TlsKey { tgid: tgid(), ssl });
    0
}

/// A TCP socket reached `TCP_CLOSE`: a TLS connection bound to it is over (a process that
/// never calls `SSL_free`, or dies, leaves no state behind).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn kite_tls_sock_state(ctx: BtfTracePointContext) -> i32 {
    let newstate: i32 = ctx.arg(2);
    if newstate != BPF_TCP_CLOSE as i32 {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let s = sock_state(sk);
    if s.is_null() {
        return 0;
    }
    // SAFETY: this socket's storage.
    let (key, generation) = unsafe {
        if (*s).bound == 0 {
            return 0;
        }
        (*s).bound = 0;
        ((*s).key, (*s).generation)
    };
    // The SSL* may have been freed and bound to a newer connection since: not this one's.
    // SAFETY: a map value, one field read.
    match TLS_CONNS.get_ptr_mut(&key) {
        Some(t) if unsafe { (*t).generation } == generation => close(&key),
        Some(_) => tls_bump(TLS_STAT_STALE_CLOSE),
        None => {}
    }
    0
}
