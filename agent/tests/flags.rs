//! Impossible flag values are refused at startup, before anything is loaded, with one sentence
//! naming the flag and its allowed range (no root needed: nothing gets that far).

use std::process::{Command, Stdio};

const AGENT: &str = env!("CARGO_BIN_EXE_kite-agent");
const LOADER: &str = env!("CARGO_BIN_EXE_kite-loader");

/// Runs `bin args`; returns its exit code and stderr.
fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .args(args)
        // A socket under a file: were a value let through, the agent would stop at the claim
        // of its socket (creating nothing), never load or measure anything.
        .args(if bin == AGENT {
            &["--socket", "/dev/null/kite.sock"][..]
        } else {
            &[][..]
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn refused(bin: &str, args: &[&str], flag: &str, range: &str) {
    let (code, err) = run(bin, args);
    assert_eq!(code, Some(2), "{bin} {args:?}: exit {code:?}, stderr {err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains(flag) && first.contains(range),
        "{bin} {args:?}: expected one line naming {flag} and {range}, got:\n{err}"
    );
}

#[test]
fn agent_refuses_zero_and_absurd_durations_and_sizes() {
    for (args, flag, range) in [
        (
            &["--interval", "0"][..],
            "--interval",
            "between 100ms and 10m",
        ),
        (&["--interval=0s"], "--interval", "between 100ms and 10m"),
        (
            &["--interval", "10ms"],
            "--interval",
            "between 100ms and 10m",
        ),
        (
            &["--interval", "1000000y"],
            "--interval",
            "between 100ms and 10m",
        ),
        (
            &["--interval", "soon"],
            "--interval",
            "between 100ms and 10m",
        ),
        (
            &["--gone-grace", "100y"],
            "--gone-grace",
            "between 0s and 1day",
        ),
        (
            &["--endpoint-idle", "1ms"],
            "--endpoint-idle",
            "or 0: never",
        ),
        (
            &["--idle-timeout", "0"],
            "--idle-timeout",
            "between 1s and 1h",
        ),
        (
            &["--header-timeout", "0"],
            "--header-timeout",
            "between 100ms and 10m",
        ),
        (
            &["--shutdown-timeout", "1y"],
            "--shutdown-timeout",
            "between 0s and 10m",
        ),
        (&["--history", "0"], "--history", "between 1 and 60"),
        (&["--history", "61"], "--history", "between 1 and 60"),
        (
            &["--max-sockets", "0"],
            "--max-sockets",
            "between 1 and 16777216",
        ),
        (
            &["--max-endpoints", "0"],
            "--max-endpoints",
            "between 16 and 262144",
        ),
        (
            &["--max-endpoints", "99999999999"],
            "--max-endpoints",
            "between 16 and 262144",
        ),
        (
            &["--endpoint-budget=-1"],
            "--endpoint-budget",
            "between 0 and 262144",
        ),
        (
            &["--max-series", "0"],
            "--max-series",
            "between 1 and 262144",
        ),
        (
            &["--max-watch-streams", "0"],
            "--max-watch-streams",
            "between 1 and 1024",
        ),
        (&["--max-scrapes", "0"], "--max-scrapes", "between 1 and 64"),
        (
            &["--max-connections", "0"],
            "--max-connections",
            "between 1 and 65536",
        ),
        (
            &["--max-endpoints", "4096", "--endpoint-budget", "8192"],
            "--endpoint-budget",
            "between 1 and --max-endpoints",
        ),
    ] {
        refused(AGENT, args, flag, range);
    }
    // The environment variable behind --interval is checked the same way.
    let out = Command::new(AGENT)
        .env("KITE_INTERVAL", "0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--interval") && err.contains("between 100ms and 10m"),
        "{err}"
    );
}

#[test]
fn agent_refuses_more_route_patterns_than_it_keeps() {
    let many: Vec<String> = (0..65).map(|i| format!("--route=/p{i}/{{id}}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    refused(AGENT, &many, "--route", "at most 64");
    // 64 get past the flags (the agent then stops at its socket: exit 1).
    let (code, err) = run(AGENT, &many[..64]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("at most 64"), "{err}");
}

#[test]
fn agent_accepts_the_bounds_themselves() {
    // Values at the ends of the ranges get past the flags: the agent then stops at its
    // socket, whose directory cannot exist (exit 1, not the usage error's 2).
    let (code, err) = run(
        AGENT,
        &[
            "--interval=100ms",
            "--gone-grace=0s",
            "--endpoint-idle=0",
            "--idle-timeout=1h",
            "--history=60",
            "--max-endpoints=16",
            "--endpoint-budget=16",
            "--max-series=1",
            "--max-scrapes=64",
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("must be between"), "{err}");
}

#[test]
fn loader_refuses_zero_and_absurd_values() {
    for (args, flag, range) in [
        (&["-s", "0"][..], "--interval", "between 0.1 and 3600"),
        (
            &["--interval", "1e300"],
            "--interval",
            "between 0.1 and 3600",
        ),
        (&["--interval", "NaN"], "--interval", "between 0.1 and 3600"),
        (&["-n", "0"], "--count", "between 1 and 4294967295"),
        (
            &["--max-endpoints", "0"],
            "--max-endpoints",
            "between 16 and 262144",
        ),
        (
            &["--max-sockets", "0"],
            "--max-sockets",
            "between 1 and 16777216",
        ),
        (
            &["--max-endpoints", "4096", "--endpoint-budget", "8192"],
            "--endpoint-budget",
            "between 1 and --max-endpoints",
        ),
    ] {
        refused(LOADER, args, flag, range);
    }
}
