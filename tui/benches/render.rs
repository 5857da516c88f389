//! How much the dashboard costs with many endpoints: 10 000 endpoints drawn into a
//! `TestBackend` 4 times a second, with what the agent sends every second: a `Watch`
//! snapshot (lean: no history, no histograms, as `kite-tui` asks for) decoded from protobuf
//! bytes and applied (filter, sort, totals), and the focused endpoint with its 60 history
//! points and histogram (the small `List` `kite-tui` makes for it).
//!
//! ```text
//! cargo bench -p kite-tui --bench render
//! KITE_BENCH_ENDPOINTS=1000 KITE_BENCH_SECONDS=20 KITE_BENCH_SIZE=80x24 cargo bench -p kite-tui --bench render
//! KITE_BENCH_FULL=1 cargo bench -p kite-tui --bench render   # every endpoint with history and histogram
//! KITE_BENCH_GROUP=workload cargo bench -p kite-tui --bench render   # `g`: 200 workloads (or namespace: 40)
//! ```
//!
//! With grouping on, snapshots carry every endpoint's histogram (as `kite-tui` then asks for
//! them) and each rebuild merges them per group.
//!
//! Prints frame times (mean, p99, max), snapshot times (decode + update) and the CPU time of
//! the process over the run as a percentage of one core.

use std::time::{Duration, Instant};

