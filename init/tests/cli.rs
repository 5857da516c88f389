//! The binary as a pod runs it: whatever happens, exit 0 with the reason on stderr.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixListener,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kite-init"));
    c.args(args);
    for k in [
        "POD_NAME",
        "POD_NAMESPACE",
        "POD_UID",
        "KITE_SOCKET",
        "KITE_INIT_TIMEOUT",
        "KITE_ROUTE_PATTERNS",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_socket(name: &str) -> (std::path::PathBuf, impl Drop) {
    struct D(std::path::PathBuf);
    impl Drop for D {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let d = std::env::temp_dir().join(format!("kite-init-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    (d.join("kite.sock"), D(d))
}

#[test]
fn missing_pod_identity_is_reported_and_the_pod_still_starts() {
    let o = run(&[], &[]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("POD_NAME"), "{}", stderr(&o));
}

#[test]
fn bad_arguments_do_not_fail_the_pod() {
    let o = run(&["--timeout", "soon"], &[]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("not enrolled"), "{}", stderr(&o));
    // An absurd timeout is capped, not an overflow.
    let (socket, _d) = temp_socket("huge");
    let listener = UnixListener::bind(&socket).unwrap();
    let agent = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        (&s).write_all(b"{\"ok\":true}\n").unwrap();
    });
    let o = run(
        &["--timeout", "10000000000000000000s"],
        &[
            ("POD_NAME", "p"),
            ("POD_NAMESPACE", "n"),
            ("POD_UID", "u"),
            ("KITE_SOCKET", socket.to_str().unwrap()),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("enrolled"), "{}", stderr(&o));
    agent.join().unwrap();
}

#[test]
fn no_agent_means_a_bounded_wait_then_exit_0() {
    let (socket, _d) = temp_socket("none");
    let t = Instant::now();
    let o = run(
        &["--timeout", "700ms"],
        &[
            ("POD_NAME", "web-0"),
            ("POD_NAMESPACE", "shop"),
            ("POD_UID", "u-1"),
            ("KITE_SOCKET", socket.to_str().unwrap()),
        ],
    );
    assert!(o.status.success());
    assert!(
        t.elapsed() >= Duration::from_millis(650),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let err = stderr(&o);
    assert!(
        err.contains("shop/web-0 not enrolled") && err.contains("no agent"),
        "{err}"
    );
}

#[test]
fn the_downward_api_env_becomes_the_hello_and_the_ack_is_logged() {
    let (socket, _d) = temp_socket("ack");
    let listener = UnixListener::bind(&socket).unwrap();
    let agent = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        (&s).write_all(b"{\"ok\":true,\"cgroup\":\"/kubepods/podu-1\",\"message\":\"attached\"}\n")
            .unwrap();
        line
    });
    let o = run(
        &[],
        &[
            ("POD_NAME", "web-0"),
            ("POD_NAMESPACE", "shop"),
            ("POD_UID", "u-1"),
            ("KITE_SOCKET", socket.to_str().unwrap()),
        ],
    );
    assert!(o.status.success());
    let hello: serde_json::Value = serde_json::from_str(&agent.join().unwrap()).unwrap();
    assert_eq!(
        hello,
        serde_json::json!({"version":1,"pod":"web-0","namespace":"shop","uid":"u-1","container":"kite-init"})
    );
    assert!(
        stderr(&o).contains("enrolled: attached (/kubepods/podu-1)"),
        "{}",
        stderr(&o)
    );
}

/// Runs kite-init against a fake agent with `routes` as `KITE_ROUTE_PATTERNS`; returns the hello it
/// sent and its stderr.
fn hello_with_routes(name: &str, routes: &str) -> (serde_json::Value, String) {
    let (socket, _d) = temp_socket(name);
    let listener = UnixListener::bind(&socket).unwrap();
    let agent = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        (&s).write_all(b"{\"ok\":true,\"message\":\"attached\"}\n")
            .unwrap();
        line
    });
    let o = run(
        &[],
        &[
            ("POD_NAME", "p"),
            ("POD_NAMESPACE", "n"),
            ("POD_UID", "u"),
            ("KITE_SOCKET", socket.to_str().unwrap()),
            ("KITE_ROUTE_PATTERNS", routes),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let line = agent.join().unwrap();
    (serde_json::from_str(&line).unwrap(), stderr(&o))
}

#[test]
fn the_pods_route_patterns_go_in_the_hello_and_malformed_ones_do_not() {
    let (hello, said) = hello_with_routes("routes", "/orders/{id}\n  /files/{name}\n");
    assert_eq!(
        hello["routes"],
        serde_json::json!(["/orders/{id}", "/files/{name}"])
    );
    assert!(said.contains("enrolled: attached"), "{said}");
    // Malformed: the reason is logged, no pattern is sent, the pod is enrolled all the same.
    let (hello, said) = hello_with_routes("bad-routes", "/orders/{id} files/{name}");
    assert!(hello.get("routes").is_none(), "{hello}");
    assert!(
        said.contains("kite.io/routes: route pattern \"files/{name}\" does not start with /"),
        "{said}"
    );
    assert!(said.contains("enrolled: attached"), "{said}");
}
