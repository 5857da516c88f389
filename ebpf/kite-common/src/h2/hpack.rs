//! The HPACK subset (RFC 7541) Kite needs, without a header table.
//!
//! Per direction (one encoder), Kite keeps the *number* of dynamic-table insertions: index
//! `62 + k` names the k-th newest insertion (insertion number `count - 1 - k`), and eviction
//! never changes which insertion a live index names, so nothing but the count is needed to
//! resolve a reference — plus the values of the few insertions that matter, in a small cache
//! ([`CACHE`] entries, least recently used replaced): `:method`, `:path` (its FNV-1a hash),
//! `:status`, `content-type` (gRPC or not) and `grpc-status`. Every other field is skipped by
//! its length (no byte looked at); strings of the fields that matter are Huffman-decoded one
//! bit at a time ([`super::huffman`]) and compared, never stored.
//!
//! What cannot be known is said so, never guessed:
//! * a reference to an insertion that is not cached is irrelevant only if every insertion that
//!   mattered from that one on is still cached (`lost_below`); otherwise the field is unknown;
//! * an entry larger than the table is not inserted (RFC 7541 §4.4). Entry sizes are decoded
//!   lengths, which Kite bounds instead of decoding skipped strings (a Huffman string of `L`
//!   bytes holds `(8L - 7) / 30` to `8L / 5` symbols); when the bounds straddle the table size
//!   the count of what came before is unknowable (`desync`), as after a header block with bytes
//!   never seen: the newest entries, inserted since, still resolve (`floor`).

use super::huffman::Bits;
use super::{
    GRPC_NO, GRPC_STATUS_NONE, GRPC_STATUS_UNKNOWN, GRPC_UNKNOWN, GRPC_YES, H2Sink, H2Stat,
    METHOD_UNKNOWN, PATH_UNKNOWN, STATUS_UNKNOWN, huffman::Bit,
};
use crate::maps::Method;

/// Cached insertions per direction.
pub const CACHE: usize = 32;
/// Bytes of a decoded `:path` literal kept for user space (gRPC method names, sent once per
/// new method): `/package.Service/Method` is tens of bytes; longer paths are cut here and
/// marked ([`PathBuf`]'s length is the whole decoded length).
pub const PATH_BUF: usize = 128;

/// The decoded bytes of the last `:path` literal of a header block. Also the record the
/// kernel sends user space for a new gRPC method (`RPC_NAMES`, see `maps::RPC_NAMES_MAP`),
/// as it is: 8 + [`PATH_BUF`] bytes, little-endian.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct PathBuf {
    /// [`path_id`] of the decoded path (of all of it, also when cut).
    pub id: u32,
    /// Decoded length (may exceed [`PATH_BUF`]: then only the first bytes are here).
    pub len: u32,
    /// The first `min(len, PATH_BUF)` bytes.
    pub bytes: [u8; PATH_BUF],
}

impl Default for PathBuf {
    fn default() -> Self {
        Self {
            id: 0,
            len: 0,
            bytes: [0; PATH_BUF],
        }
    }
}
/// The table size every encoder starts with (SETTINGS_HEADER_TABLE_SIZE's initial value).
pub const DEFAULT_TABLE_SIZE: u32 = 4096;

// Parser states.
const HP_OP: u8 = 0;
const HP_INT: u8 = 1;
const HP_STRHDR: u8 = 2;
const HP_STR: u8 = 3;
/// The rest of the block is skipped (bytes never seen, or undecodable).
const HP_DAMAGED: u8 = 4;

// What an integer is.
const IK_INDEX: u8 = 0;
const IK_NAME: u8 = 1;
const IK_SIZE: u8 = 2;
const IK_STRLEN: u8 = 3;

// Kinds of names (and of cached entries).
const NK_NONE: u8 = 0;
const NK_METHOD: u8 = 1;
const NK_PATH: u8 = 2;
const NK_STATUS: u8 = 3;
const NK_CTYPE: u8 = 4;
const NK_GRPC_STATUS: u8 = 5;
/// A name Kite could not resolve: it may be one that matters.
const NK_UNKNOWN: u8 = 6;

// String targets.
const T_SKIP: u8 = 0;
const T_NAME: u8 = 1;
const T_METHOD: u8 = 2;
const T_DIGITS: u8 = 3;
const T_CTYPE: u8 = 4;
const T_PATH: u8 = 5;