use kite_proto::v1;
use kite_tui::{
    app::{AgentEvent, App, Event},
    tui::handle,
};
use prost::Message as _;
use ratatui::{Terminal, backend::TestBackend, crossterm::event::KeyCode};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of this process (all threads).
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall writing into a local.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A snapshot of `n` endpoints, number `round` (values move from one round to the next).
fn snapshot(n: usize, round: usize, workloads: usize) -> v1::Snapshot {
    let endpoints = (0..n)
        .map(|i| {
            let phase = (i + round) as f64;
            let rps = 1.0 + (i % 997) as f64 * (1.0 + 0.2 * (phase / 7.0).sin());
            let p99 = 1e-4 * (1.0 + (i % 113) as f64) * (1.0 + 0.1 * (phase / 3.0).cos());
            v1::Endpoint {
                id: Some(v1::EndpointId {
                    node: "bench-node".into(),
                    cgroup_id: 10_000 + i as u64 / 4,
                    cgroup_path: format!(
                        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{:08x}.slice/cri-containerd-{:012x}.scope",
                        i / 4,
                        i * 7919
                    ),
                    direction: if i % 3 == 0 {
                        v1::Direction::Outbound as i32
                    } else {
                        v1::Direction::Inbound as i32
                    },
                    ip: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                    port: 8000 + (i % 100) as u32,
                    protocol: v1::Protocol::Http11 as i32,
                    tls: i % 10 == 0,
                }),
                workload: (i % 5 != 0).then(|| v1::Workload {
                    namespace: format!("ns-{}", i % 40),
                    pod: format!("app-{}-7d9f8c6b5-{:05x}", i / 4, i * 31),
                    pod_uid: format!("{:08x}-0000-4000-8000-{:012x}", i, i),
                    workload_kind: "Deployment".into(),
                    workload_name: format!("app-{}", i / 4 % workloads),
                    container: "app".into(),
                    labels: [("app".to_string(), format!("app-{}", i / 4))].into(),
                }),
                last: Some(v1::Window {
                    seconds: 1.0,
                    requests: rps as u64,
                    rps,
                    p50_seconds: Some(p99 / 4.0),
                    p90_seconds: Some(p99 / 2.0),
                    p99_seconds: Some(p99),
                    max_seconds: Some(p99 * 1.5),
                    mean_seconds: Some(p99 / 3.0),
                    status_4xx: (i % 7) as u64,
                    status_5xx: (i % 11 == 0) as u64,
                    error_ratio: (i % 7) as f64 / rps.max(1.0),
                    server_error_ratio: 0.0,
                    request_bytes: rps as u64 * 120,
                    response_bytes: rps as u64 * 900,
                    request_bytes_per_second: rps * 120.0,
                    response_bytes_per_second: rps * 900.0,
                    ..Default::default()
                }),
                totals: Some(v1::Totals {
                    requests: 1_000_000 + i as u64,
                    status_4xx: 1000,
                    status_5xx: 10,
                    request_bytes: 120_000_000,
                    response_bytes: 900_000_000,
                    latency_sum_seconds: 1234.5,
                    p50_seconds: Some(p99 / 4.0),
                    p90_seconds: Some(p99 / 2.0),
                    p99_seconds: Some(p99),
                    ..Default::default()
                }),
                history: (0..60)
                    .map(|k| v1::Point {
                        rps: rps * (1.0 + 0.1 * ((k + round) as f64 / 5.0).sin()),
                        p50_seconds: p99 / 4.0,
                        p99_seconds: p99,
                        error_ratio: 0.0,
                    })
                    .collect(),
                // 20 native (schema 4) buckets from p99/8, as the agent sends them.
                histogram: Some(v1::Histogram {
                    buckets: {
                        let k0 = ((p99 / 8.0).log2() * 16.0).floor() as i32;
                        let edge = |k: i32| 2f64.powf(f64::from(k) / 16.0);
                        (0..20)
                            .map(|b| v1::Bucket {
                                lower_seconds: edge(k0 + b - 1),
                                upper_seconds: edge(k0 + b),
                                count: 1 + (b * 7 % 13) as u64,
                            })
                            .collect()
                    },
                }),
                statuses: vec![
                    v1::StatusCount {
                        status: 200,
                        count: rps as u64,
                        name: String::new(),
                    },
                    v1::StatusCount {
                        status: 404,
                        count: (i % 7) as u64,
                        name: String::new(),
                    },
                ],
                methods: vec![v1::MethodCount {
                    method: "GET".into(),
                    count: rps as u64,
                }],
                last_active_unix_ms: 1_700_000_000_000,
                rpcs: Vec::new(),
                routes: Vec::new(),
            }
        })
        .collect();
    v1::Snapshot {
        time_unix_ms: 1_700_000_000_000 + round as u64 * 1000,
        window_seconds: 1.0,
        node: "bench-node".into(),
        endpoints,
    }
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len().max(1) as f64;
    let p99 = v
        .get(((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .map_or(0.0, |d| ms(*d));
    let max = v.last().map_or(0.0, |d| ms(*d));
    (mean, p99, max)
}

fn main() {
    let n: usize = env("KITE_BENCH_ENDPOINTS", 10_000);
    let seconds: u64 = env("KITE_BENCH_SECONDS", 10);
    let refresh: u32 = env("KITE_BENCH_FPS", 4);
    let size: String = env("KITE_BENCH_SIZE", "160x40".to_string());
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .expect("KITE_BENCH_SIZE like 160x40");

    let full: bool = env("KITE_BENCH_FULL", 0u8) == 1;
    let group: String = env("KITE_BENCH_GROUP", String::new());
    let presses = match group.as_str() {
        "" | "endpoint" => 0,
        "workload" => 1,
        "namespace" => 2,
        other => panic!("KITE_BENCH_GROUP={other}: endpoint, workload or namespace"),
    };
    // 200 workloads when grouping (the issue's case), else one per 4 endpoints as before.
    let workloads = if presses > 0 { 200 } else { usize::MAX };
    // Four different snapshots, encoded as the agent sends them, and the focused endpoint's
    // detailed copy.
    let mut focus_bytes = Vec::new();
    let encoded: Vec<Vec<u8>> = (0..4)
        .map(|r| {
            let mut s = snapshot(n, r, workloads);
            focus_bytes.push(s.endpoints[0].encode_to_vec());
            if !full {
                for e in &mut s.endpoints {
                    e.history.clear();
                    if presses == 0 {
                        e.histogram = None;
                    }
                }
            }
            s.encode_to_vec()
        })
        .collect();
    let mut app = App::new(vec!["bench:7777".into()], (w, h));
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    // Warm up: first snapshot and frame.
    handle(
        &mut app,
        Event::Agent(
            0,
            AgentEvent::Snapshot(Box::new(v1::Snapshot::decode(&encoded[0][..]).unwrap())),
        ),
    );
    for _ in 0..presses {
        handle(&mut app, Event::Key(KeyCode::Char('g').into()));
    }
    assert_eq!(app.wants_histograms(), presses > 0);
    terminal.draw(|f| f.render_widget(&app, f.area())).unwrap();

    let period = Duration::from_secs(1) / refresh;
    let frames_total = seconds as u32 * refresh;
    let mut frame_times = Vec::with_capacity(frames_total as usize);
    let mut update_times = Vec::new();
    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    let mut next = wall0;
    for frame in 0..frames_total {
        if frame % refresh == 0 {
            // A new snapshot from the agent: decode it and apply it.
            let t = Instant::now();
            let bytes = &encoded[(frame / refresh) as usize % encoded.len()];
            let snap = v1::Snapshot::decode(&bytes[..]).unwrap();
            handle(
                &mut app,
                Event::Agent(0, AgentEvent::Snapshot(Box::new(snap))),
            );
            let round = (frame / refresh) as usize % focus_bytes.len();
            let ep = v1::Endpoint::decode(&focus_bytes[round][..]).unwrap();
            handle(&mut app, Event::Agent(0, AgentEvent::Focus(Box::new(ep))));
            update_times.push(t.elapsed());
        }
        // Someone is using it: move around, sometimes open the detail view.
        let key = match frame % 8 {
            0..=3 => KeyCode::Down,
            5 => KeyCode::Enter,
            6 => KeyCode::Esc,
            _ => KeyCode::PageDown,
        };
        handle(&mut app, Event::Key(key.into()));
        let t = Instant::now();
        terminal.draw(|f| f.render_widget(&app, f.area())).unwrap();
        frame_times.push(t.elapsed());
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let wall = wall0.elapsed();
    let cpu = cpu_time() - cpu0;
    let (f_mean, f_p99, f_max) = stats(frame_times);
    let (u_mean, u_p99, u_max) = stats(update_times);
    let snapshot_mb = encoded[0].len() as f64 / 1e6;
    println!(
        "kite-tui render: {n} endpoints, {w}x{h}, {refresh} frames/s for {:.1} s ({frames_total} frames), snapshot {snapshot_mb:.1} MB{}",
        wall.as_secs_f64(),
        if full {
            " (full detail)".to_string()
        } else if presses > 0 {
            format!(
                " (histograms), grouped by {group}: {} rows",
                app.row_count()
            )
        } else {
            String::new()
        }
    );
    println!(
        "  frame (draw):               mean {f_mean:.3} ms  p99 {f_p99:.3} ms  max {f_max:.3} ms"
    );
    println!(
        "  snapshot (decode + update): mean {u_mean:.2} ms  p99 {u_p99:.2} ms  max {u_max:.2} ms  (1 per second)"
    );
    println!(
        "  CPU: {:.2} % of one core",
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
}
