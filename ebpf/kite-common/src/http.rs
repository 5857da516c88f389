//! The per-connection HTTP/1.x state machine.
//!
//! One [`Conn`] lives per tracked TCP socket (in the `SOCKETS` map, keyed by socket cookie). The
//! `cgroup_skb` programs hand it every TCP segment of the socket, in both directions, as a
//! [`Segment`]; it follows the byte streams and reports each finished request to a [`Sink`].
//!
//! How a segment is processed:
//! 1. [`Conn::begin`] compares the TCP sequence number with the next expected one: bytes already
//!    seen (retransmissions) are skipped, a gap makes the stream resynchronise.
//! 2. The caller runs [`Conn::step`] until it returns `false` (in the kernel from `bpf_loop`, with
//!    a step budget). Each step consumes a few bytes: it recognises a message's first line (a
//!    request method or `HTTP/1.x NNN`), scans header lines for `Content-Length` and
//!    `Transfer-Encoding: chunked`, skips bodies by arithmetic (no byte is looked at), follows
//!    chunked framing, and finds where the next message starts. Messages may be split across
//!    segments at any byte, and several (pipelined) messages may share a segment.
//! 3. [`Conn::end`] does the byte accounting and handles FIN.
//!
//! Requests wait in a bounded FIFO (HTTP/1.x answers in order); a response's first line pops the
//! oldest one and fixes the latency (request's first byte → response's first byte as seen by the
//! monitored socket). The request is *recorded* when its response ends (framing), the next
//! response starts, the peer closes, or the socket is released: once, with its method, status
//! code, latency and byte counts.
//!
//! Because bodies are skipped by their declared length, a body that happens to contain or start
//! with `HTTP/1.1 200` or `GET /` never looks like a message. When the stream cannot be followed
//! (garbage where a message must start, invalid framing, missing bytes), the stream is *lost*
//! and waits for a segment that starts with a message (and, for responses, for a request to
//! answer); the counters in [`Stat`] say how often that happens.

use crate::{
    maps::{Method, RPC_NONE, RPC_UNKNOWN, Stat, Version},
    route::Route,
};

/// Pipelined requests remembered per connection (a power of two).
pub const QUEUE_DEPTH: usize = 16;
/// Bytes of payload copied into the scratch buffer at a time (a power of two).
pub const WINDOW: usize = 256;
/// Bytes needed to recognise a message start (`HTTP/1.1 200`).
pub const START_LEN: usize = 12;
/// Upper bound of [`Conn::step`] calls per segment used by the kernel programs. A segment that
/// needs more (e.g. 64 KiB of header lines) leaves its stream lost ([`Stat::StepBudget`]).
pub const MAX_STEPS: u32 = 2048;

/// Stream mode: a message starts at the next byte.
pub const MODE_START: u8 = 0;
/// Stream mode: inside a header block.
pub const MODE_HEADERS: u8 = 1;
/// Stream mode: inside a `Content-Length` body; `remaining` bytes left.
pub const MODE_BODY: u8 = 2;
/// Stream mode: reading a chunk-size line (or the CRLF ending a chunk).
pub const MODE_CHUNK_SIZE: u8 = 3;
/// Stream mode: inside chunk data; `remaining` bytes left.
pub const MODE_CHUNK_DATA: u8 = 4;
/// Stream mode: trailer section after the last chunk.
pub const MODE_TRAILER: u8 = 5;
/// Stream mode: a response body delimited by the connection's close.
pub const MODE_UNTIL_CLOSE: u8 = 6;
/// Stream mode: not following the stream; wait for a segment that starts with a message.
pub const MODE_LOST: u8 = 7;
/// Stream mode (request streams, routes on): reading the request target into
/// [`Conn::route`]; the rest of the request line is skipped as a header line.
pub const MODE_TARGET: u8 = 8;

// Header-block sub-states (MODE_HEADERS, MODE_TRAILER).
const HS_LINE_START: u8 = 0;
const HS_SKIP: u8 = 1;
const HS_NAME_CL: u8 = 2;
const HS_NAME_TE: u8 = 3;
const HS_VALUE_CL: u8 = 4;
const HS_VALUE_TE: u8 = 5;
const HS_END_CR: u8 = 6;
/// The request line of an `_OTHER` method: its last 8 bytes (CR left out) are kept in
/// `remaining` to check that it ends in `HTTP/1.x`.
const HS_REQLINE: u8 = 7;
const HTTP_10: u64 = u64::from_be_bytes(*b"HTTP/1.0");
const HTTP_11: u64 = u64::from_be_bytes(*b"HTTP/1.1");

// Chunk-size sub-states (MODE_CHUNK_SIZE).
const CS_HEX: u8 = 0;
const CS_EXT: u8 = 1;
const CS_DATA_CR: u8 = 2;
const CS_DATA_LF: u8 = 3;

// Stream flags.
const SF_SEQ: u8 = 1;
const SF_CL: u8 = 2;
const SF_CHUNKED: u8 = 4;
const SF_RESYNC: u8 = 8;
const SF_BAD: u8 = 16;
/// `cand_seq` holds a proven message start.
const SF_CAND: u8 = 32;
/// Bytes beyond a gap were seen (`ahead_seq..ahead_end`) but not parsed.
const SF_WAIT: u8 = 64;
/// The request line of a method outside the known list is being checked for `HTTP/1.x`.
const SF_VERIFY: u8 = 128;
/// Flags that outlive a message.
const SF_KEEP: u8 = SF_SEQ | SF_CAND | SF_WAIT;

// Connection flags.
const CF_OPEN: u8 = 1;
const CF_IGNORE: u8 = 2;
/// The client has had more than one request outstanding (pipelining).
const CF_PIPELINED: u8 = 4;
/// A request was recognised on this connection: it is HTTP/1.x.
const CF_HTTP: u8 = 8;
/// Requests get a route ([`Conn::enable_routes`]).
const CF_ROUTES: u8 = 16;
/// The request stream resynchronised by guess at a segment start (not a proven boundary):
/// only a known method may start a message there. A segment can start inside a request line
/// (`ST /x HTTP/1.1`, the tail of a `POST`), and a token before a space would pass as an
/// `_OTHER` method whose line ends in `HTTP/1.1`.
const CF_GUESS: u8 = 32;

// [`Conn::resp_kind`]: how the open response is framed, from its request's method.
const RK_NORMAL: u8 = 0;
const RK_HEAD: u8 = 1;
const RK_CONNECT: u8 = 2;
const RK_UNKNOWN: u8 = 3;
/// Requests beyond the queue whose HEAD-ness is remembered (bits of [`Conn::skip_head`]).
const SKIP_KNOWN: u8 = 64;

/// [`Conn::role`]: the socket is the server (requests arrive).
pub const ROLE_SERVER: u8 = 1;
/// [`Conn::role`]: the socket is the client (requests leave).
pub const ROLE_CLIENT: u8 = 2;

const CONTENT_LENGTH: &[u8; 14] = b"content-length";
const TRANSFER_ENCODING: &[u8; 17] = b"transfer-encoding";
const CHUNKED: &[u8; 7] = b"chunked";
/// Largest Content-Length or chunk size followed (1 TiB); beyond, the stream is lost.
const MAX_LENGTH: u64 = 1 << 40;

/// One direction of a connection's byte stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Stream {
    /// Bytes left in the current body or chunk; the value being parsed in `Content-Length` and
    /// chunk-size lines.
    pub remaining: u64,
    /// Time of the first byte of a message start split across segments.
    pub start_ns: u64,
    /// Sequence number of the next byte the parser needs (valid once `SF_SEQ` is set). Bytes
    /// before it have been parsed, skipped as body, or given up on; a segment that starts
    /// beyond it waits (out of order) unless framing or a proven boundary places it.
    pub next_seq: u32,
    /// One of the `MODE_*` constants.
    pub mode: u8,
    /// Sub-state inside the mode.
    pub sub: u8,
    /// Match position inside a header name, `chunked`, or hex digits seen.
    pub idx: u8,
    /// `SF_*` flags.
    pub flags: u8,
    /// First bytes of a message start split across segments.
    pub stash: [u8; START_LEN],
    /// Bytes in `stash`.
    pub stash_len: u8,
    /// [`Version`] of the response being parsed (response stream), as `u8`.
    pub version: u8,
    /// Status code of the response being parsed (response stream).
    pub status: u16,
    /// A proven message start (valid with `SF_CAND`): the other direction's acknowledgment
    /// number when it started a request (response streams) or finished a response (request
    /// streams) with nothing else outstanding.
    pub cand_seq: u32,
    /// First byte of the bytes seen beyond a gap (valid with `SF_WAIT`).
    pub ahead_seq: u32,
    /// End of the bytes seen beyond a gap.
    pub ahead_end: u32,
    /// Requests waiting when `cand_seq` was set (the newest of them is the one answered
    /// there).
    pub cand_q: u8,
    /// Explicit padding.
    pub _pad2: [u8; 3],
    /// When the gap before `ahead_seq` filled (0: not yet): from then on the application could
    /// read those bytes, so a message Kite later finds in them (when they are sent again)
    /// started then.
    pub filled_ns: u64,
}

