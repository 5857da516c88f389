//! The `kite-agent` daemon as clients see it: gRPC (a Rust client and a reflection-only Python
//! client), the enrollment socket with a kubelet-like cgroup tree, and restarts under load.
//! Prometheus scraping a real agent is in kite-tui's e2e suite, beside `kite-tui --once`.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use kite_proto::v1::{
    self, Detail, Filter, InfoRequest, ListRequest, WatchRequest, kite_client::KiteClient,
};

use kite_testkit::*;

const AGENT: &str = env!("CARGO_BIN_EXE_kite-agent");

/// A running `kite-agent`, killed on drop.
pub struct Agent {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub args: Vec<String>,
}

impl Agent {
    /// Starts an agent on free ports with these extra arguments and waits until it is ready.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_env(extra, &[])
    }

    /// Starts an agent with extra environment variables.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let state_dir = std::env::temp_dir().join(format!("kite-agent-{}", free_port()));
        std::fs::create_dir_all(&state_dir).unwrap();
        Self::start_in(extra, env, state_dir)
    }

    fn start_in(extra: &[&str], env: &[(&str, &str)], state_dir: PathBuf) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let socket = state_dir.join("kite.sock");
        let mut args: Vec<String> = vec![
            "--grpc-addr".into(),
            grpc.to_string(),
            "--metrics-addr".into(),
            metrics.to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--interval".into(),
            "500ms".into(),
            "--node-name".into(),
            "test-node".into(),
        ];
        if !extra.contains(&"--kube") {
            args.extend(["--kube".into(), "off".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(AGENT)
            .args(&args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file(&state_dir))
            .spawn()
            .expect("start kite-agent");
        let agent = Self {
            proc: Proc { child },
            grpc,
            metrics,
            socket,
            state_dir,
            args,
        };
        agent.wait_ready();
        agent
    }

    /// Another agent with the same configuration (after this one died).
    pub fn restart(&self) -> Self {
        let child = Command::new(AGENT)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log_file(&self.state_dir))
            .spawn()
            .expect("restart kite-agent");
        let a = Self {
            proc: Proc { child },
            grpc: self.grpc,
            metrics: self.metrics,
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            args: self.args.clone(),
        };
        a.wait_ready();
        a
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(self.metrics, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "kite-agent not ready");
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn info(&self) -> v1::AgentInfo {
        let url = self.url();
        rt().block_on(async move {
            let mut c = KiteClient::connect(url).await.unwrap();
            c.info(InfoRequest {}).await.unwrap().into_inner()
        })
    }

    pub fn list(&self) -> v1::Snapshot {
        let url = self.url();
        rt().block_on(async move {
            let mut c = KiteClient::connect(url).await.unwrap();
            c.list(ListRequest {
                filter: None,
                detail: Some(Detail {
                    histogram: true,
                    history: 0,
                }),
            })
            .await
            .unwrap()
            .into_inner()
        })
    }

    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics").expect("metrics").1
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.info()
            .counters
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.value)
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("agent.log")).unwrap_or_default()
    }
}

