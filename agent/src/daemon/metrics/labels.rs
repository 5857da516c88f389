//! The OpenTelemetry attributes of a series: the HTTP semantic conventions
//! (`http.server.request.duration`, `http.client.request.duration`), in Prometheus' spelling
//! (dots become underscores).
//!
//! | label | value | present |
//! |---|---|---|
//! | `http_request_method` | `GET` … `PATCH`, else `_OTHER` | always |
//! | `http_response_status_code` | the final response's code | always |
//! | `error_type` | the status code | server: 5xx; client: 4xx and 5xx |
//! | `network_protocol_version` | `1.0`, `1.1` (the response's status line) | when known |
//! | `url_scheme` | `http` (Kite sees plaintext only) | always |
//! | `server_address`, `server_port` | server: the local address and port the request arrived at; client: the peer connected to | always |
//! | `k8s_*` | the pod's namespace, name, workload | pods |
//! | `k8s_node_name` | the node | when the agent follows the Kubernetes API, or the cgroup is a pod's |
//! | `kite_unverified` | `true` | pods named by their own hello, not the Kubernetes API |
//! | `cgroup` | the cgroup path | cgroups that are not a pod's |

use kite_common::maps::{Direction, Method, Version};

use super::Labels;
use crate::{daemon::state::State, stats::EndpointStats};

/// `url.scheme` of everything Kite measures: its programs read TCP payload, so TLS traffic is
/// never parsed as HTTP.
pub(super) const URL_SCHEME: &str = "http";

/// The labels of one (method, status, version) series of an endpoint.
pub(super) fn series_labels(
    st: &State,
    ep: &EndpointStats,
    method: Method,
    status: u16,
    version: Version,
) -> Labels {
    let mut l: Labels = vec![
        ("http_request_method".into(), method.as_str().into()),
        ("http_response_status_code".into(), status.to_string()),
    ];
    if let Some(e) = error_type(ep.id.direction, status) {
        l.push(("error_type".into(), e));
    }
    if let Some(v) = version.as_str() {
        l.push(("network_protocol_version".into(), v.into()));
    }
    l.push(("url_scheme".into(), URL_SCHEME.into()));
    l.push(("server_address".into(), ep.id.host()));
    l.push(("server_port".into(), ep.id.port.to_string()));
    l.extend(owner_labels(st, ep));
    l
}

/// `error.type` as the conventions define it for a request that got a response: the status
/// code, when it is an error for this side (server: 5xx, client: 4xx and 5xx). Requests that
/// got no response are not recorded by Kite, so no other value occurs.
pub(super) fn error_type(direction: Direction, status: u16) -> Option<String> {
    let error = match direction {
        Direction::Inbound => status >= 500,
        Direction::Outbound => status >= 400,
    };
    (error && status <= 599).then(|| status.to_string())
}

/// Who the endpoint's sockets belong to: the pod (`k8s_*`) or the cgroup path, and the node
/// where it means something (Kubernetes). Outside Kubernetes the node name is the host name,
/// which Prometheus' own `instance` label already gives: it is left out.
pub(super) fn owner_labels(st: &State, ep: &EndpointStats) -> Labels {
    let (path, workload) = st.describe(ep);
    let mut l = Labels::new();
    let pod = workload.is_some();
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
    if st.kubernetes || pod {
        l.push(("k8s_node_name".into(), st.node.clone()));
    }
    l
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        net::{IpAddr, Ipv4Addr},
        time::{Duration, Instant, SystemTime},
    };

    use super::*;
    use crate::{
        cgroup::Cgroup,
        daemon::state::{AttachmentInfo, Source, Workload},
        ebpf::Options,
        stats::{EndpointId, Interval, SmallMap},
    };

    const POD: &str = "/kubepods/besteffort/pod0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b";

    fn state() -> State {
        let mut s = State::new(
            "node-a".into(),
            Duration::from_secs(1),
            4,
            Options::default(),
        );
        s.paths.insert(1, "/system.slice/web.service".into());
        s.paths.insert(2, format!("{POD}/ctr"));
        s.attachments.insert(
            POD.into(),
            AttachmentInfo {
                cgroup: Cgroup {
                    path: POD.into(),
                    dir: "/x".into(),
                    id: 2,
                },
                source: Source::Enrolled,
                since: SystemTime::now(),
                workload: Some(Workload {
                    namespace: "shop".into(),
                    pod: "web-0".into(),
                    uid: "0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b".into(),
                    ..Workload::default()
                }),
            },
        );
        s
    }

    fn endpoint(cgroup_id: u64, direction: Direction) -> EndpointStats {
        EndpointStats {
            id: EndpointId {
                cgroup_id,
                direction,
                addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                port: 8080,
            },
            last: Interval::default(),
            history: VecDeque::new(),
            totals: SmallMap::default(),
            last_active: Instant::now(),
        }
    }

    fn get<'a>(l: &'a Labels, name: &str) -> Option<&'a str> {
        l.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn error_type_is_the_status_where_the_side_calls_it_an_error() {
        use Direction::{Inbound, Outbound};
        for (dir, status, want) in [
            (Inbound, 200, None),
            (Inbound, 404, None),
            (Inbound, 499, None),
            (Inbound, 500, Some("500")),
            (Inbound, 503, Some("503")),
            (Outbound, 302, None),
            (Outbound, 400, Some("400")),
            (Outbound, 404, Some("404")),
            (Outbound, 599, Some("599")),
            (Outbound, 101, None),
        ] {
            assert_eq!(error_type(dir, status).as_deref(), want, "{dir:?} {status}");
        }
    }

    #[test]
    fn series_labels_of_a_host_cgroup() {
        let st = state();
        let ep = endpoint(1, Direction::Inbound);
        let l = series_labels(&st, &ep, Method::Other, 503, Version::Http10);
        assert_eq!(get(&l, "http_request_method"), Some("_OTHER"));
        assert_eq!(get(&l, "http_response_status_code"), Some("503"));
        assert_eq!(get(&l, "error_type"), Some("503"));
        assert_eq!(get(&l, "network_protocol_version"), Some("1.0"));
        assert_eq!(get(&l, "url_scheme"), Some("http"));
        assert_eq!(get(&l, "server_address"), Some("127.0.0.1"));
        assert_eq!(get(&l, "server_port"), Some("8080"));
        assert_eq!(get(&l, "cgroup"), Some("/system.slice/web.service"));
        // Not Kubernetes: the node name would repeat the host name.
        assert_eq!(get(&l, "k8s_node_name"), None);
        let l = series_labels(&st, &ep, Method::Get, 200, Version::Unknown);
        assert_eq!(get(&l, "error_type"), None);
        assert_eq!(get(&l, "network_protocol_version"), None);
        // No label twice.
        let mut names: Vec<_> = l.iter().map(|(k, _)| k).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), l.len());
    }

    #[test]
    fn node_name_in_kubernetes_only() {
        let mut st = state();
        let pod = endpoint(2, Direction::Outbound);
        let l = series_labels(&st, &pod, Method::Get, 404, Version::Http11);
        assert_eq!(get(&l, "k8s_pod_name"), Some("web-0"));
        assert_eq!(get(&l, "kite_unverified"), Some("true"));
        assert_eq!(get(&l, "k8s_node_name"), Some("node-a"));
        assert_eq!(get(&l, "error_type"), Some("404"));
        assert_eq!(get(&l, "cgroup"), None);
        let host = endpoint(1, Direction::Inbound);
        st.kubernetes = true;
        let l = series_labels(&st, &host, Method::Get, 200, Version::Http11);
        assert_eq!(get(&l, "k8s_node_name"), Some("node-a"));
    }
}
