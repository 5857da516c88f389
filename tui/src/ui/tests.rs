//! Snapshot tests of the screens: ratatui's `TestBackend` rendered to text and compared with
//! the `.snap` files in `src/ui/snapshots/` (insta), at 80×24, 120×40 and 250×70. Colours are checked
//! on the buffer directly.

use std::time::Duration;

use kite_proto::v1;
use ratatui::{
    Terminal,
    backend::TestBackend,
    crossterm::event::KeyCode,
    style::{Color, Modifier},
};

use crate::app::{
    AgentEvent, App, Event,
    tests::{ch, endpoint, feed, greeter, key, routed_endpoint, snapshot, spread},
};

const SIZES: [(u16, u16); 3] = [(80, 24), (120, 40), (250, 70)];

fn screen(app: &App) -> Terminal<TestBackend> {
    let (w, h) = app.size;
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| f.render_widget(app, f.area())).unwrap();
    t
}

/// Snapshots `make(size)` at both sizes as `<name>_<w>x<h>`.
fn check(name: &str, make: impl Fn((u16, u16)) -> App) {
    for size in SIZES {
        let app = make(size);
        let t = screen(&app);
        insta::assert_snapshot!(format!("{name}_{}x{}", size.0, size.1), t.backend());
    }
}

/// A smooth, deterministic history of `n` points.
fn history(n: usize, rps: f64, p99_ms: f64) -> Vec<v1::Point> {
    (0..n)
        .map(|i| {
            let x = i as f64 / 6.0;
            v1::Point {
                rps: rps * (1.0 + 0.3 * x.sin()),
                p50_seconds: p99_ms / 4e3 * (1.0 + 0.2 * (x * 0.7).cos()),
                p99_seconds: p99_ms / 1e3 * (1.0 + 0.4 * (x * 1.3).sin().abs()),
                error_ratio: 0.0,
            }
        })
        .collect()
}

/// A detailed endpoint: histogram around 2 ms with a tail, statuses, methods, totals, history.
fn rich(port: u32) -> v1::Endpoint {
    let mut e = endpoint(
        Some(("shop", "checkout-7d9f8c6b5-x2z9q")),
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f0d6d7e.slice/cri-containerd-4b1c.scope",
        port,
        1234.5,
        Some(18.0),
        0.031,
    );
    if let Some(id) = e.id.as_mut() {
        id.node = "node-a".into();
    }
    if let Some(w) = e.workload.as_mut() {
        w.workload_kind = "Deployment".into();
        w.workload_name = "checkout".into();
        w.container = "app".into();
    }
    if let Some(w) = e.last.as_mut() {
        w.max_seconds = Some(0.051);
        w.mean_seconds = Some(0.0031);
        w.status_4xx = 12;
        w.status_5xx = 26;
    }
    e.totals = Some(v1::Totals {
        requests: 1_482_113,
        status_4xx: 9_120,
        status_5xx: 31_877,
        request_bytes: 148_211_300,
        response_bytes: 1_482_113_000,
        latency_sum_seconds: 4_600.0,
        p50_seconds: Some(0.0021),
        p90_seconds: Some(0.0064),
        p99_seconds: Some(0.0172),
        ..Default::default()
    });
    // Native buckets (16 per power of two of seconds) from 2^-13 s (122 µs); counts shaped
    // like a latency mode near 2 ms with a slow tail.
    let mut buckets = Vec::new();
    for k in -13 * 16..-4 * 16 {
        let lower = 2f64.powf(f64::from(k - 1) / 16.0);
        let upper = 2f64.powf(f64::from(k) / 16.0);
        let d = (f64::from(k) / 16.0 + 9.0).abs();
        let count = (400.0 / (1.0 + d * d * 4.0)) as u64;
        if count > 0 {
            buckets.push(v1::Bucket {
                lower_seconds: lower,
                upper_seconds: upper,
                count,
            });
        }
    }
    e.histogram = Some(v1::Histogram { buckets });
    e.statuses = vec![
        v1::StatusCount {
            status: 200,
            count: 1158,
            ..Default::default()
        },
        v1::StatusCount {
            status: 302,
            count: 39,
            ..Default::default()
        },
        v1::StatusCount {
            status: 404,
            count: 12,
            ..Default::default()
        },
        v1::StatusCount {
            status: 503,
            count: 26,
            ..Default::default()
        },
    ];
    e.methods = vec![
        v1::MethodCount {
            method: "GET".into(),
            count: 1101,
        },
        v1::MethodCount {
            method: "POST".into(),
            count: 134,
        },
    ];
    e.history = history(60, 1234.5, 18.0);
    e
}

