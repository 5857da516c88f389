//! Ranges of the duration and size flags of `kite-agent` and `kite-loader`, checked when the
//! command line is parsed: an impossible value (`--interval 0`, which would poll in a busy
//! loop; a map of 0 entries; a duration that overflows the clock) is refused at startup with
//! one sentence naming the flag and its allowed range.

use std::{ops::RangeInclusive, time::Duration};

/// `--interval`: below 100 ms a poll of a full endpoint map takes longer than the interval.
pub const INTERVAL: RangeInclusive<Duration> = Duration::from_millis(100)..=MINUTES_10;
/// `--gone-grace`.
pub const GONE_GRACE: RangeInclusive<Duration> = Duration::ZERO..=HOURS_24;
/// `--endpoint-idle` (0: never; the check below allows 0 or this range).
pub const ENDPOINT_IDLE: RangeInclusive<Duration> = Duration::from_secs(1)..=DAYS_30;
/// `--idle-timeout`.
pub const IDLE_TIMEOUT: RangeInclusive<Duration> = Duration::from_secs(1)..=HOURS_1;
/// `--header-timeout`.
pub const HEADER_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(100)..=MINUTES_10;
/// `--shutdown-timeout`.
pub const SHUTDOWN_TIMEOUT: RangeInclusive<Duration> = Duration::ZERO..=MINUTES_10;

/// `--max-sockets` (a count the programs keep, not a preallocated map).
pub const MAX_SOCKETS: RangeInclusive<u32> = 1..=16_777_216;
/// `--max-endpoints` (the kernel map's size).
pub const MAX_ENDPOINTS: RangeInclusive<u32> = 16..=262_144;
/// `--endpoint-budget` (0: the default).
pub const ENDPOINT_BUDGET: RangeInclusive<u32> = 0..=262_144;
/// `--history`: the worst-case memory ([`super::Config::worst_case_memory`]) counts 60 points
/// per endpoint in the state and in every Watch snapshot; more would multiply both.
pub const HISTORY: RangeInclusive<usize> = 1..=crate::stats::DEFAULT_HISTORY;
/// `--max-series`.
pub const MAX_SERIES: RangeInclusive<usize> = 1..=262_144;
/// `--max-watch-streams`.
pub const MAX_WATCH_STREAMS: RangeInclusive<usize> = 1..=1_024;
/// `--max-scrapes`.
pub const MAX_SCRAPES: RangeInclusive<usize> = 1..=64;
/// `--max-connections`.
pub const MAX_CONNECTIONS: RangeInclusive<usize> = 1..=65_536;
/// `kite-loader --count`.
pub const LOADER_COUNT: RangeInclusive<u64> = 1..=u32::MAX as u64;
/// `kite-loader --interval`, seconds.
pub const LOADER_INTERVAL_SECS: RangeInclusive<f64> = 0.1..=3_600.0;

const MINUTES_10: Duration = Duration::from_secs(600);
const HOURS_1: Duration = Duration::from_secs(3_600);
const HOURS_24: Duration = Duration::from_secs(86_400);
const DAYS_30: Duration = Duration::from_secs(30 * 86_400);

fn human(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn duration_in(s: &str, range: &RangeInclusive<Duration>) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!(
            "{e}; expected a duration such as 500ms, 2s or 1m between {} and {}",
            human(*range.start()),
            human(*range.end())
        )
    })?;
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "must be between {} and {}",
            human(*range.start()),
            human(*range.end())
        ))
    }
}

fn count_in<T>(s: &str, range: &RangeInclusive<T>) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let v: T = s.trim().parse().map_err(|_| {
        format!(
            "expected a whole number between {} and {}",
            range.start(),
            range.end()
        )
    })?;
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "must be between {} and {}",
            range.start(),
            range.end()
        ))
    }
}

/// Parses `--interval`.
pub fn interval(s: &str) -> Result<Duration, String> {
    duration_in(s, &INTERVAL)
}

/// Parses `--gone-grace`.
pub fn gone_grace(s: &str) -> Result<Duration, String> {
    duration_in(s, &GONE_GRACE)
}

/// Parses `--endpoint-idle`: 0 (never) or within [`ENDPOINT_IDLE`].
pub fn endpoint_idle(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Ok(d),
        _ => duration_in(s, &ENDPOINT_IDLE).map_err(|e| format!("{e} (or 0: never)")),
    }
}

/// Parses `--idle-timeout`.
pub fn idle_timeout(s: &str) -> Result<Duration, String> {
    duration_in(s, &IDLE_TIMEOUT)
}

