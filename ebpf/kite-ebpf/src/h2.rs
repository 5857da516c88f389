//! HTTP/2 in the kernel programs (issue 13): connections that start with the client preface
//! (prior-knowledge h2c) get an [`H2Conn`] in their own socket storage ([`H2_SOCKETS`]), and
//! their packets are parsed by `kite_h2_ingress` / `kite_h2_egress`, reached by tail call
//! from `kite_ingress` / `kite_egress` so that the HTTP/2 machine has its own verifier budget.
//! Finished streams are recorded through the same path as HTTP/1 requests
//! ([`crate::record_endpoint_with`]) with version 2, and gRPC calls with protocol gRPC, their
//! `grpc-status` and method id.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    btf_maps::SkStorage,
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_loop, bpf_probe_read_kernel, bpf_sk_fullsock, bpf_sk_storage_delete,
            bpf_sk_storage_get, bpf_skb_cgroup_id, bpf_skb_load_bytes, bpf_tcp_sock,
        },
    },
    macros::{btf_map, cgroup_skb, map},
    maps::{HashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::SkBuffContext,
};
use kite_common::{
    h2::{
        Due, GRPC_STATUS_NONE, GRPC_YES, H2_CLIENT, H2_MAX_STEPS, H2_SERVER, H2_STREAMS, H2Conn,
        H2Done, H2Sink, H2Stat, HOLD_BUF, HOLD_BYTES, JOIN_FRAMES, JoinCheck, PATH_UNKNOWN,
        WAY_REQUEST,
        hold::{HF_BUF, HF_COPY, HF_ON},
        hpack::PathBuf,
    },
    http::{Payload, Scratch, Segment, WINDOW},
    maps::{
        DEFAULT_MAX_H2_HOLDS, DEFAULT_MAX_H2_SOCKETS, DEFAULT_MAX_RPC_ENDPOINTS,
        DEFAULT_MAX_RPC_METHODS, DEFAULT_MAX_RPC_SEEN, Direction, EndpointKey, GRPC_STATUS_UNKNOWN,
        LIVE_H2_HOLDS, LIVE_H2_SOCKETS, MAX_RPC_PER_ENDPOINT, Method, Protocol, RPC_NAMES_BYTES,
        RPC_NONE, RPC_OTHER, RPC_UNKNOWN, RpcEndpointKey, RpcMethodKey, Stat, TRANSPORT_TCP,
        TRANSPORT_TLS, Version, rpc_id,
    },
};

use crate::{
    Skb, TAIL_H2, TAIL_H2_HOLD, TAILS, Tcp, UPGRADE, WORK, Work, bump, bump_at, ctx_sock, enter,
    headers, key_slot, leave, live, live_add, load_bytes, record_endpoint_with, record_http1,
    source, storage, xadd64,
};

/// HTTP/2 connection state, in the socket (socket-local storage, freed with it): only
/// connections that began with the client preface, so HTTP/1 sockets keep their small
/// [`crate::SOCKETS`] state. Bounded softly by [`MAX_H2_SOCKETS`] (live count in
/// `LIVE[LIVE_H2_SOCKETS]`); beyond, [`Stat::H2SocketsMapFull`].
#[btf_map(name = "H2_SOCKETS")]
static H2_SOCKETS: SkStorage<H2Conn> = SkStorage::new();

/// Soft bound on live HTTP/2 connection states; set by the loader.
#[unsafe(no_mangle)]
static MAX_H2_SOCKETS: u32 = DEFAULT_MAX_H2_SOCKETS;

#[inline(always)]
fn max_h2_sockets() -> u64 {
    // SAFETY: reading a global; volatile so the loader's value is used, not the default.
    unsafe { core::ptr::read_volatile(&MAX_H2_SOCKETS) as u64 }
}

/// The bytes of received segments held beyond a gap (`kite_common::h2::hold`): a window of
/// [`HOLD_BYTES`] from the gap, and a [`WINDOW`] of slack so that a read of at most
/// `WINDOW` bytes at any window offset stays inside the value as the verifier sees it.
#[repr(C)]
pub(crate) struct HoldBuf {
    bytes: [u8; HOLD_BUF],
}

/// Hold buffers, in the socket (freed with it): created at a connection's first held segment
/// and deleted when nothing is held any more. Bounded softly by [`MAX_H2_HOLDS`] (live count
/// in `LIVE[LIVE_H2_HOLDS]`); beyond, the segment is not held ([`Stat::H2HoldFull`]) and the
/// direction falls back to the rules of an unheld gap.
#[btf_map(name = "H2_HOLDS")]
static H2_HOLDS: SkStorage<HoldBuf> = SkStorage::new();

/// Soft bound on live hold buffers; set by the loader (0: nothing is ever held).
#[unsafe(no_mangle)]
static MAX_H2_HOLDS: u32 = DEFAULT_MAX_H2_HOLDS;

#[inline(always)]
fn holds_ptr() -> *mut c_void {
    core::ptr::from_ref(&H2_HOLDS).cast_mut().cast()
}

