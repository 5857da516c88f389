//! The programs' cost per packet, case by case, without a network: `BPF_PROG_TEST_RUN` of
//! `kite_bench` (the packet path of `kite_ingress`/`kite_egress`, compiled from the same code,
//! with a canned connection state) on canned packets, next to the empty program in the same
//! invocation.
//!
//! Why a bench program rather than the real ones: a test run gives the packet a dummy socket
//! that is not a TCP socket (no TCP state, `bpf_tcp_sock` fails) and is new for every test
//! run, so the real programs stop at the socket. `kite_bench` runs the same path and, where
//! the real one looks up the socket's storage, also copies a canned state made by running
//! the user-space parser over a canned conversation (every repeat starts from the same
//! state). That copy is the benchmark's own cost and is reported on its own row.
//!
//! Each case is also checked for what it produced (requests recorded, payload packets,
//! counters), in the kernel from the `STATS` map and in user space by the same parser
//! (`tests` below).

use std::{
    fmt::Write as _,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::CgroupSkb,
};
use kite_agent::ebpf::EBPF_OBJECT;
use kite_common::{
    http::{Completion, Conn, Payload, ROLE_SERVER, Scratch, Segment, Sink},
    maps::{STAT_COUNT, Stat},
};

use crate::{median, micro_h2, report};

/// Options.
#[derive(clap::Args, Clone)]
#[group(id = "micro")]
pub struct Opts {
    /// Rounds (each runs every case once, in rotating order).
    #[arg(long, default_value_t = 7)]
    pub micro_rounds: usize,
    /// Program runs per test run (the kernel reports their mean).
    #[arg(long, default_value_t = 100_000)]
    pub repeat: u32,
    /// Another build of the eBPF object (e.g. a copy of `target/*/build/kite-agent-*/out/kite`
    /// made before a change): measured in the same rounds, alternating, for an A/B table.
    #[arg(long)]
    pub compare: Option<std::path::PathBuf>,
    /// The eBPF object under test (default: the one built into this binary).
    #[arg(long)]
    pub object: Option<std::path::PathBuf>,
    /// Only load every packet and uprobe program of the object under test through the
    /// verifier and print the instructions it verified for each (no measurement).
    #[arg(long)]
    pub verify: bool,
    /// Also measure each case with its packet path cut short after each stage (headers,
    /// storage, clock, `begin`, parser loop): a table of what each stage adds.
    #[arg(long)]
    pub decompose: bool,
    /// Measure the object under test with routes off too (HTTP/1 connections that never read
    /// their request targets, `kite-agent --routes off`), alternating, as the `--compare`
    /// side: what routes cost.
    #[arg(long, conflicts_with = "compare")]
    pub routes_off: bool,
    /// The HTTP/1 request's target (default `/`, wrk's): routes read it byte by byte, so their
    /// cost grows with it (`/api/v1/orders/12345`).
    #[arg(long)]
    pub target: Option<String>,
}

/// The stages `--decompose` cuts the path after (`STOP_*` in the eBPF program), with names.
const STAGES: [(u32, &str); 5] = [
    (1, "verdict check, headers"),
    (2, "`SOCKETS` lookup"),
    (3, "clock + segment"),
    (4, "`begin`"),
    (5, "parser loop"),
];

/// The cases `--decompose` cuts short (those that reach the parser).
const DECOMPOSED: [Case; 4] = [
    Case::Request,
    Case::Response,
    Case::ResponseMinimal,
    Case::Body,
];

const CLIENT: [u8; 4] = [127, 0, 0, 2];
pub(crate) const SERVER: [u8; 4] = [127, 0, 0, 1];
const CLIENT_PORT: u16 = 40_000;
pub(crate) const SERVER_PORT: u16 = 8080;
/// Initial sequence numbers (the first data byte is one past them).
pub(crate) const CLIENT_ISN: u32 = 0x1000_0000;
pub(crate) const SERVER_ISN: u32 = 0x7000_0000;

/// wrk's request.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// The request target the HTTP/1 cases use (`--target`; default `/`, as wrk's).
static TARGET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The HTTP/1 request of the cases: [`REQUEST`] with the `--target` path.
fn request_bytes() -> Vec<u8> {
    match TARGET.get() {
        Some(t) => format!("GET {t} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n").into_bytes(),
        None => REQUEST.to_vec(),
    }
}

