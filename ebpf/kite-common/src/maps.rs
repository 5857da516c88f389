//! Keys and values of the eBPF maps, and their names and default sizes.
//!
//! Every type is `#[repr(C)]`, `Copy` and has no implicit padding, so the kernel and user space
//! agree on the bytes. With the `user` feature the types implement [`aya::Pod`].

use crate::hist::HIST_SLOTS;

/// Name of the per-CPU hash map of [`EndpointKey`] → [`EndpointStats`].
pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
/// Name of the socket-local storage map (`BPF_MAP_TYPE_SK_STORAGE`) of
/// [`crate::http::Conn`]: each tracked socket carries its connection state, freed with it.
pub const SOCKETS_MAP: &str = "SOCKETS";
/// Name of the hash map of overflow [`EndpointKey`]s ([`EndpointKey::is_overflow`]) →
/// [`EndpointStats`]: one shared value per key (not per CPU), preallocated and updated with
/// atomic adds, so recording there never needs an allocation.
pub const OVERFLOW_MAP: &str = "OVERFLOW";
/// Default bound of [`OVERFLOW_MAP`]: (cgroup, direction, method, status) overflow keys
/// (≈1.8 KiB each, preallocated: ≈1.9 MiB of kernel memory).
pub const DEFAULT_MAX_OVERFLOW: u32 = 1_024;
/// Name of the per-CPU array of self-metric counters, indexed by [`Stat`].
pub const STATS_MAP: &str = "STATS";
/// Name of the hash map of [`PendingKey`] → [`crate::http::Conn`]: connections whose data
/// arrived on their listener (deferred accept, lost final handshake ACK) before their own
/// socket existed. The socket takes the state over with its first packet.
pub const PENDING_MAP: &str = "PENDING";
/// Name of the array of live-entry counts, indexed by the `LIVE_*` constants (updated with
/// atomic adds by the kernel programs).
pub const LIVE_MAP: &str = "LIVE";
/// [`LIVE_MAP`] slot: connection states attached to sockets now.
pub const LIVE_SOCKETS: u32 = 0;
/// [`LIVE_MAP`] slot: entries the kernel put in [`PENDING_MAP`] minus those it removed.
pub const LIVE_PENDING: u32 = 1;
/// [`LIVE_MAP`] slot: entries of [`PENDING_MAP`] that user space removed (stale: their
/// connection never got a socket); only user space writes it.
pub const LIVE_PENDING_SWEPT: u32 = 2;
/// [`LIVE_MAP`] slot: HTTP/2 connection states ([`H2_SOCKETS_MAP`]) attached to sockets now.
pub const LIVE_H2_SOCKETS: u32 = 3;
/// [`LIVE_MAP`] slot: HTTP/2 hold buffers ([`H2_HOLDS_MAP`]) attached to sockets now.
pub const LIVE_H2_HOLDS: u32 = 4;
/// [`LIVE_MAP`] slot: HTTP/2 client prefaces kept from a listener (`H2_PARKED`: the
/// handshake's last ACK was lost) until their socket's first packet; only gates look-ups.
pub const LIVE_H2_PARKED: u32 = 5;
/// Slots of [`LIVE_MAP`].
pub const LIVE_SLOTS: u32 = 6;
/// Name of the socket-local storage map of HTTP/2 hold buffers: received segments beyond a
/// gap, kept until the gap is parsed (`crate::h2::hold`); a value exists only while
/// something is held.
pub const H2_HOLDS_MAP: &str = "H2_HOLDS";
/// Name of the socket-local storage map of [`crate::h2::H2Conn`]: HTTP/2 connections only
/// (≈7.4 KiB each), so HTTP/1 sockets keep their small [`SOCKETS_MAP`] state.
pub const H2_SOCKETS_MAP: &str = "H2_SOCKETS";
/// Name of the eBPF global holding the soft bound on [`LIVE_H2_SOCKETS`] (set at load time).
pub const MAX_H2_SOCKETS_GLOBAL: &str = "MAX_H2_SOCKETS";
/// Name of the ring buffer of gRPC method names: one record (a [`crate::h2::hpack::PathBuf`]:
/// `id: u32` = FNV-1a of the path, `len: u32` = its decoded length, then the first
/// [`crate::h2::hpack::PATH_BUF`] bytes; `len` larger than that: cut) the first time the
/// kernel decodes a gRPC `:path` whose id it has not sent before ([`RPC_SEEN_MAP`]), never
/// per request.
pub const RPC_NAMES_MAP: &str = "RPC_NAMES";
/// Size of [`RPC_NAMES_MAP`], bytes (≈ 450 records between two reads).
pub const RPC_NAMES_BYTES: u32 = 64 * 1024;
/// [`RPC_NAMES_MAP`] record (`PathBuf::len`) bit: the text is an HTTP/1 route
/// (`kite_common::route`), not a gRPC `:path`.
pub const NAME_ROUTE: u32 = 1 << 31;
/// [`RPC_NAMES_MAP`] record bit: the route's text is longer than the record holds (its id is
/// the whole text's).
pub const NAME_CUT: u32 = 1 << 30;
/// Name of the eBPF global saying whether HTTP/1 requests get routes (1) or not (0).
pub const ROUTES_GLOBAL: &str = "ROUTES";
/// Name of the hash map of method ids ([`EndpointKey::rpc`]) whose name was sent.
pub const RPC_SEEN_MAP: &str = "RPC_SEEN";
/// Bound of [`RPC_SEEN_MAP`]: distinct gRPC methods named (as many as the agent keeps).
/// Beyond, new methods are not named ([`Stat::RpcSeenFull`]) and shown by id.
pub const DEFAULT_MAX_RPC_SEEN: u32 = 4_096;
/// Name of the hash map of [`RpcMethodKey`]s: the gRPC methods each endpoint has in
/// [`ENDPOINTS_MAP`] (kept for the life of the loaded programs).
pub const RPC_METHODS_MAP: &str = "RPC_METHODS";
/// Bound of [`RPC_METHODS_MAP`]. When full, new methods are [`RPC_OTHER`]
/// ([`Stat::RpcMethodsFull`]).
pub const DEFAULT_MAX_RPC_METHODS: u32 = 16_384;
/// Name of the hash map of [`RpcEndpointKey`] → distinct methods in [`RPC_METHODS_MAP`].
pub const RPC_ENDPOINTS_MAP: &str = "RPC_ENDPOINTS";
/// Bound of [`RPC_ENDPOINTS_MAP`]: gRPC endpoints counted. When full, new methods of further
/// endpoints are [`RPC_OTHER`] ([`Stat::RpcMethodsFull`]).
pub const DEFAULT_MAX_RPC_ENDPOINTS: u32 = 4_096;
/// Distinct gRPC methods one endpoint (cgroup, direction, address, port) may have; calls of
/// further methods are recorded with [`RPC_OTHER`] ([`Stat::RpcOther`]).
pub const MAX_RPC_PER_ENDPOINT: u32 = 64;

