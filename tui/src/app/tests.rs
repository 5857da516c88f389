//! The dashboard's state driven by made-up events.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyEventState, KeyModifiers};

use super::{entry::contains_ignore_ascii_case, *};

pub(crate) fn key(code: KeyCode) -> Event {
    Event::Key(KeyEvent {
        code,
        modifiers: KeyModifiers::NONE,
        kind: KeyEventKind::Press,
        state: KeyEventState::NONE,
    })
}

pub(crate) fn ch(c: char) -> Event {
    key(KeyCode::Char(c))
}

/// An endpoint with these numbers.
pub(crate) fn endpoint(
    ns_pod: Option<(&str, &str)>,
    cgroup: &str,
    port: u32,
    rps: f64,
    p99_ms: Option<f64>,
    err: f64,
) -> v1::Endpoint {
    let requests = rps.round() as u64;
    let errors = (requests as f64 * err).round() as u64;
    v1::Endpoint {
        id: Some(v1::EndpointId {
            node: String::new(),
            cgroup_id: 1000 + u64::from(port),
            cgroup_path: cgroup.into(),
            direction: v1::Direction::Inbound as i32,
            ip: "10.0.0.1".into(),
            port,
            protocol: v1::Protocol::Http11 as i32,
            tls: false,
        }),
        workload: ns_pod.map(|(ns, pod)| v1::Workload {
            namespace: ns.into(),
            pod: pod.into(),
            ..Default::default()
        }),
        last: Some(v1::Window {
            seconds: 1.0,
            requests,
            rps,
            p50_seconds: p99_ms.map(|ms| ms / 4e3),
            p90_seconds: p99_ms.map(|ms| ms / 2e3),
            p99_seconds: p99_ms.map(|ms| ms / 1e3),
            status_5xx: errors,
            error_ratio: err,
            request_bytes_per_second: rps * 100.0,
            response_bytes_per_second: rps * 1000.0,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A gRPC method of a fixture: (name, id, rps, p99 ms, grpc-statuses as (code, name, calls)).
pub(crate) type MethodFixture<'a> = (&'a str, u32, f64, f64, &'a [(u32, &'a str, u64)]);

/// A gRPC endpoint (inbound, port `port`) whose methods have these (name, id, rps, p99 ms,
/// grpc-statuses as (code, name, calls)); an empty name is a method whose path was not
/// knowable. The endpoint's window is the sum of its methods'.
pub(crate) fn grpc_endpoint(
    pod: &str,
    port: u32,
    tls: bool,
    methods: &[MethodFixture<'_>],
) -> v1::Endpoint {
    let mut e = endpoint(Some(("shop", pod)), "", port, 0.0, None, 0.0);
    if let Some(id) = e.id.as_mut() {
        id.protocol = v1::Protocol::Grpc as i32;
        id.tls = tls;
    }
    let failed = |st: &[(u32, &str, u64)]| {
        st.iter()
            .filter(|(c, _, _)| *c != 0 && *c != 0xffff)
            .map(|(_, _, n)| n)
            .sum::<u64>()
    };
    let server_failed = |st: &[(u32, &str, u64)]| {
        st.iter()
            .filter(|(c, _, _)| matches!(c, 2 | 4 | 12 | 13 | 14 | 15))
            .map(|(_, _, n)| n)
            .sum::<u64>()
    };
    let statuses = |st: &[(u32, &str, u64)]| -> Vec<v1::StatusCount> {
        st.iter()
            .map(|(status, name, count)| v1::StatusCount {
                status: *status,
                count: *count,
                name: name.to_string(),
            })
            .collect()
    };
    let mut all: std::collections::BTreeMap<u32, v1::StatusCount> = Default::default();
    let mut w = v1::Window {
        seconds: 1.0,
        ..Default::default()
    };
    for (name, id, rps, p99_ms, st) in methods {
        let requests: u64 = st.iter().map(|(_, _, n)| n).sum();
        let errors = failed(st);
        let mw = v1::Window {
            seconds: 1.0,
            requests,
            rps: *rps,
            p50_seconds: Some(p99_ms / 4e3),
            p90_seconds: Some(p99_ms / 2e3),
            p99_seconds: Some(p99_ms / 1e3),
            rpc_errors: errors,
            rpc_server_errors: server_failed(st),
            error_ratio: errors as f64 / requests.max(1) as f64,
            ..Default::default()
        };
        w.requests += requests;
        w.rps += rps;
        w.rpc_errors += errors;
        w.rpc_server_errors += server_failed(st);
        w.p99_seconds = Some(w.p99_seconds.unwrap_or(0.0).max(p99_ms / 1e3));
        w.p50_seconds = Some(w.p50_seconds.unwrap_or(0.0).max(p99_ms / 4e3));
        w.p90_seconds = Some(w.p90_seconds.unwrap_or(0.0).max(p99_ms / 2e3));
        for s in statuses(st) {
            all.entry(s.status)
                .and_modify(|a| a.count += s.count)
                .or_insert(s);
        }
        e.rpcs.push(v1::RpcMethod {
            name: name.to_string(),
            id: *id,
            last: Some(mw),
            totals: Some(v1::Totals {
                requests: requests * 100,
                rpc_errors: errors * 100,
                ..Default::default()
            }),
            statuses: statuses(st),
        });
    }
    w.error_ratio = w.rpc_errors as f64 / w.requests.max(1) as f64;
    e.last = Some(w);
    e.statuses = all.into_values().collect();
    e.methods = vec![v1::MethodCount {
        method: "POST".into(),
        count: w.requests,
    }];
    e
}

/// The gRPC endpoint of the tests: three methods, one failing with NOT_FOUND and UNAVAILABLE,
/// one whose name the agent has not learnt.
pub(crate) fn greeter() -> v1::Endpoint {
    grpc_endpoint(
        "greeter-0",
        50051,
        true,
        &[
            (
                "helloworld.Greeter/SayHello",
                0x1a2b_3c4d,
                300.0,
                4.0,
                &[(0, "OK", 280), (5, "NOT_FOUND", 15), (14, "UNAVAILABLE", 5)],
            ),
            (
                "helloworld.Greeter/Lookup",
                0x5e6f_7081,
                40.0,
                12.0,
                &[(0, "OK", 40)],
            ),
            ("rpc#9abcdef0", 0x9abc_def0, 2.0, 1.0, &[(0, "OK", 2)]),
        ],
    )
}

/// Latencies spread over `lo..hi` ms, `n` of them.
pub(crate) fn spread(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / n as f64)
        .collect()
}

/// A route's requests: latencies in ms, and how many of them answered 5xx and 4xx (the
/// rest 200).
pub(crate) type RouteFixture<'a> = (&'a str, u32, &'a [f64], u64, u64);

/// A window of the agent's: its own figures (`kite_agent`'s `window`) of these latencies
/// recorded in its histogram over one second.
pub(crate) fn agent_interval(
    latencies_ms: &[f64],
    s5: u64,
    s4: u64,
) -> kite_agent::stats::Interval {
    let mut iv = kite_agent::stats::Interval {
        secs: 1.0,
        requests: latencies_ms.len() as u64,
        status_5xx: s5,
        status_4xx: s4,
        req_bytes: 100 * latencies_ms.len() as u64,
        resp_bytes: 1000 * latencies_ms.len() as u64,
        ..Default::default()
    };
    for ms in latencies_ms {
        let ns = (ms * 1e6).round() as u64;
        iv.hist.record(ns);
        iv.latency_sum_ns += ns;
    }
    iv
}

/// An HTTP/1 endpoint (inbound, `shop/<pod>`, port `port`) with these routes; each route's
/// window is the agent's figures of its latencies, the endpoint's those of all of them.
pub(crate) fn routed_endpoint(pod: &str, port: u32, routes: &[RouteFixture<'_>]) -> v1::Endpoint {
    use kite_agent::daemon::grpc::window;
    let mut e = endpoint(Some(("shop", pod)), "", port, 0.0, None, 0.0);
    let mut all = kite_agent::stats::Interval::default();
    for (name, id, lat, s5, s4) in routes {
        let iv = agent_interval(lat, *s5, *s4);
        all.merge(&iv);
        let ok = iv.requests - s5 - s4;
        e.routes.push(v1::RpcMethod {
            name: name.to_string(),
            id: *id,
            last: Some(window(&iv)),
            totals: Some(v1::Totals {
                requests: iv.requests * 10,
                ..Default::default()
            }),
            statuses: [(200, ok), (404, *s4), (503, *s5)]
                .into_iter()
                .filter(|s| s.1 > 0)
                .map(|(status, count)| v1::StatusCount {
                    status,
                    count,
                    name: String::new(),
                })
                .collect(),
        });
    }
    e.last = Some(window(&all));
    // The endpoint's statuses and histogram, as the agent sends them for the focus.
    let mut statuses: std::collections::BTreeMap<u32, u64> = Default::default();
    for r in &e.routes {
        for st in &r.statuses {
            *statuses.entry(st.status).or_default() += st.count;
        }
    }
    e.statuses = statuses
        .into_iter()
        .map(|(status, count)| v1::StatusCount {
            status,
            count,
            name: String::new(),
        })
        .collect();
    e.histogram = Some(v1::Histogram {
        buckets: all
            .hist
            .native()
            .map(|(b, count)| v1::Bucket {
                lower_seconds: b.lower_seconds(),
                upper_seconds: b.upper_seconds(),
                count,
            })
            .collect(),
    });
    e
}

pub(crate) fn snapshot(node: &str, endpoints: Vec<v1::Endpoint>) -> Box<v1::Snapshot> {
    Box::new(v1::Snapshot {
        time_unix_ms: 1_700_000_000_000,
        window_seconds: 1.0,
        node: node.into(),
        endpoints,
    })
}

/// Applies an event the way the event loop does (a batch of one: rows settled after).
pub(crate) fn feed(app: &mut App, event: Event) {
    let mut next = app.action(event);
    while let Some(a) = next {
        next = app.update(a);
    }
    app.settle();
}

fn three() -> App {
    let mut app = App::new(vec!["127.0.0.1:7777".into()], (100, 30));
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Snapshot(snapshot(
                "node-a",
                vec![
                    endpoint(Some(("shop", "web-1")), "", 80, 120.0, Some(4.0), 0.0),
                    endpoint(Some(("shop", "api-1")), "", 8080, 950.0, Some(2.0), 0.1),
                    endpoint(
                        None,
                        "/system.slice/nginx.service",
                        443,
                        5.0,
                        Some(40.0),
                        0.5,
                    ),
                ],
            )),
        ),
    );
    app
}