// Results found in a block.
const R_STATUS: u8 = 1;
const R_GS: u8 = 2;
const R_METHOD: u8 = 4;
const R_PATH: u8 = 8;
const R_CT: u8 = 16;

/// Names that matter, as [`NK_METHOD`]..=[`NK_GRPC_STATUS`] (index + 1).
const NAMES: [[u8; 16]; 5] = [
    *b":method\0\0\0\0\0\0\0\0\0",
    *b":path\0\0\0\0\0\0\0\0\0\0\0",
    *b":status\0\0\0\0\0\0\0\0\0",
    *b"content-type\0\0\0\0",
    *b"grpc-status\0\0\0\0\0",
];
const NAME_LENS: [u8; 5] = [7, 5, 7, 12, 11];

/// Method tokens and their [`Method`] values.
const METHODS: [[u8; 8]; 9] = [
    *b"GET\0\0\0\0\0",
    *b"HEAD\0\0\0\0",
    *b"POST\0\0\0\0",
    *b"PUT\0\0\0\0\0",
    *b"DELETE\0\0",
    *b"CONNECT\0",
    *b"OPTIONS\0",
    *b"TRACE\0\0\0",
    *b"PATCH\0\0\0",
];
const METHOD_LENS: [u8; 9] = [3, 4, 4, 3, 6, 7, 7, 5, 5];
const METHOD_VALUES: [u8; 9] = [
    Method::Get as u8,
    Method::Head as u8,
    Method::Post as u8,
    Method::Put as u8,
    Method::Delete as u8,
    Method::Connect as u8,
    Method::Options as u8,
    Method::Trace as u8,
    Method::Patch as u8,
];

const GRPC_CT: &[u8; 16] = b"application/grpc";

/// FNV-1a offset basis.
pub(crate) const FNV_BASIS: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// One byte into an FNV-1a hash.
#[inline(always)]
pub(crate) const fn fnv_step(h: u32, b: u8) -> u32 {
    (h ^ b as u32).wrapping_mul(FNV_PRIME)
}

/// A finished FNV-1a hash as a path id: never [`PATH_UNKNOWN`].
#[inline(always)]
pub(crate) const fn fnv_id(h: u32) -> u32 {
    if h == PATH_UNKNOWN { 1 } else { h }
}

/// FNV-1a of a path, as [`super::H2Done::path_id`] gives it (never [`PATH_UNKNOWN`]).
pub const fn path_id(path: &[u8]) -> u32 {
    let mut h = FNV_BASIS;
    let mut i = 0;
    while i < path.len() {
        h = fnv_step(h, path[i]);
        i += 1;
    }
    fnv_id(h)
}

/// Name lengths of the static table (RFC 7541 Appendix A), index 1..=61 (64 entries: indexed
/// with a mask, which the verifier can bound).
const STATIC_NAME_LENS: [u8; 64] = {
    const N: [&str; 62] = [
        "",
        ":authority",
        ":method",
        ":method",
        ":path",
        ":path",
        ":scheme",
        ":scheme",
        ":status",
        ":status",
        ":status",
        ":status",
        ":status",
        ":status",
        ":status",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "accept",
        "access-control-allow-origin",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "cookie",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "link",
        "location",
        "max-forwards",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "refresh",
        "retry-after",
        "server",
        "set-cookie",
        "strict-transport-security",
        "transfer-encoding",
        "user-agent",
        "vary",
        "via",
        "www-authenticate",
    ];
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 62 {
        t[i] = N[i].len() as u8;
        i += 1;
    }
    t
};

/// The `:status` values of static entries 8..=14 (and a pad for the mask).
const STATIC_STATUS: [u16; 8] = [200, 204, 206, 304, 400, 404, 500, 0];

