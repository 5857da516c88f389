//! What the node agent itself costs: CPU and memory of `kite-agent` at several request rates
//! and with few or many endpoints. The agent's work per poll depends on the number of
//! endpoint histograms, not on the request rate (requests are aggregated in the kernel).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use kite_testkit::{Load, Place, TestCgroup, client, free_port, nginx_on, wrk_for};

use crate::{cpu_time, overhead::sibling, report, rss};

/// Options.
#[derive(clap::Args, Clone)]
pub struct Opts {
    /// Seconds each agent measurement lasts.
    #[arg(long, default_value_t = 10)]
    pub agent_secs: u64,
    /// Scrapes per scrape-cost measurement (one a second, each freshly encoded).
    #[arg(long, default_value_t = 5)]
    pub scrapes: usize,
}

struct Agent {
    child: Child,
    metrics: SocketAddr,
    dir: std::path::PathBuf,
}

impl Agent {
    fn start(cgroup: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kite-bench-agent-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(sibling("kite-agent"))
            .args(["--cgroup", cgroup, "--kube", "off", "--interval", "1s"])
            // The cgroup may hold the whole map: 10 000 endpoints of one nginx.
            .arg(format!(
                "--endpoint-budget={}",
                kite_agent::ebpf::Options::default().max_endpoints
            ))
            .arg(format!("--grpc-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--metrics-addr={metrics}"))
            .arg(format!("--socket={}", dir.join("kite.sock").display()))
            .arg(format!("--state-dir={}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kite-agent");
        let a = Self {
            child,
            metrics,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(a.metrics).is_err() {
            assert!(Instant::now() < deadline, "kite-agent did not start");
            thread::sleep(Duration::from_millis(100));
        }
        a
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kite_map_entries{map="endpoints"}` from /metrics, and the size of the exposition.
    fn endpoint_entries(&self) -> (u64, usize) {
        let s = scrape(self.metrics, None);
        let n = s
            .body
            .lines()
            .find(|l| l.starts_with("kite_map_entries{map=\"endpoints\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (n, s.bytes)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `Accept` header with which Prometheus asks for the protobuf format (native histograms).
const ACCEPT_PROTOBUF: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

/// One `/metrics` answer.
struct Scrape {
    content_type: String,
    bytes: usize,
    /// The body when it is text (empty for protobuf).
    body: String,
}

/// `GET /metrics` (HTTP/1.0, read to the end) with an optional `Accept` header.
fn scrape(addr: SocketAddr, accept: Option<&str>) -> Scrape {
    use std::io::{Read as _, Write as _};
    let mut out = Vec::new();
    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
        let _ = write!(s, "GET /metrics HTTP/1.0\r\n{accept}\r\n");
        let _ = s.read_to_end(&mut out);
    }
    let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Scrape {
            content_type: String::new(),
            bytes: 0,
            body: String::new(),
        };
    };
    let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type:"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let body = &out[head_end + 4..];
    Scrape {
        bytes: body.len(),
        body: if content_type.starts_with("text/") {
            String::from_utf8_lossy(body).into_owned()
        } else {
            String::new()
        },
        content_type,
    }
}

/// What serving `/metrics` costs at one endpoint count.
struct ScrapeRow {
    endpoints: u64,
    /// Exported `http_server_request_duration` label sets (`_count` lines of the text).
    series: usize,
    text_bytes: usize,
    text_ms: f64,
    /// `None` when the agent answers the protobuf `Accept` with text (no native format).
    native: Option<(usize, f64)>,
}

/// Agent CPU over one second that ends with a scrape (`Some(accept)`, `None` in it: no
/// `Accept` header) or without one (`None`), ms, and the scrape.
fn second(agent: &Agent, scrape_with: Option<Option<&str>>) -> (f64, Option<Scrape>) {
    let cpu0 = cpu_time(agent.pid());
    thread::sleep(Duration::from_millis(1000));
    let got = scrape_with.map(|accept| scrape(agent.metrics, accept));
    ((cpu_time(agent.pid()) - cpu0).as_secs_f64() * 1e3, got)
}

/// Scrape cost at the agent's current endpoints, classic text and native (protobuf): `n`
/// rounds of three seconds, one without a scrape, one ending in a text scrape, one in a
/// protobuf scrape (each a poll apart, so each scrape is encoded, not served from the cache).
/// CPU per scrape is the mean of its seconds minus the mean of the unscraped ones; the
/// rounds interleave them so a drift of the polls' own cost (histories filling up after new
/// endpoints) falls on all three alike.
fn scrape_cost(agent: &Agent, n: usize) -> ScrapeRow {
    let (mut idle, mut text_ms, mut native_ms) = (0.0, 0.0, 0.0);
    let (mut text, mut native) = (None, None);
    for _ in 0..n {
        idle += second(agent, None).0;
        let (ms, got) = second(agent, Some(None));
        text_ms += ms;
        text = got;
        let (ms, got) = second(agent, Some(Some(ACCEPT_PROTOBUF)));
        native_ms += ms;
        native = got;
    }
    let per = |ms: f64| ((ms - idle) / n as f64).max(0.0);
    let (text_ms, native_ms) = (per(text_ms), per(native_ms));
    let (text, native) = (text.expect("n > 0"), native.expect("n > 0"));
    let endpoints = agent.endpoint_entries().0;
    let series = text
        .body
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .count();
    let row = ScrapeRow {
        endpoints,
        series,
        text_bytes: text.bytes,
        text_ms,
        native: native
            .content_type
            .contains("protobuf")
            .then_some((native.bytes, native_ms)),
    };
    eprintln!(
        "  scrape: {:>6} endpoints {:>5} series text {:>6.2} MB {:>6.1} ms CPU; native {}",
        row.endpoints,
        row.series,
        row.text_bytes as f64 / 1e6,
        row.text_ms,
        row.native.map_or("not served".into(), |(b, ms)| format!(
            "{:.2} MB {ms:.1} ms CPU",
            b as f64 / 1e6
        )),
    );
    row
}

/// Addresses 127.1.x.y: `n` distinct server endpoints on one nginx listening on 0.0.0.0.
fn addrs(n: usize, port: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250 + 1) as u8], port)))
        .collect()
}

struct Row {
    scenario: String,
    rps: f64,
    endpoints: u64,
    mcpu: f64,
    rss: u64,
    scrape: usize,
}

fn measure(agent: &Agent, secs: u64, load: impl FnOnce(Instant) -> f64 + Send) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let cpu0 = cpu_time(agent.pid());
    let t0 = Instant::now();
    let rps = thread::scope(|s| s.spawn(|| load(deadline)).join().unwrap());
    let wall = t0.elapsed().as_secs_f64();
    let mcpu = (cpu_time(agent.pid()) - cpu0).as_secs_f64() / wall * 1000.0;
    (rps, mcpu)
}

/// Runs the agent benchmark; returns its Markdown section.
pub fn run(o: &Opts) -> String {
    let cg = TestCgroup::new("bench-agent");
    let port = free_port();
    let _nginx = nginx_on(Place::in_cgroup(&cg), port, &["0.0.0.0"]);
    let agent = Agent::start(&cg.cgroup.path);
    let secs = o.agent_secs;
    let ten = addrs(10, port);
    let mut rows = Vec::new();
    let mut scrapes = Vec::new();
    let mut row = |scenario: &str, (rps, mcpu): (f64, f64), agent: &Agent| {
        thread::sleep(Duration::from_millis(1500));
        // RSS before the scrape below: rendering thousands of histograms takes tens of
        // megabytes for a moment (reported separately).
        let rss = rss(agent.pid());
        let (endpoints, scrape) = agent.endpoint_entries();
        let r = Row {
            scenario: scenario.into(),
            rps,
            endpoints,
            mcpu,
            rss,
            scrape,
        };
        eprintln!(
            "  agent: {:<34} {:>8.0} rps {:>6} endpoints {:>6.1} mCPU {:>5.1} MiB",
            r.scenario,
            r.rps,
            r.endpoints,
            r.mcpu,
            r.rss as f64 / 1048576.0
        );
        rows.push(r);
    };
    row(
        "idle",
        measure(&agent, secs, |d| {
            thread::sleep(d.saturating_duration_since(Instant::now()));
            0.0
        }),
        &agent,
    );
    for (name, per_conn_rate) in [
        ("≈1k RPS, 10 endpoints", 100.0),
        ("≈10k RPS, 10 endpoints", 1000.0),
    ] {
        let r = measure(&agent, secs, |deadline| {
            let rep = client(&Load {
                addr: ten[0],
                more_addrs: &ten[1..],
                conns: 10,
                per_conn: usize::MAX,
                pace: Some(Duration::from_secs_f64(1.0 / per_conn_rate)),
                deadline: Some(deadline),
                ..Load::default()
            });
            rep.rps()
        });
        row(name, r, &agent);
    }
    scrapes.push(scrape_cost(&agent, o.scrapes));
    let url = format!("http://127.0.0.1:{port}/");
    let r = measure(&agent, secs, |_| {
        wrk_for(
            Place::default(),
            &url,
            2,
            32,
            Duration::from_secs(secs),
            &[],
        )
        .rps()
    });
    row("max RPS (wrk, 32 connections)", r, &agent);
    // 1 000 endpoints for the scrape cost (the first of the 10 000 below).
    let many = addrs(10_000, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.endpoint_entries().0 < 1_000 && Instant::now() < deadline {
        client(&Load {
            addr: many[0],
            more_addrs: &many[1..1_000],
            conns: 4,
            per_conn: 250,
            close: true,
            ..Load::default()
        });
        thread::sleep(Duration::from_millis(1500));
    }
    scrapes.push(scrape_cost(&agent, o.scrapes));
    // 10k endpoints: one request per connection, each to the next of 10 000 addresses.
    let r = measure(&agent, secs.max(10), |deadline| {
        client(&Load {
            addr: many[0],
            more_addrs: &many[1..],
            conns: 4,
            per_conn: usize::MAX,
            close: true,
            deadline: Some(deadline),
            ..Load::default()
        })
        .rps()
    });
    row("10k endpoints (new connection each)", r, &agent);
    scrapes.push(scrape_cost(&agent, o.scrapes));
    let r = measure(&agent, secs, |deadline| {
        client(&Load {
            addr: ten[0],
            more_addrs: &ten[1..],
            conns: 10,
            per_conn: usize::MAX,
            pace: Some(Duration::from_millis(10)),
            deadline: Some(deadline),
            ..Load::default()
        })
        .rps()
    });
    row("≈1k RPS after 10k endpoints exist", r, &agent);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Agent cost\n\n\
         `kite-agent` (1 s interval) on an nginx cgroup; CPU from /proc over each {secs} s \
         load, RSS after it. Endpoints are the kernel map's histogram entries (one per \
         address, method and status).\n"
    );
    md += &report::table(
        &[
            "load",
            "RPS",
            "endpoints",
            "agent mCPU",
            "agent RSS",
            "/metrics size",
        ],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.scenario.clone(),
                    format!("{:.0}", r.rps),
                    r.endpoints.to_string(),
                    format!("{:.1}", r.mcpu),
                    format!("{:.1} MiB", r.rss as f64 / 1048576.0),
                    format!("{:.1} MB", r.scrape as f64 / 1e6),
                ]
            })
            .collect::<Vec<_>>(),
    );
    md += &scrape_section(&scrapes, o.scrapes);
    md += &worst_case_section();
    md
}

fn scrape_section(rows: &[ScrapeRow], n: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Scrape cost\n\n\
         `/metrics` as Prometheus asks for it: classic text (no `Accept`), and native histograms \
         in the protobuf format (`Accept: {ACCEPT_PROTOBUF}`). CPU per scrape: {n} rounds of \
         three seconds, one unscraped, one ending in a text scrape, one in a protobuf scrape \
         (each a poll apart, so each is encoded, not served from the cache); the agent's mean \
         CPU over a scraped second minus its mean over an unscraped one (interleaved, so the \
         polls' own drift falls on all alike). Series: exported `http_server_request_duration` label sets, at most \
         `--max-series` ({}) plus one `otel_metric_overflow=\"true\"` series (before the cap: \
         64.2 MB of text at 10 000 endpoints). Every endpoint's label set is still built and \
         folded at each encoding, hence more CPU at 10 000 endpoints for the same output.\n",
        kite_agent::daemon::metrics::DEFAULT_MAX_SERIES
    );
    md += &report::table(
        &[
            "endpoints",
            "series",
            "classic text",
            "CPU per text scrape",
            "native (protobuf)",
            "CPU per native scrape",
        ],
        &rows
            .iter()
            .map(|r| {
                let (nb, nms) = r
                    .native
                    .map_or(("not served".into(), "–".into()), |(b, ms)| {
                        (format!("{:.2} MB", b as f64 / 1e6), format!("{ms:.1} ms"))
                    });
                vec![
                    r.endpoints.to_string(),
                    r.series.to_string(),
                    format!("{:.2} MB", r.text_bytes as f64 / 1e6),
                    format!("{:.1} ms", r.text_ms),
                    nb,
                    nms,
                ]
            })
            .collect::<Vec<_>>(),
    );
    md
}

/// The agent's worst-case memory by the formula of `Config::worst_case_memory`, for the
/// defaults and the DaemonSet's arguments (the figures behind it are measured by the
/// `hostile` kernel tests and the rows above).
pub fn worst_case_section() -> String {
    use clap::Parser as _;
    use kite_agent::daemon::{Config, sizes};
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n### Worst-case memory\n\n\
         Whatever clients do, `kite-agent` holds at most `BASE + E × (STATE + ENCODING + \
         SNAPSHOT × 2W) + EXPOSITION × (min(E, M) + 2) × (S + 3) + 2C × CONN + 1024 × ENROLL` \
         bytes: E `--max-endpoints`, M `--max-series` (plus an overflow series per family), S \
         `--max-scrapes` (expositions alive, plus one per format when none of it is cached), \
         W `--max-watch-streams` (a snapshot being built and one in the HTTP/2 buffer each), C \
         `--max-connections` per TCP listener; BASE {} MiB, STATE {} KiB, ENCODING {} KiB, \
         EXPOSITION {} KiB per label set (5.8 KB measured with a cgroup label, 10.2 KB with \
         Kubernetes names), SNAPSHOT {} KiB (0.2 KB encoded measured with sparse histograms), \
         CONN {} KiB, ENROLL {} KiB (`kite_agent::daemon::sizes`). The DaemonSet's limit is \
         checked against it (`webhook/tests/manifests.rs`).\n",
        sizes::BASE >> 20,
        sizes::STATE_PER_ENDPOINT >> 10,
        sizes::ENCODING_PER_ENDPOINT >> 10,
        sizes::EXPOSITION_PER_SERIES >> 10,
        sizes::SNAPSHOT_PER_ENDPOINT >> 10,
        sizes::PER_CONNECTION >> 10,
        sizes::PER_ENROLLMENT >> 10,
    );
    let rows: Vec<Vec<String>> = [
        ("defaults", vec![]),
        (
            "DaemonSet (deploy/base/agent.yaml)",
            vec!["--max-scrapes=1", "--max-watch-streams=4"],
        ),
        ("4096 endpoints, defaults", vec!["--max-endpoints=4096"]),
    ]
    .into_iter()
    .map(|(name, args)| {
        let c = Config::parse_from(std::iter::once("kite-agent").chain(args));
        vec![
            name.to_string(),
            c.max_endpoints.to_string(),
            c.max_scrapes.to_string(),
            c.max_watch_streams.to_string(),
            c.max_connections.to_string(),
            format!("{} MiB", c.worst_case_memory() >> 20),
        ]
    })
    .collect();
    md += &report::table(&["configuration", "E", "S", "W", "C", "worst case"], &rows);
    md
}
