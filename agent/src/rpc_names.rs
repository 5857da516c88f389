//! gRPC method names and status codes, for everything above the kernel.
//!
//! The kernel keys a gRPC call by a method id ([`EndpointKey::rpc`]: FNV-1a of its `:path`,
//! see [`rpc_id`]) and sends the path itself once, the first time it sees it, through a ring
//! buffer. [`RpcNames`] keeps those names: bounded ([`MAX_NAMES`] names of at most
//! [`MAX_NAME_LEN`] bytes), every name checked against its id (a path whose hash is not the
//! id is refused, never shown under it), and what it could not keep counted. A method whose
//! name is not known is shown by its id (`rpc#1a2b3c4d`), never a guessed name.
//!
//! [`EndpointKey::rpc`]: kite_common::maps::EndpointKey::rpc

use std::collections::HashMap;

use kite_common::{
    h2::hpack::path_id,
    maps::{GRPC_STATUS_NAMES, GRPC_STATUS_UNKNOWN, RPC_NONE, RPC_OTHER, RPC_UNKNOWN, rpc_id},
};

/// Most method names kept (≈ 4 096 × (64 + name) bytes: under 1.3 MiB with 256-byte names).
/// The kernel bounds methods per endpoint; this bounds them over all endpoints. Beyond, new
/// names are counted (`full`) and their methods shown by id.
pub const MAX_NAMES: usize = 4_096;

/// Longest method path kept, bytes (gRPC paths are `/package.Service/Method`: tens of bytes).
pub const MAX_NAME_LEN: usize = 256;

/// How a method is known.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// Its path, without the leading `/`: OpenTelemetry's `rpc.method`; or an HTTP/1
    /// route's text, with it.
    Name(Box<str>),
    /// An HTTP/1 route that matched a user pattern: the pattern.
    Pattern(Box<str>),
    /// Two different paths came with this id (an FNV-1a collision): neither is shown.
    Ambiguous,
}

/// What happened to the names offered to [`RpcNames::learn`], by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RpcNameCounters {
    /// Names learnt.
    pub learnt: u64,
    /// Names offered again (already known): nothing changed.
    pub repeated: u64,
    /// Names refused because [`MAX_NAMES`] were kept already.
    pub full: u64,
    /// Names refused: longer than [`MAX_NAME_LEN`], not UTF-8, or not `/service/method`.
    pub invalid: u64,
    /// Names refused because the path's hash is not the id it came with (e.g. cut short).
    pub mismatched: u64,
    /// Ids that came with two different paths: shown by id from then on.
    pub collisions: u64,
}

impl RpcNameCounters {
    /// Each counter with the name Prometheus (`event` label) and gRPC (`Info`) give it.
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("learnt", self.learnt),
            ("repeated", self.repeated),
            ("full", self.full),
            ("invalid", self.invalid),
            ("mismatched", self.mismatched),
            ("collisions", self.collisions),
        ]
    }
}

/// The method names the kernel told, by method id.
#[derive(Clone, Debug, Default)]
pub struct RpcNames {
    names: HashMap<u32, Entry>,
    /// `--route` patterns, tried in order on every route text learnt.
    patterns: Vec<crate::route_pattern::RoutePattern>,
    /// The low-cardinality collapse of the route texts learnt.
    pub collapse: crate::route_pattern::Collapse,
    /// Route texts as the kernel sent them (uncut): those no `--route` pattern named are
    /// shown through `collapse`; all are matched against a pod's own patterns
    /// ([`RpcNames::route`]).
    raw_routes: HashMap<u32, Box<str>>,
    /// What happened to the names offered.
    pub counters: RpcNameCounters,
}

/// A gRPC method as shown: its name, or why there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc<'a> {
    /// `package.Service/Method` (OpenTelemetry's `rpc.method`).
    Name(&'a str),
    /// Beyond the kernel's bound of methods per endpoint: `_OTHER`.
    Other,
    /// The path could not be known (HPACK state lost): no name at all.
    Unknown,
    /// An id whose name is not known (yet): shown as `rpc#<id in hex>`.
    Id(u32),
}

