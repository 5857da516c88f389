//! Snapshot tests of the screens: ratatui's `TestBackend` rendered to text and compared with
//! the `.snap` files in `src/ui/snapshots/` (insta), at 80×24 and 160×40. Colours are checked
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
    tests::{ch, endpoint, feed, key, snapshot},
};

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 40)];

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
        },
        v1::StatusCount {
            status: 302,
            count: 39,
        },
        v1::StatusCount {
            status: 404,
            count: 12,
        },
        v1::StatusCount {
            status: 503,
            count: 26,
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
        feed(&mut app, ch('s'));
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
    // The first row has 3.1 % errors: yellow.
    let cells: Vec<&str> = (0..80).map(|x| buf[(x, 3)].symbol()).collect();
    let col = (0..76)
        .find(|&x| cells[x..x + 4].concat() == "3.10")
        .expect("error column") as u16;
    assert_eq!(buf[(col, 3)].fg, Color::Yellow);
}
