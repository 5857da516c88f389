//! The per-connection HTTP/2 state machine (issue 13, groundwork: user-space tested, not yet
//! called by the kernel programs).
//!
//! It sits *beside* the HTTP/1.x machine ([`crate::http`]) and drives the same segment loop:
//! [`H2Conn::begin`] (sequence bookkeeping), [`H2Conn::step`] until it returns `false` (from
//! `bpf_loop` in the kernel; each step does a bounded amount of work on at most
//! [`H2_ACTIONS`] bytes), [`H2Conn::end`]. It reuses the HTTP/1 machine's segment types
//! ([`Segment`], [`Scratch`], [`Payload`], [`WINDOW`]) unchanged; its sequence layer is its own
//! small copy of the same rules (see DESIGN.md, "HTTP/2 (issue 13, groundwork)": the seam to
//! cut into a shared `stream` module).
//!
//! What it follows, per direction: the client connection preface, 9-byte frame headers split
//! anywhere, HEADERS / CONTINUATION / PUSH_PROMISE header blocks (PADDED and PRIORITY flags),
//! DATA, RST_STREAM, GOAWAY; everything else is skipped by its length. Header blocks go
//! through an HPACK *subset* ([`hpack`]) that never keeps a header table: it counts dynamic
//! table insertions and caches the few that matter. Streams live in a bounded table of
//! [`H2_STREAMS`] slots; each finished stream is handed to an [`H2Sink`] as an [`H2Done`].
//!
//! Nothing here allocates, floats, divides by a variable or loops without a constant bound.

use crate::http::{Payload, Scratch, Segment, WINDOW};
use crate::maps::Method;

pub mod hpack;
mod huffman;

pub use hpack::HpackDir;

/// Stream slots per connection (a power of two). h2load's `-m 100` and gRPC's usual
/// `MAX_CONCURRENT_STREAMS` of 100 fit; a stream that finds no slot is counted
/// ([`H2Stat::StreamTableFull`]) and not measured.
pub const H2_STREAMS: usize = 128;
/// Slots probed for a stream id (client ids are odd and increase, so `id >> 1` spreads them).
pub const H2_PROBES: usize = 8;
/// Bytes looked at per [`H2Conn::step`] (each may be a Huffman byte: 8 decoder bits). The
/// verifier's work grows with it and with [`hpack::CACHE`]: 2 bytes and 32 entries verify in
/// 425 k instructions, 4 and 32 in 767 k, 4 and 16 in 485 k (of 1 M).
pub const H2_ACTIONS: u32 = 2;
/// Upper bound of [`H2Conn::step`] calls per segment for the kernel programs (`bpf_loop`
/// takes up to 2^23): a 64 KiB segment whose every byte is looked at needs 32 768; skipped
/// strings, DATA payloads and other skipped payloads take one step each. Beyond it the
/// direction is lost ([`H2Stat::StepBudget`]).
pub const H2_MAX_STEPS: u32 = 32_768;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// [`PREFACE`] in 32 bytes (indexed with a mask, which the verifier can bound).
const PREFACE_PADDED: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut i = 0;
    while i < PREFACE.len() {
        t[i] = PREFACE[i];
        i += 1;
    }
    t
};

/// Frame types (RFC 9113 §6).
pub const FT_DATA: u8 = 0;
/// HEADERS.
pub const FT_HEADERS: u8 = 1;
/// PRIORITY.
pub const FT_PRIORITY: u8 = 2;
/// RST_STREAM.
pub const FT_RST_STREAM: u8 = 3;
/// SETTINGS.
pub const FT_SETTINGS: u8 = 4;
/// PUSH_PROMISE.
pub const FT_PUSH_PROMISE: u8 = 5;
/// PING.
pub const FT_PING: u8 = 6;
/// GOAWAY.
pub const FT_GOAWAY: u8 = 7;
/// WINDOW_UPDATE.
pub const FT_WINDOW_UPDATE: u8 = 8;
/// CONTINUATION.
pub const FT_CONTINUATION: u8 = 9;

/// Flag END_STREAM (DATA, HEADERS).
pub const FL_END_STREAM: u8 = 0x1;
/// Flag END_HEADERS (HEADERS, PUSH_PROMISE, CONTINUATION).
pub const FL_END_HEADERS: u8 = 0x4;
/// Flag PADDED (DATA, HEADERS, PUSH_PROMISE).
pub const FL_PADDED: u8 = 0x8;
/// Flag PRIORITY (HEADERS).
pub const FL_PRIORITY: u8 = 0x20;

/// [`H2Done::method`] when the `:method` of the request could not be known (a reference to a
/// dynamic table entry Kite could not resolve). Known methods are [`Method`] values.
pub const METHOD_UNKNOWN: u8 = 0xff;
/// [`H2Done::status`] when the `:status` could not be known.
pub const STATUS_UNKNOWN: u16 = 0;
/// [`H2Done::grpc`]: the request's `content-type` is not `application/grpc[+…|;…]`.
pub const GRPC_NO: u8 = 0;
/// [`H2Done::grpc`]: it is (a gRPC call).
pub const GRPC_YES: u8 = 1;
/// [`H2Done::grpc`]: not knowable (an unresolved reference, no `content-type` seen).
pub const GRPC_UNKNOWN: u8 = 2;
/// [`H2Done::grpc_status`]: no `grpc-status` was sent (e.g. not gRPC, or a reset stream).
pub const GRPC_STATUS_NONE: u8 = 0xfe;
/// [`H2Done::grpc_status`]: one may have been sent in a reference Kite could not resolve.
pub const GRPC_STATUS_UNKNOWN: u8 = 0xff;
/// [`H2Done::path_id`] when the `:path` could not be known.
pub const PATH_UNKNOWN: u32 = 0;

