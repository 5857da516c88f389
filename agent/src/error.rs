use std::path::PathBuf;

/// Errors of the agent library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup v2 hierarchy is mounted (Kite needs cgroup v2: mount -t cgroup2 none /sys/fs/cgroup)"
    )]
    NoCgroup2,
    /// The cgroup path does not exist.
    #[error("cgroup {path} does not exist")]
    NoSuchCgroup {
        /// The path given.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a cgroup v2 directory.
    #[error("{0} is not a cgroup v2 directory")]
    NotACgroup(PathBuf),
    /// The path is not a plain path inside the hierarchy.
    #[error("invalid cgroup path {0} (no `..` or `.`)")]
    BadCgroupPath(PathBuf),
    /// `/proc/<pid>/cgroup` has no cgroup v2 line.
    #[error("process {0} has no cgroup v2 membership")]
    NoCgroupOfPid(u32),
    /// Loading eBPF needs privileges the process lacks.
    #[error(
        "loading eBPF programs is not permitted: run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    )]
    NotPermitted(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The kernel refused the eBPF object.
    #[error("loading the eBPF programs failed")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Attaching or detaching a program failed.
    #[error("{action} {program} on cgroup {cgroup} failed")]
    Attach {
        /// attach / detach
        action: &'static str,
        /// Program name.
        program: &'static str,
        /// cgroup path.
        cgroup: String,
        /// The kernel's answer.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The cgroup is not attached.
    #[error("cgroup {0} is not attached")]
    NotAttached(String),
    /// Reading a map failed.
    #[error("reading map {map} failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// The kernel's answer.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A server could not start or failed.
    #[error("{what}")]
    Serve {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other I/O error.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Short stable label for metrics (`kite_errors_total{kind=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoCgroup2 => "no_cgroup2",
            Error::NoSuchCgroup { .. } => "no_such_cgroup",
            Error::NotACgroup(_) => "not_a_cgroup",
            Error::BadCgroupPath(_) => "bad_cgroup_path",
            Error::NoCgroupOfPid(_) => "no_cgroup_of_pid",
            Error::NotPermitted(_) => "not_permitted",
            Error::Load(_) => "load",
            Error::Attach { .. } => "attach",
            Error::NotAttached(_) => "not_attached",
            Error::Map { .. } => "map",
            Error::Serve { .. } => "serve",
            Error::Io { .. } => "io",
        }
    }
}
