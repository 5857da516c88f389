//! Connection state follows the socket's life: data that reaches a listener (deferred accept)
//! is attributed to its connection, and no state outlives its socket, whatever way the socket
//! ends (released by its process, never accepted, closed by the kernel).

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use kite_common::maps::{Direction, Stat};
use kite_testkit::*;

use crate::agent::Agent;

/// A keep-alive HTTP/1.1 server on 127.0.0.1 whose listener sets `TCP_DEFER_ACCEPT`: the
/// kernel creates a connection's socket only when its first data arrives, so that data reaches
/// the cgroup's programs with the listener as its socket.
const DEFER_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 10)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1024)
def serve(c):
    buf = b""
    with c:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            close = b"connection: close" in head.lower()
            extra = b"Connection: close\r\n" if close else b""
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n" + extra + b"\r\nhello\n")
            if close:
                return
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Answers one request per connection, keep-alive style (no `Connection: close`), then closes
/// the socket at once: the client's next request reaches a socket its server released.
const CLOSE_AFTER_ONE: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1024)
while True:
    c, _ = s.accept()
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            break
        buf += d
    if buf:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
    c.close()
"#;

/// Listens and never accepts.
const NEVER_ACCEPTS: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1024)
while True:
    time.sleep(60)
"#;

fn python(place: Place<'_>, script: &str, port: u16) -> Proc {
    let p = spawn(place, &["python3", "-c", script, &port.to_string()]);
    wait_for_port(&format!("127.0.0.1:{port}"), None);
    p
}

/// [`python`] inside a network namespace.
fn python_in(place: Place<'_>, script: &str, port: u16, ns: &Netns) -> Proc {
    let p = spawn(place, &["python3", "-c", script, &port.to_string()]);
    wait_for_port(&format!("127.0.0.1:{port}"), Some(ns));
    p
}

/// The listening sockets of process `pid` on `port`, duplicated into this process
/// (`pidfd_getfd`), so that their socket-local storage can be looked up.
fn listeners_of(pid: u32, port: u16) -> Vec<OwnedFd> {
    // SAFETY: plain syscalls; every fd returned is owned once.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let is_socket =
            fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Ok(target) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: as above.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
        if fd < 0 {
            continue;
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut listening: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut alen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid buffers and lengths.
        let ok = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut listening as *mut libc::c_int).cast(),
                &mut len,
            ) == 0
                && libc::getsockname(
                    fd.as_raw_fd(),
                    (&mut addr as *mut libc::sockaddr_storage).cast(),
                    &mut alen,
                ) == 0
        };
        // sin_port and sin6_port sit at the same offset.
        let sport =
            u16::from_be(unsafe { (*(&addr as *const _ as *const libc::sockaddr_in)).sin_port });
        if ok && listening == 1 && sport == port {
            out.push(fd);
        }
    }
    out
}

/// Waits (bounded) until `f` holds; returns how long that took, or `None`.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Checks what deferred accept must leave: every request counted, every parked state taken
/// over by its socket, nothing on the listener, nothing left once the connections closed.
fn check_deferred(w: &mut Watch, server_pid: u32, port: u16, requests: u64, conns: u64) {
    let t = w.total();
    eprintln!(
        "  Kite {} requests (client {requests}); listener_data {} pending_claimed {} pending_full {}",
        t.requests,
        w.counter(Stat::ListenerData),
        w.counter(Stat::PendingClaimed),
        w.counter(Stat::PendingFull)
    );
    assert_eq!(t.requests, requests, "requests counted");
    assert_eq!(t.by_status.get(&200), Some(&requests));
    assert!(
        w.counter(Stat::ListenerData) >= conns,
        "every connection's first request reached the listener"
    );
    assert_eq!(w.counter(Stat::PendingClaimed), conns);
    assert_eq!(w.counter(Stat::PendingFull), 0);
    assert_eq!(w.counter(Stat::OrphanResponses), 0);
    assert!(
        w.kite.pending().unwrap().is_empty(),
        "parked state left behind"
    );
    assert_eq!(w.kite.pending_count().unwrap(), 0);
    let listeners = listeners_of(server_pid, port);
    assert!(
        !listeners.is_empty(),
        "no listener found in pid {server_pid}"
    );
    for l in &listeners {
        assert!(
            w.kite.socket_state(l).unwrap().is_none(),
            "the listener owns connection state"
        );
    }
    let back = wait_until(Duration::from_secs(5), || {
        w.kite.socket_count().unwrap() == 0
    });
    assert!(back.is_some(), "connection state left behind");
}

