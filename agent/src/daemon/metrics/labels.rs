//! The OpenTelemetry attributes of a series, in Prometheus' spelling (dots become
//! underscores): the HTTP semantic conventions (`http.server.request.duration`,
//! `http.client.request.duration`) for HTTP/1.x and HTTP/2 exchanges, the RPC ones of
//! semantic conventions v1.44.0 (`rpc.server.call.duration`, `rpc.client.call.duration`) for
//! gRPC calls.
//!
//! HTTP families:
//!
//! | label | value | present |
//! |---|---|---|
//! | `http_request_method` | `GET` … `PATCH`, else `_OTHER` | always |
//! | `http_response_status_code` | the final response's code | always |
//! | `error_type` | the status code | server: 5xx; client: 4xx and 5xx |
//! | `network_protocol_version` | `1.0`, `1.1` (the response's status line), `2` | when known |
//! | `url_scheme` | `http`, or `https` for what Kite read as TLS plaintext | always |
//! | `url_template` | the route: the path with identifier-like segments as `*` (`/orders/*`); `rpc#<id>` while its text is not known; `_OTHER` beyond the kernel's bound of routes per endpoint | HTTP/1 with routes on, when the target was read |
//! | `http_route` | instead of `url_template`, the user's pattern the route matched: the pod's own (`kite.io/routes`) first, then `--route`'s | when one matched |
//! | `server_address`, `server_port` | server: the local address and port the request arrived at; client: the peer connected to | always |
//! | `k8s_*` | the pod's namespace, name, workload | pods |
//! | `k8s_node_name` | the node | when the agent follows the Kubernetes API, or the cgroup is a pod's |
//! | `kite_unverified` | `true` | pods named by their own hello, not the Kubernetes API |
//! | `cgroup` | the cgroup path | cgroups that are not a pod's |
//!
//! RPC families (gRPC calls), with the same `server_*`, `k8s_*`, `kite_unverified` and
//! `cgroup` labels:
//!
//! | label | value | present |
//! |---|---|---|
//! | `rpc_system_name` | `grpc` | always |
//! | `rpc_method` | `package.Service/Method`; `rpc#<id>` while its name is not known; `_OTHER` beyond the kernel's bound per endpoint | when the path was knowable |
//! | `rpc_response_status_code` | `OK`, `NOT_FOUND`, … (the grpc-status's name) | when the grpc-status was knowable |
//! | `error_type` | the status's name | server: `UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`; client: every status but `OK` |

use kite_common::maps::{Direction, Method, Version};

use super::Labels;
use crate::{
    daemon::state::State,
    rpc_names::{grpc_failed, grpc_status_name},
    stats::EndpointStats,
};

/// `url.scheme` of an endpoint: `https` when Kite read its exchanges from TLS plaintext.
pub(super) fn url_scheme(ep: &EndpointStats) -> &'static str {
    if ep.id.tls { "https" } else { "http" }
}

/// The labels of one (method id, grpc-status) series of a gRPC endpoint.
pub(super) fn rpc_labels(st: &State, ep: &EndpointStats, rpc: u32, status: u16) -> Labels {
    let mut l: Labels = vec![("rpc_system_name".into(), "grpc".into())];
    if let Some(m) = st.rpc_names.get(rpc).label() {
        l.push(("rpc_method".into(), m));
    }
    if let Some(name) = grpc_status_name(status) {
        if grpc_failed(status, ep.id.direction == Direction::Inbound) {
            l.push(("error_type".into(), name.clone()));
        }
        l.push(("rpc_response_status_code".into(), name));
    }
    l.push(("server_address".into(), ep.id.host()));
    l.push(("server_port".into(), ep.id.port.to_string()));
    l.extend(owner_labels(st, ep));
    l
}