/// Key of [`RPC_ENDPOINTS_MAP`]: a gRPC endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RpcEndpointKey {
    /// As in [`EndpointKey`].
    pub cgroup_id: u64,
    /// As in [`EndpointKey`].
    pub addr: [u8; 16],
    /// As in [`EndpointKey`].
    pub port: u16,
    /// As in [`EndpointKey`].
    pub direction: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 5],
}

/// Key of [`RPC_METHODS_MAP`]: a gRPC method of an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RpcMethodKey {
    /// The endpoint.
    pub ep: RpcEndpointKey,
    /// [`EndpointKey::rpc`].
    pub rpc: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

/// Default bound of [`H2_SOCKETS_MAP`]: HTTP/2 connections tracked at once (7 896 B each,
/// allocated on first use: at most ≈30 MiB). Beyond, [`Stat::H2SocketsMapFull`].
pub const DEFAULT_MAX_H2_SOCKETS: u32 = 4_096;
/// Bound of [`H2_HOLDS_MAP`]: HTTP/2 connections holding received segments beyond a gap at
/// once (`crate::h2::HOLD_BUF` = 4 352 B each, only while a gap is open: at most ≈ 4.3 MiB).
/// Beyond, the segment is not held ([`Stat::H2HoldFull`]).
pub const DEFAULT_MAX_H2_HOLDS: u32 = 1_024;
/// Name of the eBPF global holding the soft bound on [`LIVE_SOCKETS`] (set at load time).
pub const MAX_SOCKETS_GLOBAL: &str = "MAX_SOCKETS";
/// Name of the hash map of [`BudgetKey`] → live endpoint keys (`u64`, added to atomically by
/// the kernel, lowered by user space when it removes endpoint entries).
pub const BUDGETS_MAP: &str = "BUDGETS";
/// Name of the eBPF global holding the per-(cgroup, direction) endpoint budget (set at load
/// time): distinct endpoint keys one cgroup may hold in [`ENDPOINTS_MAP`] in one direction.
pub const ENDPOINT_BUDGET_GLOBAL: &str = "ENDPOINT_BUDGET";
/// Default bound of [`BUDGETS_MAP`]: (cgroup, direction) pairs with endpoints at once. When
/// full, new keys of further pairs are recorded without a budget ([`Stat::BudgetsMapFull`]).
pub const DEFAULT_MAX_BUDGETS: u32 = 8_192;
/// Default endpoint budget as a fraction of the endpoint map: `max_endpoints / 8`, so at least
/// eight (cgroup, direction) pairs must be at their budget before the map can fill.
pub const DEFAULT_BUDGET_DIVISOR: u32 = 8;