/// [`H2Done::end`]: both directions ended with END_STREAM (or the response did).
pub const END_STREAM: u8 = 0;
/// [`H2Done::end`]: RST_STREAM after the response started.
pub const END_RESET: u8 = 1;
/// [`H2Done::end`]: the connection went away (release, GOAWAY) with the response started.
pub const END_CLOSED: u8 = 2;

/// Role: the socket is the server (requests arrive); same values as the HTTP/1 machine's.
pub const H2_SERVER: u8 = crate::http::ROLE_SERVER;
/// Role: the socket is the client (requests leave).
pub const H2_CLIENT: u8 = crate::http::ROLE_CLIENT;

/// HTTP/2 counters. Not in [`crate::maps::Stat`] yet (the agent's self-metrics families test
/// wants every `Stat` in a family): the kernel integration maps them there.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Stat {
    /// Streams recorded.
    Streams = 0,
    /// A stream found no free slot in [`H2_STREAMS`]: not measured.
    StreamTableFull,
    /// RST_STREAM (either side) before a response started: not recorded.
    ResetUnanswered,
    /// Streams above a GOAWAY's last stream id: never processed, not recorded.
    GoawayUnprocessed,
    /// Streams open without a response when the connection went away.
    Unanswered,
    /// Response HEADERS on a stream Kite has no request for (tracking began mid-stream, or
    /// its slot overflowed).
    OrphanResponses,
    /// A direction's HPACK insertion count became unknowable (a header block with bytes never
    /// seen, an undecodable field): dynamic references are unknown from then on.
    HpackDesync,
    /// A field referenced a dynamic entry Kite could not resolve.
    UnknownRefs,
    /// Insertions that matter evicted from the small cache ([`hpack::CACHE`]).
    CacheEvictions,
    /// The bytes stopped being HTTP/2 framing (bad preface, impossible frame): direction lost.
    Lost,
    /// Bytes beyond a gap that could not be placed by framing and were never seen again.
    UnplacedAhead,
    /// Segments (or parts) seen twice, skipped.
    Retransmits,
    /// Gaps inside payloads skipped by arithmetic.
    SeqGaps,
    /// Segments beyond a gap that waited.
    OutOfOrder,
    /// A segment needed more than [`H2_MAX_STEPS`] steps: direction lost.
    StepBudget,
    /// Payload loads that failed.
    LoadErrors,
}

/// Number of [`H2Stat`] values.
pub const H2_STAT_COUNT: usize = H2Stat::LoadErrors as usize + 1;

/// A finished stream, handed to [`H2Sink::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2Done {
    /// First byte of the request's HEADERS frame → first byte of the response's HEADERS frame
    /// (both as seen by the monitored socket).
    pub latency_ns: u64,
    /// First request byte → the response's END_STREAM (or reset): the whole call.
    pub duration_ns: u64,
    /// Request frame bytes (HEADERS, CONTINUATION, DATA, with their 9-byte headers).
    pub req_bytes: u64,
    /// Response frame bytes.
    pub resp_bytes: u64,
    /// FNV-1a of the decoded `:path`, [`PATH_UNKNOWN`] if not knowable.
    pub path_id: u32,
    /// `:status`, [`STATUS_UNKNOWN`] if not knowable.
    pub status: u16,
    /// [`Method`] as `u8`, or [`METHOD_UNKNOWN`].
    pub method: u8,
    /// [`GRPC_NO`], [`GRPC_YES`] or [`GRPC_UNKNOWN`].
    pub grpc: u8,
    /// `grpc-status` (0..=255 as sent), [`GRPC_STATUS_NONE`] or [`GRPC_STATUS_UNKNOWN`].
    pub grpc_status: u8,
    /// [`END_STREAM`], [`END_RESET`] or [`END_CLOSED`].
    pub end: u8,
    /// The stream id.
    pub stream_id: u32,
}

/// Where [`H2Conn`] reports finished streams and counters.
pub trait H2Sink {
    /// A stream finished.
    fn record(&mut self, conn: &H2Conn, done: &H2Done);
    /// Adds `n` to a counter.
    fn add(&mut self, stat: H2Stat, n: u64);
    /// Bumps a counter.
    #[inline(always)]
    fn stat(&mut self, stat: H2Stat) {
        self.add(stat, 1);
    }
}

// Slot flags.
const SL_USED: u8 = 1;
const SL_RESP: u8 = 2;
const SL_REQ_END: u8 = 4;

/// One open stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// First byte of the request HEADERS.
    pub start_ns: u64,
    /// First byte of the response HEADERS (valid with `SL_RESP`).
    pub resp_ns: u64,
    /// Stream id.
    pub id: u32,
    /// [`H2Done::path_id`].
    pub path_id: u32,
    /// Request frame bytes.
    pub req_bytes: u32,
    /// Response frame bytes.
    pub resp_bytes: u32,
    /// `:status`.
    pub status: u16,
    /// [`H2Done::method`].
    pub method: u8,
    /// [`H2Done::grpc`].
    pub grpc: u8,
    /// [`H2Done::grpc_status`].
    pub grpc_status: u8,
    /// `SL_*`.
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

