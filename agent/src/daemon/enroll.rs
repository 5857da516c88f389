//! The enrollment socket: a pod's init container says hello, the agent attaches to the pod.
//!
//! Trust comes from the kernel and the Kubernetes API, never from the message: the peer's pid
//! (`SO_PEERCRED`) leads to its cgroup (`/proc/<pid>/cgroup`), which must lie inside a pod
//! cgroup of the kubelet's layout (see [`crate::pods`]) owned by root up to the mount (not a
//! delegated subtree); the hello's uid must match the one in the cgroup path. With the API the
//! pod must be one of this node's and its names come from the API; without it only allowed
//! peers ([`Policy`]) enroll and their names are marked unverified. A second hello cannot
//! rename a pod. Silent peers cannot jam the socket: no fixed pool, a per-peer-cgroup limit and
//! a short hello deadline.
//!
//! A hello may carry the pod's own route patterns (its `kite.io/routes` annotation): checked
//! with [`kite_init::routes::pod_patterns`] (at most 16 of at most 128 bytes, the `--route`
//! grammar), all refused if one is malformed — the pod is enrolled all the same and the answer
//! says why — and applied to that pod's cgroups only ([`AttachmentInfo::routes`]). They are
//! set by the hello that enrolls the pod and kept across restarts; a later hello cannot change
//! them, as it cannot rename the pod. They can only rename and merge the pod's own routes.
//!
//! [`AttachmentInfo::routes`]: super::state::AttachmentInfo::routes
//!
//! Wire format (one JSON line each way, defined in [`kite_init`]): hello
//! `{"version":1,"pod":"web-0","namespace":"shop","uid":"…","container":"kite-init","routes":["/orders/{id}"]}`, answer
//! `{"ok":true,"cgroup":"/kubepods…/pod….slice","message":"attached"}` or
//! `{"ok":false,"error":"…"}`.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use kite_init::{Ack, Hello, HelloError, read_hello};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use tokio::{
    io::{AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    dataplane::DataPlane,
    state::{Guards, Shared, Source, Workload},
};
use crate::{Error, cgroup::Hierarchy, ebpf::Attached, pods::pod_of_path};

/// How long a peer may take to send its hello (kite-init sends it at once).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections handled at once; more are closed at once (counted). No pool one client fills:
/// each connection is a small task, and one peer cgroup gets at most [`PER_PEER`] of them.
const MAX_CONNECTIONS: usize = super::sizes::ENROLLMENTS as usize;
/// Connections one peer cgroup may have open at once; more are refused at once.
const PER_PEER: usize = 4;
/// How long a hello waits for the Kubernetes API to know its pod (a pod just created may not
/// have reached the agent's watch yet).
const API_WAIT: Duration = Duration::from_secs(5);

/// Who may enroll, and what a hello's names are worth.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Peers (besides root) allowed to enroll without the Kubernetes API, by uid.
    pub uids: Vec<u32>,
    /// Peers allowed to enroll without the Kubernetes API, by primary or supplementary gid.
    pub gids: Vec<u32>,
    /// Group of the socket file: mode 0660 with this group instead of 0666.
    pub socket_group: Option<u32>,
}

/// The claim of one agent on its socket path: an exclusive `flock` on `<socket>.lock` (holding
/// the owner's pid), held for the agent's lifetime. A second agent with the same `--socket`
/// refuses to start, naming the owner, instead of replacing the first one's socket.
#[derive(Debug)]
pub struct SocketClaim {
    _lock: std::fs::File,
    socket: PathBuf,
}

