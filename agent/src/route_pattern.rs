//! Route patterns the user gives (`--route '/api/orders/{id}'`): applied to the routes the
//! kernel infers (`kite_common::route`), before its heuristic's result is shown. A pattern is
//! a path of segments: a literal matches the same segment, `{name}` any one segment (an
//! identifier the kernel made `*`, or a word it kept), and a last `{name...}` or `**` the rest.
//! A route that matches a pattern is shown under the pattern (Prometheus `http_route`, as
//! OpenTelemetry names a template the user declares); the first pattern that matches wins.
//!
//! Patterns rename and merge kernel routes; they do not change what the kernel counts: a
//! route the heuristic did not collapse (words used as ids) still takes one of its endpoint's
//! 64 kernel routes.

/// Most patterns.
pub const MAX_PATTERNS: usize = 64;
/// Longest pattern, bytes.
pub const MAX_PATTERN_LEN: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Literal(String),
    Any,
    Rest,
}

/// One user pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePattern {
    text: String,
    segs: Vec<Seg>,
}

impl RoutePattern {
    /// Parses `/a/{b}/c`; the error is a sentence.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "route pattern {s:?} is longer than {MAX_PATTERN_LEN} bytes"
            ));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("route pattern {s:?} does not start with /"));
        };
        if s.contains(['?', '#', ' ']) || s.chars().any(char::is_control) {
            return Err(format!(
                "route pattern {s:?} has a query, a fragment, a space or a control character"
            ));
        }
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut segs = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let seg = if *p == "**" || (p.starts_with('{') && p.ends_with("...}")) {
                if !last {
                    return Err(format!(
                        "route pattern {s:?}: {p} matches the rest, so it must come last"
                    ));
                }
                Seg::Rest
            } else if p.starts_with('{') && p.ends_with('}') && p.len() > 2 {
                Seg::Any
            } else if p.is_empty() || p.contains(['{', '}', '*']) {
                return Err(format!(
                    "route pattern {s:?}: segment {:?} is neither a word nor {{name}}",
                    p
                ));
            } else {
                Seg::Literal((*p).to_string())
            };
            segs.push(seg);
        }
        Ok(Self {
            text: s.to_string(),
            segs,
        })
    }

    /// The pattern as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the kernel's route text (`/orders/*`, `/a/b/**`) matches.
    pub fn matches(&self, route: &str) -> bool {
        let Some(rest) = route.strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut i = 0;
        for seg in &self.segs {
            match seg {
                Seg::Rest => return i < parts.len(),
                Seg::Any => {
                    if i >= parts.len() || parts[i] == "**" {
                        return false;
                    }
                }
                Seg::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == parts.len()
    }
}

/// The first of `patterns` that matches `route`.
pub fn find<'a>(patterns: &'a [RoutePattern], route: &str) -> Option<&'a RoutePattern> {
    patterns.iter().find(|p| p.matches(route))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RoutePattern {
        RoutePattern::parse(s).unwrap()
    }

    #[test]
    fn patterns_match_the_kernels_routes() {
        assert!(p("/api/orders/{id}").matches("/api/orders/*"));
        // A word the heuristic kept is one segment too.
        assert!(p("/files/{name}").matches("/files/report"));
        assert!(!p("/files/{name}").matches("/files/a/b"));
        assert!(!p("/files/{name}").matches("/files"));
        assert!(p("/static/**").matches("/static/css/app.css"));
        assert!(p("/static/{path...}").matches("/static/*/x/**"));
        assert!(!p("/static/**").matches("/static"));
        assert!(p("/").matches("/"));
        assert!(!p("/").matches("/x"));
        assert!(!p("/a/{b}").matches("*"));
        assert!(!p("/a/{b}").matches("/a/**"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (s, why) in [
            ("api/x", "does not start with /"),
            ("/a?b=1", "query"),
            ("/a/**/b", "must come last"),
            ("/a/x*", "neither a word"),
            ("/a//b", "neither a word"),
        ] {
            let e = RoutePattern::parse(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
        assert!(RoutePattern::parse(&format!("/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn the_first_pattern_that_matches_wins() {
        let ps = [p("/a/{x}"), p("/a/b")];
        assert_eq!(find(&ps, "/a/b").unwrap().as_str(), "/a/{x}");
        assert!(find(&ps, "/c").is_none());
    }
}

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
