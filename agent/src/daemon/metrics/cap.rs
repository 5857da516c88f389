//! The cap on exported label sets of the histogram families (`--max-series`): `http_*` and
//! `rpc_*`, server and client, all together.
//!
//! Label sets are admitted in the order they first appear (the busiest first among those that
//! appear in the same scrape) until the cap is reached; later ones are folded into one
//! overflow series per family, labelled `otel_metric_overflow="true"` as OpenTelemetry SDKs do.
//! Both decisions are sticky for as long as the label set exists, so no series flaps in and
//! out between scrapes and every exported counter, the overflow series' included, only grows:
//! what an overflowed label set had recorded stays in the overflow series after it goes away.
//!
//! The overflow series is accounted by the kernel series under the label sets (endpoint ×
//! method × status × version: their totals run on whatever labels they get), not by label set:
//! a folded endpoint whose labels change (a pod confirmed by the API, a cgroup path learnt)
//! stays folded and is counted once, and one that goes away leaves its last totals behind.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use super::{Agg, ByFamily, Labels, N_FAMILIES};
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

/// A label set's identity: its family (an index into `FAMILIES`) and a 64-bit hash of its labels
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
    folded: HashSet<Key>,
    /// Per family: the last totals of every kernel series in a folded label set, by its id.
    parts: [HashMap<u64, Series>; N_FAMILIES],
    /// Per family: what kernel series no longer in a folded label set had recorded.
    retired: [Series; N_FAMILIES],
    /// Per family: label sets folded so far (a folded endpoint's renamed label set not again).
    folded_total: [u64; N_FAMILIES],
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
    /// Keeps at most `max` label sets over all families of `by_family` and replaces the rest
    /// with one overflow series per family (present once anything was folded in it).
    pub fn apply(&mut self, max: usize, by_family: &mut ByFamily<'_>) -> [Folded; N_FAMILIES] {
        // Pods' series carry the node, a host cgroup's may not: any one that does.
        if self.node.is_none()
            && let Some(node) = by_family
                .iter()
                .flat_map(BTreeMap::keys)
                .find_map(|l| l.iter().find(|(k, _)| k == "k8s_node_name"))
        {
            self.node = Some(node.clone());
        }
        let keys: [Vec<Key>; N_FAMILIES] =
            std::array::from_fn(|f| by_family[f].keys().map(|l| key(f, l)).collect());
        let seen: HashSet<Key> = keys.iter().flatten().copied().collect();
        self.admitted.retain(|k| seen.contains(k));
        self.folded.retain(|k| seen.contains(k));
        // New label sets, the busiest first (ties in label order: deterministic). One holding a
        // kernel series that was folded is that series renamed: folded again, not counted.
        let mut new: Vec<(u64, Key)> = Vec::new();
        for f in 0..N_FAMILIES {
            for ((_, agg), k) in by_family[f].iter().zip(&keys[f]) {
                if self.admitted.contains(k) || self.folded.contains(k) {
                    continue;
                }
                if agg
                    .parts
                    .iter()
                    .any(|(id, _)| self.parts[f].contains_key(id))
                {
                    self.folded.insert(*k);
                } else {
                    new.push((agg.series.count, *k));
                }
            }
        }
        new.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        for (_, k) in new {
            if self.admitted.len() < max {
                self.admitted.insert(k);
            } else {
                self.folded.insert(k);
                self.folded_total[k.0] += 1;
            }
        }
        let mut out: [Folded; N_FAMILIES] = Default::default();
        for f in 0..N_FAMILIES {
            let mut parts = HashMap::new();
            let mut now = 0;
            let map = std::mem::take(&mut by_family[f]);
            for ((labels, agg), k) in map.into_iter().zip(&keys[f]) {
                if self.folded.contains(k) {
                    parts.extend(agg.parts.iter().map(|(id, s)| (*id, (*s).clone())));
                    now += 1;
                } else {
                    by_family[f].insert(labels, agg);
                }
            }
            for (id, last) in &self.parts[f] {
                if !parts.contains_key(id) {
                    add(&mut self.retired[f], last);
                }
            }
            self.parts[f] = parts;
            if self.folded_total[f] == 0 {
                continue;
            }
            let mut overflow = self.retired[f].clone();
            for s in self.parts[f].values() {
                add(&mut overflow, s);
            }
            out[f] = Folded {
                total: self.folded_total[f],
                now,
                requests: overflow.count,
            };
            by_family[f].insert(
                self.overflow_labels(),
                Agg {
                    series: overflow,
                    parts: Vec::new(),
                },
            );
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

    fn series(count: u64) -> Series {
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
        series
    }

    /// A label set holding one kernel series.
    fn agg(id: u64, s: &Series) -> Agg<'_> {
        Agg {
            series: s.clone(),
            parts: vec![(id, s)],
        }
    }

    /// A scrape of server label sets `(port label, kernel series id, requests)`.
    fn scrape_parts(
        cap: &mut Cap,
        max: usize,
        server: &[(u16, u64, u64)],
    ) -> (Vec<u16>, u64, [Folded; N_FAMILIES]) {
        let owned: Vec<Series> = server.iter().map(|(_, _, n)| series(*n)).collect();
        let mut by: ByFamily = Default::default();
        for ((port, id, _), s) in server.iter().zip(&owned) {
            by[0].insert(labels(*port), agg(*id, s));
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
            server.iter().map(|(_, _, n)| n).sum::<u64>() + cap.retired[0].count
        );
        assert_eq!(
            by[0].values().map(|a| a.series.hist.count()).sum::<u64>(),
            total
        );
        (kept, overflow, folded)
    }

    /// A scrape where each label set is its own kernel series, named by its port.
    fn scrape(
        cap: &mut Cap,
        max: usize,
        server: &[(u16, u64)],
    ) -> (Vec<u16>, u64, [Folded; N_FAMILIES]) {
        let parts: Vec<(u16, u64, u64)> = server.iter().map(|(p, n)| (*p, *p as u64, *n)).collect();
        scrape_parts(cap, max, &parts)
    }

    #[test]
    fn a_folded_endpoint_whose_labels_change_is_counted_once() {
        let mut cap = Cap::default();
        let (kept, overflow, _) = scrape_parts(&mut cap, 1, &[(1, 1, 5), (2, 2, 50)]);
        assert_eq!((kept, overflow), (vec![2], 5));
        // Kernel series 1 now carries other labels (the API confirmed its pod): still folded,
        // its totals counted once, the counter of folded label sets unchanged.
        let (kept, overflow, f) = scrape_parts(&mut cap, 1, &[(2, 2, 51), (3, 1, 6)]);
        assert_eq!((kept, overflow), (vec![2], 6));
        assert_eq!(f[0].total, 1);
        // It goes away: its last totals stay in the overflow series.
        let (_, overflow, _) = scrape_parts(&mut cap, 1, &[(2, 2, 52)]);
        assert_eq!(overflow, 6);
        // A new label set beyond the cap adds its own.
        let (_, overflow, _) = scrape_parts(&mut cap, 1, &[(2, 2, 52), (4, 7, 1)]);
        assert_eq!(overflow, 7);
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
        let s = [series(5), series(1), series(3)];
        let mut by: ByFamily = Default::default();
        by[0].insert(
            vec![("cgroup".to_string(), "/a".to_string())],
            agg(1, &s[0]),
        );
        by[0].insert(
            vec![("cgroup".to_string(), "/b".to_string())],
            agg(2, &s[1]),
        );
        by[0].insert(labels(1), agg(3, &s[2]));
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
        let server: Vec<Series> = (0..10).map(|p| series(10 + p)).collect();
        let client = series(1);
        let mut by: ByFamily = Default::default();
        for p in 0..10u16 {
            by[0].insert(labels(p), agg(p as u64, &server[p as usize]));
            by[1].insert(labels(p), agg(100 + p as u64, &client));
        }
        let f = cap.apply(12, &mut by);
        // The 10 server label sets are busier: 10 kept, 2 client ones, 8 client ones folded.
        assert_eq!(by[0].len(), 10);
        assert_eq!(by[1].len(), 3);
        assert_eq!(f[1].now, 8);
        assert_eq!(by[1][&cap.overflow_labels()].series.count, 8);
    }

    #[test]
    fn the_cap_covers_the_rpc_families_too() {
        let mut cap = Cap::default();
        let http: Vec<Series> = (0..4).map(|p| series(100 + p)).collect();
        let grpc: Vec<Series> = (0..6).map(|p| series(1 + p)).collect();
        let mut by: ByFamily = Default::default();
        for p in 0..4u16 {
            by[0].insert(labels(p), agg(p as u64, &http[p as usize]));
        }
        for p in 0..6u16 {
            by[2].insert(labels(p), agg(200 + p as u64, &grpc[p as usize]));
        }
        let f = cap.apply(6, &mut by);
        // 4 busy HTTP label sets and the 2 busiest gRPC ones kept; 4 gRPC ones folded into the
        // rpc_server family's own overflow series, with their requests (1+2+3+4).
        assert_eq!(by[0].len(), 4);
        assert_eq!(by[2].len(), 3);
        assert_eq!(f[2].now, 4);
        assert_eq!(f[2].total, 4);
        assert_eq!(by[2][&cap.overflow_labels()].series.count, 10);
        assert_eq!(f[0], Folded::default());
    }
}
