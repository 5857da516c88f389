//! The cap on exported label sets of the `http_*` families (`--max-series`).
//!
//! Label sets are admitted in the order they first appear (the busiest first among those that
//! appear in the same scrape) until the cap is reached; later ones are folded into one
//! overflow series per family, labelled `otel_metric_overflow="true"` as OpenTelemetry SDKs do.
//! Both decisions are sticky for as long as the label set exists, so no series flaps in and
//! out between scrapes and every exported counter, the overflow series' included, only grows:
//! what an overflowed label set had recorded stays in the overflow series after it goes away.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use super::{Agg, Labels};
use crate::stats::Series;

/// Default `--max-series`. A label set is 25 lines of classic text (20 `le` buckets, `+Inf`,
/// `_sum`, `_count`, two byte counters) each repeating its labels: 5.8 KB measured with a
/// cgroup label, 10.2 KB with typical Kubernetes names (namespace, a Deployment's pod name,
/// kind, owner, a cloud node name), so 800 keep `/metrics` near 8 MB in a cluster, under the
/// 10 MB a scrape should stay within, however many endpoints there are.
pub const DEFAULT_MAX_SERIES: usize = 800;

/// The label OpenTelemetry SDKs put on the series that holds what exceeded the cardinality
/// limit.
pub const OVERFLOW_LABEL: &str = "otel_metric_overflow";

/// A label set's identity: its family (0 server, 1 client) and a 64-bit hash of its labels
/// (two label sets sharing a hash would share a decision, and still be counted).
type Key = (usize, u64);

fn key(family: usize, labels: &Labels) -> Key {
    let mut h = DefaultHasher::new();
    labels.hash(&mut h);
    (family, h.finish())
}

fn add(to: &mut Series, s: &Series) {
    to.count += s.count;
    to.latency_sum_ns += s.latency_sum_ns;
    to.req_bytes += s.req_bytes;
    to.resp_bytes += s.resp_bytes;
    to.hist.add(&s.hist);
}

/// Admission decisions, kept from one scrape to the next.
#[derive(Debug, Default)]
pub(super) struct Cap {
    admitted: HashSet<Key>,
    /// Folded label sets with what they had recorded at the last scrape.
    folded: HashMap<Key, Series>,
    /// Per family: what folded label sets that went away had recorded.
    retired: [Series; 2],
    /// Per family: label sets folded so far.
    folded_total: [u64; 2],
    /// `k8s_node_name`, when the series carry it (the overflow series does too).
    node: Option<(String, String)>,
}

/// Per family, what a scrape folded.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Folded {
    /// Label sets folded into the overflow series so far (also those gone since).
    pub total: u64,
    /// Label sets in the overflow series now.
    pub now: usize,
    /// Requests in the overflow series.
    pub requests: u64,
}

impl Cap {
    /// Keeps at most `max` label sets over both families of `by_family` and replaces the rest
    /// with one overflow series per family (present once anything was folded in it).
    pub fn apply(&mut self, max: usize, by_family: &mut [BTreeMap<Labels, Agg>; 2]) -> [Folded; 2] {
        // Pods' series carry the node, a host cgroup's may not: any one that does.
        if self.node.is_none()
            && let Some(node) = by_family
                .iter()
                .flat_map(BTreeMap::keys)
                .find_map(|l| l.iter().find(|(k, _)| k == "k8s_node_name"))
        {
            self.node = Some(node.clone());
        }
        let keys: [Vec<Key>; 2] = [0, 1].map(|f| by_family[f].keys().map(|l| key(f, l)).collect());
        let seen: HashSet<Key> = keys.iter().flatten().copied().collect();
        self.admitted.retain(|k| seen.contains(k));
        for (k, s) in self.folded.extract_if(|k, _| !seen.contains(k)) {
            add(&mut self.retired[k.0], &s);
        }
        // New label sets, the busiest first (ties in label order: deterministic).
        let mut new: Vec<(u64, Key)> = Vec::new();
        for f in 0..2 {
            for ((_, agg), k) in by_family[f].iter().zip(&keys[f]) {
                if !self.admitted.contains(k) && !self.folded.contains_key(k) {
                    new.push((agg.series.count, *k));
                }
            }
        }
        new.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        for (_, k) in new {
            if self.admitted.len() < max {
                self.admitted.insert(k);
            } else {
                self.folded.insert(k, Series::default());
                self.folded_total[k.0] += 1;
            }
        }
        let mut out: [Folded; 2] = Default::default();
        for f in 0..2 {
            if self.folded_total[f] == 0 {
                continue;
            }
            let mut overflow = self.retired[f].clone();
            let mut now = 0;
            let map = std::mem::take(&mut by_family[f]);
            for ((labels, agg), k) in map.into_iter().zip(&keys[f]) {
                match self.folded.get_mut(k) {
                    Some(last) => {
                        add(&mut overflow, &agg.series);
                        *last = agg.series;
                        now += 1;
                    }
                    None => {
                        by_family[f].insert(labels, agg);
                    }
                }
            }
            out[f] = Folded {
                total: self.folded_total[f],
                now,
                requests: overflow.count,
            };
            by_family[f].insert(self.overflow_labels(), Agg { series: overflow });
        }
        out
    }

