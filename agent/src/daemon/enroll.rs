//! The enrollment socket: a pod's init container says hello, the agent attaches to the pod.
//!
//! Trust comes from the kernel, not from the message: the peer's pid (`SO_PEERCRED`) leads to
//! its cgroup (`/proc/<pid>/cgroup`), which must lie inside a pod cgroup of the kubelet's layout
//! (see [`crate::pods`]); the pod cgroup is what gets attached. The hello only names the pod
//! (namespace, name) for the series' labels, and its uid must match the one in the cgroup path.
//! The socket is world-writable on purpose: any local process may ask, only pods get measured,
//! and only their own cgroup.
//!
//! Wire format (one JSON line each way, defined in [`kite_init`]): hello
//! `{"version":1,"pod":"web-0","namespace":"shop","uid":"…","container":"kite-init"}`, answer
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
use tokio::{
    io::{AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    dataplane::DataPlane,
    state::{Shared, Source, Workload},
};
use crate::{Error, cgroup::Hierarchy, ebpf::Attached, pods::pod_of_path};

/// How long a peer may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Hellos handled at once; more wait.
const CONCURRENCY: usize = 64;

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
}

/// Handles hellos.
#[derive(Clone)]
pub struct Enroller {
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
    /// Attaching failed.
    #[error("{0}")]
    Agent(#[from] Error),
}

impl Enroller {
    /// An enroller attaching through `dataplane`, remembering pods in `state_file`.
    pub fn new(
        hierarchy: Hierarchy,
        dataplane: DataPlane,
        shared: Shared,
        state_file: PathBuf,
    ) -> Self {
        Self {
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
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
            .map_err(io(format!("chmod {}", socket.display())))?;
        info!(socket = %socket.display(), "enrollment socket ready");
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
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
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return Ok(());
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.handle(stream).await;
                drop(permit);
            });
        }
    }

    async fn handle(&self, stream: UnixStream) {
        let peer = stream.peer_cred();
        let (read, mut write) = stream.into_split();
        let hello = tokio::time::timeout(HELLO_TIMEOUT, read_hello(BufReader::new(read))).await;
        let result = match (peer, hello) {
            (_, Err(_)) => Err(Refusal::Bad(HelloError::Timeout)),
            (_, Ok(Err(e))) => Err(Refusal::Bad(e)),
            (Err(e), _) => Err(Refusal::NoCredentials(e)),
            (Ok(cred), Ok(Ok(hello))) => self.enroll(cred.pid().unwrap_or(0), hello).await,
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

    /// Checks a hello against the peer's cgroup and attaches the pod.
    async fn enroll(&self, pid: i32, hello: Hello) -> Result<(String, String), Refusal> {
        let peer = self.hierarchy.cgroup_of_pid(pid as u32)?;
        let pod = pod_of_path(&peer.path).ok_or_else(|| Refusal::NotAPod {
            pid,
            cgroup: peer.path.clone(),
        })?;
        if !hello.uid.eq_ignore_ascii_case(&pod.uid) {
            return Err(Refusal::UidMismatch {
                said: hello.uid,
                actual: pod.uid,
            });
        }
        let cgroup = self.hierarchy.cgroup(&pod.path)?;
        let workload = Workload {
            namespace: hello.namespace.clone(),
            pod: hello.pod.clone(),
            uid: pod.uid.clone(),
            ..Workload::default()
        };
        let attached = self
            .dataplane
            .attach(cgroup.clone(), Source::Enrolled, Some(workload))
            .await?;
        let message = match attached {
            Attached::New { .. } => "attached".to_string(),
            Attached::Already => "already attached".to_string(),
            Attached::CoveredBy(p) => format!("already measured through {p}"),
        };
        self.remember(Record {
            cgroup: cgroup.path.clone(),
            namespace: hello.namespace,
            pod: hello.pod,
            uid: pod.uid,
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
            match self
                .dataplane
                .attach(cgroup, Source::Enrolled, Some(workload))
                .await
            {
                Ok(_) => {
                    info!(cgroup = %r.cgroup, pod = %r.pod, "re-attached enrolled pod");
                    kept.push(r);
                }
                Err(e) => warn!(cgroup = %r.cgroup, "re-attaching enrolled pod: {e}"),
            }
        }
        self.save(&kept).await;
    }
}
