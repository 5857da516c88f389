//! Processes, cgroups and network namespaces made for one test.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use kite_agent::cgroup::{Cgroup, Hierarchy};

use crate::unique;

/// A cgroup made for one test, under `/kite-test`. On drop its processes are killed and it is
/// removed.
pub struct TestCgroup {
    pub cgroup: Cgroup,
    pub hierarchy: Hierarchy,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let hierarchy = Hierarchy::discover().expect("cgroup v2 mounted");
        let rel = format!("/kite-test/{}", unique(name));
        fs::create_dir_all(hierarchy.mount().join(rel.trim_start_matches('/')))
            .expect("create test cgroup");
        let cgroup = hierarchy.cgroup(&rel).expect("test cgroup");
        Self { cgroup, hierarchy }
    }

    pub fn procs_file(&self) -> PathBuf {
        self.cgroup.dir.join("cgroup.procs")
    }

    /// A child cgroup (e.g. a container scope under a pod).
    pub fn child(&self, name: &str) -> Cgroup {
        let dir = self.cgroup.dir.join(name);
        fs::create_dir_all(&dir).expect("create child cgroup");
        self.hierarchy.cgroup(&dir).unwrap()
    }

    fn kill_all(dir: &Path) {
        for _ in 0..50 {
            let mut any = false;
            let mut dirs = vec![dir.to_path_buf()];
            while let Some(d) = dirs.pop() {
                if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        any = true;
                        // SAFETY: plain syscall.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                if let Ok(rd) = fs::read_dir(&d) {
                    dirs.extend(
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
            if !any {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn remove_tree(dir: &Path) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove_tree(&e.path());
                }
            }
        }
        for _ in 0..100 {
            match fs::remove_dir(dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        Self::kill_all(&self.cgroup.dir);
        Self::remove_tree(&self.cgroup.dir);
    }
}

/// A network namespace made for one test (loopback up); deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let name = unique(&format!("kt-{name}"));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        run_ok(
            Command::new("ip").args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]),
        );
        ns
    }

    /// Runs a command inside the namespace and waits for it.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process, killed and reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where and how to start a process.
#[derive(Default, Clone, Copy)]
pub struct Place<'a> {
    pub cgroup: Option<&'a TestCgroup>,
    pub cgroup_path: Option<&'a Path>,
    pub netns: Option<&'a Netns>,
}

impl<'a> Place<'a> {
    /// In `cg`, in this network namespace.
    pub fn in_cgroup(cg: &'a TestCgroup) -> Self {
        Self {
            cgroup: Some(cg),
            ..Self::default()
        }
    }
}

/// A command placed in a cgroup (joined before exec, so every socket it makes belongs to the
/// cgroup) and/or a network namespace.
pub fn command(place: Place<'_>, args: &[&str]) -> Command {
    let mut cmd = match place.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).args(args);
            c
        }
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    let procs = place
        .cgroup
        .map(|c| c.procs_file())
        .or_else(|| place.cgroup_path.map(|p| p.join("cgroup.procs")));
    if let Some(procs) = procs {
        // SAFETY: only async-signal-safe work between fork and exec (open/write/close).
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, "0"));
        }
    }
    cmd
}

pub fn spawn(place: Place<'_>, args: &[&str]) -> Proc {
    let child = command(place, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    Proc { child }
}

/// A free TCP port on loopback (bind to 0, then release).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `addr` (inside `netns` if given).
pub fn wait_for_port(addr: &str, netns: Option<&Netns>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = match netns {
            None => TcpStream::connect(addr).is_ok(),
            Some(ns) => Command::new("ip")
                .args(["netns", "exec", &ns.name, "python3", "-c"])
                .arg(format!(
                    "import socket,sys; h,p='{addr}'.rsplit(':',1); s=socket.create_connection((h.strip('[]'),int(p)),1)"
                ))
                .status()
                .is_ok_and(|s| s.success()),
        };
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        thread::sleep(Duration::from_millis(50));
    }
}
