//! Route patterns the user gives (`--route '/api/orders/{id}'`, and a pod's own in its
//! `kite.io/routes` annotation): applied to the routes the kernel infers
//! (`kite_common::route`), before its heuristic's result is shown. The grammar lives in
//! [`kite_init::routes`] (the webhook and `kite-init` check a pod's patterns with it too): a
//! literal matches the same segment, `{name}` any one segment (an identifier the kernel made
//! `*`, or a word it kept), and a last `{name...}` or `**` the rest. A route that matches a
//! pattern is shown under the pattern (Prometheus `http_route`, as OpenTelemetry names a
//! template the user declares); the first pattern that matches wins, the pod's before
//! `--route`'s.
//!
//! Patterns rename and merge kernel routes; they do not change what the kernel counts: a
//! route the heuristic did not collapse (words used as ids) still takes one of its endpoint's
//! 64 kernel routes.

pub use kite_init::routes::{
    MAX_PATTERN_LEN, MAX_POD_PATTERN_LEN, MAX_POD_PATTERNS, RoutePattern, find,
};

/// Most `--route` patterns.
pub const MAX_PATTERNS: usize = 64;

/// Distinct values a segment position (after a given prefix) may take before it is shown as
/// `*` ([`Collapse`]).
pub const COLLAPSE_VALUES: usize = 10;
/// Prefixes [`Collapse`] follows; beyond, new prefixes are not followed (counted).
pub const COLLAPSE_PREFIXES: usize = 8_192;

/// The low-cardinality collapse: a segment position (after a given, already collapsed
/// prefix) that took more than [`COLLAPSE_VALUES`] distinct values is shown as `*` — the words
/// the kernel's heuristic keeps but that are ids in fact (`/files/report-a`, `/files/q3`, …).
/// Routes settle as traffic teaches them: a route learnt before its position collapsed is
/// renamed when it does.
#[derive(Clone, Debug, Default)]
pub struct Collapse {
    /// Prefix (`/files`) → the values seen after it (at most `COLLAPSE_VALUES + 1`).
    seen: std::collections::HashMap<String, std::collections::BTreeSet<String>>,
    /// Prefixes not followed because [`COLLAPSE_PREFIXES`] were.
    pub untracked: u64,
}

impl Collapse {
    /// Notes `route`'s segments; returns whether a position collapsed because of it (then
    /// the routes already named should be shown again through [`Collapse::show`]).
    pub fn learn(&mut self, route: &str) -> bool {
        let mut changed = false;
        let mut prefix = String::new();
        for seg in route.split('/').skip(1) {
            let full = self.seen.len() >= COLLAPSE_PREFIXES;
            let collapsed = match self.seen.get_mut(&prefix) {
                Some(v) => {
                    if v.len() <= COLLAPSE_VALUES && v.insert(seg.to_string()) {
                        changed |= v.len() > COLLAPSE_VALUES;
                    }
                    v.len() > COLLAPSE_VALUES
                }
                None if full => {
                    self.untracked += 1;
                    false
                }
                None => {
                    self.seen
                        .insert(prefix.clone(), [seg.to_string()].into_iter().collect());
                    false
                }
            };
            prefix.push('/');
            prefix.push_str(if collapsed { "*" } else { seg });
        }
        changed
    }

    /// `route` with its collapsed positions as `*`.
    pub fn show(&self, route: &str) -> String {
        if !route.starts_with('/') {
            return route.to_string();
        }
        let mut prefix = String::new();
        for seg in route.split('/').skip(1) {
            let collapsed = self
                .seen
                .get(&prefix)
                .is_some_and(|v| v.len() > COLLAPSE_VALUES);
            prefix.push('/');
            prefix.push_str(if collapsed { "*" } else { seg });
        }
        if prefix.is_empty() {
            "/".into()
        } else {
            prefix
        }
    }
}

#[cfg(test)]
mod collapse_tests {
    use super::*;

    #[test]
    fn a_position_with_many_values_becomes_a_star_and_old_routes_follow() {
        let mut c = Collapse::default();
        for i in 0..COLLAPSE_VALUES {
            assert!(!c.learn(&format!("/files/report{i}/raw")));
        }
        assert_eq!(c.show("/files/report3/raw"), "/files/report3/raw");
        // One value more: the position collapses, for the routes seen before too.
        assert!(c.learn("/files/another/raw"));
        assert_eq!(c.show("/files/report3/raw"), "/files/*/raw");
        assert_eq!(c.show("/files/new/raw"), "/files/*/raw");
        // Few values stay as they are; the root and `*` too.
        for p in ["/api/v1", "/api/v2"] {
            c.learn(p);
        }
        assert_eq!(c.show("/api/v2"), "/api/v2");
        assert_eq!(c.show("/"), "/");
        assert_eq!(c.show("*"), "*");
    }

    #[test]
    fn the_prefixes_followed_are_bounded() {
        let mut c = Collapse::default();
        // Ten values per level (none collapses), four levels: 11 111 prefixes.
        for i in 0..10_000 {
            c.learn(&format!(
                "/a{}/b{}/c{}/d{}/e",
                i % 10,
                i / 10 % 10,
                i / 100 % 10,
                i / 1000
            ));
        }
        assert!(c.seen.len() <= COLLAPSE_PREFIXES);
        assert!(c.untracked > 0);
    }
}