/// Default bound of [`ENDPOINTS_MAP`]: distinct (cgroup, direction, endpoint, method, status).
/// Entries are allocated on first use (`BPF_F_NO_PREALLOC`), so memory follows real use:
/// `size_of::<EndpointStats>()` (≈1.8 KiB) per entry per possible CPU.
pub const DEFAULT_MAX_ENDPOINTS: u32 = 16_384;
/// Default bound of [`SOCKETS_MAP`]: HTTP connections tracked at once (≈400 B each, allocated
/// on first use). Socket storage has no `max_entries`: the programs keep the bound with their
/// live count ([`LIVE_SOCKETS`]).
pub const DEFAULT_MAX_SOCKETS: u32 = 65_536;

/// Default bound of [`PENDING_MAP`]: connections waiting for their socket at once (their
/// handshake completed, or their data reached a listener; a socket appears within a round trip).
pub const DEFAULT_MAX_PENDING: u32 = 4_096;

/// Key of [`PENDING_MAP`]: the connection's addresses as seen from the server (IPv6, or IPv4 as
/// IPv4-mapped IPv6), ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PendingKey {
    /// The server's (local) address.
    pub local: [u8; 16],
    /// The client's (remote) address.
    pub remote: [u8; 16],
    /// The server's port.
    pub local_port: u16,
    /// The client's port.
    pub remote_port: u16,
}

/// Which side of the connection the monitored cgroup is on.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The cgroup's process is the server: requests come in, responses go out. The endpoint is
    /// the local (listening) address.
    Inbound = 0,
    /// The cgroup's process is the client: requests go out, responses come in. The endpoint is
    /// the remote address.
    Outbound = 1,
}

impl Direction {
    /// Decodes the byte stored in [`EndpointKey::direction`].
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Inbound),
            1 => Some(Self::Outbound),
            _ => None,
        }
    }

    /// Short lowercase name: `in` or `out`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "in",
            Self::Outbound => "out",
        }
    }
}

/// HTTP request method, as stored in [`EndpointKey::method`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// Any method not listed below (the OpenTelemetry `_OTHER`).
    Other = 0,
    /// `GET`
    Get = 1,
    /// `HEAD`
    Head = 2,
    /// `POST`
    Post = 3,
    /// `PUT`
    Put = 4,
    /// `DELETE`
    Delete = 5,
    /// `CONNECT`
    Connect = 6,
    /// `OPTIONS`
    Options = 7,
    /// `TRACE`
    Trace = 8,
    /// `PATCH`
    Patch = 9,
}

impl Method {
    /// Decodes the byte stored in [`EndpointKey::method`]; unknown values are [`Method::Other`].
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Get,
            2 => Self::Head,
            3 => Self::Post,
            4 => Self::Put,
            5 => Self::Delete,
            6 => Self::Connect,
            7 => Self::Options,
            8 => Self::Trace,
            9 => Self::Patch,
            _ => Self::Other,
        }
    }

    /// The method token (`_OTHER` for [`Method::Other`], as OpenTelemetry spells it).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Other => "_OTHER",
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
        }
    }
}

/// HTTP version of an exchange, as stored in [`EndpointKey::version`]: `10 · major + minor`,
/// so a raw key reads naturally (`0x0b` is 1.1).
///
/// HTTP/1.x: the version of the response's status line (`HTTP/1.1 200`), which the kernel
/// already reads at a fixed offset to recognise a response; see DESIGN.md (Agent) for why the
/// response's and not the request's.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// Not known (no kernel program writes it; a key from another build).
    Unknown = 0,
    /// `HTTP/1.0`
    Http10 = 10,
    /// `HTTP/1.1`
    Http11 = 11,
    /// HTTP/2 (not parsed yet).
    Http2 = 20,
}

impl Version {
    /// Decodes the byte stored in [`EndpointKey::version`]; unknown values are
    /// [`Version::Unknown`].
    pub const fn from_u8(v: u8) -> Self {
        match v {
            10 => Self::Http10,
            11 => Self::Http11,
            20 => Self::Http2,
            _ => Self::Unknown,
        }
    }

    /// The version as OpenTelemetry's `network.protocol.version` spells it (`1.0`, `1.1`,
    /// `2`); `None` when unknown.
    pub const fn as_str(self) -> Option<&'static str> {
        match self {
            Self::Unknown => None,
            Self::Http10 => Some("1.0"),
            Self::Http11 => Some("1.1"),
            Self::Http2 => Some("2"),
        }
    }
}

/// Key of [`BUDGETS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetKey {
    /// cgroup v2 id, as in [`EndpointKey::cgroup_id`].
    pub cgroup_id: u64,
    /// [`Direction`] as `u8`.
    pub direction: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 7],
}