/// A cached insertion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheEntry {
    /// Insertion number (0: the direction's first insertion).
    pub ins: u32,
    /// Value, as the block results keep it for its kind.
    pub val: u32,
    /// Insertion count when it was last used (LRU).
    pub last: u32,
    /// The previous insertion of the same field (valid with `has_prev`): an encoder inserts a
    /// field again once its old entry was evicted, and either number names the same value.
    pub prev: u32,
    /// [`HpackDir::cum_lo`] before its insertion: the insertions from it on take at least
    /// `cum_lo - cum_at` bytes, so beyond the table size it is surely evicted.
    pub cum_at: u32,
    /// The same for `prev`.
    pub prev_cum: u32,
    /// Bounds of its name's decoded length.
    pub name_lo: u16,
    /// Upper bound.
    pub name_hi: u16,
    /// `NK_*` (0: free).
    pub kind: u8,
    /// `prev` is valid.
    pub has_prev: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// HPACK state of one direction (one encoder).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HpackDir {
    /// Insertions so far.
    pub ins: u32,
    /// The encoder's table size (from size updates).
    pub max_size: u32,
    /// Largest name length bound of any insertion (bounds uncached names).
    pub max_name: u32,
    /// Uncached insertions numbered below this may have mattered.
    pub lost_below: u32,
    /// Insertions numbered from here on are placed exactly (with `desync`): after Kite lost
    /// count (a damaged block, an ambiguous size, a connection joined midway) the newest
    /// `ins - floor` entries are still the ones it saw, so references to them resolve and
    /// only older ones are unknown — the count heals as the encoder inserts.
    pub floor: u32,
    /// Sum of the lower bounds of every insertion's size (wrapping): what the table must at
    /// least hold of the insertions since any point.
    pub cum_lo: u32,
    /// Whether each of the last 128 insertions mattered (bit `n & 127`). An entry takes at
    /// least 32 bytes, so a 4 KiB table holds at most 128: any reference an encoder can make
    /// into such a table is classified exactly (irrelevant, cached, or mattered and unknown).
    pub mattered: [u64; 2],
    /// Integer being read.
    pub int_val: u32,
    /// String bytes left.
    pub str_left: u32,
    /// String length (bytes on the wire).
    pub str_len: u32,
    /// Accumulator of the string target (digits, hash).
    pub s_acc: u32,
    /// Path hash found in the block.
    pub r_path: u32,
    /// Bounds of the current field's name length.
    pub name_lo: u32,
    /// Upper bound.
    pub name_hi: u32,
    /// Status found in the block.
    pub r_status: u16,
    /// Candidate mask of the string target.
    pub s_mask: u16,
    /// Symbols of the string so far.
    pub s_n: u16,
    /// Parser state `HP_*`.
    pub st: u8,
    /// `IK_*`.
    pub int_kind: u8,
    /// Shift of the next integer continuation byte.
    pub int_shift: u8,
    /// The field is inserted (literal with incremental indexing).
    pub f_insert: u8,
    /// `NK_*` of the field's name.
    pub f_kind: u8,
    /// The string being read is a literal name.
    pub f_name_lit: u8,
    /// The string is Huffman-coded.
    pub s_huff: u8,
    /// `T_*`.
    pub s_target: u8,
    /// The string could not be decoded.
    pub s_bad: u8,
    /// The count is unknowable (everything dynamic is unknown).
    pub desync: u8,
    /// `R_*` found in the block.
    pub r_found: u8,
    /// grpc-status found.
    pub r_gs: u8,
    /// Method found.
    pub r_method: u8,
    /// content-type found (`GRPC_*`).
    pub r_ct: u8,
    /// The block referenced something Kite could not resolve.
    pub r_unknown: u8,
    /// The block's `:path` was a literal, decoded into `path`.
    pub r_path_lit: u8,
    /// Loop accumulators kept in map memory (volatile): the verifier does not track map
    /// memory, so each iteration starts from the same state and paths do not multiply.
    pub tmp_a: u32,
    /// Second accumulator.
    pub tmp_b: u32,
    /// Huffman decoder.
    pub bits: Bits,
    /// Cached insertions.
    pub cache: [CacheEntry; CACHE],
    /// The block's `:path` literal, decoded (valid with `r_path_lit`).
    pub path: PathBuf,
}

/// What a header block said, as [`super::H2Done`] fields.
#[derive(Clone, Copy, Debug)]
pub struct BlockResult {
    found: u8,
    unknown: bool,
    status: u16,
    gs: u8,
    method: u8,
    ct: u8,
    path: u32,
}

