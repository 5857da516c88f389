//! Latency histogram layout, shared by the kernel and user space: Prometheus' native-histogram
//! buckets of schema 4, split at the classic (`le`) boundaries.
//!
//! Values are nanoseconds; the edges are those of seconds. Schema 4 has 16 buckets per power of
//! two: native bucket `k` holds latencies in `(2^((k-1)/16), 2^(k/16)]` seconds, each ≈ 4.4 %
//! wide, so any value in a bucket is within 2.2 % of the bucket's geometric middle. Below them
//! is the zero bucket `[0, 2^-20 s]` (≈ 954 ns); above `2^6 s` = 64 s one overflow bucket.
//!
//! The classic boundaries ([`CLASSIC_EDGES_NS`]: OpenTelemetry's advised boundaries for
//! `http.server.request.duration`, 5 ms … 10 s, with finer ones below 5 ms) are not schema-4
//! edges (but 0.25, 0.5 and 1 s), so the native bucket holding one is split in two at it. A
//! kernel bucket therefore lies inside exactly one native bucket *and* one classic bucket: the
//! native histogram (merge the halves) and the classic one (sum up to an edge) are both exact,
//! and the TUI, gRPC and Prometheus compute percentiles from the same native buckets.
//!
//! A bucket `i` is `(bucket_lower_ns(i), bucket_upper_ns(i)]`: lower edge exclusive, upper
//! inclusive, as Prometheus' buckets are. Every edge is an integer number of nanoseconds
//! (`floor(10^9 · 2^(k/16))`), and for an integer latency `ns ≤ floor(x)` exactly when
//! `ns ≤ x`, so bucketing nanoseconds is exact.
//!
//! The kernel only ever calls [`bucket_index`]: the log-linear bucket of the value (its top
//! bit and the four bits below it) indexes a table of where to start, and at most
//! [`MAX_STEPS`] compares with the edges finish the job.

/// Prometheus native-histogram schema: `2^4` = 16 buckets per power of two.
pub const SCHEMA: i32 = 4;
/// Buckets per power of two.
const PER_OCTAVE: i32 = 1 << SCHEMA;
/// The zero bucket's upper edge, log2 seconds: `2^-20 s` ≈ 953.7 ns.
pub const ZERO_EXP: i32 = -20;
/// The zero threshold in seconds (exact in `f64`).
pub const ZERO_THRESHOLD_SECONDS: f64 = 1.0 / (1u64 << -ZERO_EXP) as f64;
/// Where the overflow bucket starts, log2 seconds: `2^6 s` = 64 s.
pub const MAX_EXP: i32 = 6;
/// First native (schema 4) bucket index above the zero bucket.
pub const NATIVE_MIN: i32 = ZERO_EXP * PER_OCTAVE + 1;
/// Last native bucket index below the overflow bucket.
pub const NATIVE_MAX: i32 = MAX_EXP * PER_OCTAVE;

/// Classic histogram boundaries in nanoseconds: OpenTelemetry's advised boundaries for
/// `http.server.request.duration` (0.005 … 10 s) and, below 5 ms, 0.05, 0.1, 0.25, 0.5, 1 and
/// 2.5 ms for loopback-fast services. Each is an exact kernel bucket edge.
pub const CLASSIC_EDGES_NS: [u64; 20] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    75_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    750_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    7_500_000_000,
    10_000_000_000,
];

/// `floor(2^(i/16) · 2^64)` for `i` in `0..16` (computed with 80-digit decimals; every edge
/// derived from them equals `floor(10^9 · 2^(k/16))` exactly over the layout's range, the
/// nearest fractional part being 1.8·10^-4 against an error below 4·10^-9).
const ROOT16: [u128; 16] = [
    0x10000000000000000,
    0x10b5586cf9890f629,
    0x1172b83c7d517adcd,
    0x12387a6e75623866c,
    0x1306fe0a31b7152de,
    0x13dea64c12342235b,
    0x14bfdad5362a271d4,
    0x15ab07dd48542958c,
    0x16a09e667f3bcc908,
    0x17a11473eb0186d7d,
    0x18ace5422aa0db5ba,
    0x19c49182a3f0901c7,
    0x1ae89f995ad3ad5e8,
    0x1c199bdd85529c222,
    0x1d5818dcfba48725d,
    0x1ea4afa2a490d9858,
];