// Frame states of a direction.
const FS_HEADER: u8 = 0;
const FS_PREFACE: u8 = 1;
const FS_PAD_LEN: u8 = 2;
/// Bytes to skip before a header block fragment (priority fields, promised stream id).
const FS_PRE_BLOCK: u8 = 3;
const FS_BLOCK: u8 = 4;
/// Skip `left` payload bytes, then the frame ends.
const FS_SKIP: u8 = 5;
const FS_GOAWAY: u8 = 6;
/// Not followed any more.
const FS_LOST: u8 = 7;

// Sequence flags.
const QF_SEQ: u8 = 1;
const QF_WAIT: u8 = 2;

/// One direction's byte stream: sequence position, frame being read, its header block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct H2Dir {
    /// Time of the first byte of the frame header being read.
    pub hdr_ns: u64,
    /// Time of the first byte of the HEADERS frame that opened the current block.
    pub blk_ns: u64,
    /// Next byte the parser needs (valid with `QF_SEQ`).
    pub next_seq: u32,
    /// Bytes seen beyond a gap, not parsed (valid with `QF_WAIT`).
    pub ahead_seq: u32,
    /// End of them.
    pub ahead_end: u32,
    /// Payload bytes left in the current frame (padding included).
    pub left: u32,
    /// Stream id of the current frame.
    pub sid: u32,
    /// Stream id of the current header block.
    pub blk_sid: u32,
    /// Frame bytes of the current header block so far.
    pub blk_bytes: u32,
    /// GOAWAY's last stream id being read.
    pub goaway: u32,
    /// `FS_*`.
    pub fs: u8,
    /// `QF_*`.
    pub qflags: u8,
    /// The frame header being read (9 bytes; 16 for a mask the verifier can bound).
    pub hdr: [u8; 16],
    /// Bytes of it (or of the preface) read.
    pub hdr_len: u8,
    /// Current frame's type.
    pub ftype: u8,
    /// Current frame's flags.
    pub fflags: u8,
    /// Padding at the end of the current frame.
    pub pad: u8,
    /// Bytes left before the block fragment (`FS_PRE_BLOCK`).
    pub pre: u8,
    /// A header block is open (CONTINUATION expected until END_HEADERS).
    pub in_block: u8,
    /// Frame type that opened it (HEADERS or PUSH_PROMISE).
    pub blk_type: u8,
    /// END_STREAM on the HEADERS frame that opened it.
    pub blk_es: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// HPACK subset state of this direction's encoder.
    pub hp: HpackDir,
}

/// State of one HTTP/2 connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct H2Conn {
    /// cgroup v2 id of the socket's cgroup.
    pub cgroup_id: u64,
    /// Received bytes.
    pub rx: H2Dir,
    /// Sent bytes.
    pub tx: H2Dir,
    /// Open streams.
    pub slots: [Slot; H2_STREAMS],
    /// Endpoint address (as in [`crate::http::Conn::addr`]).
    pub addr: [u8; 16],
    /// Endpoint port.
    pub port: u16,
    /// [`H2_SERVER`] or [`H2_CLIENT`].
    pub role: u8,
    /// Explicit padding.
    pub _pad: [u8; 5],
}

impl H2Conn {
    /// All zero (what socket storage starts as).
    pub const ZERO: Self = {
        // SAFETY: every field is an integer or an array of integers.
        unsafe { core::mem::zeroed() }
    };

    /// Starts a connection with prior knowledge: the request stream begins with [`PREFACE`]
    /// at its next byte, the response stream with frames.
    pub fn init(&mut self, role: u8, cgroup_id: u64, addr: [u8; 16], port: u16) {
        self.role = role;
        self.cgroup_id = cgroup_id;
        self.addr = addr;
        self.port = port;
        self.hp_init();
        self.req_dir().fs = FS_PREFACE;
    }

    /// Starts a connection that switched from HTTP/1.1 (`Upgrade: h2c`, RFC 7540 §3.2): the
    /// API the HTTP/1 machine calls when it sees the `101` (it knows both positions and the
    /// upgrade request's first byte). The request stream continues at `req_seq` with the
    /// client preface, the response stream at `resp_seq` (right after the `101` response) with
    /// the server's frames; the upgrade request is stream 1, half-closed by the client, and
    /// its response comes as HEADERS on stream 1.
    #[allow(clippy::too_many_arguments)]
    pub fn init_upgraded(
        &mut self,
        role: u8,
        cgroup_id: u64,
        addr: [u8; 16],
        port: u16,
        req_seq: u32,
        resp_seq: u32,
        request_ns: u64,
        method: Method,
    ) {
        self.init(role, cgroup_id, addr, port);
        let rq = self.req_dir();
        rq.next_seq = req_seq;
        rq.qflags |= QF_SEQ;
        let rs = self.resp_dir();
        rs.next_seq = resp_seq;
        rs.qflags |= QF_SEQ;
        let s = &mut self.slots[slot_home(1)];
        s.id = 1;
        s.start_ns = request_ns;
        s.method = method as u8;
        s.grpc = GRPC_NO;
        s.grpc_status = GRPC_STATUS_NONE;
        s.path_id = PATH_UNKNOWN;
        s.flags = SL_USED | SL_REQ_END;
    }