/// The hold buffer of a socket, if it has one; with `create`, made (zero) if it has none and
/// the live bound has room.
#[inline(always)]
fn hold_buf(sk: *mut c_void, create: bool) -> *mut HoldBuf {
    // SAFETY: `sk` is a socket pointer checked by the verifier.
    let b: *mut HoldBuf =
        unsafe { bpf_sk_storage_get(holds_ptr(), sk, core::ptr::null_mut(), 0) }.cast();
    if !b.is_null() || !create {
        return b;
    }
    // SAFETY: reading a global; volatile so the loader's value is used, not the default.
    if live(LIVE_H2_HOLDS) >= unsafe { core::ptr::read_volatile(&MAX_H2_HOLDS) } as u64 {
        return core::ptr::null_mut();
    }
    // SAFETY: as above; the new value is zero.
    let b: *mut HoldBuf = unsafe {
        bpf_sk_storage_get(
            holds_ptr(),
            sk,
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast();
    if !b.is_null() {
        live_add(LIVE_H2_HOLDS, 1);
    }
    b
}

/// Deletes the hold buffer of a socket, if it has one.
#[inline(always)]
fn hold_delete(sk: *mut c_void) {
    // SAFETY: `sk` is a socket pointer checked by the verifier.
    if unsafe { bpf_sk_storage_delete(holds_ptr(), sk) } == 0 {
        live_add(LIVE_H2_HOLDS, u64::MAX);
    }
}

/// Slot 0: `kite_h2_egress`. Egress programs have their own program array: the kernel only
/// lets a program tail-call programs of its own attach type.
#[map(name = "TAILS_TX")]
static TAILS_TX: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// gRPC method names for user space, each sent once ([`RPC_SEEN`]): see
/// `maps::RPC_NAMES_MAP` for the record.
#[map(name = "RPC_NAMES")]
pub(crate) static RPC_NAMES: RingBuf = RingBuf::with_byte_size(RPC_NAMES_BYTES, 0);

/// Method ids whose name was sent. Bounded; when full, new methods are not named
/// ([`Stat::RpcSeenFull`]).
#[map(name = "RPC_SEEN")]
pub(crate) static RPC_SEEN: HashMap<u32, u8> =
    HashMap::with_max_entries(DEFAULT_MAX_RPC_SEEN, BPF_F_NO_PREALLOC);

/// The gRPC methods of each endpoint (looked up only when a call's key is new in
/// `ENDPOINTS`). Bounded; when full, [`Stat::RpcMethodsFull`].
#[map(name = "RPC_METHODS")]
pub(crate) static RPC_METHODS: HashMap<RpcMethodKey, u8> =
    HashMap::with_max_entries(DEFAULT_MAX_RPC_METHODS, BPF_F_NO_PREALLOC);

/// Per-CPU memory [`bound_rpc`] builds its key in (the stack of the deepest chain is full),
/// one slot per nesting level as `KEYS`: a run interrupted between writing and using it must
/// not find another run's key there.
#[map(name = "RPC_KEY")]
pub(crate) static RPC_KEY: PerCpuArray<RpcMethodKey> = PerCpuArray::with_max_entries(2, 0);

/// Distinct methods per gRPC endpoint in [`RPC_METHODS`], added to atomically.
#[map(name = "RPC_ENDPOINTS")]
pub(crate) static RPC_ENDPOINTS: HashMap<RpcEndpointKey, u64> =
    HashMap::with_max_entries(DEFAULT_MAX_RPC_ENDPOINTS, 0);

/// [`Conn::role`](kite_common::http::Conn::role) of a released state (as in HTTP/1).
const ROLE_NONE: u8 = 0;

#[inline(always)]
fn h2_ptr() -> *mut c_void {
    core::ptr::from_ref(&H2_SOCKETS).cast_mut().cast()
}

/// The HTTP/2 state of a socket, if it has one.
#[inline(always)]
pub(crate) fn h2_storage(sk: *mut c_void) -> *mut H2Conn {
    // SAFETY: `sk` is a socket pointer checked by the verifier.
    unsafe { bpf_sk_storage_get(h2_ptr(), sk, core::ptr::null_mut(), 0) }.cast()
}

/// Jumps to the HTTP/2 parser of the packet's direction (the caller has left its level; on
/// failure nothing happens and it returns).
#[inline(always)]
pub(crate) fn tail(ctx: &SkBuffContext, rx: bool) {
    // SAFETY: jumps to a program of the same type and attach type.
    unsafe {
        if rx {
            let _ = TAILS.tail_call(ctx, TAIL_H2);
        } else {
            let _ = TAILS_TX.tail_call(ctx, 0);
        }
    }
}

/// A new HTTP/2 state for the full socket `sk` (zero, or another CPU's that is being made),
/// within the live bound; null (counted) when there is no room.
#[inline(always)]
fn create(sk: *mut bpf_sock) -> *mut H2Conn {
    if live(LIVE_H2_SOCKETS) >= max_h2_sockets() {
        bump(Stat::H2SocketsMapFull, 1);
        return core::ptr::null_mut();
    }
    // SAFETY: a full socket; the new value is zero.
    let c: *mut H2Conn = unsafe {
        bpf_sk_storage_get(
            h2_ptr(),
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast();
    if c.is_null() {
        bump(Stat::H2SocketsMapFull, 1);
    }
    c
}

/// Starts tracking an HTTP/2 connection whose request stream starts here with the client
/// preface (the packet carries its direction's first byte; `sk` is a full socket): `rx`, the
/// preface comes in (Kite is on the server); else it goes out (on the client). The response
/// direction starts at its next byte (`snd_nxt` / `rcv_nxt`): a server's SETTINGS sent before
/// the preface arrived is a whole frame already behind it.
#[inline(always)]
pub(crate) fn open(ctx: &SkBuffContext, sk: *mut bpf_sock, w: &Work, rx: bool) -> bool {
    let c = create(sk);
    if c.is_null() {
        return false;
    }
    // SAFETY: the socket's storage; plain helper calls.
    unsafe {
        if (*c).role != ROLE_NONE {
            // Created by another CPU meanwhile.
            return true;
        }
        let role = if rx { H2_SERVER } else { H2_CLIENT };
        let cg = bpf_skb_cgroup_id(ctx.skb.skb);
        let tp = bpf_tcp_sock(sk);
        if !tp.is_null() {
            if rx {
                (*c).start_at(false, (*tp).snd_nxt);
            } else {
                (*c).start_at(true, (*tp).rcv_nxt);
            }
        }
        (*c).hold.flags |= HF_ON;
        // Last: it writes `role`, which makes the state live for the other CPUs.
        (*c).init(role, cg, w.dst, Tcp::dport(w));
    }
    live_add(LIVE_H2_SOCKETS, 1);
    bump(Stat::H2ConnsOpened, 1);
    true
}

/// A segment of an established connection that has no state, is not at its stream's start
/// and is not HTTP/1: a connection first seen midway (an agent started under a connection
/// pool). Joined if its payload passes [`JoinCheck`] (a chain of frames of valid shape ending
/// exactly at its end whose HEADERS blocks tell which way requests go); the other direction resynchronises at its first segment of frame shape
/// ([`H2Conn::init_joined_at`]). Returns whether the packet now goes to `kite_h2_*`. Out of
/// line (its own call chain). `w.head` holds the payload's first bytes (`starts_http`).
#[inline(never)]
pub(crate) fn join<const BENCH: bool>(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    w: &mut Work,
    rx: bool,
    at: u64,
) -> bool {
    // `at`: the payload's offset (high half) and length (low half), in one argument (at most
    // five, and nothing added to the caller's stack).
    let (base, len) = ((at >> 32) as u32, at as u32);
    if len < 9 {
        return false;
    }
    // The first frame header is in `w.head` already (the caller's `starts_http` loaded the
    // payload's first bytes): a segment that does not start with one returns here, before any
    // helper call. A mid-stream connection that is not HTTP pays this per payload packet.
    let mut first = [0u8; 9];
    first.copy_from_slice(&w.head[..9]);
    if JoinCheck::new().frame(&first).is_none() {
        return false;
    }
    let seq = u32::from_be_bytes([w.tcp[4], w.tcp[5], w.tcp[6], w.tcp[7]]);
    // SAFETY: plain helper call on a full socket; fields read only when non-null.
    let (nxt, rcv) = unsafe {
        let tp = bpf_tcp_sock(sk);
        if tp.is_null() {
            // `BENCH` (`kite-bench micro`): a test run's socket has no TCP state; the frame
            // test below is what is measured.
            if !BENCH {
                return false;
            }
            (seq, seq)
        } else {
            (
                core::ptr::read_volatile(core::ptr::addr_of!((*tp).snd_nxt)),
                core::ptr::read_volatile(core::ptr::addr_of!((*tp).rcv_nxt)),
            )
        }
    };
    // New bytes only: a retransmission (sent below `snd_nxt`, received below `rcv_nxt`)
    // would start streams at the wrong time.
    if (seq.wrapping_sub(if rx { rcv } else { nxt }) as i32) < 0 {
        return false;
    }
    let mut off = 0u32;
    let mut chk = JoinCheck::new();
    let mut i = 0;
    while i < JOIN_FRAMES && off < len {
        if off + 9 > len || load_bytes(ctx, base + off, w.head.as_mut_ptr(), 9).is_err() {
            return false;
        }
        let mut h = [0u8; 9];
        h.copy_from_slice(&w.head[..9]);
        let Some(flen) = chk.frame(&h) else {
            return false;
        };
        let at = chk.block_at;
        if at != 0
            && load_bytes(ctx, base + off + at, w.head.as_mut_ptr(), 1).is_ok()
            && !chk.block(w.head[0])
        {
            return false;
        }
        off += 9 + flen;
        i += 1;
    }
    if off != len {
        return false;
    }
    let Some(way) = chk.way() else {
        return false;
    };
    if BENCH {
        return false;
    }
    // The server is this packet's receiver if it carries requests, else its sender.
    let requests = way == WAY_REQUEST;
    let role = if rx == requests { H2_SERVER } else { H2_CLIENT };
    let (addr, port) = if requests {
        (w.dst, Tcp::dport(w))
    } else {
        source(w);
        (w.key.remote, Tcp::sport(w))
    };
    let c = create(sk);
    if c.is_null() {
        return false;
    }
    // SAFETY: the socket's storage; plain helper calls.
    unsafe {
        if (*c).role != ROLE_NONE {
            return true;
        }
        // The other direction at the kernel's next byte (`snd_nxt` sent, `rcv_nxt` received).
        let other = if rx { nxt } else { rcv };
        let cg = bpf_skb_cgroup_id(ctx.skb.skb);
        (*c).hold.flags |= HF_ON;
        (*c).init_joined_at(role, cg, addr, port, rx, seq, other, bpf_ktime_get_ns());
    }
    live_add(LIVE_H2_SOCKETS, 1);
    bump(Stat::H2ConnsOpened, 1);
    bump(Stat::H2ConnsJoined, 1);
    true
}

/// `Upgrade: h2c` (RFC 7540 §3.2): this packet carried the end of a `101` response that the
/// HTTP/1 machine of this socket switched on, held back in [`UPGRADE`]. If the `101`'s header
/// block, in this packet, ends with an `Upgrade: h2c` line (`h2c\r\n` in its last 128 bytes),
/// the connection goes on as HTTP/2 (`H2Conn::init_upgraded`): the request stream at its next
/// byte (the client sends the preface after the `101`), the response stream after the `101`,
/// the upgrade request as stream 1, timed from its first byte. Anything else (a WebSocket
/// switch, a `101` whose head began in an earlier packet) is recorded as HTTP/1, as before.
#[inline(always)]
fn upgrade(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    w: &mut Work,
    p: &Tcp,
    slot: u32,
    done: &mut u32,
) -> *mut H2Conn {
    let null = core::ptr::null_mut();
    let Some(u) = UPGRADE.get_ptr_mut(slot) else {
        return null;
    };
    let http = storage(sk.cast());
    // SAFETY: this CPU's map value; `http` this socket's HTTP/1 state.
    unsafe {
        if http.is_null() || (*u).owner != http as u64 {
            return null;
        }
        (*u).owner = 0;
        let t = &w.tcp;
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        let end = (*u).resp_end.wrapping_sub(seq);
        if end > p.len || !says_h2c(ctx, w, p.base, end) {
            record_http1(&*http, &(*u).done);
            return null;
        }
        let fs = bpf_sk_fullsock(sk);
        if fs.is_null() || live(LIVE_H2_SOCKETS) >= max_h2_sockets() {
            bump(Stat::H2SocketsMapFull, 1);
            record_http1(&*http, &(*u).done);
            return null;
        }
        let c: *mut H2Conn = bpf_sk_storage_get(
            h2_ptr(),
            fs.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
        .cast();
        if c.is_null() {
            bump(Stat::H2SocketsMapFull, 1);
            record_http1(&*http, &(*u).done);
            return null;
        }
        if (*c).role != ROLE_NONE {
            return c;
        }
        let h = &*http;
        let server = h.role == H2_SERVER;
        let req_seq = if server { h.rx.next_seq } else { h.tx.next_seq };
        let d = &(*u).done;
        (*c).hold.flags |= HF_ON;
        (*c).init_upgraded(
            h.role,
            h.cgroup_id,
            h.addr,
            h.port,
            req_seq,
            (*u).resp_end,
            (*u).now_ns.saturating_sub(d.latency_ns),
            Method::from_u8(d.method),
        );
        live_add(LIVE_H2_SOCKETS, 1);
        bump(Stat::H2ConnsOpened, 1);
        *done = end;
        c
    }
}

/// Whether the `end` payload bytes before offset `end` (at most the last 128 of them) hold
/// `h2c\r\n`: a `101` response's `Upgrade: h2c` line.
#[inline(always)]
fn says_h2c(ctx: &SkBuffContext, w: &mut Work, base: u32, end: u32) -> bool {
    const N: u32 = 128;
    let start = end.saturating_sub(N);
    let n = end - start;
    let mut skb = Skb {
        skb: ctx.skb.skb,
        base,
    };
    if n < 5 || !skb.load(start, &mut w.scratch, n) {
        return false;
    }
    let b = &w.scratch.bytes;
    let mut found = 0u32;
    let mut i = 0usize;
    while i + 5 <= N as usize {
        if (i + 5) as u32 <= n
            && b[i] == b'h'
            && b[i + 1] == b'2'
            && b[i + 2] == b'c'
            && b[i + 3] == b'\r'
            && b[i + 4] == b'\n'
        {
            found = 1;
        }
        i += 1;
    }
    found != 0
}

/// Records finished streams in the endpoint histograms, counters in `STATS`.
#[derive(Default)]
pub(crate) struct H2KernelSink;

impl H2Sink for H2KernelSink {
    #[inline(always)]
    fn record(&mut self, conn: &H2Conn, done: &H2Done) {
        record(conn, done, TRANSPORT_TCP);
    }

    #[inline(always)]
    fn add(&mut self, stat: H2Stat, n: u64) {
        bump_at(Stat::from_h2(stat), n);
    }

    #[inline(always)]
    fn rpc_path(&mut self, path_id: u32, path: &PathBuf) {
        rpc_name(path_id, path);
    }
}

/// Records finished streams of HTTP/2 inside TLS (the uprobes' plaintext, `crate::tls`):
/// as [`H2KernelSink`], with `transport` TLS.
#[derive(Default)]
pub(crate) struct H2TlsSink;

impl H2Sink for H2TlsSink {
    #[inline(always)]
    fn record(&mut self, conn: &H2Conn, done: &H2Done) {
        record(conn, done, TRANSPORT_TLS);
    }

    #[inline(always)]
    fn add(&mut self, stat: H2Stat, n: u64) {
        H2KernelSink.add(stat, n);
    }

    #[inline(always)]
    fn rpc_path(&mut self, path_id: u32, path: &PathBuf) {
        H2KernelSink.rpc_path(path_id, path);
    }
}

/// Sends the name of gRPC method `path_id` to user space unless it was sent before. Out of
/// line: only header blocks with a literal gRPC `:path` come here.
#[inline(never)]
fn rpc_name(path_id: u32, path: &PathBuf) {
    let rpc = rpc_id(path_id);
    // SAFETY: a lookup; the value is not used.
    if unsafe { RPC_SEEN.get(&rpc) }.is_some() {
        return;
    }
    if RPC_SEEN.insert(&rpc, &0, BPF_NOEXIST as u64).is_err() {
        // Inserted by another CPU meanwhile (it sends the name), or the map is full.
        // SAFETY: as above.
        if unsafe { RPC_SEEN.get(&rpc) }.is_none() {
            bump(Stat::RpcSeenFull, 1);
        }
        return;
    }
    if RPC_NAMES.output::<PathBuf>(path, 0).is_ok() {
        bump(Stat::RpcNames, 1);
    } else {
        // Sent at the method's next literal `:path`.
        let _ = RPC_SEEN.remove(&rpc);
        bump(Stat::RpcNamesDropped, 1);
    }
}

/// A gRPC call's key is new in `ENDPOINTS`: its method must be one of its endpoint's first
/// [`MAX_RPC_PER_ENDPOINT`], else it becomes [`RPC_OTHER`]. Returns whether `key` changed.
#[inline(never)]
pub(crate) fn bound_rpc(key: &mut EndpointKey) -> bool {
    let Some(mk) = RPC_KEY.get_ptr_mut(crate::level()) else {
        return false;
    };
    // SAFETY: this CPU's map value of this run's nesting level.
    let mk = unsafe { &mut *mk };
    *mk = RpcMethodKey {
        ep: RpcEndpointKey {
            cgroup_id: key.cgroup_id,
            addr: key.addr,
            port: key.port,
            direction: key.direction,
            _pad: [0; 5],
        },
        rpc: key.rpc,
        _pad: 0,
    };
    // SAFETY: a lookup; the value is not used.
    if unsafe { RPC_METHODS.get(&*mk) }.is_some() {
        return false;
    }
    let mut n = RPC_ENDPOINTS.get_ptr_mut(&mk.ep);
    if n.is_none() {
        let _ = RPC_ENDPOINTS.insert(&mk.ep, &0, BPF_NOEXIST as u64);
        n = RPC_ENDPOINTS.get_ptr_mut(&mk.ep);
    }
    let Some(n) = n else {
        bump(Stat::RpcMethodsFull, 1);
        key.rpc = RPC_OTHER;
        return true;
    };
    // SAFETY: a map value, read once (two CPUs may both pass at the bound: one method more).
    if unsafe { core::ptr::read_volatile(n) } >= MAX_RPC_PER_ENDPOINT as u64 {
        bump(Stat::RpcOther, 1);
        key.rpc = RPC_OTHER;
        return true;
    }
    match RPC_METHODS.insert(&*mk, &0, BPF_NOEXIST as u64) {
        Ok(()) => xadd64(n, 1),
        Err(_) => {
            // SAFETY: as above.
            if unsafe { RPC_METHODS.get(&*mk) }.is_none() {
                bump(Stat::RpcMethodsFull, 1);
                key.rpc = RPC_OTHER;
                return true;
            }
        }
    }
    false
}

/// One finished stream: key (in [`key_slot`]'s memory) and the endpoint's histogram (inlined:
/// out of line, the deepest call chain needs more than the verifier's 512 bytes of stack).
#[inline(always)]
fn record(conn: &H2Conn, done: &H2Done, transport: u8) {
    let key = key_slot();
    if key.is_null() {
        return;
    }
    // SAFETY: this run's slot of a per-CPU map (see `key_slot`).
    let key = unsafe { &mut *key };
    let direction = if conn.role == H2_SERVER {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let grpc = done.grpc == GRPC_YES;
    let (protocol, status, rpc) = if grpc {
        let g = done.grpc_status;
        let status = if g == GRPC_STATUS_NONE || g == kite_common::h2::GRPC_STATUS_UNKNOWN {
            GRPC_STATUS_UNKNOWN
        } else {
            g as u16
        };
        let rpc = if done.path_id == PATH_UNKNOWN {
            RPC_UNKNOWN
        } else {
            rpc_id(done.path_id)
        };
        (Protocol::Grpc as u8, status, rpc)
    } else {
        (Protocol::Http as u8, done.status, RPC_NONE)
    };
    *key = EndpointKey {
        cgroup_id: conn.cgroup_id,
        addr: conn.addr,
        port: conn.port,
        status,
        direction: direction as u8,
        method: done.method,
        version: Version::Http2 as u8,
        protocol,
        rpc,
        transport,
        _pad: [0; 3],
    };
    // A gRPC call is timed whole (OpenTelemetry's `rpc.*.call.duration`: first request byte
    // to the response's end), so a streaming call is not its first headers' latency; other
    // HTTP/2 exchanges as HTTP/1's (to the response's first byte).
    let ns = if grpc {
        done.duration_ns
    } else {
        done.latency_ns
    };
    record_endpoint_with(
        key,
        ns,
        done.req_bytes,
        done.resp_bytes,
        |k: &mut EndpointKey| grpc && k.rpc > RPC_OTHER && bound_rpc(k),
    );
}

/// What the `bpf_loop` callback needs; lives on the program's stack.
#[repr(C)]
struct Walk {
    conn: *mut H2Conn,
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
        &mut H2KernelSink,
    ) {
        0
    } else {
        1
    }
}

/// [`H2Conn::begin`] with the kernel's own position in the direction: bytes below it are in
/// the socket (received) or acknowledged (sent), never to pass this hook again. Out of line:
/// its locals would otherwise sit in the frame under the deepest call chain (at the
/// verifier's 512 bytes).
#[inline(never)]
fn begin(c: &mut H2Conn, work: &mut Work, sk: *mut bpf_sock, seq: u32, rx: bool) -> bool {
    // SAFETY: plain helper call on the socket; its fields read only when non-null.
    let known = unsafe {
        let tp = bpf_tcp_sock(sk);
        if tp.is_null() {
            // Unknown: nothing is taken as gone.
            if rx { c.rx.next_seq } else { c.tx.next_seq }
        } else {
            // Both loaded (volatile): a load through a selected field address is pointer
            // arithmetic on a `tcp_sock`, which the verifier refuses.
            let nxt = core::ptr::read_volatile(core::ptr::addr_of!((*tp).rcv_nxt));
            let una = core::ptr::read_volatile(core::ptr::addr_of!((*tp).snd_una));
            if rx { nxt } else { una }
        }
    };
    c.begin(&mut work.seg, seq, known, &mut H2KernelSink)
}

/// A packet of an HTTP/2 connection (from the tail call). `BENCH`: the microbenchmark's copy
/// (`kite_bench_h2`), on a fresh copy of a canned state (`crate::bench_h2_conn`).
#[inline(always)]
pub(crate) fn on_packet<const BENCH: bool>(
    ctx: &SkBuffContext,
    rx: bool,
    slot: u32,
) -> Result<(), i64> {
    let work = WORK.get_ptr_mut(slot).ok_or(0)?;
    // SAFETY: this CPU's map value.
    let w = unsafe { &mut *work };
    let Some(p) = headers(ctx, w, false)? else {
        return Ok(());
    };
    if p.len == 0 {
        return Ok(());
    }
    let sk = ctx_sock(ctx);
    if sk.is_null() {
        return Ok(());
    }
    let mut conn = h2_storage(sk.cast());
    if BENCH {
        conn = crate::bench_h2_conn();
    }
    // Payload bytes already parsed as HTTP/1 (the `101` of an upgrade, in this packet).
    let mut done = 0u32;
    if conn.is_null() {
        if BENCH {
            return Ok(());
        }
        conn = upgrade(ctx, sk, w, &p, slot, &mut done);
        if conn.is_null() {
            return Ok(());
        }
    }
    // SAFETY: socket storage of this socket; `work` a map value; `walk` outlives bpf_loop.
    unsafe {
        if (*conn).role == ROLE_NONE {
            return Ok(());
        }
        bump(Stat::PayloadPackets, 1);
        let t = &(*work).tcp;
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]).wrapping_add(done);
        (*work).seg = Segment::new(rx, p.len - done, bpf_ktime_get_ns());
        let mut walk = Walk {
            conn,
            work,
            skb: Skb {
                skb: ctx.skb.skb,
                base: p.base + done,
            },
        };
        let c = &mut *conn;
        if begin(c, &mut *work, sk, seq, rx) {
            bpf_loop(
                H2_MAX_STEPS,
                walk_step as *mut c_void,
                &mut walk as *mut Walk as *mut c_void,
                0,
            );
        }
        c.end(&mut (*work).seg, &mut H2KernelSink);
        if rx && !BENCH && (c.hold.flags & HF_COPY != 0 || c.hold.pending(c.rx.next_seq)) {
            // A segment to hold, or held bytes now due: `kite_h2_hold`, on this packet.
            leave();
            let _ = TAILS.tail_call(ctx, TAIL_H2_HOLD);
            let _ = enter();
            // The jump failed: nothing can be held.
            c.hold_failed(&mut H2KernelSink);
        }
    }
    Ok(())
}

/// Received packets of HTTP/2 connections (tail call from `kite_ingress`).
#[cgroup_skb(ingress)]
pub fn kite_h2_ingress(ctx: SkBuffContext) -> i32 {
    let slot = enter();
    let _ = on_packet::<false>(&ctx, true, slot);
    leave();
    1
}

/// Sent packets of HTTP/2 connections (tail call from `kite_egress`).
#[cgroup_skb(egress)]
pub fn kite_h2_egress(ctx: SkBuffContext) -> i32 {
    let slot = enter();
    let _ = on_packet::<false>(&ctx, false, slot);
    leave();
    1
}

/// Payload bytes held in a [`HoldBuf`], from window offset `off`.
#[repr(C)]
struct HeldBytes {
    buf: *mut HoldBuf,
    off: u32,
}

impl Payload for HeldBytes {
    #[inline(always)]
    fn load(&mut self, off: u32, dst: &mut Scratch, len: u32) -> bool {
        // As `Skb::load`: 64-bit bounds the verifier can see, for the length and the offset
        // (below `HOLD_BYTES`: the value has a `WINDOW` of room beyond).
        let len = len as u64;
        // SAFETY: reading a local.
        let len = unsafe { core::ptr::read_volatile(&len) } & 0x1ff;
        let at = (self.off as u64 + off as u64) & (HOLD_BYTES as u64 - 1);
        if len == 0 || len > WINDOW as u64 || self.off as u64 + off as u64 + len > HOLD_BYTES as u64
        {
            return false;
        }
        // SAFETY: `dst` has room for WINDOW bytes; `at + len` is inside the buffer (a map value).
        unsafe {
            bpf_probe_read_kernel(
                dst as *mut Scratch as *mut c_void,
                len as u32,
                (*self.buf).bytes.as_ptr().add(at as usize).cast(),
            ) == 0
        }
    }
}

/// What the `bpf_loop` callback of [`replay`] needs; lives on the program's stack.
#[repr(C)]
struct HeldWalk {
    conn: *mut H2Conn,
    work: *mut Work,
    src: HeldBytes,
}

extern "C" fn held_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `HeldWalk` on the caller's stack; its pointers are map values.
    let w = unsafe { &mut *(ctx as *mut HeldWalk) };
    let (conn, work) = unsafe { (&mut *w.conn, &mut *w.work) };
    if conn.step(
        &mut work.seg,
        &mut work.scratch,
        &mut w.src,
        &mut H2KernelSink,
    ) {
        0
    } else {
        1
    }
}

/// Copies the payload of this packet that `begin` held (from sequence number `at` of the
/// window on) into the buffer: at most [`HOLD_BYTES`] bytes in [`WINDOW`]-byte pieces.
#[inline(always)]
fn copy_held(
    ctx: &SkBuffContext,
    w: &Work,
    p: &Tcp,
    c: &H2Conn,
    at: u32,
    buf: *mut HoldBuf,
) -> bool {
    let t = &w.tcp;
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    // The held segment is this packet's payload from `skip` on (`skip` > 0: after the `101`
    // of an upgrade).
    let skip = c.hold.base.wrapping_add(at).wrapping_sub(seq);
    if skip >= p.len || p.len - skip > HOLD_BYTES as u32 - at {
        return false;
    }
    let n = p.len - skip;
    let mut i = 0u32;
    while i < (HOLD_BYTES / WINDOW) as u32 {
        let done = i * WINDOW as u32;
        if done >= n {
            break;
        }
        let k = n - done;
        let k = (if k > WINDOW as u32 { WINDOW as u32 } else { k }) as u64;
        // SAFETY: reading a local (a bound the verifier can see, as in `Skb::load`).
        let k = unsafe { core::ptr::read_volatile(&k) } & 0x1ff;
        let to = ((at + done) as u64) & (HOLD_BYTES as u64 - 1);
        if k == 0 || k > WINDOW as u64 {
            return false;
        }
        // SAFETY: `to + k` is inside the buffer (`HOLD_BYTES` + `WINDOW` bytes); the helper
        // checks the packet bounds.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                p.base + skip + done,
                (*buf).bytes.as_mut_ptr().add(to as usize).cast(),
                k as u32,
            )
        };
        if r != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// Parses `len` held bytes at window offset `off` (sequence number `seq`) as a received
/// segment of its own, timed now (TCP hands them to the application with the gap's bytes).
#[inline(always)]
fn replay(c: *mut H2Conn, work: *mut Work, buf: *mut HoldBuf, seq: u32, off: u32, len: u32) {
    // SAFETY: `c` the socket's state, `work` this CPU's map value; `walk` outlives bpf_loop.
    unsafe {
        (*work).seg = Segment::new(true, len, bpf_ktime_get_ns());
        let mut walk = HeldWalk {
            conn: c,
            work,
            src: HeldBytes { buf, off },
        };
        // The kernel has these bytes (they were held for it): nothing before `seq` is gone.
        if (*c).begin(&mut (*work).seg, seq, seq, &mut H2KernelSink) {
            bpf_loop(
                H2_MAX_STEPS,
                held_step as *mut c_void,
                &mut walk as *mut HeldWalk as *mut c_void,
                0,
            );
        }
        (*c).end(&mut (*work).seg, &mut H2KernelSink);
    }
}

/// One run of `kite_h2_hold`: copies the segment `kite_h2_ingress` just held, then does what
/// the parser's position makes due: parses one held range (returns `true`: the program runs
/// again on this packet to see what is due after it), or deletes the buffer once nothing is
/// held.
#[inline(always)]
fn hold_run(ctx: &SkBuffContext, slot: u32) -> bool {
    let Some(work) = WORK.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's map value.
    let w = unsafe { &mut *work };
    let Ok(Some(p)) = headers(ctx, w, false) else {
        return false;
    };
    let sk = ctx_sock(ctx);
    if sk.is_null() {
        return false;
    }
    let c = h2_storage(sk.cast());
    if c.is_null() {
        return false;
    }
    // SAFETY: the socket's state.
    let c = unsafe { &mut *c };
    if c.role == ROLE_NONE {
        return false;
    }
    let mut buf = hold_buf(sk.cast(), false);
    if let Some(at) = c.take_copy() {
        if buf.is_null() {
            buf = hold_buf(sk.cast(), true);
        }
        if buf.is_null() || !copy_held(ctx, w, &p, c, at, buf) {
            c.hold_failed(&mut H2KernelSink);
        } else {
            c.hold.flags |= HF_BUF;
        }
    }
    match c.hold_due() {
        Due::Nothing => false,
        Due::Free => {
            hold_delete(sk.cast());
            false
        }
        Due::Replay { seq, off, len } => {
            if buf.is_null() {
                c.hold_failed(&mut H2KernelSink);
                return false;
            }
            replay(c, work, buf, seq, off, len);
            true
        }
    }
}

/// Received HTTP/2 segments held beyond a gap (tail call from `kite_h2_ingress`, and from
/// itself after a held range was parsed): its own verifier budget for a second parser
/// instance reading from the buffer.
#[cgroup_skb(ingress)]
pub fn kite_h2_hold(ctx: SkBuffContext) -> i32 {
    let slot = enter();
    let again = hold_run(&ctx, slot);
    leave();
    if again {
        // SAFETY: jumps to this program (the kernel bounds the chain at 33 calls).
        let _ = unsafe { TAILS.tail_call(&ctx, TAIL_H2_HOLD) };
    }
    1
}

/// `bpf_loop` context of [`release`].
#[repr(C)]
struct Release {
    conn: *mut H2Conn,
    now_ns: u64,
}

extern "C" fn release_step<S: H2Sink + Default>(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Release` on the caller's stack; `conn` a map value.
    let r = unsafe { &mut *(ctx as *mut Release) };
    let c = unsafe { &mut *r.conn };
    c.release_slot(index as usize, r.now_ns, &mut S::default());
    0
}

/// Records the streams of a live state `c` that have a response and counts the others, into
/// sink `S` (the caller has entered its level, see `enter`).
#[inline(always)]
pub(crate) fn release_streams<S: H2Sink + Default>(c: *mut H2Conn) {
    let mut r = Release {
        conn: c,
        // SAFETY: plain helper call.
        now_ns: unsafe { bpf_ktime_get_ns() },
    };
    // SAFETY: `r` outlives the loop; `c` is a map value.
    unsafe {
        bpf_loop(
            H2_STREAMS as u32,
            release_step::<S> as *mut c_void,
            &mut r as *mut Release as *mut c_void,
            0,
        );
    }
}

/// The socket of `sk` is going away: records its HTTP/2 streams that have a response, counts
/// the others, and marks the state dead. Returns whether it had a live state.
#[inline(always)]
pub(crate) fn release(sk: *mut c_void) -> bool {
    let c = h2_storage(sk);
    if c.is_null() {
        return false;
    }
    // SAFETY: socket storage of this socket.
    unsafe {
        if (*c).role == ROLE_NONE {
            return false;
        }
        // A level of its own: a packet's program may interrupt this one (see `enter`).
        enter();
        release_streams::<H2KernelSink>(c);
        leave();
        (*c).role = ROLE_NONE;
    }
    // A hold buffer goes with the socket (or with [`delete`]); it stops counting now: a dead
    // state never holds or parses again.
    if live(LIVE_H2_HOLDS) != 0 && !hold_buf(sk, false).is_null() {
        live_add(LIVE_H2_HOLDS, u64::MAX);
    }
    live_add(LIVE_H2_SOCKETS, u64::MAX);
    bump(Stat::H2ConnsClosed, 1);
    true
}

/// Deletes the HTTP/2 state and hold buffer of a closing socket (after [`release`]).
#[inline(always)]
pub(crate) fn delete(sk: *mut c_void) {
    // SAFETY: a socket pointer checked by the verifier.
    unsafe {
        bpf_sk_storage_delete(h2_ptr(), sk);
        bpf_sk_storage_delete(holds_ptr(), sk);
    }
}