impl BlockResult {
    /// `:status`, or [`STATUS_UNKNOWN`].
    pub fn status(&self) -> u16 {
        if self.found & R_STATUS != 0 {
            self.status
        } else {
            STATUS_UNKNOWN
        }
    }
    /// `grpc-status`, [`GRPC_STATUS_NONE`] or [`GRPC_STATUS_UNKNOWN`].
    pub fn grpc_status(&self) -> u8 {
        if self.found & R_GS != 0 {
            self.gs
        } else if self.unknown {
            GRPC_STATUS_UNKNOWN
        } else {
            GRPC_STATUS_NONE
        }
    }
    /// [`Method`] as `u8`, or [`METHOD_UNKNOWN`].
    pub fn method(&self) -> u8 {
        if self.found & R_METHOD != 0 {
            self.method
        } else {
            METHOD_UNKNOWN
        }
    }
    /// Path id, or [`PATH_UNKNOWN`].
    pub fn path(&self) -> u32 {
        if self.found & R_PATH != 0 {
            self.path
        } else {
            PATH_UNKNOWN
        }
    }
    /// `GRPC_*`.
    pub fn grpc(&self) -> u8 {
        if self.found & R_CT != 0 {
            self.ct
        } else if self.unknown {
            GRPC_UNKNOWN
        } else {
            GRPC_NO
        }
    }
}

impl HpackDir {
    /// A fresh encoder's state.
    pub fn init(&mut self) {
        self.max_size = DEFAULT_TABLE_SIZE;
    }

    /// The count of the insertions so far became unknowable.
    pub(crate) fn desync<S: H2Sink>(&mut self, sink: &mut S) {
        self.desync = 1;
        self.floor = self.ins;
        sink.stat(H2Stat::HpackDesync);
    }

    /// The rest of the block cannot be parsed.
    pub(crate) fn damage_block(&mut self) {
        self.st = HP_DAMAGED;
        self.r_unknown = 1;
    }

    /// A header block starts.
    pub(crate) fn block_start(&mut self) {
        self.st = HP_OP;
        self.r_found = 0;
        self.r_unknown = 0;
        self.r_path_lit = 0;
    }

    /// The header block ended.
    pub(crate) fn block_end<S: H2Sink>(&mut self, sink: &mut S) {
        if self.st != HP_OP && self.st != HP_DAMAGED {
            // A field cut by the end of its block: not HPACK as Kite knows it.
            self.desync(sink);
            self.r_unknown = 1;
        }
        self.st = HP_OP;
    }

    /// What the block said.
    pub(crate) fn result(&self) -> BlockResult {
        BlockResult {
            found: self.r_found,
            unknown: self.r_unknown != 0,
            status: self.r_status,
            gs: self.r_gs,
            method: self.r_method,
            ct: self.r_ct,
            path: self.r_path,
        }
    }

    /// Whether the next bytes are skipped by length.
    #[inline(always)]
    pub(crate) fn skipping(&self) -> bool {
        self.st == HP_DAMAGED || (self.st == HP_STR && self.s_target == T_SKIP)
    }

    /// Skips up to `n` bytes (at most `frag` are left in the fragment); returns how many.
    #[inline(always)]
    pub(crate) fn skip<S: H2Sink>(&mut self, n: u32, frag: u32, sink: &mut S) -> u32 {
        let mut m = if n < frag { n } else { frag };
        if self.st == HP_DAMAGED {
            return m;
        }
        if self.str_left < m {
            m = self.str_left;
        }
        self.str_left -= m;
        if self.str_left == 0 {
            self.string_end(sink);
        }
        m
    }

    /// One byte of a header block fragment (not a skipped one).
    #[inline(always)]
    pub(crate) fn byte<S: H2Sink>(&mut self, b: u8, sink: &mut S) {
        match self.st {
            HP_OP => {
                if b & 0x80 != 0 {
                    self.start_int(IK_INDEX, b & 0x7f, 0x7f, sink);
                } else if b & 0xc0 == 0x40 {
                    self.f_insert = 1;
                    self.start_int(IK_NAME, b & 0x3f, 0x3f, sink);
                } else if b & 0xe0 == 0x20 {
                    self.start_int(IK_SIZE, b & 0x1f, 0x1f, sink);
                } else {
                    self.f_insert = 0;
                    self.start_int(IK_NAME, b & 0x0f, 0x0f, sink);
                }
            }
            HP_INT => {
                if self.int_shift > 21 {
                    // Beyond 2^28: no sane index or length.
                    self.desync(sink);
                    self.damage_block();
                    return;
                }
                self.int_val += ((b & 0x7f) as u32) << self.int_shift;
                self.int_shift += 7;
                if b & 0x80 == 0 {
                    let v = self.int_val;
                    self.int_done(self.int_kind, v, sink);
                }
            }
            HP_STRHDR => {
                self.s_huff = b >> 7;
                self.start_int(IK_STRLEN, b & 0x7f, 0x7f, sink);
            }
            HP_STR => {
                if self.s_huff != 0 {
                    let mut i = 0;
                    while i < 8 {
                        match self.bits.push((b >> (7 - i)) as u32) {
                            Bit::Sym(c) => self.on_char(c),
                            Bit::Bad => self.s_bad = 1,
                            Bit::More => {}
                        }
                        i += 1;
                    }
                } else {
                    self.on_char(b);
                }
                self.str_left -= 1;
                if self.str_left == 0 {
                    self.string_end(sink);
                }
            }
            _ => {}
        }
    }