    /// Starts following a connection Kite joined midway (an agent restarted under a
    /// connection pool): `req_seq` and `resp_seq` must be frame starts (found, in the kernel,
    /// by recognising a frame header's shape; not done yet). Each direction's HPACK count is
    /// unknowable, so dynamic references are unknown; static entries and literals are exact;
    /// responses to requests sent before the join are orphans.
    #[allow(clippy::too_many_arguments)]
    pub fn init_joined(
        &mut self,
        role: u8,
        cgroup_id: u64,
        addr: [u8; 16],
        port: u16,
        req_seq: u32,
        resp_seq: u32,
    ) {
        self.role = role;
        self.cgroup_id = cgroup_id;
        self.addr = addr;
        self.port = port;
        self.hp_init();
        self.rx.hp.desync = 1;
        self.tx.hp.desync = 1;
        let server = role == H2_SERVER;
        self.start_at(server, req_seq);
        self.start_at(!server, resp_seq);
    }

    /// The direction's next byte is at `seq` (the kernel knows it from `rcv_nxt` / `snd_una`
    /// when a connection's first segment seen is not its first byte): what arrives beyond it
    /// waits for it.
    pub fn start_at(&mut self, rx: bool, seq: u32) {
        let d = self.dir(rx);
        d.next_seq = seq;
        d.qflags |= QF_SEQ;
    }

    #[inline(always)]
    fn hp_init(&mut self) {
        self.rx.hp.init();
        self.tx.hp.init();
    }

    #[inline(always)]
    fn is_request_dir(&self, rx: bool) -> bool {
        (self.role == H2_SERVER) == rx
    }

    #[inline(always)]
    fn dir(&mut self, rx: bool) -> &mut H2Dir {
        if rx { &mut self.rx } else { &mut self.tx }
    }

    #[inline(always)]
    fn req_dir(&mut self) -> &mut H2Dir {
        let rx = self.role == H2_SERVER;
        self.dir(rx)
    }

    #[inline(always)]
    fn resp_dir(&mut self) -> &mut H2Dir {
        let rx = self.role != H2_SERVER;
        self.dir(rx)
    }

    /// Whether both directions stopped being followed.
    pub fn lost(&self) -> bool {
        self.rx.fs == FS_LOST && self.tx.fs == FS_LOST
    }

    /// Streams open in the table.
    pub fn open_streams(&self) -> u32 {
        let mut n = 0;
        let mut i = 0;
        while i < H2_STREAMS {
            n += (self.slots[i].flags & SL_USED != 0) as u32;
            i += 1;
        }
        n
    }

    /// Starts a segment: sequence bookkeeping. Returns whether [`H2Conn::step`] has payload to
    /// look at. The rules are the HTTP/1 machine's ([`crate::http::Conn::begin`]) without its
    /// acknowledgment-proven boundaries (HTTP/2 has no message boundary an acknowledgment can
    /// prove): bytes already parsed are skipped; a segment beyond `next_seq` is placed by
    /// framing when the missing bytes are inside a payload Kite skips anyway (DATA, padding,
    /// frames it does not read) or inside a header block (the block is then damaged and the
    /// direction's HPACK count unknowable, [`H2Stat::HpackDesync`]); otherwise it waits (one
    /// range, `ahead_seq..ahead_end`) for the bytes that fill the gap.
    pub fn begin<S: H2Sink>(&mut self, seg: &mut Segment, seq: u32, sink: &mut S) -> bool {
        let len = seg.end;
        seg.seq = seq;
        if len == 0 {
            return false;
        }
        let d = self.dir(seg.rx);
        if d.fs == FS_LOST {
            seg.pos = len;
            seg.acct = len;
            return false;
        }
        if d.qflags & QF_SEQ == 0 {
            d.qflags |= QF_SEQ;
            d.next_seq = seq;
        }
        let off = seq.wrapping_sub(d.next_seq) as i32;
        if off < 0 {
            let dup = off.unsigned_abs();
            sink.stat(H2Stat::Retransmits);
            if dup >= len {
                seg.pos = len;
                seg.acct = len;
                return false;
            }
            seg.pos = dup;
            seg.acct = dup;
        } else if off > 0 {
            let gap = off as u32;
            if !self.skip_gap(seg.rx, gap, sink) {
                sink.stat(H2Stat::OutOfOrder);
                self.dir(seg.rx).note_ahead(seq, len);
                seg.pos = len;
                seg.acct = len;
                return false;
            }
            sink.stat(H2Stat::SeqGaps);
            self.after_payload(seg.rx, seg.now_ns, sink);
        }
        let d = self.dir(seg.rx);
        d.next_seq = seq.wrapping_add(len);
        true
    }

