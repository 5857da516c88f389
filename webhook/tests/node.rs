//! A simulated Kubernetes node, end to end (root; real eBPF, real processes, no cluster):
//! a kubelet-like cgroup tree with two pods, each in its own network namespace joined by a veth
//! pair (addresses inside namespaces this test owns). Each pod spec goes through the webhook
//! over TLS; the injected init container's command runs in the pod's cgroup with the env the
//! kubelet would give it; the agent attaches; client → server traffic is measured with both
//! pods' names on the series (gRPC `List`, Prometheus `/metrics`, `kite-tui --once`); deleting a
//! pod's cgroup removes it.
//!
//! The kite-agent, kite-init and kite-tui binaries are taken from beside this test's executable:
//! `cargo test` on the workspace builds every member's binaries before it runs any test.
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use kite_proto::v1::{self, Detail, InfoRequest, ListRequest, kite_client::KiteClient};
use kite_testkit::*;
use serde_json::{Value, json};

fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace's binaries first (`cargo test` on the workspace, \
         or `cargo build --bins`)",
        bin.display()
    );
    bin
}

/// A process killed on drop, its stderr kept in a file shown when the test fails.
struct Daemon {
    proc: Proc,
    log: PathBuf,
    name: &'static str,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        if thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} log ---\n{log}", self.name);
        }
    }
}

fn daemon(name: &'static str, cmd: &mut Command, dir: &Path) -> Daemon {
    let log = dir.join(format!("{name}.log"));
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Daemon {
        proc: Proc { child },
        log,
        name,
    }
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// A pod as a controller would create it, opted in by label.
fn pod_spec(name: &str, namespace: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app": app, "kite.io/monitor": "true"}},
        "spec": {"containers": [{"name": app, "image": "python:3.11", "ports": [{"containerPort": 8080}]}]}
    })
}

fn review(pod: &Value, uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"]["namespace"], "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": null, "dryRun": false
        }
    })
}

/// Runs `pod` through the webhook and returns it with the patch applied.
fn admit(webhook_port: u16, ca: &Path, dir: &Path, pod: &Value, uid: &str) -> Value {
    admit_answer(webhook_port, ca, dir, pod, uid).1
}

/// Runs `pod` through the webhook: its answer (`response`), and the pod with the patch applied.
fn admit_answer(
    webhook_port: u16,
    ca: &Path,
    dir: &Path,
    pod: &Value,
    uid: &str,
) -> (Value, Value) {
    let body = dir.join(format!("review-{uid}.json"));
    std::fs::write(&body, serde_json::to_vec(&review(pod, uid)).unwrap()).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("https://127.0.0.1:{webhook_port}/mutate"))
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let patch = answer["response"]["patch"]
        .as_str()
        .expect("a patch for an opted-in pod");
    use base64::Engine as _;
    let patch: json_patch::Patch = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap(),
    )
    .unwrap();
    let mut admitted = pod.clone();
    json_patch::patch(&mut admitted, &patch).unwrap();
    (answer["response"].clone(), admitted)
}

/// One simulated pod: its cgroup (systemd driver layout), network namespace and address.
struct Pod {
    name: &'static str,
    uid: String,
    cgroup: kite_agent::cgroup::Cgroup,
    containers: Vec<kite_agent::cgroup::Cgroup>,
    admitted: Value,
}