impl Rpc<'_> {
    /// As the TUI, `kite-loader` and `kite.v1` show it; `None` for [`Rpc::Unknown`].
    pub fn label(&self) -> Option<String> {
        match self {
            Rpc::Name(n) => Some((*n).to_string()),
            Rpc::Other => Some("_OTHER".into()),
            Rpc::Unknown => None,
            Rpc::Id(id) => Some(format!("rpc#{id:08x}")),
        }
    }
}

impl RpcNames {
    /// Names known now.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No name known.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The user's route patterns (applied to the routes learnt from now on).
    pub fn set_route_patterns(&mut self, patterns: Vec<crate::route_pattern::RoutePattern>) {
        self.patterns = patterns;
    }

    /// Whether route `id` is shown under a user pattern (Prometheus `http_route`).
    pub fn is_pattern(&self, id: u32) -> bool {
        matches!(self.names.get(&id), Some(Entry::Pattern(_)))
    }

    /// Takes the text the kernel sent for HTTP/1 route `id` (`/orders/*`, see
    /// `kite_common::route`). Kept as it is, if its hash is `id` — or, when the kernel `cut`
    /// it (longer than it keeps), with `…` after it — it is a route (`/…` or `*`, no control
    /// characters) and there is room; otherwise counted and dropped.
    pub fn learn_route(&mut self, id: u32, text: &[u8], cut: bool) {
        let c = &mut self.counters;
        if matches!(id, RPC_NONE | RPC_UNKNOWN | RPC_OTHER)
            || (!cut && kite_common::route::route_id_of_text(text) != id)
        {
            c.mismatched += 1;
            return;
        }
        let name = match std::str::from_utf8(text) {
            Ok(t)
                if text.len() <= kite_common::route::ROUTE_TEXT
                    && (t.starts_with('/') || t == "*")
                    && !t.chars().any(char::is_control) =>
            {
                if cut {
                    format!("{t}…")
                } else {
                    t.to_string()
                }
            }
            _ => {
                c.invalid += 1;
                return;
            }
        };
        let entry = match crate::route_pattern::find(&self.patterns, &name) {
            Some(p) if !cut => {
                if self.names.len() < MAX_NAMES {
                    self.raw_routes.insert(id, name.as_str().into());
                }
                Entry::Pattern(p.as_str().into())
            }
            _ if cut || self.raw_routes.contains_key(&id) || self.names.len() >= MAX_NAMES => {
                Entry::Name(name.into())
            }
            _ => {
                let changed = self.collapse.learn(&name);
                self.raw_routes.insert(id, name.as_str().into());
                if changed {
                    // A position collapsed: the routes named before follow.
                    for (rid, raw) in &self.raw_routes {
                        if let Some(Entry::Name(n)) = self.names.get_mut(rid) {
                            *n = self.collapse.show(raw).into();
                        }
                    }
                }
                Entry::Name(self.collapse.show(&name).into())
            }
        };
        self.insert(id, entry);
    }

