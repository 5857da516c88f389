//! The histogram buckets Prometheus sees.
//!
//! Bucket boundaries are a coarse subset of the kernel's own bucket edges, chosen near the
//! OpenTelemetry HTTP boundaries (extended below 5 ms for fast services): every `le` is an
//! exact kernel edge, so bucket counts are exact, not interpolated.

use std::sync::OnceLock;

use kite_common::hist::{OVERFLOW_BUCKET, bucket_index, bucket_lower_ns};

use crate::stats::Histogram;

/// Target boundaries, seconds; each is replaced by the nearest kernel edge.
const TARGET_EDGES: [f64; 23] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.007_5, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
];

/// The kernel bucket indices whose lower edges are the Prometheus `le` boundaries.
pub fn edges() -> &'static [usize] {
    static EDGES: OnceLock<Vec<usize>> = OnceLock::new();
    EDGES.get_or_init(|| {
        let mut v: Vec<usize> = TARGET_EDGES
            .iter()
            .map(|s| {
                let ns = (s * 1e9) as u64;
                let i = bucket_index(ns);
                // The nearer of this bucket's lower edge and the next one.
                let (lo, hi) = (bucket_lower_ns(i), bucket_lower_ns(i + 1));
                if ns - lo <= hi - ns { i } else { i + 1 }
            })
            .filter(|i| *i < OVERFLOW_BUCKET)
            .collect();
        v.dedup();
        v
    })
}

/// `le` boundary (seconds) and cumulative count for every Prometheus bucket, the last one
/// `+Inf`. Per-bucket (non-cumulative) counts, as prometheus-client expects them.
pub(super) fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    let edges = edges();
    let mut out = Vec::with_capacity(edges.len() + 1);
    let mut below_prev = 0u64;
    for &i in edges {
        let below = h.count_below(bucket_lower_ns(i));
        out.push((bucket_lower_ns(i) as f64 / 1e9, below - below_prev));
        below_prev = below;
    }
    out.push((f64::INFINITY, h.count() - below_prev));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_exact_kernel_edges_near_the_targets() {
        let e = edges();
        assert!(e.len() >= 20 && e.len() <= 30, "{}", e.len());
        for (i, t) in e.iter().zip(TARGET_EDGES) {
            let le = bucket_lower_ns(*i) as f64 / 1e9;
            assert!((le - t).abs() / t <= 1.0 / 32.0 + 1e-9, "{le} vs {t}");
        }
        assert!(e.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn buckets_partition_the_histogram() {
        let mut h = Histogram::default();
        for ns in [
            50_000,
            900_000,
            3_000_000,
            3_000_000,
            200_000_000,
            100_000_000_000,
        ] {
            h.record(ns);
        }
        let b = buckets(&h);
        assert_eq!(b.len(), edges().len() + 1);
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), 6);
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 1));
        // Cumulative at le ≈ 5 ms: the 50 µs, 900 µs and two 3 ms requests.
        let mut cum = 0;
        for (le, c) in &b {
            cum += c;
            if (*le - 0.005).abs() < 0.0002 {
                assert_eq!(cum, 4);
            }
        }
    }
}
