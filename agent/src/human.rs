//! Numbers for people: latencies, rates, byte counts.

use std::time::Duration;

/// Milliseconds with three significant digits: `0.0412`, `0.412`, `4.12`, `41.2`, `412`.
pub fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms == 0.0 {
        "0".into()
    } else if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else if ms >= 0.1 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.4}")
    }
}

/// A duration with a fitting unit: `850ns`, `41.2µs`, `4.12ms`, `1.50s`.
pub fn duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{}{unit}", sig3(v))
}

/// A count or rate with k/M/G suffixes: `950`, `9.5k`, `95k`, `1.2M`.
pub fn si(v: f64) -> String {
    let (v, suffix) = if v.abs() < 1e3 {
        return if v.fract() == 0.0 || v.abs() >= 100.0 {
            format!("{v:.0}")
        } else {
            sig3(v)
        };
    } else if v.abs() < 1e6 {
        (v / 1e3, "k")
    } else if v.abs() < 1e9 {
        (v / 1e6, "M")
    } else {
        (v / 1e9, "G")
    };
    format!("{}{suffix}", sig3(v))
}

/// Bytes with decimal units: `512 B`, `1.5 kB`, `12 MB`.
pub fn bytes(v: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = v;
    let mut u = 0;
    while v.abs() >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[0])
    } else {
        format!("{} {}", sig3(v), units[u])
    }
}

/// Three significant digits, no trailing noise: `1.23`, `12.3`, `123`.
fn sig3(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(millis(Duration::from_micros(41)), "0.0410");
        assert_eq!(millis(Duration::from_micros(412)), "0.412");
        assert_eq!(millis(Duration::from_micros(4120)), "4.12");
        assert_eq!(millis(Duration::from_millis(50)), "50.0");
        assert_eq!(millis(Duration::from_millis(1500)), "1500");
        assert_eq!(millis(Duration::ZERO), "0");
        assert_eq!(duration(Duration::from_nanos(850)), "850ns");
        assert_eq!(duration(Duration::from_micros(41)), "41.0µs");
        assert_eq!(duration(Duration::from_millis(1500)), "1.50s");
        assert_eq!(si(950.0), "950");
        assert_eq!(si(2.5), "2.50");
        assert_eq!(si(9_500.0), "9.50k");
        assert_eq!(si(1_200_000.0), "1.20M");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1_500.0), "1.50 kB");
        assert_eq!(bytes(12_000_000.0), "12.0 MB");
    }
}