impl SocketClaim {
    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// `pid (command line)` of a process, as far as /proc tells.
fn describe_pid(pid: i32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    if cmd.is_empty() {
        format!("pid {pid}")
    } else {
        format!("pid {pid}: {cmd}")
    }
}

/// Claims `socket` for this agent (see [`SocketClaim`]). Fails when another agent holds the
/// lock, or when something answers on the socket (an agent without the lock), saying which
/// process it is.
pub fn claim_socket(socket: &Path) -> Result<SocketClaim, Error> {
    use std::{io::Write as _, os::fd::AsRawFd as _};
    let io = |what: String| move |source| Error::Io { what, source };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let mut lock_path = socket.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let mut lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io(format!("opening {}", lock_path.display())))?;
    let taken = |owner: String| Error::Serve {
        what: format!(
            "another kite-agent ({owner}) serves {}; stop it first, or give this one another --socket",
            socket.display()
        ),
        source: Box::new(std::io::Error::from(std::io::ErrorKind::AddrInUse)),
    };
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let pid = std::fs::read_to_string(&lock_path)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            return Err(taken(pid.map_or_else(
                || format!("holding {}", lock_path.display()),
                describe_pid,
            )));
        }
        return Err(Error::Io {
            what: format!("locking {}", lock_path.display()),
            source: e,
        });
    }
    // An agent that holds no lock (an older version) but answers on the socket.
    if let Ok(s) = std::os::unix::net::UnixStream::connect(socket) {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        let owner = if r == 0 && cred.pid > 0 {
            describe_pid(cred.pid)
        } else {
            "unknown pid".to_string()
        };
        return Err(taken(owner));
    }
    lock.set_len(0)
        .and_then(|_| writeln!(lock, "{}", std::process::id()))
        .map_err(io(format!("writing {}", lock_path.display())))?;
    Ok(SocketClaim {
        _lock: lock,
        socket: socket.to_path_buf(),
    })
}

/// A pod remembered across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    cgroup: String,
    namespace: String,
    pod: String,
    uid: String,
    /// The pod's route patterns, as applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<String>,
}

/// Handles hellos.
#[derive(Clone)]
pub struct Enroller {
    policy: Arc<Policy>,
    hierarchy: Hierarchy,
    dataplane: DataPlane,
    shared: Shared,
    state_file: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// Why a hello was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The hello could not be read.
    #[error("{0}")]
    Bad(#[from] HelloError),
    /// The peer's credentials could not be read.
    #[error("cannot read the peer's credentials: {0}")]
    NoCredentials(std::io::Error),
    /// The peer is not in a pod cgroup.
    #[error("the peer (pid {pid}, cgroup {cgroup}) is not inside a Kubernetes pod cgroup")]
    NotAPod {
        /// Peer pid.
        pid: i32,
        /// Its cgroup.
        cgroup: String,
    },
    /// The hello names another pod than the peer's cgroup.
    #[error("the hello names pod uid {said} but the peer's cgroup belongs to pod {actual}")]
    UidMismatch {
        /// From the hello.
        said: String,
        /// From the cgroup path.
        actual: String,
    },
    /// The pod cgroup is not the kubelet's: someone (a delegated subtree) owns it.
    #[error(
        "the pod cgroup {cgroup} (or a parent) belongs to uid {owner}, not root: not made by the kubelet"
    )]
    NotKubelet {
        /// The pod cgroup.
        cgroup: String,
        /// Its owner.
        owner: u32,
    },
    /// Without the Kubernetes API, the peer is not one the operator allows.
    #[error(
        "peer uid {uid} gid {gid} may not enroll without the Kubernetes API (allowed: root, --enroll-uid, --enroll-gid)"
    )]
    PeerNotAllowed {
        /// Peer uid.
        uid: u32,
        /// Peer gid.
        gid: u32,
    },
    /// The Kubernetes API knows no pod with that uid on this node.
    #[error("the Kubernetes API knows no pod with uid {0} on this node")]
    UnknownPod(String),
    /// The pod is enrolled already under other names.
    #[error("pod {uid} is enrolled as {namespace}/{pod}: a hello cannot rename it")]
    Rename {
        /// Pod uid.
        uid: String,
        /// Enrolled namespace.
        namespace: String,
        /// Enrolled name.
        pod: String,
    },
    /// Attaching failed.
    #[error("{0}")]
    Agent(#[from] Error),
}

/// Peer credentials, as the kernel gives them.
#[derive(Clone, Copy, Debug)]
struct Peer {
    pid: i32,
    uid: u32,
    gid: u32,
}

