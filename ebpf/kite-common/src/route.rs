//! Routes (issue 15, groundwork): a low-cardinality identity of an HTTP request target,
//! computed byte by byte as the target is read, so the kernel never stores a target.
//!
//! The route is the path (up to `?`, `#` or the end of the target) with every segment that
//! looks like an identifier replaced by `*`:
//! * all decimal digits (`/orders/123`);
//! * hexadecimal of 8 or more characters with at least one decimal digit (object ids,
//!   hashes: `/blobs/5f2b9c0e`);
//! * a UUID (`8-4-4-4-12` hexadecimal with dashes);
//! * a token: 16 or more of `[A-Za-z0-9_-]` with at least one digit and one letter (ULIDs,
//!   base64url ids, API keys);
//! * longer than [`ROUTE_SEG_MAX`] bytes.
//!
//! At most [`ROUTE_SEGS`] segments are kept; anything deeper becomes one `/**`. An absolute
//! target (`http://host/path`) is reduced to its path; `*` (as in `OPTIONS *`) is its own
//! route. The identity is a hash of the normalised text ([`route_id_of_text`]: its first
//! [`ROUTE_TEXT`] bytes a word at a time, FNV-1a of the rest) — so user space, given the text
//! once (the kernel keeps its first [`ROUTE_TEXT`] bytes), finds the same id — made disjoint
//! from the reserved ids with [`crate::maps::rpc_id`].
//!
//! The kernel reads a segment's ordinary bytes a word at a time ([`Route::run`]: branch-free
//! classification of up to 8 bytes, property-tested against [`Route::push`], which stays the
//! reference byte by byte); the id is computed once, when the target ends.

use crate::{
    h2::hpack::{FNV_BASIS, fnv_step},
    maps::rpc_id,
};

/// Segments kept; deeper ones become one `/**`.
pub const ROUTE_SEGS: u8 = 8;
/// A segment longer than this is an identifier.
pub const ROUTE_SEG_MAX: u16 = 64;
/// Bytes of normalised text kept for user space (the id covers all of it).
pub const ROUTE_TEXT: usize = 64;

// Where the reader is in the target.
const ST_START: u8 = 0;
/// Skipping `scheme://authority` of an absolute target (`skip` slashes to go).
const ST_ABS: u8 = 1;
const ST_PATH: u8 = 2;
/// After `?`/`#`, past the segment limit, or a `*` target: nothing more changes the route.
const ST_DONE: u8 = 3;

// Segment classes still possible (bits of `class`).
const C_DIGITS: u8 = 1;
const C_HEX: u8 = 2;
const C_UUID: u8 = 4;
const C_TOKEN: u8 = 8;
const C_HAS_DIGIT: u8 = 16;
const C_HAS_LETTER: u8 = 32;

/// The route of one request target being read.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The normalised text's first [`ROUTE_TEXT`] bytes (8-aligned: read a word at a time).
    text: [u8; ROUTE_TEXT],
    /// FNV-1a of the normalised text beyond [`ROUTE_TEXT`] (the current segment's raw bytes
    /// included).
    h: u32,
    /// `h` before the current segment's bytes (to replace them with `*`).
    h_seg: u32,
    /// Bytes of the current segment.
    seg_len: u16,
    /// `C_*` of the current segment.
    class: u8,
    /// Segments begun.
    segs: u8,
    /// `ST_*`.
    state: u8,
    /// Slashes still to skip in an absolute target.
    skip: u8,
    /// Bytes of `text` used.
    len: u8,
    /// `len` before the current segment's bytes.
    len_seg: u8,
    /// The normalised text went beyond [`ROUTE_TEXT`]: `text` is its beginning.
    cut: u8,
    /// `cut` before the current segment's bytes.
    cut_seg: u8,
    /// Explicit padding.
    _pad: [u8; 6],
}

impl Default for Route {
    fn default() -> Self {
        Self::new()
    }
}

impl Route {
    /// Nothing read yet.
    pub const fn new() -> Self {
        Self {
            text: [0; ROUTE_TEXT],
            h: FNV_BASIS,
            h_seg: FNV_BASIS,
            seg_len: 0,
            class: 0,
            segs: 0,
            state: ST_START,
            skip: 0,
            len: 0,
            len_seg: 0,
            cut: 0,
            cut_seg: 0,
            _pad: [0; 6],
        }
    }