/// nginx's answer to it (a 17-byte `return 200`).
pub fn response() -> Vec<u8> {
    let body = b"kite bench body.\n";
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 12:00:00 GMT\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Headers of a 1 MiB response and its first body bytes (one segment).
pub fn big_response_head() -> Vec<u8> {
    let mut r =
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 12:00:00 GMT\r\n\
                  Content-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\
                  Connection: keep-alive\r\n\r\n"
            .to_vec();
    r.resize(1000, b'x');
    r
}

/// A segment that is not HTTP (the start of a TLS ClientHello, then filler).
pub fn not_http() -> Vec<u8> {
    let mut r = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    r.resize(517, 0x5a);
    r
}

/// Body bytes of a segment in the middle of a large response.
pub const BODY_SEGMENT: usize = 1448;

/// One benchmark case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// A request segment on an idle keep-alive connection (server side, received).
    Request,
    /// The response (headers and a 17-byte body) to an outstanding request (sent).
    Response,
    /// The same with only the status line and `Content-Length` (what framing needs).
    ResponseMinimal,
    /// A bare ACK on a tracked connection.
    Ack,
    /// 1448 body bytes in the middle of a 1 MiB response.
    Body,
    /// A non-HTTP segment on a socket Kite keeps no state for (not judged: joined midway).
    NotHttp,
    /// A non-HTTP segment on a socket judged not HTTP at its first byte.
    NotHttpJudged,
    /// HTTP/2 (h2load → nghttpd, server side): the connection's first segment (client preface,
    /// SETTINGS, WINDOW_UPDATE, the first request's HEADERS with literals) on a just-opened state.
    H2Open,
    /// nghttpd's first segment (SETTINGS, ACK, the first response's HEADERS with literals, DATA).
    H2OpenResponse,
    /// A request on a keep-alive HTTP/2 connection (a 14-byte HEADERS of indexed fields).
    H2Request,
    /// Its response: HEADERS (indexed) and DATA with END_STREAM, 48 bytes.
    H2Response,
    /// A gRPC unary request (grpcio): HEADERS, DATA, WINDOW_UPDATEs, 63 bytes.
    GrpcRequest,
    /// Its response: HEADERS, DATA, trailers (`grpc-status`), WINDOW_UPDATE, 69 bytes.
    GrpcResponse,
}

impl Case {
    /// Every case.
    pub const ALL: [Case; 13] = [
        Case::Request,
        Case::Response,
        Case::ResponseMinimal,
        Case::Ack,
        Case::Body,
        Case::NotHttp,
        Case::NotHttpJudged,
        Case::H2Open,
        Case::H2OpenResponse,
        Case::H2Request,
        Case::H2Response,
        Case::GrpcRequest,
        Case::GrpcResponse,
    ];

    /// The HTTP/2 cases, in [`micro_h2::cases`]' order.
    const H2: [Case; 6] = [
        Case::H2Open,
        Case::H2OpenResponse,
        Case::H2Request,
        Case::H2Response,
        Case::GrpcRequest,
        Case::GrpcResponse,
    ];

    /// Index in [`Canned::h2`] / `BENCH_H2_CONNS` of an HTTP/2 case.
    fn h2(self) -> Option<usize> {
        Self::H2.iter().position(|c| *c == self)
    }

    fn name(self) -> &'static str {
        match self {
            Case::Request => "request segment (41 B, keep-alive)",
            Case::Response => "response segment (nginx's: status line, 5 header lines, 17 B body)",
            Case::ResponseMinimal => "response segment (status line, Content-Length, 17 B body)",
            Case::Ack => "bare ACK",
            Case::Body => "body continuation (1448 B)",
            Case::NotHttp => "non-HTTP segment (517 B), not judged",
            Case::NotHttpJudged => "non-HTTP segment (517 B), judged not HTTP",
            Case::H2Open => {
                "HTTP/2: first segment (preface, SETTINGS, HEADERS with literals, 100 B)"
            }
            Case::H2OpenResponse => {
                "HTTP/2: first response segment (SETTINGS, HEADERS with literals, DATA, 153 B)"
            }
            Case::H2Request => "HTTP/2: keep-alive request (HEADERS, 14 B)",
            Case::H2Response => "HTTP/2: its response (HEADERS, DATA, 48 B)",
            Case::GrpcRequest => "gRPC unary request (HEADERS, DATA, 63 B)",
            Case::GrpcResponse => "gRPC unary response (HEADERS, DATA, trailers, 69 B)",
        }
    }
}

/// Collects what the parser produced (user space).
#[derive(Debug)]
pub struct Record {
    /// Finished requests.
    pub done: Vec<Completion>,
    /// Counters.
    pub stats: [u64; STAT_COUNT as usize],
}

// By hand: `[u64; N]` has no `Default` beyond 32 counters.
impl Default for Record {
    fn default() -> Self {
        Self {
            done: Vec::new(),
            stats: [0; STAT_COUNT as usize],
        }
    }
}

impl Sink for Record {
    fn record(&mut self, _conn: &Conn, done: &Completion) {
        self.done.push(*done);
    }

    fn add(&mut self, stat: Stat, n: u64) {
        self.stats[stat as usize] += n;
    }
}

pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl Payload for Bytes<'_> {
    fn load(&mut self, off: u32, dst: &mut Scratch, len: u32) -> bool {
        let (off, len) = (off as usize, len as usize);
        if off + len > self.0.len() {
            return false;
        }
        dst.bytes[..len].copy_from_slice(&self.0[off..off + len]);
        true
    }
}

/// A canned TCP segment of the conversation.
#[derive(Clone)]
pub struct Seg {
    /// Received by the server (client → server).
    pub rx: bool,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Payload.
    pub data: Vec<u8>,
}

