//! The microbenchmark's HTTP/2 cases: real conversations (recorded from h2load → nghttpd and
//! from a grpcio client → grpcio server, `bench/data/`), replayed through the user-space
//! [`H2Conn`] to make the canned states each case's packet finds, as the kernel would hold
//! them on the server's socket.

use kite_common::{
    h2::{H2_MAX_STEPS, H2_SERVER, H2_STREAMS, H2Conn, H2Done, H2Sink, H2Stat, Slot},
    http::{Scratch, Segment},
    maps::{STAT_COUNT, Stat},
};

use crate::microbench::{Bytes, CLIENT_ISN, SERVER, SERVER_ISN, SERVER_PORT, Seg, mapped};

/// h2load → nghttpd: preface, SETTINGS, WINDOW_UPDATE and the first HEADERS in one segment,
/// then four GETs of `/` (a 19-byte file) one at a time on the connection.
const H2LOAD: &str = include_str!("../data/h2load-nghttpd.txt");

/// grpcio → grpcio: four unary calls of `/kite.test.Echo/Unary`, one at a time.
const GRPC: &str = include_str!("../data/grpcio-unary.txt");

/// The stream of the keep-alive HTTP/2 cases (h2load's third request).
pub const H2_STREAM: u32 = 5;

/// The stream of the gRPC cases (the fourth call).
pub const GRPC_STREAM: u32 = 7;

/// A recorded conversation as the server's segments (`rx`: client → server).
fn segments(text: &str) -> Vec<Seg> {
    let (mut c, mut s) = (CLIENT_ISN + 1, SERVER_ISN + 1);
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (dir, hex) = line.split_once(' ').expect("`dir hex` line");
        let data: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        let rx = dir == "c2s";
        let (seq, ack) = if rx { (c, s) } else { (s, c) };
        let n = data.len() as u32;
        if rx {
            c += n;
        } else {
            s += n;
        }
        out.push(Seg { rx, seq, ack, data });
    }
    out
}

/// Whether the segment starts with a HEADERS frame of stream `sid`.
fn opens(s: &Seg, sid: u32) -> bool {
    s.data.len() >= 9
        && s.data[3] == 1
        && u32::from_be_bytes(s.data[5..9].try_into().unwrap()) & 0x7fff_ffff == sid
}

/// What the HTTP/2 machine produced (user space).
#[derive(Debug)]
pub struct H2Record {
    /// Finished streams.
    pub done: Vec<H2Done>,
    /// Counters, by [`Stat`] (as the kernel's sink maps them).
    pub stats: [u64; STAT_COUNT as usize],
}

impl Default for H2Record {
    fn default() -> Self {
        Self {
            done: Vec::new(),
            stats: [0; STAT_COUNT as usize],
        }
    }
}

impl H2Sink for H2Record {
    fn record(&mut self, _conn: &H2Conn, done: &H2Done) {
        self.done.push(*done);
    }

    fn add(&mut self, stat: H2Stat, n: u64) {
        self.stats[Stat::from_h2(stat) as usize] += n;
    }
}

/// Feeds one segment to `conn` as `kite_bench_h2` does (`begin` with the direction's own
/// next byte as the kernel's position: a test run's socket has no TCP state).
pub fn feed_h2(conn: &mut H2Conn, s: &Seg, now_ns: u64, sink: &mut H2Record) {
    let mut seg = Segment::new(s.rx, s.data.len() as u32, now_ns);
    let mut scratch = Scratch::ZERO;
    let mut p = Bytes(&s.data);
    let known = if s.rx {
        conn.rx.next_seq
    } else {
        conn.tx.next_seq
    };
    if conn.begin(&mut seg, s.seq, known, sink) {
        let mut n = 0;
        while n < H2_MAX_STEPS && conn.step(&mut seg, &mut scratch, &mut p, sink) {
            n += 1;
        }
    }
    conn.end(&mut seg, sink);
}

/// A state as the kernel's `open` makes it on the server's socket when the preface comes in.
fn opened() -> H2Conn {
    let mut c = H2Conn::ZERO;
    c.start_at(false, SERVER_ISN + 1);
    c.init(H2_SERVER, 1, mapped(SERVER), SERVER_PORT);
    c
}

/// One HTTP/2 case: the state its packet finds, the packet, and the stream slot it starts at.
#[derive(Clone)]
pub struct H2Case {
    /// The state before the packet.
    pub state: H2Conn,
    /// The packet.
    pub seg: Seg,
    /// Home slot of the packet's stream (`BENCH_H2_SLOT`).
    pub slot: u32,
    /// Streams the packet finishes (the kernel's `requests` counter per run).
    pub streams: u64,
}

