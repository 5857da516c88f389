//! Agents in a Kubernetes cluster: find the agent pods (`--kube`) and reach each one through
//! a port-forward of the API server, as `kubectl port-forward` does, without `kubectl`.
//!
//! Each node's agent is one [`PodTarget`]. Every new gRPC connection to it looks up the
//! node's current agent pod (a DaemonSet replaces pods on upgrades) and opens a fresh
//! port-forward stream, which tonic uses as its connection. The dashboard follows the
//! DaemonSet ([`follow_cluster`]): a watch on the agent pods starts following a node's
//! agent when its pod appears and stops when the node has none left, at most
//! `--kube-max-forwards` at once.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt as _,
    api::ListParams,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::{io::DuplexStream, sync::mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    Error,
    app::{AgentEvent, Event},
    client::Target,
};

/// Port-forwards `--kube` keeps open at most, by default: each is a stream through the API
/// server; larger clusters are the `--prometheus` path.
pub const DEFAULT_MAX_FORWARDS: usize = 50;

/// Namespace of the agents by default.
pub const DEFAULT_NAMESPACE: &str = "kite-system";
/// Labels of the agent pods by default.
pub const DEFAULT_SELECTOR: &str = "app.kubernetes.io/name=kite-agent";

/// The Kubernetes API access of `--kube`, as (API group, resource, verbs), in the agents'
/// namespace: list the agent pods, port-forward to them. A port-forward is a WebSocket upgrade,
/// which API servers before 1.35 authorize as `get` and later ones also as `create`, so both.
/// deploy/'s `kite-viewer` Role grants exactly this (checked by webhook/tests/manifests.rs).
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["list", "watch"]),
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

/// The agent pods seen by the watch, by name.
#[derive(Debug, Default)]
pub struct PodSet {
    pods: BTreeMap<String, Pod>,
    /// Pods of a (re)list in progress (`Init` … `InitDone`).
    listing: Option<BTreeMap<String, Pod>>,
}

impl PodSet {
    /// Applies a watch event; `true` when the set may have changed (not during a relist).
    pub fn apply(&mut self, event: watcher::Event<Pod>) -> bool {
        match event {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(p) => {
                self.listing.get_or_insert_default().insert(p.name_any(), p);
                false
            }
            watcher::Event::InitDone => {
                self.pods = self.listing.take().unwrap_or_default();
                true
            }
            watcher::Event::Apply(p) => {
                self.pods.insert(p.name_any(), p);
                true
            }
            watcher::Event::Delete(p) => {
                self.pods.remove(&p.name_any());
                true
            }
        }
    }

    /// The agents to follow now ([`choose`]).
    pub fn chosen(&self) -> Vec<AgentPod> {
        let pods: Vec<Pod> = self.pods.values().cloned().collect();
        choose(&pods)
    }
}

/// What `--kube` follows in the dashboard.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Namespace of the agent pods.
    pub namespace: String,
    /// Their labels.
    pub selector: String,
    /// Their gRPC port.
    pub port: u16,
    /// Port-forwards at most (`--kube-max-forwards`).
    pub max_forwards: usize,
    /// Indexes below this one are taken (the `--addr` agents).
    pub first_index: usize,
}

/// The sentence for a cluster with more agent nodes than port-forwards.
pub fn too_many(nodes: usize, max: usize) -> String {
    format!(
        "{nodes} nodes run an agent, more than --kube-max-forwards {max}: showing {max} of them; \
         --prometheus URL shows a cluster of any size"
    )
}

