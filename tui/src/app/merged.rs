//! A latency histogram merged from several ([`Merged`]), for the percentiles of a group.
//!
//! Agents send the non-empty buckets of Prometheus' native-histogram schema 4: the zero
//! bucket `[0, 2^-20]` s, `(2^((k-1)/16), 2^(k/16)]` s for `k` in [`NATIVE_MIN`]`..=`
//! [`NATIVE_MAX`], and the overflow bucket beyond 64 s — 418 buckets in all. A merge is then
//! a dense array of 418 counts indexed by bucket: adding a bucket is finding its index from
//! its upper edge's exponent and mantissa (no sort, no search through the others), and a
//! quantile is one walk over the range of non-empty ones. Buckets with other edges (an older
//! or different agent) are kept aside and merged by sorting, as before; either way the
//! quantile is the agent's own estimate (Prometheus' `histogram_quantile`).

use std::sync::OnceLock;

use kite_proto::v1;

/// First schema-4 bucket above the zero bucket: `(2^-20, 2^(-20 + 1/16)]` s.
pub const NATIVE_MIN: i32 = -20 * 16 + 1;
/// Last schema-4 bucket below the overflow bucket: `(…, 2^6]` s = 64 s.
pub const NATIVE_MAX: i32 = 6 * 16;
/// The zero bucket, the schema-4 buckets, the overflow bucket.
const SLOTS: usize = (NATIVE_MAX - NATIVE_MIN + 1) as usize + 2;
/// The zero bucket's upper edge, seconds.
const ZERO_THRESHOLD: f64 = 1.0 / (1u64 << 20) as f64;
/// How close (relative) an edge from the wire must be to a native edge to be that edge.
const EDGE_TOLERANCE: f64 = 1e-12;

/// `2^(j/16)` for `j` in `0..=16`.
fn roots() -> &'static [f64; 17] {
    static ROOTS: OnceLock<[f64; 17]> = OnceLock::new();
    ROOTS.get_or_init(|| std::array::from_fn(|j| 2f64.powf(j as f64 / 16.0)))
}

/// `(lower, upper]` of each slot, seconds.
fn edges() -> &'static [(f64, f64); SLOTS] {
    static EDGES: OnceLock<[(f64, f64); SLOTS]> = OnceLock::new();
    EDGES.get_or_init(|| {
        std::array::from_fn(|s| match s {
            0 => (0.0, ZERO_THRESHOLD),
            s if s == SLOTS - 1 => (edge(NATIVE_MAX), f64::INFINITY),
            s => {
                let k = NATIVE_MIN + s as i32 - 1;
                (edge(k - 1), edge(k))
            }
        })
    })
}

/// `2^(k/16)` seconds.
fn edge(k: i32) -> f64 {
    roots()[k.rem_euclid(16) as usize] * 2f64.powi(k.div_euclid(16))
}

fn near(x: f64, y: f64) -> bool {
    (x - y).abs() <= y.abs() * EDGE_TOLERANCE
}

/// The slot of bucket `(lower, upper]` when it is a native bucket.
fn slot(lower: f64, upper: f64) -> Option<usize> {
    if upper == f64::INFINITY {
        return near(lower, edge(NATIVE_MAX)).then_some(SLOTS - 1);
    }
    if lower == 0.0 {
        return (upper == ZERO_THRESHOLD).then_some(0);
    }
    // upper = 2^m · mantissa, mantissa in [1, 2): k = 16·m + j where 2^(j/16) ≈ mantissa.
    let bits = upper.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 || exp == 0x7ff || upper < 0.0 {
        return None;
    }
    let m = exp - 1023;
    let mantissa = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    let r = roots();
    let j = r.partition_point(|x| *x < mantissa).min(16);
    let j = if j > 0 && mantissa - r[j - 1] < r[j] - mantissa {
        j - 1
    } else {
        j
    };
    let k = 16 * m + j as i32;
    if !(NATIVE_MIN..=NATIVE_MAX).contains(&k) {
        return None;
    }
    let s = (k - NATIVE_MIN) as usize + 1;
    is_slot(s, lower, upper).then_some(s)
}