    /// How HTTP/1 route `id` is shown for an endpoint whose pod declared `pod` patterns (its
    /// `kite.io/routes`), and whether the name is a user's pattern (Prometheus `http_route`):
    /// the first of `pod` that matches the kernel's text, else as [`RpcNames::get`] shows it
    /// (a `--route` pattern, else the heuristic's route). A route whose text is not known, was
    /// cut, or is ambiguous matches no pod pattern.
    pub fn route<'a>(
        &'a self,
        pod: &'a [crate::route_pattern::RoutePattern],
        id: u32,
    ) -> (Rpc<'a>, bool) {
        if !pod.is_empty()
            && !matches!(self.names.get(&id), None | Some(Entry::Ambiguous))
            && let Some(p) = self
                .raw_routes
                .get(&id)
                .and_then(|text| crate::route_pattern::find(pod, text))
        {
            return (Rpc::Name(p.as_str()), true);
        }
        (self.get(id), self.is_pattern(id))
    }

    /// Keeps `name` for `id` (a second, different name makes the id ambiguous).
    fn insert(&mut self, id: u32, entry: Entry) {
        let c = &mut self.counters;
        let room = self.names.len() < MAX_NAMES;
        match self.names.get_mut(&id) {
            Some(known) if *known == entry => c.repeated += 1,
            Some(Entry::Ambiguous) => c.repeated += 1,
            Some(e) => {
                *e = Entry::Ambiguous;
                c.collisions += 1;
            }
            None if !room => c.full += 1,
            None => {
                self.names.insert(id, entry);
                c.learnt += 1;
            }
        }
    }

    /// Takes the path the kernel sent for method `id` (`/package.Service/Method`, as in the
    /// call's `:path`). Kept only if its hash is `id`, it is a plausible method path and there
    /// is room; otherwise counted and dropped.
    pub fn learn(&mut self, id: u32, path: &[u8]) {
        let c = &mut self.counters;
        if rpc_id(path_id(path)) != id || matches!(id, RPC_NONE | RPC_UNKNOWN | RPC_OTHER) {
            c.mismatched += 1;
            return;
        }
        let name = match std::str::from_utf8(path) {
            Ok(p) if path.len() <= MAX_NAME_LEN && valid_path(p) => p[1..].to_string(),
            _ => {
                c.invalid += 1;
                return;
            }
        };
        self.insert(id, Entry::Name(name.into()));
    }

    /// How method `rpc` (an [`EndpointKey::rpc`]) is shown.
    ///
    /// [`EndpointKey::rpc`]: kite_common::maps::EndpointKey::rpc
    pub fn get(&self, rpc: u32) -> Rpc<'_> {
        match rpc {
            RPC_OTHER => Rpc::Other,
            RPC_UNKNOWN | RPC_NONE => Rpc::Unknown,
            id => match self.names.get(&id) {
                Some(Entry::Name(n) | Entry::Pattern(n)) => Rpc::Name(n),
                _ => Rpc::Id(id),
            },
        }
    }
}

/// `/service/method`: one leading slash, two non-empty parts, no control characters.
fn valid_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    match rest.split_once('/') {
        Some((service, method)) => {
            !service.is_empty()
                && !method.is_empty()
                && !method.contains('/')
                && !p.chars().any(char::is_control)
        }
        None => false,
    }
}

/// A gRPC status as OpenTelemetry's `rpc.response.status_code` spells it: the code's name
/// (`OK`, `NOT_FOUND`), the number for codes outside the table; `None` when the kernel could
/// not know it ([`GRPC_STATUS_UNKNOWN`]).
pub fn grpc_status_name(code: u16) -> Option<String> {
    match code {
        GRPC_STATUS_UNKNOWN => None,
        c => Some(
            GRPC_STATUS_NAMES
                .get(c as usize)
                .map_or_else(|| c.to_string(), |n| (*n).to_string()),
        ),
    }
}