    /// `gap` bytes at the parser's position were never seen: skips them if framing places
    /// them inside the current frame's payload. Returns whether it could.
    fn skip_gap<S: H2Sink>(&mut self, rx: bool, gap: u32, sink: &mut S) -> bool {
        let d = self.dir(rx);
        let inside = match d.fs {
            FS_SKIP => d.left >= gap,
            FS_BLOCK | FS_PRE_BLOCK => d.left >= gap,
            _ => false,
        };
        if !inside {
            return false;
        }
        if d.fs == FS_BLOCK && d.hp.skipping() && d.left - d.pad as u32 >= gap {
            // Inside a string Kite skips anyway (or a damaged block): nothing is lost.
            let mut left = gap;
            let mut k = 0;
            while k < 2 && left > 0 {
                let m = d.hp.skip(left, d.left - d.pad as u32, sink);
                d.left -= m;
                d.next_seq = d.next_seq.wrapping_add(m);
                left -= m;
                k += 1;
                if !d.hp.skipping() {
                    break;
                }
            }
            if left == 0 {
                if d.left <= d.pad as u32 {
                    d.fs = FS_SKIP;
                }
                return true;
            }
            // The gap goes on past the skipped string.
            d.hp.desync(sink);
            d.hp.damage_block();
            d.left -= left;
            d.next_seq = d.next_seq.wrapping_add(left);
            if d.left <= d.pad as u32 {
                d.fs = FS_SKIP;
            }
            return true;
        }
        if d.fs != FS_SKIP {
            // Header block bytes never seen: this block is damaged, the count unknowable.
            d.hp.desync(sink);
            d.hp.damage_block();
            if d.left > d.pad as u32 {
                d.fs = FS_BLOCK;
            }
        }
        d.left -= gap;
        d.next_seq = d.next_seq.wrapping_add(gap);
        if d.fs == FS_BLOCK && d.left <= d.pad as u32 {
            d.fs = FS_SKIP;
        }
        true
    }

    /// Processes a few bytes of the segment. Returns `false` when the segment is done.
    #[inline(always)]
    pub fn step<P: Payload, S: H2Sink>(
        &mut self,
        seg: &mut Segment,
        scratch: &mut Scratch,
        payload: &mut P,
        sink: &mut S,
    ) -> bool {
        if seg.pos >= seg.end {
            return false;
        }
        let rx = seg.rx;
        let fs = self.dir(rx).fs;
        if fs == FS_LOST {
            seg.pos = seg.end;
            return false;
        }
        // Arithmetic skips first: no byte is looked at.
        if fs == FS_SKIP || fs == FS_PRE_BLOCK || (fs == FS_BLOCK && self.dir(rx).hp.skipping()) {
            let avail = seg.end - seg.pos;
            let d = self.dir(rx);
            let mut n = if d.left < avail { d.left } else { avail };
            if fs == FS_PRE_BLOCK && (d.pre as u32) < n {
                n = d.pre as u32;
            }
            if fs == FS_BLOCK {
                n = d.hp.skip(n, d.left - d.pad as u32, sink);
            }
            seg.pos += n;
            d.left -= n;
            if fs == FS_PRE_BLOCK {
                d.pre -= n as u8;
                if d.pre == 0 {
                    d.fs = FS_BLOCK;
                }
            }
            self.after_payload(rx, seg.now_ns, sink);
            return true;
        }
        if !window(seg, scratch, payload, sink) {
            self.dir(rx).fs = FS_LOST;
            sink.stat(H2Stat::LoadErrors);
            return false;
        }
        let win_end = seg.win_start + seg.win_len;
        let mut k = 0;
        while k < H2_ACTIONS && seg.pos < win_end {
            k += 1;
            let b = scratch.bytes[(seg.pos - seg.win_start) as usize & (WINDOW - 1)];
            let fs = self.dir(rx).fs;
            seg.pos += 1;
            match fs {
                FS_HEADER => {
                    let d = self.dir(rx);
                    if d.hdr_len == 0 {
                        d.hdr_ns = seg.now_ns;
                    }
                    d.hdr[d.hdr_len as usize & 15] = b;
                    d.hdr_len += 1;
                    if d.hdr_len == 9 {
                        d.hdr_len = 0;
                        self.frame_start(rx, sink);
                        // Payload handling (skips, blocks) in the next step.
                        return true;
                    }
                }
                FS_PREFACE => {
                    let d = self.dir(rx);
                    if b != PREFACE_PADDED[d.hdr_len as usize & 31] {
                        d.fs = FS_LOST;
                        sink.stat(H2Stat::Lost);
                        seg.pos = seg.end;
                        return false;
                    }
                    d.hdr_len += 1;
                    if d.hdr_len as usize == PREFACE.len() {
                        d.hdr_len = 0;
                        d.fs = FS_HEADER;
                    }
                }
                FS_PAD_LEN => {
                    let d = self.dir(rx);
                    d.left -= 1;
                    d.pad = b;
                    if b as u32 > d.left || (d.pre as u32) + b as u32 > d.left {
                        d.fs = FS_LOST;
                        sink.stat(H2Stat::Lost);
                        seg.pos = seg.end;
                        return false;
                    }
                    d.fs = if d.ftype == FT_DATA {
                        FS_SKIP
                    } else if d.pre > 0 {
                        FS_PRE_BLOCK
                    } else {
                        FS_BLOCK
                    };
                    self.after_payload(rx, seg.now_ns, sink);
                    return true;
                }
                FS_GOAWAY => {
                    let d = self.dir(rx);
                    d.left -= 1;
                    d.goaway = (d.goaway << 8) | b as u32;
                    d.pre -= 1;
                    if d.pre == 0 {
                        let last = d.goaway & 0x7fff_ffff;
                        d.fs = FS_SKIP;
                        self.goaway(last, sink);
                        self.after_payload(rx, seg.now_ns, sink);
                        return true;
                    }
                }
                _ => {
                    // FS_BLOCK: one HPACK byte.
                    let d = self.dir(rx);
                    d.left -= 1;
                    d.hp.byte(b, sink);
                    if d.left <= d.pad as u32 || d.hp.skipping() {
                        self.after_payload(rx, seg.now_ns, sink);
                        return true;
                    }
                }
            }
        }
        true
    }

