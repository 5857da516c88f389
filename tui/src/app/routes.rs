//! Routes: an HTTP/1 endpoint's routes (`/orders/*`) and a gRPC endpoint's methods, which
//! the agent sends in the same message ([`v1::RpcMethod`]: last window, totals, statuses).
//!
//! Two things live here: the rows of the routes view (`r`: one row per (endpoint, route)
//! across every agent, sorted like the table, slowest p99 first when it opens), and the
//! routes' history. The agent keeps history per endpoint only, so the dashboard keeps each
//! route's last windows itself, one point per snapshot, for the sparklines (bounded: at most
//! [`MAX_ROUTE_SERIES`] routes of [`ROUTE_HISTORY`] points).

use std::{
    cmp::Ordering,
    collections::{HashMap, VecDeque},
};

use kite_proto::v1;

use super::entry::{Entry, EntryKey, SortKey, contains_ignore_ascii_case};

/// Points kept per route: as many windows as an agent keeps per endpoint by default.
pub const ROUTE_HISTORY: usize = 60;
/// Routes followed at most, all agents together (≈ 720 bytes each): beyond it a new route
/// has no sparkline until another goes away.
pub const MAX_ROUTE_SERIES: usize = 20_000;

/// One window of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RoutePoint {
    /// Requests per second.
    pub rps: f32,
    /// p50, seconds (0 when the window had no request).
    pub p50: f32,
    /// p99, seconds (0 when the window had no request).
    pub p99: f32,
}

impl RoutePoint {
    fn of(w: Option<&v1::Window>) -> Self {
        let w = w.cloned().unwrap_or_default();
        let f = |x: Option<f64>| x.filter(|x| x.is_finite() && *x > 0.0).unwrap_or(0.0) as f32;
        Self {
            rps: if w.rps.is_finite() { w.rps as f32 } else { 0.0 },
            p50: f(w.p50_seconds),
            p99: f(w.p99_seconds),
        }
    }
}

/// The routes of one endpoint: (route id, points oldest first), by id.
#[derive(Debug, Clone, Default)]
struct Series {
    /// The snapshot that last had the endpoint.
    seen: u64,
    routes: Vec<(u32, VecDeque<RoutePoint>)>,
}

/// Every route's last windows, per agent and endpoint.
#[derive(Debug, Clone, Default)]
pub struct RouteHistory {
    agents: Vec<HashMap<EntryKey, Series>>,
    /// Routes followed (all agents).
    total: usize,
    /// Snapshots recorded.
    generation: u64,
}

impl RouteHistory {
    /// Adds a point to each route of agent `agent`'s snapshot `entries`; endpoints no longer
    /// in it are forgotten.
    pub fn record(&mut self, agent: usize, entries: &[Entry]) {
        if self.agents.len() <= agent {
            self.agents.resize_with(agent + 1, HashMap::new);
        }
        self.generation += 1;
        let generation = self.generation;
        let map = &mut self.agents[agent];
        for e in entries {
            let calls = e.calls();
            if calls.is_empty() {
                continue;
            }
            if !map.contains_key(&e.key) {
                if self.total >= MAX_ROUTE_SERIES {
                    continue;
                }
                map.insert(e.key.clone(), Series::default());
            }
            let Some(series) = map.get_mut(&e.key) else {
                continue;
            };
            series.seen = generation;
            for c in calls {
                let at = match series.routes.binary_search_by_key(&c.id, |r| r.0) {
                    Ok(at) => at,
                    Err(_) if self.total >= MAX_ROUTE_SERIES => continue,
                    Err(at) => {
                        series.routes.insert(at, (c.id, VecDeque::new()));
                        self.total += 1;
                        at
                    }
                };
                let points = &mut series.routes[at].1;
                if points.len() == ROUTE_HISTORY {
                    points.pop_front();
                }
                points.push_back(RoutePoint::of(c.last.as_ref()));
            }
        }
        let total = &mut self.total;
        map.retain(|_, s| {
            let keep = s.seen == generation;
            if !keep {
                *total -= s.routes.len();
            }
            keep
        });
    }

    /// Forgets agent `agent`'s routes (it left, or its slot was given to another).
    pub fn forget(&mut self, agent: usize) {
        if let Some(map) = self.agents.get_mut(agent) {
            self.total -= map.values().map(|s| s.routes.len()).sum::<usize>();
            map.clear();
        }
    }

    /// The last windows of route `id` of endpoint `key`, oldest first.
    pub fn get(&self, key: &EntryKey, id: u32) -> Option<&VecDeque<RoutePoint>> {
        let s = self.agents.get(key.agent)?.get(key)?;
        let at = s.routes.binary_search_by_key(&id, |r| r.0).ok()?;
        Some(&s.routes[at].1)
    }

