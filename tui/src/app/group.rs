//! Grouping (`g`: endpoint → workload → namespace): rows that stand for several endpoints,
//! with figures of the whole group. Counts and rates add up; percentiles come from the
//! members' latency histograms merged bucket by bucket (the agent's native buckets,
//! [`Merged`]), with the agent's own estimate (Prometheus' `histogram_quantile`), never from
//! averaging the members' percentiles.

use kite_proto::v1;

use super::{
    entry::{Entry, Stats},
    merged::Merged,
};

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Grouping {
    /// One row per endpoint.
    #[default]
    Endpoint,
    /// One row per workload (its pods' endpoints), per direction.
    Workload,
    /// One row per namespace, per direction.
    Namespace,
}

impl Grouping {
    /// The next grouping of `g`.
    pub fn next(self) -> Self {
        match self {
            Grouping::Endpoint => Grouping::Workload,
            Grouping::Workload => Grouping::Namespace,
            Grouping::Namespace => Grouping::Endpoint,
        }
    }

    /// As the header says it.
    pub fn label(self) -> &'static str {
        match self {
            Grouping::Endpoint => "endpoint",
            Grouping::Workload => "workload",
            Grouping::Namespace => "namespace",
        }
    }
}

/// Who a group is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// Namespace, empty when not known.
    pub namespace: String,
    /// Workload (or, without one, the pod or cgroup); empty when grouping by namespace.
    pub workload: String,
    /// `v1::Direction` as a number.
    pub direction: i32,
}

impl GroupKey {
    /// The group of `e` under `g` (`None`: not grouped).
    pub fn of(g: Grouping, e: &Entry) -> Option<Self> {
        let namespace = e.namespace().to_string();
        let workload = match g {
            Grouping::Endpoint => return None,
            Grouping::Namespace => String::new(),
            Grouping::Workload if e.workload().is_empty() => e.name.clone(),
            Grouping::Workload => e.workload().to_string(),
        };
        Some(Self {
            namespace,
            workload,
            direction: e.direction as i32,
        })
    }
}

/// A group row: its members (agent, entry) and their figures together.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Who.
    pub key: GroupKey,
    /// `namespace/workload`, `namespace`, or the cgroup of a workload without a pod.
    pub name: String,
    /// Members as (agent, index into its entries).
    pub members: Vec<(u32, u32)>,
    /// The members' figures together (percentiles from the merged histogram).
    pub stats: Stats,
    /// The members' protocol when they share one, else `mixed`.
    pub protocol: String,
    /// The members' node when they are all on one, else `N nodes`.
    pub node: String,
    /// Inbound or outbound.
    pub direction: v1::Direction,
}