    #[inline(always)]
    fn start_int<S: H2Sink>(&mut self, kind: u8, v: u8, max: u8, sink: &mut S) {
        if v == max {
            self.st = HP_INT;
            self.int_kind = kind;
            self.int_val = v as u32;
            self.int_shift = 0;
        } else {
            self.int_done(kind, v as u32, sink);
        }
    }

    fn int_done<S: H2Sink>(&mut self, kind: u8, v: u32, sink: &mut S) {
        match kind {
            IK_INDEX => {
                self.st = HP_OP;
                self.indexed(v, sink);
            }
            IK_SIZE => {
                self.st = HP_OP;
                self.max_size = v;
            }
            IK_NAME => {
                self.st = HP_STRHDR;
                if v == 0 {
                    self.f_name_lit = 1;
                } else {
                    self.f_name_lit = 0;
                    self.resolve_name(v, sink);
                }
            }
            _ => {
                // IK_STRLEN
                self.str_len = v;
                self.str_left = v;
                self.s_target = if self.f_name_lit != 0 {
                    T_NAME
                } else {
                    match self.f_kind {
                        NK_METHOD => T_METHOD,
                        NK_PATH => T_PATH,
                        NK_STATUS | NK_GRPC_STATUS => T_DIGITS,
                        NK_CTYPE => T_CTYPE,
                        _ => T_SKIP,
                    }
                };
                self.s_mask = match self.s_target {
                    T_NAME => 0x1f,
                    T_METHOD => 0x1ff,
                    _ => 1,
                };
                self.s_acc = if self.s_target == T_PATH {
                    FNV_BASIS
                } else {
                    0
                };
                self.s_n = 0;
                self.s_bad = 0;
                self.bits = Bits::default();
                if v == 0 {
                    self.string_end(sink);
                } else {
                    self.st = HP_STR;
                }
            }
        }
    }

    /// One decoded symbol of a string that matters.
    #[inline(always)]
    fn on_char(&mut self, c: u8) {
        let n = self.s_n as usize;
        match self.s_target {
            // Candidates are dropped without branches: BPF has no conditional move, and a
            // branch per candidate would multiply the verifier's states.
            T_NAME => {
                vset(&mut self.tmp_a, 0);
                let mut k = 0;
                while k < 5 {
                    if n >= NAME_LENS[k] as usize || NAMES[k][super::masked(n, 15)] != c {
                        let v = vget(&self.tmp_a) | 1 << k;
                        vset(&mut self.tmp_a, v);
                    }
                    k += 1;
                }
                self.s_mask &= !(vget(&self.tmp_a) as u16);
            }
            T_METHOD => {
                vset(&mut self.tmp_a, 0);
                let mut k = 0;
                while k < 9 {
                    if n >= METHOD_LENS[k] as usize || METHODS[k][super::masked(n, 7)] != c {
                        let v = vget(&self.tmp_a) | 1 << k;
                        vset(&mut self.tmp_a, v);
                    }
                    k += 1;
                }
                self.s_mask &= !(vget(&self.tmp_a) as u16);
            }
            T_DIGITS => {
                if c.is_ascii_digit() && n < 3 {
                    self.s_acc = self.s_acc * 10 + (c - b'0') as u32;
                } else {
                    self.s_bad = 1;
                }
            }
            T_CTYPE => {
                let l = if c.is_ascii_uppercase() { c | 0x20 } else { c };
                if n < GRPC_CT.len() {
                    if GRPC_CT[super::masked(n, 15)] != l {
                        self.s_mask = 0;
                    }
                } else if n == GRPC_CT.len() && c != b'+' && c != b';' {
                    self.s_mask = 0;
                }
            }
            _ => {
                // T_PATH
                self.s_acc = fnv_step(self.s_acc, c);
                if n < PATH_BUF {
                    self.path.bytes[super::masked(n, PATH_BUF - 1)] = c;
                }
            }
        }
        self.s_n = self.s_n.saturating_add(1);
    }

