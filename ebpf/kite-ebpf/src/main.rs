//! Kite's kernel programs.
//!
//! * `kite_ingress` / `kite_egress` (`cgroup_skb`): every IPv4/IPv6 TCP packet of the attached
//!   cgroup's sockets. Packets of tracked HTTP connections go through the shared state machine
//!   ([`kite_common::http::Conn`]); a completed request updates the per-CPU histogram of its
//!   endpoint. Nothing per request is sent to user space.
//! * `kite_sock_release` (`cgroup/sock_release`): records what a closing socket still holds and
//!   frees its state.
//!
//! Every program returns 1: packets are never dropped or changed.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_socket_cookie, bpf_loop, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    },
    macros::{cgroup_skb, cgroup_sock, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{SkBuffContext, SockContext},
};
use kite_common::{
    hist,
    http::{
        Completion, Conn, MAX_STEPS, Payload, ROLE_CLIENT, ROLE_SERVER, START_LEN, Scratch,
        Segment, Sink, WINDOW, opens_connection,
    },
    maps::{
        DEFAULT_MAX_ENDPOINTS, DEFAULT_MAX_SOCKETS, Direction, EndpointKey, EndpointStats,
        STAT_COUNT, Stat,
    },
};

/// Tracked HTTP connections, by socket cookie. Bounded; when full, new connections are not
/// tracked ([`Stat::SocketsMapFull`]). Entries are removed at socket release.
#[map(name = "SOCKETS")]
static SOCKETS: HashMap<u64, Conn> =
    HashMap::with_max_entries(DEFAULT_MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// Per-endpoint histograms. Bounded; when full, requests of new keys are not recorded
/// ([`Stat::EndpointsMapFull`]).
#[map(name = "ENDPOINTS")]
static ENDPOINTS: PerCpuHashMap<EndpointKey, EndpointStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

/// Self-metric counters, indexed by [`Stat`].
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Per-CPU working memory of the parser: the segment cursor and the payload window.
///
/// The cursor lives here rather than on the stack on purpose: the verifier does not track the
/// values inside map memory, so the `bpf_loop` callback's states converge after one iteration
/// instead of being explored once per byte position. Every use is bounded by explicit checks.
#[repr(C)]
struct Work {
    seg: Segment,
    scratch: Scratch,
}

#[map(name = "WORK")]
static WORK: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);

/// Never written: the zero value new map entries are copied from (too big for the stack).
#[map(name = "ZERO_CONN")]
static ZERO_CONN: Array<Conn> = Array::with_max_entries(1, 0);

/// Never written: the zero histogram new endpoints start from.
#[map(name = "ZERO_STATS")]
static ZERO_STATS: Array<EndpointStats> = Array::with_max_entries(1, 0);

#[inline(always)]
fn bump(stat: Stat, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU value of this CPU; programs do not migrate while running.
        unsafe { *p += n };
    }
}

struct KernelSink;