/// Many endpoints of all kinds on one agent.
fn many(size: (u16, u16)) -> App {
    let mut app = App::new(vec!["127.0.0.1:7777".into()], size);
    let mut eps = vec![rich(8080)];
    for i in 0..60u32 {
        let pod = format!("web-{}-{:05x}", i % 7, i * 7919 % 0xfffff);
        let ns = ["shop", "payments", "search", "default"][i as usize % 4];
        let mut e = endpoint(
            (i % 5 != 0).then_some((ns, pod.as_str())),
            &format!("/system.slice/svc-{i}.service"),
            3000 + i,
            (1000.0 / f64::from(i + 1)).round(),
            (i % 9 != 8).then_some(0.05 + f64::from(i) * 0.7),
            if i % 6 == 0 {
                0.02 * f64::from(i % 4)
            } else {
                0.0
            },
        );
        if let Some(id) = e.id.as_mut() {
            id.ip = format!("10.1.{}.{}", i / 16, 10 + i % 16);
            if i % 3 == 0 {
                id.direction = v1::Direction::Outbound as i32;
            }
        }
        e.history = history(40, 1000.0 / f64::from(i + 1), 2.0);
        eps.push(e);
    }
    feed(
        &mut app,
        Event::Agent(0, AgentEvent::Snapshot(snapshot("node-a", eps))),
    );
    app
}

#[test]
fn empty_while_connecting() {
    check("empty_connecting", |size| {
        App::new(vec!["127.0.0.1:7777".into()], size)
    });
}

#[test]
fn connected_without_endpoints() {
    check("connected_no_endpoints", |size| {
        let mut app = App::new(vec!["127.0.0.1:7777".into()], size);
        feed(
            &mut app,
            Event::Agent(0, AgentEvent::Snapshot(snapshot("node-a", vec![]))),
        );
        app
    });
}

fn down_app(size: (u16, u16)) -> App {
    let mut app = App::new(vec!["127.0.0.1:7777".into(), "10.0.0.2:7777".into()], size);
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Down {
                error: "Connection refused (os error 111)".into(),
                retry_in: Duration::from_secs(2),
            },
        ),
    );
    feed(
        &mut app,
        Event::Agent(
            1,
            AgentEvent::Down {
                error: "no answer within 3s".into(),
                retry_in: Duration::from_millis(500),
            },
        ),
    );
    feed(
        &mut app,
        Event::Agent(1, AgentEvent::Connecting { attempt: 2 }),
    );
    app
}

#[test]
fn disconnected() {
    check("disconnected", down_app);
}

#[test]
fn many_rows_with_a_selection() {
    check("many_rows", |size| {
        let mut app = many(size);
        for _ in 0..3 {
            feed(&mut app, ch('j'));
        }
        app
    });
}

#[test]
fn many_rows_sorted_by_p99_filtered_and_paused() {
    check("sorted_filtered_paused", |size| {
        let mut app = many(size);
        // The P99 column's digit.
        let i = crate::ui::table_columns(&app)
            .iter()
            .position(|k| *k == crate::app::SortKey::P99)
            .unwrap();
        feed(
            &mut app,
            ch(if i == 9 {
                '0'
            } else {
                char::from(b'1' + i as u8)
            }),
        );
        feed(&mut app, ch('/'));
        for c in "shop".chars() {
            feed(&mut app, ch(c));
        }
        feed(&mut app, key(KeyCode::Enter));
        feed(&mut app, ch(' '));
        app
    });
}

#[test]
fn typing_a_filter() {
    check("typing_filter", |size| {
        let mut app = many(size);
        feed(&mut app, ch('/'));
        for c in "pay".chars() {
            feed(&mut app, ch(c));
        }
        app
    });
}

