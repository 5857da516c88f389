//! Verifier probe (not part of Kite's programs; `../run.sh`): does the verifier accept kite-common's h2 machine
//! under bpf_loop, with its state in map memory?
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_loop, bpf_skb_load_bytes},
    },
    macros::{cgroup_skb, map},
    maps::PerCpuArray,
    programs::SkBuffContext,
};
use kite_common::{
    h2::{H2_MAX_STEPS, H2Conn, H2Done, H2Sink, H2Stat},
    http::{Payload, Scratch, Segment, WINDOW},
};

#[repr(C)]
struct Work {
    seg: Segment,
    scratch: Scratch,
}

#[map(name = "WORK")]
static WORK: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "CONNS")]
static CONNS: PerCpuArray<H2Conn> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(32, 0);
#[map(name = "DONE")]
static DONE: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

struct KSink;

impl H2Sink for KSink {
    #[inline(always)]
    fn record(&mut self, _conn: &H2Conn, done: &H2Done) {
        if let Some(p) = DONE.get_ptr_mut(0) {
            unsafe { *p += done.latency_ns + done.status as u64 }
        }
    }
    #[inline(always)]
    fn add(&mut self, stat: H2Stat, n: u64) {
        if let Some(p) = STATS.get_ptr_mut(stat as u32) {
            unsafe { *p += n }
        }
    }
}

#[repr(C)]
struct Skb {
    skb: *mut __sk_buff,
    base: u32,
}

impl Payload for Skb {
    #[inline(always)]
    fn load(&mut self, off: u32, dst: &mut Scratch, len: u32) -> bool {
        let len = len as u64;
        let len = unsafe { core::ptr::read_volatile(&len) } & 0x1ff;
        if len == 0 || len > WINDOW as u64 {
            return false;
        }
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

#[repr(C)]
struct Walk {
    conn: *mut H2Conn,
    work: *mut Work,
    skb: Skb,
}

extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let (conn, work) = unsafe { (&mut *w.conn, &mut *w.work) };
    if conn.step(&mut work.seg, &mut work.scratch, &mut w.skb, &mut KSink) {
        0
    } else {
        1
    }
}

#[inline(always)]
fn run(ctx: &SkBuffContext, rx: bool) -> Option<()> {
    let work = WORK.get_ptr_mut(0)?;
    let conn = CONNS.get_ptr_mut(0)?;
    let len = ctx.len();
    let base = 52u32;
    if len <= base {
        return None;
    }
    let mut seqb = [0u8; 4];
    unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            24,
            seqb.as_mut_ptr() as *mut c_void,
            4,
        );
        let seq = u32::from_be_bytes(seqb);
        (*work).seg = Segment::new(rx, len - base, bpf_ktime_get_ns());
        let mut walk = Walk {
            conn,
            work,
            skb: Skb {
                skb: ctx.skb.skb,
                base,
            },
        };
        let c = &mut *conn;
        if c.begin(&mut (*work).seg, seq, &mut KSink) {
            bpf_loop(
                H2_MAX_STEPS,
                walk_step as *mut c_void,
                &mut walk as *mut Walk as *mut c_void,
                0,
            );
        }
        c.end(&mut (*work).seg, &mut KSink);
    }
    Some(())
}

#[cgroup_skb(ingress)]
pub fn h2v_ingress(ctx: SkBuffContext) -> i32 {
    let _ = run(&ctx, true);
    1
}

#[cgroup_skb(egress)]
pub fn h2v_egress(ctx: SkBuffContext) -> i32 {
    let _ = run(&ctx, false);
    1
}

#[cgroup_skb]
pub fn h2v_release(ctx: SkBuffContext) -> i32 {
    if let Some(conn) = CONNS.get_ptr_mut(0) {
        unsafe { (*conn).release(bpf_ktime_get_ns(), &mut KSink) };
    }
    let _ = ctx;
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