/// FNV-1a: short keys (namespace, workload, direction) hashed once per member per rebuild,
/// where std's SipHash (built against flooding, which our own agents' names are not) was a
/// visible part of grouping's cost.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Builds the groups of `members` (endpoints that passed the filter) under `g`, in the order
/// of their first member.
/// A group's percentiles are known only when every member with requests came with its
/// histogram (the stream asks for them while grouping is on).
pub fn build<'a>(
    g: Grouping,
    members: impl Iterator<Item = ((u32, u32), &'a Entry)>,
) -> Vec<Group> {
    struct Acc<'a> {
        group: Group,
        /// The members' histograms, merged once all are known.
        hists: Vec<&'a v1::Histogram>,
        complete: bool,
        nodes: Vec<String>,
        /// The first member's own figures.
        first: Stats,
    }
    // Keys borrowed from the entries while grouping: one allocation per group, not per member.
    let mut index: std::collections::HashMap<
        (&str, &str, i32),
        usize,
        std::hash::BuildHasherDefault<Fnv>,
    > = Default::default();
    let mut acc: Vec<Acc> = Vec::new();
    for (at, e) in members {
        let workload = match g {
            Grouping::Endpoint => continue,
            Grouping::Namespace => "",
            Grouping::Workload if e.workload().is_empty() => e.name.as_str(),
            Grouping::Workload => e.workload(),
        };
        let k = (e.namespace(), workload, e.direction as i32);
        let i = *index.entry(k).or_insert_with(|| {
            let key = GroupKey {
                namespace: k.0.to_string(),
                workload: k.1.to_string(),
                direction: k.2,
            };
            acc.push(Acc {
                group: Group {
                    name: match (g, key.namespace.is_empty()) {
                        (Grouping::Namespace, true) => "(no namespace)".into(),
                        (Grouping::Namespace, false) => key.namespace.clone(),
                        (_, true) => key.workload.clone(),
                        (_, false) => format!("{}/{}", key.namespace, key.workload),
                    },
                    key,
                    members: Vec::new(),
                    stats: Stats::default(),
                    protocol: e.protocol.clone(),
                    node: e.node.clone(),
                    direction: e.direction,
                },
                hists: Vec::new(),
                complete: true,
                nodes: Vec::new(),
                first: e.stats(),
            });
            acc.len() - 1
        });
        let a = &mut acc[i];
        let s = e.stats();
        let t = &mut a.group.stats;
        t.rps += s.rps;
        t.requests += s.requests;
        t.errors += s.errors;
        t.client_errors += s.client_errors;
        t.bytes_per_second += s.bytes_per_second;
        match &e.ep.histogram {
            Some(h) => a.hists.push(h),
            None if s.requests > 0 => a.complete = false,
            None => {}
        }
        if a.group.protocol != e.protocol {
            a.group.protocol = "mixed".into();
        }
        if !a.nodes.contains(&e.node) {
            a.nodes.push(e.node.clone());
        }
        a.group.members.push(at);
    }
    // One merge array for every group, emptied between them.
    let mut hist = Merged::default();
    acc.into_iter()
        .map(|mut a| {
            if a.group.members.len() == 1 && !a.complete {
                // A group of one is its member: its own percentiles (`--prometheus` sums
                // groups in PromQL and sends each as one row with the server's percentiles).
                a.group.stats.p50 = a.first.p50;
                a.group.stats.p90 = a.first.p90;
                a.group.stats.p99 = a.first.p99;
            } else if a.complete {
                hist.clear();
                for h in &a.hists {
                    hist.add(h);
                }
                hist.finish();
                a.group.stats.p50 = hist.quantile(0.5);
                a.group.stats.p90 = hist.quantile(0.9);
                a.group.stats.p99 = hist.quantile(0.99);
            }
            if a.nodes.len() > 1 {
                a.group.node = format!("{} nodes", a.nodes.len());
            }
            a.group
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A histogram from (lower µs, upper µs, count).
    fn hist(b: &[(f64, f64, u64)]) -> v1::Histogram {
        v1::Histogram {
            buckets: b
                .iter()
                .map(|&(lo, hi, count)| v1::Bucket {
                    lower_seconds: lo / 1e6,
                    upper_seconds: hi / 1e6,
                    count,
                })
                .collect(),
        }
    }

    fn member(pod: &str, workload: &str, port: u32, h: v1::Histogram) -> Entry {
        let requests = h.buckets.iter().map(|b| b.count).sum::<u64>();
        let mut ep =
            crate::app::tests::endpoint(Some(("shop", pod)), "", port, requests as f64, None, 0.0);
        if let Some(w) = ep.workload.as_mut() {
            w.workload_name = workload.into();
        }
        ep.histogram = Some(h);
        Entry::new(0, "n", ep)
    }

    #[test]
    fn a_groups_percentiles_come_from_the_merged_histogram() {
        // Two pods of one workload: a fast one (90 requests in (100, 110] µs) and a slow one
        // (10 requests in (1000, 1100] µs), and a pod of another workload.
        let fast = member("web-a", "web", 80, hist(&[(100.0, 110.0, 90)]));
        let slow = member("web-b", "web", 81, hist(&[(1000.0, 1100.0, 10)]));
        let other = member("db-0", "db", 5432, hist(&[(50.0, 55.0, 4)]));
        let entries = [fast, slow, other];
        let groups = build(
            Grouping::Workload,
            entries.iter().enumerate().map(|(i, e)| ((0, i as u32), e)),
        );
        assert_eq!(groups.len(), 2);
        let web = groups.iter().find(|g| g.name == "shop/web").unwrap();
        assert_eq!(web.members, [(0, 0), (0, 1)]);
        assert_eq!(web.stats.requests, 100);
        assert_eq!(web.stats.rps, 100.0);
        // Merged: 90 in (100, 110], 10 in (1000, 1100]. Rank 50 of 100: 50/90 of the way
        // through the first bucket; rank 90: its top; rank 99: 9/10 through the second.
        let p = |x: Option<f64>| (x.unwrap() * 1e9).round() / 1e3;
        assert_eq!(
            p(web.stats.p50),
            ((100.0 + 10.0 * 50.0 / 90.0) * 1e3_f64).round() / 1e3
        );
        assert_eq!(p(web.stats.p90), 110.0);
        assert_eq!(p(web.stats.p99), 1090.0);
        // Not the mean of the members' p99 (≈ 109.9 µs and ≈ 1099 µs → ≈ 604 µs).
        let db = groups.iter().find(|g| g.name == "shop/db").unwrap();
        assert_eq!(db.stats.requests, 4);
        assert_eq!(p(db.stats.p50), 52.5);
        // By namespace: all three in one group, ranks over 104 requests.
        let ns = build(
            Grouping::Namespace,
            entries.iter().enumerate().map(|(i, e)| ((0, i as u32), e)),
        );
        assert_eq!(ns.len(), 1);
        assert_eq!(ns[0].name, "shop");
        assert_eq!(ns[0].stats.requests, 104);
        // Rank 52: 4 below 100 µs, then 48/90 through (100, 110].
        let mut m = Merged::default();
        m.add(&hist(&[
            (50.0, 55.0, 4),
            (100.0, 110.0, 90),
            (1000.0, 1100.0, 10),
        ]));
        assert_eq!(ns[0].stats.p50, m.quantile(0.5));
        assert_eq!(
            p(ns[0].stats.p50),
            ((100.0 + 10.0 * 48.0 / 90.0) * 1e3_f64).round() / 1e3
        );
    }

    #[test]
    fn merged_percentiles_equal_the_agents_own_over_the_merged_histogram() {
        use kite_agent::stats::Histogram;
        // Members with their own latency mixes, recorded by the agent's histogram.
        let mixes: [&[u64]; 3] = [
            &[120_000, 130_000, 150_000, 2_000_000],
            &[900_000, 950_000, 5_000_000, 70_000_000_000],
            &[40_000],
        ];
        let mut all = Histogram::default();
        let mut merged = Merged::default();
        for (k, mix) in mixes.iter().enumerate() {
            let mut h = Histogram::default();
            for i in 0..(200 * (k as u64 + 1)) {
                h.record(mix[i as usize % mix.len()] + i * 37);
            }
            all.add(&h);
            // The wire form the agent sends (its native buckets).
            merged.add(&v1::Histogram {
                buckets: h
                    .native()
                    .map(|(b, count)| v1::Bucket {
                        lower_seconds: b.lower_seconds(),
                        upper_seconds: b.upper_seconds(),
                        count,
                    })
                    .collect(),
            });
        }
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let ours = merged.quantile(q).unwrap();
            let agents = all.quantile(q).unwrap() / 1e9;
            assert!(
                (ours - agents).abs() <= agents * 1e-12,
                "q={q}: {ours} vs the agent's {agents}"
            );
        }
        assert_eq!(Merged::default().quantile(0.5), None);
    }

    #[test]
    fn a_member_without_its_histogram_leaves_the_percentiles_unknown() {
        let mut lean = member("web-b", "web", 81, hist(&[]));
        lean.ep.histogram = None;
        lean.ep.last.as_mut().unwrap().requests = 5;
        let entries = [member("web-a", "web", 80, hist(&[(100.0, 110.0, 9)])), lean];
        let g = build(
            Grouping::Workload,
            entries.iter().enumerate().map(|(i, e)| ((0, i as u32), e)),
        );
        assert_eq!(g[0].stats.requests, 14);
        assert_eq!(
            g[0].stats.p99, None,
            "never a percentile of part of the group"
        );
    }
}
