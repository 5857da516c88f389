//! Deciding whether a pod gets Kite's init container, and the JSON patch that adds it.
//!
//! Opt-in is either per pod (label `kite.io/monitor: "true"`, served at `/mutate`) or per
//! namespace (namespace label `kite.io/monitor: "true"`, served at `/mutate/namespace`; the API
//! server only sends pods of such namespaces there, through the webhook's namespaceSelector).
//! The annotation `kite.io/inject: "false"` opts a pod out either way. `kube-system` and Kite's
//! own namespace are never touched, whatever the webhook configuration says.
//!
//! The webhook never blocks a pod: anything it cannot handle (another kind, an unreadable pod)
//! is allowed unchanged with a warning saying why, which `kubectl` shows to the user. Only a body
//! that is not an `AdmissionReview` at all gets an HTTP 400 (there is no uid to answer to).
//!
//! A pod's own route patterns (annotation `kite.io/routes`, see [`kite_init::routes`]) reach
//! the init container through the downward API (`KITE_ROUTE_PATTERNS`), and from it the agent
//! in the hello. The webhook checks them as the agent will: malformed ones do not stop the
//! pod either — it is injected, and the answer's warning (and audit annotation `routes`) says
//! which pattern and why; kite-init then sends none and logs the same reason.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, HostPathVolumeSource, ObjectFieldSelector, Pod,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use serde_json::{Value, json};

/// Pod or namespace label that opts in.
pub const MONITOR_LABEL: &str = "kite.io/monitor";
/// Pod annotation that opts out (`"false"`).
pub const INJECT_ANNOTATION: &str = "kite.io/inject";
/// Annotation the webhook sets on the pods it changed.
pub const INJECTED_ANNOTATION: &str = "kite.io/injected";
/// Pod annotation holding the pod's own route patterns (white-space separated).
pub use kite_init::routes::ROUTES_ANNOTATION;
/// The init container's variable holding the pod's route patterns (the downward API's copy of
/// [`ROUTES_ANNOTATION`]).
pub const ROUTES_ENV: &str = "KITE_ROUTE_PATTERNS";
/// Name of the injected init container; a pod that has one is left alone.
pub const INIT_CONTAINER: &str = "kite-init";
/// Preferred name of the socket volume.
pub const SOCKET_VOLUME: &str = "kite-socket";

/// Where the decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/mutate`: only pods labelled `kite.io/monitor: "true"`.
    Pod,
    /// `/mutate/namespace`: every pod (the namespace opted in).
    Namespace,
}

/// What to inject and where not to.
#[derive(Clone, Debug)]
pub struct Injector {
    /// Image of the init container.
    pub image: String,
    /// `imagePullPolicy` of the init container.
    pub pull_policy: String,
    /// Command of the init container.
    pub command: Vec<String>,
    /// Directory of the agent's socket, on the host and in the init container.
    pub socket_dir: String,
    /// File name of the socket in `socket_dir`.
    pub socket_name: String,
    /// How long the init container waits for the agent.
    pub timeout: Duration,
    /// Namespaces never touched (kube-system and Kite's own).
    pub excluded_namespaces: BTreeSet<String>,
}

