//! Route patterns: the grammar of the agent's `--route` and of a pod's `kite.io/routes`
//! annotation, in one place for the three programs that read them (the webhook checks an
//! annotation when it admits the pod, `kite-init` bounds what it puts in its hello, the agent
//! applies them), with one set of error messages.
//!
//! A pattern is a path of segments: a literal matches the same segment, `{name}` any one
//! segment (an identifier the kernel made `*`, or a word it kept; the name is letters, digits,
//! `_` and `-`), and a last `{name...}` or `**` the rest. Segments are URL path characters (RFC 3986 `pchar`, ASCII); a route that
//! matches is shown under the pattern (Prometheus `http_route`); the first pattern that
//! matches wins.
//!
//! The annotation holds one or more patterns separated by white space (a space or a line
//! each, in order of precedence):
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     kite.io/routes: |
//!       /api/orders/{id}
//!       /files/{name}
//! ```

/// The pod annotation naming the pod's own route patterns.
pub const ROUTES_ANNOTATION: &str = "kite.io/routes";
/// Longest pattern, bytes (`--route`).
pub const MAX_PATTERN_LEN: usize = 256;
/// Most patterns one pod's annotation may hold.
pub const MAX_POD_PATTERNS: usize = 16;
/// Longest pattern in a pod's annotation, bytes. The kernel keeps a route's first 64 bytes and
/// a route it cut matches no pattern, so a pattern of literals longer than that never matches;
/// 128 leaves room for `{name}`s. With [`MAX_POD_PATTERNS`], the hello stays within
/// [`crate::MAX_HELLO`] whatever the pod's names (`pchar`s need no JSON escape).
pub const MAX_POD_PATTERN_LEN: usize = 128;
/// Longest annotation value read, bytes: the patterns, at most one separator each, and some
/// indentation.
pub const MAX_ANNOTATION_LEN: usize = 4 * MAX_POD_PATTERNS * MAX_POD_PATTERN_LEN;

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

/// A URL path character (RFC 3986 `pchar`: unreserved, sub-delims, `:`, `@`, `%` of a
/// percent-encoding), ASCII only.
fn pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b)
}