    /// Bounds of the decoded length of the string just read.
    #[inline(always)]
    fn str_bounds(&self) -> (u32, u32) {
        if self.s_huff == 0 {
            (self.str_len, self.str_len)
        } else if self.s_target != T_SKIP {
            (self.s_n as u32, self.s_n as u32)
        } else {
            // Each symbol takes 5 to 30 bits, the padding under 8.
            (
                (self.str_len * 8).saturating_sub(7) / 30,
                self.str_len * 8 / 5,
            )
        }
    }

    fn string_end<S: H2Sink>(&mut self, sink: &mut S) {
        let (lo, hi) = self.str_bounds();
        let n = self.s_n as usize;
        if self.f_name_lit != 0 {
            self.f_name_lit = 0;
            self.name_lo = lo;
            self.name_hi = hi;
            self.f_kind = if self.s_bad != 0 {
                NK_UNKNOWN
            } else {
                // At most one candidate is left at its own length.
                vset(&mut self.tmp_a, 0);
                let mut k = 0;
                while k < 5 {
                    if self.s_mask & (1 << k) != 0 && NAME_LENS[k] as usize == n {
                        vset(&mut self.tmp_a, k as u32 + 1);
                    }
                    k += 1;
                }
                vget(&self.tmp_a) as u8
            };
            self.st = HP_STRHDR;
            return;
        }
        // The value: what it says for its name's kind.
        let bad = self.s_bad != 0;
        let val = match self.f_kind {
            NK_METHOD => {
                // Method::Other is 0: no hit leaves it.
                vset(&mut self.tmp_a, 0);
                let mut k = 0;
                while k < 9 {
                    if self.s_mask & (1 << k) != 0 && METHOD_LENS[k] as usize == n {
                        vset(&mut self.tmp_a, METHOD_VALUES[k] as u32);
                    }
                    k += 1;
                }
                let m = vget(&self.tmp_a);
                if bad { METHOD_UNKNOWN as u32 } else { m }
            }
            NK_PATH => {
                if !bad {
                    self.r_path_lit = 1;
                    self.path.len = n as u32;
                    self.path.id = fnv_id(self.s_acc);
                }
                if bad {
                    PATH_UNKNOWN
                } else {
                    fnv_id(self.s_acc)
                }
            }
            NK_STATUS => {
                if bad || n != 3 {
                    STATUS_UNKNOWN as u32
                } else {
                    self.s_acc
                }
            }
            NK_GRPC_STATUS => {
                if bad || n == 0 || self.s_acc >= GRPC_STATUS_NONE as u32 {
                    GRPC_STATUS_UNKNOWN as u32
                } else {
                    self.s_acc
                }
            }
            NK_CTYPE => {
                if bad {
                    GRPC_UNKNOWN as u32
                } else if self.s_mask != 0 && n >= GRPC_CT.len() {
                    GRPC_YES as u32
                } else {
                    GRPC_NO as u32
                }
            }
            _ => 0,
        };
        let kind = self.f_kind;
        self.apply(kind, val, sink);
        if self.f_insert != 0 {
            let (nlo, nhi) = (self.name_lo, self.name_hi);
            self.insert(kind, val, nlo + lo + 32, nhi + hi + 32, nhi, sink);
        }
        self.st = HP_OP;
    }

    /// A field of `kind` with value `val` is in the block.
    #[inline(always)]
    fn apply<S: H2Sink>(&mut self, kind: u8, val: u32, sink: &mut S) {
        match kind {
            NK_METHOD => {
                self.r_found |= R_METHOD;
                self.r_method = val as u8;
            }
            NK_PATH => {
                self.r_found |= R_PATH;
                self.r_path = val;
            }
            NK_STATUS => {
                self.r_found |= R_STATUS;
                self.r_status = val as u16;
            }
            NK_GRPC_STATUS => {
                self.r_found |= R_GS;
                self.r_gs = val as u8;
            }
            NK_CTYPE => {
                self.r_found |= R_CT;
                self.r_ct = val as u8;
            }
            NK_UNKNOWN => {
                self.r_unknown = 1;
                sink.stat(H2Stat::UnknownRefs);
            }
            _ => {}
        }
    }

