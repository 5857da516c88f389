//! deploy/: `kubectl kustomize` renders it, every object is a valid typed Kubernetes object,
//! and the pieces fit together and fit the code (arguments, ports, paths, socket, RBAC).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    process::Command,
};

use clap::{CommandFactory as _, Parser as _};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role},
};
use kite_agent::daemon::Config as AgentConfig;
use kite_webhook::{
    certs::Names,
    cli::{Cli, Command as WebhookCommand},
    inject::MONITOR_LABEL,
    server::{HEALTH_PATH, NAMESPACE_PATH, POD_PATH},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

const NAMESPACE: &str = "kite-system";

struct Rendered {
    objects: Vec<Value>,
}

fn render() -> Rendered {
    render_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base"))
}

fn render_dir(dir: &Path) -> Rendered {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (Debian's kubernetes-client) is needed to render deploy/");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let objects = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect();
    Rendered { objects }
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one<T: DeserializeOwned>(&self, kind: &str, name: &str) -> T {
        let o = self
            .all(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"));
        serde_json::from_value(o.clone()).unwrap()
    }
}

/// Deserializes into the typed struct and back: a misspelt or misplaced field would be dropped
/// by the typed struct and show up as a difference.
fn typed<T: DeserializeOwned + serde::Serialize>(o: &Value) {
    let t: T = serde_json::from_value(o.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", o["kind"], o["metadata"]["name"]));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back, o,
        "{} {} does not round-trip",
        o["kind"], o["metadata"]["name"]
    );
}

#[test]
fn every_rendered_object_is_a_valid_object_of_its_kind() {
    let r = render();
    let mut kinds = BTreeMap::<String, usize>::new();
    for o in &r.objects {
        let kind = o["kind"].as_str().unwrap();
        *kinds.entry(kind.into()).or_default() += 1;
        match kind {
            "Namespace" => typed::<Namespace>(o),
            "ServiceAccount" => typed::<ServiceAccount>(o),
            "ClusterRole" => typed::<ClusterRole>(o),
            "ClusterRoleBinding" => typed::<ClusterRoleBinding>(o),
            "Role" => typed::<Role>(o),
            "Service" => typed::<Service>(o),
            "DaemonSet" => typed::<DaemonSet>(o),
            "Deployment" => typed::<Deployment>(o),
            "PodDisruptionBudget" => typed::<PodDisruptionBudget>(o),
            "MutatingWebhookConfiguration" => typed::<MutatingWebhookConfiguration>(o),
            "NetworkPolicy" => typed::<NetworkPolicy>(o),
            other => panic!("unexpected kind {other}"),
        }
        let cluster_scoped = [
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
        ];
        if !cluster_scoped.contains(&kind) {
            assert_eq!(
                o["metadata"]["namespace"], NAMESPACE,
                "{kind} {}",
                o["metadata"]["name"]
            );
        }
    }
    for kind in [
        "DaemonSet",
        "Deployment",
        "MutatingWebhookConfiguration",
        "Namespace",
        "NetworkPolicy",
    ] {
        assert_eq!(kinds.get(kind), Some(&1), "{kinds:?}");
    }
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers.iter().find(|c| c.name == name).unwrap()
}

fn env(c: &Container) -> BTreeMap<String, Option<String>> {
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

fn port(c: &Container, name: &str) -> i32 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap()
        .container_port
}

/// Command, args and literal env as the agent's own parser sees them.
fn agent_config(c: &Container) -> AgentConfig {
    let cmd = AgentConfig::command();
    let mut argv: Vec<String> = c.command.clone().unwrap();
    argv.extend(c.args.clone().unwrap_or_default());
    for (name, value) in env(c) {
        if name == "NODE_NAME" {
            continue; // from the downward API
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| panic!("the agent reads no env {name}"));
        argv.push(format!("--{}={}", arg.get_long().unwrap(), value.unwrap()));
    }
    AgentConfig::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

#[test]
fn the_agent_daemonset_has_what_the_agent_needs() {
    let r = render();
    let ds: DaemonSet = r.one("DaemonSet", "kite-agent");
    let spec = ds.spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(
        spec.host_pid,
        Some(true),
        "SO_PEERCRED pids and /proc/1/ns/cgroup need the host pid namespace"
    );
    assert_eq!(spec.service_account_name.as_deref(), Some("kite-agent"));
    let linux = spec.node_selector.clone().unwrap_or_default();
    assert_eq!(
        linux.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    let c = container(&spec, "kite-agent");
    assert_eq!(c.image.as_deref(), Some("kite:0.1.0"));
    let config = agent_config(c);
    // The memory limit follows from the agent's bounds: at least its worst case, without
    // much to spare.
    let limit = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.clone())
        .expect("a memory limit");
    let limit: u64 = match limit.strip_suffix("Mi") {
        Some(m) => m.parse::<u64>().unwrap() << 20,
        None => limit.strip_suffix("Gi").unwrap().parse::<u64>().unwrap() << 30,
    };
    let worst = config.worst_case_memory();
    assert!(
        limit >= worst && limit < worst + worst / 4,
        "memory limit {} MiB for a worst case of {} MiB",
        limit >> 20,
        worst >> 20
    );
    assert!(config.host_cgroupns);
    assert_eq!(config.kube, kite_agent::daemon::KubeMode::On);
    let env = env(c);
    assert!(env.contains_key("NODE_NAME"));

    // Host paths mounted where the agent looks.
    let host_path = |volume: &str| {
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == volume)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    let mounts: BTreeMap<String, String> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.mount_path.clone(),
                host_path(&m.name).expect("a hostPath volume"),
            )
        })
        .collect();
    assert_eq!(
        mounts.get("/sys/fs/cgroup").map(String::as_str),
        Some("/sys/fs/cgroup")
    );
    let socket_dir = config
        .socket
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        mounts.get(&socket_dir),
        Some(&socket_dir),
        "the socket is on the host, for the pods"
    );
    assert!(
        mounts.keys().any(|m| config.state_dir.starts_with(m)),
        "the state dir is writable"
    );

    // Privileges: capabilities to load and attach, not privileged mode.
    let sc = c.security_context.clone().unwrap();
    let caps: BTreeSet<String> = sc.capabilities.unwrap().add.unwrap().into_iter().collect();
    // The least set deploy/runtime-check.py --drop-caps found (DESIGN.md, Kubernetes).
    for cap in ["SYS_ADMIN", "SYS_PTRACE"] {
        assert!(caps.contains(cap), "{caps:?}");
    }
    assert_ne!(sc.privileged, Some(true));

    // Ports, probes, Prometheus annotations and the headless Service agree with the agent.
    let metrics = port(c, "metrics");
    assert_eq!(i32::from(config.metrics_addr.port()), metrics);
    assert!(config.metrics_addr.ip().is_unspecified());
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p.clone().unwrap().http_get.unwrap();
        (g.path.unwrap(), g.port)
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        probe(&c.liveness_probe),
        ("/healthz".into(), IntOrString::String("metrics".into()))
    );
    // /healthz answers once the programs are loaded (the listener is bound after the load):
    // the startup probe gives that at least a minute before liveness counts.
    assert_eq!(
        probe(&c.startup_probe),
        ("/healthz".into(), IntOrString::String("metrics".into()))
    );
    let startup = c.startup_probe.clone().unwrap();
    let budget = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert!(budget >= 60, "startup probe allows {budget} s");
    assert_eq!(
        c.liveness_probe.clone().unwrap().initial_delay_seconds,
        None
    );
    assert_eq!(
        probe(&c.readiness_probe),
        ("/readyz".into(), IntOrString::String("metrics".into()))
    );
    let ann = ds.spec_template_annotations();
    assert_eq!(ann.get("prometheus.io/port"), Some(&metrics.to_string()));
    assert_eq!(
        ann.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
    let svc: Service = r.one("Service", "kite-agent");
    let svc = svc.spec.unwrap();
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    let targets: Vec<_> = svc
        .ports
        .unwrap()
        .into_iter()
        .map(|p| p.target_port.unwrap())
        .collect();
    assert_eq!(targets, [IntOrString::String("metrics".into())]);
}