/// State of one tracked connection: the value of the `SOCKETS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    /// cgroup v2 id of the socket's cgroup.
    pub cgroup_id: u64,
    /// Time of the last segment with payload that read the clock ([`Conn::needs_clock`]; what
    /// the agent's sweep of parked states looks at: their segments always do).
    pub last_ns: u64,
    /// Whether each request beyond the queue is a `HEAD` (bit 0: the oldest), for the first
    /// [`Conn::skip_known`] of them.
    pub skip_head: u64,
    /// Latency of the open response.
    pub open_latency_ns: u64,
    /// Request bytes of the open response's request.
    pub open_req_bytes: u64,
    /// Response bytes of the open response so far.
    pub open_resp_bytes: u64,
    /// Request bytes not yet attributed to a queued request.
    pub req_acc: u64,
    /// Time of each waiting request's first byte.
    pub q_ts: [u64; QUEUE_DEPTH],
    /// Bytes of each waiting request (once it ended).
    pub q_bytes: [u32; QUEUE_DEPTH],
    /// [`Method`] of each waiting request.
    pub q_method: [u8; QUEUE_DEPTH],
    /// Endpoint address (local for servers, remote for clients), IPv6 or IPv4-mapped.
    pub addr: [u8; 16],
    /// Stream of received bytes.
    pub rx: Stream,
    /// Stream of sent bytes.
    pub tx: Stream,
    /// Endpoint port.
    pub port: u16,
    /// Status code of the open response.
    pub open_status: u16,
    /// Requests not queued because the queue was full; their responses are skipped.
    pub q_skip: u16,
    /// [`ROLE_SERVER`] or [`ROLE_CLIENT`].
    pub role: u8,
    /// `CF_*` flags.
    pub flags: u8,
    /// Index of the oldest waiting request.
    pub q_head: u8,
    /// Waiting requests.
    pub q_len: u8,
    /// [`Method`] of the open response's request.
    pub open_method: u8,
    /// Requests beyond the queue whose method is known through `skip_head`.
    pub skip_known: u8,
    /// How the response being parsed is framed (`RK_*`).
    pub resp_kind: u8,
    /// Server side: responses sent while no request was known (their requests were hidden
    /// beyond a gap). Requests Kite finds later in those bytes were answered by them.
    pub orphan_debt: u8,
    /// 1 + the queue slot of the request whose target [`Conn::route`] is reading (0: none).
    pub route_slot: u8,
    /// Explicit padding.
    pub _pad: [u8; 1],
    /// Route id of the open response's request ([`RPC_NONE`] with routes off,
    /// [`RPC_UNKNOWN`] when its target was not read).
    pub open_route: u32,
    /// The last route id handed to [`Sink::route`] (not handed again while it repeats).
    pub route_sent: u32,
    /// Route id of each waiting request.
    pub q_route: [u32; QUEUE_DEPTH],
    /// The route of the request target being read (routes on).
    pub route: Route,
}

/// A finished request, handed to [`Sink::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Request's first byte → response's first byte, nanoseconds.
    pub latency_ns: u64,
    /// Request bytes (headers and body).
    pub req_bytes: u64,
    /// Response bytes (headers and body).
    pub resp_bytes: u64,
    /// Response status code.
    pub status: u16,
    /// [`Method`] as `u8`.
    pub method: u8,
}

/// Where [`Conn`] reports finished requests and counters.
pub trait Sink {
    /// A request finished.
    fn record(&mut self, conn: &Conn, done: &Completion);
    /// Adds `n` to a self-metric counter.
    fn add(&mut self, stat: Stat, n: u64);
    /// A request target's route was read: `id` (what [`Conn::open_route`] will say), its text
    /// in `conn.route`. Called when the id differs from the connection's previous one, so the
    /// sink can make the text known once (the kernel: to user space, if the endpoint has room
    /// for the route).
    #[inline(always)]
    fn route(&mut self, conn: &Conn, id: u32) {
        let _ = (conn, id);
    }
    /// Bumps a self-metric counter.
    #[inline(always)]
    fn stat(&mut self, stat: Stat) {
        self.add(stat, 1);
    }
}

/// Where [`Conn::step`] reads payload bytes from.
pub trait Payload {
    /// Copies `len` bytes (`1..=WINDOW`) starting at payload offset `off` into `dst`.
    fn load(&mut self, off: u32, dst: &mut Scratch, len: u32) -> bool;
}

/// Window of payload bytes the parser reads from (a per-CPU map value in the kernel).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct Scratch {
    /// The bytes; only the current window's length is meaningful. The 8 bytes past the window
    /// let a word be read at any offset inside it.
    pub bytes: [u8; WINDOW + 8],
}

impl Scratch {
    /// All zero.
    pub const ZERO: Self = Self {
        bytes: [0; WINDOW + 8],
    };

    #[inline(always)]
    fn byte(&self, off: u32) -> u8 {
        self.bytes[off as usize & (WINDOW - 1)]
    }

    /// The aligned word at byte `o` (a multiple of 8, at most `WINDOW`).
    #[inline(always)]
    fn aligned(&self, o: usize) -> u64 {
        let o = (if o < WINDOW { o } else { WINDOW }) & !7;
        // SAFETY: `o` is a multiple of 8 and `o + 8 <= WINDOW + 8`, inside an 8-aligned struct.
        unsafe { core::ptr::read(self.bytes.as_ptr().add(o).cast::<u64>()) }
    }

    /// The 8 bytes starting at `off` (little-endian), from two aligned loads: BPF has no
    /// unaligned loads, and LLVM would otherwise assemble the word byte by byte.
    #[inline(always)]
    fn word_at(&self, off: u32) -> u64 {
        let o = off as usize & (WINDOW - 1);
        let base = o & !7;
        let r = (o & 7) as u32;
        let w0 = self.aligned(base);
        if r == 0 {
            return w0;
        }
        (w0 >> (8 * r)) | (self.aligned(base + 8) << (64 - 8 * r))
    }
}

/// One TCP segment being processed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Segment {
    /// Arrival/departure time, nanoseconds (monotonic).
    pub now_ns: u64,
    /// Next payload offset to process.
    pub pos: u32,
    /// Payload length.
    pub end: u32,
    /// Payload offset of the scratch window.
    pub win_start: u32,
    /// Bytes in the scratch window.
    pub win_len: u32,
    /// Payload bytes before this offset have been accounted.
    pub acct: u32,
    /// The segment's acknowledgment number (the next byte of the other direction).
    pub ack: u32,
    /// The segment's sequence number.
    pub seq: u32,
    /// Requests that started in this segment.
    pub req_starts: u32,
    /// Non-zero if something was outstanding when one of them started.
    pub busy: u32,
    /// Responses that ended in this segment.
    pub resp_ends: u32,
    /// `true` for received bytes (ingress), `false` for sent bytes (egress).
    pub rx: bool,
}

impl Segment {
    /// A segment of `len` payload bytes.
    pub const fn new(rx: bool, len: u32, now_ns: u64) -> Self {
        Self {
            now_ns,
            pos: 0,
            end: len,
            win_start: 0,
            win_len: 0,
            acct: 0,
            ack: 0,
            seq: 0,
            req_starts: 0,
            busy: 0,
            resp_ends: 0,
            rx,
        }
    }
}

/// What recognising the first bytes of a message found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A request line with this [`Method`].
    Request(Method),
    /// A status line with this code.
    Response(u16),
}

#[inline(always)]
fn is_target_start(b: u8) -> bool {
    b == b'/' || b == b'*' || b == b'[' || b.is_ascii_alphanumeric()
}

/// Recognises the start of a request (`METHOD target`) or response (`HTTP/1.x NNN`) in the
/// first [`START_LEN`] bytes of a message.
#[inline(always)]
pub fn classify(h: &[u8; START_LEN]) -> Option<Start> {
    let w = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let tok = |s: &[u8; 4]| u32::from_le_bytes(*s);
    let (method, target) = if w == tok(b"GET ") {
        (Method::Get, h[4])
    } else if w == tok(b"POST") && h[4] == b' ' {
        (Method::Post, h[5])
    } else if w == tok(b"PUT ") {
        (Method::Put, h[4])
    } else if w == tok(b"HEAD") && h[4] == b' ' {
        (Method::Head, h[5])
    } else if w == tok(b"DELE") && h[4] == b'T' && h[5] == b'E' && h[6] == b' ' {
        (Method::Delete, h[7])
    } else if w == tok(b"PATC") && h[4] == b'H' && h[5] == b' ' {
        (Method::Patch, h[6])
    } else if w == tok(b"OPTI") && h[4] == b'O' && h[5] == b'N' && h[6] == b'S' && h[7] == b' ' {
        (Method::Options, h[8])
    } else if w == tok(b"CONN") && h[4] == b'E' && h[5] == b'C' && h[6] == b'T' && h[7] == b' ' {
        (Method::Connect, h[8])
    } else if w == tok(b"TRAC") && h[4] == b'E' && h[5] == b' ' {
        (Method::Trace, h[6])
    } else if w == tok(b"HTTP")
        && h[4] == b'/'
        && h[5] == b'1'
        && h[6] == b'.'
        && (h[7] == b'0' || h[7] == b'1')
        && h[8] == b' '
        && (b'1'..=b'5').contains(&h[9])
        && h[10].is_ascii_digit()
        && h[11].is_ascii_digit()
    {
        let status =
            (h[9] - b'0') as u16 * 100 + (h[10] - b'0') as u16 * 10 + (h[11] - b'0') as u16;
        return Some(Start::Response(status));
    } else {
        return other_method(h).map(|_| Start::Request(Method::Other));
    };
    if is_target_start(target) {
        Some(Start::Request(method))
    } else {
        None
    }
}