    /// After payload bytes were consumed: the fragment or the frame may have ended.
    #[inline(always)]
    fn after_payload<S: H2Sink>(&mut self, rx: bool, now_ns: u64, sink: &mut S) {
        let d = self.dir(rx);
        if d.fs == FS_BLOCK && d.left <= d.pad as u32 {
            d.fs = FS_SKIP;
        }
        if d.fs == FS_SKIP && d.left == 0 {
            self.frame_end(rx, now_ns, sink);
        }
    }

    /// A frame header was read.
    fn frame_start<S: H2Sink>(&mut self, rx: bool, sink: &mut S) {
        let req = self.is_request_dir(rx);
        let d = self.dir(rx);
        let h = d.hdr;
        let len = ((h[0] as u32) << 16) | ((h[1] as u32) << 8) | h[2] as u32;
        let ftype = h[3];
        let flags = h[4];
        let sid = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        d.left = len;
        d.ftype = ftype;
        d.fflags = flags;
        d.sid = sid;
        d.pad = 0;
        d.pre = 0;
        let hdr_ns = d.hdr_ns;
        // A header block must go on with CONTINUATION frames of its stream (RFC 9113 §6.10).
        if d.in_block != 0 && (ftype != FT_CONTINUATION || sid != d.blk_sid) {
            d.fs = FS_LOST;
            sink.stat(H2Stat::Lost);
            return;
        }
        d.fs = FS_SKIP;
        match ftype {
            FT_HEADERS | FT_PUSH_PROMISE => {
                d.in_block = 1;
                d.blk_type = ftype;
                d.blk_sid = sid;
                d.blk_ns = hdr_ns;
                d.blk_es = flags & FL_END_STREAM;
                d.blk_bytes = len + 9;
                d.hp.block_start();
                if ftype == FT_HEADERS && flags & FL_PRIORITY != 0 {
                    d.pre = 5;
                } else if ftype == FT_PUSH_PROMISE {
                    d.pre = 4;
                }
                d.fs = if flags & FL_PADDED != 0 {
                    FS_PAD_LEN
                } else if d.pre > 0 {
                    FS_PRE_BLOCK
                } else {
                    FS_BLOCK
                };
                if (d.pre as u32) + (flags & FL_PADDED != 0) as u32 > len {
                    d.fs = FS_LOST;
                    sink.stat(H2Stat::Lost);
                    return;
                }
            }
            FT_CONTINUATION => {
                if d.in_block == 0 {
                    d.fs = FS_LOST;
                    sink.stat(H2Stat::Lost);
                    return;
                }
                d.blk_bytes = d.blk_bytes.saturating_add(len + 9);
                d.fs = FS_BLOCK;
            }
            FT_DATA => {
                if flags & FL_PADDED != 0 {
                    d.fs = FS_PAD_LEN;
                }
                if let Some(i) = self.find(sid) {
                    let s = &mut self.slots[i & (H2_STREAMS - 1)];
                    if req {
                        s.req_bytes = s.req_bytes.saturating_add(len + 9);
                    } else {
                        s.resp_bytes = s.resp_bytes.saturating_add(len + 9);
                    }
                }
            }
            FT_RST_STREAM => {
                self.reset(sid, hdr_ns, sink);
            }
            FT_GOAWAY if len >= 8 => {
                d.fs = FS_GOAWAY;
                d.pre = 4;
                d.goaway = 0;
            }
            _ => {}
        }
        let d = self.dir(rx);
        if (d.fs == FS_SKIP || d.fs == FS_BLOCK) && d.left == 0 {
            d.fs = FS_SKIP;
            self.frame_end(rx, hdr_ns, sink);
        } else if d.fs == FS_PAD_LEN && d.left == 0 {
            d.fs = FS_LOST;
            sink.stat(H2Stat::Lost);
        }
    }

    /// The current frame's payload was consumed.
    fn frame_end<S: H2Sink>(&mut self, rx: bool, now_ns: u64, sink: &mut S) {
        let req = self.is_request_dir(rx);
        let d = self.dir(rx);
        d.fs = FS_HEADER;
        let ftype = d.ftype;
        let flags = d.fflags;
        let sid = d.sid;
        match ftype {
            FT_HEADERS | FT_CONTINUATION | FT_PUSH_PROMISE if flags & FL_END_HEADERS != 0 => {
                d.in_block = 0;
                d.hp.block_end(sink);
                if d.blk_type == FT_HEADERS {
                    self.headers(rx, req, now_ns, sink);
                }
            }
            FT_DATA if flags & FL_END_STREAM != 0 => {
                self.end_stream(sid, req, now_ns, sink);
            }
            _ => {}
        }
    }