    /// Appends a byte of normalised text.
    #[inline(always)]
    fn emit(&mut self, b: u8) {
        if (self.len as usize) < ROUTE_TEXT {
            self.text[self.len as usize & (ROUTE_TEXT - 1)] = b;
            self.len += 1;
        } else {
            self.h = fnv_step(self.h, b);
            self.cut = 1;
        }
    }

    /// A `/` of the path: ends the current segment, starts the next (or the `/**` tail).
    #[inline(always)]
    fn slash(&mut self) {
        self.end_segment();
        if self.segs >= ROUTE_SEGS {
            self.emit(b'/');
            self.emit(b'*');
            self.emit(b'*');
            self.state = ST_DONE;
            return;
        }
        self.emit(b'/');
        self.segs += 1;
        self.h_seg = self.h;
        self.len_seg = self.len;
        self.cut_seg = self.cut;
        self.seg_len = 0;
        self.class = C_DIGITS | C_HEX | C_UUID | C_TOKEN;
    }

    /// The current segment is complete: an identifier is replaced by `*`.
    #[inline(always)]
    fn end_segment(&mut self) {
        if self.segs == 0 || self.seg_len == 0 {
            return;
        }
        let c = self.class;
        let n = self.seg_len;
        let id = n > ROUTE_SEG_MAX
            || c & C_DIGITS != 0
            || (c & C_HEX != 0 && n >= 8 && c & C_HAS_DIGIT != 0)
            || (c & C_UUID != 0 && n == 36)
            || (c & C_TOKEN != 0 && n >= 16 && c & C_HAS_DIGIT != 0 && c & C_HAS_LETTER != 0);
        if id {
            self.h = self.h_seg;
            // Text back to the segment's start: the `*` may still fit.
            self.len = self.len_seg;
            self.cut = self.cut_seg;
            self.emit(b'*');
        }
        self.seg_len = 0;
    }

    /// A byte of a segment: hashed and kept as is until the segment ends; classes updated.
    #[inline(always)]
    fn seg_byte(&mut self, b: u8) {
        let pos = self.seg_len;
        self.seg_len = self.seg_len.saturating_add(1);
        let digit = b.is_ascii_digit();
        let hex = digit || matches!(b, b'a'..=b'f' | b'A'..=b'F');
        let letter = b.is_ascii_alphabetic();
        let mut c = self.class;
        if !digit {
            c &= !C_DIGITS;
        }
        if !hex {
            c &= !C_HEX;
        }
        let dash_at = matches!(pos, 8 | 13 | 18 | 23);
        if (dash_at && b != b'-') || (!dash_at && !hex) || pos >= 36 {
            c &= !C_UUID;
        }
        if !(digit || letter || b == b'-' || b == b'_') {
            c &= !C_TOKEN;
        }
        if digit {
            c |= C_HAS_DIGIT;
        }
        if letter {
            c |= C_HAS_LETTER;
        }
        self.class = c;
        self.emit(b);
    }

    /// One byte of the request target (the HTTP/1 parser calls it for each byte between the
    /// method's space and the version's; a target split across segments is simply fed on).
    #[inline(always)]
    pub fn push(&mut self, b: u8) {
        match self.state {
            ST_START => {
                if b == b'/' {
                    self.state = ST_PATH;
                    self.slash();
                } else if b == b'*' {
                    self.emit(b'*');
                    self.state = ST_DONE;
                } else {
                    // `scheme://authority/...`: the path starts at the third slash.
                    self.state = ST_ABS;
                    self.skip = 3;
                }
            }
            ST_ABS => {
                if b == b'?' || b == b'#' {
                    self.state = ST_DONE;
                } else if b == b'/' {
                    self.skip -= 1;
                    if self.skip == 0 {
                        self.state = ST_PATH;
                        self.slash();
                    }
                }
            }
            ST_PATH => {
                if b == b'?' || b == b'#' {
                    self.end_segment();
                    self.state = ST_DONE;
                } else if b == b'/' {
                    self.slash();
                } else {
                    self.seg_byte(b);
                }
            }
            _ => {}
        }
    }