/// gRPC (every node's traffic metadata, unauthenticated) is on the pod's loopback: a
/// `kubectl port-forward` reaches it from inside the pod's network namespace, authorised by the
/// API server; no address, port or Service puts it on the pod network.
#[test]
fn grpc_is_reachable_only_through_a_port_forward() {
    let r = render();
    let ds: DaemonSet = r.one("DaemonSet", "kite-agent");
    let spec = ds.spec.unwrap().template.spec.unwrap();
    assert_ne!(
        spec.host_network,
        Some(true),
        "the host's loopback is not the pod's"
    );
    let c = container(&spec, "kite-agent");
    let config = agent_config(c);
    // IPv4's loopback, not ::1: the runtimes' port-forward (containerd, CRI-O) dials
    // `localhost` over tcp4 inside the pod's network namespace (containerd tries tcp6 only
    // after that fails, CRI-O never).
    assert_eq!(
        config.grpc_addr.ip(),
        std::net::Ipv4Addr::LOCALHOST,
        "gRPC listens on {}",
        config.grpc_addr
    );
    let grpc_port = i32::from(config.grpc_addr.port());
    for p in c.ports.iter().flatten() {
        assert_ne!(
            p.container_port, grpc_port,
            "a containerPort for gRPC: {p:?}"
        );
    }
    for svc in r.all("Service") {
        let svc: Service = serde_json::from_value(svc.clone()).unwrap();
        for p in svc.spec.unwrap().ports.unwrap_or_default() {
            assert_ne!(
                p.port, grpc_port,
                "{:?} exposes the gRPC port",
                svc.metadata.name
            );
            assert_ne!(
                p.target_port,
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(grpc_port))
            );
        }
    }
    // kite-tui --kube port-forwards to the port the agent listens on.
    let tui = <kite_tui::Config as clap::Parser>::try_parse_from(["kite-tui", "--kube"]).unwrap();
    assert_eq!(tui.kube_port, config.grpc_addr.port());
    // And the only way in is authorised: the viewer Role is what a port-forward needs.
    let viewer: Role = r.one("Role", "kite-viewer");
    let g = grants(&viewer.rules.unwrap());
    for verb in ["get", "create"] {
        assert!(
            g.contains(&(String::new(), "pods/portforward".into(), verb.into())),
            "{g:?}"
        );
    }
}