/// Both shapes of traffic: one request per connection (each is a first request), and
/// keep-alive connections (the first request through the listener, the rest on the socket).
fn deferred_load(addr: SocketAddr) -> (u64, u64) {
    let short = client(&Load {
        addr,
        conns: 4,
        per_conn: 25,
        close: true,
        ..Load::default()
    });
    let keep = client(&Load {
        addr,
        conns: 4,
        per_conn: 50,
        close: false,
        ..Load::default()
    });
    assert_eq!(short.requests(), 100);
    assert_eq!(keep.requests(), 200);
    (short.requests() + keep.requests(), 100 + 4)
}

#[test]
fn deferred_accept_nginx_counts_every_first_request() {
    if !ebpf_available("deferred_accept_nginx_counts_every_first_request") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("deferred-nginx");
    let port = free_port();
    let nginx = nginx_listen(Place::in_cgroup(&cg), port, &["127.0.0.1"], "deferred");
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (requests, conns) = w.during(|| deferred_load(addr));
    check_deferred(&mut w, nginx.proc.child.id(), port, requests, conns);
}

#[test]
fn deferred_accept_python_counts_every_first_request() {
    if !ebpf_available("deferred_accept_python_counts_every_first_request") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("deferred-py");
    let port = free_port();
    let srv = python(Place::in_cgroup(&cg), DEFER_SERVER, port);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (requests, conns) = w.during(|| deferred_load(addr));
    check_deferred(&mut w, srv.child.id(), port, requests, conns);
}

/// `kite_map_entries{map="<map>"}` as the agent's `/metrics` shows it.
fn map_entries(agent: &Agent, map: &str) -> u64 {
    let text = agent.metrics_text();
    let prefix = format!("kite_map_entries{{map=\"{map}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// The agent's socket gauge comes back to `baseline` within one polling interval (the test
/// agent polls every 500 ms; allowed: 2 s) of `since`.
fn assert_back_to(agent: &Agent, baseline: u64, since: Instant) {
    let mut last = u64::MAX;
    let took = wait_until(Duration::from_secs(10), || {
        last = map_entries(agent, "sockets");
        last == baseline
    });
    let took = took.map(|_| since.elapsed());
    eprintln!("  sockets gauge back to {baseline} after {took:?} (last seen {last})");
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(2)),
        "kite_map_entries{{map=\"sockets\"}} is {last}, not {baseline}, {:?} after the connections ended",
        since.elapsed()
    );
}

#[test]
fn request_after_the_server_closed_leaves_no_state() {
    if !ebpf_available("request_after_the_server_closed_leaves_no_state") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("close-race");
    let port = free_port();
    let _srv = python(Place::in_cgroup(&cg), CLOSE_AFTER_ONE, port);
    let agent = Agent::start(&["--cgroup", &cg.cgroup.path]);
    let baseline = map_entries(&agent, "sockets");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conns = 200u64;
    let mut answered = 0u64;
    for i in 0..conns {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut resp = Vec::new();
        let mut buf = [0u8; 512];
        while !resp.ends_with(b"hello\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "connection {i}: no response");
            resp.extend_from_slice(&buf[..n]);
        }
        assert!(resp.starts_with(b"HTTP/1.1 200 "));
        answered += 1;
        if i % 2 == 0 {
            // Wait for the server's FIN: its socket is released for sure.
            assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
        }
        // The next keep-alive request: it reaches a socket nobody will ever read.
        let _ = s.write_all(b"GET /two HTTP/1.1\r\nHost: t\r\n\r\n");
        let _ = s.read(&mut buf);
        let _ = s.shutdown(Shutdown::Both);
    }
    let done = Instant::now();
    assert_back_to(&agent, baseline, done);
    thread::sleep(Duration::from_millis(600));
    assert_eq!(agent.counter("ebpf_requests"), answered);
    assert_eq!(agent.counter("ebpf_conns_opened"), conns);
    assert_eq!(
        agent.counter("ebpf_conns_closed") + agent.counter("ebpf_conns_reaped"),
        conns
    );
    assert_eq!(map_entries(&agent, "sockets"), baseline);
}

