//! HTTP/1 routes (issue 15): the text of a route is sent to user space once, through the ring
//! buffer gRPC method names use, and only while its endpoint has room for it (the routes
//! beyond an endpoint's bound are recorded as `_OTHER` and need no name): a crawler's
//! invented paths fill neither the name registry nor the ring buffer.

use aya_ebpf::bindings::BPF_NOEXIST;
use kite_common::{
    h2::hpack::PathBuf,
    http::{Conn, ROLE_SERVER},
    maps::{
        Direction, MAX_RPC_PER_ENDPOINT, NAME_CUT, NAME_ROUTE, RPC_OTHER, RpcEndpointKey,
        RpcMethodKey, Stat,
    },
    route::ROUTE_TEXT,
};

use crate::{
    bump,
    h2::{RPC_ENDPOINTS, RPC_KEY, RPC_METHODS, RPC_NAMES, RPC_SEEN},
};

/// Whether HTTP/1 requests get routes; set by the loader.
#[unsafe(no_mangle)]
static ROUTES: u32 = 1;

#[inline(always)]
pub(crate) fn routes_on() -> bool {
    // SAFETY: reading a global; volatile so the loader's value is used, not the default.
    unsafe { core::ptr::read_volatile(&ROUTES) != 0 }
}

/// Sends the text of route `id` of `conn` (in `conn.route`) unless it was sent before or its
/// endpoint has no room for it. Out of line: only requests whose route differs from their
/// connection's previous one come here.
#[inline(never)]
pub(crate) fn route_name(conn: &Conn, id: u32) {
    if id <= RPC_OTHER {
        return;
    }
    // SAFETY: a lookup; the value is not used.
    if unsafe { RPC_SEEN.get(&id) }.is_some() {
        return;
    }
    let Some(mk) = RPC_KEY.get_ptr_mut(crate::level()) else {
        return;
    };
    // SAFETY: this CPU's map value of this run's nesting level.
    let mk = unsafe { &mut *mk };
    let direction = if conn.role == ROLE_SERVER {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    *mk = RpcMethodKey {
        ep: RpcEndpointKey {
            cgroup_id: conn.cgroup_id,
            addr: conn.addr,
            port: conn.port,
            direction: direction as u8,
            _pad: [0; 5],
        },
        rpc: id,
        _pad: 0,
    };
    // SAFETY: lookups; a count read once (it only grows).
    let admitted = unsafe { RPC_METHODS.get(&*mk) }.is_some();
    if !admitted {
        if let Some(n) = unsafe { RPC_ENDPOINTS.get(&mk.ep) } {
            if unsafe { core::ptr::read_volatile(n) } >= MAX_RPC_PER_ENDPOINT as u64 {
                // Recorded as `_OTHER`: no name needed.
                return;
            }
        }
    }
    if RPC_SEEN.insert(&id, &0, BPF_NOEXIST as u64).is_err() {
        // Inserted by another CPU meanwhile (it sends the name), or the map is full.
        // SAFETY: as above.
        if unsafe { RPC_SEEN.get(&id) }.is_none() {
            bump(Stat::RpcSeenFull, 1);
        }
        return;
    }
    let Some(mut entry) = RPC_NAMES.reserve::<PathBuf>(0) else {
        // Sent at the route's next request on a connection that had another route before.
        let _ = RPC_SEEN.remove(&id);
        bump(Stat::RpcNamesDropped, 1);
        return;
    };
    let text = conn.route.text();
    let p = entry.as_mut_ptr();
    // SAFETY: the reserved record, written whole before it is submitted.
    unsafe {
        (*p).id = id;
        (*p).len = text.len() as u32 | NAME_ROUTE | if conn.route.cut() { NAME_CUT } else { 0 };
        let mut i = 0;
        while i < ROUTE_TEXT {
            (*p).bytes[i] = if i < text.len() { text[i] } else { 0 };
            i += 1;
        }
    }
    entry.submit(0);
    bump(Stat::RpcNames, 1);
}