/// Feeds one segment to `conn` as the kernel programs do (`begin`, steps, `end`).
pub fn feed(conn: &mut Conn, s: &Seg, now_ns: u64, sink: &mut Record) {
    let mut seg = Segment::new(s.rx, s.data.len() as u32, now_ns);
    let mut scratch = Scratch::ZERO;
    let mut p = Bytes(&s.data);
    if conn.begin(&mut seg, s.seq, s.ack, sink) {
        let mut n = 0;
        while n < kite_common::http::MAX_STEPS && conn.step(&mut seg, &mut scratch, &mut p, sink) {
            n += 1;
        }
    }
    conn.end(&mut seg, false, sink);
}

/// The canned conversation: the states each case starts from and the packet of each case.
pub struct Canned {
    /// Keep-alive connection after one exchange (what a request finds).
    pub idle: Conn,
    /// The same with a request outstanding (what its response finds).
    pub waiting: Conn,
    /// Inside a 1 MiB response body.
    pub in_body: Conn,
    /// Each case's segment.
    pub segs: Vec<(Case, Seg)>,
    /// The HTTP/2 cases ([`Case::H2`]'s order).
    pub h2: [micro_h2::H2Case; 6],
}

/// Builds the canned states by running the parser over the conversation (timestamps from
/// `now_ns`).
pub fn canned(now_ns: u64) -> Canned {
    canned_with(now_ns, true)
}

/// [`canned`], its HTTP/1 connection with routes on (as the agent's default) or off.
pub fn canned_with(now_ns: u64, routes: bool) -> Canned {
    let resp = response();
    let mut c_seq = CLIENT_ISN + 1;
    let mut s_seq = SERVER_ISN + 1;
    let mut sink = Record::default();
    // SAFETY: `Conn` is plain integers and arrays; all-zero is its initial value.
    let mut conn: Conn = unsafe { std::mem::zeroed() };
    conn.init(ROLE_SERVER, 1, mapped(SERVER), SERVER_PORT, now_ns);
    if routes {
        conn.enable_routes();
    }
    let mut exchange = |conn: &mut Conn, c_seq: &mut u32, s_seq: &mut u32, resp: &[u8]| {
        let rq = Seg {
            rx: true,
            seq: *c_seq,
            ack: *s_seq,
            data: request_bytes(),
        };
        *c_seq += request_bytes().len() as u32;
        feed(conn, &rq, now_ns, &mut sink);
        let rs = Seg {
            rx: false,
            seq: *s_seq,
            ack: *c_seq,
            data: resp.to_vec(),
        };
        *s_seq += resp.len() as u32;
        feed(conn, &rs, now_ns, &mut sink);
    };
    exchange(&mut conn, &mut c_seq, &mut s_seq, &resp);
    let idle = conn;
    let request = Seg {
        rx: true,
        seq: c_seq,
        ack: s_seq,
        data: request_bytes(),
    };
    let mut waiting = idle;
    feed(&mut waiting, &request, now_ns, &mut sink);
    let response = Seg {
        rx: false,
        seq: s_seq,
        ack: c_seq + request_bytes().len() as u32,
        data: resp.clone(),
    };
    let ack = Seg {
        rx: true,
        seq: c_seq,
        ack: s_seq,
        data: Vec::new(),
    };
    // A large response: request, then its first segment.
    let mut in_body = idle;
    let head = big_response_head();
    let (mut c2, mut s2) = (c_seq, s_seq);
    let rq = Seg {
        rx: true,
        seq: c2,
        ack: s2,
        data: request_bytes(),
    };
    c2 += request_bytes().len() as u32;
    feed(&mut in_body, &rq, now_ns, &mut sink);
    let hs = Seg {
        rx: false,
        seq: s2,
        ack: c2,
        data: head.clone(),
    };
    s2 += head.len() as u32;
    feed(&mut in_body, &hs, now_ns, &mut sink);
    let body = Seg {
        rx: false,
        seq: s2,
        ack: c2,
        data: vec![b'x'; BODY_SEGMENT],
    };
    let other = Seg {
        rx: true,
        seq: CLIENT_ISN + 1,
        ack: SERVER_ISN + 1,
        data: not_http(),
    };
    Canned {
        idle,
        waiting,
        in_body,
        h2: micro_h2::cases(now_ns),
        segs: vec![
            (Case::Request, request),
            (
                Case::ResponseMinimal,
                Seg {
                    data: b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\nkite bench body.\n"
                        .to_vec(),
                    ..response.clone()
                },
            ),
            (Case::Response, response),
            (Case::Ack, ack),
            (Case::Body, body),
            (Case::NotHttp, other.clone()),
            (Case::NotHttpJudged, other),
        ],
    }
}

impl Canned {
    /// The state a case's packet finds (`None`: the socket has none).
    pub fn state(&self, case: Case) -> Option<&Conn> {
        match case {
            Case::Request | Case::Ack => Some(&self.idle),
            Case::Response | Case::ResponseMinimal => Some(&self.waiting),
            Case::Body => Some(&self.in_body),
            _ => None,
        }
    }

    fn seg(&self, case: Case) -> &Seg {
        if let Some(i) = case.h2() {
            return &self.h2[i].seg;
        }
        &self.segs.iter().find(|(c, _)| *c == case).unwrap().1
    }
}

