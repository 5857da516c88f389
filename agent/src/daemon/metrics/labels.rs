//! The OpenTelemetry attributes of a series.

use kite_common::maps::Method;

use super::Labels;
use crate::daemon::state::State;

pub(super) fn series_labels(
    st: &State,
    ep: &crate::stats::EndpointStats,
    method: Method,
    status: u16,
) -> Labels {
    let (path, workload) = st.describe(ep);
    let mut l: Labels = vec![
        ("http_request_method".into(), method.as_str().into()),
        ("http_response_status_code".into(), status.to_string()),
        ("server_address".into(), ep.id.host()),
        ("server_port".into(), ep.id.port.to_string()),
    ];
    match workload {
        Some(w) => {
            l.push(("k8s_namespace_name".into(), w.namespace));
            l.push(("k8s_pod_name".into(), w.pod));
            if !w.name.is_empty() {
                l.push(("k8s_workload_kind".into(), w.kind));
                l.push(("k8s_workload_name".into(), w.name));
            }
            if !w.verified {
                // Names from the pod's own hello, not the Kubernetes API.
                l.push(("kite_unverified".into(), "true".into()));
            }
        }
        None => l.push((
            "cgroup".into(),
            path.unwrap_or_else(|| ep.id.cgroup_id.to_string()),
        )),
    }
    l.push(("k8s_node_name".into(), st.node.clone()));
    l
}