/// Whether a call that ended with `code` failed, for a client (every known status but `OK`)
/// or a server (the six that OpenTelemetry's gRPC conventions call server errors: `UNKNOWN`,
/// `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`). An unknown
/// status is no error: nothing says it failed.
pub fn grpc_failed(code: u16, server: bool) -> bool {
    match code {
        0 | GRPC_STATUS_UNKNOWN => false,
        2 | 4 | 12 | 13 | 14 | 15 => true,
        _ => !server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(path: &str) -> u32 {
        rpc_id(path_id(path.as_bytes()))
    }

    #[test]
    fn names_are_checked_against_their_id_and_bounded() {
        let mut n = RpcNames::default();
        let p = "/helloworld.Greeter/SayHello";
        // Not known yet: shown by id, never a guess.
        assert_eq!(n.get(id(p)).label(), Some(format!("rpc#{:08x}", id(p))));
        n.learn(id(p), p.as_bytes());
        assert_eq!(n.get(id(p)), Rpc::Name("helloworld.Greeter/SayHello"));
        n.learn(id(p), p.as_bytes());
        // A path cut short does not hash to the id: refused.
        n.learn(id(p), &p.as_bytes()[..10]);
        // Not a method path, or too long (their ids are theirs: only the shape is wrong).
        n.learn(id("nope"), b"nope");
        let long = format!("/a.B/{}", "x".repeat(MAX_NAME_LEN));
        n.learn(id(&long), long.as_bytes());
        assert_eq!(
            n.counters,
            RpcNameCounters {
                learnt: 1,
                repeated: 1,
                mismatched: 1,
                invalid: 2,
                ..Default::default()
            }
        );
        assert_eq!(n.get(RPC_OTHER).label().as_deref(), Some("_OTHER"));
        assert_eq!(n.get(RPC_UNKNOWN).label(), None);
        // Full: the next name is counted and its method shown by id.
        for i in 0..MAX_NAMES {
            let p = format!("/s.S/M{i}");
            n.learn(id(&p), p.as_bytes());
        }
        assert_eq!(n.len(), MAX_NAMES);
        assert_eq!(n.counters.full, 1);
        let last = format!("/s.S/M{}", MAX_NAMES - 1);
        assert!(matches!(n.get(id(&last)), Rpc::Id(_)));
    }

    #[test]
    fn a_pods_patterns_come_first_then_the_agents_then_the_heuristic() {
        use crate::route_pattern::RoutePattern;
        let route = |t: &str| kite_common::route::route_id_of_text(t.as_bytes());
        let mut n = RpcNames::default();
        n.set_route_patterns(vec![RoutePattern::parse("/files/{name}").unwrap()]);
        for t in ["/orders/*", "/files/report", "/"] {
            n.learn_route(route(t), t.as_bytes(), false);
        }
        n.learn_route(route("/a/very/long"), b"/a/very/long", true);
        let pod = [
            RoutePattern::parse("/orders/{id}").unwrap(),
            RoutePattern::parse("/files/{file}").unwrap(),
            RoutePattern::parse("/a/**").unwrap(),
        ];
        let shown = |pod: &[RoutePattern], t: &str| {
            let (rpc, pattern) = n.route(pod, route(t));
            (rpc.label().unwrap(), pattern)
        };
        // The pod's pattern wins over the heuristic and over --route.
        assert_eq!(shown(&pod, "/orders/*"), ("/orders/{id}".into(), true));
        assert_eq!(shown(&pod, "/files/report"), ("/files/{file}".into(), true));
        assert_eq!(shown(&pod, "/"), ("/".into(), false));
        // Another pod (no patterns): --route, then the heuristic.
        assert_eq!(shown(&[], "/orders/*"), ("/orders/*".into(), false));
        assert_eq!(shown(&[], "/files/report"), ("/files/{name}".into(), true));
        // A text the kernel cut matches no pattern; an unknown id stays an id.
        let (rpc, pattern) = n.route(&pod, route("/a/very/long"));
        assert_eq!((rpc, pattern), (Rpc::Name("/a/very/long…"), false));
        assert!(matches!(n.route(&pod, 12345).0, Rpc::Id(12345)));
    }

    #[test]
    fn a_colliding_id_shows_neither_name() {
        let mut n = RpcNames::default();
        // Same id, two paths: forged by planting an entry (a real FNV-1a collision would do).
        n.names.insert(id("/a.A/X"), Entry::Name("b.B/Y".into()));
        n.learn(id("/a.A/X"), b"/a.A/X");
        assert_eq!(n.counters.collisions, 1);
        assert!(matches!(n.get(id("/a.A/X")), Rpc::Id(_)));
    }

    #[test]
    fn status_names_and_errors_follow_the_conventions() {
        assert_eq!(grpc_status_name(0).as_deref(), Some("OK"));
        assert_eq!(grpc_status_name(5).as_deref(), Some("NOT_FOUND"));
        assert_eq!(grpc_status_name(16).as_deref(), Some("UNAUTHENTICATED"));
        assert_eq!(grpc_status_name(17).as_deref(), Some("17"));
        assert_eq!(grpc_status_name(GRPC_STATUS_UNKNOWN), None);
        // NOT_FOUND: the client's error, not the server's; UNAVAILABLE: both.
        assert!(grpc_failed(5, false) && !grpc_failed(5, true));
        assert!(grpc_failed(14, false) && grpc_failed(14, true));
        assert!(!grpc_failed(0, false) && !grpc_failed(GRPC_STATUS_UNKNOWN, false));
    }
}