    /// An insertion of an entry whose size is within `lo..=hi`.
    fn insert<S: H2Sink>(
        &mut self,
        kind: u8,
        val: u32,
        lo: u32,
        hi: u32,
        name_hi: u32,
        sink: &mut S,
    ) {
        if lo > self.max_size {
            // Larger than the table: it empties the table and is not inserted (§4.4). Nothing
            // inserted so far can be referenced again.
            // (A loop, not an array assignment: no 384-byte temporary on a BPF stack.)
            let mut i = 0;
            while i < CACHE {
                self.cache[i].kind = NK_NONE;
                i += 1;
            }
            self.lost_below = self.ins;
            return;
        }
        if hi > self.max_size {
            self.desync(sink);
            return;
        }
        if name_hi > self.max_name {
            self.max_name = name_hi;
        }
        let n = self.ins;
        self.ins = n.wrapping_add(1);
        let cum_at = self.cum_lo;
        self.cum_lo = cum_at.wrapping_add(lo);
        let w = super::masked((n >> 6) as usize, 1);
        let bit = 1u64 << (n & 63);
        if kind == NK_NONE {
            self.mattered[w] &= !bit;
        } else {
            self.mattered[w] |= bit;
        }
        if kind == NK_NONE {
            return;
        }
        if kind == NK_UNKNOWN {
            // It may matter and its value is unknown.
            self.lost_below = self.ins;
            return;
        }
        // The same field inserted again: one entry, two numbers.
        let mut i = 0;
        while i < CACHE {
            let e = &mut self.cache[i];
            if e.kind == kind && e.val == val {
                let prev_dead = self.cum_lo.wrapping_sub(e.prev_cum) > self.max_size;
                if e.has_prev != 0 && !prev_dead && e.prev.wrapping_add(1) > self.lost_below {
                    self.lost_below = e.prev.wrapping_add(1);
                }
                e.prev = e.ins;
                e.prev_cum = e.cum_at;
                e.has_prev = 1;
                e.ins = n;
                e.cum_at = cum_at;
                e.last = n;
                return;
            }
            i += 1;
        }
        // Free slot, else the least recently used.
        vset(&mut self.tmp_a, u32::MAX);
        vset(&mut self.tmp_b, 0);
        let mut i = 0;
        while i < CACHE {
            let e = &self.cache[i];
            let age = if e.kind == NK_NONE || self.dead(e.cum_at) {
                0
            } else {
                e.last.saturating_add(1)
            };
            let best = vget(&self.tmp_a);
            if age < best {
                vset(&mut self.tmp_a, age);
                vset(&mut self.tmp_b, i as u32);
            }
            i += 1;
        }
        let victim = super::masked(vget(&self.tmp_b) as usize, CACHE - 1);
        let old = self.cache[victim];
        if old.kind != NK_NONE && !self.dead(old.cum_at) {
            sink.stat(H2Stat::CacheEvictions);
            if old.ins.wrapping_add(1) > self.lost_below {
                self.lost_below = old.ins.wrapping_add(1);
            }
        }
        self.cache[victim] = CacheEntry {
            ins: n,
            val,
            last: n,
            name_lo: clamp16(self.name_lo),
            name_hi: clamp16(name_hi),
            cum_at,
            prev_cum: 0,
            prev: 0,
            kind,
            has_prev: 0,
            _pad: [0; 2],
        };
    }

    /// Whether the insertion whose [`CacheEntry::cum_at`] is `cum_at` is surely evicted by now
    /// (what followed it takes more than the table). Checked where it pays — choosing a cache
    /// victim, dropping an alias — not swept: a 16-entry sweep at every insertion more than
    /// doubled the verifier's work. (An entry evicted by a table shrunk and grown again is not
    /// seen as evicted: conservative.)
    #[inline(always)]
    fn dead(&self, cum_at: u32) -> bool {
        self.cum_lo.wrapping_sub(cum_at) > self.max_size
    }

