//! `kite-bench`: Kite's cost and accuracy, measured on this machine, printed as Markdown.
//!
//! Every comparison alternates the baseline and the monitored runs within one invocation (the
//! order rotates each round), and reports ratios of medians, so a noisy shared machine still
//! gives stable figures. Everything runs on loopback with bounded durations.
//!
//! ```text
//! sudo ./bench/run.sh                       # everything, writes docs/benchmarks.md
//! kite-bench overhead --rounds 5 --secs 5   # one part
//! ```

mod accuracy;
mod agent_cost;
mod micro_h2;
mod microbench;
mod overhead;
mod overhead_h2;
mod report;
mod tls_cost;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

/// Command line.
#[derive(Parser)]
#[command(
    name = "kite-bench",
    about = "Kite's overhead, agent cost and accuracy on this machine"
)]
struct Args {
    #[command(subcommand)]
    what: What,
    /// Write the Markdown report here as well (e.g. docs/benchmarks.md).
    #[arg(long, global = true)]
    write: Option<PathBuf>,
}

#[derive(Subcommand)]
enum What {
    /// nginx + wrk: throughput and latency unmonitored vs with Kite; eBPF ns per request.
    Overhead(overhead::Opts),
    /// BPF_PROG_TEST_RUN on canned packets: the programs' ns per packet, case by case.
    Micro(microbench::Opts),
    /// kite-agent CPU and memory at several request rates and endpoint counts.
    Agent(agent_cost::Opts),
    /// Kite's counts, RPS and percentiles next to the load generators' own.
    Accuracy,
    /// Where the OpenSSL probes' HTTPS cost goes: entry, return and map work apart.
    TlsCost(tls_cost::Opts),
    /// All of the above.
    All {
        #[command(flatten)]
        micro: microbench::Opts,
        #[command(flatten)]
        overhead: overhead::Opts,
        #[command(flatten)]
        agent: agent_cost::Opts,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("kite-bench: run as root (it loads eBPF programs and makes cgroups)");
        return ExitCode::FAILURE;
    }
    // Kernel BPF run-time statistics, for as long as the benchmark runs.
    let _stats = match kite_agent::ebpf::enable_run_time_stats() {
        Ok(fd) => Some(fd),
        Err(e) => {
            eprintln!("kite-bench: BPF statistics unavailable, eBPF ns/request will read 0: {e}");
            None
        }
    };
    let mut md = report::header();
    match args.what {
        What::Overhead(o) => md += &overhead::run(&o),
        What::Micro(o) => match microbench::run(&o) {
            Ok(s) => md += &s,
            Err(e) => {
                eprintln!("kite-bench micro: {e}");
                return ExitCode::FAILURE;
            }
        },
        What::Agent(o) => md += &agent_cost::run(&o),
        What::Accuracy => md += &accuracy::run(),
        What::TlsCost(o) => match tls_cost::available() {
            Ok(()) => md += &tls_cost::run(&o),
            Err(e) => {
                eprintln!("kite-bench tls-cost: {e}");
                return ExitCode::FAILURE;
            }
        },
        What::All {
            micro,
            overhead,
            agent,
        } => {
            match microbench::run(&micro) {
                Ok(s) => md += &s,
                Err(e) => eprintln!("kite-bench micro: {e}"),
            }
            md += &overhead::run(&overhead);
            md += &agent_cost::run(&agent);
            md += &accuracy::run();
        }
    }
    println!("{md}");
    if let Some(p) = args.write {
        if let Err(e) = std::fs::write(&p, &md) {
            eprintln!("kite-bench: writing {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
        eprintln!("kite-bench: wrote {}", p.display());
    }
    ExitCode::SUCCESS
}

/// Median of a non-empty list.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU time of a process so far (all its threads), from the scheduler's nanosecond counters
/// (`/proc/<pid>/task/*/schedstat`), finer than the 10 ms ticks of `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Resident memory of a process, bytes.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Run time and run count of every loaded program whose name starts with `kite_` but is not
/// the empty one (summed), per the kernel's BPF statistics.
pub fn kite_bpf_stats() -> (Duration, u64) {
    let mut t = Duration::ZERO;
    let mut n = 0;
    for p in aya::programs::loaded_programs().flatten() {
        let name = p.name_as_str().unwrap_or_default();
        if name.starts_with("kite_") && name != "kite_empty" {
            t += p.run_time();
            n += p.run_count();
        }
    }
    (t, n)
}
