//! The per-connection HTTP/2 state machine (issue 13), shared by the kernel programs
//! (`kite-ebpf` `h2.rs`: `kite_h2_ingress` / `kite_h2_egress`) and the user-space tests.
//!
//! It sits *beside* the HTTP/1.x machine ([`crate::http`]) and drives the same segment loop:
//! [`H2Conn::begin`] (sequence bookkeeping), [`H2Conn::step`] until it returns `false` (from
//! `bpf_loop` in the kernel; each step does a bounded amount of work on at most
//! [`H2_ACTIONS`] bytes), [`H2Conn::end`]. It reuses the HTTP/1 machine's segment types
//! ([`Segment`], [`Scratch`], [`Payload`], [`WINDOW`]) unchanged; its sequence layer is its own
//! small copy of the same rules (see DESIGN.md, "HTTP/2 (issue 13)": the seam to
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

pub mod hold;
pub mod hpack;
mod huffman;

pub use hold::{Due, HOLD_BUF, HOLD_BYTES, HOLD_RANGES, Hold};
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

/// HTTP/2 counters, in [`crate::maps::Stat`] from `Stat::H2Streams` on in this order
/// ([`crate::maps::Stat::from_h2`]).
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
    /// Bytes beyond a gap that could not be placed by framing and were never seen again, or
    /// a gap the kernel proves will never pass Kite (received or acknowledged already).
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
    /// A direction lost to a gap was taken up again at a segment whose payload is a chain of
    /// frame headers of valid shape ending exactly at the segment's end ([`frame_shape`]).
    Resyncs,
    /// Streams open (or opened) while a direction was lost or being resynchronised: their
    /// request or response may lie in bytes never parsed, so they are not recorded.
    ResyncDropped,
    /// A direction's first bytes went by before its connection's state existed (the peer's
    /// connection preface, sent before the peer saw the bytes that opened the state): the
    /// direction was taken up at its first segment seen, a chain of frames of valid shape,
    /// with nothing lost ([`H2Conn::start_at`]).
    LateStart,
    /// A received segment beyond a gap, its frame state in the missing bytes, was held
    /// ([`hold`]) and parsed when the gap's retransmission had been.
    Held,
    /// A received segment beyond a gap could not be held (outside the window of
    /// [`HOLD_BYTES`], more than [`HOLD_RANGES`] ranges, or no buffer): it waits unparsed as
    /// before holding existed (and the direction may resynchronise).
    HoldFull,
}

/// Number of [`H2Stat`] values.
pub const H2_STAT_COUNT: usize = H2Stat::HoldFull as usize + 1;

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
    /// A gRPC request's header block carried its `:path` as a literal (decoded in `path`;
    /// `path_id` is its [`H2Done::path_id`]): where the kernel tells user space a method name
    /// it has not told before. Called per such block, before the stream is recorded.
    #[inline(always)]
    fn rpc_path(&mut self, path_id: u32, path: &hpack::PathBuf) {
        let _ = (path_id, path);
    }
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
    /// [`H2Conn::epoch`] when the slot was taken: recorded only if it is still current.
    pub epoch: u16,
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
/// Lost to a gap: each later segment's start is probed for frame shape ([`frame_shape`]).
const FS_RESYNC: u8 = 8;
/// The direction's first bytes went by before the state existed: its first segment seen is
/// probed as in `FS_RESYNC` and, if it is a chain of frames, taken up with nothing lost (no
/// stream dropped, HPACK exact); anything else is a loss (`FS_RESYNC`).
const FS_START: u8 = 9;

/// Largest frame length a resynchronisation accepts: the default SETTINGS_MAX_FRAME_SIZE
/// (Kite does not read SETTINGS; a peer that allowed more only resynchronises on smaller
/// frames).
pub const RESYNC_MAX_FRAME: u32 = 16_384;

