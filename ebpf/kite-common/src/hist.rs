//! Log-linear latency histogram layout (HDR-style), shared by the kernel and user space.
//!
//! Values are nanoseconds. Below 1024 ns the buckets are linear, 64 ns wide (16 buckets).
//! From 2^10 ns (≈1 µs) to 2^36 ns (≈68.7 s) every power of two is split into 16 equal
//! sub-buckets, so a bucket is at most 1/16 of its lower edge wide: reporting a bucket's
//! midpoint is off by at most 1/32 ≈ 3.1 % of the true value. Everything from 2^36 ns up lands in
//! one overflow bucket.
//!
//! The kernel only ever calls [`bucket_index`]; user space uses the edges to turn bucket counts
//! into percentiles and Prometheus buckets.

/// Sub-buckets per power of two (log2).
pub const SUB_BITS: u32 = 4;
/// Sub-buckets per power of two.
pub const SUB_COUNT: usize = 1 << SUB_BITS;
/// Exponent of the first log-linear octave: 2^10 ns = 1.024 µs.
pub const MIN_EXP: u32 = 10;
/// Exponent where the overflow bucket starts: 2^36 ns ≈ 68.7 s.
pub const MAX_EXP: u32 = 36;
/// Width of the linear buckets below 2^[`MIN_EXP`] ns (log2): 64 ns.
pub const LINEAR_SHIFT: u32 = MIN_EXP - SUB_BITS;
/// Number of meaningful buckets, the overflow bucket included.
pub const NUM_BUCKETS: usize = SUB_COUNT + (MAX_EXP - MIN_EXP) as usize * SUB_COUNT + 1;
/// Index of the overflow bucket (`>= 2^MAX_EXP` ns).
pub const OVERFLOW_BUCKET: usize = NUM_BUCKETS - 1;
/// Slots in the map value: [`NUM_BUCKETS`] rounded up so the value stays 8-byte aligned. The last
/// slot is never written.
pub const HIST_SLOTS: usize = (NUM_BUCKETS + 1) & !1;

/// Position of the most significant set bit of `v` (`v > 0`), without a `clz` instruction
/// (BPF has none).
#[inline(always)]
pub fn msb(mut v: u64) -> u32 {
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
    if ns < 1 << MIN_EXP {
        return (ns >> LINEAR_SHIFT) as usize;
    }
    if ns >= 1 << MAX_EXP {
        return OVERFLOW_BUCKET;
    }
    let e = msb(ns);
    let sub = ((ns >> (e - SUB_BITS)) as usize) & (SUB_COUNT - 1);
    SUB_COUNT + (e - MIN_EXP) as usize * SUB_COUNT + sub
}

/// Inclusive lower edge of bucket `i`, in nanoseconds.
pub const fn bucket_lower_ns(i: usize) -> u64 {
    if i < SUB_COUNT {
        return (i as u64) << LINEAR_SHIFT;
    }
    if i >= OVERFLOW_BUCKET {
        return 1 << MAX_EXP;
    }
    let octave = (i - SUB_COUNT) / SUB_COUNT;
    let sub = (i - SUB_COUNT) % SUB_COUNT;
    let e = MIN_EXP + octave as u32;
    ((SUB_COUNT + sub) as u64) << (e - SUB_BITS)
}

/// Exclusive upper edge of bucket `i`, in nanoseconds (`u64::MAX` for the overflow bucket).
pub const fn bucket_upper_ns(i: usize) -> u64 {
    if i >= OVERFLOW_BUCKET {
        return u64::MAX;
    }
    bucket_lower_ns(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_constants() {
        assert_eq!(NUM_BUCKETS, 433);
        assert_eq!(HIST_SLOTS, 434);
        assert_eq!(bucket_lower_ns(OVERFLOW_BUCKET), 1 << 36);
        // ≥ 60 s is still resolved before the overflow bucket.
        assert!(bucket_index(60_000_000_000) < OVERFLOW_BUCKET);
    }

    #[test]
    fn msb_matches_leading_zeros() {
        for shift in 0..64 {
            for v in [
                1u64 << shift,
                (1u64 << shift) | 1,
                (1u64 << shift).wrapping_mul(3),
            ] {
                if v != 0 {
                    assert_eq!(msb(v), 63 - v.leading_zeros(), "v={v}");
                }
            }
        }
    }

    #[test]
    fn every_value_falls_inside_its_bucket() {
        let mut v = 0u64;
        while v < 1 << 37 {
            let i = bucket_index(v);
            assert!(bucket_lower_ns(i) <= v, "v={v} i={i}");
            assert!(v < bucket_upper_ns(i), "v={v} i={i}");
            v = v + 1 + v / 7;
        }
    }

    #[test]
    fn edges_are_contiguous_and_increasing() {
        for i in 0..OVERFLOW_BUCKET {
            assert!(bucket_lower_ns(i) < bucket_upper_ns(i));
            assert_eq!(bucket_upper_ns(i), bucket_lower_ns(i + 1));
            assert_eq!(bucket_index(bucket_lower_ns(i)), i);
            assert_eq!(bucket_index(bucket_upper_ns(i) - 1), i);
        }
    }

    #[test]
    fn relative_width_at_most_one_sixteenth_from_one_microsecond() {
        for i in bucket_index(1_000)..OVERFLOW_BUCKET {
            let (lo, hi) = (bucket_lower_ns(i), bucket_upper_ns(i));
            let width = (hi - lo) as f64;
            if i >= SUB_COUNT {
                assert!(
                    width / lo as f64 <= 1.0 / 16.0 + 1e-12,
                    "bucket {i}: {lo}..{hi}"
                );
            }
            // The midpoint stands for any value of the bucket within 5 %.
            let mid = (lo + hi) as f64 / 2.0;
            assert!((mid - lo as f64) / (lo as f64) < 0.05);
            assert!((hi as f64 - mid) / (hi as f64) < 0.05);
        }
    }
}