/// Whether `(lower, upper]` is slot `s`'s bucket.
fn is_slot(s: usize, lower: f64, upper: f64) -> bool {
    let (lo, hi) = edges()[s];
    near(lower, lo) && near(upper, hi)
}

/// A latency histogram merged from several: buckets with the same edges add up.
///
/// [`Merged::clear`] empties it for the next merge without giving its memory back: a
/// caller merging many groups one after the other uses one array for all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// Counts of the native buckets by slot (empty until the first one; then every slot).
    counts: Vec<u64>,
    /// Some native bucket has counts, all within `lo..=hi`.
    used: bool,
    lo: usize,
    hi: usize,
    /// Buckets that are not native: (lower, upper, count), by lower edge with no repeats
    /// once `merged`.
    other: Vec<(f64, f64, u64)>,
    merged: bool,
}

impl Merged {
    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        if self.used {
            self.counts[self.lo..=self.hi].fill(0);
        }
        self.used = false;
        self.other.clear();
        self.merged = false;
    }

    /// Adds a histogram's buckets.
    pub fn add(&mut self, h: &v1::Histogram) {
        // An agent sends its buckets in order: a bucket that starts where the previous one
        // ended is most often the next slot.
        let mut prev: Option<(usize, u64)> = None;
        for b in &h.buckets {
            if !(b.lower_seconds.is_finite() && b.lower_seconds >= 0.0 && b.count > 0) {
                continue;
            }
            let next = prev
                .filter(|&(s, upper)| {
                    upper == b.lower_seconds.to_bits()
                        && s + 1 < SLOTS
                        && is_slot(s + 1, b.lower_seconds, b.upper_seconds)
                })
                .map(|(s, _)| s + 1);
            let found = next.or_else(|| slot(b.lower_seconds, b.upper_seconds));
            prev = found.map(|s| (s, b.upper_seconds.to_bits()));
            match found {
                Some(s) => {
                    if self.counts.is_empty() {
                        self.counts = vec![0; SLOTS];
                    }
                    if !self.used {
                        (self.lo, self.hi, self.used) = (s, s, true);
                    }
                    self.counts[s] = self.counts[s].saturating_add(b.count);
                    self.lo = self.lo.min(s);
                    self.hi = self.hi.max(s);
                }
                None => {
                    self.merged = false;
                    self.other.push((b.lower_seconds, b.upper_seconds, b.count));
                }
            }
        }
    }

    /// The native buckets: (lower, upper, count), non-empty, by edge.
    fn native(&self) -> impl Iterator<Item = (f64, f64, u64)> + '_ {
        let e = edges();
        let range = if self.used {
            self.lo..self.hi + 1
        } else {
            0..0
        };
        range
            .filter(|s| self.counts[*s] > 0)
            .map(move |s| (e[s].0, e[s].1, self.counts[s]))
    }

    /// Sorts and merges the buckets that are not native (with the native ones, when there
    /// are both).
    pub fn finish(&mut self) {
        if self.merged || self.other.is_empty() {
            self.merged = true;
            return;
        }
        let native: Vec<(f64, f64, u64)> = self.native().collect();
        self.other.extend(native);
        if self.used {
            self.counts[self.lo..=self.hi].fill(0);
            self.used = false;
        }
        self.other.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let mut out: Vec<(f64, f64, u64)> = Vec::with_capacity(self.other.len());
        for &(lo, hi, c) in &self.other {
            match out.last_mut() {
                Some(last) if last.0 == lo => last.2 = last.2.saturating_add(c),
                _ => out.push((lo, hi, c)),
            }
        }
        self.other = out;
        self.merged = true;
    }

    /// Observations.
    pub fn count(&self) -> u64 {
        let native: u64 = self.native().map(|b| b.2).sum();
        native + self.other.iter().map(|b| b.2).sum::<u64>()
    }

    /// The `q`-quantile in seconds as the agent computes it (Prometheus'
    /// `histogram_quantile` over native buckets): the bucket holding rank `q·n`, linear
    /// inside it; the overflow bucket (upper +Inf) gives its lower edge. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !self.other.is_empty() && !self.merged {
            let mut m = self.clone();
            m.finish();
            return m.quantile(q);
        }
        if self.other.is_empty() {
            quantile(self.native(), self.count(), q)
        } else {
            quantile(self.other.iter().copied(), self.count(), q)
        }
    }
}

