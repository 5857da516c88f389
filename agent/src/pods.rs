//! Recognising Kubernetes pods in cgroup paths.
//!
//! The kubelet puts every pod in a cgroup of its own and each container below it, in one of two
//! layouts depending on its cgroup driver:
//!
//! * systemd: `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`
//!   (the uid's dashes become underscores; Guaranteed pods sit directly under `kubepods.slice`
//!   as `kubepods-pod<uid>.slice`);
//! * cgroupfs: `/kubepods/besteffort/pod<uid>/<container-id>` (`/kubepods/pod<uid>/…` when
//!   Guaranteed).
//!
//! Either may sit below another prefix (`/kubelet.slice/kubelet-kubepods.slice/…` on kind).

/// A pod's cgroup found in a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// Path of the pod's cgroup (a prefix of the path it was found in).
    pub path: String,
    /// The pod's uid, with dashes (`0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b`).
    pub uid: String,
    /// The path component below the pod (the container's cgroup), if any.
    pub container: Option<String>,
}

/// Finds the pod cgroup in a cgroup path.
pub fn pod_of_path(path: &str) -> Option<PodCgroup> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let in_kubepods = |i: usize| comps[..i].iter().any(|c| c.contains("kubepods"));
    for (i, c) in comps.iter().enumerate() {
        let uid = if let Some(rest) = c.strip_suffix(".slice") {
            // systemd: `<prefix>-pod<uid>.slice`
            rest.rsplit_once("-pod").map(|(_, u)| u.replace('_', "-"))
        } else {
            // cgroupfs: `pod<uid>`
            c.strip_prefix("pod").map(str::to_string)
        };
        let Some(uid) = uid.filter(|u| is_uid(u)) else {
            continue;
        };
        if !in_kubepods(i) && !c.contains("kubepods") {
            continue;
        }
        return Some(PodCgroup {
            path: format!("/{}", comps[..=i].join("/")),
            uid,
            container: comps.get(i + 1).map(|s| s.to_string()),
        });
    }
    None
}

/// A Kubernetes uid: 8-4-4-4-12 hex digits.
pub fn is_uid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b";

    #[test]
    fn systemd_layouts() {
        let p = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f0d6d7e_1c2b_4e3f_9a8b_7c6d5e4f3a2b.slice/cri-containerd-abc123.scope";
        let pod = pod_of_path(p).unwrap();
        assert_eq!(pod.uid, UID);
        assert_eq!(
            pod.path,
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f0d6d7e_1c2b_4e3f_9a8b_7c6d5e4f3a2b.slice"
        );
        assert_eq!(
            pod.container.as_deref(),
            Some("cri-containerd-abc123.scope")
        );
        let guaranteed = "/kubepods.slice/kubepods-pod0f0d6d7e_1c2b_4e3f_9a8b_7c6d5e4f3a2b.slice";
        let pod = pod_of_path(guaranteed).unwrap();
        assert_eq!(pod.path, guaranteed);
        assert_eq!(pod.container, None);
        let kind = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod0f0d6d7e_1c2b_4e3f_9a8b_7c6d5e4f3a2b.slice/cri-containerd-x.scope";
        assert_eq!(pod_of_path(kind).unwrap().uid, UID);
    }

    #[test]
    fn cgroupfs_layouts() {
        let p = format!("/kubepods/burstable/pod{UID}/4f3a2b");
        let pod = pod_of_path(&p).unwrap();
        assert_eq!(pod.path, format!("/kubepods/burstable/pod{UID}"));
        assert_eq!(pod.container.as_deref(), Some("4f3a2b"));
        assert_eq!(
            pod_of_path(&format!("/kubepods/pod{UID}")).unwrap().uid,
            UID
        );
    }

    #[test]
    fn not_pods() {
        for p in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-0.slice/session-1.scope",
            &format!("/elsewhere/pod{UID}/x"),
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubepods/besteffort/podnot-a-uid/x",
        ] {
            assert_eq!(pod_of_path(p), None, "{p}");
        }
    }
}