    /// Starts a new target. Only the reader's state is reset: `text` beyond `len` is never
    /// looked at (the kernel keeps a route per connection; zeroing 64 bytes per request would
    /// be paid on every request).
    #[inline(always)]
    pub fn reset(&mut self) {
        self.h = FNV_BASIS;
        self.h_seg = FNV_BASIS;
        self.seg_len = 0;
        self.class = 0;
        self.segs = 0;
        self.state = ST_START;
        self.skip = 0;
        self.len = 0;
        self.len_seg = 0;
        self.cut = 0;
        self.cut_seg = 0;
    }

    /// Whether nothing more can change the route (a `?`/`#`, the segment limit, or a `*`
    /// target was read): the rest of the target need not be read.
    #[inline(always)]
    pub fn settled(&self) -> bool {
        self.state == ST_DONE
    }

    /// Whether [`Route::run`] can take the next bytes: inside a path segment, with room in
    /// `text` for a whole word.
    #[inline(always)]
    pub fn runs(&self) -> bool {
        self.state == ST_PATH && self.len as usize <= ROUTE_TEXT - 8
    }

    /// Reads the ordinary segment bytes at the start of `w` (the next target bytes,
    /// little-endian; only the first `avail`, 1 to 8, are the target's), the same as
    /// [`Route::push`] of each, without a branch per byte: returns how many it took (0 when
    /// the first is `/`, `?`, `#` or a byte that ends the target — `push` and the caller
    /// handle those). Only while [`Route::runs`].
    #[inline(always)]
    pub fn run(&mut self, w: u64, avail: u32) -> u32 {
        let avail = (avail.wrapping_sub(1) & 7) + 1;
        // Bytes past `avail`, and delimiters, stop the run.
        let inside = u64::MAX >> (64 - 8 * avail as u64);
        let stop = eq(w, b' ')
            | eq(w, b'\r')
            | eq(w, b'\n')
            | eq(w, b'/')
            | eq(w, b'?')
            | eq(w, b'#')
            | (!inside & HI);
        let first = stop & stop.wrapping_neg();
        // The run's bytes: all ones below the first stop (all eight when none).
        let m = (first >> 7).wrapping_sub(1);
        let k = ((m & LO).wrapping_mul(LO) >> 56) as u32;
        let mh = m & HI;

        let ascii = !w & HI;
        let lo = w & !HI;
        let digit = ge(lo, b'0') & !ge(lo, b':') & ascii;
        let upper = ge(lo, b'A') & !ge(lo, b'[');
        let lower = ge(lo, b'a') & !ge(lo, b'{');
        let letter = (upper | lower) & ascii;
        let hexl = ((ge(lo, b'A') & !ge(lo, b'G')) | (ge(lo, b'a') & !ge(lo, b'g'))) & ascii;
        let hex = digit | hexl;
        let dash = eq(w, b'-');
        let token = digit | letter | dash | eq(w, b'_');

        // UUID: dashes exactly at positions 8, 13, 18 and 23 of 36, hexadecimal elsewhere.
        let pos = self.seg_len as u64;
        let end = pos + k as u64;
        let past = ((36i64 - end as i64) >> 63) as u64 & 1;
        let dash_bits = (UUID_DASHES >> (pos & 63)) & 0xff;
        let dash_at = spread(dash_bits);
        let uuid_bad = past | nz(mh & dash_at & !dash) | nz(mh & !dash_at & !hex);

        let clear = (nz(mh & !digit) * C_DIGITS as u64)
            | (nz(mh & !hex) * C_HEX as u64)
            | (uuid_bad * C_UUID as u64)
            | (nz(mh & !token) * C_TOKEN as u64);
        let set = (nz(mh & digit) * C_HAS_DIGIT as u64) | (nz(mh & letter) * C_HAS_LETTER as u64);
        self.class = (self.class & !(clear as u8)) | set as u8;
        self.seg_len = end as u16;

        // All eight bytes are written; those past `len + k` are never looked at.
        let at = self.len as usize;
        let mut j = 0;
        while j < 8 {
            self.text[(at + j) & (ROUTE_TEXT - 1)] = (w >> (8 * j)) as u8;
            j += 1;
        }
        self.len += k as u8;
        k
    }

    /// The target ended: the route's id (never one of the reserved ids of
    /// [`crate::maps::rpc_id`]).
    #[inline(always)]
    pub fn finish(&mut self) -> u32 {
        if self.state == ST_PATH {
            self.end_segment();
            self.state = ST_DONE;
        }
        if self.state == ST_START || self.state == ST_ABS {
            // Empty, or an absolute target without a path: the root.
            self.state = ST_DONE;
            self.emit(b'/');
        }
        text_id(&self.text, self.len as u64, self.h)
    }

