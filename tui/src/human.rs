//! Numbers for people, sized for table columns: latencies (`850ns`, `41.2µs`, `4.12ms`,
//! `1.50s`), rates (`950`, `9.50k`, `1.20M`), byte rates (`512B`, `1.50kB`) and percentages.
//!
//! Every value has three significant digits at most, so a column never needs more than six
//! characters.

/// Three significant digits: `1.23`, `12.3`, `123`.
fn sig3(v: f64) -> String {
    let a = v.abs();
    if a >= 99.95 {
        format!("{v:.0}")
    } else if a >= 9.995 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `v` scaled into the first unit where it stays below 1000 after rounding.
fn scaled(v: f64, units: &[(f64, &str)]) -> String {
    let mut chosen = units[0];
    for &(scale, unit) in units {
        chosen = (scale, unit);
        if (v / scale).abs() < 999.5 {
            break;
        }
    }
    format!("{}{}", sig3(v / chosen.0), chosen.1)
}

/// A latency in seconds with a fitting unit, `-` when there is none (an idle window).
pub fn latency(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if !s.is_finite() => "∞".into(),
        Some(s) if s <= 0.0 => "0".into(),
        Some(s) if s < 1e-6 => format!("{:.0}ns", s * 1e9),
        Some(s) => scaled(s, &[(1e-6, "µs"), (1e-3, "ms"), (1.0, "s")]),
    }
}

/// A count or rate with k/M/G suffixes: `0`, `0.50`, `12.3`, `950`, `9.50k`, `1.20M`.
pub fn rate(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    if v.abs() < 999.5 && v.fract() == 0.0 {
        return format!("{v:.0}");
    }
    scaled(v, &[(1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G")])
}

/// A byte count or byte rate with decimal units: `0B`, `512B`, `1.50kB`, `12.3MB`.
pub fn bytes(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0B".into();
    }
    if v.abs() < 999.5 {
        return format!("{v:.0}B");
    }
    scaled(
        v,
        &[
            (1.0, "B"),
            (1e3, "kB"),
            (1e6, "MB"),
            (1e9, "GB"),
            (1e12, "TB"),
        ],
    )
}

/// An age in whole units: `12s`, `3m05s`, `2h10m`.
pub fn age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A ratio as a percentage without the sign: `0.0`, `2.50`, `12.5`, `100`.
pub fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p == 0.0 || !p.is_finite() {
        "0.0".into()
    } else {
        sig3(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_pick_a_unit_and_three_digits() {
        assert_eq!(latency(None), "-");
        assert_eq!(latency(Some(0.0)), "0");
        assert_eq!(latency(Some(850e-9)), "850ns");
        assert_eq!(latency(Some(41.2e-6)), "41.2µs");
        assert_eq!(latency(Some(412e-6)), "412µs");
        assert_eq!(latency(Some(999.7e-6)), "1.00ms");
        assert_eq!(latency(Some(4.123e-3)), "4.12ms");
        assert_eq!(latency(Some(1.5)), "1.50s");
        assert_eq!(latency(Some(61.0)), "61.0s");
        assert_eq!(latency(Some(f64::INFINITY)), "∞");
    }

    #[test]
    fn rates_use_si_suffixes() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(0.5), "0.50");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(950.0), "950");
        assert_eq!(rate(999.7), "1.00k");
        assert_eq!(rate(9_500.0), "9.50k");
        assert_eq!(rate(95_000.0), "95.0k");
        assert_eq!(rate(1_200_000.0), "1.20M");
        assert_eq!(rate(3.2e9), "3.20G");
    }

    #[test]
    fn bytes_and_percentages() {
        assert_eq!(bytes(0.0), "0B");
        assert_eq!(bytes(512.0), "512B");
        assert_eq!(bytes(1_500.0), "1.50kB");
        assert_eq!(bytes(12_345_678.0), "12.3MB");
        assert_eq!(percent(0.0), "0.0");
        assert_eq!(percent(0.025), "2.50");
        assert_eq!(percent(0.125), "12.5");
        assert_eq!(percent(1.0), "100");
    }

    #[test]
    fn columns_never_exceed_six_characters() {
        let mut v: f64 = 1e-9;
        while v < 1e12 {
            // Kite's histogram ends at 64 s.
            let lat = latency(Some(v.min(999.0)));
            for s in [lat, rate(v), bytes(v), percent(v.min(1.0))] {
                assert!(s.chars().count() <= 6, "{v}: {s}");
            }
            v *= 1.37;
        }
    }
}
