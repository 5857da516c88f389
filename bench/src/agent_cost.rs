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
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(self.metrics) else {
            return (0, 0);
        };
        let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        let n = body
            .lines()
            .find(|l| l.starts_with("kite_map_entries{map=\"endpoints\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (n, body.len())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    let _nginx = nginx_on(
        Place {
            cgroup: Some(&cg),
            ..Place::default()
        },
        port,
        &["0.0.0.0"],
    );
    let agent = Agent::start(&cg.cgroup.path);
    let secs = o.agent_secs;
    let ten = addrs(10, port);
    let mut rows = Vec::new();
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
    // 10k endpoints: one request per connection, each to the next of 10 000 addresses.
    let many = addrs(10_000, port);
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
    md += &worst_case_section();
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
         Whatever clients do, `kite-agent` holds at most `BASE + E × (STATE + EXPOSITION × (S + 1) \
         + SNAPSHOT × 2W) + 2C × CONN + 1024 × ENROLL` bytes: E `--max-endpoints`, S \
         `--max-scrapes` (expositions alive, plus one being encoded), W `--max-watch-streams` \
         (a snapshot being built and one in the HTTP/2 buffer each), C `--max-connections` per \
         TCP listener; BASE {} MiB, STATE {} KiB, EXPOSITION {} KiB (6.6 KB measured), SNAPSHOT \
         {} KiB (0.2 KB encoded measured with sparse histograms), CONN {} KiB, ENROLL {} KiB \
         (`kite_agent::daemon::sizes`). The DaemonSet's limit is checked against it \
         (`webhook/tests/manifests.rs`).\n",
        sizes::BASE >> 20,
        sizes::STATE_PER_ENDPOINT >> 10,
        sizes::EXPOSITION_PER_ENDPOINT >> 10,
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