/// Follows the agent DaemonSet until `shutdown`: a watch on its pods; each node with a
/// Running agent pod is followed by a task that `spawn` starts (given its index, its
/// [`Target`] and a token cancelled when the node's agent goes), announced with
/// [`AgentEvent::Joined`], at most `cluster.max_forwards` at once (the others are named in
/// an [`Event::Notice`]); a node without an agent pod any more is [`AgentEvent::Left`].
/// Watch failures are a notice too, and the watch retries with backoff.
pub async fn follow_cluster(
    client: Client,
    cluster: Cluster,
    tx: mpsc::Sender<Event>,
    spawn: impl Fn(usize, Target, CancellationToken),
    shutdown: CancellationToken,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &cluster.namespace);
    let config = watcher::Config::default().labels(&cluster.selector);
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut set = PodSet::default();
    // Node → (index, its task's token).
    let mut followed: BTreeMap<String, (usize, CancellationToken)> = BTreeMap::new();
    let mut free: std::collections::BTreeSet<usize> = Default::default();
    let mut next = cluster.first_index;
    let mut notice: Option<String> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = events.next() => match e {
                Some(e) => e,
                None => break,
            },
        };
        let say = match event {
            Ok(e) => {
                if !set.apply(e) {
                    continue;
                }
                let chosen = set.chosen();
                let nodes: std::collections::BTreeSet<&str> =
                    chosen.iter().map(|p| p.node.as_str()).collect();
                for node in followed
                    .keys()
                    .filter(|n| !nodes.contains(n.as_str()))
                    .cloned()
                    .collect::<Vec<_>>()
                {
                    let (i, token) = followed.remove(&node).expect("followed");
                    token.cancel();
                    free.insert(i);
                    if tx.send(Event::Agent(i, AgentEvent::Left)).await.is_err() {
                        return;
                    }
                }
                for node in nodes {
                    if followed.contains_key(node) || followed.len() >= cluster.max_forwards {
                        continue;
                    }
                    let i = free.pop_first().unwrap_or_else(|| {
                        next += 1;
                        next - 1
                    });
                    let target = Arc::new(PodTarget::new(
                        client.clone(),
                        &cluster.namespace,
                        &cluster.selector,
                        node,
                        cluster.port,
                    ));
                    let label = target.label();
                    if tx
                        .send(Event::Agent(i, AgentEvent::Joined { label }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let token = shutdown.child_token();
                    spawn(i, Target::Pod(target), token.clone());
                    followed.insert(node.to_string(), (i, token));
                }
                (chosen.len() > cluster.max_forwards)
                    .then(|| too_many(chosen.len(), cluster.max_forwards))
            }
            Err(e) => Some(format!(
                "watching the agent pods in namespace {:?}: {} (retrying)",
                cluster.namespace,
                crate::error::one_line(&e)
            )),
        };
        if say != notice {
            notice = say;
            if tx.send(Event::Notice(notice.clone())).await.is_err() {
                break;
            }
        }
    }
    for (_, token) in followed.into_values() {
        token.cancel();
    }
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

    /// An agent pod as the API server sends it in a watch event or a list.
    fn agent_pod(name: &str, node: &str, rv: u32) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": DEFAULT_NAMESPACE, "resourceVersion": rv.to_string(),
                         "labels": {"app.kubernetes.io/name": "kite-agent"}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "startTime": "2026-12-01T00:00:00Z"},
        })
    }

    /// A mock API server for the watch: answers lists from its pods (a field selector picks
    /// a node's), each watch request with the next scripted event (one per response; the
    /// watcher then watches again), and records every port-forward request's pod (then
    /// refuses it: nothing listens behind a mock).
    async fn watch_apiserver(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        mut script: mpsc::UnboundedReceiver<(&'static str, serde_json::Value)>,
        forwards: mpsc::UnboundedSender<String>,
    ) {
        let mut pods: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut rv = 10u32;
        let mut queued: std::collections::VecDeque<(&'static str, serde_json::Value)> =
            Default::default();
        let mut watching: Option<tower_test::mock::SendResponse<Response<Body>>> = None;
        loop {
            // A queued event answers a waiting watch.
            if let Some(send) = watching.take() {
                match queued.pop_front() {
                    Some((kind, pod)) => {
                        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
                        rv = rv.max(
                            pod["metadata"]["resourceVersion"]
                                .as_str()
                                .unwrap()
                                .parse()
                                .unwrap(),
                        );
                        if kind == "DELETED" {
                            pods.remove(&name);
                        } else {
                            pods.insert(name, pod.clone());
                        }
                        let line =
                            serde_json::json!({"type": kind, "object": pod}).to_string() + "\n";
                        send.send_response(Response::new(Body::from(line.into_bytes())));
                    }
                    None => watching = Some(send),
                }
            }
            tokio::select! {
                e = script.recv() => match e {
                    Some(e) => queued.push_back(e),
                    None => return,
                },
                r = handle.next_request() => {
                    let Some((req, send)) = r else { return };
                    let path = req.uri().path().to_string();
                    let q = req.uri().query().unwrap_or_default().to_string();
                    if let Some(pod) = path
                        .strip_prefix("/api/v1/namespaces/kite-system/pods/")
                        .and_then(|p| p.strip_suffix("/portforward"))
                    {
                        let _ = forwards.send(pod.to_string());
                        let mut r = Response::new(Body::from(FORBIDDEN.as_bytes().to_vec()));
                        *r.status_mut() = StatusCode::FORBIDDEN;
                        send.send_response(r);
                    } else if q.contains("watch=true") {
                        watching = Some(send);
                    } else {
                        assert_eq!(path, "/api/v1/namespaces/kite-system/pods", "{q}");
                        let node = q
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("fieldSelector=spec.nodeName%3D"));
                        let items: Vec<_> = pods
                            .values()
                            .filter(|p| node.is_none_or(|n| p["spec"]["nodeName"] == n))
                            .cloned()
                            .collect();
                        let list = serde_json::json!({"apiVersion": "v1", "kind": "PodList",
                            "metadata": {"resourceVersion": rv.to_string()}, "items": items});
                        send.send_response(Response::new(Body::from(serde_json::to_vec(&list).unwrap())));
                    }
                }
            }
        }
    }

    /// The next `Joined`/`Left`/notice among the UI's events (within 2 s).
    async fn membership(rx: &mut mpsc::Receiver<Event>) -> Event {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("a membership event in time")
                .expect("the channel is open");
            match &e {
                Event::Agent(_, AgentEvent::Joined { .. } | AgentEvent::Left)
                | Event::Notice(_) => {
                    return e;
                }
                _ => {}
            }
        }
    }

    /// The next pod a port-forward was asked for (within 2 s).
    async fn forwarded(f: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(2), f.recv())
            .await
            .expect("a port-forward in time")
            .unwrap()
    }

    #[tokio::test]
    async fn the_watch_connects_a_pod_that_appears_and_disconnects_one_removed() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (script, script_rx) = mpsc::unbounded_channel();
        let (forwards_tx, mut forwards) = mpsc::unbounded_channel();
        let server = tokio::spawn(watch_apiserver(handle, script_rx, forwards_tx));
        let (tx, mut rx) = mpsc::channel(256);
        let shutdown = CancellationToken::new();
        let cluster = Cluster {
            namespace: DEFAULT_NAMESPACE.into(),
            selector: DEFAULT_SELECTOR.into(),
            port: 7777,
            max_forwards: 2,
            first_index: 1,
        };
        // The dashboard's own agent tasks, as `tui::run` spawns them.
        let (focus, histograms) = (
            tokio::sync::watch::channel(None).1,
            tokio::sync::watch::channel(false).1,
        );
        let events = tx.clone();
        let spawn = move |i: usize, t: Target, token: CancellationToken| {
            tokio::spawn(crate::client::follow(
                i,
                t,
                events.clone(),
                focus.clone(),
                histograms.clone(),
                token,
            ));
        };
        tokio::spawn(follow_cluster(client, cluster, tx, spawn, shutdown.clone()));

        // The first list is empty; then node-a's agent pod is added to the watch.
        script
            .send(("ADDED", agent_pod("kite-agent-aaaaa", "node-a", 11)))
            .unwrap();
        assert_eq!(
            membership(&mut rx).await,
            Event::Agent(
                1,
                AgentEvent::Joined {
                    label: "node-a (port-forward)".into()
                }
            )
        );
        // ... and connected: its task asks for a port-forward to that pod.
        assert_eq!(forwarded(&mut forwards).await, "kite-agent-aaaaa");

        // A second node, then a third beyond --kube-max-forwards 2: a sentence, no stream.
        script
            .send(("ADDED", agent_pod("kite-agent-bbbbb", "node-b", 12)))
            .unwrap();
        assert_eq!(
            membership(&mut rx).await,
            Event::Agent(
                2,
                AgentEvent::Joined {
                    label: "node-b (port-forward)".into()
                }
            )
        );
        script
            .send(("ADDED", agent_pod("kite-agent-ccccc", "node-c", 13)))
            .unwrap();
        assert_eq!(
            membership(&mut rx).await,
            Event::Notice(Some(too_many(3, 2)))
        );
        assert_eq!(
            too_many(3, 2),
            "3 nodes run an agent, more than --kube-max-forwards 2: showing 2 of them; \
             --prometheus URL shows a cluster of any size"
        );

        // node-a's pod is removed: its agent leaves, its task stops asking, and node-c,
        // now within the bound, joins in the freed slot.
        script
            .send(("DELETED", agent_pod("kite-agent-aaaaa", "node-a", 14)))
            .unwrap();
        assert_eq!(membership(&mut rx).await, Event::Agent(1, AgentEvent::Left));
        assert_eq!(
            membership(&mut rx).await,
            Event::Agent(
                1,
                AgentEvent::Joined {
                    label: "node-c (port-forward)".into()
                }
            )
        );
        assert_eq!(membership(&mut rx).await, Event::Notice(None));
        // Backoff retries for 1.5 s: only the pods still followed are asked for.
        while forwards.try_recv().is_ok() {}
        let mut seen = std::collections::BTreeSet::new();
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Some(p)) = tokio::time::timeout_at(until, forwards.recv()).await {
            seen.insert(p);
        }
        assert!(!seen.contains("kite-agent-aaaaa"), "{seen:?}");
        assert!(seen.contains("kite-agent-ccccc"), "{seen:?}");
        shutdown.cancel();
        drop(script);
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
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