fn names(app: &App) -> Vec<&str> {
    (0..app.row_count())
        .map(|i| app.row(i).unwrap().name.as_str())
        .collect()
}

/// Presses the digit of `col` in the table as it is laid out now.
fn sort_key(app: &App, col: SortKey) -> Event {
    let i = crate::ui::table_columns(app)
        .iter()
        .position(|k| *k == col)
        .unwrap_or_else(|| panic!("{col:?} not shown"));
    ch(if i == 9 {
        '0'
    } else {
        char::from(b'1' + i as u8)
    })
}

fn sort_on(app: &mut App, col: SortKey) {
    let k = sort_key(app, col);
    feed(app, k);
}

#[test]
fn rows_sort_by_each_column_and_reverse() {
    let mut app = three();
    assert_eq!(
        names(&app),
        ["shop/api-1", "shop/web-1", "/system.slice/nginx.service"]
    );
    // The columns at 100 wide, each reachable by its digit.
    assert_eq!(
        crate::ui::table_columns(&app),
        [
            SortKey::Name,
            SortKey::Endpoint,
            SortKey::Dir,
            SortKey::Proto,
            SortKey::Rps,
            SortKey::P50,
            SortKey::P90,
            SortKey::P99,
            SortKey::Errors,
            SortKey::ClientErrors,
            SortKey::Bytes,
        ]
    );
    sort_on(&mut app, SortKey::P99);
    assert_eq!(app.sort, SortKey::P99);
    assert_eq!(
        names(&app),
        ["/system.slice/nginx.service", "shop/web-1", "shop/api-1"]
    );
    sort_on(&mut app, SortKey::Errors);
    assert_eq!(app.sort, SortKey::Errors);
    assert_eq!(app.row(0).unwrap().name, "/system.slice/nginx.service");
    sort_on(&mut app, SortKey::Endpoint);
    assert_eq!(app.sort, SortKey::Endpoint);
    // 10.0.0.1:80, :443, :8080.
    assert_eq!(
        names(&app),
        ["shop/web-1", "/system.slice/nginx.service", "shop/api-1"]
    );
    sort_on(&mut app, SortKey::Name);
    assert_eq!(app.sort, SortKey::Name);
    assert_eq!(
        names(&app),
        ["/system.slice/nginx.service", "shop/api-1", "shop/web-1"]
    );
    // The same digit again reverses; so does S.
    sort_on(&mut app, SortKey::Name);
    assert!(app.reverse);
    assert_eq!(
        names(&app),
        ["shop/web-1", "shop/api-1", "/system.slice/nginx.service"]
    );
    feed(&mut app, ch('S'));
    assert!(!app.reverse);
    // s and > move one column right, < one left, keeping the natural order.
    feed(&mut app, ch('S'));
    feed(&mut app, ch('s'));
    assert_eq!((app.sort, app.reverse), (SortKey::Endpoint, false));
    feed(&mut app, ch('>'));
    assert_eq!(app.sort, SortKey::Dir);
    feed(&mut app, ch('<'));
    feed(&mut app, ch('<'));
    assert_eq!(app.sort, SortKey::Name);
    feed(&mut app, ch('<'));
    assert_eq!(app.sort, SortKey::Bytes);
    assert_eq!(app.row(0).unwrap().name, "shop/api-1");
}

