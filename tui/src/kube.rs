//! Agents in a Kubernetes cluster: find the agent pods (`--kube`) and reach each one through
//! a port-forward of the API server, as `kubectl port-forward` does, without `kubectl`.
//!
//! Each node's agent is one [`PodTarget`]. Every new gRPC connection to it looks up the
//! node's current agent pod (a DaemonSet replaces pods on upgrades) and opens a fresh
//! port-forward stream, which tonic uses as its connection.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use tokio::io::DuplexStream;

use crate::Error;

/// Namespace of the agents by default.
pub const DEFAULT_NAMESPACE: &str = "kite-system";
/// Labels of the agent pods by default.
pub const DEFAULT_SELECTOR: &str = "app.kubernetes.io/name=kite-agent";

/// The Kubernetes API access of `--kube`, as (API group, resource, verbs), in the agents'
/// namespace: list the agent pods, port-forward to them. A port-forward is a WebSocket upgrade,
/// which API servers before 1.35 authorize as `get` and later ones also as `create`, so both.
/// deploy/'s `kite-viewer` Role grants exactly this (checked by webhook/tests/manifests.rs).
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["list"]),
    ("", "pods/portforward", &["get", "create"]),
];

/// An agent pod worth talking to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPod {
    /// Pod name.
    pub name: String,
    /// Node it runs on (the pod name when the node is not known yet).
    pub node: String,
}

/// The agents to show among `pods`: Running and not being deleted, one per node (the most
/// recently started), sorted by node.
pub fn choose(pods: &[Pod]) -> Vec<AgentPod> {
    let mut best: std::collections::BTreeMap<String, (String, &Pod)> = Default::default();
    for p in pods {
        let running = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Running");
        if !running || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(name) = p.metadata.name.clone() else {
            continue;
        };
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| name.clone());
        let started = |p: &Pod| p.status.as_ref().and_then(|s| s.start_time.clone());
        match best.get(&node) {
            Some((_, other)) if started(other) >= started(p) => {}
            _ => {
                best.insert(node, (name, p));
            }
        }
    }
    best.into_iter()
        .map(|(node, (name, _))| AgentPod { name, node })
        .collect()
}

/// Lists the agent pods of `namespace` with labels `selector` (on `node` only, if given) and
/// chooses the ones to talk to.
pub async fn discover(
    client: &Client,
    namespace: &str,
    selector: &str,
    node: Option<&str>,
) -> Result<Vec<AgentPod>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut params = ListParams::default().labels(selector);
    if let Some(n) = node {
        params = params.fields(&format!("spec.nodeName={n}"));
    }
    let pods = api.list(&params).await.map_err(|e| Error::Kube {
        what: format!("listing pods in namespace {namespace:?} with labels {selector:?}"),
        source: Box::new(e),
    })?;
    let chosen = choose(&pods.items);
    if chosen.is_empty() {
        return Err(Error::NoAgentPods {
            namespace: namespace.into(),
            selector: selector.into(),
            node: node.map(str::to_string),
        });
    }
    Ok(chosen)
}