/// The NetworkPolicy selects the agent pods (and only them), lets in Prometheus' namespace on
/// the metrics port and nothing else.
#[test]
fn the_network_policy_admits_only_the_metrics_port_from_prometheus() {
    let r = render();
    let np: NetworkPolicy = r.one("NetworkPolicy", "kite-agent-metrics");
    let spec = np.spec.unwrap();
    let selects = |labels: &BTreeMap<String, String>| {
        let sel = spec.pod_selector.clone().unwrap_or_default();
        assert!(sel.match_expressions.is_none());
        sel.match_labels
            .unwrap_or_default()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    let ds: DaemonSet = r.one("DaemonSet", "kite-agent");
    let template = ds.spec.unwrap().template;
    let agent_labels = template.metadata.unwrap().labels.unwrap();
    assert!(selects(&agent_labels), "it must select the agent pods");
    let wh: Deployment = r.one("Deployment", "kite-webhook");
    let wh_labels = wh.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert!(
        !selects(&wh_labels),
        "it must not select the webhook's pods"
    );
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let c = container(template.spec.as_ref().unwrap(), "kite-agent");
    let config = agent_config(c);
    let rules = spec.ingress.unwrap();
    assert!(!rules.is_empty());
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    for rule in rules {
        let ports = rule.ports.expect("a rule without ports opens every port");
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(p.protocol.as_deref(), Some("TCP"));
        assert_eq!(p.end_port, None);
        let number = match p.port.clone().unwrap() {
            IntOrString::String(name) => port(c, &name),
            IntOrString::Int(n) => n,
        };
        assert_eq!(number, i32::from(config.metrics_addr.port()));
        // Not open to everyone: a namespace (the documented default `monitoring`).
        let from = rule.from.expect("a rule without `from` admits every pod");
        assert!(!from.is_empty());
        for peer in &from {
            assert!(peer.ip_block.is_none(), "{peer:?}");
            let ns = peer
                .namespace_selector
                .clone()
                .expect("a namespace selector");
            assert!(
                ns.match_labels.is_some_and(|l| !l.is_empty()),
                "an empty namespaceSelector admits every namespace"
            );
        }
    }
}

/// Two webhook replicas on two nodes, kept by the PDB: a node drain or loss leaves one
/// answering.
#[test]
fn webhook_replicas_are_spread_over_nodes_and_kept_by_the_pdb() {
    let r = render();
    let d: Deployment = r.one("Deployment", "kite-webhook");
    let spec = d.spec.unwrap();
    let replicas = spec.replicas.unwrap();
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    let matches = |sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
        let m = sel.match_labels.clone().unwrap_or_default();
        !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let pod = spec.template.spec.unwrap();
    let spread = pod.topology_spread_constraints.unwrap_or_default();
    let by_node = spread
        .iter()
        .find(|t| t.topology_key == "kubernetes.io/hostname")
        .expect("a spread over nodes");
    assert_eq!(by_node.max_skew, 1);
    assert_eq!(by_node.when_unsatisfiable, "DoNotSchedule");
    assert!(matches(by_node.label_selector.as_ref().unwrap()));
    let pdb: PodDisruptionBudget = r.one("PodDisruptionBudget", "kite-webhook");
    let pdb = pdb.spec.unwrap();
    assert!(matches(pdb.selector.as_ref().unwrap()));
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let IntOrString::Int(min) = pdb.min_available.unwrap() else {
        panic!("minAvailable as a number")
    };
    assert!(
        min >= 1 && min < replicas,
        "minAvailable {min} of {replicas}: a drain must be possible and leave one"
    );
}

trait TemplateAnnotations {
    fn spec_template_annotations(&self) -> BTreeMap<String, String>;
}
impl TemplateAnnotations for DaemonSet {
    fn spec_template_annotations(&self) -> BTreeMap<String, String> {
        self.spec
            .clone()
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap_or_default()
    }
}

#[test]
fn the_webhook_configuration_points_at_the_webhook_and_never_blocks_pods() {
    let r = render();
    let cfg: MutatingWebhookConfiguration = r.one("MutatingWebhookConfiguration", "kite-webhook");
    let webhooks = cfg.webhooks.unwrap();
    assert_eq!(
        webhooks.len(),
        Names::default().webhooks,
        "the caBundle patch covers every webhook"
    );
    let svc: Service = r.one("Service", "kite-webhook");
    let svc_port = svc.spec.clone().unwrap().ports.unwrap()[0].clone();
    let deploy: Deployment = r.one("Deployment", "kite-webhook");
    let spec = deploy.spec.unwrap().template.spec.unwrap();
    let c = container(&spec, "kite-webhook");
    let mut paths = BTreeSet::new();
    for w in &webhooks {
        assert_eq!(w.failure_policy.as_deref(), Some("Ignore"), "{}", w.name);
        assert_eq!(w.side_effects, "None");
        assert_eq!(w.admission_review_versions, ["v1"]);
        assert!(w.timeout_seconds.unwrap() <= 10);
        let s = w.client_config.service.clone().unwrap();
        assert_eq!(
            (s.name.as_str(), s.namespace.as_str()),
            ("kite-webhook", NAMESPACE)
        );
        assert_eq!(s.port, Some(svc_port.port));
        paths.insert(s.path.unwrap());
        let rules = w.rules.clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_string()][..])
        );
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(&["CREATE".to_string()][..])
        );
        let excluded: Vec<_> = w
            .namespace_selector
            .clone()
            .unwrap()
            .match_expressions
            .unwrap()
            .into_iter()
            .filter(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
            .flat_map(|e| e.values.unwrap())
            .collect();
        assert!(
            excluded.contains(&"kube-system".into()) && excluded.contains(&NAMESPACE.into()),
            "{excluded:?}"
        );
    }
    assert_eq!(
        paths,
        [POD_PATH.to_string(), NAMESPACE_PATH.to_string()].into()
    );
    let by_path = |p: &str| {
        webhooks
            .iter()
            .find(|w| w.client_config.service.as_ref().unwrap().path.as_deref() == Some(p))
            .unwrap()
    };
    let labels = by_path(POD_PATH)
        .object_selector
        .clone()
        .unwrap()
        .match_labels
        .unwrap();
    assert_eq!(labels.get(MONITOR_LABEL).map(String::as_str), Some("true"));
    let ns = by_path(NAMESPACE_PATH)
        .namespace_selector
        .clone()
        .unwrap()
        .match_expressions
        .unwrap();
    assert!(ns.iter().any(|e| e.key == MONITOR_LABEL
        && e.operator == "In"
        && e.values.as_deref() == Some(&["true".to_string()][..])));

    // The Service reaches the port the webhook listens on, with the certificate it was made for.
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        svc_port.target_port,
        Some(IntOrString::String("https".into()))
    );
    let mut argv = c.command.clone().unwrap();
    argv.extend(c.args.clone().unwrap());
    let WebhookCommand::Serve(serve) = Cli::try_parse_from(&argv).unwrap().command else {
        panic!("the Deployment must run `serve`")
    };
    assert_eq!(i32::from(serve.addr.port()), port(c, "https"));
    assert!(serve.addr.ip().is_unspecified());
    let tls_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| serve.tls_cert.starts_with(&m.mount_path))
        .unwrap();
    assert!(serve.tls_key.starts_with(&tls_mount.mount_path));
    let tls_volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == tls_mount.name)
        .unwrap();
    assert_eq!(
        tls_volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some(Names::default().secret.as_str())
    );
    assert_eq!(
        svc.metadata.name.as_deref(),
        Some(Names::default().service.as_str())
    );
    for probe in [&c.liveness_probe, &c.readiness_probe] {
        let g = probe.clone().unwrap().http_get.unwrap();
        assert_eq!(
            (g.path.as_deref(), g.scheme.as_deref()),
            (Some(HEALTH_PATH), Some("HTTPS"))
        );
    }

    // The injected init container uses this image and the agent's socket directory.
    let env = env(c);
    assert_eq!(env["KITE_INIT_IMAGE"], c.image.clone());
    let ds: DaemonSet = r.one("DaemonSet", "kite-agent");
    let agent = agent_config(container(
        &ds.spec.unwrap().template.spec.unwrap(),
        "kite-agent",
    ));
    assert_eq!(
        env["KITE_SOCKET_DIR"].as_deref(),
        agent.socket.parent().and_then(|p| p.to_str())
    );
    assert_eq!(
        kite_webhook::Injector::default().socket_name,
        agent.socket.file_name().unwrap().to_str().unwrap()
    );
    let _: SocketAddr = serve.addr;
}

fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    rules
        .iter()
        .flat_map(|r| {
            let groups = r.api_groups.clone().unwrap_or_default();
            let resources = r.resources.clone().unwrap_or_default();
            groups.into_iter().flat_map(move |g| {
                let verbs = r.verbs.clone();
                resources.clone().into_iter().flat_map(move |res| {
                    let g = g.clone();
                    verbs
                        .clone()
                        .into_iter()
                        .map(move |v| (g.clone(), res.clone(), v))
                })
            })
        })
        .collect()
}

type Access = &'static [(&'static str, &'static str, &'static [&'static str])];

fn access(a: Access) -> BTreeSet<(String, String, String)> {
    a.iter()
        .flat_map(|(g, res, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), res.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn rbac_grants_what_the_code_calls_and_no_more() {
    let r = render();
    let role: ClusterRole = r.one("ClusterRole", "kite-agent");
    let want: BTreeSet<_> = kite_agent::daemon::kube::API_ACCESS
        .iter()
        .flat_map(|(g, res, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), res.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(grants(&role.rules.unwrap()), want);
    let binding: ClusterRoleBinding = r.one("ClusterRoleBinding", "kite-agent");
    assert_eq!(binding.role_ref.name, "kite-agent");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("kite-agent", Some(NAMESPACE))
    );

    // The webhook calls no API: no token, no binding.
    let sa: ServiceAccount = r.one("ServiceAccount", "kite-webhook");
    assert_eq!(sa.automount_service_account_token, Some(false));
    for b in r
        .all("ClusterRoleBinding")
        .into_iter()
        .chain(r.all("RoleBinding"))
    {
        assert!(!b.to_string().contains("\"kite-webhook\""), "{b}");
    }
    let pdb: PodDisruptionBudget = r.one("PodDisruptionBudget", "kite-webhook");
    assert!(pdb.spec.is_some());

    // kite-tui --kube: list the agent pods, port-forward to them, in Kite's namespace only.
    let viewer: Role = r.one("Role", "kite-viewer");
    assert_eq!(
        grants(&viewer.rules.unwrap()),
        access(kite_tui::kube::API_ACCESS)
    );
}

/// An overlay that moves the image moves the injected init container's image with it.
#[test]
fn an_overlay_image_reaches_the_injected_init_container() {
    let tmp = std::env::temp_dir().join(format!("kite-overlay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
    std::fs::create_dir_all(tmp.join("base")).unwrap();
    for f in std::fs::read_dir(&base).unwrap().flatten() {
        std::fs::copy(f.path(), tmp.join("base").join(f.file_name())).unwrap();
    }
    std::fs::create_dir_all(tmp.join("prod")).unwrap();
    std::fs::write(
        tmp.join("prod/kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../base\n\
         images:\n  - name: kite\n    newName: registry.example/team/kite\n    newTag: \"9.9\"\n",
    )
    .unwrap();
    let r = render_dir(&tmp.join("prod"));
    std::fs::remove_dir_all(&tmp).unwrap();
    let deploy: Deployment = r.one("Deployment", "kite-webhook");
    let c = container(
        &deploy
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .clone(),
        "kite-webhook",
    )
    .clone();
    assert_eq!(c.image.as_deref(), Some("registry.example/team/kite:9.9"));
    assert_eq!(
        env(&c)["KITE_INIT_IMAGE"].as_deref(),
        Some("registry.example/team/kite:9.9")
    );
    let ds: DaemonSet = r.one("DaemonSet", "kite-agent");
    let spec = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        container(&spec, "kite-agent").image.as_deref(),
        Some("registry.example/team/kite:9.9")
    );
}

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let want = selector["matchLabels"].as_object().unwrap();
    !want.is_empty() && want.iter().all(|(k, v)| &labels[k] == v)
}

/// The Prometheus Operator component renders with the base (`kubectl kustomize`), leaves the
/// base's objects as they are, and its ServiceMonitors scrape named ports of Kite's Services,
/// the webhook's over its TLS with the CA that `kite-webhook certs` puts in the Secret. Its
/// PrometheusRule is the rule file that `promtool test rules` checks.
#[test]
fn the_prometheus_operator_component_scrapes_kites_services() {
    let base = render();
    let r = render_dir(&deploy_dir().join("examples/prometheus-operator"));
    let extra: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| !base.objects.contains(o))
        .collect();
    assert_eq!(
        r.objects.len() - extra.len(),
        base.objects.len(),
        "the component changed base objects"
    );
    let kinds: BTreeSet<&str> = extra.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["PrometheusRule", "ServiceMonitor"].into());
    let services = r.all("Service");
    let monitors = r.all("ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    for m in &monitors {
        assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(m["metadata"]["namespace"], NAMESPACE);
        let selected: Vec<_> = services
            .iter()
            .filter(|s| {
                s["metadata"]["namespace"] == NAMESPACE
                    && labels_match(&m["spec"]["selector"], &s["metadata"]["labels"])
            })
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "{} selects {selected:?}",
            m["metadata"]["name"]
        );
        let svc: Service = serde_json::from_value((*selected[0]).clone()).unwrap();
        let names: BTreeSet<String> = svc
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        let endpoints = m["spec"]["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 1);
        let e = &endpoints[0];
        assert!(names.contains(e["port"].as_str().unwrap()), "{e} {names:?}");
        assert_eq!(e["path"], "/metrics");
        if svc.metadata.name.as_deref() == Some("kite-webhook") {
            let names = Names::default();
            assert_eq!(e["scheme"], "https");
            let tls = &e["tlsConfig"];
            assert!(
                names
                    .dns_names()
                    .contains(&tls["serverName"].as_str().unwrap().into())
            );
            assert_eq!(tls["ca"]["secret"]["name"], names.secret.as_str());
            let bundle = kite_webhook::certs::generate(&names, &[]).unwrap();
            let secret = bundle.secret(&names);
            let key = tls["ca"]["secret"]["key"].as_str().unwrap();
            assert!(
                secret.data.unwrap().contains_key(key),
                "the Secret has no {key}"
            );
        } else {
            assert_eq!(svc.metadata.name.as_deref(), Some("kite-agent"));
            assert!(e.get("scheme").is_none_or(|s| s == "http"));
        }
    }
    // The PrometheusRule carries the rule file's groups, which promtool checks and tests.
    let rule = r.all("PrometheusRule")[0];
    let file: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy_dir().join("prometheus/kite-alerts.yaml")).unwrap(),
    )
    .unwrap();
    let file = serde_json::to_value(file).unwrap();
    assert_eq!(rule["spec"]["groups"], file["groups"]);
    let dir = deploy_dir().join("prometheus");
    promtool(&["check", "rules", "kite-alerts.yaml"], &dir);
    promtool(&["test", "rules", "kite-alerts.test.yaml"], &dir);
}