/// Longest method token outside the known list recognised (`MKCALENDAR` is 10).
const MAX_OTHER_TOKEN: usize = START_LEN - 2;

/// RFC 9110 `tchar`: the bytes of a method token.
#[inline(always)]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// A method token outside the known list (`PURGE`, `PROPFIND`, lowercase `get`, …) followed
/// by a space and the start of a request target: its length. The request line must still
/// end in `HTTP/1.x` before it counts (checked by the header automaton).
#[inline(always)]
fn other_method(h: &[u8; START_LEN]) -> Option<usize> {
    let mut n = 0;
    let mut i = 0;
    let mut ended = false;
    while i <= MAX_OTHER_TOKEN {
        if !ended {
            if h[i] == b' ' {
                ended = true;
                n = i;
            } else if !is_tchar(h[i]) {
                return None;
            }
        }
        i += 1;
    }
    if !ended || n == 0 || n + 1 >= START_LEN || !is_target_start(h[n + 1]) {
        return None;
    }
    Some(n)
}

/// Whether a segment whose payload starts with `h` (`len` bytes of it valid) may be the first
/// of a request, so that tracking its connection is worthwhile. Segments shorter than
/// [`START_LEN`] qualify when they are the beginning of a method token.
#[inline(always)]
pub fn opens_connection(h: &[u8; START_LEN], len: usize) -> bool {
    if len >= START_LEN {
        return matches!(classify(h), Some(Start::Request(_)));
    }
    // Method tokens, NUL-padded.
    const TOKENS: [[u8; 8]; 9] = [
        *b"GET \0\0\0\0",
        *b"POST \0\0\0",
        *b"PUT \0\0\0\0",
        *b"HEAD \0\0\0",
        *b"DELETE \0",
        *b"PATCH \0\0",
        *b"OPTIONS ",
        *b"CONNECT ",
        *b"TRACE \0\0",
    ];
    // A token outside the list, possibly followed by a space and a target start.
    let mut i = 0;
    let mut other = len > 0;
    let mut space = START_LEN;
    while i < START_LEN {
        if i < len && other {
            let b = h[i];
            if space == START_LEN {
                if b == b' ' && i > 0 && i <= MAX_OTHER_TOKEN {
                    space = i;
                } else if !is_tchar(b) || i >= MAX_OTHER_TOKEN {
                    other = false;
                }
            } else if i == space + 1 && !is_target_start(b) {
                other = false;
            }
        }
        i += 1;
    }
    if other {
        return true;
    }
    let mut t = 0;
    while t < TOKENS.len() {
        let tok = &TOKENS[t];
        let mut same = len > 0;
        let mut i = 0;
        while i < 8 && i < len && tok[i] != 0 {
            if h[i] != tok[i] {
                same = false;
            }
            i += 1;
        }
        if same {
            return true;
        }
        t += 1;
    }
    false
}

/// Index of the first `\n` byte in a little-endian word, if any. The classic zero-byte test
/// can flag bytes after a real match (borrows) but never before it, so the lowest flag is
/// exact; its index comes from a multiplication instead of a count-trailing-zeros, which BPF
/// lacks.
#[inline(always)]
fn first_newline(w: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = w ^ (ONES * b'\n' as u64);
    let m = x.wrapping_sub(ONES) & !x & HIGHS;
    if m == 0 {
        return None;
    }
    let lowest = m & m.wrapping_neg();
    Some(((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as u32)
}

/// ASCII letters to lower case in a whole word (other bytes may change, see [`Conn::scan`]).
const LOWER: u64 = 0x2020_2020_2020_2020;
const CONTENT_DASH: u64 = u64::from_le_bytes(*b"content-");
const LENGTH_COLON: u64 = u64::from_le_bytes(*b"length:\0");
const SEVEN_BYTES: u64 = 0x00ff_ffff_ffff_ffff;
/// Aligned words a line skip looks at per action (at least `8 * SKIP_WORDS - 7` bytes).
const SKIP_WORDS: u32 = 6;
/// Actions per [`Conn::step`].
const ACTIONS: u32 = 3;

#[inline(always)]
fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'a'..=b'f' => Some((b - b'a' + 10) as u64),
        b'A'..=b'F' => Some((b - b'A' + 10) as u64),
        _ => None,
    }
}

/// Result of feeding one byte to a stream's line-level parser.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ev {
    /// Keep going.
    More,
    /// The header block (or trailer section) ended with this byte.
    BlockEnd,
    /// A chunk-size line ended: chunk data of `remaining` bytes follows (`remaining > 0`), or
    /// this was the last chunk.
    ChunkLine,
    /// The bytes cannot be HTTP/1.x framing.
    Bad,
    /// The request line of an `_OTHER` method ended in `HTTP/1.x`.
    RequestLine,
}

impl Stream {
    /// A message starts at this stream's next byte.
    #[inline(always)]
    fn reset_message(&mut self) {
        self.mode = MODE_START;
        self.sub = 0;
        self.idx = 0;
        self.remaining = 0;
        self.stash_len = 0;
        self.flags &= SF_KEEP;
    }

    /// `len` bytes at `seq`, beyond a gap, were seen and not parsed: remember the range
    /// nearest to the parser (one range; a disjoint later one is forgotten).
    #[inline(always)]
    fn note_ahead(&mut self, seq: u32, len: u32) {
        let end = seq.wrapping_add(len);
        if self.flags & SF_WAIT == 0
            || (end.wrapping_sub(self.ahead_seq) as i32) < 0
            || (self.ahead_end.wrapping_sub(self.next_seq) as i32) <= 0
        {
            self.ahead_seq = seq;
            self.ahead_end = end;
            self.filled_ns = 0;
            self.flags |= SF_WAIT;
            return;
        }
        if (seq.wrapping_sub(self.ahead_end) as i32) <= 0
            && (end.wrapping_sub(self.ahead_seq) as i32) >= 0
        {
            // Touches or overlaps: one range.
            if (seq.wrapping_sub(self.ahead_seq) as i32) < 0 {
                self.ahead_seq = seq;
            }
            if (end.wrapping_sub(self.ahead_end) as i32) > 0 {
                self.ahead_end = end;
            }
        }
    }

    #[inline(always)]
    fn lose(&mut self) {
        self.mode = MODE_LOST;
        self.stash_len = 0;
    }

    /// A `Content-Length:` name was read; its value follows.
    #[inline(always)]
    fn content_length_value(&mut self) {
        self.idx = 0;
        self.sub = HS_VALUE_CL;
        if self.flags & SF_CL != 0 {
            // A second Content-Length: framing is ambiguous (RFC 9112 §6.3).
            self.flags |= SF_BAD;
        }
        self.flags |= SF_CL;
        self.remaining = 0;
    }