    /// A HEADERS block ended: a request starts, a response starts, or trailers arrive.
    fn headers<S: H2Sink>(&mut self, rx: bool, req: bool, now_ns: u64, sink: &mut S) {
        let d = self.dir(rx);
        let sid = d.blk_sid;
        let ns = d.blk_ns;
        let es = d.blk_es != 0;
        let bytes = d.blk_bytes;
        let r = d.hp.result();
        let found = self.find(sid);
        if req {
            let i = match found {
                Some(i) => i,
                None => {
                    let Some(i) = self.alloc(sid) else {
                        sink.stat(H2Stat::StreamTableFull);
                        return;
                    };
                    let s = &mut self.slots[i & (H2_STREAMS - 1)];
                    s.start_ns = ns;
                    s.method = r.method();
                    s.path_id = r.path();
                    s.grpc = r.grpc();
                    s.grpc_status = GRPC_STATUS_NONE;
                    i
                }
            };
            let s = &mut self.slots[i & (H2_STREAMS - 1)];
            s.req_bytes = s.req_bytes.saturating_add(bytes);
            if es {
                s.flags |= SL_REQ_END;
            }
            return;
        }
        let Some(i) = found else {
            // Server-pushed streams (even ids) have no request: not measured (their
            // PUSH_PROMISE blocks were still counted for HPACK).
            if sid & 1 == 1 {
                sink.stat(H2Stat::OrphanResponses);
            }
            return;
        };
        let s = &mut self.slots[i & (H2_STREAMS - 1)];
        s.resp_bytes = s.resp_bytes.saturating_add(bytes);
        if s.flags & SL_RESP == 0 {
            let status = r.status();
            if status != STATUS_UNKNOWN && status < 200 {
                // Informational (100, 103): the final response is still to come.
                return;
            }
            s.flags |= SL_RESP;
            s.resp_ns = ns;
            s.status = status;
        }
        let g = r.grpc_status();
        if g != GRPC_STATUS_NONE {
            s.grpc_status = g;
        }
        if es {
            self.end_stream(sid, false, now_ns, sink);
        }
    }

    /// END_STREAM on a direction of stream `sid`.
    fn end_stream<S: H2Sink>(&mut self, sid: u32, req: bool, now_ns: u64, sink: &mut S) {
        let Some(i) = self.find(sid) else {
            return;
        };
        if req {
            self.slots[i & (H2_STREAMS - 1)].flags |= SL_REQ_END;
            return;
        }
        if self.slots[i & (H2_STREAMS - 1)].flags & SL_RESP != 0 {
            self.finish(i, END_STREAM, now_ns, sink);
        }
    }

    /// RST_STREAM from either side.
    fn reset<S: H2Sink>(&mut self, sid: u32, now_ns: u64, sink: &mut S) {
        let Some(i) = self.find(sid) else {
            return;
        };
        if self.slots[i & (H2_STREAMS - 1)].flags & SL_RESP != 0 {
            self.finish(i, END_RESET, now_ns, sink);
        } else {
            self.slots[i & (H2_STREAMS - 1)] = Slot::default();
            sink.stat(H2Stat::ResetUnanswered);
        }
    }

    /// GOAWAY: client streams above `last` were never processed.
    fn goaway<S: H2Sink>(&mut self, last: u32, sink: &mut S) {
        let mut i = 0;
        while i < H2_STREAMS {
            let s = &mut self.slots[i & (H2_STREAMS - 1)];
            if s.flags & SL_USED != 0 && s.id > last && s.id & 1 == 1 {
                *s = Slot::default();
                sink.stat(H2Stat::GoawayUnprocessed);
            }
            i += 1;
        }
    }

    /// The socket is going away: streams with a response are recorded, the others counted.
    pub fn release<S: H2Sink>(&mut self, now_ns: u64, sink: &mut S) {
        let mut i = 0;
        while i < H2_STREAMS {
            let f = self.slots[i].flags;
            if f & SL_USED != 0 {
                if f & SL_RESP != 0 {
                    self.finish(i, END_CLOSED, now_ns, sink);
                } else {
                    self.slots[i] = Slot::default();
                    sink.stat(H2Stat::Unanswered);
                }
            }
            i += 1;
        }
    }

    fn finish<S: H2Sink>(&mut self, i: usize, end: u8, now_ns: u64, sink: &mut S) {
        let s = self.slots[i & (H2_STREAMS - 1)];
        self.slots[i & (H2_STREAMS - 1)] = Slot::default();
        let done = H2Done {
            latency_ns: s.resp_ns.saturating_sub(s.start_ns),
            duration_ns: now_ns.saturating_sub(s.start_ns),
            req_bytes: s.req_bytes as u64,
            resp_bytes: s.resp_bytes as u64,
            path_id: s.path_id,
            status: s.status,
            method: s.method,
            grpc: s.grpc,
            grpc_status: s.grpc_status,
            end,
            stream_id: s.id,
        };
        sink.stat(H2Stat::Streams);
        sink.record(self, &done);
    }

    /// The slot of stream `sid`.
    #[inline(always)]
    fn find(&self, sid: u32) -> Option<usize> {
        if sid == 0 {
            return None;
        }
        let mut k = 0;
        while k < H2_PROBES {
            let i = (slot_home(sid) + k) & (H2_STREAMS - 1);
            let s = &self.slots[i];
            if s.flags & SL_USED != 0 && s.id == sid {
                return Some(i);
            }
            k += 1;
        }
        None
    }

