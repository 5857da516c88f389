//! Pod metadata from the Kubernetes API: labels and owning workload of the pods on this node,
//! followed with a watch (field selector `spec.nodeName=<node>`, so the agent never sees other
//! nodes' pods). Without a cluster, or when the API is unreachable, everything else keeps
//! working: the first failure is logged as a warning, repeats only at debug level, and the
//! watcher retries with backoff.

use std::collections::HashSet;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::state::{Shared, Workload};

/// Starts following the pods of `node` with the default client (in-cluster or kubeconfig).
pub fn spawn(shared: Shared, node: String, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = Client::try_default() => c,
        };
        match client {
            Ok(client) => follow(client, shared, node, shutdown).await,
            Err(e) => {
                warn!("Kubernetes metadata unavailable (pods keep their enrolled names): {e}")
            }
        }
    })
}

/// The workload a pod belongs to, from its controller owner. A ReplicaSet made by a
/// Deployment is named `<deployment>-<pod-template-hash>`: the Deployment is reported.
pub fn workload_of(pod: &Pod) -> Option<Workload> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone()?;
    let labels = meta.labels.clone().unwrap_or_default();
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let (kind, name) = match owner {
        Some(o) if o.kind == "ReplicaSet" => match labels.get("pod-template-hash") {
            Some(hash) => match o.name.strip_suffix(&format!("-{hash}")) {
                Some(deploy) => ("Deployment".to_string(), deploy.to_string()),
                None => (o.kind.clone(), o.name.clone()),
            },
            None => (o.kind.clone(), o.name.clone()),
        },
        Some(o) => (o.kind.clone(), o.name.clone()),
        None => (String::new(), String::new()),
    };
    Some(Workload {
        namespace: meta.namespace.clone().unwrap_or_default(),
        pod: meta.name.clone().unwrap_or_default(),
        uid,
        kind,
        name,
        labels,
        verified: true,
    })
}

/// Applies one watcher event to the pod table. A re-list (`Init` … `InitDone`) replaces the
/// table: pods not listed again are dropped.
pub fn apply(shared: &Shared, relist: &mut Option<HashSet<String>>, ev: watcher::Event<Pod>) {
    match ev {
        watcher::Event::Init => *relist = Some(HashSet::new()),
        watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
            if let Some(w) = workload_of(&pod) {
                if let Some(seen) = relist.as_mut() {
                    seen.insert(w.uid.clone());
                }
                shared.write().pods.insert(w.uid.clone(), w);
            }
        }
        watcher::Event::InitDone => {
            if let Some(seen) = relist.take() {
                shared.write().pods.retain(|uid, _| seen.contains(uid));
            }
        }
        watcher::Event::Delete(pod) => {
            if let Some(uid) = pod.metadata.uid {
                shared.write().pods.remove(&uid);
            }
        }
    }
}

/// The Kubernetes API access of this module, as (API group, resource, verbs): the pod watcher
/// lists and watches pods (of its own node). deploy/'s ClusterRole grants exactly this, which
/// the manifest tests check; `follows_list_and_watch_events` shows the requests are these.
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[("", "pods", &["list", "watch"])];