    /// One byte of a header block or trailer section.
    #[inline(always)]
    fn header_byte(&mut self, b: u8) -> Ev {
        match self.sub {
            HS_SKIP => {
                if b == b'\n' {
                    self.sub = HS_LINE_START;
                }
            }
            HS_REQLINE => {
                if b == b'\n' {
                    let v = self.remaining;
                    self.remaining = 0;
                    return if v == HTTP_11 || v == HTTP_10 {
                        Ev::RequestLine
                    } else {
                        Ev::Bad
                    };
                }
                if b != b'\r' {
                    self.remaining = (self.remaining << 8) | b as u64;
                }
            }
            HS_LINE_START => {
                let l = b | 0x20;
                if b == b'\r' {
                    self.sub = HS_END_CR;
                } else if b == b'\n' {
                    return Ev::BlockEnd;
                } else if self.mode == MODE_HEADERS && l == b'c' {
                    self.sub = HS_NAME_CL;
                    self.idx = 1;
                } else if self.mode == MODE_HEADERS && l == b't' {
                    self.sub = HS_NAME_TE;
                    self.idx = 1;
                } else {
                    self.sub = HS_SKIP;
                }
            }
            HS_END_CR => {
                if b == b'\n' {
                    return Ev::BlockEnd;
                }
                self.sub = HS_SKIP;
            }
            HS_NAME_CL | HS_NAME_TE => {
                let idx = self.idx as usize;
                let (expected, len) = if self.sub == HS_NAME_CL {
                    (
                        CONTENT_LENGTH.get(idx).copied().unwrap_or(b':'),
                        CONTENT_LENGTH.len(),
                    )
                } else {
                    (
                        TRANSFER_ENCODING.get(idx).copied().unwrap_or(b':'),
                        TRANSFER_ENCODING.len(),
                    )
                };
                if b == b'\n' {
                    self.sub = HS_LINE_START;
                } else if idx < len && (b | 0x20) == expected {
                    self.idx += 1;
                } else if idx == len && b == b':' {
                    if self.sub == HS_NAME_CL {
                        self.content_length_value();
                    } else {
                        self.idx = 0;
                        self.sub = HS_VALUE_TE;
                    }
                } else {
                    self.sub = HS_SKIP;
                }
            }
            HS_VALUE_CL => {
                if b.is_ascii_digit() {
                    if self.remaining < MAX_LENGTH {
                        self.remaining = self.remaining * 10 + (b - b'0') as u64;
                    } else {
                        self.flags |= SF_BAD;
                    }
                    self.idx = 1;
                } else if b == b'\n' {
                    if self.idx == 0 {
                        self.flags |= SF_BAD;
                    }
                    self.sub = HS_LINE_START;
                } else if b == b' ' || b == b'\t' || b == b'\r' {
                    // Optional whitespace around the value.
                } else {
                    self.flags |= SF_BAD;
                    self.sub = HS_SKIP;
                }
            }
            _ => {
                // HS_VALUE_TE: look for `chunked` anywhere in the value.
                let idx = self.idx as usize;
                let l = b | 0x20;
                if b == b'\n' {
                    self.sub = HS_LINE_START;
                } else if idx < CHUNKED.len() && l == CHUNKED[idx] {
                    self.idx += 1;
                    if self.idx as usize == CHUNKED.len() {
                        self.flags |= SF_CHUNKED;
                        self.sub = HS_SKIP;
                    }
                } else {
                    self.idx = (l == b'c') as u8;
                }
            }
        }
        Ev::More
    }

    /// One byte of a chunk-size line or of the CRLF that ends chunk data.
    #[inline(always)]
    fn chunk_byte(&mut self, b: u8) -> Ev {
        match self.sub {
            CS_DATA_CR => {
                if b != b'\r' {
                    return Ev::Bad;
                }
                self.sub = CS_DATA_LF;
            }
            CS_DATA_LF => {
                if b != b'\n' {
                    return Ev::Bad;
                }
                self.sub = CS_HEX;
                self.idx = 0;
                self.remaining = 0;
            }
            CS_HEX => {
                if let Some(d) = hex_value(b) {
                    if self.remaining >= MAX_LENGTH {
                        return Ev::Bad;
                    }
                    self.remaining = self.remaining * 16 + d;
                    self.idx = 1;
                } else if b == b'\n' {
                    return if self.idx == 0 {
                        Ev::Bad
                    } else {
                        Ev::ChunkLine
                    };
                } else if b == b';' || b == b' ' || b == b'\t' || b == b'\r' {
                    if self.idx == 0 {
                        return Ev::Bad;
                    }
                    self.sub = CS_EXT;
                } else {
                    return Ev::Bad;
                }
            }
            _ => {
                // CS_EXT: chunk extensions, ignored up to the end of the line.
                if b == b'\n' {
                    return Ev::ChunkLine;
                }
            }
        }
        Ev::More
    }
}

impl Conn {
    /// Starts tracking a connection whose first request was just seen. `self` must be zeroed.
    pub fn init(&mut self, role: u8, cgroup_id: u64, addr: [u8; 16], port: u16, now_ns: u64) {
        self.role = role;
        self.cgroup_id = cgroup_id;
        self.addr = addr;
        self.port = port;
        self.last_ns = now_ns;
    }

    /// Gives this connection's requests a route (before its first segment).
    pub fn enable_routes(&mut self) {
        self.flags |= CF_ROUTES;
    }

    /// The route id of the request being recorded: what [`Sink::record`] reads, as
    /// [`Conn::response_version`].
    #[inline(always)]
    pub fn open_route(&self) -> u32 {
        self.open_route
    }

    /// Tracking starts before the received stream's first byte arrived (it was lost or
    /// overtaken): that byte is at `seq`, and what arrives beyond it waits for it.
    pub fn start_rx_at(&mut self, seq: u32) {
        self.rx.next_seq = seq;
        self.rx.flags |= SF_SEQ;
    }

    /// [`Version`] (as `u8`) of the response being parsed or just completed: what
    /// [`Sink::record`] reads for the request it is given (the response stream is still at
    /// that response; the next status line is read after it is recorded). Not a field of
    /// [`Completion`]: one more byte there cost the kernel programs 16 bytes of stack, over
    /// the verifier's 512-byte combined bound.
    #[inline(always)]
    pub fn response_version(&self) -> u8 {
        if self.role == ROLE_SERVER {
            self.tx.version
        } else {
            self.rx.version
        }
    }

    /// Whether a segment of `len` payload bytes at `seq` on the `rx` stream may read its time
    /// ([`Segment::now_ns`]). `false` only when it lies in order entirely inside a body (or a
    /// response delimited by the close) with nothing seen beyond a gap: no message starts in
    /// it, and a message it ends was timed at its start. Then `now_ns` may be anything (the
    /// kernel leaves it 0 and makes no clock call; the property tests pass a poisoned time).
    #[inline(always)]
    pub fn needs_clock(&self, rx: bool, seq: u32, len: u32) -> bool {
        let st = if rx { &self.rx } else { &self.tx };
        let body =
            (st.mode == MODE_BODY || st.mode == MODE_CHUNK_DATA) && st.remaining >= len as u64;
        !((body || st.mode == MODE_UNTIL_CLOSE)
            && st.flags & (SF_SEQ | SF_WAIT) == SF_SEQ
            && seq == st.next_seq)
    }

    /// Whether this connection stopped being HTTP/1.x (protocol upgrade or tunnel).
    pub fn ignored(&self) -> bool {
        self.flags & CF_IGNORE != 0
    }

    /// Requests waiting for a response.
    pub fn waiting(&self) -> u32 {
        self.q_len as u32 + self.q_skip as u32
    }

    #[inline(always)]
    fn is_request_stream(&self, rx: bool) -> bool {
        (self.role == ROLE_SERVER) == rx
    }

    #[inline(always)]
    fn stream(&mut self, rx: bool) -> &mut Stream {
        if rx { &mut self.rx } else { &mut self.tx }
    }