impl Pod {
    fn new(root: &TestCgroup, name: &'static str, uid: String, admitted: Value) -> Self {
        let rel = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        );
        Self {
            name,
            uid,
            cgroup: root.child(&rel),
            containers: Vec::new(),
            admitted,
        }
    }

    /// A container scope in the pod, as containerd makes them.
    fn container(&mut self, root: &TestCgroup, id: &str) -> PathBuf {
        let rel = self
            .cgroup
            .dir
            .strip_prefix(&root.cgroup.dir)
            .unwrap()
            .join(format!("cri-containerd-{id}.scope"));
        let c = root.child(rel.to_str().unwrap());
        let dir = c.dir.clone();
        self.containers.push(c);
        dir
    }

    /// Runs the injected init container as the kubelet would: its command, its env with the
    /// downward API resolved, in a container cgroup of this pod. Returns its stderr.
    fn run_init(&mut self, root: &TestCgroup) -> String {
        let inits = self.admitted["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(inits.iter().filter(|c| c["name"] == "kite-init").count(), 1);
        let init = &inits[0];
        let meta = &self.admitted["metadata"];
        let mut env = BTreeMap::new();
        for e in init["env"].as_array().unwrap() {
            let field = e["valueFrom"]["fieldRef"]["fieldPath"].as_str();
            let annotation = field
                .and_then(|f| f.strip_prefix("metadata.annotations['"))
                .and_then(|f| f.strip_suffix("']"));
            let value = match field {
                Some("metadata.name") => meta["name"].as_str().unwrap().to_string(),
                Some("metadata.namespace") => meta["namespace"].as_str().unwrap().to_string(),
                Some("metadata.uid") => self.uid.clone(),
                // The kubelet gives an annotation's value, or "" when the pod has none.
                Some(_) if annotation.is_some() => meta["annotations"][annotation.unwrap()]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                Some(other) => panic!("unexpected downward API field {other}"),
                None => e["value"].as_str().unwrap().to_string(),
            };
            env.insert(e["name"].as_str().unwrap().to_string(), value);
        }
        let command: Vec<String> = serde_json::from_value(init["command"].clone()).unwrap();
        assert_eq!(command, ["kite-init"]);
        let scope = self.container(
            root,
            &format!("{:0>64}", format!("1{}", self.uid.replace('-', ""))),
        );
        let out = kite_testkit::command(
            Place {
                cgroup_path: Some(&scope),
                ..Place::default()
            },
            &[sibling_bin("kite-init").to_str().unwrap()],
        )
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
        assert!(out.status.success(), "kite-init must always exit 0");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Removes the pod as the kubelet does after it stopped: processes gone, cgroups removed.
    fn delete(&mut self) {
        for c in self.containers.iter().chain(std::iter::once(&self.cgroup)) {
            let _ = std::fs::write(c.dir.join("cgroup.kill"), "1");
        }
        wait_until(
            "the pod's processes to exit",
            Duration::from_secs(10),
            || {
                self.containers.iter().all(|c| {
                    std::fs::read_to_string(c.dir.join("cgroup.procs"))
                        .map_or(true, |p| p.trim().is_empty())
                })
            },
        );
        for c in self.containers.drain(..) {
            std::fs::remove_dir(&c.dir).unwrap();
        }
        std::fs::remove_dir(&self.cgroup.dir).unwrap();
    }
}

fn uuid(seed: u64) -> String {
    let mut r = Rng(seed);
    let h: String = (0..4)
        .map(|_| format!("{:08x}", r.next_u64() as u32))
        .collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Two veth-joined namespaces: (server ns, client ns, server address, client address).
fn veth_pair(tag: u16) -> (Netns, Netns, String, String) {
    let srv = Netns::new("srv");
    let cli = Netns::new("cli");
    let (a, b) = (format!("kvs{tag}"), format!("kvc{tag}"));
    run_ok(Command::new("ip").args(["link", "add", &a, "type", "veth", "peer", "name", &b]));
    run_ok(Command::new("ip").args(["link", "set", &a, "netns", &srv.name]));
    run_ok(Command::new("ip").args(["link", "set", &b, "netns", &cli.name]));
    let net = format!("10.213.{}", tag % 250 + 1);
    let (sa, ca) = (format!("{net}.1"), format!("{net}.2"));
    srv.run(&["ip", "addr", "add", &format!("{sa}/24"), "dev", &a]);
    srv.run(&["ip", "link", "set", &a, "up"]);
    cli.run(&["ip", "addr", "add", &format!("{ca}/24"), "dev", &b]);
    cli.run(&["ip", "link", "set", &b, "up"]);
    (srv, cli, sa, ca)
}

fn list(grpc: SocketAddr) -> v1::Snapshot {
    rt().block_on(async move {
        let mut c = KiteClient::connect(format!("http://{grpc}")).await.unwrap();
        c.list(ListRequest {
            filter: None,
            detail: Some(Detail {
                histogram: false,
                history: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner()
    })
}

fn info(grpc: SocketAddr) -> v1::AgentInfo {
    rt().block_on(async move {
        let mut c = KiteClient::connect(format!("http://{grpc}")).await.unwrap();
        c.info(InfoRequest {}).await.unwrap().into_inner()
    })
}

fn series<'a>(
    snap: &'a v1::Snapshot,
    pod: &str,
    direction: v1::Direction,
) -> Option<&'a v1::Endpoint> {
    snap.endpoints.iter().find(|e| {
        e.workload
            .as_ref()
            .is_some_and(|w| w.pod == pod && w.namespace == "shop")
            && e.id
                .as_ref()
                .is_some_and(|i| i.direction == direction as i32)
    })
}

fn requests(e: Option<&v1::Endpoint>) -> u64 {
    e.and_then(|e| e.totals.as_ref()).map_or(0, |t| t.requests)
}

fn metrics(addr: SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `_count` of a Prometheus histogram series whose labels include all of `labels`.
fn prom_count(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}_count{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The node's Kite: the agent as the DaemonSet runs it (minus the cluster: `--kube off`),
/// and the webhook with its own certificates, injecting the agent's socket directory. Both
/// stopped on drop (before the directory holding their logs is removed).
struct Node {
    _agent: Daemon,
    _webhook: Daemon,
    grpc: SocketAddr,
    metrics: SocketAddr,
    webhook_port: u16,
    ca: PathBuf,
    socket: PathBuf,
    dir: TempDir,
}

impl Node {
    fn start(name: &str, agent_args: &[&str]) -> Self {
        let dir = TempDir::new(name);
        let run_dir = dir.0.join("run-kite");
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let socket = run_dir.join("kite.sock");
        let agent = daemon(
            "kite-agent",
            Command::new(sibling_bin("kite-agent"))
                .args([
                    "--kube",
                    "off",
                    "--node-name",
                    "sim-node",
                    "--interval",
                    "500ms",
                    "--gone-grace",
                    "1s",
                ])
                .args(agent_args)
                .arg("--grpc-addr")
                .arg(grpc.to_string())
                .arg("--metrics-addr")
                .arg(metrics.to_string())
                .arg("--socket")
                .arg(&socket)
                .arg("--state-dir")
                .arg(&run_dir),
            &dir.0,
        );
        wait_until("the agent's socket", Duration::from_secs(30), || {
            socket.exists()
        });
        let webhook_bin = env!("CARGO_BIN_EXE_kite-webhook");
        let certs = dir.0.join("certs");
        run_ok(
            Command::new(webhook_bin)
                .args(["certs", "--extra-name", "127.0.0.1", "--out-dir"])
                .arg(&certs),
        );
        let webhook_port = free_port();
        let webhook = daemon(
            "kite-webhook",
            Command::new(webhook_bin)
                .args([
                    "serve",
                    "--addr",
                    &format!("127.0.0.1:{webhook_port}"),
                    "--init-timeout",
                    "5s",
                ])
                .arg("--socket-dir")
                .arg(&run_dir)
                .arg("--tls-cert")
                .arg(certs.join("tls.crt"))
                .arg("--tls-key")
                .arg(certs.join("tls.key")),
            &dir.0,
        );
        wait_until("the webhook", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", webhook_port)).is_ok()
        });
        Self {
            _agent: agent,
            _webhook: webhook,
            grpc,
            metrics,
            webhook_port,
            ca: certs.join("ca.crt"),
            socket,
            dir,
        }
    }

    /// Runs `pod` through the webhook: its answer and the admitted pod.
    fn admit(&self, pod: &Value, uid: &str) -> (Value, Value) {
        admit_answer(self.webhook_port, &self.ca, &self.dir.0, pod, uid)
    }
}

#[test]
fn a_pod_admitted_by_the_webhook_is_enrolled_measured_by_name_and_forgotten_when_deleted() {
    if !ebpf_available(
        "a_pod_admitted_by_the_webhook_is_enrolled_measured_by_name_and_forgotten_when_deleted",
    ) {
        return;
    }
    let _serial = serial();
    let node = Node::start("kite-node", &[]);
    let (dir, grpc, metrics_addr, webhook_port) =
        (&node.dir, node.grpc, node.metrics, node.webhook_port);

    // Two pods on one node, each in its own network namespace.
    let root = TestCgroup::new("node");
    let tag = (std::process::id() % 1000) as u16;
    let (srv_ns, cli_ns, srv_ip, _cli_ip) = veth_pair(tag);
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let ca = node.ca.clone();
    let web_uid = uuid(seed);
    let load_uid = uuid(seed + 1);
    let mut web = Pod::new(
        &root,
        "web-0",
        web_uid.clone(),
        admit(
            webhook_port,
            &ca,
            &dir.0,
            &pod_spec("web-0", "shop", "web"),
            &web_uid,
        ),
    );
    let mut load = Pod::new(
        &root,
        "load-0",
        load_uid.clone(),
        admit(
            webhook_port,
            &ca,
            &dir.0,
            &pod_spec("load-0", "shop", "load"),
            &load_uid,
        ),
    );

    // Init containers first: they enroll their pods.
    for pod in [&mut web, &mut load] {
        let said = pod.run_init(&root);
        assert!(said.contains("enrolled: attached"), "{}: {said}", pod.name);
    }
    let attached: Vec<String> = info(grpc)
        .attachments
        .iter()
        .map(|a| a.cgroup_path.clone())
        .collect();
    for pod in [&web, &load] {
        assert!(attached.contains(&pod.cgroup.path), "{attached:?}");
    }

    // Then the apps: a server in web-0, bounded wrk load from load-0.
    let app = web.container(&root, &format!("{:0>64}", "2"));
    let port = 8080;
    let _server = python_httpd(
        Place {
            cgroup_path: Some(&app),
            netns: Some(&srv_ns),
            ..Place::default()
        },
        &srv_ip,
        port,
        false,
    );
    wait_for_port(&format!("{srv_ip}:{port}"), Some(&srv_ns));
    let client_app = load.container(&root, &format!("{:0>64}", "3"));
    let report = wrk(
        Place {
            cgroup_path: Some(&client_app),
            netns: Some(&cli_ns),
            ..Place::default()
        },
        &format!("http://{srv_ip}:{port}"),
        2,
        300,
        &["/"],
        &[],
    );
    assert_eq!(report.requests, 600);
    assert_eq!(report.socket_errors(), 0);

    // gRPC: the server side under web-0, the client side under load-0, exact counts.
    wait_until("both sides in List", Duration::from_secs(10), || {
        let s = list(grpc);
        requests(series(&s, "web-0", v1::Direction::Inbound)) == 600
            && requests(series(&s, "load-0", v1::Direction::Outbound)) == 600
    });
    let snap = list(grpc);
    for (pod, dir) in [
        ("web-0", v1::Direction::Inbound),
        ("load-0", v1::Direction::Outbound),
    ] {
        let e = series(&snap, pod, dir).unwrap();
        let id = e.id.as_ref().unwrap();
        assert_eq!(
            (id.ip.as_str(), id.port),
            (srv_ip.as_str(), port as u32),
            "{pod}"
        );
        assert_eq!(id.node, "sim-node");
    }
    assert_eq!(
        series(&snap, "web-0", v1::Direction::Inbound)
            .unwrap()
            .workload
            .as_ref()
            .unwrap()
            .pod_uid,
        web_uid
    );

    // Prometheus: the same counts, labelled with the pods.
    let text = metrics(metrics_addr);
    let server = prom_count(
        &text,
        "http_server_request_duration_seconds",
        &[
            ("k8s_pod_name", "web-0"),
            ("k8s_namespace_name", "shop"),
            ("server_address", &srv_ip),
        ],
    );
    let client = prom_count(
        &text,
        "http_client_request_duration_seconds",
        &[
            ("k8s_pod_name", "load-0"),
            ("k8s_namespace_name", "shop"),
            ("server_address", &srv_ip),
        ],
    );
    assert_eq!((server, client), (Some(600), Some(600)), "{text}");

    // kite-tui --once, as a user would script it.
    let out = Command::new(sibling_bin("kite-tui"))
        .args(["--once", "-o", "json", "--addr", &grpc.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = json.to_string();
    for pod in ["web-0", "load-0"] {
        assert!(
            text.contains(&format!("\"{pod}\"")),
            "{pod} missing from {text}"
        );
    }
    let table = Command::new(sibling_bin("kite-tui"))
        .args(["--once", "-o", "table", "--addr", &grpc.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("shop/web-0") && table.contains("shop/load-0"),
        "{table}"
    );

    // The server pod goes away: detached, and its series leave after the grace period.
    web.delete();
    wait_until(
        "web-0 detached and its series gone",
        Duration::from_secs(15),
        || {
            let attached: Vec<String> = info(grpc)
                .attachments
                .iter()
                .map(|a| a.cgroup_path.clone())
                .collect();
            !attached.contains(&web.cgroup.path)
                && series(&list(grpc), "web-0", v1::Direction::Inbound).is_none()
        },
    );
    assert!(
        series(&list(grpc), "load-0", v1::Direction::Outbound).is_some(),
        "the other pod stays"
    );
    wait_until("web-0 gone from /metrics", Duration::from_secs(10), || {
        !metrics(metrics_addr).contains("k8s_pod_name=\"web-0\"")
    });
    drop(load);
    let _ = std::io::stderr().flush();
}

/// `pod_spec` with annotations.
fn annotated(name: &str, app: &str, annotations: Value) -> Value {
    let mut p = pod_spec(name, "shop", app);
    p["metadata"]["annotations"] = annotations;
    p
}

/// The inbound endpoint of `pod` on `port` in `snap`: its routes, name → requests.
fn routes_in_list(snap: &v1::Snapshot, pod: &str, port: u16) -> Option<BTreeMap<String, u64>> {
    let e = snap.endpoints.iter().find(|e| {
        e.workload.as_ref().is_some_and(|w| w.pod == pod)
            && e.id.as_ref().is_some_and(|i| {
                i.direction == v1::Direction::Inbound as i32 && i.port == port as u32
            })
    })?;
    Some(
        e.routes
            .iter()
            .map(|r| (r.name.clone(), r.totals.as_ref().map_or(0, |t| t.requests)))
            .collect(),
    )
}

/// The server `_count`s of `pod` summed per route label: (`http_route` or `url_template`,
/// value) → requests.
fn routes_in_metrics(text: &str, pod: &str) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    let pod_label = format!("k8s_pod_name=\"{pod}\"");
    for l in text.lines().filter(|l| {
        l.starts_with("http_server_request_duration_seconds_count{") && l.contains(&pod_label)
    }) {
        let Some((labels, value)) = l.rsplit_once(' ') else {
            continue;
        };
        for key in ["http_route", "url_template"] {
            let Some(rest) = labels.split_once(&format!("{key}=\"")).map(|(_, r)| r) else {
                continue;
            };
            let v = rest.split('"').next().unwrap_or_default().to_string();
            *out.entry((key.to_string(), v)).or_default() += value.parse::<f64>().unwrap() as u64;
        }
    }
    out
}

/// Issue 15: a pattern from a pod's `kite.io/routes` annotation names that pod's routes only,
/// before the agent's own `--route` patterns and the heuristic. Three pods on one node, the
/// same nginx and the same paths in two of them: web-a annotated, web-b not (the agent's
/// `--route` and the heuristic name its routes), web-c with a malformed annotation (the
/// webhook answers why, kite-init logs it, the pod is enrolled with inferred routes).
#[test]
fn a_pods_route_annotation_names_that_pods_routes_only() {
    if !ebpf_available("a_pods_route_annotation_names_that_pods_routes_only") {
        return;
    }
    let _serial = serial();
    let node = Node::start("kite-node-routes", &["--route", "/d/{ms}"]);
    let root = TestCgroup::new("node-routes");
    let seed = std::process::id() as u64 ^ 0x5eed;
    let uids = [uuid(seed), uuid(seed + 1), uuid(seed + 2)];
    let specs = [
        annotated(
            "web-a",
            "web",
            json!({"kite.io/routes": "/status/{code}\n/d/{delay}\n"}),
        ),
        pod_spec("web-b", "shop", "web"),
        annotated("web-c", "web", json!({"kite.io/routes": "status/{code}"})),
    ];
    let mut pods = Vec::new();
    for ((spec, uid), name) in specs.iter().zip(&uids).zip(["web-a", "web-b", "web-c"]) {
        let (answer, admitted) = node.admit(spec, uid);
        let warnings = answer["warnings"].to_string();
        if name == "web-c" {
            assert!(
                warnings.contains(
                    "kite-webhook: kite.io/routes: route pattern \\\"status/{code}\\\" does not start with /"
                ),
                "{answer}"
            );
            assert_eq!(answer["allowed"], true);
        } else {
            assert_eq!(answer["warnings"], Value::Null, "{name}: {answer}");
        }
        pods.push(Pod::new(&root, name, uid.clone(), admitted));
    }
    let said: Vec<String> = pods.iter_mut().map(|p| p.run_init(&root)).collect();
    assert!(
        said[0].contains("enrolled: attached with route patterns /status/{code} /d/{delay}"),
        "{}",
        said[0]
    );
    assert!(said[1].contains("enrolled: attached ("), "{}", said[1]);
    assert!(
        said[2].contains("kite.io/routes: route pattern \"status/{code}\" does not start with /")
            && said[2].contains("enrolled: attached"),
        "{}",
        said[2]
    );

    // The same nginx, the same paths, in web-a and web-b.
    let ports = [free_port(), free_port()];
    let mut servers = Vec::new();
    for (pod, port) in pods.iter_mut().zip(ports) {
        let app = pod.container(&root, &format!("{:0>64}", format!("2{port}")));
        servers.push(nginx_on(
            Place {
                cgroup_path: Some(&app),
                ..Place::default()
            },
            port,
            &["127.0.0.1"],
        ));
    }
    let paths = ["/status/200", "/status/404", "/d/1", "/d/2", "/"];
    let mut sent: Vec<BTreeMap<&str, u64>> = Vec::new();
    for port in ports {
        let report = client(&Load {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            conns: 2,
            per_conn: 149,
            paths: &paths,
            ..Load::default()
        });
        assert_eq!(report.requests(), 298);
        let mut by_path: BTreeMap<&str, u64> = BTreeMap::new();
        for &i in &report.path_of {
            *by_path.entry(paths[i]).or_default() += 1;
        }
        sent.push(by_path);
    }
    let n = |pod: usize, ps: &[&str]| -> u64 { ps.iter().map(|p| sent[pod][p]).sum() };
    let statuses = ["/status/200", "/status/404"];
    let delays = ["/d/1", "/d/2"];
    let want_a = BTreeMap::from([
        ("/status/{code}".to_string(), n(0, &statuses)),
        ("/d/{delay}".to_string(), n(0, &delays)),
        ("/".to_string(), n(0, &["/"])),
    ]);
    let want_b = BTreeMap::from([
        ("/status/*".to_string(), n(1, &statuses)),
        ("/d/{ms}".to_string(), n(1, &delays)),
        ("/".to_string(), n(1, &["/"])),
    ]);

    eprintln!("sent: web-a {want_a:?}, web-b {want_b:?}");

    // kite.v1: each pod's endpoint with its own routes, counts as sent.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snap = list(node.grpc);
        let a = routes_in_list(&snap, "web-a", ports[0]);
        let b = routes_in_list(&snap, "web-b", ports[1]);
        if a.as_ref() == Some(&want_a) && b.as_ref() == Some(&want_b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "routes in kite.v1: web-a {a:?} (want {want_a:?}), web-b {b:?} (want {want_b:?})"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // Prometheus: the pod's patterns as `http_route` on its series only.
    let text = metrics(node.metrics);
    let label = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        routes_in_metrics(&text, "web-a"),
        BTreeMap::from([
            (
                label("http_route", "/status/{code}"),
                want_a["/status/{code}"]
            ),
            (label("http_route", "/d/{delay}"), want_a["/d/{delay}"]),
            (label("url_template", "/"), want_a["/"]),
        ]),
        "{text}"
    );
    assert_eq!(
        routes_in_metrics(&text, "web-b"),
        BTreeMap::from([
            (label("url_template", "/status/*"), want_b["/status/*"]),
            (label("http_route", "/d/{ms}"), want_b["/d/{ms}"]),
            (label("url_template", "/"), want_b["/"]),
        ]),
        "{text}"
    );
    // The malformed annotation's pod is measured (enrolled), no pattern of its own.
    let attached: Vec<String> = info(node.grpc)
        .attachments
        .iter()
        .map(|a| a.cgroup_path.clone())
        .collect();
    assert!(attached.contains(&pods[2].cgroup.path), "{attached:?}");

    // The agent checks a hello's patterns itself: a hello kite-init would not send (one
    // malformed pattern), straight on the socket from a fourth pod's cgroup, enrolls the pod
    // with none of them and says why.
    let uid = uuid(seed + 3);
    let mut forged = Pod::new(
        &root,
        "web-d",
        uid.clone(),
        pod_spec("web-d", "shop", "web"),
    );
    let scope = forged.container(&root, &format!("{:0>64}", "4"));
    let hello = json!({"version": 1, "pod": "web-d", "namespace": "shop", "uid": uid,
                       "routes": ["/ok/{x}", "bad"]});
    let out = kite_testkit::command(
        Place {
            cgroup_path: Some(&scope),
            ..Place::default()
        },
        &[
            "python3",
            "-c",
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
             s.sendall(sys.argv[2].encode()+b'\\n')\nprint(s.makefile().readline())",
            node.socket.to_str().unwrap(),
            &hello.to_string(),
        ],
    )
    .output()
    .unwrap();
    let ack: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        ack["message"],
        "attached; kite.io/routes: route pattern \"bad\" does not start with /: no pattern applied",
        "{ack}"
    );
    let refused = info(node.grpc)
        .counters
        .iter()
        .find(|c| c.name == "enroll_routes_refused")
        .map(|c| c.value);
    assert_eq!(refused, Some(1));
}