#[test]
fn unaccepted_children_are_freed_when_the_listener_dies() {
    if !ebpf_available("unaccepted_children_are_freed_when_the_listener_dies") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("unaccepted");
    let port = free_port();
    let mut srv = python(Place::in_cgroup(&cg), NEVER_ACCEPTS, port);
    let agent = Agent::start(&["--cgroup", &cg.cgroup.path]);
    let baseline = map_entries(&agent, "sockets");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let n = 50u64;
    let clients: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /never HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // The children exist (in the accept queue) and their requests are being tracked.
    let tracked = wait_until(Duration::from_secs(5), || {
        map_entries(&agent, "sockets") == baseline + n
    });
    assert!(
        tracked.is_some(),
        "children not tracked: {} entries",
        map_entries(&agent, "sockets")
    );
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    let killed = Instant::now();
    assert_back_to(&agent, baseline, killed);
    thread::sleep(Duration::from_millis(600));
    assert_eq!(agent.counter("ebpf_conns_reaped"), n);
    assert_eq!(agent.counter("ebpf_unanswered"), n);
    assert_eq!(agent.counter("ebpf_requests"), 0);
    // The clients see their connections reset: the traffic itself was not touched.
    for mut s in clients {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("unexpected read after the listener died: {other:?}"),
        }
    }
}

#[test]
fn hundred_thousand_short_connections_return_to_baseline() {
    if !ebpf_available("hundred_thousand_short_connections_return_to_baseline") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("100k");
    let port = free_port();
    let _nginx = nginx_on(Place::in_cgroup(&cg), port, &["0.0.0.0"]);
    let agent = Agent::start(&["--cgroup", &cg.cgroup.path]);
    let baseline = map_entries(&agent, "sockets");
    // Spread over 16 loopback addresses so no 4-tuple is reused while in TIME_WAIT.
    let more: Vec<SocketAddr> = (2..=16)
        .map(|i| format!("127.0.0.{i}:{port}").parse().unwrap())
        .collect();
    let started = Instant::now();
    let r = client(&Load {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        conns: 8,
        per_conn: 12_500,
        close: true,
        more_addrs: &more,
        deadline: Some(started + Duration::from_secs(45)),
        ..Load::default()
    });
    let done = Instant::now();
    eprintln!(
        "  {} short connections in {:.1} s",
        r.requests(),
        (done - started).as_secs_f64()
    );
    assert!(
        r.requests() >= 20_000,
        "too few connections: {}",
        r.requests()
    );
    assert_back_to(&agent, baseline, done);
    thread::sleep(Duration::from_millis(600));
    assert_eq!(agent.counter("ebpf_requests"), r.requests());
    assert_eq!(agent.counter("ebpf_conns_opened"), r.requests());
    assert_eq!(
        agent.counter("ebpf_conns_closed") + agent.counter("ebpf_conns_reaped"),
        r.requests()
    );
    assert_eq!(agent.counter("ebpf_sockets_map_full"), 0);
}

/// One request per connection with `Connection: close`; prints how many got a 200.
const ONE_PER_CONNECTION: &str = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ok = 0
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    ok += data.startswith(b"HTTP/1.1 200 ")
print(ok)
"#;