/// The `q`-quantile of `n` observations in `buckets` (by edge).
fn quantile(buckets: impl Iterator<Item = (f64, f64, u64)>, n: u64, q: f64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let target = q.clamp(0.0, 1.0) * n as f64;
    let mut cum = 0u64;
    let mut last = None;
    for (lo, hi, c) in buckets {
        last = Some(lo);
        if (cum + c) as f64 >= target {
            if hi.is_infinite() {
                return Some(lo);
            }
            let frac = ((target - cum as f64) / c as f64).clamp(0.0, 1.0);
            return Some(lo + frac * (hi - lo));
        }
        cum += c;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_buckets_find_their_slot_and_others_do_not() {
        use kite_common::hist::Native;
        for k in NATIVE_MIN..=NATIVE_MAX {
            let b = Native::Bucket(k);
            let s = slot(b.lower_seconds(), b.upper_seconds()).unwrap_or_else(|| panic!("{k}"));
            assert_eq!(s, (k - NATIVE_MIN) as usize + 1);
            let (lo, hi) = edges()[s];
            assert!(
                near(lo, b.lower_seconds()) && near(hi, b.upper_seconds()),
                "{k}"
            );
        }
        let (z, o) = (Native::Zero, Native::Overflow);
        assert_eq!(slot(z.lower_seconds(), z.upper_seconds()), Some(0));
        assert_eq!(slot(o.lower_seconds(), o.upper_seconds()), Some(SLOTS - 1));
        // Edges that are not schema 4's.
        assert_eq!(slot(100e-6, 110e-6), None);
        assert_eq!(slot(1e-3, 2e-3), None);
        assert_eq!(slot(0.0, 1e-6), None);
        assert_eq!(slot(1.0, f64::NAN), None);
        assert_eq!(slot(2f64.powi(8), 2f64.powf(8.0 + 1.0 / 16.0)), None);
    }

    #[test]
    fn native_and_other_buckets_merge_into_one_distribution() {
        use kite_common::hist::Native;
        let native = |k: i32, count: u64| v1::Bucket {
            lower_seconds: Native::Bucket(k).lower_seconds(),
            upper_seconds: Native::Bucket(k).upper_seconds(),
            count,
        };
        // 2^-10 s ≈ 977 µs: k = -160.
        let mut m = Merged::default();
        m.add(&v1::Histogram {
            buckets: vec![native(-160, 10), native(-150, 10)],
        });
        let dense = m.quantile(0.25).unwrap();
        assert!(near(
            dense,
            Native::Bucket(-160).lower_seconds()
                + 0.5
                    * (Native::Bucket(-160).upper_seconds() - Native::Bucket(-160).lower_seconds())
        ));
        // A bucket with other edges below them: its 5 come first.
        m.add(&v1::Histogram {
            buckets: vec![v1::Bucket {
                lower_seconds: 100e-6,
                upper_seconds: 110e-6,
                count: 5,
            }],
        });
        assert_eq!(m.count(), 25);
        let p = m.quantile(0.1).unwrap();
        assert!((p - 105e-6).abs() < 1e-12, "{p}");
        assert!(near(
            m.quantile(1.0).unwrap(),
            Native::Bucket(-150).upper_seconds()
        ));
    }
}
