//! Markdown report pieces.

use std::fmt::Write as _;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Title, machine and command.
pub fn header() -> String {
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "# Kite benchmarks\n");
    let _ = writeln!(
        s,
        "Measured {date} on {} CPUs ({cpu}), {mem_gib:.0} GiB, Linux {} (nested VM: absolute \
         figures are inflated; ratios measured in the same run are what to compare).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/sys/kernel/osrelease").trim(),
    );
    let _ = writeln!(
        s,
        "Reproduce: `sudo ./bench/run.sh` (installs nginx, wrk and the toolchain if missing, \
         builds in release mode, writes this file).\n"
    );
    s
}

/// A Markdown table.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(
        s,
        "|{}|",
        head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s.push('\n');
    s
}

/// `+1.2%`.
pub fn rel(kite: f64, truth: f64) -> String {
    if truth == 0.0 {
        return "–".into();
    }
    format!("{:+.1}%", (kite - truth) / truth * 100.0)
}