/// Replays `segs` from `opened()` and returns the case of segment `at`.
fn case_at(segs: &[Seg], at: usize, sid: u32, now_ns: u64) -> H2Case {
    let mut c = opened();
    let mut sink = H2Record::default();
    for s in &segs[..at] {
        feed_h2(&mut c, s, now_ns, &mut sink);
    }
    let state = c;
    let mut after = H2Record::default();
    feed_h2(&mut c, &segs[at], now_ns, &mut after);
    H2Case {
        state,
        seg: segs[at].clone(),
        slot: (sid >> 1) & (H2_STREAMS as u32 - 1),
        streams: after.done.len() as u64,
    }
}

/// The HTTP/2 cases, in [`crate::microbench::Case`]'s order: the connection's first segment
/// (preface …), its first response, a keep-alive request and its response (stream
/// [`H2_STREAM`]), a gRPC unary request and its response (stream [`GRPC_STREAM`]).
pub fn cases(now_ns: u64) -> [H2Case; 6] {
    let h = segments(H2LOAD);
    let g = segments(GRPC);
    let find = |segs: &[Seg], rx: bool, sid: u32| {
        segs.iter()
            .position(|s| s.rx == rx && opens(s, sid))
            .expect("the recorded stream")
    };
    let first_resp = h.iter().position(|s| !s.rx).unwrap();
    [
        case_at(&h, 0, 1, now_ns),
        case_at(&h, first_resp, 1, now_ns),
        case_at(&h, find(&h, true, H2_STREAM), H2_STREAM, now_ns),
        case_at(&h, find(&h, false, H2_STREAM), H2_STREAM, now_ns),
        case_at(&g, find(&g, true, GRPC_STREAM), GRPC_STREAM, now_ns),
        case_at(&g, find(&g, false, GRPC_STREAM), GRPC_STREAM, now_ns),
    ]
}

// The kernel's partial copy of a canned state (`bench_h2_conn`) is word-wise.
const _: () = assert!(std::mem::size_of::<Slot>().is_multiple_of(8));

#[cfg(test)]
mod tests {
    use kite_common::h2::{GRPC_YES, PATH_UNKNOWN};

    use super::*;

    fn replay(c: &H2Case) -> (H2Conn, H2Record) {
        let mut conn = c.state;
        let mut r = H2Record::default();
        feed_h2(&mut conn, &c.seg, 2_000_000, &mut r);
        (conn, r)
    }

    #[test]
    fn recorded_conversations_are_measured_exactly() {
        // Every stream of both recordings is recorded once, with the status the server sent.
        for (text, n) in [(H2LOAD, 4), (GRPC, 4)] {
            let mut c = opened();
            let mut r = H2Record::default();
            for s in segments(text) {
                feed_h2(&mut c, &s, 1_000, &mut r);
            }
            assert_eq!(r.done.len(), n, "{}", &text[..40]);
            assert!(!c.lost());
        }
    }

    #[test]
    fn cases_produce_what_the_benchmark_checks() {
        let cs = cases(1_000_000);
        let streams: Vec<u64> = cs.iter().map(|c| c.streams).collect();
        assert_eq!(streams, [0, 1, 0, 1, 0, 1]);
        for c in &cs {
            let (_, r) = replay(c);
            assert_eq!(r.done.len() as u64, c.streams);
            assert_eq!(r.stats[Stat::H2Lost as usize], 0);
        }
        let (_, r) = replay(&cs[3]);
        let d = r.done[0];
        assert_eq!((d.stream_id, d.status), (H2_STREAM, 200));
        assert_eq!(d.method, kite_common::maps::Method::Get as u8);
        let (_, r) = replay(&cs[5]);
        let d = r.done[0];
        assert_eq!(
            (d.stream_id, d.grpc, d.grpc_status),
            (GRPC_STREAM, GRPC_YES, 0)
        );
        assert_ne!(
            d.path_id, PATH_UNKNOWN,
            "the method is known from the dynamic table"
        );
    }

    #[test]
    fn a_case_touches_only_its_probe_slots() {
        // `bench_h2_conn` copies the slots from the stream's home slot on (H2_PROBES of them)
        // and nothing else of the table: the packet must not change any other.
        for c in cases(0) {
            let (after, _) = replay(&c);
            for i in 0..H2_STREAMS {
                let inside =
                    (c.slot as usize..c.slot as usize + kite_common::h2::H2_PROBES).contains(&i);
                if !inside {
                    assert_eq!(
                        format!("{:?}", after.slots[i]),
                        format!("{:?}", c.state.slots[i]),
                        "slot {i}"
                    );
                }
            }
        }
    }
}