    /// Routes followed.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether no route is followed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// Whether a route of `e` is a row of the routes view under the filter `needle` (lower
/// case): the endpoint matches, or the route's name does.
pub(super) fn route_matches(e: &Entry, route: &v1::RpcMethod, needle: &str) -> bool {
    needle.is_empty() || contains_ignore_ascii_case(&route.name, needle) || e.matches_itself(needle)
}

/// The order of two rows of the routes view: (endpoint, route) by `sort`; ties by route,
/// then endpoint. Text columns A to Z, numbers largest first, `reverse` the other way (as
/// the table).
pub(super) fn compare(
    sort: SortKey,
    reverse: bool,
    (ea, ra): (&Entry, &v1::RpcMethod),
    (eb, rb): (&Entry, &v1::RpcMethod),
) -> Ordering {
    let primary = match sort {
        SortKey::Route => ra.name.cmp(&rb.name),
        SortKey::Name => ea.name.cmp(&eb.name).then_with(|| ea.addr.cmp(&eb.addr)),
        k if k.is_text() => k.compare(ea, eb),
        k => k.compare_windows(ra.last.as_ref(), rb.last.as_ref()),
    };
    let names = ra
        .name
        .cmp(&rb.name)
        .then_with(|| ea.name.cmp(&eb.name))
        .then_with(|| ea.addr.cmp(&eb.addr))
        .then_with(|| ea.key.cmp(&eb.key))
        .then_with(|| ra.id.cmp(&rb.id));
    if sort.is_text() {
        let o = primary.then(names);
        if reverse { o.reverse() } else { o }
    } else {
        let primary = if reverse { primary.reverse() } else { primary };
        primary.then(names)
    }
}

impl super::App {
    /// The routes (gRPC methods) of `e` in the order the detail view lists them: by the sort
    /// column when it is a number, else slowest p99 first.
    pub fn routes_of<'a>(&self, e: &'a Entry) -> Vec<&'a v1::RpcMethod> {
        let (sort, reverse) = if self.sort.is_text() {
            (SortKey::P99, false)
        } else {
            (self.sort, self.reverse)
        };
        let mut calls: Vec<&v1::RpcMethod> = e.calls().iter().collect();
        calls.sort_by(|a, b| compare(sort, reverse, (e, a), (e, b)));
        calls
    }

    /// The route (method) of the selected row, when it is one of `e`'s: the detail view
    /// marks it.
    pub fn selected_route(&self, e: &Entry) -> Option<u32> {
        let v = self.row_view(self.selected)?;
        (v.entry.key == e.key).then_some(v.method?.id)
    }
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyCode;

    use super::*;
    use crate::app::{
        AgentEvent, App, Event, Stats,
        tests::{agent_interval, ch, feed, greeter, key, routed_endpoint, snapshot, spread},
    };

    /// Two HTTP/1 endpoints with routes whose latencies are known, and the greeter (gRPC).
    fn shop() -> (App, Vec<(String, Vec<f64>)>) {
        let orders = spread(2.0, 12.0, 200);
        // Mostly fast, with a slow tail: a high p99, a low p50.
        let mut users = spread(0.5, 1.0, 95);
        users.extend(spread(80.0, 120.0, 5));
        let root = spread(0.1, 0.3, 50);
        let search = spread(20.0, 30.0, 40);
        let web = routed_endpoint(
            "web-0",
            80,
            &[
                ("/orders/*", 1, &orders, 4, 6),
                ("/users/*", 2, &users, 0, 0),
                ("/", 3, &root, 0, 0),
            ],
        );
        let api = routed_endpoint("api-0", 81, &[("/search", 4, &search, 0, 2)]);
        let mut app = App::new(vec!["127.0.0.1:7777".into()], (120, 40));
        feed(
            &mut app,
            Event::Agent(
                0,
                AgentEvent::Snapshot(snapshot("node-a", vec![web, api, greeter()])),
            ),
        );
        let lat = [
            ("/orders/*", orders),
            ("/users/*", users),
            ("/", root),
            ("/search", search),
        ];
        (
            app,
            lat.into_iter().map(|(n, l)| (n.to_string(), l)).collect(),
        )
    }

    fn shown(app: &App) -> Vec<(String, Stats)> {
        (0..app.row_count())
            .map(|i| {
                let m = app.row_view(i).unwrap().method.expect("a route row");
                (m.name.clone(), Stats::of(m.last.as_ref().unwrap()))
            })
            .collect()
    }

    #[test]
    fn the_routes_view_orders_routes_by_the_percentiles_of_their_histograms() {
        let (mut app, latencies) = shop();
        // The percentiles of each route as its histogram gives them (what the agent sends).
        let expected: HashMap<String, [f64; 3]> = latencies
            .iter()
            .map(|(name, l)| {
                let iv = agent_interval(l, 0, 0);
                let q = |q: f64| iv.hist.quantile(q).unwrap().round() / 1e9;
                (name.clone(), [q(0.5), q(0.9), q(0.99)])
            })
            .collect();
        feed(&mut app, ch('r'));
        assert!(app.routes);
        assert_eq!(app.sort, SortKey::P99);
        // Every route of every endpoint: 4 HTTP/1 routes and the greeter's 3 methods.
        let rows = shown(&app);
        assert_eq!(rows.len(), 7, "{rows:?}");
        let http: Vec<&(String, Stats)> = rows.iter().filter(|(n, _)| n.starts_with('/')).collect();
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() <= b * 1e-9;
        for (name, s) in &http {
            let [p50, p90, p99] = expected[name.as_str()];
            assert!(close(s.p50, p50), "{name} p50 {:?} vs {p50}", s.p50);
            assert!(close(s.p90, p90), "{name} p90 {:?} vs {p90}", s.p90);
            assert!(close(s.p99, p99), "{name} p99 {:?} vs {p99}", s.p99);
        }
        // Slowest p99 first: /users/* (its tail) above /search above /orders/* above /.
        let order: Vec<&str> = http.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["/users/*", "/search", "/orders/*", "/"]);
        let p99s: Vec<f64> = rows.iter().map(|(_, s)| s.p99.unwrap_or(-1.0)).collect();
        assert!(p99s.windows(2).all(|w| w[0] >= w[1]), "{p99s:?}");
        // By p50 (its column's digit) the tail no longer counts: /search, /orders/*, /users/*.
        let p50_col = crate::ui::table_columns(&app)
            .iter()
            .position(|k| *k == SortKey::P50)
            .unwrap();
        feed(&mut app, ch(char::from(b'1' + p50_col as u8)));
        assert_eq!(app.sort, SortKey::P50);
        let order: Vec<String> = shown(&app)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with('/'))
            .collect();
        assert_eq!(order, ["/search", "/orders/*", "/users/*", "/"]);
        // Reversed: fastest first.
        feed(&mut app, ch('S'));
        assert_eq!(shown(&app)[0].0, "/");
        // The filter keeps the routes that match (or whose endpoint does).
        feed(&mut app, ch('/'));
        for c in "orders".chars() {
            feed(&mut app, ch(c));
        }
        feed(&mut app, key(KeyCode::Enter));
        assert_eq!(
            shown(&app).into_iter().map(|r| r.0).collect::<Vec<_>>(),
            ["/orders/*"]
        );
        feed(&mut app, key(KeyCode::Esc));
        // Back to the endpoints, with the sort they had.
        feed(&mut app, ch('r'));
        assert!(!app.routes);
        assert_eq!((app.sort, app.reverse), (SortKey::Rps, false));
        assert_eq!(app.row_count(), 3);
    }

    #[test]
    fn enter_on_a_route_opens_its_endpoint_with_the_route_marked() {
        let (mut app, _) = shop();
        feed(&mut app, ch('r'));
        // The first row: /users/* of web-0.
        feed(&mut app, key(KeyCode::Enter));
        let crate::app::View::Detail(e) = &app.view else {
            panic!("not the detail view");
        };
        assert_eq!(e.key.port, 80);
        assert_eq!(app.selected_route(e), Some(2));
        // Its routes, slowest p99 first.
        let names: Vec<&str> = app.routes_of(e).iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["/users/*", "/orders/*", "/"]);
        // ↓ moves to the next route row, /search of api-0.
        feed(&mut app, key(KeyCode::Down));
        let crate::app::View::Detail(e) = &app.view else {
            panic!("not the detail view");
        };
        assert_eq!((e.key.port, app.selected_route(e)), (81, Some(4)));
        // Esc: back to the routes view; Esc again: the endpoints.
        feed(&mut app, key(KeyCode::Esc));
        assert!(app.routes);
        feed(&mut app, key(KeyCode::Esc));
        assert!(!app.routes);
    }

    #[test]
    fn an_http_endpoint_unfolds_into_its_routes() {
        let (mut app, _) = shop();
        // Sorted by RPS: web-0 (350 requests) first.
        feed(&mut app, key(KeyCode::Right));
        let names: Vec<Option<String>> = (0..app.row_count())
            .map(|i| app.row_view(i).unwrap().method.map(|m| m.name.clone()))
            .collect();
        assert_eq!(
            names[..4],
            [
                None,
                Some("/orders/*".to_string()),
                Some("/users/*".to_string()),
                Some("/".to_string())
            ]
        );
    }

    #[test]
    fn route_history_keeps_a_point_per_snapshot_and_forgets_endpoints_that_went() {
        let mut app = App::new(vec!["a:1".into()], (120, 40));
        let web = |ms: f64| routed_endpoint("web-0", 80, &[("/a", 7, &[ms; 10], 0, 0)]);
        for i in 0..(ROUTE_HISTORY + 5) {
            feed(
                &mut app,
                Event::Agent(
                    0,
                    AgentEvent::Snapshot(snapshot("n", vec![web(1.0 + i as f64)])),
                ),
            );
        }
        let key = app.row(0).unwrap().key.clone();
        let h = app.route_points(&key, 7).unwrap();
        assert_eq!(h.len(), ROUTE_HISTORY);
        assert_eq!(h.back().unwrap().rps, 10.0);
        // The newest point is the last window's p99 (≈ 1 + 64 ms).
        assert!((f64::from(h.back().unwrap().p99) - 0.065).abs() < 0.065 * 0.05);
        assert_eq!(app.route_history.len(), 1);
        feed(
            &mut app,
            Event::Agent(0, AgentEvent::Snapshot(snapshot("n", vec![]))),
        );
        assert!(app.route_points(&key, 7).is_none());
        assert_eq!(app.route_history.len(), 0);
    }
}
