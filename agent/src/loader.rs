//! `kite-loader`: the standalone quick-start. Attaches to one cgroup (the whole machine by
//! default) and prints one line per active endpoint every few seconds.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use kite_common::maps::{Direction, Stat};

use crate::{
    Error,
    cgroup::Hierarchy,
    daemon::flags,
    ebpf::{Kite, Options},
    human,
    rpc_names::{RpcNames, grpc_status_name},
    stats::{AppProtocol, Collector, EndpointId, Interval},
};

/// Command line of `kite-loader`.
#[derive(Debug, Parser)]
#[command(
    name = "kite-loader",
    version,
    about = "Measure HTTP/1.x, HTTP/2 and gRPC requests of a cgroup with eBPF and print per-endpoint RPS and latency",
    after_help = "Needs root. Example: sudo kite-loader -s 3 TEST"
)]
pub struct Args {
    /// Tag printed in every line.
    #[arg(default_value = "kite")]
    pub tag: String,
    /// Seconds between reports.
    #[arg(short = 's', long = "interval", default_value_t = 3.0, value_parser = flags::loader_interval)]
    pub interval: f64,
    /// cgroup v2 to measure: a path relative to the cgroup2 mount (`/system.slice/nginx.service`)
    /// or an absolute path under it. Default: the root cgroup (the whole machine).
    #[arg(short = 'c', long)]
    pub cgroup: Option<PathBuf>,
    /// Exit after this many reports.
    #[arg(short = 'n', long, value_parser = flags::loader_count)]
    pub count: Option<u64>,
    /// Also print endpoints without requests in the interval.
    #[arg(long)]
    pub all: bool,
    /// Print Kite's own counters (parser resyncs, map overflows…) with every report.
    #[arg(short, long)]
    pub verbose: bool,
    /// Most connections tracked at once.
    #[arg(long, default_value_t = Options::default().max_sockets, value_parser = flags::max_sockets)]
    pub max_sockets: u32,
    /// Most (cgroup, endpoint, method, status) histograms.
    #[arg(long, default_value_t = Options::default().max_endpoints, value_parser = flags::max_endpoints)]
    pub max_endpoints: u32,
    /// Most distinct endpoint histograms one cgroup may hold in one direction (requests beyond
    /// are shown as one `_OTHER` endpoint); 0: an eighth of --max-endpoints, none below 2048.
    #[arg(long, default_value_t = 0, value_parser = flags::endpoint_budget)]
    pub endpoint_budget: u32,
    /// Probe OpenSSL for TLS plaintext (measures HTTPS). Off by default: the uprobes cost every
    /// caller of a probed libssl a trap per call (see DESIGN.md, TLS: cost).
    #[arg(long)]
    pub tls: bool,
    /// Print a line per route under each HTTP/1 endpoint (`/orders/*`).
    #[arg(short = 'r', long)]
    pub routes: bool,
    /// Do not compute routes in the kernel (one histogram per method and status).
    #[arg(long, conflicts_with = "routes")]
    pub no_routes: bool,
}

/// One report line's key: the loader folds cgroups together.
type LineKey = (Direction, String, AppProtocol, bool);

/// What a report line is about.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    /// Inbound or outbound.
    pub dir: Direction,
    /// `ip:port`.
    pub address: &'a str,
    /// What it speaks.
    pub protocol: AppProtocol,
    /// Measured from TLS plaintext.
    pub tls: bool,
}

/// Formats one endpoint line (without the log prefix): the seed's figures, then the
/// protocol (`Protocol: HTTP/1.1`, `gRPC+TLS`); gRPC endpoints add their calls per
/// grpc-status.
pub fn format_endpoint(tag: &str, line: Line<'_>, iv: &Interval) -> String {
    let mut s = format_line(tag, line.dir, line.address, iv);
    let _ = write!(s, ", Protocol: {}", line.protocol);
    if line.tls {
        s.push_str("+TLS");
    }
    if line.protocol.is_grpc() {
        let _ = write!(s, ", Status: {}", grpc_statuses(iv));
    }
    s
}

/// One gRPC method's line, under its endpoint's: `[tag] address dir rpc <method> - RPS: …,
/// Status: OK 95, NOT_FOUND 5`.
pub fn format_method(tag: &str, line: Line<'_>, method: &str, iv: &Interval) -> String {
    let full = format_line(tag, line.dir, line.address, iv);
    let figures = full.split_once(" - ").map_or("", |(_, f)| f);
    format!(
        "[{tag}] {} {} rpc {method} - {figures}, Status: {}",
        line.address,
        line.dir.as_str(),
        grpc_statuses(iv)
    )
}

/// Formats one route line of an HTTP/1 endpoint: the seed's figures for that route, then its
/// requests per status code.
pub fn format_route(tag: &str, line: Line<'_>, route: &str, iv: &Interval) -> String {
    let full = format_line(tag, line.dir, line.address, iv);
    let figures = full.split_once(" - ").map_or("", |(_, f)| f);
    let statuses: Vec<String> = iv
        .by_status
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    format!(
        "[{tag}] {} {} route {route} - {figures}, Status: {}",
        line.address,
        line.dir.as_str(),
        if statuses.is_empty() {
            "-".into()
        } else {
            statuses.join(", ")
        }
    )
}