#[test]
fn errors_are_5xx_and_4xx_apart_and_totals_split_by_direction() {
    let mut app = App::new(vec!["a:1".into()], (120, 40));
    let mut server = endpoint(Some(("shop", "web")), "", 80, 100.0, Some(1.0), 0.05);
    let mut client = endpoint(Some(("shop", "web")), "", 9000, 40.0, Some(1.0), 0.0);
    if let (Some(w), Some(id)) = (server.last.as_mut(), server.id.as_ref()) {
        assert_eq!(id.direction, v1::Direction::Inbound as i32);
        // 5 × 5xx (from the fixture), 10 × 4xx: ERR% is 5 %, 4XX% 10 % (not 15 %).
        w.status_4xx = 10;
    }
    if let (Some(w), Some(id)) = (client.last.as_mut(), client.id.as_mut()) {
        id.direction = v1::Direction::Outbound as i32;
        id.ip = "10.0.0.9".into();
        w.status_4xx = 4;
    }
    feed(
        &mut app,
        Event::Agent(0, AgentEvent::Snapshot(snapshot("n", vec![server, client]))),
    );
    let (i, o) = (app.totals.inbound, app.totals.outbound);
    assert_eq!(
        (i.rps, i.requests, i.errors, i.client_errors),
        (100.0, 100, 5, 10)
    );
    assert!((i.error_ratio() - 0.05).abs() < 1e-12);
    assert!((i.client_error_ratio() - 0.10).abs() < 1e-12);
    assert_eq!(
        (o.rps, o.requests, o.errors, o.client_errors),
        (40.0, 40, 0, 4)
    );
    // d: inbound only, outbound only, both.
    feed(&mut app, ch('d'));
    assert_eq!(app.direction, Some(v1::Direction::Inbound));
    assert_eq!(app.row_count(), 1);
    assert_eq!(app.row(0).unwrap().key.port, 80);
    assert_eq!(app.totals.outbound, Stats::default());
    feed(&mut app, ch('d'));
    assert_eq!(app.row_count(), 1);
    assert_eq!(app.row(0).unwrap().key.port, 9000);
    assert_eq!(app.totals.inbound, Stats::default());
    feed(&mut app, ch('d'));
    assert_eq!((app.direction, app.row_count()), (None, 2));
    // Sorting by 4XX%: the server endpoint (10 %) before the client one (10 % of 40 = 4).
    sort_on(&mut app, SortKey::ClientErrors);
    assert_eq!(app.row(0).unwrap().key.port, 80);
}