/// The agent's stderr goes to `<state_dir>/agent.log` (appended across restarts).
fn log_file(state_dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("agent.log"))
        .unwrap()
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        if thread::panicking() {
            eprintln!("--- kite-agent log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

fn endpoint_on(s: &v1::Snapshot, port: u16) -> Vec<&v1::Endpoint> {
    s.endpoints
        .iter()
        .filter(|e| e.id.as_ref().is_some_and(|i| i.port == port as u32))
        .collect()
}

#[test]
fn grpc_watch_sees_real_traffic_with_exact_counts() {
    if !ebpf_available("grpc_watch_sees_real_traffic_with_exact_counts") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("agent-watch");
    let port = free_port();
    let _nginx = nginx(Place::in_cgroup(&cg), port);
    let agent = Agent::start(&["--cgroup", &cg.cgroup.path]);
    let url = agent.url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let watcher = thread::spawn(move || {
        rt().block_on(async move {
            let mut c = KiteClient::connect(url).await.unwrap();
            let mut stream = c
                .watch(WatchRequest {
                    interval_ms: 0,
                    filter: Some(Filter {
                        direction: v1::Direction::Inbound as i32,
                        ..Filter::default()
                    }),
                    detail: Some(Detail {
                        histogram: false,
                        history: 5,
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            let mut snaps = Vec::new();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                    Ok(Ok(Some(s))) => snaps.push(s),
                    other => panic!("watch stream ended: {other:?}"),
                }
            }
            snaps
        })
    });
    let url = format!("http://127.0.0.1:{port}");
    let r = wrk(Place::default(), &url, 2, 1500, &["/", "/status/404"], &[]);
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let snaps = watcher.join().unwrap();
    assert!(snaps.len() >= 4, "{} snapshots", snaps.len());
    // Windows add up to the load; the last snapshot's totals are the load.
    let windows: u64 = snaps
        .iter()
        .flat_map(|s| endpoint_on(s, port))
        .map(|e| e.last.as_ref().unwrap().requests)
        .sum();
    assert_eq!(windows, r.requests);
    let last = snaps.last().unwrap();
    let eps = endpoint_on(last, port);
    assert_eq!(eps.len(), 1, "{last:?}");
    let e = eps[0];
    let id = e.id.as_ref().unwrap();
    assert_eq!(id.node, "test-node");
    assert_eq!(id.cgroup_path, cg.cgroup.path);
    assert_eq!(id.address(), format!("127.0.0.1:{port}"));
    let t = e.totals.as_ref().unwrap();
    assert_eq!(t.requests, r.requests);
    assert_eq!(t.status_4xx, r.requests / 2);
    assert!(e.history.len() <= 5);
    assert!(last.window_seconds > 0.3 && last.window_seconds < 1.0);
}

#[test]
fn reflection_only_python_client_lists_and_health_is_serving() {
    if !ebpf_available("reflection_only_python_client_lists_and_health_is_serving") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("agent-reflect");
    let port = free_port();
    let _srv = python_httpd(Place::in_cgroup(&cg), "127.0.0.1", port, false);
    let agent = Agent::start(&["--cgroup", &cg.cgroup.path]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    client(&Load {
        addr,
        conns: 1,
        per_conn: 25,
        depth: 1,
        paths: &["/"],
        close: false,
        ..Load::default()
    });
    thread::sleep(Duration::from_millis(1200));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kernel/clients/reflect.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(agent.grpc.to_string())
        .output()
        .expect("python3 (pip install grpcio grpcio-reflection protobuf)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let services: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in ["kite.v1.Kite", "grpc.health.v1.Health"] {
        assert!(services.contains(&s), "{services:?}");
    }
    assert_eq!(v["health"]["status"], "SERVING");
    let eps = v["list"]["endpoints"].as_array().unwrap();
    let ep = eps
        .iter()
        .find(|e| e["id"]["port"] == port)
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(ep["totals"]["requests"], "25");
    assert_eq!(ep["id"]["direction"], "DIRECTION_INBOUND");
    // The descriptor served by reflection has the protocol field (issue 13) and its names.
    assert!(
        matches!(
            ep["id"]["protocol"].as_str(),
            Some("PROTOCOL_HTTP1_0" | "PROTOCOL_HTTP1_1")
        ),
        "{ep}"
    );
}

const UID: &str = "0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b";

/// Sends a hello line from inside `cgroup` (a process placed there first) and returns the
/// agent's answer.
pub(super) fn hello_from(cgroup: &Path, socket: &Path, line: &str) -> serde_json::Value {
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n\
        s.sendall(sys.argv[2].encode()+b'\\n')\n\
        print(s.makefile().readline())";
    let out = command(
        Place {
            cgroup_path: Some(cgroup),
            ..Place::default()
        },
        &["python3", "-c", script, socket.to_str().unwrap(), line],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("answer {text:?} {}", String::from_utf8_lossy(&out.stderr)))
}

pub(super) fn hello(ns: &str, pod: &str, uid: &str) -> String {
    serde_json::json!({"version": 1, "pod": pod, "namespace": ns, "uid": uid, "container": "kite-init"}).to_string()
}

#[test]
fn enrollment_attaches_pods_of_both_kubelet_layouts_and_refuses_others() {
    if !ebpf_available("enrollment_attaches_pods_of_both_kubelet_layouts_and_refuses_others") {
        return;
    }
    let _serial = serial();
    let root = TestCgroup::new("node");
    let agent = Agent::start(&["--gone-grace", "1s"]);
    let uid_ = UID.replace('-', "_");
    for (layout, pod_rel, ctr, init) in [
        (
            "systemd",
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"),
            "cri-containerd-app.scope",
            "cri-containerd-init.scope",
        ),
        (
            "cgroupfs",
            format!("kubepods/besteffort/pod{UID}"),
            "app",
            "init",
        ),
    ] {
        eprintln!("layout: {layout}");
        let pod = root.child(&pod_rel);
        let app = root.child(&format!("{pod_rel}/{ctr}"));
        let init = root.child(&format!("{pod_rel}/{init}"));
        let port = free_port();
        // The app starts after the hello, as in a pod (init containers run first).
        let answer = hello_from(&init.dir, &agent.socket, &hello("shop", "web-0", UID));
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["cgroup"], pod.path.as_str());
        let _srv = python_httpd(
            Place {
                cgroup_path: Some(&app.dir),
                ..Place::default()
            },
            "127.0.0.1",
            port,
            false,
        );
        let att = agent.info().attachments;
        let a = att
            .iter()
            .find(|a| a.cgroup_path == pod.path)
            .expect("attached");
        assert_eq!(a.source, "enrolled");
        assert_eq!(a.workload.as_ref().unwrap().pod, "web-0");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        client(&Load {
            addr,
            conns: 1,
            per_conn: 40,
            depth: 1,
            paths: &["/"],
            close: false,
            ..Load::default()
        });
        thread::sleep(Duration::from_millis(1200));
        let snap = agent.list();
        let eps = endpoint_on(&snap, port);
        assert_eq!(eps.len(), 1);
        let w = eps[0].workload.as_ref().expect("labelled");
        assert_eq!(
            (w.namespace.as_str(), w.pod.as_str(), w.pod_uid.as_str()),
            ("shop", "web-0", UID)
        );
        assert_eq!(w.container, ctr);
        assert_eq!(eps[0].totals.as_ref().unwrap().requests, 40);
        let metrics = agent.metrics_text();
        assert!(
            metrics.lines().any(
                |l| l.starts_with("http_server_request_duration_seconds_count")
                    && l.contains("k8s_namespace_name=\"shop\"")
                    && l.contains("k8s_pod_name=\"web-0\"")
                    && l.ends_with(" 40")
            ),
            "{metrics}"
        );
        // The pod ends: its cgroups go away, the agent detaches.
        drop(_srv);
        for d in [&app.dir, &init.dir, &pod.dir] {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(d).is_err() {
                assert!(Instant::now() < deadline, "cannot remove {}", d.display());
                thread::sleep(Duration::from_millis(50));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent
            .info()
            .attachments
            .iter()
            .any(|a| a.cgroup_path == pod.path)
        {
            assert!(
                Instant::now() < deadline,
                "not detached after the pod cgroup vanished"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(agent.counter("vanished_cgroups") >= 2);

    // A process outside any pod cgroup is refused.
    let answer = hello_from(
        &root.cgroup.dir,
        &agent.socket,
        &hello("shop", "web-0", UID),
    );
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not inside a Kubernetes pod cgroup"),
        "{answer}"
    );
    // A pod naming another pod's uid is refused.
    let other = root.child(&format!("kubepods/besteffort/pod{UID}/x"));
    let answer = hello_from(
        &other.dir,
        &agent.socket,
        &hello("shop", "web-1", "11111111-2222-4333-8444-555555555555"),
    );
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"].as_str().unwrap().contains("belongs to pod"),
        "{answer}"
    );
    assert!(agent.counter("enroll_refused") >= 2);
}

fn raw_exchange(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

#[test]
fn enrollment_socket_survives_garbage_and_hanging_clients() {
    if !ebpf_available("enrollment_socket_survives_garbage_and_hanging_clients") {
        return;
    }
    let _serial = serial();
    let root = TestCgroup::new("node-garbage");
    let agent = Agent::start(&[]);
    // A client that connects and never speaks does not block anyone.
    let hanging = UnixStream::connect(&agent.socket).unwrap();
    for (bytes, expect) in [
        (b"this is not json\n".to_vec(), "not valid JSON"),
        (vec![b'x'; 10_000], "longer than"),
        (
            b"{\"version\":2,\"pod\":\"p\",\"namespace\":\"n\",\"uid\":\"u\"}\n".to_vec(),
            "version",
        ),
        (
            b"{\"version\":1,\"pod\":\"\",\"namespace\":\"n\",\"uid\":\"u\"}\n".to_vec(),
            "empty pod",
        ),
        (b"{\"version\":1".to_vec(), "closed before"),
    ] {
        let answer = raw_exchange(&agent.socket, &bytes);
        let v: serde_json::Value =
            serde_json::from_str(answer.trim()).unwrap_or_else(|_| panic!("{answer:?}"));
        assert_eq!(v["ok"], false, "{answer}");
        assert!(
            v["error"].as_str().unwrap().contains(expect),
            "{answer} lacks {expect}"
        );
    }
    // Still serving: a real pod enrolls fine.
    let pod = root.child(&format!("kubepods/pod{UID}"));
    let init = root.child(&format!("kubepods/pod{UID}/init"));
    let answer = hello_from(&init.dir, &agent.socket, &hello("n", "p", UID));
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(
        agent
            .info()
            .attachments
            .iter()
            .any(|a| a.cgroup_path == pod.path)
    );
    assert!(agent.counter("enroll_bad") >= 5);
    drop(hanging);
}

/// Programs attached to a cgroup, per `bpftool cgroup show`.
fn attached_programs(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool (apt-get install bpftool)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn sigkill_under_load_loses_no_request_and_restart_does_not_duplicate() {
    if !ebpf_available("sigkill_under_load_loses_no_request_and_restart_does_not_duplicate") {
        return;
    }
    let _serial = serial();
    let root = TestCgroup::new("restart");
    let web = root.child("web");
    let port = free_port();
    let _nginx = nginx(
        Place {
            cgroup_path: Some(&web.dir),
            ..Place::default()
        },
        port,
    );
    // One static cgroup and one enrolled pod.
    let mut agent = Agent::start(&["--cgroup", &web.path]);
    let pod = root.child(&format!("kubepods/pod{UID}"));
    let init = root.child(&format!("kubepods/pod{UID}/init"));
    assert_eq!(
        hello_from(&init.dir, &agent.socket, &hello("n", "p", UID))["ok"],
        true
    );
    assert_eq!(
        attached_programs(&web.dir).len(),
        3,
        "{:?}",
        attached_programs(&web.dir)
    );
    assert_eq!(attached_programs(&pod.dir).len(), 3);
    let url = format!("http://127.0.0.1:{port}");
    let (r, restarted) = thread::scope(|s| {
        let load = s.spawn(|| wrk(Place::default(), &url, 4, 3000, &["/"], &[]));
        thread::sleep(Duration::from_millis(500));
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(agent.proc.child.id() as i32, libc::SIGKILL) };
        agent.proc.child.wait().unwrap();
        // Links die with the process: nothing stays attached.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !attached_programs(&web.dir).is_empty() {
            assert!(
                Instant::now() < deadline,
                "programs left attached after SIGKILL"
            );
            thread::sleep(Duration::from_millis(50));
        }
        let restarted = agent.restart();
        (load.join().unwrap(), restarted)
    });
    assert_eq!(r.socket_errors(), 0, "{r:?}");
    assert_eq!(r.requests, 12_000);
    assert_eq!(r.statuses.get("200"), Some(&12_000));
    // The new agent attached each cgroup once: the static one and, from its state file, the
    // enrolled pod.
    assert_eq!(
        attached_programs(&web.dir).len(),
        3,
        "{:?}",
        attached_programs(&web.dir)
    );
    assert_eq!(
        attached_programs(&pod.dir).len(),
        3,
        "{:?}",
        attached_programs(&pod.dir)
    );
    let att = restarted.info().attachments;
    assert!(
        att.iter()
            .any(|a| a.cgroup_path == pod.path && a.source == "enrolled"),
        "{att:?}"
    );
    // And SIGTERM detaches everything cleanly.
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(restarted.proc.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut restarted = restarted;
    while restarted.proc.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(restarted.proc.child.try_wait().unwrap().unwrap().success());
    assert!(attached_programs(&web.dir).is_empty());
    assert!(attached_programs(&pod.dir).is_empty());
    assert!(!restarted.socket.exists(), "socket file left behind");
}

#[test]
fn no_cluster_or_unreachable_api_is_reported_once_and_nothing_else_stops() {
    if !ebpf_available("no_cluster_or_unreachable_api_is_reported_once_and_nothing_else_stops") {
        return;
    }
    let _serial = serial();
    // No kubeconfig at all, and a kubeconfig whose API server does not answer.
    let tmp = TempDir::new("kite-kubeconfig");
    let dir = tmp.path();
    let dead = dir.join("dead.yaml");
    std::fs::write(
        &dead,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
            free_port()
        ),
    )
    .unwrap();
    let missing = dir.join("missing.yaml");
    let home = dir.display().to_string();
    for kubeconfig in [&missing, &dead] {
        let kc = kubeconfig.display().to_string();
        let agent = Agent::start_env(
            &["--kube", "on"],
            &[("KUBECONFIG", kc.as_str()), ("HOME", home.as_str())],
        );
        // Long enough for several watch retries.
        thread::sleep(Duration::from_secs(6));
        let log = agent.log();
        let warnings = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("Kubernetes"))
            .count();
        assert_eq!(warnings, 1, "{log}");
        assert!(!log.contains("ERROR"), "{log}");
        assert_eq!(
            http_get(agent.metrics, "/readyz").map(|(c, _)| c),
            Some(200)
        );
        assert_eq!(agent.info().node, "test-node");
    }
}