    /// The labels of the overflow series.
    pub fn overflow_labels(&self) -> Labels {
        let mut l = vec![(OVERFLOW_LABEL.to_string(), "true".to_string())];
        l.extend(self.node.clone());
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(port: u16) -> Labels {
        vec![
            ("server_port".into(), port.to_string()),
            ("k8s_node_name".into(), "n".into()),
        ]
    }

    fn agg(count: u64) -> Agg {
        let mut series = Series {
            count,
            latency_sum_ns: count * 1_000_000,
            req_bytes: count * 100,
            resp_bytes: count * 1_000,
            ..Series::default()
        };
        for _ in 0..count {
            series.hist.record(1_000_000);
        }
        Agg { series }
    }

    fn scrape(cap: &mut Cap, max: usize, server: &[(u16, u64)]) -> (Vec<u16>, u64, [Folded; 2]) {
        let mut by = [BTreeMap::new(), BTreeMap::new()];
        for (port, n) in server {
            by[0].insert(labels(*port), agg(*n));
        }
        let folded = cap.apply(max, &mut by);
        let kept: Vec<u16> = by[0]
            .keys()
            .filter_map(|l| l.iter().find(|(k, _)| k == "server_port"))
            .map(|(_, v)| v.parse().unwrap())
            .collect();
        let overflow = by[0]
            .get(&cap.overflow_labels())
            .map_or(0, |a| a.series.count);
        let total: u64 = by[0].values().map(|a| a.series.count).sum();
        assert_eq!(
            total,
            server.iter().map(|(_, n)| n).sum::<u64>() + cap.retired[0].count
        );
        assert_eq!(
            by[0].values().map(|a| a.series.hist.count()).sum::<u64>(),
            total
        );
        (kept, overflow, folded)
    }

    #[test]
    fn busiest_first_then_first_seen_and_sticky() {
        let mut cap = Cap::default();
        // Four new label sets in one scrape, room for two: the busiest two.
        let (kept, overflow, f) = scrape(&mut cap, 2, &[(1, 5), (2, 50), (3, 7), (4, 1)]);
        assert_eq!(kept, [2, 3]);
        assert_eq!(overflow, 6);
        assert_eq!(
            f[0],
            Folded {
                total: 2,
                now: 2,
                requests: 6
            }
        );
        assert_eq!(f[1], Folded::default());
        assert_eq!(
            cap.overflow_labels(),
            [
                ("otel_metric_overflow".to_string(), "true".to_string()),
                ("k8s_node_name".to_string(), "n".to_string())
            ]
        );
        // Port 1 grows past the kept ones: it stays folded, nothing flaps.
        let (kept, overflow, _) = scrape(&mut cap, 2, &[(1, 500), (2, 51), (3, 8), (4, 1)]);
        assert_eq!(kept, [2, 3]);
        assert_eq!(overflow, 501);
        // Port 3 goes away: its place goes to the next new label set, not to a folded one.
        let (kept, overflow, _) = scrape(&mut cap, 2, &[(1, 501), (2, 52), (4, 1), (5, 3)]);
        assert_eq!(kept, [2, 5]);
        assert_eq!(overflow, 502);
        // A folded label set that goes away stays counted: the overflow series never shrinks.
        let (kept, overflow, f) = scrape(&mut cap, 2, &[(2, 53), (4, 2), (5, 3)]);
        assert_eq!(kept, [2, 5]);
        assert_eq!(overflow, 503);
        assert_eq!(
            f[0],
            Folded {
                total: 2,
                now: 1,
                requests: 503
            }
        );
    }

    #[test]
    fn the_overflow_series_takes_the_node_from_any_series() {
        let mut cap = Cap::default();
        let mut by = [BTreeMap::new(), BTreeMap::new()];
        by[0].insert(vec![("cgroup".to_string(), "/a".to_string())], agg(5));
        by[0].insert(vec![("cgroup".to_string(), "/b".to_string())], agg(1));
        by[0].insert(labels(1), agg(3));
        cap.apply(1, &mut by);
        assert_eq!(
            by[0][&cap.overflow_labels()].series.count,
            4,
            "{:?}",
            by[0].keys()
        );
        assert!(
            cap.overflow_labels()
                .contains(&("k8s_node_name".into(), "n".into()))
        );
    }

    #[test]
    fn under_the_cap_nothing_changes() {
        let mut cap = Cap::default();
        let (kept, overflow, f) = scrape(&mut cap, 10, &[(1, 5), (2, 50)]);
        assert_eq!(kept, [1, 2]);
        assert_eq!(overflow, 0);
        assert_eq!(f[0], Folded::default());
    }

    #[test]
    fn the_cap_covers_both_families() {
        let mut cap = Cap::default();
        let mut by = [BTreeMap::new(), BTreeMap::new()];
        for p in 0..10 {
            by[0].insert(labels(p), agg(10 + p as u64));
            by[1].insert(labels(p), agg(1));
        }
        let f = cap.apply(12, &mut by);
        // The 10 server label sets are busier: 10 kept, 2 client ones, 8 client ones folded.
        assert_eq!(by[0].len(), 10);
        assert_eq!(by[1].len(), 3);
        assert_eq!(f[1].now, 8);
        assert_eq!(by[1][&cap.overflow_labels()].series.count, 8);
    }
}
