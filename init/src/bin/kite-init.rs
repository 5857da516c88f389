//! `kite-init`: the init container Kite's webhook injects into opted-in pods.
//!
//! It tells the node agent (over its unix socket) that the pod exists, waits for the answer up
//! to `--timeout`, logs the outcome, and always exits 0: a missing or slow agent must never stop
//! a pod from starting (the pod then simply runs unmeasured).
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use kite_init::{Hello, Request, enroll};

/// Enroll this pod with the Kite agent on its node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The agent's enrollment socket (a hostPath volume in the pod).
    #[arg(long, env = "KITE_SOCKET", default_value = "/var/run/kite/kite.sock")]
    socket: PathBuf,
    /// Pod name (downward API `metadata.name`).
    #[arg(long, env = "POD_NAME")]
    pod: Option<String>,
    /// Pod namespace (downward API `metadata.namespace`).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Pod uid (downward API `metadata.uid`).
    #[arg(long, env = "POD_UID")]
    uid: Option<String>,
    /// This container's name, for the agent's log.
    #[arg(long, env = "KITE_CONTAINER_NAME", default_value = "kite-init")]
    container: String,
    /// The pod's own route patterns (its `kite.io/routes` annotation through the downward
    /// API): white-space separated, at most 16 of at most 128 bytes. Malformed ones are not
    /// sent (said in the log); the pod is enrolled all the same, with inferred routes.
    #[arg(long, env = "KITE_ROUTE_PATTERNS")]
    route_patterns: Option<String>,
    /// Give up after this long (waiting for the socket included).
    #[arg(long, env = "KITE_INIT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kite-init: {e}");
            eprintln!("kite-init: not enrolled; the pod starts unmeasured");
            return ExitCode::SUCCESS;
        }
    };
    let (Some(pod), Some(namespace), Some(uid)) = (&args.pod, &args.namespace, &args.uid) else {
        eprintln!(
            "kite-init: POD_NAME, POD_NAMESPACE and POD_UID (or --pod, --namespace, --uid) are \
             required; not enrolled, the pod starts unmeasured"
        );
        return ExitCode::SUCCESS;
    };
    let mut hello = Hello::new(namespace, pod, uid);
    hello.container = Some(args.container.clone());
    match kite_init::routes::parse_annotation(args.route_patterns.as_deref().unwrap_or_default()) {
        Ok(patterns) => {
            hello.routes = patterns.iter().map(|p| p.as_str().to_string()).collect();
        }
        Err(e) => eprintln!("kite-init: {e}; not sent, the pod's routes are inferred"),
    }
    let req = Request {
        socket: args.socket.clone(),
        hello,
        timeout: args.timeout,
    };
    match enroll(&req) {
        Ok(ack) => eprintln!(
            "kite-init: pod {namespace}/{pod} enrolled: {} ({})",
            ack.message.as_deref().unwrap_or("ok"),
            ack.cgroup.as_deref().unwrap_or("?"),
        ),
        Err(e) => {
            eprintln!(
                "kite-init: pod {namespace}/{pod} not enrolled: {e}; the pod starts unmeasured"
            )
        }
    }
    ExitCode::SUCCESS
}