#[test]
fn moving_stays_in_bounds_and_selection_follows_its_endpoint() {
    let mut app = three();
    feed(&mut app, key(KeyCode::Up));
    assert_eq!(app.selected, 0);
    feed(&mut app, ch('j'));
    assert_eq!(app.selected_entry().unwrap().name, "shop/web-1");
    feed(&mut app, ch('G'));
    assert_eq!(app.selected, 2);
    feed(&mut app, key(KeyCode::Down));
    assert_eq!(app.selected, 2);
    feed(&mut app, key(KeyCode::Home));
    assert_eq!(app.selected, 0);
    feed(&mut app, key(KeyCode::PageDown));
    assert_eq!(app.selected, 2);
    feed(&mut app, key(KeyCode::PageUp));
    assert_eq!(app.selected, 0);
    // Select web-1, then it becomes the busiest: the selection moves with it.
    feed(&mut app, ch('j'));
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Snapshot(snapshot(
                "node-a",
                vec![
                    endpoint(Some(("shop", "web-1")), "", 80, 5000.0, Some(4.0), 0.0),
                    endpoint(Some(("shop", "api-1")), "", 8080, 950.0, Some(2.0), 0.1),
                ],
            )),
        ),
    );
    assert_eq!(app.selected, 0);
    assert_eq!(app.selected_entry().unwrap().name, "shop/web-1");
}

#[test]
fn scrolling_keeps_the_selection_visible() {
    let mut app = App::new(vec!["a".into()], (80, 24));
    let eps = (0..100)
        .map(|i| {
            endpoint(
                None,
                &format!("/cg/{i:03}"),
                1000 + i,
                1000.0 - i as f64,
                None,
                0.0,
            )
        })
        .collect();
    feed(
        &mut app,
        Event::Agent(0, AgentEvent::Snapshot(snapshot("n", eps))),
    );
    let page = crate::ui::table_body_height(&app);
    assert!(page > 5 && page < 24, "{page}");
    feed(&mut app, key(KeyCode::PageDown));
    assert_eq!(app.selected, page);
    assert!(app.offset <= app.selected && app.selected < app.offset + page);
    feed(&mut app, key(KeyCode::End));
    assert_eq!((app.selected, app.offset), (99, 100 - page));
    feed(&mut app, Event::Resize(80, 50));
    assert!(app.offset <= 99 && 99 < app.offset + crate::ui::table_body_height(&app));
    feed(&mut app, key(KeyCode::Home));
    assert_eq!((app.selected, app.offset), (0, 0));
}

#[test]
fn filter_previews_while_typing_applies_on_enter_and_esc_clears() {
    let mut app = three();
    feed(&mut app, ch('/'));
    assert_eq!(app.input.as_deref(), Some(""));
    // While typing, `q` and `s` are text, not commands.
    for c in "SHOP/w".chars() {
        feed(&mut app, ch(c));
    }
    assert!(!app.quit);
    assert_eq!(names(&app), ["shop/web-1"]);
    feed(&mut app, key(KeyCode::Backspace));
    feed(&mut app, key(KeyCode::Backspace));
    assert_eq!(names(&app), ["shop/api-1", "shop/web-1"]);
    feed(&mut app, key(KeyCode::Enter));
    assert_eq!((app.input.as_deref(), app.filter.as_str()), (None, "SHOP"));
    assert_eq!(app.row_count(), 2);
    // Addresses and directions match too.
    feed(&mut app, ch('/'));
    feed(&mut app, key(KeyCode::Esc));
    assert_eq!((app.input.as_deref(), app.filter.as_str()), (None, ""));
    assert_eq!(app.row_count(), 3);
    feed(&mut app, ch('/'));
    for c in ":443".chars() {
        feed(&mut app, ch(c));
    }
    feed(&mut app, key(KeyCode::Enter));
    assert_eq!(names(&app), ["/system.slice/nginx.service"]);
    // Esc in the table clears an applied filter.
    feed(&mut app, key(KeyCode::Esc));
    assert_eq!(app.row_count(), 3);
    // Totals follow the filter.
    assert_eq!(app.totals.inbound.rps, 1075.0);
    assert_eq!(app.totals.outbound.rps, 0.0);
}

