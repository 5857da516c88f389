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
    for cap in ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"] {
        assert!(caps.contains(cap), "{caps:?}");
    }
    assert_ne!(sc.privileged, Some(true));

    // Ports, probes, Prometheus annotations and the headless Service agree with the agent.
    let grpc = port(c, "grpc");
    let metrics = port(c, "metrics");
    assert_eq!(i32::from(config.grpc_addr.port()), grpc);
    assert_eq!(i32::from(config.metrics_addr.port()), metrics);
    assert!(config.grpc_addr.ip().is_unspecified() && config.metrics_addr.ip().is_unspecified());
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p.clone().unwrap().http_get.unwrap();
        (g.path.unwrap(), g.port)
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        probe(&c.liveness_probe),
        ("/healthz".into(), IntOrString::String("metrics".into()))
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
    assert_eq!(
        targets,
        [
            IntOrString::String("grpc".into()),
            IntOrString::String("metrics".into())
        ]
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