// Sequence flags.
const QF_SEQ: u8 = 1;
const QF_WAIT: u8 = 2;
/// `next_seq` came from the kernel's counters at the connection's start and no segment of
/// the direction has been parsed since ([`H2Conn::start_at`]).
const QF_FRESH: u8 = 4;

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
    /// The direction was resynchronised: a later framing error sends it back to
    /// `FS_RESYNC` (the resync may have been a match inside a payload), not to `FS_LOST`.
    pub resynced: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
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
    pub _pad0: u8,
    /// Bumped when a direction is lost to a gap and when it is resynchronised: slots of
    /// an older generation are never recorded ([`H2Stat::ResyncDropped`]). 16 bits: a slot
    /// would have to outlive 65 536 such events to be taken for current.
    pub epoch: u16,
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// Highest stream id a request opened: a client's new ids only increase (RFC 9113
    /// §5.1.1), so after a resync a request HEADERS for a new stream at or below it is a match
    /// inside a payload, not a frame.
    pub max_sid: u32,
    /// Explicit padding.
    pub _pad2: [u8; 4],
    /// After the response direction resynchronised: the last time it saw bytes it did not
    /// parse. A response in them answers a request made before that time, so a stream whose
    /// request started at or before it is not recorded ([`H2Stat::ResyncDropped`]); streams
    /// opened later are (their responses lie beyond every byte not parsed).
    pub resp_floor_ns: u64,
    /// Received segments held beyond a gap ([`hold`]).
    pub hold: Hold,
}

impl H2Conn {
    /// All zero (what socket storage starts as).
    pub const ZERO: Self = {
        // SAFETY: every field is an integer or an array of integers.
        unsafe { core::mem::zeroed() }
    };

    /// Starts a connection with prior knowledge: the request stream begins with [`PREFACE`]
    /// at its next byte, the response stream with frames.
    /// `role` is written last: a packet of the other direction on another CPU takes the
    /// state for live only once it is whole.
    pub fn init(&mut self, role: u8, cgroup_id: u64, addr: [u8; 16], port: u16) {
        self.cgroup_id = cgroup_id;
        self.addr = addr;
        self.port = port;
        self.hp_init();
        // The request direction: received by a server.
        self.dir(role == H2_SERVER).fs = FS_PREFACE;
        self.role = role;
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
        let server = role == H2_SERVER;
        self.place(server, req_seq);
        self.place(!server, resp_seq);
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
    /// connection pool) with both directions at known frame starts `req_seq` and `resp_seq`
    /// (the kernel knows only one of them: it joins with [`H2Conn::init_joined_at`]). Each
    /// direction's HPACK count is
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
        self.joined_base(cgroup_id, addr, port);
        let server = role == H2_SERVER;
        // Frame starts found, not counters that may lag: not fresh.
        self.place(server, req_seq);
        self.place(!server, resp_seq);
    }