#[test]
fn an_agent_that_goes_down_keeps_its_rows_stale_until_it_returns_or_they_are_hidden() {
    let mut app = App::new(vec!["a:1".into(), "b:1".into()], (120, 40));
    let t0 = app.now;
    let eps = |port: u32, rps: f64| {
        vec![endpoint(
            Some(("shop", "web")),
            "",
            port,
            rps,
            Some(2.0),
            0.0,
        )]
    };
    feed(
        &mut app,
        Event::Agent(0, AgentEvent::Snapshot(snapshot("n0", eps(80, 100.0)))),
    );
    feed(
        &mut app,
        Event::Agent(1, AgentEvent::Snapshot(snapshot("n1", eps(81, 50.0)))),
    );
    assert_eq!(app.totals.inbound.rps, 150.0);
    assert!(!app.row_is_stale(0) && !app.row_is_stale(1));
    // Agent 1 goes down: its row stays, stale, out of the totals.
    feed(
        &mut app,
        Event::Agent(
            1,
            AgentEvent::Down {
                error: "connection refused".into(),
                retry_in: Duration::from_secs(1),
            },
        ),
    );
    assert_eq!(app.row_count(), 2);
    assert_eq!(app.stale_rows, 1);
    assert_eq!(app.totals.inbound.rps, 100.0);
    let stale: Vec<bool> = (0..2).map(|i| app.row_is_stale(i)).collect();
    assert_eq!(stale, [false, true]);
    // Its age follows the clock, also while it reconnects.
    feed(&mut app, Event::Tick(t0 + Duration::from_secs(12)));
    feed(
        &mut app,
        Event::Agent(1, AgentEvent::Connecting { attempt: 2 }),
    );
    let age = app.stale_for(1).unwrap().as_secs();
    assert!((11..=13).contains(&age), "{age}");
    assert_eq!(app.stale_for(0), None);
    // x hides the stale rows and shows them again.
    feed(&mut app, ch('x'));
    assert_eq!(app.row_count(), 1);
    assert_eq!(app.row(0).unwrap().key.agent, 0);
    feed(&mut app, ch('x'));
    assert_eq!(app.row_count(), 2);
    // Back: live again, in the totals.
    feed(&mut app, Event::Agent(1, AgentEvent::Connected));
    feed(
        &mut app,
        Event::Agent(1, AgentEvent::Snapshot(snapshot("n1", eps(81, 60.0)))),
    );
    assert_eq!(app.stale_rows, 0);
    assert_eq!(app.stale_for(1), None);
    assert!(!app.row_is_stale(0) && !app.row_is_stale(1));
    assert_eq!(app.totals.inbound.rps, 160.0);
}

#[test]
fn g_groups_by_workload_then_namespace_and_enter_expands_a_group() {
    let mut app = App::new(vec!["a:1".into(), "b:1".into()], (120, 40));
    let ep = |pod: &str, wl: &str, ns: &str, port: u32, rps: f64, lo_us: f64| {
        let mut e = endpoint(Some((ns, pod)), "", port, rps, Some(1.0), 0.0);
        e.workload.as_mut().unwrap().workload_name = wl.into();
        e.histogram = Some(v1::Histogram {
            buckets: vec![v1::Bucket {
                lower_seconds: lo_us / 1e6,
                upper_seconds: lo_us * 1.1 / 1e6,
                count: rps as u64,
            }],
        });
        e
    };
    // web on two nodes (pods web-a, web-b), db on one; all in shop.
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Snapshot(snapshot(
                "n0",
                vec![
                    ep("web-a", "web", "shop", 80, 90.0, 100.0),
                    ep("db-0", "db", "shop", 5432, 4.0, 50.0),
                ],
            )),
        ),
    );
    feed(
        &mut app,
        Event::Agent(
            1,
            AgentEvent::Snapshot(snapshot(
                "n1",
                vec![ep("web-b", "web", "shop", 80, 10.0, 1000.0)],
            )),
        ),
    );
    assert!(!app.wants_histograms());
    assert_eq!(app.row_count(), 3);
    feed(&mut app, ch('g'));
    assert_eq!(app.grouping, Grouping::Workload);
    assert!(app.wants_histograms(), "the stream must bring histograms");
    // Two groups, busiest first; web spans both agents.
    assert_eq!(app.row_count(), 2);
    let web = app.group_row(0).unwrap();
    assert_eq!((web.name.as_str(), web.members.len()), ("shop/web", 2));
    assert_eq!(web.stats.rps, 100.0);
    assert_eq!(web.node, "2 nodes");
    // Its p99 from the merged histogram: rank 99 of 100 is 9/10 into (1000, 1100] µs.
    assert!((web.stats.p99.unwrap() - 1090e-6).abs() < 1e-12);
    assert_eq!(app.endpoint_rows(), 3);
    // Enter expands the selected group: its endpoints under it; Enter again folds it.
    feed(&mut app, key(KeyCode::Enter));
    assert_eq!(app.view, View::Table);
    assert_eq!(app.row_count(), 4);
    assert!(app.is_member_row(1) && app.is_member_row(2) && !app.is_member_row(3));
    assert_eq!(app.row(1).unwrap().key.port, 80);
    // A member opens in detail; h folds back to its group, which stays selected.
    feed(&mut app, ch('j'));
    feed(&mut app, key(KeyCode::Enter));
    assert!(matches!(app.view, View::Detail(_)));
    feed(&mut app, key(KeyCode::Esc));
    feed(&mut app, ch('h'));
    assert_eq!(app.row_count(), 2);
    assert_eq!(app.group_row(app.selected).unwrap().name, "shop/web");
    // The selection follows its group across a re-sort.
    feed(&mut app, ch('j'));
    assert_eq!(app.group_row(app.selected).unwrap().name, "shop/db");
    feed(&mut app, ch('S'));
    assert_eq!(app.group_row(0).unwrap().name, "shop/db");
    assert_eq!(app.group_row(app.selected).unwrap().name, "shop/db");
    // By namespace: one group of all three, in and out apart.
    feed(&mut app, ch('g'));
    assert_eq!(app.grouping, Grouping::Namespace);
    assert_eq!(app.row_count(), 1);
    assert_eq!(app.group_row(0).unwrap().stats.requests, 104);
    // Back to endpoints.
    feed(&mut app, ch('g'));
    assert_eq!(app.grouping, Grouping::Endpoint);
    assert_eq!(app.row_count(), 3);
    assert!(!app.wants_histograms());
}

