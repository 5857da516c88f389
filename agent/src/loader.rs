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
    stats::{Collector, EndpointId, Interval},
};

/// Command line of `kite-loader`.
#[derive(Debug, Parser)]
#[command(
    name = "kite-loader",
    version,
    about = "Measure HTTP/1.x requests of a cgroup with eBPF and print per-endpoint RPS and latency",
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
}

/// One report line's key: the loader folds cgroups together.
type LineKey = (Direction, String);

/// Formats one endpoint line (without the log prefix).
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
    })?;
    kite.attach(&cgroup)?;
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
    let mut collector = Collector::new(start, 2);
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
        collector.update(now, kite.endpoints()?);
        reports += 1;
        let mut lines: BTreeMap<LineKey, Interval> = BTreeMap::new();
        for ep in collector.endpoints() {
            let EndpointId { direction, .. } = ep.id;
            lines
                .entry((direction, ep.id.address()))
                .or_default()
                .merge(&ep.last);
        }
        let mut printed = 0;
        for ((dir, address), iv) in &lines {
            if iv.requests > 0 || args.all {
                log::info!(target: "kite_loader", "{}", format_line(&args.tag, *dir, address, iv));
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