/// Follows the pods of `node` until `shutdown`.
pub async fn follow(client: Client, shared: Shared, node: String, shutdown: CancellationToken) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = Box::pin(watcher(api, config).default_backoff());
    shared.write().kubernetes = true;
    let mut relist = None;
    let mut failing = false;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = stream.next() => ev,
        };
        match ev {
            Some(Ok(ev)) => {
                // The watcher yields `Init` before every (re)list attempt, also when that
                // attempt then fails; only pods arriving mean the API server answers again.
                let data = !matches!(ev, watcher::Event::Init);
                if failing && data {
                    info!("Kubernetes pod watch recovered");
                    failing = false;
                }
                apply(&shared, &mut relist, ev);
            }
            Some(Err(e)) if failing => debug!("Kubernetes pod watch: {e}"),
            Some(Err(e)) => {
                warn!("Kubernetes pod watch failing, retrying with backoff: {e}");
                failing = true;
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::{daemon::state::State, ebpf::Options};

    fn shared() -> Shared {
        Shared::new(State::new(
            "node-1".into(),
            Duration::from_secs(1),
            4,
            Options::default(),
        ))
    }

    fn pod(
        name: &str,
        uid: &str,
        owner: Option<(&str, &str)>,
        hash: Option<&str>,
    ) -> serde_json::Value {
        let mut labels = serde_json::json!({"app": "shop"});
        if let Some(h) = hash {
            labels["pod-template-hash"] = h.into();
        }
        let mut p = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name, "namespace": "shop", "uid": uid, "resourceVersion": "1",
                "labels": labels,
            },
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "nginx"}]},
            "status": {"phase": "Running"},
        });
        if let Some((kind, oname)) = owner {
            p["metadata"]["ownerReferences"] = serde_json::json!([{
                "apiVersion": "apps/v1", "kind": kind, "name": oname, "uid": "owner-uid",
                "controller": true,
            }]);
        }
        p
    }

    const UID_A: &str = "0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b";
    const UID_B: &str = "11111111-2222-4333-8444-555555555555";

    #[test]
    fn owners_become_workloads() {
        let p: Pod = serde_json::from_value(pod(
            "web-7d9f-x2",
            UID_A,
            Some(("ReplicaSet", "web-7d9f")),
            Some("7d9f"),
        ))
        .unwrap();
        let w = workload_of(&p).unwrap();
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Deployment", "web"));
        assert_eq!(w.labels.get("app").map(String::as_str), Some("shop"));
        let p: Pod =
            serde_json::from_value(pod("db-0", UID_B, Some(("StatefulSet", "db")), None)).unwrap();
        let w = workload_of(&p).unwrap();
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), w.pod.as_str()),
            ("StatefulSet", "db", "db-0")
        );
        let p: Pod = serde_json::from_value(pod("bare", UID_B, None, None)).unwrap();
        assert_eq!(workload_of(&p).unwrap().kind, "");
    }

    /// The watcher against a mock API server answering with recorded responses: a list of two
    /// pods on this node, then a watch with an update and a delete.
    #[tokio::test]
    async fn follows_list_and_watch_events() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let shared = shared();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(follow(
            client,
            shared.clone(),
            "node-1".into(),
            shutdown.clone(),
        ));

        let server = async {
            // 1. The initial list, restricted to this node.
            let (req, send) = handle.next_request().await.expect("list request");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert_eq!(req.uri().path(), "/api/v1/pods");
            assert!(q.contains("fieldSelector=spec.nodeName%3Dnode-1"), "{q}");
            assert!(!q.contains("watch=true"), "{q}");
            let list = serde_json::json!({
                "apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": "10"},
                "items": [
                    pod("web-7d9f-x2", UID_A, Some(("ReplicaSet", "web-7d9f")), Some("7d9f")),
                    pod("db-0", UID_B, Some(("StatefulSet", "db")), None),
                ],
            });
            send.send_response(Response::new(Body::from(
                serde_json::to_vec(&list).unwrap(),
            )));

            // 2. The watch: pod A relabelled, pod B deleted.
            let (req, send) = handle.next_request().await.expect("watch request");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(
                q.contains("watch=true") && q.contains("fieldSelector=spec.nodeName%3Dnode-1"),
                "{q}"
            );
            let mut a = pod(
                "web-7d9f-x2",
                UID_A,
                Some(("ReplicaSet", "web-7d9f")),
                Some("7d9f"),
            );
            a["metadata"]["labels"]["version"] = "v2".into();
            a["metadata"]["resourceVersion"] = "11".into();
            let mut b = pod("db-0", UID_B, Some(("StatefulSet", "db")), None);
            b["metadata"]["resourceVersion"] = "12".into();
            let mut body = Vec::new();
            for ev in [
                serde_json::json!({"type": "MODIFIED", "object": a}),
                serde_json::json!({"type": "DELETED", "object": b}),
            ] {
                body.extend(serde_json::to_vec(&ev).unwrap());
                body.push(b'\n');
            }
            send.send_response(Response::new(Body::from(body)));
        };
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("API calls in time");

        // Wait until both events are applied.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            {
                let st = shared.read();
                let a_ok = st
                    .pods
                    .get(UID_A)
                    .is_some_and(|w| w.labels.get("version").map(String::as_str) == Some("v2"));
                if a_ok && !st.pods.contains_key(UID_B) {
                    assert!(st.kubernetes);
                    assert_eq!(st.pods[UID_A].name, "web");
                    break;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "events not applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }

    #[test]
    fn relist_drops_pods_that_are_gone() {
        let shared = shared();
        let mut relist = None;
        let a: Pod = serde_json::from_value(pod("a", UID_A, None, None)).unwrap();
        let b: Pod = serde_json::from_value(pod("b", UID_B, None, None)).unwrap();
        apply(&shared, &mut relist, watcher::Event::Apply(a.clone()));
        apply(&shared, &mut relist, watcher::Event::Apply(b));
        assert_eq!(shared.read().pods.len(), 2);
        apply(&shared, &mut relist, watcher::Event::Init);
        apply(&shared, &mut relist, watcher::Event::InitApply(a));
        apply(&shared, &mut relist, watcher::Event::InitDone);
        let st = shared.read();
        assert_eq!(st.pods.len(), 1);
        assert!(st.pods.contains_key(UID_A));
    }
}