impl Sink for KernelSink {
    #[inline(always)]
    fn record(&mut self, conn: &Conn, done: &Completion) {
        let direction = if conn.role == ROLE_SERVER {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        let key = EndpointKey {
            cgroup_id: conn.cgroup_id,
            addr: conn.addr,
            port: conn.port,
            status: done.status,
            direction: direction as u8,
            method: done.method,
            _pad: [0; 2],
        };
        let stats = match ENDPOINTS.get_ptr_mut(&key) {
            Some(p) => p,
            None => {
                let Some(zero) = ZERO_STATS.get(0) else {
                    return;
                };
                // Another CPU may have inserted it meanwhile (EEXIST): look it up again.
                let _ = ENDPOINTS.insert(&key, zero, BPF_NOEXIST as u64);
                match ENDPOINTS.get_ptr_mut(&key) {
                    Some(p) => p,
                    None => {
                        bump(Stat::EndpointsMapFull, 1);
                        return;
                    }
                }
            }
        };
        let b = hist::bucket_index(done.latency_ns);
        // SAFETY: a per-CPU value of this CPU.
        unsafe {
            (*stats).count += 1;
            (*stats).latency_sum_ns += done.latency_ns;
            (*stats).req_bytes += done.req_bytes;
            (*stats).resp_bytes += done.resp_bytes;
            if b < hist::NUM_BUCKETS {
                (*stats).buckets[b] = (*stats).buckets[b].wrapping_add(1);
            }
        }
        bump(Stat::Requests, 1);
    }

    #[inline(always)]
    fn add(&mut self, stat: Stat, n: u64) {
        bump(stat, n);
    }
}

/// Payload bytes of the packet, `base` being the offset of the TCP payload.
#[repr(C)]
struct Skb {
    skb: *mut __sk_buff,
    base: u32,
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
fn mapped_v4(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, rx: bool) -> Result<(), i64> {
    bump(Stat::Packets, 1);
    // One copy covers an IPv4 header without options and the TCP header's first 20 bytes
    // (every IPv4 TCP packet has them), or the whole IPv6 header: helper calls cost more than
    // the bytes.
    let h: [u8; 40] = ctx.load(0)?;
    let (tcp, dst): ([u8; 16], [u8; 16]) = match h[0] >> 4 {
        4 => {
            let frag = u16::from_be_bytes([h[6], h[7]]);
            if h[9] != IPPROTO_TCP || frag & 0x1fff != 0 {
                return Ok(());
            }
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            let tcp = if ihl == 20 {
                let mut t = [0u8; 16];
                t.copy_from_slice(&h[20..36]);
                t
            } else {
                ctx.load(ihl)?
            };
            (tcp, mapped_v4([h[16], h[17], h[18], h[19]]))
        }
        6 => {
            if h[6] != IPPROTO_TCP {
                return Ok(());
            }
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&h[24..40]);
            (ctx.load(40)?, dst)
        }
        _ => return Ok(()),
    };
    let l4: u32 = if h[0] >> 4 == 4 {
        ((h[0] & 0x0f) as u32) * 4
    } else {
        40
    };
    let doff = ((tcp[12] >> 4) as u32) * 4;
    let fin = tcp[13] & TCP_FIN != 0;
    let base = l4 + doff;
    let skb_len = ctx.len();
    let len = skb_len.saturating_sub(base);
    if len == 0 && !fin {
        return Ok(());
    }
    // SAFETY: plain helper calls on this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let conn = match SOCKETS.get_ptr_mut(&cookie) {
        Some(c) => c,
        None => {
            // Track a connection from its first request on.
            let requests_in = rx;
            if len == 0 {
                return Ok(());
            }
            let mut head = [0u8; START_LEN];
            let n = if len < START_LEN as u32 {
                len as usize
            } else {
                START_LEN
            };
            if n == START_LEN {
                head = ctx.load(base as usize)?;
            } else {
                let mut i = 0;
                while i < START_LEN {
                    if i < n {
                        head[i] = ctx.load(base as usize + i)?;
                    }
                    i += 1;
                }
            }
            if !opens_connection(&head, n) {
                return Ok(());
            }
            let zero = ZERO_CONN.get(0).ok_or(0)?;
            if SOCKETS.insert(&cookie, zero, BPF_NOEXIST as u64).is_err() {
                bump(Stat::SocketsMapFull, 1);
                return Ok(());
            }
            let c = SOCKETS.get_ptr_mut(&cookie).ok_or(0)?;
            // The packet's destination is the endpoint either way: the server's own address for
            // a request coming in, the server's address for a request going out.
            let port = u16::from_be_bytes([tcp[2], tcp[3]]);
            let role = if requests_in {
                ROLE_SERVER
            } else {
                ROLE_CLIENT
            };
            // SAFETY: plain helper call; `c` points at the new map value.
            unsafe {
                let cg = bpf_skb_cgroup_id(ctx.skb.skb);
                (*c).init(role, cg, dst, port, bpf_ktime_get_ns());
            }
            bump(Stat::ConnsOpened, 1);
            c
        }
    };
    let work = WORK.get_ptr_mut(0).ok_or(0)?;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    // SAFETY: `conn` and `work` are map values; `walk` outlives the bpf_loop call.
    unsafe {
        (*work).seg = Segment::new(rx, len, bpf_ktime_get_ns());
        let mut walk = Walk {
            conn,
            work,
            skb: Skb {
                skb: ctx.skb.skb,
                base,
            },
        };
        let c = &mut *conn;
        if c.begin(&mut (*work).seg, seq, false, &mut KernelSink) {
            bpf_loop(
                MAX_STEPS,
                walk_step as *mut c_void,
                &mut walk as *mut Walk as *mut c_void,
                0,
            );
        }
        c.end(&mut (*work).seg, fin, &mut KernelSink);
    }
    Ok(())
}

/// Packets arriving at the cgroup's sockets.
#[cgroup_skb(ingress)]
pub fn kite_ingress(ctx: SkBuffContext) -> i32 {
    let _ = on_packet(&ctx, true);
    1
}

/// Packets leaving the cgroup's sockets.
#[cgroup_skb(egress)]
pub fn kite_egress(ctx: SkBuffContext) -> i32 {
    let _ = on_packet(&ctx, false);
    1
}

/// Does nothing: attached in place of Kite's programs, it measures what a `cgroup_skb`
/// program costs by itself (the benchmarks report Kite's cost next to it).
#[cgroup_skb]
pub fn kite_empty(_ctx: SkBuffContext) -> i32 {
    1
}

/// A socket of the cgroup is released: record what it still holds, forget it.
#[cgroup_sock(sock_release)]
pub fn kite_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: plain helper call on this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(c) = SOCKETS.get_ptr_mut(&cookie) {
        // SAFETY: a map value; removed right after.
        unsafe { (*c).release(&mut KernelSink) };
        let _ = SOCKETS.remove(&cookie);
        bump(Stat::ConnsClosed, 1);
    }
    1
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