#[test]
fn several_agents_name_their_nodes() {
    check("two_agents", |size| {
        let mut app = App::new(vec!["10.0.0.1:7777".into(), "10.0.0.2:7777".into()], size);
        for (i, node) in ["node-a", "node-b-with-a-long-name"].iter().enumerate() {
            let eps = (0..4u32)
                .map(|j| {
                    endpoint(
                        Some(("shop", &format!("web-{j}"))),
                        "",
                        80 + j,
                        f64::from(100 * (j + 1)) + i as f64,
                        Some(1.0 + f64::from(j)),
                        0.0,
                    )
                })
                .collect();
            feed(
                &mut app,
                Event::Agent(i, AgentEvent::Snapshot(snapshot(node, eps))),
            );
        }
        app
    });
}

#[test]
fn detail_view() {
    check("detail", |size| {
        let mut app = many(size);
        feed(&mut app, key(KeyCode::Enter));
        app
    });
}

/// HTTP/1.1, HTTP/2 over TLS and the greeter (gRPC over TLS) with its methods unfolded.
fn protocols(size: (u16, u16)) -> App {
    let mut app = App::new(vec!["127.0.0.1:7777".into()], size);
    let mut h2 = endpoint(Some(("shop", "cdn-0")), "", 443, 80.0, Some(9.0), 0.0);
    if let Some(id) = h2.id.as_mut() {
        id.protocol = v1::Protocol::Http2 as i32;
        id.tls = true;
    }
    let mut g = greeter();
    g.history = history(60, 342.0, 12.0);
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Snapshot(snapshot(
                "node-a",
                vec![
                    endpoint(Some(("shop", "web-1")), "", 80, 120.0, Some(4.0), 0.0),
                    h2,
                    g,
                ],
            )),
        ),
    );
    feed(&mut app, key(KeyCode::Right));
    app
}

#[test]
fn protocol_column_and_grpc_methods_under_their_endpoint() {
    check("grpc_unfolded", protocols);
    // The unfolded endpoint's method rows are dim: the endpoint rows stand out.
    let t = screen(&protocols((120, 40)));
    let buf = t.backend().buffer();
    let y = (0..buf.area.height)
        .find(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, *y)].symbol())
                .collect::<String>()
                .contains("Greeter/Lookup")
        })
        .unwrap();
    let x = (0..buf.area.width)
        .find(|x| buf[(*x, y)].symbol() == "└")
        .unwrap();
    assert!(buf[(x, y)].modifier.contains(Modifier::DIM));
}

#[test]
fn detail_of_a_grpc_endpoint_names_its_statuses_and_methods() {
    check("grpc_detail", |size| {
        let mut app = protocols(size);
        feed(&mut app, key(KeyCode::Home));
        feed(&mut app, key(KeyCode::Enter));
        app
    });
}

/// Two HTTP/1 endpoints with routes and the greeter, after 30 snapshots whose latencies
/// move (so each route has a history).
fn routed(size: (u16, u16)) -> App {
    let mut app = App::new(vec!["127.0.0.1:7777".into()], size);
    for round in 0..30 {
        let k = 1.0 + 0.5 * (f64::from(round) / 4.0).sin();
        let orders = spread(2.0 * k, 12.0 * k, 200);
        let mut users = spread(0.5, 1.0, 95);
        users.extend(spread(80.0 * k, 120.0 * k, 5));
        let reviews = spread(40.0, 45.0 * k, 12);
        let web = routed_endpoint(
            "web-0",
            80,
            &[
                ("/orders/*", 1, &orders, 4, 6),
                ("/users/*", 2, &users, 0, 0),
                ("/", 3, &spread(0.1, 0.3, 50), 0, 0),
                ("/api/v1/catalog/items/*/reviews", 5, &reviews, 1, 0),
            ],
        );
        let mut web = web;
        web.history = history(30, 362.0, 17.0);
        let api = routed_endpoint(
            "api-0",
            81,
            &[("/search", 4, &spread(20.0, 30.0 * k, 40), 0, 2)],
        );
        feed(
            &mut app,
            Event::Agent(
                0,
                AgentEvent::Snapshot(snapshot("node-a", vec![web, api, greeter()])),
            ),
        );
    }
    app
}

#[test]
fn detail_of_an_endpoint_lists_its_routes() {
    check("routes_detail", |size| {
        let mut app = routed(size);
        // web-0, the busiest.
        feed(&mut app, key(KeyCode::Enter));
        app
    });
}