/// Key of [`ENDPOINTS_MAP`]: one histogram per (cgroup, direction, endpoint, method, status).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// cgroup v2 id (inode number) of the socket's cgroup: the cgroup a program is attached to
    /// or one of its descendants.
    pub cgroup_id: u64,
    /// Endpoint address: IPv6, or IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// Endpoint port, host byte order.
    pub port: u16,
    /// HTTP status code of the response (100–599).
    pub status: u16,
    /// [`Direction`] as `u8`.
    pub direction: u8,
    /// [`Method`] as `u8`.
    pub method: u8,
    /// [`Version`] as `u8`: the HTTP version of the response's status line.
    pub version: u8,
    /// [`Protocol`] as `u8`: plain HTTP, or a gRPC call (then `status` is the call's
    /// `grpc-status` code and `rpc` its method).
    pub protocol: u8,
    /// gRPC method id: FNV-1a (32 bit) of the call's `:path` (`/package.Service/Method`),
    /// [`RPC_NONE`] for non-gRPC exchanges, [`RPC_UNKNOWN`] when the path could not be known,
    /// [`RPC_OTHER`] beyond the per-endpoint bound of methods; see [`rpc_id`].
    pub rpc: u32,
    /// Transport: [`TRANSPORT_TCP`] (measured from TCP payload) or [`TRANSPORT_TLS`]
    /// (measured from TLS plaintext, issue 14): the `url_scheme` label.
    pub transport: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}

/// [`EndpointKey::protocol`] values.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// HTTP/1.x or HTTP/2 that is not gRPC.
    Http = 0,
    /// A gRPC call (HTTP/2 with `content-type: application/grpc`).
    Grpc = 1,
}

impl Protocol {
    /// Decodes [`EndpointKey::protocol`]; unknown values are [`Protocol::Http`].
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Grpc,
            _ => Self::Http,
        }
    }
}

/// [`EndpointKey::rpc`] of an exchange that is not a gRPC call.
pub const RPC_NONE: u32 = 0;
/// [`EndpointKey::rpc`] of a gRPC call whose `:path` could not be known (HPACK state lost).
pub const RPC_UNKNOWN: u32 = 1;
/// [`EndpointKey::rpc`] of a gRPC call beyond its endpoint's bound of distinct methods.
pub const RPC_OTHER: u32 = 2;
/// [`EndpointKey::status`] of a gRPC call whose `grpc-status` could not be known.
pub const GRPC_STATUS_UNKNOWN: u16 = 0xffff;
/// gRPC status codes' names by number (grpc/grpc `doc/statuscodes.md`), as OpenTelemetry's
/// `rpc.response.status_code` spells them: the one table for the agent, its tests and clients.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
/// [`EndpointKey::transport`]: plain TCP.
pub const TRANSPORT_TCP: u8 = 0;
/// [`EndpointKey::transport`]: TLS, measured from the plaintext.
pub const TRANSPORT_TLS: u8 = 1;

/// The [`EndpointKey::rpc`] id of a gRPC method path: FNV-1a 32 of its bytes, moved out of
/// the reserved ids (`0..=2`) by setting the top bit.
pub const fn rpc_id(fnv1a32: u32) -> u32 {
    if fnv1a32 <= RPC_OTHER {
        fnv1a32 | 0x8000_0000
    } else {
        fnv1a32
    }
}

/// Value of [`ENDPOINTS_MAP`] (one per CPU): cumulative counters since the entry was created.
///
/// `buckets` are `u32` to halve the map's memory; they wrap after 2^32 requests in one bucket on
/// one CPU, which user space handles by reading them far more often than that (deltas are taken
/// with wrapping arithmetic).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EndpointStats {
    /// Completed requests.
    pub count: u64,
    /// Sum of their latencies, nanoseconds.
    pub latency_sum_ns: u64,
    /// Request bytes (headers and body, as TCP payload, retransmissions excluded).
    pub req_bytes: u64,
    /// Response bytes (headers and body).
    pub resp_bytes: u64,
    /// Latency histogram, see [`crate::hist`].
    pub buckets: [u32; HIST_SLOTS],
}

impl EndpointKey {
    /// Whether this is the overflow endpoint of its (cgroup, direction): requests beyond the
    /// cgroup's endpoint budget, or whose own entry could not be allocated, recorded with
    /// address `::` and port 0 (no real endpoint has them) and their real method and status.
    pub const fn is_overflow(&self) -> bool {
        self.port == 0 && u128::from_ne_bytes(self.addr) == 0
    }

    /// The [`BUDGETS_MAP`] key of this endpoint.
    pub const fn budget_key(&self) -> BudgetKey {
        BudgetKey {
            cgroup_id: self.cgroup_id,
            direction: self.direction,
            _pad: [0; 7],
        }
    }
}

