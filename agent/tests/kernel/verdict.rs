//! The not-HTTP verdict: a connection whose stream starts with something else than an HTTP/1.x
//! request is judged once, at its first byte, and is left alone from then on; a connection
//! Kite joins midway is never judged on the bytes it happens to see first.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use kite_common::maps::{Direction, Stat};

use kite_testkit::*;

#[test]
fn non_http_connection_is_judged_once_http_beside_it_measured() {
    if !ebpf_available("non_http_connection_is_judged_once_http_beside_it_measured") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("verdict");
    let place = Place::in_cgroup(&cg);
    let http = free_port();
    let _nginx = nginx(place, http);
    let sink = free_port();
    let _sink = byte_sink(place, sink);
    let mut w = Watch::new(&cg);
    w.target(Direction::Inbound, http);
    let addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let total = 4 << 20;
    let (echoed, r) = w.during(|| {
        // A bulk transfer that starts like TLS, in many segments.
        let mut c = TcpStream::connect(("127.0.0.1", sink)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut chunk = vec![0x5a_u8; 16 << 10];
        chunk[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
        for _ in 0..total / chunk.len() {
            c.write_all(&chunk).unwrap();
        }
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        let r = client(&Load {
            addr,
            conns: 2,
            per_conn: 200,
            depth: 1,
            paths: &["/"],
            close: false,
            ..Load::default()
        });
        (reply, r)
    });
    assert_eq!(echoed, total.to_string(), "the sink got every byte");
    assert_eq!(r.requests(), 400);
    assert_eq!(w.total().requests, 400);
    // One verdict, for the sink's socket, not one per segment.
    assert_eq!(w.counter(Stat::NotHttp), 1);
    assert_eq!(w.counter(Stat::ConnsOpened), 2);
    assert_eq!(w.counter(Stat::SyncLost), 0);
}

/// Reads one `return 200` answer of the testkit's nginx.
fn read_answer(c: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"hello from nginx\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "nginx closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn connection_joined_midway_is_measured_at_its_next_request() {
    if !ebpf_available("connection_joined_midway_is_measured_at_its_next_request") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("verdict-midway");
    let http = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), http);
    // Loaded first: verifying the programs takes seconds, longer than nginx waits for the
    // rest of a body it discards (`lingering_timeout`, 5 s) before closing.
    let mut w = Watch::unattached(Default::default());
    w.target(Direction::Inbound, http);
    // Before Kite attaches: a POST whose body is still to come.
    let mut c = TcpStream::connect(("127.0.0.1", http)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    read_answer(&mut c);
    w.attach(&cg);
    w.during(|| {
        // The first bytes Kite sees of this connection are body bytes, not a request.
        c.write_all(&[b'x'; 1000]).unwrap();
        thread::sleep(Duration::from_millis(50));
        for _ in 0..10 {
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            read_answer(&mut c);
        }
    });
    assert_eq!(w.total().requests, 10);
    assert_eq!(w.counter(Stat::NotHttp), 0);
}