#[test]
fn routes_of_every_endpoint_by_p99() {
    check("routes_by_p99", |size| {
        let mut app = routed(size);
        feed(&mut app, ch('r'));
        feed(&mut app, ch('j'));
        app
    });
}

#[test]
fn detail_of_an_endpoint_that_went_away() {
    check("detail_gone", |size| {
        let mut app = many(size);
        feed(&mut app, key(KeyCode::Enter));
        feed(
            &mut app,
            Event::Agent(0, AgentEvent::Snapshot(snapshot("node-a", vec![]))),
        );
        app
    });
}

#[test]
fn help_overlay() {
    check("help", |size| {
        let mut app = many(size);
        feed(&mut app, ch('?'));
        app
    });
}

#[test]
fn tiny_terminal_does_not_panic() {
    for (w, h) in [(1, 1), (10, 3), (30, 8), (80, 5), (200, 2)] {
        let mut app = many((w, h));
        screen(&app);
        feed(&mut app, key(KeyCode::Enter));
        screen(&app);
        feed(&mut app, ch('?'));
        screen(&app);
    }
}

#[test]
fn colours_mark_state_selection_and_errors() {
    let app = down_app((80, 24));
    let t = screen(&app);
    let buf = t.backend().buffer();
    // The ✗ of the agent that is down is red, the ◌ of the reconnecting one yellow.
    assert_eq!(buf[(1, 1)].symbol(), "✗");
    assert_eq!(buf[(1, 1)].fg, Color::Red);
    assert_eq!(buf[(1, 2)].symbol(), "◌");
    assert_eq!(buf[(1, 2)].fg, Color::Yellow);

    let mut app = many((80, 24));
    feed(&mut app, ch('j'));
    let t = screen(&app);
    let buf = t.backend().buffer();
    // Table header on row 2, first endpoint on row 3, the selected one on row 4.
    assert!(buf[(0, 4)].modifier.contains(Modifier::REVERSED));
    assert!(!buf[(0, 3)].modifier.contains(Modifier::REVERSED));
    // The first row: 2.11 % server errors (ERR%, yellow under 5 %), 0.97 % 4xx apart.
    let (col, _) = find(buf, 3, "2.11").expect("ERR% column");
    assert_eq!(buf[(col, 3)].fg, Color::Yellow);
    let (col4, _) = find(buf, 3, "0.97").expect("4XX% column");
    assert!(col4 > col, "4XX% right of ERR%");
    assert_eq!(buf[(col4, 3)].fg, Color::Yellow);
    // An endpoint with 3 % 5xx and 3 % 4xx would have shown 6 % before: here 5 % is red.
    let mut app = App::new(vec!["a:1".into()], (80, 24));
    let mut e = endpoint(Some(("shop", "web")), "", 80, 100.0, Some(1.0), 0.05);
    if let Some(w) = e.last.as_mut() {
        w.status_4xx = 3;
    }
    feed(
        &mut app,
        Event::Agent(0, AgentEvent::Snapshot(snapshot("n", vec![e]))),
    );
    let t = screen(&app);
    let buf = t.backend().buffer();
    let (col, _) = find(buf, 3, "5.00").expect("ERR% 5.00");
    assert_eq!(buf[(col, 3)].fg, Color::Red);
    assert!(find(buf, 3, "3.00").is_some(), "4XX% 3.00");
}

/// The column of `text` on line `y`, if it is there.
fn find(buf: &ratatui::buffer::Buffer, y: u16, text: &str) -> Option<(u16, u16)> {
    let cells: Vec<&str> = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
    let n = text.chars().count();
    (0..cells.len().saturating_sub(n))
        .find(|&x| cells[x..x + n].concat() == text)
        .map(|x| (x as u16, y))
}

#[test]
fn latencies_are_coloured_by_the_thresholds_set() {
    let mut app = many((80, 24));
    // Defaults 100 ms / 500 ms: the first row's 4.50ms and 18.0ms are plain.
    let t = screen(&app);
    let buf = t.backend().buffer();
    let (p50, _) = find(buf, 3, "4.50ms").unwrap();
    let (p99, _) = find(buf, 3, "18.0ms").unwrap();
    assert_eq!(buf[(p50, 3)].fg, Color::Reset);
    assert_eq!(buf[(p99, 3)].fg, Color::Reset);
    // --latency-warn 4ms --latency-bad 10ms: p50 yellow, p99 red, the 50 µs below plain.
    app.thresholds = crate::app::Thresholds {
        warn: 0.004,
        bad: 0.010,
    };
    let t = screen(&app);
    let buf = t.backend().buffer();
    assert_eq!(buf[(p50, 3)].fg, Color::Yellow);
    assert_eq!(buf[(p99, 3)].fg, Color::Red);
    let (fast, _) = find(buf, 4, "50.0µs").unwrap();
    assert_eq!(buf[(fast, 4)].fg, Color::Reset);
}

