//! `kite-tui` end to end, as root: a real nginx in a test cgroup, a real Kite agent measuring
//! it (run in this process through `kite_agent::daemon::run`, so `cargo test -p kite-tui`
//! always runs the agent of this checkout), bounded loopback load, and the real `kite-tui`
//! binary, in a real terminal (tmux) for the dashboard and as a command for `--once`.
//!
//! Without root every test skips with a message, unless `KITE_REQUIRE_EBPF=1`, where that is
//! a failure. Everything made here (cgroups, servers, agents, tmux servers) goes away when its
//! guard drops, also when a test fails.

mod agent;
mod dashboard;
mod once;
mod prom_view;
mod prometheus;
mod routes;
mod stale;
mod tmux;

/// The binary under test.
pub const TUI: &str = env!("CARGO_BIN_EXE_kite-tui");

/// Parses a rate as kite-tui prints it: `950`, `12.3`, `9.50k`, `1.20M`.
pub fn parse_rate(s: &str) -> Option<f64> {
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        'G' => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

#[test]
fn rates_parse() {
    assert_eq!(parse_rate("950"), Some(950.0));
    assert_eq!(parse_rate("9.50k"), Some(9500.0));
    assert_eq!(parse_rate("-"), None);
}