/// Upper edge of native bucket `k` in nanoseconds: `floor(10^9 · 2^(k/16))`.
pub const fn native_upper_ns(k: i32) -> u64 {
    let m = k.div_euclid(PER_OCTAVE);
    let p = 1_000_000_000u128 * ROOT16[k.rem_euclid(PER_OCTAVE) as usize];
    (if m >= 0 {
        (p << m) >> 64
    } else {
        p >> (64 - m)
    }) as u64
}

/// Native buckets between the zero bucket and the overflow bucket.
const NATIVE_COUNT: usize = (NATIVE_MAX - NATIVE_MIN + 1) as usize;

/// Classic edges that are not native edges (each splits a native bucket).
const fn splits() -> usize {
    let mut n = 0;
    let mut c = 0;
    while c < CLASSIC_EDGES_NS.len() {
        let mut k = NATIVE_MIN;
        let mut on_edge = false;
        while k <= NATIVE_MAX {
            if native_upper_ns(k) == CLASSIC_EDGES_NS[c] {
                on_edge = true;
            }
            k += 1;
        }
        if !on_edge {
            n += 1;
        }
        c += 1;
    }
    n
}

/// Number of buckets: the zero bucket, the native ones (some split in two) and the overflow
/// bucket.
pub const NUM_BUCKETS: usize = 1 + NATIVE_COUNT + splits() + 1;
/// Index of the overflow bucket (`> 64 s`).
pub const OVERFLOW_BUCKET: usize = NUM_BUCKETS - 1;
/// Slots in the map value: [`NUM_BUCKETS`] rounded up so the value stays 8-byte aligned. A
/// last slot beyond [`NUM_BUCKETS`] is never written.
pub const HIST_SLOTS: usize = (NUM_BUCKETS + 1) & !1;

/// Upper edges (inclusive, ns) of every bucket, and the native bucket each lies in
/// ([`NATIVE_MIN`]` - 1` for the zero bucket, [`NATIVE_MAX`]` + 1` for the overflow one).
const fn layout() -> ([u64; NUM_BUCKETS], [i16; NUM_BUCKETS]) {
    let mut upper = [0u64; NUM_BUCKETS];
    let mut native = [0i16; NUM_BUCKETS];
    upper[0] = native_upper_ns(NATIVE_MIN - 1);
    native[0] = (NATIVE_MIN - 1) as i16;
    let mut i = 1;
    let mut c = 0;
    let mut k = NATIVE_MIN;
    while k <= NATIVE_MAX {
        let hi = native_upper_ns(k);
        while c < CLASSIC_EDGES_NS.len() && CLASSIC_EDGES_NS[c] <= hi {
            if CLASSIC_EDGES_NS[c] < hi {
                upper[i] = CLASSIC_EDGES_NS[c];
                native[i] = k as i16;
                i += 1;
            }
            c += 1;
        }
        upper[i] = hi;
        native[i] = k as i16;
        i += 1;
        k += 1;
    }
    upper[i] = u64::MAX;
    native[i] = (NATIVE_MAX + 1) as i16;
    (upper, native)
}

/// Upper edges (inclusive, ns) of every bucket; `u64::MAX` for the overflow bucket.
pub static UPPER_NS: [u64; NUM_BUCKETS] = layout().0;
/// Native (schema 4) bucket index of every bucket.
static NATIVE_OF: [i16; NUM_BUCKETS] = layout().1;

/// Log-linear buckets that index [`START`]: 16 per power of two of nanoseconds, from 2^9 ns.
const COARSE_MIN_EXP: u32 = 9;
/// Power of two of nanoseconds above the last native edge (64 s < 2^36 ns).
const COARSE_MAX_EXP: u32 = 36;
/// Number of log-linear buckets.
const COARSE_COUNT: usize = ((COARSE_MAX_EXP - COARSE_MIN_EXP) * 16) as usize;
/// Compares after the table lookup: the most bucket edges inside one log-linear bucket (≤ 6.25 %
/// wide: two native edges and a classic one) plus one, checked by a test.
pub const MAX_STEPS: usize = 3;

/// Log-linear bucket of `ns` (`2^9 ≤ ns < 2^36`).
#[inline(always)]
const fn coarse(ns: u64) -> usize {
    let e = msb(ns);
    let sub = ((ns >> (e - 4)) & 15) as usize;
    (e - COARSE_MIN_EXP) as usize * 16 + sub
}