/// Parses `--header-timeout`.
pub fn header_timeout(s: &str) -> Result<Duration, String> {
    duration_in(s, &HEADER_TIMEOUT)
}

/// Parses `--shutdown-timeout`.
pub fn shutdown_timeout(s: &str) -> Result<Duration, String> {
    duration_in(s, &SHUTDOWN_TIMEOUT)
}

/// Parses `--max-sockets`.
pub fn max_sockets(s: &str) -> Result<u32, String> {
    count_in(s, &MAX_SOCKETS)
}

/// Parses `--max-endpoints`.
pub fn max_endpoints(s: &str) -> Result<u32, String> {
    count_in(s, &MAX_ENDPOINTS)
}

/// Parses a switch (`--routes`): `on` or `off`.
pub fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?} is neither on nor off")),
    }
}

/// Parses `--route`.
pub fn route_pattern(s: &str) -> Result<crate::route_pattern::RoutePattern, String> {
    crate::route_pattern::RoutePattern::parse(s)
}

/// Parses `--endpoint-budget`.
pub fn endpoint_budget(s: &str) -> Result<u32, String> {
    count_in(s, &ENDPOINT_BUDGET).map_err(|e| format!("{e} (0: an eighth of --max-endpoints)"))
}

/// Parses `--history`.
pub fn history(s: &str) -> Result<usize, String> {
    count_in(s, &HISTORY)
}

/// Parses `--max-series`.
pub fn max_series(s: &str) -> Result<usize, String> {
    count_in(s, &MAX_SERIES)
}

/// Parses `--max-watch-streams`.
pub fn max_watch_streams(s: &str) -> Result<usize, String> {
    count_in(s, &MAX_WATCH_STREAMS)
}

/// Parses `--max-scrapes`.
pub fn max_scrapes(s: &str) -> Result<usize, String> {
    count_in(s, &MAX_SCRAPES)
}

/// Parses `--max-connections`.
pub fn max_connections(s: &str) -> Result<usize, String> {
    count_in(s, &MAX_CONNECTIONS)
}

/// Parses `kite-loader --count`.
pub fn loader_count(s: &str) -> Result<u64, String> {
    count_in(s, &LOADER_COUNT)
}

/// Parses `kite-loader --interval` (seconds, fractions allowed).
pub fn loader_interval(s: &str) -> Result<f64, String> {
    let r = &LOADER_INTERVAL_SECS;
    match s.trim().parse::<f64>() {
        Ok(v) if r.contains(&v) => Ok(v),
        _ => Err(format!(
            "expected a number of seconds between {} and {}",
            r.start(),
            r.end()
        )),
    }
}

/// The budget given explicitly must fit in the map: a sentence naming both flags otherwise.
pub fn check_budget(max_endpoints: u32, endpoint_budget: u32) -> Result<(), String> {
    if endpoint_budget > max_endpoints {
        return Err(format!(
            "--endpoint-budget {endpoint_budget} is larger than --max-endpoints {max_endpoints}: \
             it must be between 1 and --max-endpoints (or 0: an eighth of --max-endpoints)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_absurd_values_are_refused_with_the_range() {
        assert_eq!(interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(interval("0").unwrap_err(), "must be between 100ms and 10m");
        assert_eq!(interval("0s").unwrap_err(), "must be between 100ms and 10m");
        assert!(
            interval("1000000y")
                .unwrap_err()
                .contains("between 100ms and 10m")
        );
        assert!(
            interval("fast")
                .unwrap_err()
                .contains("between 100ms and 10m")
        );
        assert_eq!(endpoint_idle("0"), Ok(Duration::ZERO));
        assert!(endpoint_idle("10ms").unwrap_err().contains("(or 0: never)"));
        assert_eq!(gone_grace("0s"), Ok(Duration::ZERO));
        assert_eq!(max_endpoints("16384"), Ok(16_384));
        assert_eq!(
            max_endpoints("0").unwrap_err(),
            "must be between 16 and 262144"
        );
        assert!(
            max_endpoints("-1")
                .unwrap_err()
                .contains("between 16 and 262144")
        );
        assert_eq!(max_series("0").unwrap_err(), "must be between 1 and 262144");
        assert_eq!(loader_interval("0.5"), Ok(0.5));
        assert!(loader_interval("1e300").is_err());
        assert!(loader_interval("NaN").is_err());
        assert!(
            check_budget(4096, 8192)
                .unwrap_err()
                .contains("--endpoint-budget")
        );
        assert!(check_budget(4096, 0).is_ok());
    }
}