    /// The normalised text kept (its beginning when [`Route::cut`]).
    pub fn text(&self) -> &[u8] {
        &self.text[..self.len as usize]
    }

    /// Whether the normalised text was longer than what [`Route::text`] keeps.
    pub fn cut(&self) -> bool {
        self.cut != 0
    }
}

/// The route of a whole target: (id, normalised text, cut). User space and tests.
pub fn route_of(target: &[u8]) -> (u32, Route) {
    let mut r = Route::new();
    for &b in target {
        r.push(b);
    }
    (r.finish(), r)
}

/// The id of a normalised text (what user space computes from the text the kernel sends).
pub fn route_id_of_text(text: &[u8]) -> u32 {
    let n = text.len().min(ROUTE_TEXT);
    let mut head = Route::new();
    head.text[..n].copy_from_slice(&text[..n]);
    let mut h = FNV_BASIS;
    for &b in &text[n..] {
        h = fnv_step(h, b);
    }
    text_id(&head.text, n as u64, h)
}

const HI: u64 = 0x8080_8080_8080_8080;
const LO: u64 = 0x0101_0101_0101_0101;
/// Bits 8, 13, 18 and 23: where a UUID has its first four dashes.
const UUID_DASHES: u64 = (1 << 8) | (1 << 13) | (1 << 18) | (1 << 23);

/// The high bit of each byte of `lo` (high bits clear) that is at least `c` (1..=0x80).
#[inline(always)]
const fn ge(lo: u64, c: u8) -> u64 {
    (lo + (0x80 - c as u64) * LO) & HI
}

/// The high bit of each byte of `w` equal to `c` (exact in every byte: no borrow crosses).
#[inline(always)]
const fn eq(w: u64, c: u8) -> u64 {
    let t = w ^ (c as u64 * LO);
    !(((t & !HI) + !HI) | t) & HI
}

/// 1 when `x` is not zero, without a branch.
#[inline(always)]
const fn nz(x: u64) -> u64 {
    (x | x.wrapping_neg()) >> 63
}

/// Bit `j` of `bits` (8 bits) as the high bit of byte `j`.
#[inline(always)]
const fn spread(bits: u64) -> u64 {
    let mut out = 0;
    let mut j = 0;
    while j < 8 {
        out |= ((bits >> j) & 1) << (8 * j + 7);
        j += 1;
    }
    out
}

