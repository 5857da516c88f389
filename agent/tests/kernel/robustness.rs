//! Odd traffic, churn, tiny maps, retransmissions, IPv6: Kite stays right or says what it
//! could not follow, and the traffic itself is never touched.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use kite_agent::ebpf::{Attached, Kite, Options};
use kite_common::maps::{Direction, Stat};

use kite_testkit::*;

#[test]
fn connection_churn_returns_socket_state_to_baseline() {
    if !ebpf_available("connection_churn_returns_socket_state_to_baseline") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("churn");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    assert_eq!(w.kite.sockets().unwrap().len(), 0);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = w.during(|| {
        client(&Load {
            addr,
            conns: 4,
            per_conn: 5_000,
            depth: 1,
            paths: &["/"],
            close: true,
            ..Load::default()
        })
    });
    assert_eq!(r.requests(), 20_000);
    assert_eq!(w.total().requests, 20_000);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.kite.sockets().unwrap().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        w.kite.sockets().unwrap().len(),
        0,
        "connection state left behind"
    );
    assert_eq!(w.counter(Stat::ConnsOpened), 20_000);
    assert_eq!(w.counter(Stat::ConnsClosed), 20_000);
    assert_eq!(w.counter(Stat::Unanswered), 0);
}

#[test]
fn tiny_socket_map_overflows_counted_traffic_untouched() {
    if !ebpf_available("tiny_socket_map_overflows_counted_traffic_untouched") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("tiny-sockets");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let mut w = Watch::with_options(
        &cg,
        Options {
            max_sockets: 4,
            ..Options::default()
        },
    );
    w.target(Direction::Inbound, port);
    let url = format!("http://127.0.0.1:{port}");
    let r = w.during(|| wrk(Place::default(), &url, 16, 300, &["/"], &[]));
    assert_eq!(r.requests, 16 * 300);
    assert_eq!(r.socket_errors(), 0);
    assert_eq!(r.statuses.get("200"), Some(&(16 * 300)));
    assert!(w.counter(Stat::SocketsMapFull) > 0);
    let seen = w.total().requests;
    assert!(seen > 0 && seen < r.requests, "Kite saw {seen}");
}

#[test]
fn tiny_endpoint_map_overflows_counted_traffic_untouched() {
    if !ebpf_available("tiny_endpoint_map_overflows_counted_traffic_untouched") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("tiny-endpoints");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let mut w = Watch::with_options(
        &cg,
        Options {
            max_endpoints: 2,
            ..Options::default()
        },
    );
    w.target(Direction::Inbound, port);
    let url = format!("http://127.0.0.1:{port}");
    let paths = ["/status/200", "/status/404", "/status/500"];
    let r = w.during(|| wrk(Place::default(), &url, 2, 600, &paths, &[]));
    assert_eq!(r.socket_errors(), 0);
    assert_eq!(r.requests, 1200);
    assert!(w.counter(Stat::EndpointsMapFull) > 0);
    assert_eq!(w.total().by_status.len(), 2);
    assert_eq!(
        w.total().requests + w.counter(Stat::EndpointsMapFull),
        r.requests
    );
}

