//! The agent against clients that do not play along: Watch clients that never read, many
//! concurrent scrapes of a large exposition, idle and slowloris connections, a SIGTERM while
//! they hold on, a second agent on the same socket, a `--cgroup` removed and created again.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use kite_proto::v1::{Detail, InfoRequest, WatchRequest, kite_client::KiteClient};
use kite_testkit::*;

use super::agent::{Agent, http_get};

/// `VmRSS` and `VmHWM` (peak) of a process, bytes.
pub(crate) fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// The value of a sample line of the exposition (`name{labels} value`).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Addresses 127.1.x.y: `n` distinct server endpoints on one server listening on 0.0.0.0.
fn addrs(n: usize, port: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250 + 1) as u8], port)))
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    kite_testkit::rt_multi(2)
}

/// A full GET over HTTP/1.0: (status, body length, time taken).
fn scrape(addr: SocketAddr) -> Result<(u16, usize, Duration), String> {
    let t0 = Instant::now();
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("after {:?}, {} bytes: {e}", t0.elapsed(), out.len()))?;
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no head in {} bytes after {:?}", out.len(), t0.elapsed()))?;
    let code = std::str::from_utf8(&out[..head_end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    Ok((code, out.len() - head_end - 4, t0.elapsed()))
}

#[test]
fn never_reading_watch_clients_and_concurrent_scrapes_stay_bounded() {
    if !ebpf_available("never_reading_watch_clients_and_concurrent_scrapes_stay_bounded") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("hostile-mem");
    let port = free_port();
    let _nginx = nginx_on(Place::in_cgroup(&cg), port, &["0.0.0.0"]);
    // One cgroup with many endpoints: its budget raised to the whole map for this test.
    let agent = Agent::start(&[
        "--cgroup",
        &cg.cgroup.path,
        "--idle-timeout",
        "10s",
        "--endpoint-budget",
        "16384",
    ]);
    let pid = agent.proc.child.id();
    // Many endpoints: requests to each of 6 000 addresses, in rounds (inserts into the
    // kernel's per-CPU hash can fail under a burst of new keys; those requests land in the
    // overflow endpoint and the next round gives the key its own entry).
    const ENDPOINTS: usize = 6_000;
    let many = addrs(ENDPOINTS, port);
    let mut n = 0;
    for _ in 0..15 {
        client(&Load {
            addr: many[0],
            more_addrs: &many[1..],
            conns: 4,
            per_conn: ENDPOINTS / 4,
            close: true,
            ..Load::default()
        });
        thread::sleep(Duration::from_millis(1500));
        n = sample(&agent.metrics_text(), "kite_map_entries{map=\"endpoints\"}").unwrap_or(0.0)
            as usize;
        if n >= ENDPOINTS {
            break;
        }
    }
    assert!(n >= ENDPOINTS * 9 / 10, "only {n} endpoints");
    let (base, _) = rss(pid);
    // What one full snapshot weighs on the wire (histograms and a 60-point history).
    let snapshot_bytes = {
        use prost::Message as _;
        let url = agent.url();
        rt().block_on(async move {
            let mut c = KiteClient::connect(url).await.unwrap();
            c.list(kite_proto::v1::ListRequest {
                filter: None,
                detail: Some(Detail {
                    histogram: true,
                    history: 60,
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .encoded_len()
        })
    };

    let rt = rt();
    let url = agent.url();
    // 40 Watch clients asking for everything (histograms, full history) that never read.
    let (held, refused) = rt.block_on(async {
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..40 {
            let mut c = KiteClient::connect(url.clone()).await.unwrap();
            match c
                .watch(WatchRequest {
                    interval_ms: 0,
                    filter: None,
                    detail: Some(Detail {
                        histogram: true,
                        history: 60,
                    }),
                })
                .await
            {
                Ok(stream) => held.push((c, stream)),
                Err(status) => refused.push(status),
            }
        }
        (held, refused)
    });
    assert_eq!(held.len(), 8, "the default cap is 8 Watch streams");
    assert_eq!(refused.len(), 32);
    for s in &refused {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("--max-watch-streams"), "{s:?}");
    }
    // 24 concurrent scrapes, three rounds, while the watchers sit on their streams.
    let mut sizes = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let got: Vec<_> = thread::scope(|s| {
            let hs: Vec<_> = (0..24).map(|_| s.spawn(|| scrape(agent.metrics))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for g in got {
            let (code, len, took) = g.expect("a scrape");
            assert_eq!(code, 200, "after {took:?}");
            sizes.push(len);
            slowest = slowest.max(took);
        }
        thread::sleep(Duration::from_millis(700));
    }
    let (now, peak) = rss(pid);
    let text = agent.metrics_text();
    let encoded = sample(&text, "kite_scrape_events_total{event=\"encoded\"}").unwrap();
    let shared = sample(&text, "kite_scrape_events_total{event=\"shared\"}").unwrap();
    let skipped = sample(
        &text,
        "kite_watch_events_total{event=\"skipped_snapshots\"}",
    )
    .unwrap();
    let biggest = *sizes.iter().max().unwrap();
    eprintln!(
        "  per endpoint: exposition {:.0} B, full snapshot {:.0} B, RSS before {:.0} B",
        biggest as f64 / ENDPOINTS as f64,
        snapshot_bytes as f64 / ENDPOINTS as f64,
        base as f64 / ENDPOINTS as f64
    );
    eprintln!(
        "  {ENDPOINTS} endpoints, /metrics {:.1} MB: RSS {:.1} MiB before, {:.1} MiB after 8 stuck \
         Watch streams + 72 scrapes (peak {:.1} MiB, slowest scrape {slowest:?}); {encoded} \
         encodings, {shared} shared, {skipped} snapshots skipped",
        biggest as f64 / 1e6,
        mib(base),
        mib(now),
        mib(peak)
    );
    // 72 scrapes over about three polls: a handful of encodings, the rest shared.
    assert!(encoded <= 12.0, "{encoded} encodings for 72 scrapes");
    assert!(shared >= 60.0, "{shared}");
    // Bound: the state, two expositions being sent, one being encoded, eight snapshots.
    // Generous: before, 8 stuck streams alone took hundreds of MiB.
    assert!(
        peak < base + 6 * biggest as u64 + (64 << 20),
        "peak RSS {:.1} MiB, base {:.1} MiB, exposition {:.1} MB",
        mib(peak),
        mib(base),
        biggest as f64 / 1e6
    );
    // The stuck streams skip snapshots (counted), and at the idle deadline their connections
    // are closed: the slots are free again.
    thread::sleep(Duration::from_secs(13));
    let text = agent.metrics_text();
    assert!(
        sample(
            &text,
            "kite_watch_events_total{event=\"skipped_snapshots\"}"
        )
        .unwrap()
            > 0.0,
        "{text}"
    );
    let idle = sample(
        &text,
        "kite_listener_events_total{listener=\"grpc\",event=\"idle_closed\"}",
    )
    .unwrap();
    assert!(idle >= 8.0, "idle_closed {idle}");
    drop(held);
    rt.block_on(async {
        let mut c = KiteClient::connect(url.clone()).await.unwrap();
        let mut s = c
            .watch(WatchRequest::default())
            .await
            .expect("a slot is free again")
            .into_inner();
        assert!(s.message().await.unwrap().is_some());
    });
}

/// Sends `bytes` one at a time, `gap` apart, until the peer closes; returns how long the
/// connection lived.
fn slowloris(addr: SocketAddr, bytes: &'static [u8], gap: Duration, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(gap)).unwrap();
    let mut i = 0;
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        if s.write_all(&bytes[i % bytes.len()..i % bytes.len() + 1])
            .is_err()
        {
            return t0.elapsed();
        }
        i += 1;
        match s.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return t0.elapsed(),
        }
    }
    t0.elapsed()
}

/// Connects and never writes; returns how long the connection lived.
fn idle(addr: SocketAddr, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return t0.elapsed(),
            Ok(_) if t0.elapsed() < limit => {}
            Ok(_) => return t0.elapsed(),
        }
    }
}

const HTTP_SLOW: &[u8] =
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// The HTTP/2 connection preface, a byte every 300 ms: 7 s to send it.
const H2_SLOW: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn idle_and_slowloris_connections_are_closed_by_their_deadlines() {
    if !ebpf_available("idle_and_slowloris_connections_are_closed_by_their_deadlines") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start(&["--idle-timeout", "3s", "--header-timeout", "2s"]);
    let limit = Duration::from_secs(20);
    let gap = Duration::from_millis(300);
    let (g, m) = (agent.grpc, agent.metrics);
    // A live Watch client asking for a 10 s interval, longer than the idle deadline: it gets
    // a snapshot at least every 1.5 s (half the deadline) and stays connected.
    let url = agent.url();
    let live = thread::spawn(move || {
        let rt = rt();
        rt.block_on(async move {
            let mut c = KiteClient::connect(url).await.unwrap();
            let mut s = c
                .watch(WatchRequest {
                    interval_ms: 10_000,
                    ..WatchRequest::default()
                })
                .await
                .unwrap()
                .into_inner();
            let t0 = Instant::now();
            let mut n = 0;
            while t0.elapsed() < Duration::from_secs(8) {
                s.message().await.unwrap().expect("a snapshot");
                n += 1;
            }
            n
        })
    });
    let lived: Vec<(&str, Duration)> = thread::scope(|s| {
        let mut hs = Vec::new();
        for _ in 0..100 {
            hs.push(("gRPC idle", s.spawn(move || idle(g, limit))));
            hs.push(("metrics idle", s.spawn(move || idle(m, limit))));
        }
        for _ in 0..20 {
            hs.push((
                "gRPC slowloris",
                s.spawn(move || slowloris(g, H2_SLOW, gap, limit)),
            ));
            hs.push((
                "metrics slowloris",
                s.spawn(move || slowloris(m, HTTP_SLOW, gap, limit)),
            ));
        }
        // Meanwhile the agent answers normal clients.
        thread::sleep(Duration::from_secs(1));
        assert_eq!(http_get(m, "/readyz").map(|(c, _)| c), Some(200));
        hs.into_iter()
            .map(|(what, h)| (what, h.join().unwrap()))
            .collect()
    });
    for what in [
        "gRPC idle",
        "metrics idle",
        "gRPC slowloris",
        "metrics slowloris",
    ] {
        let times: Vec<Duration> = lived
            .iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, d)| *d)
            .collect();
        let max = times.iter().max().unwrap();
        eprintln!(
            "  {what}: {} connections, the longest lived {max:?}",
            times.len()
        );
        let bound = if what == "metrics slowloris" {
            // The header deadline (2 s), not the idle one.
            Duration::from_millis(2900)
        } else {
            Duration::from_millis(4500)
        };
        assert!(*max < bound, "{what}: a connection lived {max:?}");
    }
    let snapshots = live.join().unwrap();
    assert!(snapshots >= 5, "{snapshots} snapshots in 8 s");
    let text = agent.metrics_text();
    let ev = |l: &str, e: &str| {
        sample(
            &text,
            &format!("kite_listener_events_total{{listener=\"{l}\",event=\"{e}\"}}"),
        )
        .unwrap()
    };
    assert!(ev("grpc", "idle_closed") >= 120.0, "{text}");
    // Idle HTTP connections meet the header deadline or the idle one, whichever is first.
    assert!(
        ev("metrics", "idle_closed") + ev("metrics", "header_timeout") >= 120.0,
        "{text}"
    );
}