/// The id of a route from its text's first `len` bytes (`len` at most [`ROUTE_TEXT`]; bytes
/// past it are not looked at) and FNV-1a `tail` of the rest: a word at a time, branch-free.
#[inline(always)]
fn text_id(text: &[u8; ROUTE_TEXT], len: u64, tail: u32) -> u32 {
    let mut acc: u64 = 0x9e37_79b9_7f4a_7c15 ^ len;
    let mut i = 0;
    while i < ROUTE_TEXT / 8 {
        // SAFETY: `text` is 8-aligned (first field of an `align(8)` struct, or of one in
        // `route_id_of_text`) and `8 * i + 8 <= ROUTE_TEXT`.
        let w = unsafe { core::ptr::read(text.as_ptr().add(8 * i).cast::<u64>()) };
        // Bytes of this word inside the text: clamp(len - 8i, 0, 8), as a mask.
        let d = len as i64 - 8 * i as i64;
        let d = d & !(d >> 63);
        let full = ((7 - d) >> 63) as u64;
        let mask = full | ((1u64 << (8 * (d & 7))) - 1);
        acc = (acc ^ (w & mask)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        acc ^= acc >> 32;
        i += 1;
    }
    acc = (acc ^ tail as u64).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    acc ^= acc >> 29;
    rpc_id((acc ^ (acc >> 32)) as u32)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, format, string::String, vec::Vec};

    use proptest::prelude::*;

    use super::*;

    fn norm(t: &str) -> String {
        let (id, r) = route_of(t.as_bytes());
        let s = String::from_utf8(r.text().to_vec()).unwrap();
        assert!(!r.cut());
        assert_eq!(id, route_id_of_text(r.text()), "id of {t}");
        s
    }

    #[test]
    fn identifiers_become_stars_and_the_rest_stays() {
        let cases = [
            ("/", "/"),
            ("", "/"),
            ("*", "*"),
            ("/orders/123", "/orders/*"),
            ("/orders/123/items/7?x=1", "/orders/*/items/*"),
            (
                "/users/8f14e45f-ceea-467f-a0e6-0a1f3a7c3b9e/profile",
                "/users/*/profile",
            ),
            ("/blobs/5f2b9c0e11aa", "/blobs/*"),
            ("/blobs/deadbeef", "/blobs/deadbeef"),
            ("/t/01HZX3K8Q9W2E5R7T1Y4U6I8O0", "/t/*"),
            ("/api/v1/items", "/api/v1/items"),
            ("/api/v2/", "/api/v2/"),
            ("/static/app.3f2a9b1c.js", "/static/app.3f2a9b1c.js"),
            ("/a//b", "/a//b"),
            ("/search#frag", "/search"),
            ("http://example.test:8080/orders/42", "/orders/*"),
            ("http://example.test", "/"),
            ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/**"),
            ("/x/0", "/x/*"),
        ];
        for (t, want) in cases {
            assert_eq!(norm(t), want, "{t}");
        }
        let long = format!("/files/{}", "a".repeat(80));
        assert_eq!(norm(&long), "/files/*");
    }

    #[test]
    fn a_long_route_is_cut_in_its_text_not_in_its_id() {
        let seg = "abcdefghijklmnopqrst";
        let a = format!("/{seg}/{seg}/42/{seg}/{seg}/x");
        let b = format!("/{seg}/{seg}/77/{seg}/{seg}/x");
        let c = format!("/{seg}/{seg}/77/{seg}/{seg}/y");
        let (ia, ra) = route_of(a.as_bytes());
        let (ib, rb) = route_of(b.as_bytes());
        let (ic, _) = route_of(c.as_bytes());
        assert!(ra.cut() && rb.cut());
        assert_eq!(ra.text().len(), ROUTE_TEXT);
        assert_eq!(ra.text(), rb.text());
        assert!(ra.text().starts_with(format!("/{seg}/{seg}/*/").as_bytes()));
        assert_eq!(ia, ib, "the same route whatever the id");
        assert_ne!(ia, ic, "routes differing after the kept text stay apart");
        assert_eq!(
            ia,
            route_id_of_text(format!("/{seg}/{seg}/*/{seg}/{seg}/x").as_bytes())
        );
    }

    #[test]
    fn five_routes_of_ten_thousand_paths_with_random_ids() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut ids = BTreeSet::new();
        let mut texts = BTreeSet::new();
        for i in 0..10_000 {
            let r = next();
            let t = match i % 5 {
                0 => format!("/orders/{}", r % 1_000_000),
                1 => format!(
                    "/users/{:08x}-{:04x}-{:04x}-{:04x}-{:012x}/cart",
                    r as u32,
                    (r >> 32) as u16,
                    (r >> 48) as u16,
                    r as u16,
                    r & 0xffff_ffff_ffff
                ),
                2 => format!("/blobs/{:016x}?v={}", r | 1, r % 9),
                3 => "/health".into(),
                _ => format!("/api/v1/items?page={}", r % 50),
            };
            let (id, route) = route_of(t.as_bytes());
            ids.insert(id);
            texts.insert(route.text().to_vec());
        }
        assert_eq!(ids.len(), 5, "{texts:?}");
        assert_eq!(texts.len(), 5);
    }

    /// Every field that says what the reader has read (`text` only up to `len`).
    fn state(r: &Route) -> (Vec<u8>, [u32; 2], [u16; 1], [u8; 8]) {
        (
            r.text().to_vec(),
            [r.h, r.h_seg],
            [r.seg_len],
            [
                r.class, r.segs, r.state, r.skip, r.len, r.len_seg, r.cut, r.cut_seg,
            ],
        )
    }

    fn word(bytes: &[u8], filler: u8) -> u64 {
        let mut w = [filler; 8];
        let n = bytes.len().min(8);
        w[..n].copy_from_slice(&bytes[..n]);
        u64::from_le_bytes(w)
    }

    /// Targets a reader meets: ids of each kind, partial UUIDs, long segments, odd bytes.
    fn target() -> impl Strategy<Value = Vec<u8>> {
        let shaped = prop_oneof![
            "(/[0-9]{0,12}|/[0-9a-fA-F]{0,20}|/[a-zA-Z0-9_-]{0,24}){0,5}",
            "/users/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(/x)?",
            "/u/[0-9a-f-]{0,40}",
            "(/[a-z0-9]{20,70}){1,3}",
            // The neighbours of every class's ranges.
            "(/[0-9a-hA-HyzYZ@`:;\\[{_-]{0,30}){1,4}",
            "(/[0-9a-gA-G@`:/]{6,12}){1,3}",
        ]
        .prop_map(String::into_bytes);
        prop_oneof![
            4 => shaped,
            1 => proptest::collection::vec(any::<u8>(), 0..80),
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(2048))]

        /// `run` takes exactly the ordinary segment bytes at the start of its word (no more
        /// than `avail`), and leaves the reader as pushing them one by one does; the rest of
        /// the target read either way gives the same route and id.
        #[test]
        fn a_run_is_its_bytes_pushed_one_by_one(
            t in target(),
            cut in 0usize..80,
            avail in 1u32..=8,
            filler in any::<u8>(),
        ) {
            let cut = cut.min(t.len());
            let (head, rest) = t.split_at(cut);
            let mut a = Route::new();
            for &b in head {
                a.push(b);
            }
            prop_assume!(a.runs());
            let mut b = a;
            let k = a.run(word(rest, filler), avail) as usize;
            let next = |i: usize| if i < rest.len() { rest[i] } else { filler };
            prop_assert!(k <= avail as usize);
            let ordinary = |c: u8| !matches!(c, b' ' | b'\r' | b'\n' | b'/' | b'?' | b'#');
            for i in 0..k {
                prop_assert!(ordinary(next(i)), "took {:?} at {}", next(i), i);
            }
            if k < avail as usize {
                prop_assert!(!ordinary(next(k)), "stopped before {:?}", next(k));
            }
            for i in 0..k {
                b.push(next(i));
            }
            prop_assert_eq!(state(&a), state(&b));
            for &c in &rest[k.min(rest.len())..] {
                a.push(c);
                b.push(c);
            }
            let (ia, ib) = (a.finish(), b.finish());
            prop_assert_eq!(ia, ib);
            prop_assert_eq!(a.text(), b.text());
            if !a.cut() {
                prop_assert_eq!(ia, route_id_of_text(a.text()));
            }
        }

        /// A whole target read in runs where it can be (as the kernel reads a window) is the
        /// target read byte by byte.
        #[test]
        fn a_target_read_in_runs_is_the_target_read_byte_by_byte(t in target()) {
            let (want, reference) = route_of(&t);
            let mut r = Route::new();
            let mut i = 0;
            while i < t.len() {
                if r.runs() {
                    let avail = (t.len() - i).min(8) as u32;
                    let k = r.run(word(&t[i..], 0xaa), avail) as usize;
                    i += k;
                    if k == avail as usize {
                        continue;
                    }
                }
                r.push(t[i]);
                i += 1;
            }
            prop_assert_eq!(r.finish(), want);
            prop_assert_eq!(r.text(), reference.text());
        }
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]

        /// Any bytes: no panic, bounded text, and the id is the id of the text whenever the
        /// text is whole.
        #[test]
        fn any_target_is_bounded_and_its_id_is_its_texts(t in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (id, r) = route_of(&t);
            prop_assert!(r.text().len() <= ROUTE_TEXT);
            if !r.cut() {
                prop_assert_eq!(id, route_id_of_text(r.text()));
            }
        }

        /// Normalising a route gives the route again (a `*` is not an identifier).
        #[test]
        fn a_route_is_its_own_route(
            segs in proptest::collection::vec("[a-z0-9_.-]{0,40}", 0..12),
            query in "[a-z=&0-9]{0,10}",
        ) {
            let mut t: String = segs.iter().map(|s| format!("/{s}")).collect();
            if t.is_empty() {
                t.push('/');
            }
            t.push('?');
            t.push_str(&query);
            let (id, r) = route_of(t.as_bytes());
            prop_assume!(!r.cut());
            let text: Vec<u8> = r.text().to_vec();
            let (id2, r2) = route_of(&text);
            prop_assert_eq!(r2.text(), &text[..]);
            prop_assert_eq!(id, id2);
        }
    }
}