impl RoutePattern {
    /// Parses `/a/{b}/c`; the error is a sentence.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "route pattern {:?}… is longer than {MAX_PATTERN_LEN} bytes",
                cut(s)
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
            // A placeholder's name: letters, digits, `_`, `-`.
            let name = |inner: &str| {
                !inner.is_empty()
                    && inner
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            let seg = if *p == "**"
                || p.strip_prefix('{')
                    .and_then(|q| q.strip_suffix("...}"))
                    .is_some_and(name)
            {
                if !last {
                    return Err(format!(
                        "route pattern {s:?}: {p} matches the rest, so it must come last"
                    ));
                }
                Seg::Rest
            } else if p
                .strip_prefix('{')
                .and_then(|q| q.strip_suffix('}'))
                .is_some_and(name)
            {
                Seg::Any
            } else if p.is_empty() || p.contains(['{', '}', '*']) {
                return Err(format!(
                    "route pattern {s:?}: segment {p:?} is neither a word nor {{name}}"
                ));
            } else if let Some(c) = p.chars().find(|c| !c.is_ascii() || !pchar(*c as u8)) {
                return Err(format!(
                    "route pattern {s:?}: segment {p:?} has {c:?}, which is not a URL path character"
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

/// The first 40 characters of `s`, for a message about a long value.
fn cut(s: &str) -> &str {
    s.char_indices().nth(40).map_or(s, |(i, _)| &s[..i])
}

/// Checks a pod's patterns (the annotation's words, or a hello's list) against the pod bounds
/// ([`MAX_POD_PATTERNS`], [`MAX_POD_PATTERN_LEN`]) and the grammar. All or nothing: one bad
/// pattern refuses them all (applying the others would change which pattern wins), and the
/// error says which and why, naming the annotation.
pub fn pod_patterns<S: AsRef<str>>(words: &[S]) -> Result<Vec<RoutePattern>, String> {
    if words.len() > MAX_POD_PATTERNS {
        return Err(format!(
            "{ROUTES_ANNOTATION}: {} patterns, at most {MAX_POD_PATTERNS} are allowed",
            words.len()
        ));
    }
    words
        .iter()
        .map(|w| {
            let w = w.as_ref();
            if w.len() > MAX_POD_PATTERN_LEN {
                return Err(format!(
                    "{ROUTES_ANNOTATION}: route pattern {:?}… is longer than {MAX_POD_PATTERN_LEN} bytes",
                    cut(w)
                ));
            }
            RoutePattern::parse(w).map_err(|e| format!("{ROUTES_ANNOTATION}: {e}"))
        })
        .collect()
}

/// Parses the value of a pod's `kite.io/routes` annotation: patterns separated by white
/// space, checked as [`pod_patterns`] does. An empty value is no pattern.
pub fn parse_annotation(value: &str) -> Result<Vec<RoutePattern>, String> {
    if value.len() > MAX_ANNOTATION_LEN {
        return Err(format!(
            "{ROUTES_ANNOTATION}: the value is {} bytes, at most {MAX_ANNOTATION_LEN} are read",
            value.len()
        ));
    }
    let words: Vec<&str> = value.split_whitespace().collect();
    pod_patterns(&words)
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
        assert!(p("/v1/users:search/{id}").matches("/v1/users:search/*"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (s, why) in [
            ("api/x", "does not start with /"),
            ("/a?b=1", "query"),
            ("/a/**/b", "must come last"),
            ("/a/{rest...}/b", "must come last"),
            ("/a/x*", "neither a word"),
            ("/a//b", "neither a word"),
            ("/a/{}", "neither a word"),
            ("/a/{b/c}", "neither a word"),
            ("/a/{*}", "neither a word"),
            ("/a/{...}", "neither a word"),
            ("/a/\"b\"", "not a URL path character"),
            ("/a/b\\c", "not a URL path character"),
            ("/caf\u{e9}", "not a URL path character"),
        ] {
            let e = RoutePattern::parse(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
        let e = RoutePattern::parse(&format!("/{}", "a".repeat(300))).unwrap_err();
        assert!(e.contains("longer than 256"), "{e}");
    }

    #[test]
    fn the_first_pattern_that_matches_wins() {
        let ps = [p("/a/{x}"), p("/a/b")];
        assert_eq!(find(&ps, "/a/b").unwrap().as_str(), "/a/{x}");
        assert!(find(&ps, "/c").is_none());
    }

    #[test]
    fn an_annotation_is_patterns_separated_by_white_space_in_order() {
        let ps = parse_annotation("/api/orders/{id}\n  /files/{name} /static/**\n").unwrap();
        let texts: Vec<&str> = ps.iter().map(RoutePattern::as_str).collect();
        assert_eq!(texts, ["/api/orders/{id}", "/files/{name}", "/static/**"]);
        assert!(parse_annotation("").unwrap().is_empty());
        assert!(parse_annotation(" \n").unwrap().is_empty());
    }

    #[test]
    fn an_annotation_is_bounded_and_refused_whole_with_a_reason() {
        let many: Vec<String> = (0..=MAX_POD_PATTERNS).map(|i| format!("/p{i}")).collect();
        let e = parse_annotation(&many.join(" ")).unwrap_err();
        assert_eq!(
            e, "kite.io/routes: 17 patterns, at most 16 are allowed",
            "{e}"
        );
        assert!(parse_annotation(&many[..MAX_POD_PATTERNS].join(" ")).is_ok());
        let long = format!("/{}", "a".repeat(MAX_POD_PATTERN_LEN));
        let e = parse_annotation(&long).unwrap_err();
        assert!(e.contains("longer than 128 bytes"), "{e}");
        let ok = format!("/{}", "a".repeat(MAX_POD_PATTERN_LEN - 1));
        assert!(parse_annotation(&ok).is_ok());
        // One bad pattern refuses them all, naming it.
        let e = parse_annotation("/orders/{id} files/{name}").unwrap_err();
        assert_eq!(
            e,
            "kite.io/routes: route pattern \"files/{name}\" does not start with /"
        );
        let huge = " ".repeat(MAX_ANNOTATION_LEN + 1);
        assert!(parse_annotation(&huge).unwrap_err().contains("at most"));
    }
}