/// Bytes that stress the parser: random, partial and huge headers, lying lengths.
fn nasty_payloads() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x6b69_7465);
    let mut v: Vec<Vec<u8>> = [1usize, 7, 100, 1500, 65_536, 300_000]
        .iter()
        .map(|n| rng.bytes(*n))
        .collect();
    let long_header = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(70_000));
    v.push(long_header.into_bytes());
    v.push(b"GET /".to_vec());
    v.push(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Le".to_vec());
    v.push(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\nabc".to_vec());
    v.push(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\n0\r\n".to_vec());
    v.push(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n".to_vec());
    let mut header_lines = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..5_000 {
        header_lines.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
    }
    v.push(header_lines);
    v
}

#[test]
fn garbage_is_echoed_byte_for_byte() {
    if !ebpf_available("garbage_is_echoed_byte_for_byte") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("echo");
    let port = free_port();
    let echo = dir().join("echo.py");
    let _srv = spawn(
        Place::in_cgroup(&cg),
        &[
            "python3",
            echo.to_str().unwrap(),
            "127.0.0.1",
            &port.to_string(),
        ],
    );
    wait_for_port(&format!("127.0.0.1:{port}"), None);
    let w = Watch::new(&cg);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Each payload on its own connection, and all of them on one connection.
    let payloads = nasty_payloads();
    let mut one = TcpStream::connect(addr).unwrap();
    for p in &payloads {
        for s in [&mut TcpStream::connect(addr).unwrap(), &mut one] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut back = vec![0u8; p.len()];
            thread::scope(|sc| {
                let mut w2 = s.try_clone().unwrap();
                sc.spawn(move || w2.write_all(p).unwrap());
                s.read_exact(&mut back).expect("echo back");
            });
            assert!(back == *p, "payload of {} bytes altered", p.len());
        }
    }
    one.shutdown(Shutdown::Both).unwrap();
    let c = w.counters();
    assert_eq!(c[Stat::LoadErrors as usize], 0);
    eprintln!("  counters: {c:?}");
}

#[test]
fn garbage_to_an_http_server_then_normal_traffic_is_exact() {
    if !ebpf_available("garbage_to_an_http_server_then_normal_traffic_is_exact") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("garbage-nginx");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for p in nasty_payloads() {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // nginx answers garbage with 400 or closes; either way the bytes must get through.
        let _ = s.write_all(&p);
        let _ = s.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    w.poll();
    let before = w.total().requests;
    let url = format!("http://127.0.0.1:{port}");
    let r = w.during(|| wrk(Place::default(), &url, 2, 1000, &["/"], &[]));
    assert_eq!(r.socket_errors(), 0);
    assert_eq!(w.total().requests - before, r.requests);
    assert_eq!(
        w.total().by_status.get(&200).copied().unwrap_or(0),
        r.requests
    );
    assert_eq!(w.counter(Stat::LoadErrors), 0);
}

#[test]
fn requests_split_into_tiny_segments() {
    if !ebpf_available("requests_split_into_tiny_segments") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("split");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let req = b"GET /d/5 HTTP/1.1\r\nHost: kite-test\r\nUser-Agent: split\r\nAccept: */*\r\n\r\n";
    let mut lat = Vec::new();
    w.during(|| {
        let mut c = RawConn::connect(addr);
        for i in 0..40 {
            // Split at varying points, down to single bytes at the start line.
            let step = 1 + i % 7;
            let parts: Vec<&[u8]> = req.chunks(step).collect();
            let (status, l) = c.exchange(&parts, Duration::from_micros(300), false);
            assert_eq!(status, 200);
            lat.push(l);
        }
    });
    assert_eq!(w.total().requests, 40);
    lat.sort();
    assert_close("p50", kite_q(&w, 0.5), lat[19].as_secs_f64(), 0.10);
    assert_eq!(w.counter(Stat::SyncLost), 0);
}

#[test]
fn bodies_that_look_like_http_are_not_messages() {
    if !ebpf_available("bodies_that_look_like_http_are_not_messages") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("traps");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nHTTP/1.1 500 Oops\r\n\r\n";
    let post = format!(
        "POST /status/201 HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    w.during(|| {
        let mut c = RawConn::connect(addr);
        for _ in 0..50 {
            // The response body arrives in its own segment and starts with `HTTP/1.1 200`.
            let (s, _) = c.exchange(
                &[b"GET /trap HTTP/1.1\r\nHost: t\r\n\r\n"],
                Duration::ZERO,
                false,
            );
            assert_eq!(s, 200);
            // The request body is written separately and starts with `GET /`.
            let (s, _) = c.exchange(&[post.as_bytes(), body], Duration::from_millis(2), false);
            assert_eq!(s, 201);
            let (s, _) = c.exchange(
                &[b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"],
                Duration::ZERO,
                true,
            );
            assert_eq!(s, 200);
        }
    });
    let t = w.total();
    assert_eq!(t.requests, 150);
    assert_eq!(t.by_status.get(&201), Some(&50));
    assert_eq!(t.by_status.get(&200), Some(&100));
    assert_eq!(w.counter(Stat::SyncLost), 0);
}

#[test]
fn retransmitted_segments_are_counted_once() {
    if !ebpf_available("retransmitted_segments_are_counted_once") {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("retx");
    let cg = TestCgroup::new("retx");
    let port = 8080u16;
    let place = Place {
        cgroup: Some(&cg),
        netns: Some(&ns),
        ..Place::default()
    };
    let _nginx = nginx(place, port);
    // Drop 3 % of the server's data segments after Kite's egress program saw them, so TCP
    // sends them again.
    ns.run(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--sport",
        "8080",
        "-m",
        "length",
        "--length",
        "100:65535",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.03",
        "-j",
        "DROP",
    ]);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    let client_place = Place {
        netns: Some(&ns),
        ..Place::default()
    };
    let r = w.during(|| wrk(client_place, "http://127.0.0.1:8080", 4, 150, &["/"], &[]));
    assert_eq!(r.socket_errors(), 0);
    assert_eq!(w.total().requests, r.requests);
    assert!(
        w.counter(Stat::Retransmits) > 0,
        "no retransmission happened"
    );
}

#[test]
fn ipv6_and_dual_stack_sockets() {
    if !ebpf_available("ipv6_and_dual_stack_sockets") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("ipv6");
    let (p6, pdual) = (free_port(), free_port());
    let place = Place::in_cgroup(&cg);
    let _v6 = python_httpd(place, "::1", p6, false);
    let _dual = python_httpd(place, "::", pdual, true);
    let mut w = Watch::new(&cg);
    let targets: [SocketAddr; 3] = [
        format!("[::1]:{p6}").parse().unwrap(),
        format!("127.0.0.1:{pdual}").parse().unwrap(),
        format!("[::1]:{pdual}").parse().unwrap(),
    ];
    w.during(|| {
        for (i, addr) in targets.iter().enumerate() {
            client(&Load {
                addr: *addr,
                conns: 1,
                per_conn: 50 * (i + 1),
                depth: 1,
                paths: &["/"],
                close: false,
                ..Load::default()
            });
        }
    });
    let by_addr = |a: &str| -> u64 {
        w.collector()
            .endpoints()
            .filter(|e| e.id.address() == a && e.id.direction == Direction::Inbound)
            .map(|e| e.total().count)
            .sum()
    };
    assert_eq!(by_addr(&format!("[::1]:{p6}")), 50);
    // The IPv4 client on a dual-stack socket shows as plain IPv4 (from ::ffff:127.0.0.1).
    assert_eq!(by_addr(&format!("127.0.0.1:{pdual}")), 100);
    assert_eq!(by_addr(&format!("[::1]:{pdual}")), 150);
}

#[test]
fn vanished_cgroup_is_harmless() {
    if !ebpf_available("vanished_cgroup_is_harmless") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("vanish");
    let pod = cg.child("pod");
    let port = free_port();
    let mut kite = Kite::load(Options::default()).unwrap();
    assert!(matches!(kite.attach(&pod).unwrap(), Attached::New { .. }));
    let mut srv = python_httpd(
        Place {
            cgroup_path: Some(&pod.dir),
            ..Place::default()
        },
        "127.0.0.1",
        port,
        false,
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    client(&Load {
        addr,
        conns: 1,
        per_conn: 20,
        depth: 1,
        paths: &["/"],
        close: false,
        ..Load::default()
    });
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(&pod.dir).is_err() {
        assert!(Instant::now() < deadline, "could not remove the pod cgroup");
        thread::sleep(Duration::from_millis(50));
    }
    // Reading, detaching and dropping all work on a cgroup that is gone.
    let eps = kite.endpoints().unwrap();
    assert_eq!(eps.iter().map(|(_, s)| s.count).sum::<u64>(), 20);
    kite.detach(&pod.path).unwrap();
    assert_eq!(kite.attachments().count(), 0);
}

#[test]
fn nested_attachments_never_count_twice() {
    if !ebpf_available("nested_attachments_never_count_twice") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("nested");
    let pod = cg.child("pod");
    let port = free_port();
    let _srv = python_httpd(
        Place {
            cgroup_path: Some(&pod.dir),
            ..Place::default()
        },
        "127.0.0.1",
        port,
        false,
    );
    let mut kite = Kite::load(Options::default()).unwrap();
    assert!(matches!(kite.attach(&pod).unwrap(), Attached::New { .. }));
    // Attaching the parent takes over from the child.
    assert_eq!(
        kite.attach(&cg.cgroup).unwrap(),
        Attached::New {
            replaced: vec![pod.path.clone()]
        }
    );
    assert_eq!(
        kite.attach(&pod).unwrap(),
        Attached::CoveredBy(cg.cgroup.path.clone())
    );
    assert_eq!(kite.attach(&cg.cgroup).unwrap(), Attached::Already);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    client(&Load {
        addr,
        conns: 2,
        per_conn: 100,
        depth: 1,
        paths: &["/"],
        close: false,
        ..Load::default()
    });
    thread::sleep(Duration::from_millis(200));
    let eps = kite.endpoints().unwrap();
    assert_eq!(eps.iter().map(|(_, s)| s.count).sum::<u64>(), 200);
    // Keys carry the socket's own cgroup (the child), not the attach point.
    assert!(eps.iter().all(|(k, _)| k.cgroup_id == pod.id));
}
