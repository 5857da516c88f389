//! Kite under a real container runtime: `deploy/runtime-check.py` runs the image's root
//! filesystem under runc with the DaemonSet's security context, a pod enrolled by the injected
//! init container (the webhook's own answer, run as uid 65534 with the socket mount only) and
//! a workload container in a kubelet-layout cgroup, then compares Kite's count with curl's and
//! removes the pod (see the script's header for every step and every deviation from a
//! cluster).
//!
//! Root only. Without runc (or debootstrap) the test says so and passes, unless
//! `KITE_REQUIRE_EBPF=1`: then a runtime that `apt-get` could install is a failure (run
//! `scripts/install-deps.sh`), and only one that cannot be installed is a skip.
//! It also runs the agent without each of the DaemonSet's capabilities in turn and fails if it
//! works without one (`KITE_RUNTIME_DROP_CAPS=0` leaves that out). The binaries are taken from beside this test's executable, or from
//! `KITE_RUNTIME_BIN_DIR`. About 12–20 s once the image's root filesystem is cached (built once,
//! ~80 s, in /var/cache/kite-runtime-check).
//!
//! `sudo KITE_REQUIRE_EBPF=1 cargo test -p kite-webhook --test runtime -- --nocapture`
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The binaries beside this test, or `KITE_RUNTIME_BIN_DIR` (another build of the tree).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KITE_RUNTIME_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn installable(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .any(|l| l.trim().starts_with("Candidate:") && !l.contains("(none)"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_agent_under_runc_with_the_daemonsets_security_context_measures_an_enrolled_pod() {
    if !kite_testkit::ebpf_available("runtime") {
        return;
    }
    let required = std::env::var("KITE_REQUIRE_EBPF").as_deref() == Ok("1");
    for (tool, package) in [
        ("runc", "runc"),
        ("debootstrap", "debootstrap"),
        ("kubectl", "kubernetes-client"),
    ] {
        if on_path(tool) {
            continue;
        }
        if required && installable(package) {
            panic!(
                "{tool} is not installed but apt-get can install {package}: run \
                 scripts/install-deps.sh (KITE_REQUIRE_EBPF=1 makes this a failure)"
            );
        }
        eprintln!("SKIPPED runtime: {tool} is missing and {package} cannot be installed here");
        return;
    }
    for b in ["kite-agent", "kite-webhook", "kite-init", "kite-tui"] {
        assert!(
            bin_dir().join(b).exists(),
            "{b} is missing beside the test: `cargo build -p kite-agent -p kite-webhook -p \
             kite-init -p kite-tui` first"
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runtime-check.py");
    let mut cmd = Command::new("timeout");
    cmd.arg("900").arg(&script).arg("--bin-dir").arg(bin_dir());
    // The capability runs take ≈ 2 s while the manifest is tight (each run without one of its
    // capabilities fails at startup); they are what fails when it adds one the agent works
    // without. KITE_RUNTIME_DROP_CAPS=0 leaves them out.
    let drop_caps = std::env::var("KITE_RUNTIME_DROP_CAPS").as_deref() != Ok("0");
    if drop_caps {
        cmd.arg("--drop-caps");
    }
    let out = cmd.output().expect("running deploy/runtime-check.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let code = out.status.code();
    if code == Some(77) {
        assert!(
            !required,
            "runtime-check skipped with KITE_REQUIRE_EBPF=1:\n{stderr}"
        );
        eprintln!("SKIPPED runtime: {stderr}");
        return;
    }
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no summary ({e}), exit {code:?}:\n{stderr}"));
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    assert_eq!(code, Some(0), "runtime-check failed: {}", summary["failed"]);
    // What a user would check, from the summary the script measured.
    let sent = summary["client_200s"].as_f64().unwrap();
    assert!(sent >= 300.0, "curl got {sent} answers");
    assert_eq!(summary["kite_requests"].as_f64(), Some(sent));
    // --host-cgroupns took the agent out of the private cgroup namespace runc gave it.
    assert_eq!(summary["agent_cgroup_namespace"], "host");
    assert_eq!(summary["grpc_on_pod_ip"], "refused");
    assert_eq!(summary["metrics_on_pod_ip"], "answers");
    assert_eq!(summary["attached_with_pod"].as_f64(), Some(1.0));
    assert_eq!(summary["attached_after_removal"].as_f64(), Some(0.0));
    if drop_caps {
        // The DaemonSet adds the least set that still counts exactly, no more.
        assert_eq!(summary["least_capabilities"], summary["capabilities"]);
    }
}