impl EndpointStats {
    /// All zero.
    pub const ZERO: Self = Self {
        count: 0,
        latency_sum_ns: 0,
        req_bytes: 0,
        resp_bytes: 0,
        buckets: [0; HIST_SLOTS],
    };
}

/// Self-metric counters in [`STATS_MAP`] (per CPU, summed by user space).
///
/// The agent exports them in Prometheus families by what they count (packets, segments,
/// connections, requests, stream events: `kite_ebpf_*_total`), each one in exactly one family
/// (`EBPF_FAMILIES` in the agent's `metrics::self_metrics`, checked by a test); a new counter
/// is appended here and placed there. [`Stat::name`] is its name in gRPC's `Info`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Packets the `cgroup_skb` programs ran on, except those of sockets judged not HTTP
    /// (they return before anything is counted: see `kite_ingress`).
    Packets = 0,
    /// Packets with TCP payload on a tracked HTTP connection.
    PayloadPackets,
    /// HTTP connections whose tracking started on their socket (also those whose state waited
    /// for it, see [`Stat::PendingClaimed`]).
    ConnsOpened,
    /// Tracked connections whose state ended at socket release.
    ConnsClosed,
    /// A connection could not be tracked: [`DEFAULT_MAX_SOCKETS`] (or the configured bound)
    /// connections were tracked already, or the kernel could not allocate the state.
    SocketsMapFull,
    /// A completed request's new endpoint key could not be inserted: [`ENDPOINTS_MAP`] was
    /// full. The request is recorded in its overflow endpoint unless [`Stat::OverflowMapFull`].
    EndpointsMapFull,
    /// Requests completed and recorded.
    Requests,
    /// Requests beyond the pipelining queue depth; not recorded.
    PipelineOverflow,
    /// Responses with no request waiting for them (e.g. tracking began mid-connection).
    OrphanResponses,
    /// Requests still unanswered when their socket was released.
    Unanswered,
    /// The byte stream stopped looking like HTTP/1.x where a message had to start; the stream
    /// waits for a segment that starts with a message.
    SyncLost,
    /// Bytes were missing (a sequence gap); the stream resynchronises as for `SyncLost`.
    SeqGaps,
    /// Segments (or parts) seen twice, skipped.
    Retransmits,
    /// A segment needed more parser steps than the per-packet budget; the stream resynchronises.
    StepBudget,
    /// `bpf_skb_load_bytes` failed.
    LoadErrors,
    /// Connections that switched protocol (101, CONNECT tunnel) and are no longer parsed.
    Upgrades,
    /// A message boundary fell in bytes Kite never parsed (lost and not resent while Kite
    /// watched, or seen ahead of a gap that filled later): the stream waits for the next
    /// boundary it can prove, and requests that started in those bytes are not counted.
    UnseenBoundary,
    /// Segments that arrived ahead of a gap (reordered or after a loss); their bytes are
    /// parsed when they can be placed, never as a message start of their own.
    OutOfOrder,
    /// Responses whose framing could not be known (their request was beyond the queue and
    /// may have been a HEAD): their stream waits for the next boundary it can prove.
    UnframedResponses,
    /// Connections given up as not HTTP/1.x (their first message was not one).
    NotHttp,
    /// Data segments that arrived on a listening socket (deferred accept, or a lost final
    /// handshake ACK); their state waits, keyed by address, for the connection's socket.
    ListenerData,
    /// State parked for a connection whose socket did not exist yet was taken over by it.
    PendingClaimed,
    /// State could not be parked for a connection whose socket did not exist yet (the
    /// pending map was full); its first request is not counted.
    PendingFull,
    /// Tracked connections whose state was freed when their socket closed without a
    /// `sock_release` (children never accepted, sockets orphaned by the kernel).
    ConnsReaped,
    /// Requests of a new endpoint key beyond its (cgroup, direction)'s budget, recorded in
    /// that pair's overflow endpoint ([`EndpointKey::is_overflow`], in [`OVERFLOW_MAP`]).
    EndpointBudgetOverflow,
    /// Requests whose new endpoint key could not be allocated though the map was not full
    /// (the kernel's per-CPU allocation cache ran dry in a burst, even after a retry);
    /// recorded in the overflow endpoint unless [`Stat::OverflowMapFull`].
    EndpointAllocFailed,
    /// Overflow requests ([`Stat::EndpointBudgetOverflow`], [`Stat::EndpointAllocFailed`],
    /// [`Stat::EndpointsMapFull`]) not recorded: [`OVERFLOW_MAP`] was full.
    OverflowMapFull,
    /// New endpoint keys recorded without a budget: [`BUDGETS_MAP`] was full.
    BudgetsMapFull,
    // HTTP/2: `H2Streams..=H2HoldFull` are `crate::h2::H2Stat` in its order (see
    // [`Stat::from_h2`]).
    /// HTTP/2 streams recorded (also counted in [`Stat::Requests`]).
    H2Streams,
    /// An HTTP/2 stream found no free slot in its connection's table: not measured.
    H2StreamTableFull,
    /// RST_STREAM before a response started: not recorded.
    H2ResetUnanswered,
    /// Streams above a GOAWAY's last stream id: never processed, not recorded.
    H2GoawayUnprocessed,
    /// HTTP/2 streams open without a response when their connection went away.
    H2Unanswered,
    /// HTTP/2 response HEADERS on a stream Kite has no request for.
    H2OrphanResponses,
    /// A direction's HPACK insertion count became unknowable: dynamic references are unknown.
    H2HpackDesync,
    /// A header field referenced a dynamic entry Kite could not resolve (its value unknown).
    H2UnknownRefs,
    /// HPACK insertions that matter evicted from Kite's small per-direction cache.
    H2CacheEvictions,
    /// A direction's bytes stopped being HTTP/2 framing: no longer followed.
    H2Lost,
    /// Bytes beyond a gap that framing could not place and that were never seen again.
    H2UnplacedAhead,
    /// HTTP/2 segments (or parts) seen twice, skipped.
    H2Retransmits,
    /// Gaps inside HTTP/2 payloads skipped by arithmetic.
    H2SeqGaps,
    /// HTTP/2 segments beyond a gap that waited.
    H2OutOfOrder,
    /// An HTTP/2 segment needed more than `h2::H2_MAX_STEPS` parser steps: direction lost.
    H2StepBudget,
    /// Payload loads that failed on an HTTP/2 connection.
    H2LoadErrors,
    /// An HTTP/2 direction lost to a gap was taken up again at a segment of frame shape.
    H2Resyncs,
    /// HTTP/2 streams open while a direction was lost or resynchronised: not recorded.
    H2ResyncDropped,
    /// An HTTP/2 direction whose first bytes (the peer's connection preface) went by before
    /// its connection's state existed, taken up at its first segment seen with nothing lost.
    H2LateStart,
    /// A received HTTP/2 segment beyond a gap (its frame state in the missing bytes) was held
    /// and parsed once the gap was.
    H2Held,
    /// A received HTTP/2 segment beyond a gap could not be held (outside the hold window, too
    /// many ranges, or [`DEFAULT_MAX_H2_HOLDS`] buffers in use): it waits unparsed, as before.
    H2HoldFull,
    /// HTTP/2 connections whose tracking started (client preface seen, or joined midway).
    H2ConnsOpened,
    /// Of [`Stat::H2ConnsOpened`], connections joined midway: first seen after their start
    /// (an agent started under a connection pool), at a segment of frame shape whose first
    /// HEADERS tells the direction of requests; their HPACK references before the join are
    /// unknown.
    H2ConnsJoined,
    /// Of [`Stat::H2ConnsOpened`], connections whose client preface Kite did not see first: a
    /// segment came in ahead of it (a chain of frames of valid shape; held until the preface
    /// arrived), or it reached the listener ([`Stat::H2PrefaceParked`]). Followed from the
    /// preface.
    H2PrefaceAhead,
    /// HTTP/2 client prefaces that reached a listener (the handshake's last ACK lost: the
    /// connection's socket did not exist yet), kept until the socket's first packet, where
    /// the connection is followed from them (also counted in [`Stat::H2PrefaceAhead`]).
    H2PrefaceParked,
    /// HTTP/2 connection states ended at socket release or close.
    H2ConnsClosed,
    /// An HTTP/2 connection could not be tracked: [`DEFAULT_MAX_H2_SOCKETS`] (or the
    /// configured bound) were tracked already, or the state could not be allocated.
    H2SocketsMapFull,
    /// gRPC method names sent to user space ([`RPC_NAMES_MAP`]).
    RpcNames,
    /// A new gRPC method was not named: [`RPC_SEEN_MAP`] was full.
    RpcSeenFull,
    /// A gRPC method name was not sent: the ring buffer was full (sent at its next sighting).
    RpcNamesDropped,
    /// gRPC calls recorded as [`RPC_OTHER`]: their endpoint had [`MAX_RPC_PER_ENDPOINT`]
    /// methods already.
    RpcOther,
    /// gRPC calls recorded as [`RPC_OTHER`]: [`RPC_METHODS_MAP`] or [`RPC_ENDPOINTS_MAP`]
    /// was full.
    RpcMethodsFull,
    /// TLS connections recognised by their first bytes (a ClientHello record): judged not
    /// HTTP on the packet side, measured from their plaintext (issue 14).
    TlsConns,
    /// TLS connections whose `SSL*` was tied to its socket (their plaintext is parsed).
    TlsBound,
    /// A TLS connection could not be tracked: its state map was full.
    TlsConnsFull,
    /// SSL reads and writes with plaintext on an `SSL*` Kite could not tie to a recognised
    /// socket (its handshake started before Kite attached, or no I/O in its calls yet): not
    /// measured.
    TlsUnbound,
    /// TLS connection states freed (`SSL_free`, or the socket reached `TCP_CLOSE`).
    TlsClosed,
}