#[test]
fn detail_opens_on_the_selection_follows_moves_and_survives_the_endpoint() {
    let mut app = three();
    feed(&mut app, ch('j'));
    feed(&mut app, key(KeyCode::Enter));
    let View::Detail(d) = &app.view else {
        panic!("not in detail")
    };
    assert_eq!(d.name, "shop/web-1");
    // Keys move the selection, the detail follows.
    feed(&mut app, ch('j'));
    let View::Detail(d) = &app.view else {
        panic!("not in detail")
    };
    assert_eq!(d.name, "/system.slice/nginx.service");
    assert!(app.detail_is_live());
    // The agent goes down: the detail keeps its last copy.
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Down {
                error: "connection refused".into(),
                retry_in: Duration::from_millis(500),
            },
        ),
    );
    assert!(matches!(&app.view, View::Detail(d) if d.name == "/system.slice/nginx.service"));
    assert!(app.stale_for(0).is_some(), "its rows are stale");
    // The endpoint then leaves the agent's snapshots: the detail still keeps its copy.
    feed(
        &mut app,
        Event::Agent(0, AgentEvent::Snapshot(snapshot("node-a", vec![]))),
    );
    assert!(matches!(&app.view, View::Detail(d) if d.name == "/system.slice/nginx.service"));
    assert!(!app.detail_is_live());
    assert_eq!(app.row_count(), 0);
    feed(&mut app, key(KeyCode::Esc));
    assert_eq!(app.view, View::Table);
    // Enter on an empty table does nothing.
    feed(&mut app, key(KeyCode::Enter));
    assert_eq!(app.view, View::Table);
}

#[test]
fn pause_freezes_the_rows_but_not_the_connection_states() {
    let mut app = three();
    feed(&mut app, ch(' '));
    assert!(app.paused);
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Snapshot(snapshot(
                "node-a",
                vec![endpoint(Some(("x", "y")), "", 1, 1.0, None, 0.0)],
            )),
        ),
    );
    assert_eq!(app.row_count(), 3);
    assert_eq!(app.agents[0].endpoints, 1);
    feed(&mut app, ch(' '));
    assert_eq!(names(&app), ["x/y"]);
}

#[test]
fn help_quit_and_connection_states() {
    let mut app = three();
    feed(&mut app, ch('?'));
    assert!(app.help);
    // Other keys do nothing while the help is up.
    feed(&mut app, ch('s'));
    assert_eq!(app.sort, SortKey::Rps);
    feed(&mut app, key(KeyCode::Esc));
    assert!(!app.help);
    feed(
        &mut app,
        Event::Agent(0, AgentEvent::Connecting { attempt: 3 }),
    );
    assert_eq!(app.agents[0].conn, Conn::Connecting { attempt: 3 });
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Down {
                error: "refused".into(),
                retry_in: Duration::from_secs(1),
            },
        ),
    );
    assert_eq!(app.agents[0].last_error.as_deref(), Some("refused"));
    feed(&mut app, Event::Agent(0, AgentEvent::Connected));
    assert_eq!(
        (&app.agents[0].conn, &app.agents[0].last_error),
        (&Conn::Connected, &None)
    );
    // Events for agents that do not exist are ignored.
    feed(&mut app, Event::Agent(7, AgentEvent::Connected));
    feed(&mut app, ch('q'));
    assert!(app.quit);
    let mut app = three();
    feed(&mut app, ch('/'));
    feed(
        &mut app,
        Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    );
    assert!(app.quit);
}

#[test]
fn focus_follows_the_selection_and_keeps_only_its_detailed_copy() {
    let mut app = three();
    let focused = app.focus().unwrap();
    assert_eq!(app.row(0).unwrap().key, focused);
    let detailed = |port: u32| {
        let mut ep = endpoint(Some(("shop", "x")), "", port, 1.0, None, 0.0);
        ep.history = vec![v1::Point::default(); 7];
        Box::new(ep)
    };
    // A copy for another endpoint than the focused one is ignored.
    feed(&mut app, Event::Agent(0, AgentEvent::Focus(detailed(80))));
    let e = app.selected_entry().unwrap();
    assert!(app.detailed(e).history.is_empty());
    feed(&mut app, Event::Agent(0, AgentEvent::Focus(detailed(8080))));
    let e = app.selected_entry().unwrap();
    assert_eq!(app.detailed(e).history.len(), 7);
    // Moving the selection moves the focus; the detail view keeps it.
    feed(&mut app, ch('j'));
    assert_eq!(app.focus().unwrap().port, 80);
    feed(&mut app, key(KeyCode::Enter));
    feed(
        &mut app,
        Event::Agent(0, AgentEvent::Snapshot(snapshot("node-a", vec![]))),
    );
    assert_eq!(app.focus().unwrap().port, 80);
}