pub(crate) fn mapped(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a);
    m
}

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The segment as a test run's input: Ethernet, IPv4, TCP with the timestamp option (32 bytes,
/// as Linux sends), payload.
pub fn frame(s: &Seg) -> Vec<u8> {
    let (src, dst, sport, dport) = if s.rx {
        (CLIENT, SERVER, CLIENT_PORT, SERVER_PORT)
    } else {
        (SERVER, CLIENT, SERVER_PORT, CLIENT_PORT)
    };
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 32 + s.data.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = Vec::with_capacity(32);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&s.seq.to_be_bytes());
    tcp.extend_from_slice(&s.ack.to_be_bytes());
    let flags = if s.data.is_empty() { 0x10 } else { 0x18 };
    tcp.extend_from_slice(&[8 << 4, flags, 0x02, 0x00, 0, 0, 0, 0]);
    // NOP, NOP, timestamps.
    tcp.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 1]);
    f.extend_from_slice(&tcp);
    f.extend_from_slice(&s.data);
    f
}

/// `bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `prog` `repeat` times on `data`; the kernel's mean ns per run.
fn test_run(prog: &CgroupSkb, data: &[u8], repeat: u32) -> Result<u32, String> {
    let fd = prog.fd().map_err(|e| e.to_string())?;
    let mut a = TestRunAttr {
        prog_fd: fd.as_fd().as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: `a` is a valid bpf_attr prefix for this command; `data` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut a as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if r != 0 {
        return Err(format!(
            "BPF_PROG_TEST_RUN: {}",
            std::io::Error::last_os_error()
        ));
    }
    if a.retval != 1 {
        return Err(format!(
            "program returned {} (not 1: packet dropped)",
            a.retval
        ));
    }
    Ok(a.duration)
}

/// `BenchCfg::what` of the HTTP/2 path and of its state copy (`BENCH_H2`, `BENCH_H2_COPY`).
const BENCH_H2: u32 = 4;
const BENCH_H2_COPY: u32 = 5;

/// The canned HTTP/2 stream's home slot (`BENCH_H2_SLOT`).
fn set_h2_slot(ebpf: &mut Ebpf, slot: u32) -> Result<(), String> {
    let m = ebpf
        .map_mut("BENCH_H2_SLOT")
        .ok_or("this eBPF object has no HTTP/2 bench path")?;
    let mut a: Array<_, u32> = Array::try_from(m).map_err(|e| e.to_string())?;
    a.set(0, slot, 0).map_err(|e| e.to_string())
}

/// `kite_bench`'s settings (`BenchCfg` in the eBPF program).
fn set_cfg(ebpf: &mut Ebpf, conn: u32, rx: bool, what: u32, judged: bool) {
    let mut cfg: Array<_, [u32; 4]> = Array::try_from(ebpf.map_mut("BENCH_CFG").unwrap()).unwrap();
    cfg.set(0, [conn, rx as u32, what, judged as u32], 0)
        .unwrap();
}

fn stats(ebpf: &Ebpf) -> [u64; STAT_COUNT as usize] {
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map("STATS").unwrap()).unwrap();
    let mut out = [0; STAT_COUNT as usize];
    for (i, o) in out.iter_mut().enumerate() {
        *o = m
            .get(&(i as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or_default();
    }
    out
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain libc call with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What each case must produce per run, checked against the kernel's counters.
fn expect(c: &Canned, case: Case) -> Vec<(Stat, u64)> {
    if let Some(i) = case.h2() {
        // Through `kite_bench` (a packet) into `kite_bench_h2` (a payload packet).
        return vec![
            (Stat::Packets, 1),
            (Stat::PayloadPackets, 1),
            (Stat::Requests, c.h2[i].streams),
            (Stat::H2Streams, c.h2[i].streams),
            (Stat::H2Lost, 0),
        ];
    }
    let v: &[(Stat, u64)] = match case {
        Case::Request => &[
            (Stat::Packets, 1),
            (Stat::PayloadPackets, 1),
            (Stat::Requests, 0),
        ],
        Case::Response | Case::ResponseMinimal => &[
            (Stat::Packets, 1),
            (Stat::PayloadPackets, 1),
            (Stat::Requests, 1),
        ],
        Case::Ack => &[
            (Stat::Packets, 1),
            (Stat::PayloadPackets, 0),
            (Stat::Requests, 0),
        ],
        Case::Body => &[
            (Stat::Packets, 1),
            (Stat::PayloadPackets, 1),
            (Stat::Requests, 0),
        ],
        // A judged socket's packets return before anything is counted.
        Case::NotHttpJudged => &[
            (Stat::Packets, 0),
            (Stat::PayloadPackets, 0),
            (Stat::Requests, 0),
        ],
        Case::NotHttp => &[
            (Stat::Packets, 1),
            (Stat::PayloadPackets, 0),
            (Stat::Requests, 0),
        ],
        _ => &[],
    };
    v.to_vec()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Row {
    Empty,
    Case(Case),
    Copy,
    /// Copying the canned HTTP/2 state (`BENCH_H2_COPY`).
    H2Copy,
    JudgeSetup,
    Buckets,
    Ktime,
    /// A case cut short after a stage (`STOP_*`).
    Stage(Case, u32),
}

/// Runs the microbenchmark; returns its Markdown section.
fn load(obj: &[u8], c: &Canned) -> Result<Ebpf, String> {
    let mut ebpf = EbpfLoader::new()
        .load(obj)
        .map_err(|e| format!("loading the eBPF object: {e}"))?;
    for name in [
        "kite_bench",
        "kite_bench_buckets",
        "kite_bench_ktime",
        "kite_empty",
    ] {
        let p: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or(format!("{name} missing"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        p.load().map_err(|e| format!("loading {name}: {e}"))?;
    }
    let mut conns: Array<_, Conn> = Array::try_from(ebpf.map_mut("BENCH_CONNS").unwrap()).unwrap();
    conns.set(0, c.idle, 0).unwrap();
    conns.set(1, c.waiting, 0).unwrap();
    conns.set(2, c.in_body, 0).unwrap();
    // The HTTP/2 path (objects built before it have none).
    if ebpf.program("kite_bench_h2").is_some() {
        let p: &mut CgroupSkb = ebpf
            .program_mut("kite_bench_h2")
            .unwrap()
            .try_into()
            .map_err(|e| format!("kite_bench_h2: {e}"))?;
        p.load()
            .map_err(|e| format!("loading kite_bench_h2: {e}"))?;
        let fd = p
            .fd()
            .map_err(|e| e.to_string())?
            .try_clone()
            .map_err(|e| e.to_string())?;
        let mut tails = aya::maps::ProgramArray::try_from(ebpf.map_mut("BENCH_TAILS").unwrap())
            .map_err(|e| e.to_string())?;
        tails
            .set(0, &fd, 0)
            .map_err(|e| format!("BENCH_TAILS: {e}"))?;
        let mut h2: Array<_, kite_common::h2::H2Conn> =
            Array::try_from(ebpf.map_mut("BENCH_H2_CONNS").unwrap()).unwrap();
        for (i, k) in c.h2.iter().enumerate() {
            h2.set(i as u32, k.state, 0).unwrap();
        }
    }
    Ok(ebpf)
}

/// Whether the object has the HTTP/2 bench path.
fn has_h2(ebpf: &Ebpf) -> bool {
    ebpf.program("kite_bench_h2").is_some()
}

/// Loads the object's packet (`cgroup_skb`) and uprobe programs: the verifier's verdict and
/// instruction counts, as a Markdown list.
fn verify(obj: &[u8]) -> Result<String, String> {
    let mut ebpf = EbpfLoader::new()
        .load(obj)
        .map_err(|e| format!("loading the eBPF object: {e}"))?;
    let mut md = String::from("Verified (instructions):\n\n");
    let mut failed = false;
    for (name, prog) in ebpf.programs_mut() {
        let r = match prog {
            aya::programs::Program::CgroupSkb(p) => p.load().map(|()| p.info()),
            aya::programs::Program::UProbe(p) => p.load().map(|()| p.info()),
            _ => continue,
        };
        let line = match r {
            Ok(info) => info
                .ok()
                .and_then(|i| i.verified_instruction_count())
                .map_or("?".into(), |n| n.to_string()),
            Err(e) => {
                failed = true;
                let e = e.to_string();
                let e = e.lines().last().unwrap_or_default().to_string();
                format!("refused: {e}")
            }
        };
        let _ = writeln!(md, "- {name}: {line}");
    }
    if failed {
        return Err(md);
    }
    Ok(md)
}

/// One test run of `row`; the kernel's mean ns per run. A case's counters are checked.
fn measure(ebpf: &mut Ebpf, c: &Canned, row: Row, repeat: u32) -> Result<f64, String> {
    let slot = |case: Case| match case {
        Case::Request | Case::Ack => 1,
        Case::Response | Case::ResponseMinimal => 2,
        Case::Body => 3,
        _ => 0,
    };
    let empty_frame = frame(c.seg(Case::Request));
    let stop = match row {
        Row::Stage(_, k) => k,
        _ => 0,
    };
    if let Some(m) = ebpf.map_mut("BENCH_STOP") {
        let mut a: Array<_, u32> = Array::try_from(m).map_err(|e| e.to_string())?;
        a.set(0, stop, 0).map_err(|e| e.to_string())?;
    } else if stop != 0 {
        return Err("this eBPF object has no BENCH_STOP (--decompose needs it)".into());
    }
    let (prog, data) = match row {
        Row::Empty => ("kite_empty", empty_frame),
        Row::Case(case) | Row::Stage(case, _) => {
            let s = c.seg(case);
            if let Some(i) = case.h2() {
                set_h2_slot(ebpf, c.h2[i].slot)?;
                set_cfg(ebpf, 1 + i as u32, s.rx, BENCH_H2, false);
            } else {
                set_cfg(ebpf, slot(case), s.rx, 0, case == Case::NotHttpJudged);
            }
            ("kite_bench", frame(s))
        }
        Row::H2Copy => {
            // The largest copy of the cases (every case copies the same number of words).
            set_h2_slot(ebpf, c.h2[5].slot)?;
            set_cfg(ebpf, 6, false, BENCH_H2_COPY, false);
            ("kite_bench", empty_frame)
        }
        Row::Copy => {
            set_cfg(ebpf, 2, false, 1, false);
            ("kite_bench", empty_frame)
        }
        Row::JudgeSetup => {
            set_cfg(ebpf, 0, true, 3, true);
            ("kite_bench", frame(c.seg(Case::NotHttpJudged)))
        }
        Row::Ktime => ("kite_bench_ktime", empty_frame),
        Row::Buckets => ("kite_bench_buckets", empty_frame),
    };
    let before = stats(ebpf);
    let p: &CgroupSkb = ebpf.program(prog).unwrap().try_into().unwrap();
    let d = test_run(p, &data, repeat)?;
    let after = stats(ebpf);
    if let Row::Case(case) = row {
        for (stat, per_run) in expect(c, case) {
            let got = after[stat as usize] - before[stat as usize];
            let want = per_run * u64::from(repeat);
            if got != want {
                return Err(format!(
                    "case {case:?}: kernel counter {stat:?} rose by {got}, expected {want}"
                ));
            }
        }
    }
    if std::env::var_os("KITE_MICRO_VERBOSE").is_some() {
        eprintln!("{row:?}: {d}");
    }
    Ok(f64::from(d))
}

/// Path ns of each row (see the report's text) from the medians.
fn path_ns(rows: &[Row], med: &[f64], c: &Canned) -> Vec<Option<f64>> {
    let empty = med[0];
    let copy = med[rows.iter().position(|r| *r == Row::Copy).unwrap()];
    let judge = med[rows.iter().position(|r| *r == Row::JudgeSetup).unwrap()];
    let h2copy = med[rows.iter().position(|r| *r == Row::H2Copy).unwrap()];
    rows.iter()
        .enumerate()
        .map(|(i, r)| match r {
            Row::Empty => None,
            Row::Stage(case, k) => Some(if *k >= 2 && c.state(*case).is_some() {
                med[i] - (copy - empty)
            } else {
                med[i]
            }),
            Row::Case(case) => {
                // The packet path copies the canned state only where the real one looks up
                // the socket's storage: not for a bare ACK, nor without a state.
                let copied = c.state(*case).is_some() && *case != Case::Ack;
                Some(if case.h2().is_some() {
                    med[i] - (h2copy - empty)
                } else if copied {
                    med[i] - (copy - empty)
                } else if *case == Case::NotHttpJudged {
                    med[i] - (judge - empty)
                } else {
                    med[i]
                })
            }
            Row::Copy => Some(copy - empty),
            Row::H2Copy => Some(h2copy - empty),
            Row::JudgeSetup => Some(judge - empty),
            Row::Buckets | Row::Ktime => Some((med[i] - empty) / BUCKET_CALLS as f64),
        })
        .collect()
}

fn row_name(r: Row) -> String {
    match r {
        Row::Empty => "empty cgroup_skb program".to_string(),
        Row::Case(case) => case.name().to_string(),
        Row::Copy => "(bench only: copying the canned state)".to_string(),
        Row::H2Copy => "(bench only: copying the canned HTTP/2 state)".to_string(),
        Row::JudgeSetup => "(bench only: finding the judged dummy socket)".to_string(),
        Row::Buckets => format!("`hist::bucket_index` (per call, {BUCKET_CALLS} calls a run)"),
        Row::Ktime => format!("`bpf_ktime_get_ns` (per call, {BUCKET_CALLS} calls a run)"),
        Row::Stage(case, k) => format!("{} cut after stage {k}", case.name()),
    }
}

/// Runs the microbenchmark; returns its Markdown section.
pub fn run(o: &Opts) -> Result<String, String> {
    let started = Instant::now();
    if let Some(t) = &o.target {
        if !t.starts_with('/') || t.contains([' ', '\r', '\n']) {
            return Err(format!(
                "--target {t:?}: a path, starting with /, without spaces"
            ));
        }
        let _ = TARGET.set(t.clone());
    }
    let c = canned(monotonic_ns());
    let own = match &o.object {
        Some(p) => std::fs::read(p).map_err(|e| format!("--object {}: {e}", p.display()))?,
        None => EBPF_OBJECT.to_vec(),
    };
    if o.verify {
        return verify(&own);
    }
    let mut objs = vec![load(&own, &c)?];
    if let Some(p) = &o.compare {
        let bytes = std::fs::read(p).map_err(|e| format!("--compare {}: {e}", p.display()))?;
        objs.push(load(&bytes, &c)?);
    }
    if o.routes_off {
        objs.push(load(&own, &canned_with(monotonic_ns(), false))?);
    }
    let mut rows = vec![Row::Empty];
    rows.extend(Case::ALL.iter().map(|&c| Row::Case(c)));
    rows.push(Row::Copy);
    rows.push(Row::H2Copy);
    rows.push(Row::JudgeSetup);
    rows.push(Row::Buckets);
    rows.push(Row::Ktime);
    if o.decompose {
        for case in DECOMPOSED {
            for (k, _) in STAGES {
                rows.push(Row::Stage(case, k));
            }
        }
        rows.push(Row::Stage(Case::NotHttp, STOP_JOIN));
    }
    let h2_row = |r: Row| match r {
        Row::H2Copy => true,
        Row::Case(c) | Row::Stage(c, _) => c.h2().is_some(),
        _ => false,
    };
    let mut ns: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); rows.len()]; objs.len()];
    for round in 0..o.micro_rounds {
        for k in 0..rows.len() {
            let i = (k + round) % rows.len();
            for j in 0..objs.len() {
                let b = (j + round) % objs.len();
                if b > 0 && matches!(rows[i], Row::Stage(..)) {
                    // Only the object under test is decomposed.
                    continue;
                }
                if h2_row(rows[i]) && !has_h2(&objs[b]) {
                    continue;
                }
                let d = measure(&mut objs[b], &c, rows[i], o.repeat)?;
                ns[b][i].push(d);
            }
        }
    }
    let med: Vec<Vec<f64>> = ns
        .iter_mut()
        .map(|o| {
            o.iter_mut()
                .map(|v| if v.is_empty() { f64::NAN } else { median(v) })
                .collect()
        })
        .collect();
    let net: Vec<Vec<Option<f64>>> = med.iter().map(|m| path_ns(&rows, m, &c)).collect();
    let empty = med[0][0];
    let mut table = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if matches!(r, Row::Stage(..)) {
            continue;
        }
        let n = net[0][i];
        let ratio = match (r, n) {
            (Row::Empty, _) => "1.0×".to_string(),
            (Row::Case(_), Some(n)) => format!("{:.1}×", n / empty),
            _ => "–".into(),
        };
        let fmt = |v: Option<f64>| match (r, v) {
            (Row::Buckets | Row::Ktime, Some(v)) => format!("{v:.1}"),
            (_, Some(v)) => format!("{v:.0}"),
            (_, None) => "–".into(),
        };
        let mut line = vec![row_name(*r), format!("{:.0}", med[0][i]), fmt(n), ratio];
        if objs.len() > 1 {
            line.push(fmt(net[1][i]).replace('–', &format!("{:.0}", med[1][i])));
        }
        table.push(line);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Per packet, case by case (microbenchmark)\n\n\
         `kite-bench micro`: `BPF_PROG_TEST_RUN` of `kite_bench` (the packet path of \
         `kite_ingress`/`kite_egress`, same code, with a canned connection state) on canned \
         IPv4/TCP packets, {} runs per test run, {} rounds in rotating order, medians of the \
         kernel's mean ns per run ({:.0} s). *Path ns* is the run minus the benchmark's own \
         copy of the canned state where the real path would look up the socket's storage \
         instead; × is against the empty program of the same invocation. Each case's \
         counters (requests recorded, payload packets) were checked after every test run.\n",
        o.repeat,
        o.micro_rounds,
        started.elapsed().as_secs_f64()
    );
    if objs.len() > 1 {
        md += &report::table(
            &[
                "case",
                "ns/run",
                "path ns",
                "× empty",
                "path ns, --compare build",
            ],
            &table,
        );
    } else {
        md += &report::table(&["case", "ns/run", "path ns", "× empty"], &table);
    }
    md += &per_exchange(&rows, &net, &med);
    if o.decompose {
        md += &decomposition(&rows, &net[0], empty);
    }
    Ok(md)
}

/// The path ns of an exchange (its request and its response segment) for HTTP/1, HTTP/2 and
/// gRPC, against two runs of the empty program (each exchange is two packets with payload).
fn per_exchange(rows: &[Row], net: &[Vec<Option<f64>>], med: &[Vec<f64>]) -> String {
    let at = |b: usize, case: Case| {
        rows.iter()
            .position(|x| *x == Row::Case(case))
            .and_then(|i| net[b][i])
            .unwrap_or(f64::NAN)
    };
    let pairs = [
        (
            "HTTP/1.1 keep-alive request (wrk → nginx)",
            Case::Request,
            Case::Response,
        ),
        (
            "HTTP/2 stream on a keep-alive connection (h2load → nghttpd)",
            Case::H2Request,
            Case::H2Response,
        ),
        (
            "gRPC unary call (grpcio → grpcio)",
            Case::GrpcRequest,
            Case::GrpcResponse,
        ),
        (
            "HTTP/2 connection's first stream (preface, SETTINGS, literals)",
            Case::H2Open,
            Case::H2OpenResponse,
        ),
    ];
    let http1 = at(0, Case::Request) + at(0, Case::Response);
    let mut table = Vec::new();
    for (name, rq, rs) in pairs {
        let ns = at(0, rq) + at(0, rs);
        let mut line = vec![
            name.to_string(),
            format!("{ns:.0}"),
            format!("{:.1}×", ns / (2.0 * med[0][0])),
            format!("{:.2}×", ns / http1),
        ];
        if net.len() > 1 {
            let b = at(1, rq) + at(1, rs);
            line.push(if b.is_nan() {
                "–".into()
            } else {
                format!("{b:.0}")
            });
        }
        table.push(line);
    }
    let mut head = vec![
        "exchange (request + response segment)",
        "path ns",
        "× two empty runs",
        "× HTTP/1.1",
    ];
    if net.len() > 1 {
        head.push("path ns, --compare build");
    }
    let mut md = String::from(
        "Per exchange (the request's segment and the response's, path ns added; HTTP/2's through \
         `kite_ingress`/`kite_egress` up to the tail call and `kite_h2_*` after it):\n\n",
    );
    md += &report::table(&head, &table);
    md
}

/// The `--decompose` table: what each stage of the path adds to each case (path ns of the
/// path cut after the stage minus the path cut after the one before; the first stage over the
/// empty program, the last column is the rest of the path: `end`, recording, the return).
fn decomposition(rows: &[Row], net: &[Option<f64>], empty: f64) -> String {
    let at = |r: Row| {
        rows.iter()
            .position(|x| *x == r)
            .and_then(|i| net[i])
            .unwrap_or(f64::NAN)
    };
    let mut table = Vec::new();
    for case in DECOMPOSED {
        let mut prev = empty;
        let mut line = vec![case.name().to_string()];
        for (k, _) in STAGES {
            let v = at(Row::Stage(case, k));
            line.push(format!("{:.0}", v - prev));
            prev = v;
        }
        let full = at(Row::Case(case));
        line.push(format!("{:.0}", full - prev));
        line.push(format!("{:.0}", full - empty));
        table.push(line);
    }
    let mut head = vec!["case"];
    head.extend(STAGES.iter().map(|(_, n)| *n));
    head.push("`end`, recording");
    head.push("over empty");
    let mut md = String::from(
        "What each stage adds (`--decompose`: the path cut short after each stage, ns over the \
         stage before, the first over the empty program; bench copy subtracted as above):\n\n",
    );
    md += &report::table(&head, &table);
    let join = at(Row::Case(Case::NotHttp)) - at(Row::Stage(Case::NotHttp, STOP_JOIN));
    let _ = writeln!(
        md,
        "\nThe HTTP/2 join test (`h2::join`: the socket's TCP state, a 9-byte load and the \
         frame-shape check) of a non-HTTP segment on a socket Kite has no state for (joined \
         midway): {join:.0} ns of the {:.0} ns path of that case.",
        at(Row::Case(Case::NotHttp))
    );
    md
}

/// `STOP_JOIN` in the eBPF program: the path cut before the HTTP/2 join test.
const STOP_JOIN: u32 = 6;

/// `kite_bench`'s `hist::bucket_index` calls per run (`BENCH_BUCKET_CALLS`).
const BUCKET_CALLS: u64 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn play(case: Case) -> (Option<Conn>, Record) {
        let c = canned(1_000_000);
        let mut sink = Record::default();
        let s = c.seg(case).clone();
        let Some(&state) = c.state(case) else {
            return (None, sink);
        };
        let mut conn = state;
        if !s.data.is_empty() {
            feed(&mut conn, &s, 2_000_000, &mut sink);
        }
        (Some(conn), sink)
    }

    #[test]
    fn request_case_queues_one_request() {
        let (conn, r) = play(Case::Request);
        let conn = conn.unwrap();
        assert_eq!(conn.waiting(), 1);
        assert!(r.done.is_empty());
        assert_eq!(r.stats[Stat::PayloadPackets as usize], 1);
        assert_eq!(r.stats[Stat::Retransmits as usize], 0);
    }

    #[test]
    fn response_case_records_one_get_200() {
        let (conn, r) = play(Case::Response);
        assert_eq!(conn.unwrap().waiting(), 0);
        assert_eq!(r.done.len(), 1);
        let d = r.done[0];
        assert_eq!(d.status, 200);
        assert_eq!(d.method, kite_common::maps::Method::Get as u8);
        assert_eq!(d.resp_bytes, response().len() as u64);
        assert_eq!(d.req_bytes, REQUEST.len() as u64);
        assert_eq!(d.latency_ns, 1_000_000);
    }

    #[test]
    fn minimal_response_case_records_one_get_200() {
        let (conn, r) = play(Case::ResponseMinimal);
        assert_eq!(conn.unwrap().waiting(), 0);
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[0].status, 200);
        assert_eq!(r.stats[Stat::SyncLost as usize], 0);
    }

    #[test]
    fn body_case_records_nothing_and_stays_in_the_body() {
        let c = canned(0);
        let (conn, r) = play(Case::Body);
        assert!(r.done.is_empty());
        assert_eq!(r.stats[Stat::SyncLost as usize], 0);
        assert_eq!(
            c.in_body.tx.remaining - conn.unwrap().tx.remaining,
            BODY_SEGMENT as u64
        );
    }

    #[test]
    fn ack_and_not_http_cases_record_nothing() {
        let (_, r) = play(Case::Ack);
        assert!(r.done.is_empty());
        assert!(!kite_common::http::opens_connection(
            not_http()[..12].try_into().unwrap(),
            12
        ));
    }

    #[test]
    fn canned_conversation_was_measured_exactly() {
        // The states come from two complete exchanges and one open response: the parser
        // followed them without losing its way.
        let c = canned(0);
        assert_eq!(c.idle.waiting(), 0);
        assert_eq!(c.waiting.waiting(), 1);
        assert_eq!(c.in_body.tx.remaining, 1_048_576 - body_in_head() as u64);
    }

    fn header_len() -> usize {
        let h = big_response_head();
        h.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
    }

    fn body_in_head() -> usize {
        1000 - header_len()
    }
}