/// `OK 95, NOT_FOUND 5` (calls per grpc-status, `unknown` for those not knowable).
fn grpc_statuses(iv: &Interval) -> String {
    if iv.by_status.is_empty() {
        return "-".into();
    }
    iv.by_status
        .iter()
        .map(|(code, n)| {
            let name = grpc_status_name(*code).unwrap_or_else(|| "unknown".into());
            format!("{name} {n}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Formats the seed's endpoint line (without the log prefix).
pub fn format_line(tag: &str, dir: Direction, address: &str, iv: &Interval) -> String {
    let q = |p| {
        iv.quantile(p)
            .map_or_else(|| "-".to_string(), human::millis)
    };
    let mut s = format!(
        "[{tag}] {address} {} - RPS: {}, Latency (p50/p90/p99): {}/{}/{} ms",
        dir.as_str(),
        human::si(iv.rps()),
        q(0.5),
        q(0.9),
        q(0.99)
    );
    let _ = write!(
        s,
        ", Errors: {:.1}%, Req/Resp: {}/{} per s",
        iv.error_ratio() * 100.0,
        human::bytes(iv.req_bytes_per_sec()),
        human::bytes(iv.resp_bytes_per_sec())
    );
    s
}

/// Runs the loader until the count is reached or `stop` is set.
pub fn run(args: &Args, stop: Arc<AtomicBool>) -> Result<(), Error> {
    let hierarchy = Hierarchy::discover()?;
    let cgroup = match &args.cgroup {
        Some(p) => hierarchy.cgroup(p)?,
        None => hierarchy.root()?,
    };
    let mut kite = Kite::load(Options {
        max_sockets: args.max_sockets,
        max_endpoints: args.max_endpoints,
        endpoint_budget: args.endpoint_budget,
        routes: !args.no_routes,
    })?;
    kite.attach(&cgroup)?;
    // TLS through OpenSSL: the cgroup's processes' libssl files, probed now and every report.
    let mut tls = crate::tls::Tls::new();
    let tls_on = args.tls;
    let mut scan_tls = |kite: &mut Kite| {
        if !tls_on {
            return;
        }
        if let Err(e) = tls.scan(kite) {
            log::warn!("TLS: {e}");
        }
    };
    let start = Instant::now();
    log::info!(
        target: "kite_loader",
        "[{}] measuring cgroup {} (id {}) under {}; a report every {} s",
        args.tag,
        cgroup.path,
        cgroup.id,
        hierarchy.mount().display(),
        args.interval
    );
    scan_tls(&mut kite);
    let mut collector = Collector::new(start, 2);
    // gRPC method names, as the agent keeps them (bounded, checked against their ids).
    let mut rpc_names = RpcNames::default();
    let interval = Duration::from_secs_f64(args.interval);
    let mut reports = 0u64;
    let mut next = start + interval;
    while args.count.is_none_or(|c| reports < c) {
        // Sleep in short steps so Ctrl-C is prompt.
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            thread::sleep((next - Instant::now()).min(Duration::from_millis(100)));
        }
        next += interval;
        let now = Instant::now();
        // Connections parked for a socket that never appeared (an abandoned handshake after
        // data reached a listener), as the agent does.
        if let Err(e) = kite.sweep_pending(crate::ebpf::PENDING_MAX_AGE) {
            log::warn!("sweeping the pending-connection map: {e}");
        }
        scan_tls(&mut kite);
        collector.update(now, kite.endpoints()?);
        crate::daemon::dataplane::learn_rpc_names(&mut rpc_names, kite.rpc_names());
        reports += 1;
        let mut lines: BTreeMap<LineKey, Interval> = BTreeMap::new();
        for ep in collector.endpoints() {
            let EndpointId {
                direction,
                protocol,
                tls,
                ..
            } = ep.id;
            lines
                .entry((direction, ep.id.address(), protocol, tls))
                .or_default()
                .merge(&ep.last);
        }
        let mut printed = 0;
        for ((dir, address, protocol, tls), iv) in &lines {
            if iv.requests > 0 || args.all {
                let line = Line {
                    dir: *dir,
                    address,
                    protocol: *protocol,
                    tls: *tls,
                };
                log::info!(target: "kite_loader", "{}", format_endpoint(&args.tag, line, iv));
                let grpc = protocol.is_grpc();
                for (id, m) in &iv.by_rpc {
                    if (m.requests > 0 || args.all) && (grpc || args.routes) {
                        let name = rpc_names.get(*id).label();
                        let text = if grpc {
                            let name = name.as_deref().unwrap_or("(method unknown)");
                            format_method(&args.tag, line, name, m)
                        } else {
                            let name = name.as_deref().unwrap_or("(route unknown)");
                            format_route(&args.tag, line, name, m)
                        };
                        log::info!(target: "kite_loader", "{text}");
                    }
                }
                printed += 1;
            }
        }
        if printed == 0 {
            log::info!(
                target: "kite_loader",
                "[{}] no HTTP requests in the last {} s",
                args.tag,
                args.interval
            );
        }
        if args.verbose {
            let c = kite.counters()?;
            let text: Vec<String> = Stat::ALL
                .iter()
                .filter(|s| c[**s as usize] > 0)
                .map(|s| format!("{}={}", s.name(), c[*s as usize]))
                .collect();
            log::info!(target: "kite_loader", "[{}] kite: {}", args.tag, text.join(" "));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kite_common::maps::Method;

    use super::*;
    use crate::stats::Histogram;

    #[test]
    fn a_route_line_has_the_seed_figures_and_its_statuses() {
        let mut hist = Histogram::default();
        for _ in 0..10 {
            hist.record(2_000_000);
        }
        let iv = Interval {
            secs: 1.0,
            requests: 10,
            hist,
            by_status: [(200, 9), (404, 1)].into(),
            ..Interval::default()
        };
        let line = Line {
            dir: Direction::Inbound,
            address: "10.0.0.1:80",
            protocol: AppProtocol::Http1,
            tls: false,
        };
        let s = format_route("kite", line, "/orders/*", &iv);
        assert!(
            s.starts_with("[kite] 10.0.0.1:80 in route /orders/* - RPS: 10"),
            "{s}"
        );
        assert!(s.ends_with("Status: 200 9, 404 1"), "{s}");
    }

    #[test]
    fn line_format_matches_the_seed_and_shows_sub_millisecond_latency() {
        let mut hist = Histogram::default();
        for _ in 0..100 {
            hist.record(412_000);
        }
        let iv = Interval {
            secs: 3.0,
            requests: 306,
            status_5xx: 3,
            req_bytes: 30_600,
            resp_bytes: 3_060_000,
            hist,
            by_method: [(Method::Get, 306)].into(),
            ..Interval::default()
        };
        let line = format_line("TEST", Direction::Inbound, "127.0.0.1:8080", &iv);
        assert!(
            line.starts_with("[TEST] 127.0.0.1:8080 in - RPS: 102, Latency (p50/p90/p99): 0.4"),
            "{line}"
        );
        assert!(line.contains("Errors: 1.0%"), "{line}");
        assert!(line.contains("Req/Resp: 10.2 kB/1.02 MB per s"), "{line}");
        let out = format_line("T", Direction::Outbound, "[::1]:80", &Interval::default());
        assert!(out.contains("[::1]:80 out - RPS: 0, Latency (p50/p90/p99): -/-/- ms"));
    }

    #[test]
    fn lines_say_the_protocol_and_grpc_methods_and_statuses() {
        let mut hist = Histogram::default();
        for _ in 0..10 {
            hist.record(2_000_000);
        }
        let mut m = Interval {
            secs: 1.0,
            requests: 10,
            rpc_errors: 1,
            hist,
            by_status: [(0, 9), (5, 1)].into(),
            ..Interval::default()
        };
        let mut ep = m.clone();
        ep.by_status = [(0, 9), (5, 1), (kite_common::maps::GRPC_STATUS_UNKNOWN, 2)].into();
        ep.requests = 12;
        m.set_secs(1.0);
        let line = Line {
            dir: Direction::Inbound,
            address: "127.0.0.1:50051",
            protocol: AppProtocol::Grpc,
            tls: true,
        };
        let out = format_endpoint("T", line, &ep);
        // The seed's prefix stays, so scripts matching `address in - RPS:` keep working.
        assert!(
            out.starts_with("[T] 127.0.0.1:50051 in - RPS: 12,"),
            "{out}"
        );
        assert!(
            out.ends_with(", Protocol: gRPC+TLS, Status: OK 9, NOT_FOUND 1, unknown 2"),
            "{out}"
        );
        let out = format_method("T", line, "helloworld.Greeter/SayHello", &m);
        assert!(
            out.starts_with("[T] 127.0.0.1:50051 in rpc helloworld.Greeter/SayHello - RPS: 10, Latency (p50/p90/p99): 2.0"),
            "{out}"
        );
        assert!(out.contains("Errors: 10.0%"), "{out}");
        assert!(out.ends_with("Status: OK 9, NOT_FOUND 1"), "{out}");
        let http = Line {
            protocol: AppProtocol::Http2,
            tls: false,
            ..line
        };
        assert!(format_endpoint("T", http, &Interval::default()).ends_with(", Protocol: HTTP/2"));
    }

    #[test]
    fn rejects_bad_intervals() {
        assert!(Args::try_parse_from(["kite-loader", "-s", "0"]).is_err());
        assert!(Args::try_parse_from(["kite-loader", "-s", "x"]).is_err());
        let a = Args::try_parse_from(["kite-loader", "-s", "3", "TEST", "-n", "2"]).unwrap();
        assert_eq!(
            (a.tag.as_str(), a.interval, a.count),
            ("TEST", 3.0, Some(2))
        );
    }
}