    /// Starts a segment: sequence-number bookkeeping. Returns whether [`Conn::step`] has payload
    /// to look at. `seg.end` is the payload length; `seq` the TCP sequence number of its first
    /// byte, `ack` the segment's acknowledgment number (the next byte of the other direction
    /// its sender expects).
    ///
    /// The invariant (ingress sees segments before TCP puts them in order): the parser only
    /// looks at the byte at `next_seq`, or at a proven message start. A segment beyond
    /// `next_seq` is placed by framing when the missing bytes are body (skipped by
    /// arithmetic), resynchronises the stream when it starts at (or spans) a proven boundary,
    /// and otherwise waits: the retransmission or the overtaken segment that fills the gap is
    /// new data, parsed when it comes. Nothing beyond a gap is ever read as a message start.
    #[inline(never)]
    pub fn begin<S: Sink>(&mut self, seg: &mut Segment, seq: u32, ack: u32, sink: &mut S) -> bool {
        if self.flags & CF_IGNORE != 0 {
            return false;
        }
        let len = seg.end;
        seg.ack = ack;
        seg.seq = seq;
        if len == 0 {
            return false;
        }
        if seg.now_ns != 0 {
            // Not after a segment read without the clock ([`Conn::needs_clock`]).
            self.last_ns = seg.now_ns;
        }
        let req = self.is_request_stream(seg.rx);
        let other_lost = self.stream(!seg.rx).mode == MODE_LOST;
        // The old heuristic (a lost stream resynchronises at a segment that starts with a
        // message) is only used where nothing else can help: a request stream whose response
        // stream is lost too (and only at the frontier, never beyond a gap). A pipelining
        // client's lost response stream is never resynchronised by guess: which request a
        // response answers could not be known.
        let guess_ok = req && other_lost;
        let st = self.stream(seg.rx);
        if st.flags & SF_SEQ == 0 {
            st.flags |= SF_SEQ;
            st.next_seq = seq;
        }
        let d = seq.wrapping_sub(st.next_seq) as i32;
        // Offset in this segment of a proven message start, if it has one.
        let cand = if st.flags & SF_CAND != 0 {
            let off = st.cand_seq.wrapping_sub(seq);
            if off < len {
                Some(off)
            } else {
                if (st.cand_seq.wrapping_sub(st.next_seq) as i32) < 0 {
                    // The stream is past it.
                    st.flags &= !SF_CAND;
                }
                None
            }
        } else {
            None
        };
        if st.mode == MODE_LOST || st.mode == MODE_UNTIL_CLOSE {
            // Nothing to parse: only the frontier moves. A lost stream resynchronises at a
            // proven boundary (or, where allowed, at a segment start).
            let end = seq.wrapping_add(len);
            if (end.wrapping_sub(st.next_seq) as i32) > 0 {
                st.next_seq = end;
            }
            if st.mode == MODE_UNTIL_CLOSE {
                if d < 0 {
                    let dup = d.unsigned_abs();
                    sink.stat(Stat::Retransmits);
                    seg.pos = if dup < len { dup } else { len };
                    seg.acct = seg.pos;
                } else if d > 0 {
                    self.account_gap(seg.rx, d as u32);
                }
                sink.stat(Stat::PayloadPackets);
                return true;
            }
            sink.stat(Stat::PayloadPackets);
            if let Some(off) = cand {
                return self.resync(seg, seq, off, true, sink);
            }
            if guess_ok && d >= 0 {
                return self.resync(seg, seq, 0, false, sink);
            }
            seg.pos = len;
            seg.acct = len;
            return false;
        }
        if d < 0 {
            let dup = d.unsigned_abs();
            sink.stat(Stat::Retransmits);
            if dup >= len {
                seg.pos = len;
                seg.acct = len;
                return false;
            }
            seg.pos = dup;
            seg.acct = dup;
            st.next_seq = seq.wrapping_add(len);
        } else if d > 0 {
            let gap = d as u32;
            let in_body = st.mode == MODE_BODY || st.mode == MODE_CHUNK_DATA;
            if in_body && st.remaining >= gap as u64 {
                // The missing bytes are body: nothing in them needs to be seen.
                st.remaining -= gap as u64;
                st.next_seq = seq.wrapping_add(len);
                sink.stat(Stat::SeqGaps);
                self.account_gap(seg.rx, gap);
            } else if let Some(off) = cand {
                sink.stat(Stat::SeqGaps);
                sink.stat(Stat::PayloadPackets);
                return self.resync(seg, seq, off, true, sink);
            } else if guess_ok {
                // Both streams are stuck: no boundary can be proven, so this segment's start
                // is taken for one if it starts with a request.
                sink.stat(Stat::SeqGaps);
                sink.stat(Stat::PayloadPackets);
                return self.resync(seg, seq, 0, false, sink);
            } else {
                if st.mode == MODE_BODY {
                    // The body ends inside the gap: the message is complete; what follows it
                    // waits like any gap.
                    let rest = st.remaining as u32;
                    st.next_seq = st.next_seq.wrapping_add(rest);
                    self.account_gap(seg.rx, rest);
                    self.message_end(seg, req, sink);
                }
                sink.stat(Stat::OutOfOrder);
                self.stream(seg.rx).note_ahead(seq, len);
                seg.pos = len;
                seg.acct = len;
                return false;
            }
        } else {
            st.next_seq = seq.wrapping_add(len);
        }
        sink.stat(Stat::PayloadPackets);
        true
    }

    /// Resynchronises the stream at payload offset `off` of the segment: a proven boundary
    /// (`proven`) or, where allowed, a segment start. What was open before it ended in bytes
    /// never parsed.
    fn resync<S: Sink>(
        &mut self,
        seg: &mut Segment,
        seq: u32,
        off: u32,
        proven: bool,
        sink: &mut S,
    ) -> bool {
        let req = self.is_request_stream(seg.rx);
        if !req {
            // The open response ended before the boundary.
            self.complete(sink);
            // At a proven boundary, the requests queued before the one the boundary belongs
            // to (`cand_q`) were answered in bytes never parsed.
            let cq = self.stream(seg.rx).cand_q as u32;
            let older = cq.saturating_sub(1);
            let extra = if older < self.waiting() {
                older
            } else {
                self.waiting()
            };
            if proven && extra > 0 {
                self.drop_oldest(extra, sink);
            }
        }
        if req {
            // Everything before a proven request start was answered.
            self.orphan_debt = 0;
        }
        if req && !proven {
            self.flags |= CF_GUESS;
        }
        let st = self.stream(seg.rx);
        st.reset_message();
        st.flags &= !SF_CAND;
        st.flags |= SF_RESYNC;
        let end = seq.wrapping_add(seg.end);
        if (end.wrapping_sub(st.next_seq) as i32) > 0 {
            st.next_seq = end;
        }
        seg.pos = off;
        seg.acct = off;
        true
    }

    /// Forgets the `n` oldest waiting requests: their responses were in bytes never parsed.
    fn drop_oldest<S: Sink>(&mut self, n: u32, sink: &mut S) {
        let from_queue = if n < self.q_len as u32 {
            n
        } else {
            self.q_len as u32
        };
        self.q_head = ((self.q_head as u32 + from_queue) as usize & (QUEUE_DEPTH - 1)) as u8;
        self.q_len -= from_queue as u8;
        // Then beyond the queue (no loop: the verifier would unroll it).
        let k = n - from_queue;
        let k = if k < self.q_skip as u32 {
            k
        } else {
            self.q_skip as u32
        };
        self.q_skip -= k as u16;
        if k >= self.skip_known as u32 {
            self.skip_known = 0;
            self.skip_head = 0;
        } else {
            self.skip_known -= k as u8;
            self.skip_head >>= k & 63;
        }
        sink.add(Stat::UnseenBoundary, n as u64);
    }

    /// Takes the oldest request beyond the queue; returns how its response is framed.
    #[inline(always)]
    fn pop_skipped(&mut self) -> u8 {
        self.q_skip -= 1;
        if self.skip_known > 0 {
            let head = self.skip_head & 1 != 0;
            self.skip_head >>= 1;
            self.skip_known -= 1;
            if head { RK_HEAD } else { RK_NORMAL }
        } else {
            RK_UNKNOWN
        }
    }

    /// `n` bytes of this direction were never seen but belong to the current message.
    #[inline(always)]
    fn account_gap(&mut self, rx: bool, n: u32) {
        if self.is_request_stream(rx) {
            self.req_acc += n as u64;
        } else if self.flags & CF_OPEN != 0 {
            self.open_resp_bytes += n as u64;
        }
    }

    /// Processes a few bytes of the segment. Returns `false` when the segment is done.
    #[inline(always)]
    pub fn step<P: Payload, S: Sink>(
        &mut self,
        seg: &mut Segment,
        scratch: &mut Scratch,
        payload: &mut P,
        sink: &mut S,
    ) -> bool {
        if seg.pos >= seg.end || self.flags & CF_IGNORE != 0 {
            return false;
        }
        let req = self.is_request_stream(seg.rx);
        let mode = self.stream(seg.rx).mode;
        match mode {
            MODE_BODY | MODE_CHUNK_DATA => {
                let st = self.stream(seg.rx);
                let avail = (seg.end - seg.pos) as u64;
                let n = if st.remaining < avail {
                    st.remaining
                } else {
                    avail
                };
                seg.pos += n as u32;
                st.remaining -= n;
                if st.remaining == 0 {
                    if mode == MODE_BODY {
                        self.message_end(seg, req, sink);
                    } else {
                        st.mode = MODE_CHUNK_SIZE;
                        st.sub = CS_DATA_CR;
                    }
                }
                true
            }
            MODE_START => {
                if !self.start(seg, scratch, payload, sink, req) {
                    return false;
                }
                // Go on with the header lines in the same step (the window holds them).
                if self.stream(seg.rx).mode == MODE_HEADERS && seg.pos < seg.win_start + seg.win_len
                {
                    self.scan(seg, scratch, sink, req);
                }
                true
            }
            MODE_HEADERS | MODE_TRAILER | MODE_CHUNK_SIZE => {
                if !Self::window(seg, scratch, payload, sink, 1) {
                    self.stream(seg.rx).lose();
                    return false;
                }
                self.scan(seg, scratch, sink, req);
                true
            }
            MODE_TARGET => {
                if !Self::window(seg, scratch, payload, sink, 1) {
                    self.stream(seg.rx).lose();
                    return false;
                }
                self.target(seg, scratch, sink);
                true
            }
            _ => {
                // MODE_UNTIL_CLOSE, MODE_LOST: nothing to parse, bytes are only counted.
                seg.pos = seg.end;
                false
            }
        }
    }

    /// Finishes a segment: byte accounting, FIN, step budget.
    pub fn end<S: Sink>(&mut self, seg: &mut Segment, fin: bool, sink: &mut S) {
        let req = self.is_request_stream(seg.rx);
        if seg.pos < seg.end && self.flags & CF_IGNORE == 0 {
            let st = self.stream(seg.rx);
            if st.mode != MODE_LOST && st.mode != MODE_UNTIL_CLOSE {
                sink.stat(Stat::StepBudget);
                st.lose();
            }
            seg.pos = seg.end;
        }
        self.account(seg, req);
        self.place_ahead(seg, req, sink);
        self.boundaries(seg);
        if fin && !req && self.flags & CF_OPEN != 0 {
            // The responder closed: a body delimited by the close is complete.
            self.complete(sink);
            self.stream(seg.rx).lose();
        }
    }