    /// Whether uncached insertion `n` may have been one that matters: exact for the last 128
    /// insertions, `lost_below` for older ones (only a table over 4 KiB can still hold them).
    #[inline(always)]
    fn maybe_mattered(&self, n: u32) -> bool {
        if self.ins.wrapping_sub(n) <= 128 {
            let w = super::masked((n >> 6) as usize, 1);
            (self.mattered[w] >> (n & 63)) & 1 != 0
        } else {
            n < self.lost_below
        }
    }

    /// The insertion a dynamic index names: `Some(insertion number)`, or `None` (unknowable).
    #[inline(always)]
    fn dynamic<S: H2Sink>(&mut self, idx: u32, sink: &mut S) -> Option<u32> {
        let k = idx - 62;
        if k < self.ins.wrapping_sub(self.floor) {
            return Some(self.ins - 1 - k);
        }
        if self.desync == 0 {
            // No such entry: Kite's count is wrong somewhere.
            self.desync(sink);
        }
        None
    }

    /// The cached entry of insertion `n`.
    #[inline(always)]
    fn lookup(&mut self, n: u32) -> Option<usize> {
        let mut i = 0;
        while i < CACHE {
            let e = &mut self.cache[i];
            if e.kind != NK_NONE && (e.ins == n || (e.has_prev != 0 && e.prev == n)) {
                e.last = self.ins;
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// A fully indexed field.
    fn indexed<S: H2Sink>(&mut self, idx: u32, sink: &mut S) {
        match idx {
            0 => {
                self.desync(sink);
                self.damage_block();
            }
            2 => self.apply(NK_METHOD, Method::Get as u32, sink),
            3 => self.apply(NK_METHOD, Method::Post as u32, sink),
            4 => self.apply(NK_PATH, path_id(b"/"), sink),
            5 => self.apply(NK_PATH, path_id(b"/index.html"), sink),
            8..=14 => self.apply(
                NK_STATUS,
                STATIC_STATUS[super::masked((idx - 8) as usize, 7)] as u32,
                sink,
            ),
            31 => self.apply(NK_CTYPE, GRPC_NO as u32, sink),
            1..=61 => {}
            _ => {
                let (kind, val) = match self.dynamic(idx, sink) {
                    None => (NK_UNKNOWN, 0),
                    Some(n) => match self.lookup(n) {
                        Some(i) => {
                            let e = self.cache[i & (CACHE - 1)];
                            (e.kind, e.val)
                        }
                        None if self.maybe_mattered(n) => (NK_UNKNOWN, 0),
                        None => (NK_NONE, 0),
                    },
                };
                self.apply(kind, val, sink);
            }
        }
    }

    /// A literal field's name is table entry `idx`.
    fn resolve_name<S: H2Sink>(&mut self, idx: u32, sink: &mut S) {
        if idx <= 61 {
            let len = STATIC_NAME_LENS[super::masked(idx as usize, 63)] as u32;
            self.name_lo = len;
            self.name_hi = len;
            self.f_kind = match idx {
                2 | 3 => NK_METHOD,
                4 | 5 => NK_PATH,
                8..=14 => NK_STATUS,
                31 => NK_CTYPE,
                _ => NK_NONE,
            };
            return;
        }
        self.name_lo = 0;
        self.name_hi = self.max_name;
        self.f_kind = match self.dynamic(idx, sink) {
            None => NK_UNKNOWN,
            Some(n) => match self.lookup(n) {
                Some(i) => {
                    let e = self.cache[i & (CACHE - 1)];
                    self.name_lo = e.name_lo as u32;
                    self.name_hi = e.name_hi as u32;
                    e.kind
                }
                None if self.maybe_mattered(n) => NK_UNKNOWN,
                None => NK_NONE,
            },
        };
    }
}

/// A volatile read of map memory (see [`HpackDir::tmp_a`]).
#[inline(always)]
fn vget<T: Copy>(p: &T) -> T {
    // SAFETY: a reference is valid to read.
    unsafe { core::ptr::read_volatile(p) }
}

/// A volatile write of map memory.
#[inline(always)]
fn vset<T>(p: &mut T, v: T) {
    // SAFETY: a reference is valid to write.
    unsafe { core::ptr::write_volatile(p, v) }
}

#[inline(always)]
fn clamp16(v: u32) -> u16 {
    if v > u16::MAX as u32 {
        u16::MAX
    } else {
        v as u16
    }
}