/// Supplementary groups of a process (`Groups:` of /proc/<pid>/status).
fn groups_of(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The owner of the first directory from `dir` up to `mount` not owned by root, if any.
fn non_root_owner(dir: &Path, mount: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let mut d = Some(dir);
    while let Some(p) = d {
        if !p.starts_with(mount) {
            break;
        }
        match std::fs::metadata(p) {
            Ok(m) if m.uid() != 0 => return Some(m.uid()),
            Ok(_) => {}
            Err(_) => return Some(u32::MAX),
        }
        if p == mount {
            break;
        }
        d = p.parent();
    }
    None
}

/// Decides a hello's workload. With the API (`api` is the pods on this node), the pod must be
/// known there and its names come from it; without, the peer must be allowed and the names
/// from the hello are marked unverified.
fn decide(
    policy: &Policy,
    peer: Peer,
    peer_groups: &[u32],
    hello: &Hello,
    pod_uid: &str,
    api: Option<Option<Workload>>,
) -> Result<Workload, Refusal> {
    match api {
        Some(Some(w)) => Ok(Workload {
            verified: true,
            ..w
        }),
        Some(None) => Err(Refusal::UnknownPod(pod_uid.to_string())),
        None => {
            let allowed = peer.uid == 0
                || policy.uids.contains(&peer.uid)
                || policy.gids.contains(&peer.gid)
                || peer_groups.iter().any(|g| policy.gids.contains(g));
            if !allowed {
                return Err(Refusal::PeerNotAllowed {
                    uid: peer.uid,
                    gid: peer.gid,
                });
            }
            Ok(Workload {
                namespace: hello.namespace.clone(),
                pod: hello.pod.clone(),
                uid: pod_uid.to_string(),
                verified: false,
                ..Workload::default()
            })
        }
    }
}

impl Enroller {
    /// An enroller attaching through `dataplane`, remembering pods in `state_file`.
    pub fn new(
        policy: Policy,
        hierarchy: Hierarchy,
        dataplane: DataPlane,
        shared: Shared,
        state_file: PathBuf,
    ) -> Self {
        Self {
            policy: Arc::new(policy),
            hierarchy,
            dataplane,
            shared,
            state_file,
            lock: Arc::default(),
        }
    }

    /// Listens on the claimed socket until `shutdown`.
    pub async fn serve(
        &self,
        claim: &SocketClaim,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let io = |what: String| move |source| Error::Io { what, source };
        let socket = claim.socket();
        // A socket file left by a previous run (SIGKILL) would make bind fail; the claim says
        // no other agent uses it.
        if std::fs::symlink_metadata(socket).is_ok() {
            std::fs::remove_file(socket)
                .map_err(io(format!("removing stale {}", socket.display())))?;
        }
        let listener =
            UnixListener::bind(socket).map_err(io(format!("listening on {}", socket.display())))?;
        let mode = match self.policy.socket_group {
            Some(gid) => {
                std::os::unix::fs::chown(socket, Some(0), Some(gid))
                    .map_err(io(format!("chown {}", socket.display())))?;
                0o660
            }
            None => 0o666,
        };
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {}", socket.display())))?;
        info!(socket = %socket.display(), mode = format!("{mode:o}"), "enrollment socket ready");
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let per_peer: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
        let guards = self.shared.read().guards.clone();
        loop {
            let conn = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                c = listener.accept() => c,
            };
            let stream = match conn {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("accepting on the enrollment socket: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            Guards::inc(&guards.enroll.accepted);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                Guards::inc(&guards.enroll.refused);
                continue;
            };
            // The peer's cgroup is its budget: one pod cannot take the others' turns.
            let key = stream
                .peer_cred()
                .ok()
                .and_then(|c| c.pid())
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
                .unwrap_or_default();
            {
                let mut m = per_peer.lock().unwrap_or_else(|e| e.into_inner());
                let n = m.entry(key.clone()).or_default();
                if *n >= PER_PEER {
                    drop(m);
                    Guards::inc(&guards.enroll.refused);
                    let line = Ack::busy(&format!(
                        "{PER_PEER} connections from this cgroup are open already"
                    ))
                    .to_line();
                    let _ = stream.try_write(format!("{line}\n").as_bytes());
                    continue;
                }
                *n += 1;
            }
            let this = self.clone();
            let per_peer = per_peer.clone();
            tokio::spawn(async move {
                this.handle(stream).await;
                let mut m = per_peer.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = m.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&key);
                    }
                }
                drop(slot);
            });
        }
    }

    async fn handle(&self, stream: UnixStream) {
        let peer = stream.peer_cred();
        let (read, mut write) = stream.into_split();
        let hello = tokio::time::timeout(HELLO_TIMEOUT, read_hello(BufReader::new(read))).await;
        let result = match (peer, hello) {
            (_, Err(_)) => {
                Guards::inc(&self.shared.read().guards.enroll.idle_closed);
                Err(Refusal::Bad(HelloError::Timeout))
            }
            (_, Ok(Err(e))) => Err(Refusal::Bad(e)),
            (Err(e), _) => Err(Refusal::NoCredentials(e)),
            (Ok(cred), Ok(Ok(hello))) => {
                let peer = Peer {
                    pid: cred.pid().unwrap_or(0),
                    uid: cred.uid(),
                    gid: cred.gid(),
                };
                self.enroll(peer, hello).await
            }
        };
        let ack = match &result {
            Ok((cgroup, message)) => Ack::attached(cgroup, message),
            Err(e) => Ack::refused(&e.to_string()),
        };
        {
            let mut st = self.shared.write();
            match &result {
                Ok(_) => st.agent.enrolled += 1,
                Err(Refusal::Bad(_)) => st.agent.enroll_bad += 1,
                Err(_) => st.agent.enroll_refused += 1,
            }
        }
        match &result {
            Ok((cgroup, _)) => info!(cgroup = %cgroup, "pod enrolled"),
            Err(e) => warn!("enrollment refused: {e}"),
        }
        let mut line = ack.to_line();
        line.push('\n');
        // The peer may be gone already; nothing to do about it.
        if let Err(e) = write.write_all(line.as_bytes()).await {
            debug!("writing the answer: {e}");
        }
        let _ = write.shutdown().await;
    }

    /// Checks a hello against the peer's cgroup (and the Kubernetes API, or the policy) and
    /// attaches the pod.
    async fn enroll(&self, peer: Peer, hello: Hello) -> Result<(String, String), Refusal> {
        let pid = peer.pid;
        let peer_cg = self.hierarchy.cgroup_of_pid(pid as u32)?;
        let pod = pod_of_path(&peer_cg.path).ok_or_else(|| Refusal::NotAPod {
            pid,
            cgroup: peer_cg.path.clone(),
        })?;
        if !hello.uid.eq_ignore_ascii_case(&pod.uid) {
            return Err(Refusal::UidMismatch {
                said: hello.uid,
                actual: pod.uid,
            });
        }
        let cgroup = self.hierarchy.cgroup(&pod.path)?;
        // The kubelet (root) makes pod cgroups; a delegated subtree belongs to its user.
        if let Some(owner) = non_root_owner(&cgroup.dir, self.hierarchy.mount()) {
            return Err(Refusal::NotKubelet {
                cgroup: cgroup.path,
                owner,
            });
        }
        let api = if self.shared.read().kubernetes {
            let deadline = tokio::time::Instant::now() + API_WAIT;
            loop {
                let known = self.shared.read().pods.get(&pod.uid).cloned();
                if known.is_some() || tokio::time::Instant::now() >= deadline {
                    break Some(known);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } else {
            None
        };
        let workload = decide(&self.policy, peer, &groups_of(pid), &hello, &pod.uid, api)?;
        let routes = kite_init::routes::pod_patterns(&hello.routes);
        let enrolled_before = self
            .shared
            .read()
            .attachments
            .get(&cgroup.path)
            .is_some_and(|a| a.workload.is_some());
        // Names are given once: a second hello cannot rename the pod.
        if let Some(w) = self
            .shared
            .read()
            .attachments
            .get(&cgroup.path)
            .and_then(|a| a.workload.as_ref())
            && (w.namespace != workload.namespace || w.pod != workload.pod)
            && !workload.verified
        {
            return Err(Refusal::Rename {
                uid: pod.uid,
                namespace: w.namespace.clone(),
                pod: w.pod.clone(),
            });
        }
        let attached = self
            .dataplane
            .attach(cgroup.clone(), Source::Enrolled, Some(workload.clone()))
            .await?;
        let mut message = match attached {
            Attached::New { .. } => "attached".to_string(),
            Attached::Already => "already attached".to_string(),
            Attached::CoveredBy(p) => format!("already measured through {p}"),
        };
        let applied = {
            let mut st = self.shared.write();
            let kept = st.attachments.get_mut(&cgroup.path).map(|a| {
                if !enrolled_before && let Ok(r) = &routes {
                    a.routes = r.clone();
                }
                a.routes.clone()
            });
            if routes.is_err() {
                st.agent.enroll_routes_refused += 1;
            }
            kept.unwrap_or_default()
        };
        let texts: Vec<String> = applied.iter().map(|p| p.as_str().to_string()).collect();
        match &routes {
            Err(e) if !enrolled_before => {
                warn!(pod = %workload.pod, "route patterns refused: {e}");
                message.push_str(&format!("; {e}: no pattern applied"));
            }
            _ if enrolled_before && texts != hello.routes => {
                message.push_str("; route patterns unchanged (set when the pod was enrolled)");
            }
            _ if !texts.is_empty() => {
                message.push_str(&format!(" with route patterns {}", texts.join(" ")));
            }
            _ => {}
        }
        self.remember(Record {
            cgroup: cgroup.path.clone(),
            namespace: workload.namespace,
            pod: workload.pod,
            uid: pod.uid,
            routes: texts,
        })
        .await;
        Ok((cgroup.path, message))
    }

    async fn records(&self) -> Vec<Record> {
        match tokio::fs::read(&self.state_file).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!("ignoring unreadable {}: {e}", self.state_file.display());
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    async fn save(&self, records: &[Record]) {
        let tmp = self.state_file.with_extension("tmp");
        let write = async {
            if let Some(dir) = self.state_file.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::write(&tmp, serde_json::to_vec_pretty(records)?).await?;
            tokio::fs::rename(&tmp, &self.state_file).await
        };
        if let Err(e) = write.await {
            warn!("saving {}: {e}", self.state_file.display());
        }
    }

    async fn remember(&self, r: Record) {
        let _guard = self.lock.lock().await;
        let mut all = self.records().await;
        all.retain(|o| o.cgroup != r.cgroup && self.hierarchy.cgroup(&o.cgroup).is_ok());
        all.push(r);
        self.save(&all).await;
    }

    /// Re-attaches the pods enrolled before a restart whose cgroups still exist.
    pub async fn restore(&self) {
        let _guard = self.lock.lock().await;
        let mut kept = Vec::new();
        for r in self.records().await {
            let Ok(cgroup) = self.hierarchy.cgroup(&r.cgroup) else {
                debug!(cgroup = %r.cgroup, "enrolled pod is gone");
                continue;
            };
            let workload = Workload {
                namespace: r.namespace.clone(),
                pod: r.pod.clone(),
                uid: r.uid.clone(),
                ..Workload::default()
            };
            // Saved as applied, so valid; a hand-edited file's bad ones are dropped.
            let routes = kite_init::routes::pod_patterns(&r.routes).unwrap_or_else(|e| {
                warn!(cgroup = %r.cgroup, "{e}: dropped");
                Vec::new()
            });
            match self
                .dataplane
                .attach(cgroup, Source::Enrolled, Some(workload))
                .await
            {
                Ok(_) => {
                    if let Some(a) = self.shared.write().attachments.get_mut(&r.cgroup) {
                        a.routes = routes;
                    }
                    info!(cgroup = %r.cgroup, pod = %r.pod, "re-attached enrolled pod");
                    kept.push(r);
                }
                Err(e) => warn!(cgroup = %r.cgroup, "re-attaching enrolled pod: {e}"),
            }
        }
        self.save(&kept).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b";

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { pid: 1, uid, gid }
    }

    #[test]
    fn with_the_api_names_come_from_it_and_unknown_pods_are_refused() {
        let hello = Hello::new("evil", "fake", UID);
        let api = Workload {
            namespace: "shop".into(),
            pod: "web-0".into(),
            uid: UID.into(),
            verified: true,
            ..Workload::default()
        };
        let p = Policy::default();
        let w = decide(&p, peer(65534, 65534), &[], &hello, UID, Some(Some(api))).unwrap();
        assert_eq!((w.namespace.as_str(), w.pod.as_str()), ("shop", "web-0"));
        assert!(w.verified);
        let e = decide(&p, peer(0, 0), &[], &hello, UID, Some(None)).unwrap_err();
        assert!(matches!(e, Refusal::UnknownPod(_)), "{e}");
    }

    #[test]
    fn without_the_api_only_allowed_peers_enroll_unverified() {
        let hello = Hello::new("shop", "web-0", UID);
        let none = Policy::default();
        let e = decide(&none, peer(65534, 65534), &[], &hello, UID, None).unwrap_err();
        assert!(e.to_string().contains("peer uid 65534"), "{e}");
        let w = decide(&none, peer(0, 0), &[], &hello, UID, None).unwrap();
        assert!(!w.verified);
        assert_eq!(w.pod, "web-0");
        let by_uid = Policy {
            uids: vec![65534],
            ..Policy::default()
        };
        assert!(decide(&by_uid, peer(65534, 65534), &[], &hello, UID, None).is_ok());
        let by_gid = Policy {
            gids: vec![2000],
            ..Policy::default()
        };
        assert!(decide(&by_gid, peer(1000, 1000), &[2000], &hello, UID, None).is_ok());
        assert!(decide(&by_gid, peer(1000, 1000), &[3000], &hello, UID, None).is_err());
    }
}