/// The labels of one (method, status, version, route) series of an endpoint.
pub(super) fn series_labels(
    st: &State,
    ep: &EndpointStats,
    method: Method,
    status: u16,
    version: Version,
    route: u32,
) -> Labels {
    let mut l: Labels = vec![
        ("http_request_method".into(), method.as_str().into()),
        ("http_response_status_code".into(), status.to_string()),
    ];
    // Not `http_route`: OpenTelemetry keeps that for the application's own route templates;
    // Kite's are inferred from the paths (`url.template` is the attribute for those).
    let (shown, pattern) = st.route_name(ep, route);
    if let Some(t) = shown.label() {
        let name = if pattern {
            "http_route"
        } else {
            "url_template"
        };
        l.push((name.into(), t));
    }
    if let Some(e) = error_type(ep.id.direction, status) {
        l.push(("error_type".into(), e));
    }
    if let Some(v) = version.as_str() {
        l.push(("network_protocol_version".into(), v.into()));
    }
    l.push(("url_scheme".into(), url_scheme(ep).into()));
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

    use kite_common::maps::RPC_NONE;

    use super::*;
    use crate::{
        cgroup::Cgroup,
        daemon::state::{AttachmentInfo, Source, Workload},
        ebpf::Options,
        stats::{AppProtocol, EndpointId, Interval, SmallMap},
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
                routes: Vec::new(),
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
                protocol: AppProtocol::Http11,
                tls: false,
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
        let l = series_labels(&st, &ep, Method::Other, 503, Version::Http10, RPC_NONE);
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
        let l = series_labels(&st, &ep, Method::Get, 200, Version::Unknown, RPC_NONE);
        assert_eq!(get(&l, "error_type"), None);
        assert_eq!(get(&l, "network_protocol_version"), None);
        // No label twice.
        let mut names: Vec<_> = l.iter().map(|(k, _)| k).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), l.len());
    }

    #[test]
    fn tls_endpoints_are_https_and_http2_is_version_2() {
        let st = state();
        let mut ep = endpoint(1, Direction::Inbound);
        ep.id.tls = true;
        ep.id.protocol = AppProtocol::Http2;
        let l = series_labels(&st, &ep, Method::Get, 200, Version::Http2, RPC_NONE);
        assert_eq!(get(&l, "url_scheme"), Some("https"));
        assert_eq!(get(&l, "network_protocol_version"), Some("2"));
    }

    #[test]
    fn a_route_is_a_url_template_label_and_no_route_no_label() {
        use kite_common::{
            maps::{RPC_OTHER, RPC_UNKNOWN},
            route::route_of,
        };
        let mut st = state();
        let ep = endpoint(1, Direction::Inbound);
        let (id, r) = route_of(b"/orders/123?x=1");
        let get = |l: &Labels| {
            l.iter()
                .find(|(k, _)| k == "url_template")
                .map(|(_, v)| v.clone())
        };
        let l = |st: &State, rpc| series_labels(st, &ep, Method::Get, 200, Version::Http11, rpc);
        assert_eq!(get(&l(&st, id)), Some(format!("rpc#{id:08x}")));
        st.rpc_names.learn_route(id, r.text(), false);
        assert_eq!(get(&l(&st, id)).as_deref(), Some("/orders/*"));
        assert_eq!(get(&l(&st, RPC_OTHER)).as_deref(), Some("_OTHER"));
        assert_eq!(get(&l(&st, RPC_UNKNOWN)), None);
        assert_eq!(get(&l(&st, RPC_NONE)), None);
        // A text whose hash is not the id is refused, never shown under it.
        let (other, _) = route_of(b"/users/1");
        st.rpc_names.learn_route(other, b"/orders/*", false);
        assert_eq!(get(&l(&st, other)), Some(format!("rpc#{other:08x}")));
        // A user pattern wins over the heuristic, under `http_route`.
        st.rpc_names.set_route_patterns(vec![
            crate::route_pattern::RoutePattern::parse("/users/{id}").unwrap(),
        ]);
        let (user, r) = route_of(b"/users/42");
        st.rpc_names.learn_route(user, r.text(), false);
        let ls = l(&st, user);
        assert_eq!(get(&ls), None);
        assert!(ls.contains(&("http_route".into(), "/users/{id}".into())));
        // A pod's own pattern applies to its cgroups only, before --route's.
        st.attachments.get_mut(POD).unwrap().routes = vec![
            crate::route_pattern::RoutePattern::parse("/orders/{order}").unwrap(),
            crate::route_pattern::RoutePattern::parse("/users/{user}").unwrap(),
        ];
        let in_pod = endpoint(2, Direction::Inbound);
        let lp = |rpc| series_labels(&st, &in_pod, Method::Get, 200, Version::Http11, rpc);
        assert!(lp(id).contains(&("http_route".into(), "/orders/{order}".into())));
        assert!(lp(user).contains(&("http_route".into(), "/users/{user}".into())));
        assert_eq!(get(&l(&st, id)).as_deref(), Some("/orders/*"));
        assert!(l(&st, user).contains(&("http_route".into(), "/users/{id}".into())));
    }

    #[test]
    fn rpc_labels_follow_the_rpc_conventions() {
        use kite_common::{
            h2::hpack::path_id,
            maps::{GRPC_STATUS_UNKNOWN, RPC_OTHER, RPC_UNKNOWN, rpc_id},
        };
        let mut st = state();
        let path = "/helloworld.Greeter/SayHello";
        let id = rpc_id(path_id(path.as_bytes()));
        let mut server = endpoint(1, Direction::Inbound);
        server.id.protocol = AppProtocol::Grpc;
        let mut client = server.clone();
        client.id.direction = Direction::Outbound;
        // Before the kernel told the name: the id, never a guess.
        let l = rpc_labels(&st, &server, id, 0);
        assert_eq!(
            get(&l, "rpc_method"),
            Some(format!("rpc#{id:08x}").as_str())
        );
        st.rpc_names.learn(id, path.as_bytes());
        let l = rpc_labels(&st, &server, id, 0);
        assert_eq!(get(&l, "rpc_system_name"), Some("grpc"));
        assert_eq!(get(&l, "rpc_method"), Some("helloworld.Greeter/SayHello"));
        assert_eq!(get(&l, "rpc_response_status_code"), Some("OK"));
        assert_eq!(get(&l, "error_type"), None);
        assert_eq!(get(&l, "server_port"), Some("8080"));
        assert_eq!(get(&l, "http_request_method"), None);
        assert_eq!(get(&l, "url_scheme"), None);
        // NOT_FOUND is the caller's error, not the server's; UNAVAILABLE is both.
        assert_eq!(get(&rpc_labels(&st, &server, id, 5), "error_type"), None);
        let l = rpc_labels(&st, &client, id, 5);
        assert_eq!(get(&l, "error_type"), Some("NOT_FOUND"));
        assert_eq!(get(&l, "rpc_response_status_code"), Some("NOT_FOUND"));
        assert_eq!(
            get(&rpc_labels(&st, &server, id, 14), "error_type"),
            Some("UNAVAILABLE")
        );
        // Unknowable status or path: the attribute is absent, never a value made up.
        let l = rpc_labels(&st, &server, RPC_UNKNOWN, GRPC_STATUS_UNKNOWN);
        assert_eq!(get(&l, "rpc_method"), None);
        assert_eq!(get(&l, "rpc_response_status_code"), None);
        assert_eq!(get(&l, "error_type"), None);
        let l = rpc_labels(&st, &server, RPC_OTHER, 0);
        assert_eq!(get(&l, "rpc_method"), Some("_OTHER"));
    }

    #[test]
    fn node_name_in_kubernetes_only() {
        let mut st = state();
        let pod = endpoint(2, Direction::Outbound);
        let l = series_labels(&st, &pod, Method::Get, 404, Version::Http11, RPC_NONE);
        assert_eq!(get(&l, "k8s_pod_name"), Some("web-0"));
        assert_eq!(get(&l, "kite_unverified"), Some("true"));
        assert_eq!(get(&l, "k8s_node_name"), Some("node-a"));
        assert_eq!(get(&l, "error_type"), Some("404"));
        assert_eq!(get(&l, "cgroup"), None);
        let host = endpoint(1, Direction::Inbound);
        st.kubernetes = true;
        let l = series_labels(&st, &host, Method::Get, 200, Version::Http11, RPC_NONE);
        assert_eq!(get(&l, "k8s_node_name"), Some("node-a"));
    }
}
