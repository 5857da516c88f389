//! The `kite-loader` binary as a user runs it.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
};

use kite_testkit::*;

const LOADER: &str = env!("CARGO_BIN_EXE_kite-loader");

#[test]
fn loader_prints_a_line_per_endpoint_in_the_seed_format() {
    if !ebpf_available("loader_prints_a_line_per_endpoint_in_the_seed_format") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("loader");
    let (port_in, port_out) = (free_port(), free_port());
    let place = Place::in_cgroup(&cg);
    let _nginx = nginx(place, port_in);
    // An upstream outside the cgroup, called from inside it.
    let _upstream = python_httpd(Place::default(), "127.0.0.1", port_out, false);
    let mut loader = Command::new(LOADER)
        .args(["-s", "1", "-n", "5", "TEST", "--cgroup", &cg.cgroup.path])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(loader.stdout.take().unwrap());
    // Loading (the verifier) takes a moment; the first line says the programs are attached.
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("measuring cgroup"), "{first}");
    let lines = thread::scope(|s| {
        let reader = s.spawn(move || stdout.lines().map_while(Result::ok).collect::<Vec<_>>());
        let inbound: SocketAddr = format!("127.0.0.1:{port_in}").parse().unwrap();
        client(&Load {
            addr: inbound,
            conns: 2,
            per_conn: 1500,
            depth: 1,
            paths: &["/"],
            close: false,
            ..Load::default()
        });
        let url = format!("http://127.0.0.1:{port_out}");
        wrk(place, &url, 1, 300, &["/d/1"], &[]);
        reader.join().unwrap()
    });
    let status = loader.wait().unwrap();
    let text = lines.join("\n");
    eprintln!("{text}");
    assert!(status.success(), "kite-loader failed: {text}");
    let prefix = "[INFO] [kite_loader] [TEST] ";
    assert!(lines.iter().all(|l| l.starts_with(prefix)), "{text}");
    let inbound = format!("{prefix}127.0.0.1:{port_in} in - RPS: ");
    let outbound = format!("{prefix}127.0.0.1:{port_out} out - RPS: ");
    let ins: Vec<&String> = lines.iter().filter(|l| l.starts_with(&inbound)).collect();
    let outs: Vec<&String> = lines.iter().filter(|l| l.starts_with(&outbound)).collect();
    assert!(!ins.is_empty() && !outs.is_empty(), "{text}");
    for l in ins.iter().chain(&outs) {
        // `Latency (p50/p90/p99): a/b/c ms` with non-zero sub-millisecond figures shown.
        let lat = l.split("Latency (p50/p90/p99): ").nth(1).unwrap();
        let nums: Vec<f64> = lat
            .split(" ms")
            .next()
            .unwrap()
            .split('/')
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(nums.len(), 3, "{l}");
        assert!(nums.iter().all(|v| *v > 0.0), "{l}");
        assert!(nums[0] <= nums[1] && nums[1] <= nums[2], "{l}");
        let rps: f64 = l
            .split("RPS: ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .trim_end_matches('k')
            .parse()
            .unwrap();
        assert!(rps > 0.0, "{l}");
        assert!(l.contains(", Errors: 0.0%"), "{l}");
    }
    // nginx's `/` answers in well under a millisecond: shown as such, not as 0.
    let p50: f64 = ins[0]
        .split("): ")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(p50 < 1.0, "{}", ins[0]);
}

fn loader_error(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn loader_explains_what_is_wrong() {
    if !ebpf_available("loader_explains_what_is_wrong") {
        return;
    }
    // A cgroup that does not exist.
    let (code, err) =
        loader_error(Command::new(LOADER).args(["-n", "1", "--cgroup", "/no/such/cgroup"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("cgroup /no/such/cgroup does not exist"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Not root.
    let (code, err) = loader_error(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        LOADER,
        "-n",
        "1",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not permitted: run as root"), "{err}");

    // No cgroup v2: a private mount namespace without the cgroup2 mount.
    let h = kite_agent::cgroup::Hierarchy::discover().unwrap();
    let script = format!("umount -l {} && exec {LOADER} -n 1", h.mount().display());
    let (code, err) = loader_error(Command::new("unshare").args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no cgroup v2 hierarchy is mounted"), "{err}");

    // Bad arguments are clap's errors.
    let (code, err) = loader_error(Command::new(LOADER).args(["-s", "0"]));
    assert_eq!(code, 2);
    assert!(err.contains("expected a number of seconds"), "{err}");
}

/// The RPS figure of a kite-loader line ("RPS: 3.83k," → 3830).
fn rps_of(line: &str) -> Option<f64> {
    let v = line.split("RPS: ").nth(1)?.split(',').next()?.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix('k') {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('M') {
        (n, 1e6)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

/// The README's first command, as a new user runs it (with the binaries this test run built).
#[test]
fn the_readme_demo_shows_inbound_and_outbound_traffic_and_cleans_up() {
    if !ebpf_available("the_readme_demo_shows_inbound_and_outbound_traffic_and_cleans_up") {
        return;
    }
    let _serial = serial();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = std::path::Path::new(LOADER).parent().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .env("KITE_DEMO_BIN_DIR", bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let best = |dir: &str| {
        stdout
            .lines()
            .filter(|l| l.contains("[kite_loader] [DEMO]") && l.contains(&format!(" {dir} - RPS")))
            .filter_map(rps_of)
            .fold(0.0, f64::max)
    };
    // wrk's mix at nginx (thousands per second here) and two connections to a 5 ms upstream
    // (about 2 × 200 per second).
    assert!(best("in") > 500.0, "{stdout}\n{stderr}");
    let out_rps = best("out");
    assert!(
        (100.0..=450.0).contains(&out_rps),
        "{out_rps}: {stdout}\n{stderr}"
    );
    assert!(stderr.contains("wrk's own view"), "{stderr}");
    // Nothing left behind: no demo cgroup, no attached programs.
    let mount = kite_agent::cgroup::Hierarchy::discover()
        .unwrap()
        .mount()
        .to_path_buf();
    let left: Vec<_> = std::fs::read_dir(&mount)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kite-demo-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