    /// Proven message starts from this segment's acknowledgment number.
    ///
    /// A request that starts with nothing outstanding is answered by a response that starts
    /// at the acknowledgment number of the request's segment (what the client has received
    /// of the other direction); a response that ends with nothing outstanding is followed by
    /// a request that starts at its segment's acknowledgment number (what the server has
    /// received). Clients that pipeline give no such proof; whether a client pipelines is
    /// only judged while the response stream is followed.
    #[inline(always)]
    fn boundaries(&mut self, seg: &Segment) {
        if seg.req_starts > 0 {
            let busy = seg.busy != 0 || seg.req_starts > 1;
            let pipelined_before = self.flags & CF_PIPELINED != 0;
            // Requests Kite did not see (bytes waiting beyond a gap) or responses it did not
            // follow make "nothing outstanding" unknowable: keep the last judgement.
            let hidden = self.stream(seg.rx).flags & SF_WAIT != 0;
            let server = self.role == ROLE_SERVER;
            let resp = self.stream(!seg.rx);
            let unknown = hidden || resp.mode == MODE_LOST || resp.flags & SF_WAIT != 0;
            // A server's own send stream is exact: a request whose acknowledgment is short of
            // what the server has sent was sent while a response was on its way.
            let short = server
                && (seg.ack.wrapping_sub(resp.next_seq) as i32) < 0
                && resp.flags & SF_SEQ != 0;
            // A request sent while the previous one's proven response start has not been
            // reached, with no response byte received since, is behind it.
            let behind = resp.flags & SF_CAND != 0 && resp.cand_seq == seg.ack;
            // Two requests in one segment are pipelining whatever else is known.
            let pipelined = if seg.req_starts > 1 || short || behind {
                true
            } else if unknown {
                pipelined_before
            } else {
                busy
            };
            if resp.flags & SF_SEQ == 0 {
                resp.flags |= SF_SEQ;
                resp.next_seq = seg.ack;
            }
            let waiting = self.q_len as u32 + self.q_skip as u32;
            let resp = self.stream(!seg.rx);
            if !pipelined {
                resp.flags |= SF_CAND;
                resp.cand_seq = seg.ack;
                // The request it answers: requests queued before it were answered earlier.
                resp.cand_q = if waiting < 255 { waiting as u8 } else { 255 };
                self.flags &= !CF_PIPELINED;
            } else {
                self.flags |= CF_PIPELINED;
            }
        }
        if seg.resp_ends > 0 && self.waiting() == 0 && self.flags & CF_PIPELINED == 0 {
            let rq = self.stream(!seg.rx);
            rq.flags |= SF_CAND;
            rq.cand_seq = seg.ack;
        }
    }

    /// After an in-order segment: if the parser has reached bytes it saw earlier beyond a
    /// gap, places them by framing (body bytes skip, and a body that ends exactly where they
    /// end completes its message). Anything else keeps waiting: those bytes may be resent, and
    /// otherwise the next proven boundary resynchronises the stream.
    #[inline(always)]
    fn place_ahead<S: Sink>(&mut self, seg: &mut Segment, req: bool, sink: &mut S) {
        let st = self.stream(seg.rx);
        if st.flags & SF_WAIT == 0 {
            return;
        }
        if (st.ahead_end.wrapping_sub(st.next_seq) as i32) <= 0 {
            // Parsed or skipped past them meanwhile.
            st.flags &= !SF_WAIT;
            st.filled_ns = 0;
            return;
        }
        if st.next_seq != st.ahead_seq {
            return;
        }
        if st.filled_ns == 0 {
            st.filled_ns = seg.now_ns;
        }
        let n = st.ahead_end.wrapping_sub(st.ahead_seq);
        let body = st.mode == MODE_BODY || st.mode == MODE_CHUNK_DATA;
        if st.mode == MODE_UNTIL_CLOSE || (body && st.remaining >= n as u64) {
            if body {
                st.remaining -= n as u64;
            }
            st.next_seq = st.ahead_end;
            st.flags &= !SF_WAIT;
            let ended = st.mode == MODE_BODY && st.remaining == 0;
            let chunk_ended = st.mode == MODE_CHUNK_DATA && st.remaining == 0;
            if chunk_ended {
                st.mode = MODE_CHUNK_SIZE;
                st.sub = CS_DATA_CR;
            }
            self.account_gap(seg.rx, n);
            if ended {
                self.message_end(seg, req, sink);
            }
        } else if st.mode == MODE_BODY {
            // The body ends inside them: the message is complete; the rest waits.
            let rest = st.remaining as u32;
            st.next_seq = st.next_seq.wrapping_add(rest);
            st.ahead_seq = st.next_seq;
            self.account_gap(seg.rx, rest);
            self.message_end(seg, req, sink);
        }
    }

    /// The socket is going away: records the open response, counts unanswered requests.
    pub fn release<S: Sink>(&mut self, sink: &mut S) {
        if self.flags & CF_OPEN != 0 {
            self.complete(sink);
        }
        let waiting = self.waiting();
        if waiting > 0 {
            sink.add(Stat::Unanswered, waiting as u64);
        }
    }

    /// Makes sure the scratch window holds the byte at `seg.pos` and, where the segment has
    /// them, `want - 1` more.
    #[inline(always)]
    fn window<P: Payload, S: Sink>(
        seg: &mut Segment,
        scratch: &mut Scratch,
        payload: &mut P,
        sink: &mut S,
        want: u32,
    ) -> bool {
        let win_end = seg.win_start + seg.win_len;
        if seg.pos >= seg.win_start
            && seg.pos < win_end
            && (win_end - seg.pos >= want || win_end >= seg.end)
        {
            return true;
        }
        let left = seg.end - seg.pos;
        let len = if left < WINDOW as u32 {
            left
        } else {
            WINDOW as u32
        };
        if len == 0 || !payload.load(seg.pos, scratch, len) {
            sink.stat(Stat::LoadErrors);
            return false;
        }
        seg.win_start = seg.pos;
        seg.win_len = len;
        true
    }

    /// Adds the bytes since the last accounting to the message they belong to.
    #[inline(always)]
    fn account(&mut self, seg: &mut Segment, req: bool) {
        let n = seg.pos.wrapping_sub(seg.acct) as u64;
        seg.acct = seg.pos;
        if req {
            self.req_acc += n;
        } else if self.flags & CF_OPEN != 0 {
            self.open_resp_bytes += n;
        }
    }