/// The agent of one node, reached through port-forwards.
pub struct PodTarget {
    client: Client,
    namespace: String,
    selector: String,
    /// The node.
    pub node: String,
    /// The agent's gRPC port inside its pod.
    pub port: u16,
    /// What the pod side said about the last failed forward.
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for PodTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTarget")
            .field("namespace", &self.namespace)
            .field("node", &self.node)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl PodTarget {
    /// The agent of `node` among the pods of `namespace` with labels `selector`.
    pub fn new(client: Client, namespace: &str, selector: &str, node: &str, port: u16) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            selector: selector.into(),
            node: node.into(),
            port,
            last_error: Mutex::new(None),
        }
    }

    /// How the UI names it.
    pub fn label(&self) -> String {
        format!("{} (port-forward)", self.node)
    }

    /// A URL for gRPC's `:authority`; the connection itself is the port-forward.
    pub fn authority(&self) -> String {
        format!("http://kite-agent.{}:{}", self.namespace, self.port)
    }

    /// What the pod side said about the last failure, once.
    pub fn take_error(&self) -> Option<String> {
        self.last_error.lock().ok()?.take()
    }

    /// Finds the node's agent pod now and opens one port-forward stream to its gRPC port.
    pub async fn open(self: Arc<Self>) -> Result<DuplexStream, Error> {
        let pod = discover(
            &self.client,
            &self.namespace,
            &self.selector,
            Some(&self.node),
        )
        .await?
        .remove(0);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut pf = api
            .portforward(&pod.name, &[self.port])
            .await
            .map_err(|e| Error::Kube {
                what: format!("port-forward to pod {}", pod.name),
                source: Box::new(e),
            })?;
        let stream = pf
            .take_stream(self.port)
            .ok_or_else(|| Error::PortForward {
                pod: pod.name.clone(),
                reason: "no stream for the port".into(),
            })?;
        // The pod side reports failures (nothing listening) on an error channel; keep the
        // last one for the UI, and let the forwarder end with the connection.
        let errors = pf.take_error(self.port);
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(errors) = errors
                && let Some(msg) = errors.await
                && let Ok(mut slot) = me.last_error.lock()
            {
                *slot = Some(format!("pod {}: {}", pod.name, msg.trim()));
            }
            let _ = pf.join().await;
        });
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use kube::client::Body;

    use super::*;

    /// A pod list in the API server's JSON (the shape `kubectl get --raw` prints, managed
    /// fields left out): three nodes during a rolling update of the agent DaemonSet.
    const POD_LIST: &str = include_str!("../testdata/agent-pods.json");
    /// What the API server answers when the namespace's pods may not be listed.
    const FORBIDDEN: &str = include_str!("../testdata/forbidden.json");

    enum Scenario {
        /// The recorded list.
        List,
        /// The list restricted to one node.
        NodeList(&'static str),
        /// 403.
        Forbidden,
    }

    /// Runs `f` against a mock API server that expects one list call and answers it per
    /// `scenario`.
    async fn with_apiserver<T>(scenario: Scenario, f: impl AsyncFnOnce(Client) -> T) -> T {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a list request");
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/kite-system/pods");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(
                q.contains("labelSelector=app.kubernetes.io%2Fname%3Dkite-agent"),
                "{q}"
            );
            match scenario {
                Scenario::List => {
                    assert!(!q.contains("fieldSelector"), "{q}");
                    send.send_response(Response::new(Body::from(POD_LIST.as_bytes().to_vec())));
                }
                Scenario::NodeList(node) => {
                    assert!(
                        q.contains(&format!("fieldSelector=spec.nodeName%3D{node}")),
                        "{q}"
                    );
                    let mut list: serde_json::Value = serde_json::from_str(POD_LIST).unwrap();
                    list["items"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|p| p["spec"]["nodeName"] == node);
                    send.send_response(Response::new(Body::from(
                        serde_json::to_vec(&list).unwrap(),
                    )));
                }
                Scenario::Forbidden => {
                    let mut r = Response::new(Body::from(FORBIDDEN.as_bytes().to_vec()));
                    *r.status_mut() = StatusCode::FORBIDDEN;
                    send.send_response(r);
                }
            }
        });
        let out = tokio::time::timeout(Duration::from_secs(1), f(client))
            .await
            .expect("discovery in time");
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("API calls in time")
            .unwrap();
        out
    }

    #[tokio::test]
    async fn discovery_picks_running_agents_one_per_node() {
        let pods = with_apiserver(Scenario::List, async |c| {
            discover(&c, DEFAULT_NAMESPACE, DEFAULT_SELECTOR, None).await
        })
        .await
        .unwrap();
        // node-a: the old pod is terminating, the new one Running; node-b: Running (a
        // Pending pod of the update is left out); node-c: only a Failed pod.
        assert_eq!(
            pods,
            [
                AgentPod {
                    name: "kite-agent-7wq2n".into(),
                    node: "node-a".into()
                },
                AgentPod {
                    name: "kite-agent-h5x9d".into(),
                    node: "node-b".into()
                },
            ]
        );
    }

    #[tokio::test]
    async fn discovery_on_one_node_and_when_nothing_runs_there() {
        let pods = with_apiserver(Scenario::NodeList("node-b"), async |c| {
            discover(&c, DEFAULT_NAMESPACE, DEFAULT_SELECTOR, Some("node-b")).await
        })
        .await
        .unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].name, "kite-agent-h5x9d");
        let err = with_apiserver(Scenario::NodeList("node-c"), async |c| {
            discover(&c, DEFAULT_NAMESPACE, DEFAULT_SELECTOR, Some("node-c")).await
        })
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no Running kite-agent pod in namespace \"kite-system\" with labels \
             \"app.kubernetes.io/name=kite-agent\" on node node-c"
        );
    }

    #[tokio::test]
    async fn discovery_reports_a_refusal_clearly() {
        let err = with_apiserver(Scenario::Forbidden, async |c| {
            discover(&c, DEFAULT_NAMESPACE, DEFAULT_SELECTOR, None).await
        })
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("listing pods in namespace \"kite-system\"")
                && text.contains("cannot list resource \"pods\""),
            "{text}"
        );
    }

    #[test]
    fn choose_prefers_the_newest_running_pod_of_a_node() {
        let pod = |name: &str, node: &str, phase: &str, start: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "kite-system"},
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": phase, "startTime": start},
            }))
            .unwrap()
        };
        let chosen = choose(&[
            pod("old", "n1", "Running", "2026-01-01T00:00:00Z"),
            pod("new", "n1", "Running", "2026-01-02T00:00:00Z"),
            pod("other", "n2", "Succeeded", "2026-01-02T00:00:00Z"),
        ]);
        assert_eq!(
            chosen,
            [AgentPod {
                name: "new".into(),
                node: "n1".into()
            }]
        );
    }
}