/// Number of [`Stat`] counters (size of [`STATS_MAP`]).
pub const STAT_COUNT: u32 = Stat::TlsClosed as u32 + 1;

impl Stat {
    /// Every counter, in index order.
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::Packets,
        Stat::PayloadPackets,
        Stat::ConnsOpened,
        Stat::ConnsClosed,
        Stat::SocketsMapFull,
        Stat::EndpointsMapFull,
        Stat::Requests,
        Stat::PipelineOverflow,
        Stat::OrphanResponses,
        Stat::Unanswered,
        Stat::SyncLost,
        Stat::SeqGaps,
        Stat::Retransmits,
        Stat::StepBudget,
        Stat::LoadErrors,
        Stat::Upgrades,
        Stat::UnseenBoundary,
        Stat::OutOfOrder,
        Stat::UnframedResponses,
        Stat::NotHttp,
        Stat::ListenerData,
        Stat::PendingClaimed,
        Stat::PendingFull,
        Stat::ConnsReaped,
        Stat::EndpointBudgetOverflow,
        Stat::EndpointAllocFailed,
        Stat::OverflowMapFull,
        Stat::BudgetsMapFull,
        Stat::H2Streams,
        Stat::H2StreamTableFull,
        Stat::H2ResetUnanswered,
        Stat::H2GoawayUnprocessed,
        Stat::H2Unanswered,
        Stat::H2OrphanResponses,
        Stat::H2HpackDesync,
        Stat::H2UnknownRefs,
        Stat::H2CacheEvictions,
        Stat::H2Lost,
        Stat::H2UnplacedAhead,
        Stat::H2Retransmits,
        Stat::H2SeqGaps,
        Stat::H2OutOfOrder,
        Stat::H2StepBudget,
        Stat::H2LoadErrors,
        Stat::H2Resyncs,
        Stat::H2ResyncDropped,
        Stat::H2LateStart,
        Stat::H2Held,
        Stat::H2HoldFull,
        Stat::H2ConnsOpened,
        Stat::H2ConnsJoined,
        Stat::H2PrefaceAhead,
        Stat::H2PrefaceParked,
        Stat::H2ConnsClosed,
        Stat::H2SocketsMapFull,
        Stat::RpcNames,
        Stat::RpcSeenFull,
        Stat::RpcNamesDropped,
        Stat::RpcOther,
        Stat::RpcMethodsFull,
        Stat::TlsConns,
        Stat::TlsBound,
        Stat::TlsConnsFull,
        Stat::TlsUnbound,
        Stat::TlsClosed,
    ];

    /// The [`STATS_MAP`] index of an HTTP/2 machine counter.
    pub const fn from_h2(s: crate::h2::H2Stat) -> u32 {
        Stat::H2Streams as u32 + s as u32
    }

    /// snake_case name (gRPC `Info` counters, prefixed `ebpf_`).
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Packets => "packets",
            Stat::PayloadPackets => "payload_packets",
            Stat::ConnsOpened => "conns_opened",
            Stat::ConnsClosed => "conns_closed",
            Stat::SocketsMapFull => "sockets_map_full",
            Stat::EndpointsMapFull => "endpoints_map_full",
            Stat::Requests => "requests",
            Stat::PipelineOverflow => "pipeline_overflow",
            Stat::OrphanResponses => "orphan_responses",
            Stat::Unanswered => "unanswered",
            Stat::SyncLost => "sync_lost",
            Stat::SeqGaps => "seq_gaps",
            Stat::Retransmits => "retransmits",
            Stat::StepBudget => "step_budget",
            Stat::LoadErrors => "load_errors",
            Stat::Upgrades => "upgrades",
            Stat::UnseenBoundary => "unseen_boundary",
            Stat::OutOfOrder => "out_of_order",
            Stat::UnframedResponses => "unframed_responses",
            Stat::NotHttp => "not_http",
            Stat::ListenerData => "listener_data",
            Stat::PendingClaimed => "pending_claimed",
            Stat::PendingFull => "pending_full",
            Stat::ConnsReaped => "conns_reaped",
            Stat::EndpointBudgetOverflow => "endpoint_budget_overflow",
            Stat::EndpointAllocFailed => "endpoint_alloc_failed",
            Stat::OverflowMapFull => "overflow_map_full",
            Stat::BudgetsMapFull => "budgets_map_full",
            Stat::H2Streams => "h2_streams",
            Stat::H2StreamTableFull => "h2_stream_table_full",
            Stat::H2ResetUnanswered => "h2_reset_unanswered",
            Stat::H2GoawayUnprocessed => "h2_goaway_unprocessed",
            Stat::H2Unanswered => "h2_unanswered",
            Stat::H2OrphanResponses => "h2_orphan_responses",
            Stat::H2HpackDesync => "h2_hpack_desync",
            Stat::H2UnknownRefs => "h2_unknown_refs",
            Stat::H2CacheEvictions => "h2_cache_evictions",
            Stat::H2Lost => "h2_lost",
            Stat::H2UnplacedAhead => "h2_unplaced_ahead",
            Stat::H2Retransmits => "h2_retransmits",
            Stat::H2SeqGaps => "h2_seq_gaps",
            Stat::H2OutOfOrder => "h2_out_of_order",
            Stat::H2StepBudget => "h2_step_budget",
            Stat::H2LoadErrors => "h2_load_errors",
            Stat::H2Resyncs => "h2_resyncs",
            Stat::H2ResyncDropped => "h2_resync_dropped",
            Stat::H2LateStart => "h2_late_start",
            Stat::H2Held => "h2_held",
            Stat::H2HoldFull => "h2_hold_full",
            Stat::H2ConnsOpened => "h2_conns_opened",
            Stat::H2ConnsJoined => "h2_conns_joined",
            Stat::H2PrefaceAhead => "h2_preface_ahead",
            Stat::H2PrefaceParked => "h2_preface_parked",
            Stat::H2ConnsClosed => "h2_conns_closed",
            Stat::H2SocketsMapFull => "h2_sockets_map_full",
            Stat::RpcNames => "rpc_names",
            Stat::RpcSeenFull => "rpc_seen_full",
            Stat::RpcNamesDropped => "rpc_names_dropped",
            Stat::RpcOther => "rpc_other",
            Stat::RpcMethodsFull => "rpc_methods_full",
            Stat::TlsConns => "tls_conns",
            Stat::TlsBound => "tls_bound",
            Stat::TlsConnsFull => "tls_conns_full",
            Stat::TlsUnbound => "tls_unbound",
            Stat::TlsClosed => "tls_closed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data without padding or pointers; any bit pattern is valid.
    unsafe impl aya::Pod for super::EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::http::Conn {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::h2::H2Conn {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BudgetKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RpcEndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RpcMethodKey {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;
    use crate::http::Conn;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<EndpointKey>(), 40);
        assert_eq!(size_of::<PendingKey>(), 36);
        assert_eq!(size_of::<BudgetKey>(), 16);
        assert_eq!(size_of::<RpcEndpointKey>(), 32);
        assert_eq!(size_of::<RpcMethodKey>(), 40);
        assert_eq!(
            size_of::<crate::h2::hpack::PathBuf>(),
            8 + crate::h2::hpack::PATH_BUF
        );
        assert_eq!(size_of::<EndpointStats>(), 32 + 4 * HIST_SLOTS);
        assert_eq!(size_of::<EndpointStats>() % 8, 0);
        assert_eq!(align_of::<Conn>(), 8);
        assert_eq!(size_of::<Conn>() % 8, 0);
    }

    #[test]
    fn enums_round_trip() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
        // The HTTP/2 machine's counters map onto `Stat` in their order.
        assert_eq!(crate::h2::H2_STAT_COUNT, 21);
        assert_eq!(
            Stat::from_h2(crate::h2::H2Stat::Streams),
            Stat::H2Streams as u32
        );
        assert_eq!(
            Stat::from_h2(crate::h2::H2Stat::LoadErrors),
            Stat::H2LoadErrors as u32
        );
        assert_eq!(
            Stat::from_h2(crate::h2::H2Stat::ResyncDropped),
            Stat::H2ResyncDropped as u32
        );
        assert_eq!(Stat::from_h2(crate::h2::H2Stat::Lost), Stat::H2Lost as u32);
        assert_eq!(
            Stat::from_h2(crate::h2::H2Stat::LateStart),
            Stat::H2LateStart as u32
        );
        assert_eq!(
            Stat::from_h2(crate::h2::H2Stat::HoldFull),
            Stat::H2HoldFull as u32
        );
        for v in 0..=9u8 {
            assert_eq!(Method::from_u8(v) as u8, v);
        }
        assert_eq!(Method::from_u8(200), Method::Other);
        assert_eq!(Direction::from_u8(1), Some(Direction::Outbound));
        assert_eq!(Direction::from_u8(2), None);
        for v in [
            Version::Unknown,
            Version::Http10,
            Version::Http11,
            Version::Http2,
        ] {
            assert_eq!(Version::from_u8(v as u8), v);
        }
        assert_eq!(Version::from_u8(12), Version::Unknown);
        assert_eq!(Version::Http11.as_str(), Some("1.1"));
    }
}