    /// Joins a connection midway, as the kernel does (`kite_ingress`/`kite_egress` on an
    /// established socket with no state): direction `rx`'s segment at `seq` is a chain of
    /// frames of valid shape ([`frame_shape`]), so that direction starts there; the other
    /// direction is at an unknown place in its framing (`other_seq`, the kernel's counter)
    /// and waits, as one lost to a gap, for a segment of frame shape. HPACK is unknowable both
    /// ways ([`H2Conn::init_joined`]); until the response direction resynchronises, streams
    /// whose response may lie in bytes it did not parse are dropped, counted.
    /// The joined direction's position is found by shape, as a resync's: a framing error
    /// later sends it back to probing (`resynced`). `role` is written last.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn init_joined_at(
        &mut self,
        role: u8,
        cgroup_id: u64,
        addr: [u8; 16],
        port: u16,
        rx: bool,
        seq: u32,
        other_seq: u32,
        now_ns: u64,
    ) {
        self.joined_base(cgroup_id, addr, port);
        self.place(rx, seq);
        self.place(!rx, other_seq);
        self.dir(rx).resynced = 1;
        let o = self.dir(!rx);
        o.fs = FS_RESYNC;
        o.hdr_ns = now_ns;
        o.blk_ns = now_ns;
        self.role = role;
    }

    /// What a join sets whatever the positions: the endpoint, and HPACK unknowable both ways.
    #[inline(always)]
    fn joined_base(&mut self, cgroup_id: u64, addr: [u8; 16], port: u16) {
        self.cgroup_id = cgroup_id;
        self.addr = addr;
        self.port = port;
        self.hp_init();
        self.rx.hp.desync = 1;
        self.tx.hp.desync = 1;
    }

    /// The direction's next byte is at `seq`, as the kernel's counters say when the state is
    /// created (`rcv_nxt`, `snd_nxt`): what arrives beyond it waits for it — unless the bytes
    /// in between are proven gone ([`H2Conn::begin`]'s `known`). The counters can lag: a
    /// segment of this direction may have passed Kite's hook before the state existed while
    /// the kernel had not yet moved `snd_nxt` past it (it does so after transmitting), or
    /// while it sat in the socket's backlog (`rcv_nxt` moves when the owner releases the
    /// socket). Such bytes were sent before the peer saw what opened the state, so they are
    /// its connection preface (SETTINGS, WINDOW_UPDATE, PING): nothing of a stream, nothing of
    /// HPACK. A fresh direction whose first segment seen lies beyond `seq` with the gap gone
    /// is therefore taken up there if that segment is a chain of frames ([`H2Stat::LateStart`]).
    pub fn start_at(&mut self, rx: bool, seq: u32) {
        self.place(rx, seq);
        self.dir(rx).qflags |= QF_FRESH;
    }

    /// A server connection whose first received bytes (`len` of them at `seq`: the client
    /// preface and what came with it) were seen before the socket had a state — they reached
    /// its listener, the handshake's last ACK lost — and were kept: the request direction
    /// starts at `seq` with those bytes held at window offset 0, due at once (the kernel's
    /// caller parses them before anything else, [`hold::HF_REPLAY`]). Call before
    /// [`H2Conn::init`]; the hold buffer must exist and hold them.
    pub fn hold_parked(&mut self, seq: u32, len: u32) {
        self.place(true, seq);
        let len = if len > HOLD_BYTES as u32 {
            HOLD_BYTES as u32
        } else {
            len
        };
        self.hold = Hold {
            base: seq,
            lo: [0; HOLD_RANGES],
            hi: {
                let mut hi = [0; HOLD_RANGES];
                hi[0] = len as u16;
                hi
            },
            n: (len != 0) as u8,
            flags: (self.hold.flags & hold::HF_ON) | hold::HF_BUF,
            copy_at: 0,
        };
    }

    /// The direction's next byte is at `seq`, a position known for sure.
    #[inline(always)]
    fn place(&mut self, rx: bool, seq: u32) {
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
    /// range, `ahead_seq..ahead_end`) for the bytes that fill the gap. `known` is the kernel's
    /// own position in the direction as this segment passes (`rcv_nxt` for received data:
    /// the bytes before it are in the socket already; `snd_una` for sent data: acknowledged):
    /// a gap below it will never pass Kite, so the direction does not wait for it — a fresh
    /// one ([`H2Conn::start_at`]) is taken up at the segment, another one is lost to the gap
    /// and resynchronises. Sent data passes the hook in order, so a fresh sending direction
    /// takes a gap as gone whatever `known` says.
    pub fn begin<S: H2Sink>(
        &mut self,
        seg: &mut Segment,
        seq: u32,
        known: u32,
        sink: &mut S,
    ) -> bool {
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
        if d.fs == FS_RESYNC || d.fs == FS_START {
            return self.probe_begin(seg, seq);
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
            let d = self.dir(seg.rx);
            let gone = (known.wrapping_sub(d.next_seq) as i32) > 0;
            // Received bytes beyond a gap the link still owes, unless the gap lies inside a
            // payload skipped anyway: held, parsed when the gap is ([`hold`]).
            let skipped = d.fs == FS_SKIP && d.left >= gap;
            if seg.rx && self.hold.flags & hold::HF_ON != 0 && !gone && !skipped {
                match self.hold.insert(self.rx.next_seq, seq, len) {
                    hold::Held::Copy(at) => {
                        self.hold.flags |= hold::HF_COPY;
                        self.hold.copy_at = at;
                        sink.stat(H2Stat::Held);
                        seg.pos = len;
                        seg.acct = len;
                        return false;
                    }
                    hold::Held::Dup => {
                        sink.stat(H2Stat::Retransmits);
                        seg.pos = len;
                        seg.acct = len;
                        return false;
                    }
                    hold::Held::No => sink.stat(H2Stat::HoldFull),
                }
            }
            if !self.skip_gap(seg.rx, gap, sink) {
                let d = self.dir(seg.rx);
                if d.qflags & (QF_FRESH | QF_WAIT) == QF_FRESH
                    && d.fs == FS_HEADER
                    && (gone || !seg.rx)
                {
                    d.qflags &= !QF_FRESH;
                    d.fs = FS_START;
                    return self.probe_begin(seg, seq);
                }
                if gone {
                    // Waiting would be forever (the connection would go unmeasured).
                    sink.stat(H2Stat::UnplacedAhead);
                    self.lose(seg.rx, seg.now_ns);
                    return self.probe_begin(seg, seq);
                }
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
        d.qflags &= !QF_FRESH;
        true
    }

    /// `FS_RESYNC` / `FS_START`: sequence bookkeeping of a segment to probe. Only a segment
    /// beyond everything seen is probed (`next_seq`: the furthest end); [`H2Conn::step`]
    /// reads its frame headers from its first byte.
    #[inline(always)]
    fn probe_begin(&mut self, seg: &mut Segment, seq: u32) -> bool {
        let len = seg.end;
        let d = self.dir(seg.rx);
        let off = seq.wrapping_sub(d.next_seq) as i32;
        if off < 0 || len < 9 {
            if off >= 0 {
                d.next_seq = seq.wrapping_add(len);
                d.hdr_ns = seg.now_ns;
            }
            seg.pos = len;
            seg.acct = len;
            if d.fs == FS_START {
                // Bytes that may begin a frame went unparsed: a loss after all.
                self.lose(seg.rx, seg.now_ns);
            }
            return false;
        }
        d.next_seq = seq.wrapping_add(len);
        d.in_block = 0;
        // `hdr_ns`: the last time bytes beyond all seen arrived unparsed (this segment's,
        // unless it resynchronises: then `blk_ns`, the one before — or this segment's own
        // time when bytes are missing in front of it: they were sent before it, so any
        // stream started before now may have its response there).
        d.blk_ns = if off > 0 { seg.now_ns } else { d.hdr_ns };
        d.hdr_ns = seg.now_ns;
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
        if fs == FS_RESYNC || fs == FS_START {
            let more = self.probe(seg, scratch, payload, sink);
            if !more && self.dir(rx).fs == FS_START {
                // Not a chain of frames: bytes of a frame went by unseen.
                self.lose(rx, seg.now_ns);
            }
            return more;
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
                    if req {
                        self.dir(rx).rpc_path(sink);
                    }
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
                    if sid <= self.max_sid && self.dir(rx).resynced != 0 {
                        // Not a new client stream: the resync matched inside a payload.
                        self.dir(rx).fs = FS_LOST;
                        sink.stat(H2Stat::Lost);
                        return;
                    }
                    if sid > self.max_sid {
                        self.max_sid = sid;
                    }
                    let Some(i) = self.alloc(sid, sink) else {
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
            self.release_slot(i, now_ns, sink);
            i += 1;
        }
    }

    /// [`H2Conn::release`] of slot `i` alone (`i < H2_STREAMS`; the kernel's release
    /// programs call it from `bpf_loop`, so the verifier sees one slot, not 128).
    #[inline(always)]
    pub fn release_slot<S: H2Sink>(&mut self, i: usize, now_ns: u64, sink: &mut S) {
        let i = i & (H2_STREAMS - 1);
        let f = self.slots[i].flags;
        if f & SL_USED != 0 {
            if f & SL_RESP != 0 {
                self.finish(i, END_CLOSED, now_ns, sink);
            } else {
                self.slots[i] = Slot::default();
                sink.stat(H2Stat::Unanswered);
            }
        }
    }

    fn finish<S: H2Sink>(&mut self, i: usize, end: u8, now_ns: u64, sink: &mut S) {
        let s = self.slots[i & (H2_STREAMS - 1)];
        self.slots[i & (H2_STREAMS - 1)] = Slot::default();
        if s.epoch != self.epoch || s.start_ns <= self.resp_floor_ns {
            sink.stat(H2Stat::ResyncDropped);
            return;
        }
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

    /// A free slot for stream `sid`, marked used. A slot of an older epoch is free: its stream
    /// would never be recorded ([`H2Stat::ResyncDropped`], counted here), and its response
    /// may never be parsed (so waiting for it would fill the table).
    #[inline(always)]
    fn alloc<S: H2Sink>(&mut self, sid: u32, sink: &mut S) -> Option<usize> {
        if sid == 0 {
            return None;
        }
        let mut k = 0;
        while k < H2_PROBES {
            let i = (slot_home(sid) + k) & (H2_STREAMS - 1);
            let f = self.slots[i].flags;
            let stale =
                self.slots[i].epoch != self.epoch || self.slots[i].start_ns <= self.resp_floor_ns;
            if f & SL_USED == 0 || stale {
                if f & SL_USED != 0 {
                    sink.stat(H2Stat::ResyncDropped);
                }
                self.slots[i] = Slot {
                    id: sid,
                    flags: SL_USED,
                    epoch: self.epoch,
                    ..Slot::default()
                };
                return Some(i);
            }
            k += 1;
        }
        None
    }

    /// After [`H2Conn::begin`] held the segment ([`H2Stat::Held`]): the window offset its
    /// bytes go to, once (the caller copies the whole segment there, or calls
    /// [`H2Conn::hold_failed`]).
    #[inline(always)]
    pub fn take_copy(&mut self) -> Option<u32> {
        if self.hold.flags & hold::HF_COPY == 0 {
            return None;
        }
        self.hold.flags &= !hold::HF_COPY;
        Some(self.hold.copy_at as u32)
    }

    /// The held bytes could not be kept (no buffer, a failed copy): every held range becomes
    /// bytes seen beyond the gap and not parsed, as if holding did not exist
    /// ([`H2Stat::HoldFull`]).
    #[inline(never)]
    pub fn hold_failed<S: H2Sink>(&mut self, sink: &mut S) {
        sink.stat(H2Stat::HoldFull);
        self.hold.flags &= !hold::HF_COPY;
        let mut i = 0;
        while i < HOLD_RANGES {
            if i < self.hold.n as usize {
                let (lo, hi) = (self.hold.lo[i] as u32, self.hold.hi[i] as u32);
                let seq = self.hold.base.wrapping_add(lo);
                self.rx.note_ahead(seq, hi.saturating_sub(lo));
            }
            i += 1;
        }
        self.hold.n = 0;
    }

    /// After [`H2Conn::end`] of a received segment: whether held bytes are due (the parser
    /// reached them: parse them now, from the window, as a segment at `seq`), or the buffer
    /// can go (nothing held any more; [`hold::HF_BUF`] is cleared).
    #[inline(always)]
    pub fn hold_due(&mut self) -> Due {
        let fs = self.rx.fs;
        if fs == FS_LOST || fs == FS_RESYNC || fs == FS_START {
            self.hold.n = 0;
        }
        let due = self.hold.due(self.rx.next_seq);
        if due == Due::Free {
            self.hold.flags &= !hold::HF_BUF;
        }
        due
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
        if d.fs == FS_LOST && d.resynced != 0 {
            // Framing broke after a resync (which may have matched inside a payload).
            self.lose(rx, seg.now_ns);
            return;
        }
        if d.qflags & QF_WAIT == 0 {
            return;
        }
        if rx && self.hold.covers(self.rx.next_seq) {
            // Held bytes come first: parsed from the window next ([`H2Conn::hold_due`]).
            return;
        }
        let d = self.dir(rx);
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
            d.next_seq = d.ahead_end;
            sink.stat(H2Stat::UnplacedAhead);
            self.lose(rx, seg.now_ns);
        }
    }

    /// The direction lost its framing to a gap: it waits for a segment of frame shape, and
    /// every stream open now (or opened until then) is never recorded.
    #[inline(always)]
    fn lose(&mut self, rx: bool, now_ns: u64) {
        if rx && let Some(end) = self.hold.end() {
            // Held bytes are not parsed any more: beyond all seen is beyond them too.
            if (end.wrapping_sub(self.rx.next_seq) as i32) > 0 {
                self.rx.next_seq = end;
            }
            self.hold.n = 0;
        }
        let d = self.dir(rx);
        d.fs = FS_RESYNC;
        d.hdr_ns = now_ns;
        if (d.ahead_end.wrapping_sub(d.next_seq) as i32) > 0 && d.qflags & QF_WAIT != 0 {
            d.next_seq = d.ahead_end;
        }
        // Not fresh any more: what it missed may have been stream bytes.
        d.qflags &= !(QF_WAIT | QF_FRESH);
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// `FS_RESYNC`: one frame header at `seg.pos` checked ([`frame_shape`]); the chain must
    /// end exactly at the segment's end. Then the direction restarts at the segment's first
    /// byte with its HPACK count unknowable (as for a join: entries inserted from here on
    /// resolve, older ones are unknown).
    #[inline(never)]
    fn probe<P: Payload, S: H2Sink>(
        &mut self,
        seg: &mut Segment,
        scratch: &mut Scratch,
        payload: &mut P,
        sink: &mut S,
    ) -> bool {
        let rx = seg.rx;
        let req = self.is_request_dir(rx);
        if seg.end - seg.pos < 9 {
            seg.pos = seg.end;
            return false;
        }
        if seg.pos + 9 > seg.win_start + seg.win_len {
            seg.win_len = 0;
        }
        if !window(seg, scratch, payload, sink) {
            seg.pos = seg.end;
            return false;
        }
        let at = (seg.pos - seg.win_start) as usize;
        let mut h = [0u8; 9];
        let mut i = 0;
        while i < 9 {
            h[i] = scratch.bytes[(at + i) & (WINDOW - 1)];
            i += 1;
        }
        let d = self.dir(rx);
        let Some(len) = frame_shape(&h, req, &mut d.in_block, &mut d.blk_sid) else {
            seg.pos = seg.end;
            return false;
        };
        let next = seg.pos + 9 + len;
        if next < seg.end {
            seg.pos = next;
            return true;
        }
        // A late start is at a write boundary already (the bytes before it were the peer's
        // preface, written whole): its last frame may go on in the next segment.
        if next > seg.end && d.fs != FS_START {
            seg.pos = seg.end;
            return false;
        }
        // The whole segment is frames of valid shape: restart at its first byte.
        let late = d.fs == FS_START;
        d.fs = FS_HEADER;
        d.hdr_len = 0;
        d.in_block = 0;
        seg.pos = 0;
        // A framing error later sends the direction to `FS_RESYNC`, not `FS_LOST`.
        d.resynced = 1;
        if late {
            // What went by was the peer's connection preface: nothing is lost.
            sink.stat(H2Stat::LateStart);
            return true;
        }
        d.hp.block_start();
        d.hp.desync(sink);
        let floor = d.blk_ns;
        // Streams open at the loss are of an older epoch already; of those opened since, the
        // ones whose response may lie in unparsed bytes are below the floor.
        if !req {
            self.resp_floor_ns = floor;
        }
        sink.stat(H2Stat::Resyncs);
        true
    }
}

/// Which way a header block goes, from its first byte: an indexed or literal request
/// pseudo-header (`:authority`, `:method`, `:path`, `:scheme`: static indices 1-7) opens a
/// request, `:status` (8-14) a response; anything else (a dynamic reference, a table size
/// update) does not tell. [`WAY_REQUEST`], [`WAY_RESPONSE`] or [`WAY_UNKNOWN`].
#[inline(always)]
pub fn block_way(b: u8) -> u8 {
    let idx = if b & 0x80 != 0 {
        b & 0x7f
    } else if b & 0xc0 == 0x40 {
        b & 0x3f
    } else if b & 0xe0 == 0 {
        b & 0x0f
    } else {
        0
    };
    match idx {
        1..=7 => WAY_REQUEST,
        8..=14 => WAY_RESPONSE,
        _ => WAY_UNKNOWN,
    }
}

/// [`block_way`]: a request block.
pub const WAY_REQUEST: u8 = 1;
/// [`block_way`]: a response block.
pub const WAY_RESPONSE: u8 = 0;
/// [`block_way`]: the first byte does not tell.
pub const WAY_UNKNOWN: u8 = 2;

/// Frames a segment may chain for a join (the chain must end at the segment's end).
pub const JOIN_FRAMES: u32 = 16;

/// Whether a segment of a connection first seen midway can be joined, fed its frame headers
/// one by one (the kernel's `join`, and the tests): a chain of frames of valid shape
/// ([`frame_shape`]) ending at the segment's end, whose HEADERS blocks tell one way by their
/// first byte ([`block_way`]), and, if that way is requests, no frame a request direction
/// cannot carry (PUSH_PROMISE, HEADERS or DATA on an even id).
#[derive(Clone, Copy, Debug)]
pub struct JoinCheck {
    in_block: u8,
    way: u8,
    not_req: bool,
    blk_sid: u32,
    /// Offset from the last frame header of its header block's first byte; 0: none to read.
    pub block_at: u32,
}

impl Default for JoinCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl JoinCheck {
    /// Nothing seen.
    pub const fn new() -> Self {
        Self {
            in_block: 0,
            way: WAY_UNKNOWN,
            not_req: false,
            blk_sid: 0,
            block_at: 0,
        }
    }

    /// The next frame header: its payload length, or `None` if it is not framing. Sets
    /// [`JoinCheck::block_at`] for a HEADERS frame whose block starts inside it.
    #[inline(always)]
    pub fn frame(&mut self, h: &[u8; 9]) -> Option<u32> {
        let len = frame_shape(h, false, &mut self.in_block, &mut self.blk_sid)?;
        let (t, f) = (h[3], h[4]);
        self.not_req |=
            t == FT_PUSH_PROMISE || ((t == FT_DATA || t == FT_HEADERS) && h[8] & 1 == 0);
        let at = 9 + (f & FL_PADDED != 0) as u32 + 5 * (f & FL_PRIORITY != 0) as u32;
        self.block_at = if t == FT_HEADERS && at < 9 + len {
            at
        } else {
            0
        };
        Some(len)
    }

    /// The first byte of the last frame's header block; `false` if blocks disagree on the way.
    #[inline(always)]
    pub fn block(&mut self, b: u8) -> bool {
        let w = block_way(b);
        if w == WAY_UNKNOWN {
            return true;
        }
        if self.way != WAY_UNKNOWN && self.way != w {
            return false;
        }
        self.way = w;
        true
    }

    /// The chain ended at the segment's end: the way its blocks tell ([`WAY_REQUEST`] or
    /// [`WAY_RESPONSE`]), if the segment can be joined.
    #[inline(always)]
    pub fn way(&self) -> Option<u8> {
        if self.way == WAY_UNKNOWN || (self.way == WAY_REQUEST && self.not_req) {
            None
        } else {
            Some(self.way)
        }
    }
}

/// Whether the 9 bytes `h` are a frame header of valid shape for resynchronising a direction
/// (the request direction if `req`): type ≤ 9, only the flags defined for the type, length ≤
/// [`RESYNC_MAX_FRAME`] and the fixed lengths (PRIORITY 5, RST_STREAM and WINDOW_UPDATE 4,
/// PING 8, SETTINGS a multiple of 6 and 0 with ACK, GOAWAY ≥ 8), the reserved bit clear,
/// stream 0 exactly for SETTINGS / PING / GOAWAY (WINDOW_UPDATE either), client-initiated
/// (odd) streams for HEADERS and DATA in the request direction, no PUSH_PROMISE there, and a
/// header block going on only with CONTINUATION of its stream (`in_block`, `blk_sid`: the
/// chain's state). Returns the frame's length.
#[inline(always)]
pub fn frame_shape(h: &[u8; 9], req: bool, in_block: &mut u8, blk_sid: &mut u32) -> Option<u32> {
    let len = ((h[0] as u32) << 16) | ((h[1] as u32) << 8) | h[2] as u32;
    let t = h[3];
    let f = h[4];
    if h[5] & 0x80 != 0 || len > RESYNC_MAX_FRAME || t > FT_CONTINUATION {
        return None;
    }
    let sid = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    let allowed: u8 = match t {
        FT_DATA => FL_END_STREAM | FL_PADDED,
        FT_HEADERS => FL_END_STREAM | FL_END_HEADERS | FL_PADDED | FL_PRIORITY,
        FT_SETTINGS | FT_PING => 0x1,
        FT_PUSH_PROMISE => FL_END_HEADERS | FL_PADDED,
        FT_CONTINUATION => FL_END_HEADERS,
        _ => 0,
    };
    if f & !allowed != 0 {
        return None;
    }
    let zero = matches!(t, FT_SETTINGS | FT_PING | FT_GOAWAY);
    if (zero && sid != 0) || (!zero && t != FT_WINDOW_UPDATE && sid == 0) {
        return None;
    }
    let fixed = match t {
        FT_PRIORITY => len == 5,
        FT_RST_STREAM | FT_WINDOW_UPDATE => len == 4,
        FT_PING => len == 8,
        FT_SETTINGS => len.is_multiple_of(6) && (f == 0 || len == 0),
        FT_GOAWAY => len >= 8,
        FT_HEADERS => len >= (f & FL_PADDED != 0) as u32 + 5 * (f & FL_PRIORITY != 0) as u32,
        FT_PUSH_PROMISE => !req && sid & 1 == 1 && len >= 4 + (f & FL_PADDED != 0) as u32,
        FT_DATA => len >= (f & FL_PADDED != 0) as u32,
        _ => true,
    };
    if !fixed || (req && matches!(t, FT_HEADERS | FT_DATA) && sid & 1 == 0) {
        return None;
    }
    if *in_block != 0 {
        if t != FT_CONTINUATION || sid != *blk_sid {
            return None;
        }
    } else if t == FT_CONTINUATION {
        return None;
    }
    *in_block = (matches!(t, FT_HEADERS | FT_PUSH_PROMISE | FT_CONTINUATION)
        && f & FL_END_HEADERS == 0) as u8;
    *blk_sid = sid;
    Some(len)
}

impl H2Dir {
    /// A request block ended: a gRPC `:path` literal in it goes to [`H2Sink::rpc_path`]. Out
    /// of line: inlined, its call made the kernel program's deepest call chain exceed the
    /// verifier's 512 bytes of stack.
    #[inline(never)]
    fn rpc_path<S: H2Sink>(&mut self, sink: &mut S) {
        let r = self.hp.result();
        if r.grpc() == GRPC_YES && self.hp.r_path_lit != 0 && r.path() != PATH_UNKNOWN {
            sink.rpc_path(r.path(), &self.hp.path);
        }
    }

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
