//! cgroup v2: finding the mount, naming cgroups, resolving ids to paths.
//!
//! A cgroup is named by its path relative to the cgroup v2 mount (`/` is the root,
//! `/kubepods.slice/...` a pod). Its id, the one the kernel reports for sockets
//! (`bpf_skb_cgroup_id`), is the inode number of its directory.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

use crate::Error;

/// The cgroup v2 hierarchy of this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    mount: PathBuf,
}

/// A cgroup of the v2 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cgroup {
    /// Path relative to the mount, starting with `/`.
    pub path: String,
    /// Directory on the filesystem.
    pub dir: PathBuf,
    /// cgroup id (inode number of `dir`).
    pub id: u64,
}

impl Hierarchy {
    /// Finds the cgroup v2 mount in `/proc/self/mounts` (`/sys/fs/cgroup` on unified hosts,
    /// often `/sys/fs/cgroup/unified` on hybrid ones).
    pub fn discover() -> Result<Self, Error> {
        let mounts = fs::read_to_string("/proc/self/mounts").map_err(|e| Error::Io {
            what: "reading /proc/self/mounts".into(),
            source: e,
        })?;
        Self::from_mounts(&mounts).ok_or(Error::NoCgroup2)
    }

    /// The cgroup v2 mount named in a `/proc/mounts`-style table, preferring `/sys/fs/cgroup`.
    pub fn from_mounts(mounts: &str) -> Option<Self> {
        let mut found: Vec<PathBuf> = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
                (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(dir)))
            })
            .collect();
        found.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
        found.into_iter().next().map(|mount| Self { mount })
    }

    /// A hierarchy mounted at `mount` (for tests and unusual setups).
    pub fn at(mount: impl Into<PathBuf>) -> Self {
        Self {
            mount: mount.into(),
        }
    }

    /// Where the hierarchy is mounted.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The root cgroup (the whole machine).
    pub fn root(&self) -> Result<Cgroup, Error> {
        self.cgroup("/")
    }

    /// Looks up a cgroup by its path relative to the mount (`/a/b`, `a/b`) or by its absolute
    /// path on the filesystem (under the mount).
    pub fn cgroup(&self, path: impl AsRef<Path>) -> Result<Cgroup, Error> {
        let path = path.as_ref();
        let rel = match path.strip_prefix(&self.mount) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => path.strip_prefix("/").unwrap_or(path).to_path_buf(),
        };
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(Error::BadCgroupPath(path.to_path_buf()));
        }
        let dir = self.mount.join(&rel);
        let meta = fs::metadata(&dir).map_err(|e| Error::NoSuchCgroup {
            path: path.to_path_buf(),
            source: e,
        })?;
        if !meta.is_dir() || !dir.join("cgroup.procs").exists() {
            return Err(Error::NotACgroup(path.to_path_buf()));
        }
        Ok(Cgroup {
            path: format!("/{}", rel.display()),
            dir,
            id: meta.ino(),
        })
    }

    /// The cgroup a process belongs to, from `/proc/<pid>/cgroup` (the `0::` line).
    pub fn cgroup_of_pid(&self, pid: u32) -> Result<Cgroup, Error> {
        let file = format!("/proc/{pid}/cgroup");
        let text = fs::read_to_string(&file).map_err(|e| Error::Io {
            what: format!("reading {file}"),
            source: e,
        })?;
        let path = parse_proc_cgroup(&text).ok_or_else(|| Error::NoCgroupOfPid(pid))?;
        self.cgroup(path)
    }

    /// Every cgroup of the hierarchy by id, up to `limit` of them (the walk stops there).
    pub fn index(&self, limit: usize) -> HashMap<u64, String> {
        self.index_under("/", limit)
    }

    /// The cgroups at and below `path` by id, up to `limit` of them.
    pub fn index_under(&self, path: &str, limit: usize) -> HashMap<u64, String> {
        let mut out = HashMap::new();
        let rel = path.trim_start_matches('/');
        let start = if rel.is_empty() {
            "/".to_string()
        } else {
            format!("/{rel}")
        };
        let mut stack = vec![(self.mount.join(rel), start)];
        while let Some((dir, rel)) = stack.pop() {
            if out.len() >= limit {
                break;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            out.insert(meta.ino(), rel.clone());
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((e.path(), child));
                }
            }
        }
        out
    }
}

/// Whether cgroup path `a` is `b` or below it.
pub fn is_within(a: &str, b: &str) -> bool {
    b == "/" || a == b || (a.starts_with(b) && a.as_bytes().get(b.len()) == Some(&b'/'))
}

/// The v2 path in a `/proc/<pid>/cgroup` file (the `0::/path` line).
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// `/proc/mounts` escapes spaces and a few other bytes as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_preferring_sys_fs_cgroup() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            Hierarchy::from_mounts(hybrid).unwrap().mount(),
            Path::new("/sys/fs/cgroup/unified")
        );
        let unified = "cgroup2 /mnt/other\\040dir cgroup2 rw 0 0\n\
                       cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(
            Hierarchy::from_mounts(unified).unwrap().mount(),
            Path::new("/sys/fs/cgroup")
        );
        assert_eq!(
            Hierarchy::from_mounts("cgroup2 /mnt/a\\040b cgroup2 rw 0 0")
                .unwrap()
                .mount(),
            Path::new("/mnt/a b")
        );
        assert!(Hierarchy::from_mounts("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0").is_none());
    }

    #[test]
    fn proc_cgroup_v2_line() {
        let text = "12:cpu,cpuacct:/x\n0::/kubepods.slice/pod1.slice/cri-containerd-a.scope\n";
        assert_eq!(
            parse_proc_cgroup(text),
            Some("/kubepods.slice/pod1.slice/cri-containerd-a.scope")
        );
        assert_eq!(parse_proc_cgroup("1:name=systemd:/\n"), None);
    }

    #[test]
    fn within() {
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(is_within("/a", "/"));
        assert!(!is_within("/ab", "/a"));
        assert!(!is_within("/a", "/a/b"));
    }

    #[test]
    fn cgroup_paths_are_checked() {
        let tmp = std::env::temp_dir().join(format!("kite-cg-{}", std::process::id()));
        fs::create_dir_all(tmp.join("pod/ctr")).unwrap();
        fs::write(tmp.join("cgroup.procs"), "").unwrap();
        fs::write(tmp.join("pod/cgroup.procs"), "").unwrap();
        let h = Hierarchy::at(&tmp);
        let pod = h.cgroup("/pod").unwrap();
        assert_eq!(pod.path, "/pod");
        assert_eq!(h.cgroup(tmp.join("pod")).unwrap(), pod);
        assert_eq!(h.cgroup("pod").unwrap(), pod);
        assert_eq!(h.root().unwrap().path, "/");
        assert!(matches!(h.cgroup("/pod/ctr"), Err(Error::NotACgroup(_))));
        assert!(matches!(h.cgroup("/nope"), Err(Error::NoSuchCgroup { .. })));
        assert!(matches!(
            h.cgroup("/pod/../.."),
            Err(Error::BadCgroupPath(_))
        ));
        let idx = h.index(100);
        assert_eq!(idx.get(&pod.id).map(String::as_str), Some("/pod"));
        fs::remove_dir_all(&tmp).unwrap();
    }
}