/// For each log-linear bucket, the bucket holding its lower edge.
const fn start() -> [u16; COARSE_COUNT] {
    let (upper, _) = layout();
    let mut out = [0u16; COARSE_COUNT];
    let mut c = 0;
    let mut i = 0;
    while c < COARSE_COUNT {
        let e = COARSE_MIN_EXP + (c / 16) as u32;
        let lower = ((16 + (c % 16)) as u64) << (e - 4);
        while upper[i] < lower {
            i += 1;
        }
        out[c] = i as u16;
        c += 1;
    }
    out
}

/// Where [`bucket_index`] starts comparing, by log-linear bucket.
static START: [u16; COARSE_COUNT] = start();

/// Position of the most significant set bit of `v` (`v > 0`), without a `clz` instruction
/// (BPF has none).
#[inline(always)]
pub const fn msb(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Bucket of a latency of `ns` nanoseconds. Always `< NUM_BUCKETS`.
#[inline(always)]
pub fn bucket_index(ns: u64) -> usize {
    if ns <= UPPER_NS[0] {
        return 0;
    }
    if ns > UPPER_NS[OVERFLOW_BUCKET - 1] {
        return OVERFLOW_BUCKET;
    }
    let Some(&s) = START.get(coarse(ns)) else {
        return OVERFLOW_BUCKET;
    };
    let mut i = s as usize;
    for _ in 0..MAX_STEPS {
        match UPPER_NS.get(i) {
            Some(&hi) if ns > hi => i += 1,
            _ => break,
        }
    }
    if i < NUM_BUCKETS { i } else { OVERFLOW_BUCKET }
}

/// Exclusive lower edge of bucket `i`, in nanoseconds (0 for the zero bucket).
pub fn bucket_lower_ns(i: usize) -> u64 {
    if i == 0 || i >= NUM_BUCKETS {
        return if i == 0 {
            0
        } else {
            UPPER_NS[OVERFLOW_BUCKET - 1]
        };
    }
    UPPER_NS[i - 1]
}

/// Inclusive upper edge of bucket `i`, in nanoseconds (`u64::MAX` for the overflow bucket).
pub fn bucket_upper_ns(i: usize) -> u64 {
    UPPER_NS[i.min(OVERFLOW_BUCKET)]
}

/// The native-histogram bucket a kernel bucket lies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Native {
    /// The zero bucket, `[0, 2^-20 s]`.
    Zero,
    /// Schema-4 bucket `k`: `(2^((k-1)/16), 2^(k/16)]` seconds.
    Bucket(i32),
    /// Beyond 64 s.
    Overflow,
}

#[cfg(not(target_arch = "bpf"))]
impl Native {
    /// Exclusive lower edge in seconds (0 for the zero bucket).
    pub fn lower_seconds(self) -> f64 {
        match self {
            Native::Zero => 0.0,
            Native::Bucket(k) => exp2_16(k - 1),
            Native::Overflow => exp2_16(NATIVE_MAX),
        }
    }

    /// Inclusive upper edge in seconds (infinite for the overflow bucket).
    pub fn upper_seconds(self) -> f64 {
        match self {
            Native::Zero => ZERO_THRESHOLD_SECONDS,
            Native::Bucket(k) => exp2_16(k),
            Native::Overflow => f64::INFINITY,
        }
    }
}

#[cfg(not(target_arch = "bpf"))]
/// `2^(k/16)` seconds, as exact as `f64` gets (`ROOT16` rounded, times a power of two).
fn exp2_16(k: i32) -> f64 {
    let m = k.div_euclid(PER_OCTAVE);
    let r = ROOT16[k.rem_euclid(PER_OCTAVE) as usize] as f64 / 18_446_744_073_709_551_616.0;
    let mut x = r;
    let mut e = m;
    while e > 0 {
        x *= 2.0;
        e -= 1;
    }
    while e < 0 {
        x /= 2.0;
        e += 1;
    }
    x
}

/// The native bucket kernel bucket `i` lies in.
pub fn native_of(i: usize) -> Native {
    match NATIVE_OF.get(i).map(|&k| k as i32) {
        Some(k) if (NATIVE_MIN..=NATIVE_MAX).contains(&k) => Native::Bucket(k),
        Some(k) if k < NATIVE_MIN => Native::Zero,
        _ => Native::Overflow,
    }
}

/// The kernel bucket whose upper edge is classic boundary `c` (an index into
/// [`CLASSIC_EDGES_NS`]).
pub fn classic_bucket(c: usize) -> usize {
    bucket_index(CLASSIC_EDGES_NS[c])
}

#[cfg(test)]
mod tests;
