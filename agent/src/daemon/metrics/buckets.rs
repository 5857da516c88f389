//! The histogram buckets Prometheus sees: classic `le` buckets at
//! [`CLASSIC_EDGES_NS`] and the native (schema 4) buckets, both exact sums of kernel buckets
//! (see `kite_common::hist`).

use kite_common::hist::{CLASSIC_EDGES_NS, Native, SCHEMA, ZERO_THRESHOLD_SECONDS};
use prometheus_client::encoding::{NativeHistogram, NativeHistogramBuckets};

use crate::stats::Histogram;

/// The classic `le` boundaries, seconds.
pub fn edges() -> impl Iterator<Item = f64> {
    CLASSIC_EDGES_NS.iter().map(|&ns| ns as f64 / 1e9)
}

/// `le` boundary (seconds) and count for every classic bucket, the last one `+Inf`.
/// Per-bucket (non-cumulative) counts, as prometheus-client expects them.
pub(super) fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(CLASSIC_EDGES_NS.len() + 1);
    let mut below_prev = 0u64;
    for &ns in &CLASSIC_EDGES_NS {
        let below = h.count_at_most(ns);
        out.push((ns as f64 / 1e9, below - below_prev));
        below_prev = below;
    }
    out.push((f64::INFINITY, h.count() - below_prev));
    out
}

/// A native histogram's sparse form: spans of consecutive buckets and the count deltas.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Sparse {
    pub zero_count: u64,
    pub spans: Vec<(i32, u32)>,
    pub deltas: Vec<i64>,
}

impl Sparse {
    /// From the histogram's native buckets. Observations beyond the last bucket (64 s) are
    /// counted in the native bucket just above it: a native histogram has no `+Inf` bucket.
    pub fn new(h: &Histogram) -> Self {
        let mut s = Sparse::default();
        let (mut next, mut prev) = (None::<i32>, 0i64);
        for (b, c) in h.native() {
            let k = match b {
                Native::Zero => {
                    s.zero_count += c;
                    continue;
                }
                Native::Bucket(k) => k,
                Native::Overflow => kite_common::hist::NATIVE_MAX + 1,
            };
            match (next, s.spans.last_mut()) {
                (Some(n), Some(span)) if n == k => span.1 += 1,
                (Some(n), _) => s.spans.push((k - n, 1)),
                (None, _) => s.spans.push((k, 1)),
            }
            next = Some(k + 1);
            s.deltas.push(c as i64 - prev);
            prev = c as i64;
        }
        s
    }

    /// As prometheus-client takes it.
    pub fn native(&self) -> NativeHistogram<'_> {
        NativeHistogram {
            schema: SCHEMA,
            zero_threshold: ZERO_THRESHOLD_SECONDS,
            zero_count: self.zero_count,
            negative: NativeHistogramBuckets {
                spans: &[],
                deltas: &[],
            },
            positive: NativeHistogramBuckets {
                spans: &self.spans,
                deltas: &self.deltas,
            },
            created: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_edges_are_the_opentelemetry_ones() {
        let e: Vec<f64> = edges().collect();
        for otel in [
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        ] {
            assert!(e.contains(&otel), "{otel}");
        }
        assert!(e.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(e[0], 0.000_05);
    }

    #[test]
    fn buckets_partition_the_histogram() {
        let mut h = Histogram::default();
        for ns in [
            50_000,
            900_000,
            3_000_000,
            5_000_000,
            200_000_000,
            100_000_000_000,
        ] {
            h.record(ns);
        }
        let b = buckets(&h);
        assert_eq!(b.len(), CLASSIC_EDGES_NS.len() + 1);
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), 6);
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 1));
        let cum = |le: f64| {
            b.iter()
                .take_while(|(e, _)| *e <= le)
                .map(|(_, c)| c)
                .sum::<u64>()
        };
        // `le` includes the edge: 50 µs is in le="0.00005", 5 ms in le="0.005".
        assert_eq!(cum(0.000_05), 1);
        assert_eq!(cum(0.0025), 2);
        assert_eq!(cum(0.005), 4);
        assert_eq!(cum(0.25), 5);
    }

    #[test]
    fn sparse_spans_and_deltas() {
        let mut h = Histogram::default();
        // Zero bucket, then native buckets 0 (≤ 1 s) twice, 1 and 7.
        for ns in [10, 999_999_999, 1_000_000_000, 1_040_000_000, 1_300_000_000] {
            h.record(ns);
        }
        let s = Sparse::new(&h);
        assert_eq!(s.zero_count, 1);
        assert_eq!(s.spans, vec![(0, 2), (5, 1)]);
        assert_eq!(s.deltas, vec![2, -1, 0]);
        let total: u64 = s.zero_count + {
            let mut c = 0i64;
            s.deltas
                .iter()
                .map(|d| {
                    c += d;
                    c as u64
                })
                .sum::<u64>()
        };
        assert_eq!(total, h.count());
    }
}