    /// A free slot for stream `sid`, marked used.
    #[inline(always)]
    fn alloc(&mut self, sid: u32) -> Option<usize> {
        if sid == 0 {
            return None;
        }
        let mut k = 0;
        while k < H2_PROBES {
            let i = (slot_home(sid) + k) & (H2_STREAMS - 1);
            if self.slots[i].flags & SL_USED == 0 {
                self.slots[i] = Slot {
                    id: sid,
                    flags: SL_USED,
                    ..Slot::default()
                };
                return Some(i);
            }
            k += 1;
        }
        None
    }

    /// Finishes a segment: the step budget, and bytes seen beyond a gap that the parser has
    /// now reached.
    pub fn end<S: H2Sink>(&mut self, seg: &mut Segment, sink: &mut S) {
        let rx = seg.rx;
        if seg.pos < seg.end {
            let d = self.dir(rx);
            if d.fs != FS_LOST {
                sink.stat(H2Stat::StepBudget);
                d.fs = FS_LOST;
            }
            seg.pos = seg.end;
        }
        let d = self.dir(rx);
        if d.qflags & QF_WAIT == 0 {
            return;
        }
        if (d.ahead_end.wrapping_sub(d.next_seq) as i32) <= 0 {
            // Parsed past them (they were sent again).
            d.qflags &= !QF_WAIT;
            return;
        }
        if (d.next_seq.wrapping_sub(d.ahead_seq) as i32) < 0 {
            return;
        }
        // The parser reached bytes it saw beyond a gap, which TCP will not deliver again (the
        // receiver holds them): placed if they are payload it skips.
        let n = d.ahead_end.wrapping_sub(d.next_seq);
        d.qflags &= !QF_WAIT;
        if self.skip_gap(rx, n, sink) {
            sink.stat(H2Stat::SeqGaps);
            self.after_payload(rx, seg.now_ns, sink);
        } else {
            // Frame headers in them were never seen: framing is lost for this direction. (Bytes
            // sent again later would be parsed if the direction waited; TCP with SACK does not
            // resend what arrived.)
            let d = self.dir(rx);
            d.fs = FS_LOST;
            sink.stat(H2Stat::UnplacedAhead);
        }
    }
}

impl H2Dir {
    /// `len` bytes at `seq`, beyond a gap, were seen and not parsed. Unlike the HTTP/1
    /// machine (which keeps the range nearest the parser), this keeps the hull of all such
    /// ranges: HTTP/2 has no later boundary to wait for, so what matters is the first seen
    /// byte the parser will reach and how far unparsed bytes may go.
    #[inline(always)]
    fn note_ahead(&mut self, seq: u32, len: u32) {
        let end = seq.wrapping_add(len);
        if self.qflags & QF_WAIT == 0 || (self.ahead_end.wrapping_sub(self.next_seq) as i32) <= 0 {
            self.ahead_seq = seq;
            self.ahead_end = end;
            self.qflags |= QF_WAIT;
            return;
        }
        if (seq.wrapping_sub(self.ahead_seq) as i32) < 0 {
            self.ahead_seq = seq;
        }
        if (end.wrapping_sub(self.ahead_end) as i32) > 0 {
            self.ahead_end = end;
        }
    }
}

/// `v & mask`, with the mask kept in the program: a volatile read hides `v` from LLVM, which
/// would otherwise drop the mask where it knows a bound from an earlier check on another
/// register — a bound the BPF verifier does not see (what the kernel program's `Payload::load`
/// does for lengths).
#[inline(always)]
pub(crate) fn masked(v: usize, mask: usize) -> usize {
    // SAFETY: reading a local.
    unsafe { core::ptr::read_volatile(&v) & mask }
}

/// Home slot of a stream id.
#[inline(always)]
fn slot_home(sid: u32) -> usize {
    (sid >> 1) as usize & (H2_STREAMS - 1)
}

/// Makes sure the scratch window holds the byte at `seg.pos`.
#[inline(always)]
fn window<P: Payload, S: H2Sink>(
    seg: &mut Segment,
    scratch: &mut Scratch,
    payload: &mut P,
    _sink: &mut S,
) -> bool {
    let win_end = seg.win_start + seg.win_len;
    if seg.pos >= seg.win_start && seg.pos < win_end {
        return true;
    }
    let left = seg.end - seg.pos;
    let len = if left < WINDOW as u32 {
        left
    } else {
        WINDOW as u32
    };
    if len == 0 || !payload.load(seg.pos, scratch, len) {
        return false;
    }
    seg.win_start = seg.pos;
    seg.win_len = len;
    true
}

/// Whether a segment whose payload starts with `h` (`len` bytes of it valid) may be the start
/// of the client preface: the kernel's test before tracking a connection as HTTP/2.
#[inline(always)]
pub fn opens_h2(h: &[u8; 12], len: usize) -> bool {
    let mut i = 0;
    let mut same = len > 0;
    while i < 12 {
        if i < len && h[i] != PREFACE[i] {
            same = false;
        }
        i += 1;
    }
    same
}

#[cfg(test)]
mod tests;