fn wait_exit(agent: &mut Agent, limit: Duration) -> Option<(Duration, std::process::ExitStatus)> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(st) = agent.proc.child.try_wait().unwrap() {
            return Some((t0.elapsed(), st));
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sigterm_with_slowloris_and_stuck_clients_exits_within_the_deadline() {
    if !ebpf_available("sigterm_with_slowloris_and_stuck_clients_exits_within_the_deadline") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("hostile-term");
    let mut agent = Agent::start(&["--cgroup", &cg.cgroup.path, "--shutdown-timeout", "3s"]);
    let (g, m) = (agent.grpc, agent.metrics);
    let gap = Duration::from_millis(200);
    let limit = Duration::from_secs(30);
    let rt = rt();
    let url = agent.url();
    let held = rt.block_on(async {
        let mut c = KiteClient::connect(url).await.unwrap();
        let s = c.watch(WatchRequest::default()).await.unwrap();
        let _ = c.info(InfoRequest {}).await.unwrap();
        (c, s)
    });
    thread::scope(|s| {
        let lorises: Vec<_> = (0..4)
            .flat_map(|_| {
                [
                    s.spawn(move || slowloris(m, HTTP_SLOW, gap, limit)),
                    s.spawn(move || slowloris(g, H2_SLOW, gap, limit)),
                ]
            })
            .collect();
        thread::sleep(Duration::from_millis(500));
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(agent.proc.child.id() as i32, libc::SIGTERM) };
        let (took, status) = wait_exit(&mut agent, Duration::from_secs(10))
            .expect("the agent did not exit within 10 s of SIGTERM");
        eprintln!("  SIGTERM with 8 slowloris clients and a Watch stream: exited in {took:?}");
        assert!(took < Duration::from_millis(4500), "{took:?}");
        assert!(status.success(), "{status:?}");
        for l in lorises {
            assert!(l.join().unwrap() < Duration::from_secs(6));
        }
    });
    drop(held);
    assert!(!agent.socket.exists(), "socket file left behind");

    // A second signal exits at once, whatever the deadline.
    let mut agent = Agent::start(&["--cgroup", &cg.cgroup.path, "--shutdown-timeout", "60s"]);
    let m = agent.metrics;
    let _loris = thread::spawn(move || slowloris(m, HTTP_SLOW, gap, Duration::from_secs(8)));
    thread::sleep(Duration::from_millis(300));
    let pid = agent.proc.child.id() as i32;
    // SAFETY: plain syscalls on our child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (took, _) = wait_exit(&mut agent, Duration::from_secs(5))
        .expect("the agent did not exit on the second signal");
    eprintln!("  second signal: exited {took:?} after it");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_second_agent_on_the_same_socket_is_refused_and_names_the_first() {
    if !ebpf_available("a_second_agent_on_the_same_socket_is_refused_and_names_the_first") {
        return;
    }
    let _serial = serial();
    let first = Agent::start(&[]);
    let inode = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(p).map(|m| m.ino()).ok()
    };
    let before = inode(&first.socket).expect("the first agent's socket");
    let second_state = std::env::temp_dir().join(format!("kite-second-{}", free_port()));
    std::fs::create_dir_all(&second_state).unwrap();
    let t0 = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kite-agent"))
        .args(["--kube", "off", "--node-name", "test-node"])
        .arg(format!("--grpc-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--socket={}", first.socket.display()))
        .arg(format!("--state-dir={}", second_state.display()))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&second_state);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "  second agent: {:?} after {:?}: {}",
        out.status,
        t0.elapsed(),
        stderr.trim()
    );
    assert!(!out.status.success(), "{stderr}");
    let pid = first.proc.child.id();
    assert!(
        stderr.contains(&format!("another kite-agent (pid {pid}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("kite-agent --grpc-addr"), "{stderr}");
    // The first agent keeps its socket and still answers on it.
    assert_eq!(inode(&first.socket), Some(before));
    let mut s = std::os::unix::net::UnixStream::connect(&first.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"not json\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.contains("\"ok\":false"), "{answer}");
    // Once the first one is gone, an agent starts on that socket again.
    let args = first.args.clone();
    let mut first = first;
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(first.proc.child.id() as i32, libc::SIGTERM) };
    first.proc.child.wait().unwrap();
    let again = first.restart();
    assert_eq!(again.args, args);
    assert!(again.socket.exists());
}