    /// A message starts at `seg.pos`: recognise it (possibly with bytes stashed from the
    /// previous segment).
    fn start<P: Payload, S: Sink>(
        &mut self,
        seg: &mut Segment,
        scratch: &mut Scratch,
        payload: &mut P,
        sink: &mut S,
        req: bool,
    ) -> bool {
        if !Self::window(seg, scratch, payload, sink, START_LEN as u32) {
            self.stream(seg.rx).lose();
            return false;
        }
        let avail = seg.win_start + seg.win_len - seg.pos;
        let off = seg.pos - seg.win_start;
        let guess = req && self.flags & CF_GUESS != 0;
        let st = self.stream(seg.rx);
        let have = st.stash_len as usize;
        if have == 0 {
            // Empty lines before a message are ignored (RFC 9112 §2.2), as HTTP parsers do;
            // some servers leave a stray CRLF after a body.
            let b = scratch.byte(off);
            if b == b'\r' || b == b'\n' {
                seg.pos += 1;
                return true;
            }
        }
        // Built in the stash itself (map memory: values the verifier does not know; not a
        // copy on the stack, which the deepest call chain has no room for), not from zeros:
        // known-zero bytes would keep every (stash, window) split a distinct verifier state
        // through `classify`. Bytes past `have + avail` are never looked at.
        let mut i = 0;
        while i < START_LEN {
            if i >= have && ((i - have) as u32) < avail {
                st.stash[i] = scratch.byte(off + (i - have) as u32);
            }
            i += 1;
        }
        let need = START_LEN.saturating_sub(have) as u32;
        if avail < need {
            // The segment ends inside the first bytes: keep them for the next segment.
            if have == 0 {
                st.start_ns = seg.now_ns;
            }
            st.stash_len = (have as u32 + avail) as u8;
            // Stashed bytes are accounted once the message they start is known.
            self.account(seg, req);
            seg.pos += avail;
            seg.acct = seg.pos;
            return false;
        }
        let mut start_ns = if have > 0 { st.start_ns } else { seg.now_ns };
        if st.filled_ns != 0 && st.flags & SF_WAIT != 0 {
            // Bytes seen beyond a gap and sent again: readable since the gap filled.
            let at = seg.seq.wrapping_add(seg.pos);
            if (at.wrapping_sub(st.ahead_end) as i32) < 0 && st.filled_ns < start_ns {
                start_ns = st.filled_ns;
            }
        }
        let resync = st.flags & SF_RESYNC != 0;
        st.stash_len = 0;
        let found = match classify(&st.stash) {
            Some(Start::Request(m)) if req && !(guess && m == Method::Other) => {
                Some(Start::Request(m))
            }
            Some(Start::Response(s)) if !req && (!resync || self.waiting() > 0) => {
                Some(Start::Response(s))
            }
            _ => None,
        };
        let http = self.flags & CF_HTTP != 0;
        let st = self.stream(seg.rx);
        let Some(found) = found else {
            if req && !http && have == 0 {
                // The connection's first message is not an HTTP/1.x request.
                st.lose();
                self.flags |= CF_IGNORE;
                sink.stat(Stat::NotHttp);
                return false;
            }
            if !resync {
                sink.stat(Stat::SyncLost);
            }
            if have > 0 {
                // The stashed bytes were junk after a message, not the beginning of one: look
                // at this segment's own first bytes instead.
                st.flags |= SF_RESYNC;
                return true;
            }
            st.lose();
            return false;
        };
        self.flags &= !CF_GUESS;
        // Bytes before this message belong to the previous one; this message's bytes are
        // accounted from here on.
        self.account(seg, req);
        seg.pos += need;
        match found {
            Start::Request(m) => {
                self.req_acc += have as u64;
                if m != Method::Other {
                    self.request_start(seg, m, start_ns, sink);
                }
            }
            Start::Response(status) => self.response_start(status, have as u64, start_ns, sink),
        }
        let st = self.stream(seg.rx);
        st.mode = MODE_HEADERS;
        st.sub = HS_SKIP;
        st.idx = 0;
        st.remaining = 0;
        st.flags &= SF_KEEP;
        match found {
            Start::Response(status) => {
                st.status = status;
                // `classify` saw `HTTP/1.0` or `HTTP/1.1`.
                st.version = if st.stash[7] == b'1' {
                    Version::Http11
                } else {
                    Version::Http10
                } as u8;
            }
            Start::Request(Method::Other) => {
                // Counted once its request line ends in `HTTP/1.x`.
                st.start_ns = start_ns;
                st.flags |= SF_VERIFY;
                st.sub = HS_REQLINE;
                let h = &st.stash;
                st.remaining =
                    u64::from_be_bytes([h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11]]);
            }
            Start::Request(m) => {
                if self.flags & CF_ROUTES != 0 {
                    self.target_start(seg.rx, m);
                }
            }
        }
        true
    }

    /// A request with a known method started: its target begins in the stash, after the
    /// method and its space, and goes on at `seg.pos` ([`MODE_TARGET`]; `idx` is the next
    /// stash byte to read).
    #[inline(always)]
    fn target_start(&mut self, rx: bool, m: Method) {
        self.route.reset();
        let st = self.stream(rx);
        st.mode = MODE_TARGET;
        st.idx = m.as_str().len() as u8 + 1;
    }

    /// Reads request-target bytes (from the stash, then the window) into [`Conn::route`]: in
    /// the window, a run of a segment's ordinary bytes a word at a time ([`Route::run`],
    /// branch-free), then one byte through [`Route::push`] — one byte per step would cost a
    /// step per byte, and the reader's branches, unrolled, would multiply what the verifier
    /// walks through.
    #[inline(always)]
    fn target<S: Sink>(&mut self, seg: &mut Segment, scratch: &Scratch, sink: &mut S) {
        let st = self.stream(seg.rx);
        let i = st.idx as usize;
        if i >= START_LEN && self.route.runs() {
            let win_end = seg.win_start + seg.win_len;
            let lim = if seg.end < win_end { seg.end } else { win_end } - seg.pos;
            let avail = if lim < 8 { lim } else { 8 };
            let k = self
                .route
                .run(scratch.word_at(seg.pos - seg.win_start), avail);
            seg.pos += k;
            if k == avail {
                // The next byte is in the next step (perhaps the next window).
                return;
            }
        }
        let st = self.stream(seg.rx);
        let stashed = i < START_LEN;
        let b = if i < START_LEN {
            st.stash[i]
        } else {
            scratch.byte(seg.pos - seg.win_start)
        };
        let done = if b == b' ' || b == b'\r' || b == b'\n' {
            true
        } else {
            if stashed {
                st.idx += 1;
            } else {
                seg.pos += 1;
            }
            self.route.push(b);
            self.route.settled()
        };
        if done {
            self.target_end(sink);
            let st = self.stream(seg.rx);
            st.mode = MODE_HEADERS;
            st.sub = HS_SKIP;
            st.idx = 0;
        }
    }

    /// The route of the request being read is complete: its id goes to its queue slot.
    #[inline(always)]
    fn target_end<S: Sink>(&mut self, sink: &mut S) {
        let id = self.route.finish();
        let slot = self.route_slot as usize;
        if slot != 0 {
            self.q_route[(slot - 1) & (QUEUE_DEPTH - 1)] = id;
            self.route_slot = 0;
        }
        if id != self.route_sent {
            self.route_sent = id;
            sink.route(self, id);
        }
    }

    fn request_start<S: Sink>(&mut self, seg: &mut Segment, method: Method, ts: u64, sink: &mut S) {
        self.flags |= CF_HTTP;
        // A target left unfinished (its stream was lost) belongs to no request any more.
        self.route_slot = 0;
        if self.orphan_debt > 0 {
            // Already answered (by a response counted as an orphan) while Kite could not see
            // it: neither is recorded.
            self.orphan_debt -= 1;
            return;
        }
        // Noted for `boundaries` (after the parser loop, which must stay small for the
        // verifier).
        seg.req_starts += 1;
        seg.busy |= self.q_len as u32 | self.q_skip as u32 | (self.flags & CF_OPEN) as u32;
        if self.q_skip > 0 || self.q_len as usize >= QUEUE_DEPTH {
            if self.skip_known as u16 == self.q_skip && self.skip_known < SKIP_KNOWN {
                if method == Method::Head {
                    self.skip_head |= 1 << self.skip_known;
                }
                // A CONNECT's framing is not kept: it and the requests after it are unknown.
                if method != Method::Connect {
                    self.skip_known += 1;
                }
            }
            self.q_skip = self.q_skip.saturating_add(1);
            sink.stat(Stat::PipelineOverflow);
            return;
        }
        let i = (self.q_head as usize + self.q_len as usize) & (QUEUE_DEPTH - 1);
        self.q_ts[i] = ts;
        self.q_method[i] = method as u8;
        self.q_bytes[i] = 0;
        self.q_route[i] = if self.flags & CF_ROUTES != 0 {
            RPC_UNKNOWN
        } else {
            RPC_NONE
        };
        self.q_len += 1;
        if method != Method::Other {
            // `start` reads its target next (routes on).
            self.route_slot = i as u8 + 1;
        }
    }

    fn response_start<S: Sink>(&mut self, status: u16, stashed: u64, ts: u64, sink: &mut S) {
        if status < 200 && status != 101 {
            // Interim response (100 Continue, 103 Early Hints): the request still waits.
            return;
        }
        if self.flags & CF_OPEN != 0 {
            // The previous response's end was not seen (lost stream); it ends here.
            self.complete(sink);
        }
        if self.q_len > 0 {
            let i = self.q_head as usize & (QUEUE_DEPTH - 1);
            self.open_latency_ns = ts.saturating_sub(self.q_ts[i]);
            self.open_method = self.q_method[i];
            self.open_req_bytes = self.q_bytes[i] as u64;
            self.open_status = status;
            self.open_resp_bytes = stashed;
            self.open_route = self.q_route[i];
            if self.route_slot as usize == i + 1 {
                // Answered before its target was read: the route stays unknown.
                self.route_slot = 0;
            }
            self.flags |= CF_OPEN;
            self.q_head = ((i + 1) & (QUEUE_DEPTH - 1)) as u8;
            self.q_len -= 1;
            self.resp_kind = if self.open_method == Method::Head as u8 {
                RK_HEAD
            } else if self.open_method == Method::Connect as u8 {
                RK_CONNECT
            } else {
                RK_NORMAL
            };
        } else if self.q_skip > 0 {
            self.resp_kind = self.pop_skipped();
        } else {
            // Its request was never seen: framed as most responses are (a HEAD's would not
            // be, and then the stream waits for the next proven boundary).
            self.resp_kind = RK_NORMAL;
            if self.role == ROLE_SERVER && self.rx.flags & SF_WAIT != 0 {
                // Its request is hidden beyond a gap and may have been a HEAD.
                self.resp_kind = RK_UNKNOWN;
                self.orphan_debt = self.orphan_debt.saturating_add(1);
            }
            sink.stat(Stat::OrphanResponses);
        }
    }

    /// Records the open response.
    fn complete<S: Sink>(&mut self, sink: &mut S) {
        if self.flags & CF_OPEN == 0 {
            return;
        }
        self.flags &= !CF_OPEN;
        let mut req_bytes = self.open_req_bytes;
        if self.q_len == 0 {
            // Request bytes seen after their request was answered (e.g. a body the server did
            // not wait for) belong here when nothing else waits.
            req_bytes += self.req_acc;
            self.req_acc = 0;
        }
        let done = Completion {
            latency_ns: self.open_latency_ns,
            req_bytes,
            resp_bytes: self.open_resp_bytes,
            status: self.open_status,
            method: self.open_method,
        };
        sink.record(self, &done);
    }

    /// The message on this stream ended at `seg.pos`; a response is recorded.
    fn message_end<S: Sink>(&mut self, seg: &mut Segment, req: bool, sink: &mut S) {
        self.account(seg, req);
        self.stream(seg.rx).reset_message();
        if !req {
            self.complete(sink);
            seg.resp_ends += 1;
        } else {
            if self.q_len > 0 && self.q_skip == 0 {
                let i = (self.q_head as usize + self.q_len as usize - 1) & (QUEUE_DEPTH - 1);
                self.q_bytes[i] = self.q_bytes[i].saturating_add(self.req_acc as u32);
                self.req_acc = 0;
            } else if self.flags & CF_OPEN != 0 {
                self.open_req_bytes += self.req_acc;
                self.req_acc = 0;
            }
        }
    }

    /// Feeds header / chunk-size bytes from the scratch window, a few actions per step.
    ///
    /// Fast paths do whole lines: the rest of a line is skipped word by word to its `\n`, and
    /// at a line start one or two word comparisons tell `Content-Length:` and the end of the
    /// header block from every other field. Everything else (values, chunk-size lines,
    /// `Transfer-Encoding`, lines cut by the end of the window) goes through the byte-wise
    /// automaton, which carries its state across segments. Lower-casing a word by OR-ing
    /// 0x20 into every byte can only make a header name with control bytes match — such a
    /// message is not HTTP anyway.
    #[inline(always)]
    fn scan<S: Sink>(&mut self, seg: &mut Segment, scratch: &Scratch, sink: &mut S, req: bool) {
        let win_end = seg.win_start + seg.win_len;
        let st = self.stream(seg.rx);
        let mut ev = Ev::More;
        let mut actions = 0;
        while actions < ACTIONS && ev == Ev::More && seg.pos < win_end {
            actions += 1;
            let off = seg.pos - seg.win_start;
            let avail = win_end - seg.pos;
            if st.mode != MODE_CHUNK_SIZE && st.sub == HS_SKIP {
                // To the end of the line, up to 41 bytes per action: aligned words from the
                // one holding `off`, whose bytes before `off` are masked (0xff is no `\n`).
                let base = off & !7;
                let lead = off - base;
                let end = off + avail;
                let mut k = 0;
                let mut done = false;
                while k < SKIP_WORDS && !done && base + 8 * k < end {
                    let mut w = scratch.aligned((base + 8 * k) as usize);
                    if k == 0 {
                        w |= (1u64 << (8 * lead)) - 1;
                    }
                    match first_newline(w) {
                        Some(i) if base + 8 * k + i < end => {
                            seg.pos = seg.win_start + base + 8 * k + i + 1;
                            st.sub = HS_LINE_START;
                            done = true;
                        }
                        Some(_) => {
                            // The line goes on past the window.
                            seg.pos = win_end;
                            done = true;
                        }
                        None => k += 1,
                    }
                }
                if !done {
                    let to = base + 8 * k;
                    seg.pos = seg.win_start + if to < end { to } else { end };
                }
                if st.sub == HS_LINE_START && seg.pos < win_end {
                    // The next line's first byte, looked at now: a line that cannot be the
                    // block's end, `Content-Length` or `Transfer-Encoding` is skipped by the
                    // next action (what a line-start action would decide from this byte).
                    let b = scratch.byte(seg.pos - seg.win_start);
                    let l = b | 0x20;
                    if b != b'\r'
                        && b != b'\n'
                        && (st.mode != MODE_HEADERS || (l != b'c' && l != b't'))
                    {
                        st.sub = HS_SKIP;
                    }
                }
                continue;
            }
            if st.mode != MODE_CHUNK_SIZE && st.sub == HS_LINE_START && avail >= 2 {
                let w0 = scratch.word_at(off);
                let b0 = w0 as u8;
                if b0 == b'\r' && (w0 >> 8) as u8 == b'\n' {
                    seg.pos += 2;
                    ev = Ev::BlockEnd;
                    break;
                }
                if b0 == b'\n' {
                    seg.pos += 1;
                    ev = Ev::BlockEnd;
                    break;
                }
                if avail >= 16 {
                    if st.mode == MODE_HEADERS
                        && w0 | LOWER == CONTENT_DASH
                        && (scratch.word_at(off + 8) | LOWER) & SEVEN_BYTES == LENGTH_COLON
                    {
                        seg.pos += 15;
                        st.content_length_value();
                        continue;
                    }
                    if st.mode != MODE_HEADERS || (b0 | 0x20) != b't' {
                        st.sub = HS_SKIP;
                        continue;
                    }
                }
            }
            if st.mode == MODE_HEADERS && st.sub == HS_VALUE_CL && avail >= 8 {
                // A `Content-Length` value, up to 8 bytes in one action: the automaton's own
                // steps for digits, whitespace and the line's `\n`; it takes any other byte.
                let w = scratch.word_at(off);
                let mut k = 0;
                let mut go = true;
                while k < 8 && go {
                    let b = (w >> (8 * k)) as u8;
                    if b.is_ascii_digit() {
                        if st.remaining < MAX_LENGTH {
                            st.remaining = st.remaining * 10 + (b - b'0') as u64;
                        } else {
                            st.flags |= SF_BAD;
                        }
                        st.idx = 1;
                        k += 1;
                    } else if b == b' ' || b == b'\t' || b == b'\r' {
                        k += 1;
                    } else {
                        if b == b'\n' {
                            if st.idx == 0 {
                                st.flags |= SF_BAD;
                            }
                            st.sub = HS_LINE_START;
                            k += 1;
                        }
                        go = false;
                    }
                }
                if k > 0 {
                    seg.pos += k;
                    continue;
                }
            }
            // One byte through the automaton. (One per action keeps the step simple enough for
            // the verifier to check once.)
            let b = scratch.byte(off);
            seg.pos += 1;
            ev = if st.mode == MODE_CHUNK_SIZE {
                st.chunk_byte(b)
            } else {
                st.header_byte(b)
            };
        }
        match ev {
            Ev::More => {}
            Ev::RequestLine => {
                st.flags &= !SF_VERIFY;
                st.sub = HS_LINE_START;
                let ts = st.start_ns;
                self.request_start(seg, Method::Other, ts, sink);
            }
            Ev::Bad => {
                st.lose();
                if req && self.flags & CF_HTTP == 0 {
                    // The connection's first message is not HTTP/1.x: stop looking at it.
                    self.flags |= CF_IGNORE;
                    sink.stat(Stat::NotHttp);
                } else {
                    sink.stat(Stat::SyncLost);
                }
            }
            Ev::ChunkLine => {
                if st.remaining == 0 {
                    st.mode = MODE_TRAILER;
                    st.sub = HS_LINE_START;
                } else {
                    st.mode = MODE_CHUNK_DATA;
                }
            }
            Ev::BlockEnd => {
                if st.mode == MODE_TRAILER {
                    self.message_end(seg, req, sink);
                } else {
                    self.headers_end(seg, req, sink);
                }
            }
        }
    }

    /// The header block of the current message ended at `seg.pos`: choose how its body is
    /// delimited (RFC 9112 §6.3).
    fn headers_end<S: Sink>(&mut self, seg: &mut Segment, req: bool, sink: &mut S) {
        let kind = self.resp_kind;
        let st = self.stream(seg.rx);
        if st.flags & SF_BAD != 0 {
            sink.stat(Stat::SyncLost);
            st.lose();
            return;
        }
        let chunked = st.flags & SF_CHUNKED != 0;
        let has_cl = st.flags & SF_CL != 0;
        if !req {
            let status = st.status;
            if status < 200 && status != 101 {
                st.reset_message();
                return;
            }
            let tunnel = status == 101 || (kind == RK_CONNECT && (200..300).contains(&status));
            if tunnel {
                self.message_end(seg, req, sink);
                self.flags |= CF_IGNORE;
                sink.stat(Stat::Upgrades);
                return;
            }
            if kind == RK_HEAD || status == 204 || status == 304 {
                self.message_end(seg, req, sink);
                return;
            }
            if kind == RK_UNKNOWN {
                // Its request may have been a HEAD (or a CONNECT): whether a body follows
                // cannot be known. Wait for the next proven boundary.
                // (The open response is recorded when the stream resynchronises.)
                sink.stat(Stat::UnframedResponses);
                self.stream(seg.rx).lose();
                return;
            }
        }
        if chunked {
            st.mode = MODE_CHUNK_SIZE;
            st.sub = CS_HEX;
            st.idx = 0;
            st.remaining = 0;
        } else if has_cl && st.remaining > 0 {
            st.mode = MODE_BODY;
        } else if req || has_cl {
            self.message_end(seg, req, sink);
        } else {
            st.mode = MODE_UNTIL_CLOSE;
        }
    }
}

#[cfg(test)]
mod tests;
