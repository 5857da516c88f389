use super::*;
use std::vec::Vec;

/// The bucket of `ns` by binary search over the edges: the reference for [`bucket_index`].
fn reference(ns: u64) -> usize {
    UPPER_NS.partition_point(|&hi| hi < ns)
}

#[test]
fn layout_constants() {
    // Zero bucket, 416 native buckets, 17 classic splits (0.25, 0.5 and 1 s are native edges),
    // overflow.
    assert_eq!(NUM_BUCKETS, 1 + 416 + 17 + 1);
    const { assert!(HIST_SLOTS.is_multiple_of(2) && HIST_SLOTS >= NUM_BUCKETS) };
    assert_eq!(UPPER_NS[0], 953);
    assert_eq!(UPPER_NS[OVERFLOW_BUCKET - 1], 64_000_000_000);
    assert_eq!(UPPER_NS[OVERFLOW_BUCKET], u64::MAX);
    // ≥ 60 s is still resolved before the overflow bucket.
    assert!(bucket_index(60_000_000_000) < OVERFLOW_BUCKET);
    assert_eq!(bucket_index(64_000_000_001), OVERFLOW_BUCKET);
}

#[test]
fn native_edges_are_floor_of_powers_of_two_to_the_sixteenth() {
    for k in NATIVE_MIN - 1..=NATIVE_MAX {
        let exact = 1e9 * 2f64.powf(k as f64 / 16.0);
        let e = native_upper_ns(k);
        assert!(
            e as f64 <= exact * (1.0 + 1e-15) && exact < (e + 1) as f64,
            "k={k}: {e} vs {exact}"
        );
    }
    // Powers of two of seconds are exact.
    assert_eq!(native_upper_ns(0), 1_000_000_000);
    assert_eq!(native_upper_ns(-16), 500_000_000);
    assert_eq!(native_upper_ns(96), 64_000_000_000);
    assert_eq!(native_upper_ns(-9 * 16), 1_953_125);
}

#[test]
fn edges_strictly_increase_and_every_classic_edge_is_one() {
    assert!(UPPER_NS.windows(2).all(|w| w[0] < w[1]));
    for (c, &edge) in CLASSIC_EDGES_NS.iter().enumerate() {
        let i = classic_bucket(c);
        assert_eq!(bucket_upper_ns(i), edge, "classic edge {edge}");
        assert_eq!(bucket_index(edge + 1), i + 1);
    }
}

#[test]
fn bucket_index_agrees_with_binary_search_at_every_edge() {
    for &hi in &UPPER_NS[..OVERFLOW_BUCKET] {
        for ns in [hi.saturating_sub(1), hi, hi + 1] {
            assert_eq!(bucket_index(ns), reference(ns), "ns={ns}");
        }
    }
    let mut v = 0u64;
    while v < 1 << 37 {
        let i = bucket_index(v);
        assert_eq!(i, reference(v), "v={v}");
        assert!(bucket_lower_ns(i) < v || v == 0, "v={v} i={i}");
        assert!(v <= bucket_upper_ns(i), "v={v} i={i}");
        v = v + 1 + v / 97;
    }
}

#[test]
fn the_table_start_is_at_most_max_steps_short() {
    // Every log-linear bucket's last value is found within MAX_STEPS compares of its start.
    for (c, &start) in START.iter().enumerate() {
        let e = COARSE_MIN_EXP + (c / 16) as u32;
        let lower = ((16 + (c % 16)) as u64) << (e - 4);
        let last = lower + (1u64 << (e - 4)) - 1;
        assert_eq!(coarse(lower), c);
        assert_eq!(coarse(last), c);
        if lower > UPPER_NS[OVERFLOW_BUCKET - 1] {
            continue; // never looked up: the overflow bucket is decided first
        }
        let need = reference(last.min(UPPER_NS[OVERFLOW_BUCKET - 1])) - start as usize;
        assert!(need <= MAX_STEPS, "coarse {c}: {need} steps");
    }
}

#[test]
fn kernel_buckets_nest_in_native_buckets() {
    assert_eq!(native_of(0), Native::Zero);
    assert_eq!(native_of(OVERFLOW_BUCKET), Native::Overflow);
    for i in 1..OVERFLOW_BUCKET {
        let Native::Bucket(k) = native_of(i) else {
            panic!("bucket {i}")
        };
        assert!(native_upper_ns(k - 1) <= bucket_lower_ns(i), "bucket {i}");
        assert!(bucket_upper_ns(i) <= native_upper_ns(k), "bucket {i}");
        let (lo, hi) = (
            Native::Bucket(k).lower_seconds(),
            Native::Bucket(k).upper_seconds(),
        );
        assert!((hi / lo - 2f64.powf(1.0 / 16.0)).abs() < 1e-12);
        assert!((hi * 1e9 - native_upper_ns(k) as f64).abs() < 1.0);
    }
    // Every native bucket is there, in order.
    let mut ks: Vec<i32> = (1..OVERFLOW_BUCKET)
        .filter_map(|i| match native_of(i) {
            Native::Bucket(k) => Some(k),
            _ => None,
        })
        .collect();
    ks.dedup();
    assert_eq!(ks, (NATIVE_MIN..=NATIVE_MAX).collect::<Vec<_>>());
    assert_eq!(Native::Zero.upper_seconds(), 2f64.powi(-20));
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
fn relative_width_at_most_a_native_bucket() {
    for i in 1..OVERFLOW_BUCKET {
        let (lo, hi) = (bucket_lower_ns(i) as f64, bucket_upper_ns(i) as f64);
        // Edges are whole nanoseconds (floors of the true edges).
        assert!(
            hi < (lo + 1.0) * 2f64.powf(1.0 / 16.0),
            "bucket {i}: {lo}..{hi}"
        );
    }
}