/// Requests counted on `port` for cgroup id `id`, per `List`.
fn requests_on(agent: &Agent, port: u16, id: u64) -> u64 {
    agent
        .list()
        .endpoints
        .iter()
        .filter(|e| {
            e.id.as_ref()
                .is_some_and(|i| i.port == port as u32 && i.cgroup_id == id)
        })
        .map(|e| e.totals.as_ref().map_or(0, |t| t.requests))
        .sum()
}

fn wait_attached(agent: &Agent, path: &str, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent
        .info()
        .attachments
        .iter()
        .any(|a| a.cgroup_path == path && a.cgroup_id == id)
    {
        assert!(
            Instant::now() < deadline,
            "{path} (id {id}) not attached: {:?}",
            agent.info().attachments
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn load(port: u16, n: usize) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = client(&Load {
        addr,
        conns: 1,
        per_conn: n,
        ..Load::default()
    });
    assert_eq!(r.requests(), n as u64);
}

fn wait_requests(agent: &Agent, port: u16, id: u64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = requests_on(agent, port, id);
        if got == n {
            return;
        }
        assert!(
            got < n && Instant::now() < deadline,
            "{got} of {n} requests counted"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_cgroup_recreated_or_missing_at_start_is_attached_and_measured() {
    if !ebpf_available("a_cgroup_recreated_or_missing_at_start_is_attached_and_measured") {
        return;
    }
    let _serial = serial();
    let root = TestCgroup::new("hostile-cg");
    let svc = root.child("svc");
    let late_path = format!("{}/late", root.cgroup.path);
    // Refused by flag.
    let sock = std::env::temp_dir().join(format!("kite-missing-{}.sock", free_port()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kite-agent"))
        .args([
            "--kube",
            "off",
            "--missing-cgroup",
            "fail",
            "--cgroup",
            &late_path,
        ])
        .arg("--socket")
        .arg(&sock)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(sock.with_extension("sock.lock"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("does not exist"), "{stderr}");

    let agent = Agent::start(&["--cgroup", &svc.path, "--cgroup", &late_path]);
    // The missing one is waited for, not listed as attached.
    let info = agent.info();
    assert!(info.attachments.iter().all(|a| a.cgroup_path != late_path));
    assert_eq!(agent.counter("waiting_cgroups"), 1);
    assert!(
        agent.log().contains("waiting for it to appear"),
        "{}",
        agent.log()
    );

    let port = free_port();
    let place = |dir: &std::path::Path| {
        let dir = dir.to_path_buf();
        move || {
            python_httpd(
                Place {
                    cgroup_path: Some(&dir),
                    ..Place::default()
                },
                "127.0.0.1",
                port,
                false,
            )
        }
    };
    let srv = place(&svc.dir)();
    load(port, 30);
    wait_requests(&agent, port, svc.id, 30);

    // The service restarts: its cgroup is removed and created again (a new id).
    drop(srv);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(&svc.dir).is_err() {
        assert!(
            Instant::now() < deadline,
            "cannot remove {}",
            svc.dir.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let svc2 = root.child("svc");
    assert_ne!(svc2.id, svc.id);
    wait_attached(&agent, &svc2.path, svc2.id);
    let _srv = place(&svc2.dir)();
    load(port, 20);
    wait_requests(&agent, port, svc2.id, 20);
    assert!(
        agent.log().contains("cgroup re-created: attached"),
        "{}",
        agent.log()
    );

    // The missing one appears.
    let late = root.child("late");
    wait_attached(&agent, &late.path, late.id);
    assert_eq!(agent.counter("waiting_cgroups"), 0);
    let port2 = free_port();
    let _srv2 = python_httpd(
        Place {
            cgroup_path: Some(&late.dir),
            ..Place::default()
        },
        "127.0.0.1",
        port2,
        false,
    );
    load(port2, 10);
    wait_requests(&agent, port2, late.id, 10);
    assert_eq!(agent.counter("static_cgroup_attached_later"), 2);
    eprintln!(
        "  re-created cgroup (id {} → {}) re-attached and measured 20/20; late cgroup 10/10",
        svc.id, svc2.id
    );
}

const POD_UID: &str = "5e0c2a8b-3d4f-4a1b-9c8d-7e6f5a4b3c2d";

/// Says `line` on `socket` from inside `cgroup`, as `uid` (through setpriv); the answer.
fn hello_as(uid: u32, cgroup: &std::path::Path, socket: &std::path::Path, line: &str) -> String {
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n\
        s.sendall(sys.argv[2].encode()+b'\\n')\n\
        print(s.makefile().readline())";
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    let out = command(
        Place {
            cgroup_path: Some(cgroup),
            ..Place::default()
        },
        &[
            "setpriv",
            &reuid,
            &regid,
            "--clear-groups",
            // The system's (a pyenv shim under /root is not readable by other users).
            "/usr/bin/python3",
            "-c",
            script,
            socket.to_str().unwrap(),
            line,
        ],
    )
    .output()
    .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn hello_line(ns: &str, pod: &str) -> String {
    serde_json::json!({"version": 1, "pod": pod, "namespace": ns, "uid": POD_UID}).to_string()
}

/// `chown -R uid` of a directory tree.
fn chown_tree(dir: &std::path::Path, uid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            chown_tree(&e.path(), uid);
        } else {
            let _ = std::os::unix::fs::chown(e.path(), Some(uid), Some(uid));
        }
    }
}

#[test]
fn enrollment_refuses_fake_pods_and_renames() {
    if !ebpf_available("enrollment_refuses_fake_pods_and_renames") {
        return;
    }
    let _serial = serial();
    let root = TestCgroup::new("hostile-enroll");
    // Allowed without the API: root, and uid 65534 (as kite-init runs).
    let agent = Agent::start(&["--enroll-uid", "65534"]);
    // uid 65534 with a delegated cgroup subtree makes a kubepods-like path with a real pod's
    // uid and says hello from it.
    let deleg = root.child("deleg");
    chown_tree(&deleg.dir, 65534);
    let fake = deleg.dir.join(format!("kubepods/pod{POD_UID}/ctr"));
    let mk = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "mkdir",
            "-p",
        ])
        .arg(&fake)
        .status()
        .unwrap();
    assert!(mk.success());
    let answer = hello_as(
        65534,
        &fake,
        &agent.socket,
        &hello_line("kube-system", "coredns"),
    );
    eprintln!("  fake pod by uid 65534: {answer}");
    assert!(answer.contains("\"ok\":false"), "{answer}");
    assert!(answer.contains("not made by the kubelet"), "{answer}");
    assert!(agent.info().attachments.is_empty());

    // Without --enroll-uid, a uid-65534 peer in a real (root-made) pod cgroup is refused too.
    let pod = root.child(&format!("kubepods/besteffort/pod{POD_UID}"));
    let init = root.child(&format!("kubepods/besteffort/pod{POD_UID}/init"));
    let strict = Agent::start(&[]);
    let answer = hello_as(
        65534,
        &init.dir,
        &strict.socket,
        &hello_line("shop", "web-0"),
    );
    assert!(
        answer.contains("may not enroll without the Kubernetes API"),
        "{answer}"
    );
    drop(strict);

    // The real pod enrolls (unverified names, marked); a second hello cannot rename it.
    let answer = hello_as(
        65534,
        &init.dir,
        &agent.socket,
        &hello_line("shop", "web-0"),
    );
    assert!(answer.contains("\"ok\":true"), "{answer}");
    let answer = hello_as(
        65534,
        &init.dir,
        &agent.socket,
        &hello_line("shop", "payments"),
    );
    eprintln!("  re-hello as shop/payments: {answer}");
    assert!(answer.contains("cannot rename"), "{answer}");
    let att = agent.info().attachments;
    let a = att.iter().find(|a| a.cgroup_path == pod.path).unwrap();
    let w = a.workload.as_ref().unwrap();
    assert_eq!(w.pod, "web-0");
    assert_eq!(
        w.labels.get("kite.io/unverified").map(String::as_str),
        Some("true")
    );
    assert!(agent.counter("enroll_refused") >= 2);
}

fn sibling_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --bins`)",
        bin.display()
    );
    bin
}

#[test]
fn five_hundred_silent_connections_do_not_keep_a_real_kite_init_out() {
    if !ebpf_available("five_hundred_silent_connections_do_not_keep_a_real_kite_init_out") {
        return;
    }
    let _serial = serial();
    let root = TestCgroup::new("hostile-jam");
    let agent = Agent::start(&["--enroll-uid", "65534"]);
    // 500 connections that never write, from one process.
    let silent: Vec<_> = (0..500)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&agent.socket).ok())
        .collect();
    assert_eq!(silent.len(), 500);
    let pod = root.child(&format!("kubepods/pod{POD_UID}"));
    let init = root.child(&format!("kubepods/pod{POD_UID}/init"));
    let t0 = Instant::now();
    let out = command(
        Place {
            cgroup_path: Some(&init.dir),
            ..Place::default()
        },
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sibling_bin("kite-init").to_str().unwrap(),
        ],
    )
    .env_clear()
    .envs([
        ("KITE_SOCKET", agent.socket.to_str().unwrap()),
        ("POD_NAME", "web-0"),
        ("POD_NAMESPACE", "shop"),
        ("POD_UID", POD_UID),
        ("KITE_INIT_TIMEOUT", "10s"),
    ])
    .output()
    .unwrap();
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "  kite-init with 500 silent connections open: {took:?}: {}",
        stderr.trim()
    );
    assert!(out.status.success());
    assert!(stderr.contains("enrolled: attached"), "{stderr}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        agent
            .info()
            .attachments
            .iter()
            .any(|a| a.cgroup_path == pod.path)
    );
    // The silent ones: all but a handful closed at once (per-peer limit), the rest at the
    // hello deadline.
    let text = agent.metrics_text();
    let refused = sample(
        &text,
        "kite_listener_events_total{listener=\"enroll\",event=\"refused\"}",
    )
    .unwrap();
    assert!(refused >= 490.0, "{refused}");
    thread::sleep(Duration::from_millis(2500));
    let mut open = 0;
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = Vec::new();
        if s.read_to_end(&mut buf).is_err() {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "silent connections still open after the hello deadline"
    );
}