/// Two agents, the second down for 12 s: its rows greyed with their age.
fn stale_app(size: (u16, u16)) -> App {
    let mut app = App::new(vec!["10.0.0.1:7777".into(), "10.0.0.2:7777".into()], size);
    for (i, node) in ["node-a", "node-b"].iter().enumerate() {
        let eps = (0..3u32)
            .map(|j| {
                endpoint(
                    Some(("shop", &format!("web-{i}{j}"))),
                    "",
                    80 + j,
                    f64::from(100 * (j + 1)) + i as f64,
                    Some(400.0 * (i as f64 + 1.0)),
                    if i == 1 { 0.1 } else { 0.0 },
                )
            })
            .collect();
        feed(
            &mut app,
            Event::Agent(i, AgentEvent::Snapshot(snapshot(node, eps))),
        );
    }
    feed(
        &mut app,
        Event::Agent(
            1,
            AgentEvent::Down {
                error: "connection refused".into(),
                retry_in: Duration::from_secs(5),
            },
        ),
    );
    let last = app.agents[1].last_snapshot.unwrap();
    feed(&mut app, Event::Tick(last + Duration::from_secs(12)));
    app
}

#[test]
fn a_stale_agent_keeps_its_rows_greyed_with_their_age() {
    check("stale_agent", stale_app);
    let app = stale_app((120, 40));
    let t = screen(&app);
    let buf = t.backend().buffer();
    let text = buf.content.iter().map(|c| c.symbol()).collect::<String>();
    assert!(text.contains("3 stale"), "the header counts them");
    assert!(
        text.contains("last snapshot 12s ago"),
        "the agent line says since when"
    );
    // Each of its rows: `✗12s` before the name, grey, errors and latencies not coloured.
    let y = (0..buf.area.height)
        .find(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, *y)].symbol())
                .collect::<String>()
                .contains("✗12s web-11")
        })
        .expect("a stale row (not the selected one)");
    let (err, _) = find(buf, y, "9.95").expect("its ERR%");
    assert_eq!(buf[(err, y)].fg, Color::DarkGray);
    let (lat, _) = find(buf, y, "800ms").expect("its p99");
    assert_eq!(buf[(lat, y)].fg, Color::DarkGray);
    // A live row with the same latency class would be red (800 ms ≥ 500 ms): the live
    // agent's 400 ms p99 is yellow.
    let live = (0..buf.area.height)
        .find(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, *y)].symbol())
                .collect::<String>()
                .contains("web-00")
        })
        .unwrap();
    let (lat, _) = find(buf, live, "400ms").expect("live p99");
    assert_eq!(buf[(lat, live)].fg, Color::Yellow);
}

/// A small fleet on two nodes: namespaces shop and payments, workloads of three pods each,
/// every endpoint with its histogram (as the stream sends them while grouping is on).
fn fleet(size: (u16, u16)) -> App {
    let mut app = App::new(vec!["10.0.0.1:7777".into(), "10.0.0.2:7777".into()], size);
    let workloads = [("shop", "web"), ("shop", "cart"), ("payments", "ledger")];
    for (agent, node) in ["node-a", "node-b"].iter().enumerate() {
        let mut eps = Vec::new();
        for (w, (ns, wl)) in workloads.iter().enumerate() {
            for pod in 0..3u32 {
                let k = (w as u32) * 10 + pod + agent as u32 * 100;
                // Latencies of (lo, hi] µs around a mode that grows with the workload.
                let lo = 200.0 * f64::from(w as u32 + 1) + f64::from(pod) * 50.0;
                let count = 50 + u64::from(k % 7) * 10;
                let mut e = endpoint(
                    Some((ns, &format!("{wl}-{agent}{pod}"))),
                    "",
                    8000 + k,
                    count as f64,
                    Some(lo * 1.1 / 1e3),
                    if w == 1 { 0.04 } else { 0.0 },
                );
                if let Some(wk) = e.workload.as_mut() {
                    wk.workload_kind = "Deployment".into();
                    wk.workload_name = (*wl).into();
                }
                if let Some(id) = e.id.as_mut() {
                    id.ip = format!("10.{agent}.{w}.{pod}");
                    if pod == 2 {
                        id.direction = v1::Direction::Outbound as i32;
                    }
                }
                e.histogram = Some(v1::Histogram {
                    buckets: vec![
                        v1::Bucket {
                            lower_seconds: lo / 1e6,
                            upper_seconds: lo * 1.1 / 1e6,
                            count: count - 5,
                        },
                        v1::Bucket {
                            lower_seconds: lo * 10.0 / 1e6,
                            upper_seconds: lo * 11.0 / 1e6,
                            count: 5,
                        },
                    ],
                });
                eps.push(e);
            }
        }
        feed(
            &mut app,
            Event::Agent(agent, AgentEvent::Snapshot(snapshot(node, eps))),
        );
    }
    app
}

