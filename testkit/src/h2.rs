//! HTTP/2 peers for the HTTP/2 tests (issue 13): Debian's nghttp2 tools (`nghttpd` server,
//! `h2load` load generator, each with its own HPACK encoder) and an h2c server on Go's own
//! HTTP/2 stack with known delays (`servers/h2c_delay.go`: nghttpd has no delay option).

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{Place, Proc, command, servers, spawn, unique, wait_for_port};

/// `nghttpd` serving a directory with `index.html` (a few bytes), plain h2c (prior knowledge
/// and `Upgrade: h2c`), on 127.0.0.1:`port`. Ready when this returns; the directory goes
/// with it.
pub struct Nghttpd {
    pub proc: Proc,
    dir: PathBuf,
}

impl Drop for Nghttpd {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn nghttpd(place: Place<'_>, port: u16) -> Nghttpd {
    let dir = std::env::temp_dir().join(unique("kite-nghttpd"));
    fs::create_dir_all(&dir).expect("nghttpd docroot");
    fs::write(dir.join("index.html"), "hello from nghttpd\n").expect("index.html");
    let port_s = port.to_string();
    let proc = spawn(
        place,
        &[
            "nghttpd",
            "--no-tls",
            "-a",
            "127.0.0.1",
            "-d",
            dir.to_str().unwrap(),
            &port_s,
        ],
    );
    wait_for_port(&format!("127.0.0.1:{port}"), place.netns);
    Nghttpd { proc, dir }
}

/// Builds `servers/h2c_delay.go` once per test process, offline (GOPATH mode over Debian's
/// Go sources in /usr/share/gocode: golang.org/x/net/http2), into `target/kite-h2c-delay`.
pub fn h2c_delay_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        servers::go_build(
            "h2c_delay.go",
            "kite-h2c-delay",
            "golang-go golang-golang-x-net-dev",
        )
    })
    .clone()
}

/// The Go h2c server on 127.0.0.1:`port`: `/d/<ms>` answers 200 after `<ms>` ms,
/// `/s/<code>` with that status. Ready when this returns.
pub fn h2c_delay(place: Place<'_>, port: u16) -> Proc {
    h2c_delay_on(place, &format!("127.0.0.1:{port}"))
}

/// [`h2c_delay`] on `addr` (`ip:port`, e.g. in a network namespace of an impaired link).
pub fn h2c_delay_on(place: Place<'_>, addr: &str) -> Proc {
    let bin = h2c_delay_binary();
    let p = spawn(place, &[bin.to_str().unwrap(), addr]);
    wait_for_port(addr, place.netns);
    p
}

/// What `h2load` reported: its own summary line and, from its `--log-file`, every request's
/// status and time (request start → end of response).
#[derive(Debug, Clone, Default)]
pub struct H2load {
    pub total: u64,
    pub started: u64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    /// Requests per status code (from the log file).
    pub statuses: BTreeMap<u16, u64>,
    /// Each logged request's time, sorted.
    pub times: Vec<Duration>,
    pub wall_started: Option<Instant>,
    pub wall_finished: Option<Instant>,
}

impl H2load {
    /// The `q` quantile of the logged request times (nearest rank).
    pub fn quantile(&self, q: f64) -> Duration {
        assert!(!self.times.is_empty(), "h2load logged no request");
        let i = ((q * self.times.len() as f64).ceil() as usize).clamp(1, self.times.len()) - 1;
        self.times[i]
    }
}

/// Runs `h2load -n <n> -c <c> -m <m> [extra...] <urls...>` (inside `place`) to its end
/// (bounded by `-T`-free runs of at most 120 s: its own `--duration` is not used) and parses
/// its report. `h2load` sends requests to the URLs in turn.
pub fn h2load(place: Place<'_>, urls: &[String], n: u64, c: u32, m: u32, extra: &[&str]) -> H2load {
    let log = std::env::temp_dir().join(unique("kite-h2load.log"));
    let n_s = n.to_string();
    let c_s = c.to_string();
    let m_s = m.to_string();
    let log_arg = format!("--log-file={}", log.display());
    let mut args: Vec<&str> = vec![
        "timeout", "120", "h2load", "-n", &n_s, "-c", &c_s, "-m", &m_s,
    ];
    args.push(&log_arg);
    args.extend_from_slice(extra);
    args.extend(urls.iter().map(String::as_str));
    let started = Instant::now();
    let out = command(place, &args)
        .output()
        .unwrap_or_else(|e| panic!("run h2load (install nghttp2-client): {e}"));
    let finished = Instant::now();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let logged = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&log);
    assert!(
        out.status.success(),
        "h2load failed: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = parse_summary(&text)
        .unwrap_or_else(|| panic!("no `requests:` line in h2load's output:\n{text}"));
    for line in logged.lines() {
        let mut f = line.split('\t');
        let (_, Some(status), Some(us)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Ok(status), Ok(us)) = (status.trim().parse::<u16>(), us.trim().parse::<u64>()) else {
            continue;
        };
        *r.statuses.entry(status).or_default() += 1;
        r.times.push(Duration::from_micros(us));
    }
    r.times.sort();
    r.wall_started = Some(started);
    r.wall_finished = Some(finished);
    r
}

/// h2load's `requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed, 0 errored,
/// 0 timeout` line.
fn parse_summary(text: &str) -> Option<H2load> {
    let line = text.lines().find(|l| l.starts_with("requests:"))?;
    let mut r = H2load::default();
    for part in line.trim_start_matches("requests:").split(',') {
        let mut w = part.split_whitespace();
        let (Some(v), Some(k)) = (w.next(), w.next()) else {
            continue;
        };
        let v: u64 = v.parse().ok()?;
        match k {
            "total" => r.total = v,
            "started" => r.started = v,
            "done" => r.done = v,
            "succeeded" => r.succeeded = v,
            "failed" => r.failed = v,
            "errored" => r.errored = v,
            "timeout" => r.timeout = v,
            _ => {}
        }
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_parsed() {
        let r = parse_summary(
            "finished in 1.2s\nrequests: 200 total, 199 started, 198 done, 197 succeeded, 1 failed, 2 errored, 3 timeout\n",
        )
        .unwrap();
        assert_eq!(
            (
                r.total,
                r.started,
                r.done,
                r.succeeded,
                r.failed,
                r.errored,
                r.timeout
            ),
            (200, 199, 198, 197, 1, 2, 3)
        );
        assert!(parse_summary("nothing here").is_none());
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let r = H2load {
            times: (1..=100).map(Duration::from_millis).collect(),
            ..H2load::default()
        };
        assert_eq!(r.quantile(0.5), Duration::from_millis(50));
        assert_eq!(r.quantile(0.99), Duration::from_millis(99));
        assert_eq!(r.quantile(1.0), Duration::from_millis(100));
    }
}