#[test]
fn lost_final_handshake_ack_first_request_counted() {
    if !ebpf_available("lost_final_handshake_ack_first_request_counted") {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("lost-ack");
    let cg = TestCgroup::new("lost-ack");
    let port = 8080u16;
    let _srv = python_httpd(
        Place {
            cgroup: Some(&cg),
            netns: Some(&ns),
            ..Place::default()
        },
        "127.0.0.1",
        port,
        false,
    );
    // Drop every connection's final handshake ACK (the client's second packet, a bare ACK):
    // its first data segment then completes the handshake, reaching the server's listener.
    ns.run(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        "8080",
        "--tcp-flags",
        "SYN,ACK,FIN,RST,PSH",
        "ACK",
        "-m",
        "connbytes",
        "--connbytes",
        "2:2",
        "--connbytes-dir",
        "original",
        "--connbytes-mode",
        "packets",
        "-j",
        "DROP",
    ]);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, port);
    let conns = 50u64;
    let out = w.during(|| {
        ns.run(&[
            "python3",
            "-c",
            ONE_PER_CONNECTION,
            &port.to_string(),
            &conns.to_string(),
        ])
    });
    let answered: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    eprintln!(
        "  client {answered} answered; Kite {}; listener_data {} pending_claimed {}",
        w.total().requests,
        w.counter(Stat::ListenerData),
        w.counter(Stat::PendingClaimed)
    );
    assert_eq!(answered, conns);
    assert_eq!(w.total().requests, conns);
    assert_eq!(w.counter(Stat::PendingClaimed), conns);
    assert_eq!(w.kite.pending_count().unwrap(), 0);
    assert!(w.kite.pending().unwrap().is_empty());
    let back = wait_until(Duration::from_secs(5), || {
        w.kite.socket_count().unwrap() == 0
    });
    assert!(back.is_some(), "connection state left behind");
}

/// Opens `n` connections to 127.0.0.1:`port`, sends a request on each, waits, closes.
const SEND_AND_WAIT: &str = r#"
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(("127.0.0.1", port), 5) for _ in range(n)]
for c in conns:
    c.sendall(b"GET /parked HTTP/1.1\r\nHost: t\r\n\r\n")
time.sleep(5)
"#;

#[test]
fn parked_state_of_connections_that_never_get_a_socket_is_swept() {
    if !ebpf_available("parked_state_of_connections_that_never_get_a_socket_is_swept") {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("parked");
    let cg = TestCgroup::new("parked");
    let port = 8080u16;
    let _srv = python_in(
        Place {
            cgroup: Some(&cg),
            netns: Some(&ns),
            ..Place::default()
        },
        DEFER_SERVER,
        port,
        &ns,
    );
    // The server's packets other than its SYN-ACKs are dropped before the cgroup's egress
    // program sees them: the connections' sockets (made when their data reaches the listener)
    // never send anything Kite sees, so their parked state is never taken over.
    ns.run(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--sport",
        "8080",
        "--tcp-flags",
        "SYN",
        "NONE",
        "-j",
        "DROP",
    ]);
    let w = Watch::new(&cg);
    let n = 10u64;
    let _clients = spawn(
        Place {
            netns: Some(&ns),
            ..Place::default()
        },
        &[
            "python3",
            "-c",
            SEND_AND_WAIT,
            &port.to_string(),
            &n.to_string(),
        ],
    );
    let parked = wait_until(Duration::from_secs(5), || {
        w.kite.pending_count().unwrap() == n
    });
    eprintln!(
        "  {} connections parked (listed {}); listener_data {}",
        w.kite.pending_count().unwrap(),
        w.kite.pending().unwrap().len(),
        w.counter(Stat::ListenerData)
    );
    assert!(
        parked.is_some(),
        "expected {n} connections waiting for their socket"
    );
    assert_eq!(w.kite.pending().unwrap().len() as u64, n);
    assert_eq!(w.counter(Stat::PendingFull), 0);
    assert_eq!(w.counter(Stat::PendingClaimed), 0);
    // What the agent does for entries older than 30 s, here at once.
    let mut kite = w.kite;
    assert_eq!(kite.sweep_pending(Duration::ZERO).unwrap() as u64, n);
    assert_eq!(kite.pending_count().unwrap(), 0);
    assert!(kite.pending().unwrap().is_empty());
    assert_eq!(kite.socket_count().unwrap(), 0);
}