/// The plain scrape example for a Prometheus without the Operator: promtool accepts it (with
/// its Kubernetes discovery replaced by a static target, since Debian's Prometheus is built
/// without Kubernetes discovery), it loads the alert rules, and its relabelling keeps the
/// agent pods' `metrics` port and the webhook Service's `https` one.
#[test]
fn the_plain_scrape_config_is_valid_and_keeps_kites_ports() {
    let dir = deploy_dir().join("prometheus");
    let text = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    let r = render();
    let ds: DaemonSet = r.one("DaemonSet", "kite-agent");
    let template = ds.spec.unwrap().template;
    let labels = template.metadata.unwrap().labels.unwrap();
    let c = container(template.spec.as_ref().unwrap(), "kite-agent").clone();
    let mut seen = BTreeSet::new();
    for job in jobs.iter_mut() {
        let name = job["job_name"].as_str().unwrap().to_string();
        let sd = job
            .as_mapping_mut()
            .unwrap()
            .remove("kubernetes_sd_configs")
            .expect("Kubernetes discovery");
        let sd = serde_json::to_value(sd).unwrap();
        assert_eq!(sd[0]["namespaces"]["names"][0], NAMESPACE);
        let keep = serde_json::to_value(&job["relabel_configs"]).unwrap();
        let keep = keep
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["action"] == "keep")
            .unwrap()
            .clone();
        match name.as_str() {
            "kite-agent" => {
                let selector = sd[0]["selectors"][0]["label"].as_str().unwrap();
                let (k, v) = selector.split_once('=').unwrap();
                assert_eq!(labels.get(k).map(String::as_str), Some(v));
                port(&c, keep["regex"].as_str().unwrap());
            }
            "kite-webhook" => {
                assert_eq!(keep["regex"], "kite-webhook;https");
                let tls = serde_json::to_value(&job["tls_config"]).unwrap();
                assert!(
                    Names::default()
                        .dns_names()
                        .contains(&tls["server_name"].as_str().unwrap().into())
                );
            }
            other => panic!("unexpected job {other}"),
        }
        seen.insert(name);
        job.as_mapping_mut().unwrap().insert(
            "static_configs".into(),
            serde_yaml::from_str("[{targets: ['127.0.0.1:9']}]").unwrap(),
        );
    }
    assert_eq!(seen.len(), 2);
    let tmp = kite_testkit::TempDir::new("kite-scrape");
    let tmp = tmp.path();
    std::fs::copy(dir.join("kite-alerts.yaml"), tmp.join("kite-alerts.yaml")).unwrap();
    std::fs::write(
        tmp.join("prometheus.yml"),
        serde_yaml::to_string(&config).unwrap(),
    )
    .unwrap();
    promtool(&["check", "config", "prometheus.yml"], tmp);
}