#[test]
fn filter_ignores_ascii_case_without_allocating() {
    assert!(contains_ignore_ascii_case("/Kite-Test/A", "kite-test"));
    assert!(contains_ignore_ascii_case("abc", ""));
    assert!(!contains_ignore_ascii_case("ab", "abc"));
}

#[test]
fn agents_merge_and_rows_name_their_node() {
    let mut app = App::new(vec!["a:7777".into(), "b:7777".into()], (120, 30));
    assert!(app.multi_node());
    for (i, node) in ["node-a", "node-b"].iter().enumerate() {
        feed(
            &mut app,
            Event::Agent(
                i,
                AgentEvent::Snapshot(snapshot(
                    node,
                    vec![endpoint(
                        Some(("shop", "web")),
                        "",
                        80,
                        10.0 + i as f64,
                        None,
                        0.0,
                    )],
                )),
            ),
        );
    }
    assert_eq!(app.row_count(), 2);
    assert_eq!(app.row(0).unwrap().node, "node-b");
    assert_eq!(app.row(1).unwrap().node, "node-a");
    assert_eq!(app.known, 2);
    // Filtering by node.
    feed(&mut app, ch('/'));
    for c in "node-a".chars() {
        feed(&mut app, ch(c));
    }
    assert_eq!(app.row_count(), 1);
}

/// An agent with an HTTP/1.1 endpoint and the greeter (gRPC over TLS).
fn with_grpc() -> App {
    let mut app = App::new(vec!["127.0.0.1:7777".into()], (120, 30));
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Snapshot(snapshot(
                "node-a",
                vec![
                    endpoint(Some(("shop", "web-1")), "", 80, 120.0, Some(4.0), 0.0),
                    greeter(),
                ],
            )),
        ),
    );
    app
}

/// Row `i` as the table says it: the endpoint's protocol, or `└ method`.
fn row_text(app: &App, i: usize) -> String {
    let v = app.row_view(i).unwrap();
    match v.method {
        Some(m) => format!("└ {}", m.name),
        None => format!("{} {}", v.entry.name, v.entry.protocol),
    }
}

#[test]
fn grpc_methods_unfold_under_their_endpoint_busiest_first_and_fold_back() {
    let mut app = with_grpc();
    // Folded: one row per endpoint, the gRPC one busiest and marked as TLS.
    assert_eq!(app.row_count(), 2);
    assert_eq!(row_text(&app, 0), "shop/greeter-0 gRPC+TLS");
    assert_eq!(row_text(&app, 1), "shop/web-1 HTTP/1.1");
    // Server-error statuses are ERR (5 UNAVAILABLE), the caller's apart (15 NOT_FOUND).
    assert_eq!(app.totals.inbound.errors, 5);
    assert_eq!(app.totals.inbound.client_errors, 15);
    // Right (or l) unfolds the selected endpoint: its methods under it, busiest first.
    feed(&mut app, key(KeyCode::Right));
    let rows: Vec<String> = (0..app.row_count()).map(|i| row_text(&app, i)).collect();
    assert_eq!(
        rows,
        [
            "shop/greeter-0 gRPC+TLS",
            "└ helloworld.Greeter/SayHello",
            "└ helloworld.Greeter/Lookup",
            "└ rpc#9abcdef0",
            "shop/web-1 HTTP/1.1",
        ]
    );
    // An HTTP endpoint has nothing to unfold.
    feed(&mut app, ch('G'));
    feed(&mut app, ch('l'));
    assert_eq!(app.row_count(), 5);
    // The selection follows a method row across a new snapshot.
    feed(&mut app, key(KeyCode::Home));
    feed(&mut app, ch('j'));
    feed(&mut app, ch('j'));
    assert_eq!(row_text(&app, app.selected), "└ helloworld.Greeter/Lookup");
    let mut busy = greeter();
    busy.rpcs[1].last.as_mut().unwrap().rps = 1000.0;
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Snapshot(snapshot(
                "node-a",
                vec![
                    endpoint(Some(("shop", "web-1")), "", 80, 120.0, Some(4.0), 0.0),
                    busy,
                ],
            )),
        ),
    );
    assert_eq!(row_text(&app, 1), "└ helloworld.Greeter/Lookup");
    assert_eq!(row_text(&app, app.selected), "└ helloworld.Greeter/Lookup");
    // Left (or h) on a method row folds its endpoint, which is then selected.
    feed(&mut app, key(KeyCode::Left));
    assert_eq!(app.row_count(), 2);
    assert_eq!(row_text(&app, app.selected), "shop/greeter-0 gRPC+TLS");
}