#[test]
fn grouped_by_workload() {
    check("grouped_workload", |size| {
        let mut app = fleet(size);
        feed(&mut app, ch('g'));
        app
    });
}

#[test]
fn grouped_by_workload_with_one_group_expanded() {
    check("grouped_workload_expanded", |size| {
        let mut app = fleet(size);
        feed(&mut app, ch('g'));
        feed(&mut app, key(KeyCode::Enter));
        feed(&mut app, ch('j'));
        app
    });
}

#[test]
fn grouped_by_namespace() {
    check("grouped_namespace", |size| {
        let mut app = fleet(size);
        feed(&mut app, ch('g'));
        feed(&mut app, ch('g'));
        app
    });
}

/// Who calls whom: cart's outbound calls to web's pod IP name web as their server; calls to
/// an address no agent measures (outside, loopback) name nobody.
fn callers(size: (u16, u16)) -> App {
    let mut app = App::new(vec!["10.0.0.1:7777".into(), "10.0.0.2:7777".into()], size);
    let ep = |pod: &str, wl: &str, ip: &str, port: u32, out: bool, rps: f64| {
        let mut e = endpoint(Some(("shop", pod)), "", port, rps, Some(3.0), 0.0);
        e.workload.as_mut().unwrap().workload_name = wl.into();
        let id = e.id.as_mut().unwrap();
        id.ip = ip.into();
        if out {
            id.direction = v1::Direction::Outbound as i32;
        }
        e
    };
    feed(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Snapshot(snapshot(
                "node-a",
                vec![
                    ep("web-7c9-a", "web", "10.1.0.5", 8080, false, 300.0),
                    ep("api-5f4-0", "api", "10.1.0.7", 9000, false, 120.0),
                ],
            )),
        ),
    );
    feed(
        &mut app,
        Event::Agent(
            1,
            AgentEvent::Snapshot(snapshot(
                "node-b",
                vec![
                    ep("cart-8d2-0", "cart", "10.1.0.5", 8080, true, 200.0),
                    ep("cart-8d2-0", "cart", "10.1.0.7", 9000, true, 90.0),
                    ep("cart-8d2-0", "cart", "10.9.9.9", 443, true, 20.0),
                    ep("cart-8d2-0", "cart", "127.0.0.1", 6379, true, 10.0),
                ],
            )),
        ),
    );
    app
}

#[test]
fn outbound_rows_name_the_workload_they_call() {
    check("who_calls_whom", callers);
    let app = callers((120, 40));
    let server = |port: u32| {
        (0..app.row_count())
            .map(|i| app.row(i).unwrap())
            .find(|e| e.key.port == port && e.direction == v1::Direction::Outbound)
            .and_then(|e| app.server_workload(e))
    };
    assert_eq!(server(8080), Some("shop/web"));
    assert_eq!(server(9000), Some("shop/api"));
    assert_eq!(server(443), None, "not a pod any agent measures");
    assert_eq!(server(6379), None, "loopback is every pod's own");
    let t = screen(&app);
    let text = t.backend().to_string();
    assert!(text.contains("SERVER"), "{text}");
    // At 80 columns there is no room for it.
    let t = screen(&callers((80, 24)));
    assert!(!t.backend().to_string().contains("SERVER"));
}