impl Default for Injector {
    fn default() -> Self {
        Self {
            image: "kite:0.1.0".into(),
            pull_policy: "IfNotPresent".into(),
            command: vec!["kite-init".into()],
            socket_dir: "/var/run/kite".into(),
            socket_name: "kite.sock".into(),
            timeout: Duration::from_secs(10),
            excluded_namespaces: ["kube-system", "kite-system"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

/// The outcome for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Add the init container with this patch; the warnings go to the user (`kubectl`).
    Inject(json_patch::Patch, Vec<String>),
    /// Leave the pod as it is, for this reason.
    Skip(&'static str),
}

/// An HTTP answer to a review: status code and JSON body.
#[derive(Debug)]
pub struct Answer {
    /// 200 for a review answered, 400 for a body that is not one.
    pub status: u16,
    /// An `AdmissionReview` carrying the response.
    pub body: AdmissionReview<DynamicObject>,
}

impl Answer {
    /// The body as the API server expects it. kube serializes the patch bytes as a JSON array
    /// of numbers; Kubernetes documents (and Go writes) `[]byte` as base64, four times
    /// shorter, so that is what goes on the wire.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = to_value(&self.body);
        if let Some(patch) = self.body.response.as_ref().and_then(|r| r.patch.as_ref()) {
            use base64::Engine as _;
            v["response"]["patch"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

impl Injector {
    /// Answers one `AdmissionReview` body.
    pub fn review(&self, body: &[u8], scope: Scope) -> Answer {
        if let Some(a) = self.review_pod(body, scope) {
            return a;
        }
        let bad = |reason: String| Answer {
            status: 400,
            body: AdmissionResponse::invalid(reason).into_review(),
        };
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return bad(format!("the body is not an AdmissionReview: {e}")),
        };
        if review.types.api_version != "admission.k8s.io/v1"
            || review.types.kind != "AdmissionReview"
        {
            return bad(format!(
                "expected an admission.k8s.io/v1 AdmissionReview, got {} {}",
                review.types.api_version, review.types.kind
            ));
        }
        let req: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(_) => return bad("the AdmissionReview has no request".into()),
        };
        let response = AdmissionResponse::from(&req);
        let decision = self.decide(&req, scope);
        respond(
            response,
            decision,
            req.namespace.as_deref(),
            &pod_name(&req),
        )
    }

    /// A review of a Pod, parsed straight into the typed Pod: one tree of the object instead
    /// of a JSON tree, its copy and the typed Pod (a review costs a few times its size, not
    /// tens of times). `None` when the body is not a Pod review (the generic path answers).
    fn review_pod(&self, body: &[u8], scope: Scope) -> Option<Answer> {
        #[derive(serde::Deserialize)]
        struct Peek {
            request: Option<PeekRequest>,
        }
        #[derive(serde::Deserialize)]
        struct PeekRequest {
            kind: PeekKind,
        }
        #[derive(serde::Deserialize)]
        struct PeekKind {
            #[serde(default)]
            group: String,
            kind: String,
        }
        let peek: Peek = serde_json::from_slice(body).ok()?;
        let kind = peek.request?.kind;
        if kind.kind != "Pod" || !kind.group.is_empty() {
            return None;
        }
        let review: AdmissionReview<Pod> = serde_json::from_slice(body).ok()?;
        if review.types.api_version != "admission.k8s.io/v1"
            || review.types.kind != "AdmissionReview"
        {
            return None;
        }
        let req: AdmissionRequest<Pod> = review.try_into().ok()?;
        let response = AdmissionResponse::from(&req);
        let decision = if !matches!(req.operation, Operation::Create) {
            Ok(Decision::Skip("not a create"))
        } else {
            match req.object.as_ref() {
                None => Err("the request has no object".to_string()),
                Some(pod) => {
                    let namespace = req
                        .namespace
                        .as_deref()
                        .or(pod.metadata.namespace.as_deref())
                        .unwrap_or("default");
                    Ok(self.decide_pod(pod, namespace, scope))
                }
            }
        };
        let name = req
            .object
            .as_ref()
            .and_then(|p| {
                p.metadata
                    .name
                    .clone()
                    .or_else(|| p.metadata.generate_name.clone())
            })
            .unwrap_or_else(|| req.name.clone());
        Some(respond(response, decision, req.namespace.as_deref(), &name))
    }
}

/// The answer for a decision.
fn respond(
    response: AdmissionResponse,
    decision: Result<Decision, String>,
    namespace: Option<&str>,
    pod: &str,
) -> Answer {
    {
        let response = match decision {
            Ok(Decision::Inject(patch, warnings)) => {
                tracing::info!(namespace = ?namespace, pod = %pod, "injecting kite-init");
                match response.clone().with_patch(patch) {
                    Ok(mut r) => {
                        for w in &warnings {
                            tracing::warn!(namespace = ?namespace, pod = %pod, "{w}");
                            r.audit_annotations.insert("routes".into(), w.clone());
                        }
                        if !warnings.is_empty() {
                            r.warnings = Some(
                                warnings
                                    .iter()
                                    .map(|w| format!("kite-webhook: {w}"))
                                    .collect(),
                            );
                        }
                        r
                    }
                    Err(e) => warn(response, format!("cannot serialize the patch: {e}")),
                }
            }
            Ok(Decision::Skip(why)) => {
                tracing::debug!(namespace = ?namespace, pod = %pod, "not injecting: {why}");
                let mut r = response;
                r.audit_annotations.insert("decision".into(), why.into());
                r
            }
            Err(why) => {
                tracing::warn!(namespace = ?namespace, pod = %pod, "left unchanged: {why}");
                warn(response, why)
            }
        };
        Answer {
            status: 200,
            body: response.into_review(),
        }
    }
}

impl Injector {
    /// Whether and how to change the pod of `req`; `Err` for a request it cannot handle.
    pub fn decide(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        scope: Scope,
    ) -> Result<Decision, String> {
        if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
            return Err(format!(
                "kite-webhook only mutates Pods, not {}/{} {}",
                req.kind.group, req.kind.version, req.kind.kind
            ));
        }
        if !matches!(req.operation, Operation::Create) {
            return Ok(Decision::Skip("not a create"));
        }
        let object = req
            .object
            .as_ref()
            .ok_or_else(|| "the request has no object".to_string())?;
        let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
        let pod: Pod =
            serde_json::from_value(value).map_err(|e| format!("the object is not a Pod: {e}"))?;
        let namespace = req
            .namespace
            .as_deref()
            .or(pod.metadata.namespace.as_deref())
            .unwrap_or("default");
        Ok(self.decide_pod(&pod, namespace, scope))
    }

    /// The decision for a pod being created in `namespace`.
    pub fn decide_pod(&self, pod: &Pod, namespace: &str, scope: Scope) -> Decision {
        if self.excluded_namespaces.contains(namespace) {
            return Decision::Skip("namespace excluded");
        }
        let meta = &pod.metadata;
        let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k));
        if annotation(INJECT_ANNOTATION).is_some_and(|v| v == "false") {
            return Decision::Skip("opted out");
        }
        let labelled = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(MONITOR_LABEL))
            .is_some_and(|v| v == "true");
        if scope == Scope::Pod && !labelled {
            return Decision::Skip("not opted in");
        }
        let Some(spec) = &pod.spec else {
            return Decision::Skip("no spec");
        };
        let has_init = spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == INIT_CONTAINER);
        if has_init || annotation(INJECTED_ANNOTATION).is_some() {
            return Decision::Skip("already injected");
        }
        // Another container of that name would make the pod invalid.
        let taken = spec.containers.iter().any(|c| c.name == INIT_CONTAINER)
            || spec
                .ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == INIT_CONTAINER);
        if taken {
            return Decision::Skip("a container is already named kite-init");
        }
        // Kite measures Linux cgroups; and the API server refuses seccomp and runAsUser
        // settings on Windows pods.
        if spec.os.as_ref().is_some_and(|os| os.name != "linux") {
            return Decision::Skip("not a Linux pod");
        }
        // The pod's route patterns, checked as the agent will: malformed, the pod is still
        // injected (measured with inferred routes) and the user is told why.
        let warnings = match annotation(ROUTES_ANNOTATION) {
            Some(v) => match kite_init::routes::parse_annotation(v) {
                Ok(_) => Vec::new(),
                Err(e) => vec![format!(
                    "{e}; no pattern of the pod applies, its routes are inferred"
                )],
            },
            None => Vec::new(),
        };
        Decision::Inject(self.patch(pod), warnings)
    }

    /// The patch adding the init container first, the socket volume and the marker annotation.
    fn patch(&self, pod: &Pod) -> json_patch::Patch {
        let spec = pod.spec.as_ref();
        let volumes: BTreeSet<&str> = spec
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        let volume_name = std::iter::once(SOCKET_VOLUME.to_string())
            .chain((1..).map(|i| format!("{SOCKET_VOLUME}-{i}")))
            .find(|n| !volumes.contains(n.as_str()))
            .unwrap_or_default();
        let mut container = self.container(&volume_name);
        let has_routes = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ROUTES_ANNOTATION));
        if has_routes && let Some(env) = container.env.as_mut() {
            // Through the downward API, as the pod's names: the annotation itself, whatever
            // is done to the pod's spec.
            env.push(EnvVar {
                name: ROUTES_ENV.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{ROUTES_ANNOTATION}']"),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
            });
        }
        let container = to_value(&container);
        let volume = to_value(&Volume {
            name: volume_name,
            host_path: Some(HostPathVolumeSource {
                path: self.socket_dir.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Volume::default()
        });
        let mut ops = Vec::new();
        // Init containers run in order: first, so the pod is measured before the others run.
        if spec.and_then(|s| s.init_containers.as_ref()).is_some() {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}));
        }
        if spec.and_then(|s| s.volumes.as_ref()).is_some() {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}));
        }
        let key = INJECTED_ANNOTATION.replace('~', "~0").replace('/', "~1");
        if pod.metadata.annotations.is_some() {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{key}"), "value": "true"}));
        } else {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED_ANNOTATION: "true"}}));
        }
        serde_json::from_value(Value::Array(ops)).unwrap_or_else(|_| json_patch::Patch(Vec::new()))
    }

    /// The init container.
    pub fn container(&self, volume: &str) -> Container {
        let field = |path: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        };
        let env = |name: &str, value: String| EnvVar {
            name: name.into(),
            value: Some(value),
            value_from: None,
        };
        let from = |name: &str, path: &str| EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(field(path)),
        };
        let q = |s: &str| Quantity(s.into());
        Container {
            name: INIT_CONTAINER.into(),
            image: Some(self.image.clone()),
            image_pull_policy: Some(self.pull_policy.clone()),
            command: Some(self.command.clone()),
            env: Some(vec![
                from("POD_NAME", "metadata.name"),
                from("POD_NAMESPACE", "metadata.namespace"),
                from("POD_UID", "metadata.uid"),
                env(
                    "KITE_SOCKET",
                    format!(
                        "{}/{}",
                        self.socket_dir.trim_end_matches('/'),
                        self.socket_name
                    ),
                ),
                env(
                    "KITE_INIT_TIMEOUT",
                    humantime::format_duration(self.timeout).to_string(),
                ),
            ]),
            // Read-only is enough: connect(2) on a socket file needs no writable mount.
            volume_mounts: Some(vec![VolumeMount {
                name: volume.into(),
                mount_path: self.socket_dir.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
            resources: Some(ResourceRequirements {
                requests: Some([("cpu".into(), q("5m")), ("memory".into(), q("8Mi"))].into()),
                limits: Some([("cpu".into(), q("100m")), ("memory".into(), q("32Mi"))].into()),
                ..ResourceRequirements::default()
            }),
            // Passes the "restricted" Pod Security Standard, except that the pod now has a
            // hostPath volume (see deploy/README.md).
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                run_as_user: Some(65534),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..SecurityContext::default()
            }),
            ..Container::default()
        }
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Allowed unchanged, with `why` shown to the user.
fn warn(mut r: AdmissionResponse, why: String) -> AdmissionResponse {
    r.result.message = why.clone();
    r.warnings = Some(vec![format!("kite-webhook: {why}")]);
    r
}

fn pod_name(req: &AdmissionRequest<DynamicObject>) -> String {
    let meta = req.object.as_ref().map(|o| &o.metadata);
    meta.and_then(|m| m.name.clone().or_else(|| m.generate_name.clone()))
        .unwrap_or_else(|| req.name.clone())
}

#[cfg(test)]
mod tests;