#[test]
fn the_filter_finds_grpc_endpoints_by_method_and_protocol() {
    let mut app = with_grpc();
    for c in "/lookup\n".chars() {
        feed(
            &mut app,
            if c == '\n' {
                key(KeyCode::Enter)
            } else {
                ch(c)
            },
        );
    }
    assert_eq!(app.row_count(), 1);
    assert_eq!(row_text(&app, 0), "shop/greeter-0 gRPC+TLS");
    feed(&mut app, key(KeyCode::Esc));
    for c in "/http/1.1\n".chars() {
        feed(
            &mut app,
            if c == '\n' {
                key(KeyCode::Enter)
            } else {
                ch(c)
            },
        );
    }
    assert_eq!(app.row_count(), 1);
    assert_eq!(row_text(&app, 0), "shop/web-1 HTTP/1.1");
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    /// Several agents' snapshots in one batch are sorted once, and a key in the same batch
    /// sees the new rows (never indices into replaced entries).
    #[test]
    fn snapshots_mark_rows_stale_until_settled_and_keys_settle_first() {
        let mut app = App::new(vec!["a:1".into(), "b:1".into()], (100, 30));
        let ep = |port: u32, rps: f64| v1::Endpoint {
            id: Some(v1::EndpointId {
                ip: "10.0.0.1".into(),
                port,
                direction: 1,
                ..Default::default()
            }),
            last: Some(v1::Window {
                rps,
                requests: rps as u64,
                ..Default::default()
            }),
            ..Default::default()
        };
        let apply = |app: &mut App, e: Event| {
            let mut next = app.action(e);
            while let Some(a) = next {
                next = app.update(a);
            }
        };
        apply(
            &mut app,
            Event::Agent(
                0,
                AgentEvent::Snapshot(snapshot("a", vec![ep(1, 5.0), ep(2, 50.0)])),
            ),
        );
        apply(
            &mut app,
            Event::Agent(1, AgentEvent::Snapshot(snapshot("b", vec![ep(3, 500.0)]))),
        );
        assert!(app.dirty);
        assert_eq!(app.row_count(), 0, "not rebuilt per snapshot");
        // A key in the same batch rebuilds first, then moves.
        apply(&mut app, Event::Key(KeyCode::Down.into()));
        assert!(!app.dirty);
        assert_eq!(app.row_count(), 3);
        assert_eq!(
            app.selected_entry().unwrap().ep.id.as_ref().unwrap().port,
            2
        );
        // A smaller snapshot then a key: the selection stays within the new rows.
        apply(
            &mut app,
            Event::Agent(0, AgentEvent::Snapshot(snapshot("a", vec![]))),
        );
        apply(
            &mut app,
            Event::Agent(1, AgentEvent::Snapshot(snapshot("b", vec![]))),
        );
        apply(&mut app, Event::Key(KeyCode::End.into()));
        assert_eq!(app.row_count(), 0);
        assert!(app.selected_entry().is_none());
    }

    #[test]
    fn nan_from_the_wire_sorts_last_without_panicking() {
        let mut app = App::new(vec!["a:1".into()], (100, 30));
        let eps: Vec<v1::Endpoint> = (0..50u32)
            .map(|i| v1::Endpoint {
                id: Some(v1::EndpointId {
                    ip: "10.0.0.1".into(),
                    port: i,
                    direction: 1,
                    ..Default::default()
                }),
                last: Some(v1::Window {
                    rps: if i % 3 == 0 { f64::NAN } else { f64::from(i) },
                    p99_seconds: Some(if i % 4 == 0 { f64::NAN } else { 0.001 }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        feed(
            &mut app,
            Event::Agent(0, AgentEvent::Snapshot(snapshot("a", eps))),
        );
        for _ in 0..4 {
            feed(&mut app, Event::Key(KeyCode::Char('s').into()));
            feed(&mut app, Event::Key(KeyCode::Char('S').into()));
        }
        assert_eq!(app.row_count(), 50);
        for _ in 0..20 {
            if app.sort == SortKey::Rps && !app.reverse {
                break;
            }
            feed(&mut app, Event::Key(KeyCode::Char('s').into()));
        }
        assert!(app.sort == SortKey::Rps && !app.reverse);
        assert_eq!(app.row(0).unwrap().rps(), 49.0);
        assert!(app.row(49).unwrap().rps().is_nan(), "NaN sorts last");
    }
}

#[test]
fn agents_join_and_leave_while_it_runs() {
    // --kube: one agent at start, a node's agent joins at index 2 (slot 1 left over from one
    // that went), then leaves; the slot is reused by the next.
    let mut app = App::new(vec!["127.0.0.1:7777".into()], (120, 40));
    let join = |i: usize, label: &str| {
        Event::Agent(
            i,
            AgentEvent::Joined {
                label: label.into(),
            },
        )
    };
    feed(&mut app, join(2, "node-b (port-forward)"));
    assert_eq!(app.present().map(|(i, _)| i).collect::<Vec<_>>(), [0, 2]);
    assert!(app.multi_node());
    let ep = |port| endpoint(Some(("shop", "web-1")), "", port, 10.0, Some(1.0), 0.0);
    feed(
        &mut app,
        Event::Agent(2, AgentEvent::Snapshot(snapshot("node-b", vec![ep(80)]))),
    );
    assert_eq!(app.row_count(), 1);
    feed(&mut app, Event::Agent(2, AgentEvent::Left));
    assert_eq!(
        app.row_count(),
        0,
        "a node that left takes its rows with it"
    );
    assert!(!app.multi_node());
    // A late event of the task that stopped changes nothing.
    feed(
        &mut app,
        Event::Agent(2, AgentEvent::Snapshot(snapshot("node-b", vec![ep(80)]))),
    );
    assert_eq!(app.row_count(), 0);
    feed(&mut app, join(2, "node-c (port-forward)"));
    assert_eq!(app.agents[2].label, "node-c (port-forward)");
    assert_eq!(app.agents.len(), 3);
    feed(&mut app, Event::Notice(Some("3 nodes run an agent".into())));
    assert_eq!(app.notice.as_deref(), Some("3 nodes run an agent"));
}
