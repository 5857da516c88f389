//! The dashboard in a real terminal (tmux, 160×40) against a real agent measuring nginx.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use kite_testkit::{Load, Place, TestCgroup, client, ebpf_available, free_port, nginx, serial};

use crate::{TUI, agent::InProcessAgent, parse_rate, tmux::Tmux};

/// Paced load on one address until `stop` (or a hard limit): returns (requests, seconds).
fn paced_load(addr: SocketAddr, conns: usize, pace: Duration, stop: Arc<AtomicBool>) -> (u64, f64) {
    let started = Instant::now();
    let hard_limit = started + Duration::from_secs(90);
    let per_burst = (Duration::from_secs(1).as_micros() / pace.as_micros()) as usize;
    let mut requests = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_limit {
        let r = client(&Load {
            addr,
            conns,
            per_conn: per_burst,
            pace: Some(pace),
            deadline: Some(hard_limit),
            ..Load::default()
        });
        requests += r.requests();
    }
    (requests, started.elapsed().as_secs_f64())
}

/// Load threads; stopped and joined on drop (also when the test fails, before the servers
/// go away).
pub(crate) struct Loads {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<(u64, f64)>>,
}

impl Loads {
    pub(crate) fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    pub(crate) fn start(&mut self, addr: &str, conns: usize, pace: Duration) {
        let (stop, addr) = (self.stop.clone(), addr.parse().unwrap());
        self.threads
            .push(thread::spawn(move || paced_load(addr, conns, pace, stop)));
    }

    /// Stops every load; (requests, seconds) of each.
    fn finish(mut self) -> Vec<(u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .drain(..)
            .map(|t| t.join().expect("load thread"))
            .collect()
    }
}

impl Drop for Loads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Row of `addr` on the screen: its fields split on spaces.
fn row<'a>(screen: &'a str, addr: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|t| t.contains(&addr) && t.contains(&"in"))
}

/// The RPS shown for `addr` (the field after the direction and the protocol, which must be
/// nginx's HTTP/1.1).
fn shown_rps(screen: &str, addr: &str) -> Option<f64> {
    let r = row(screen, addr)?;
    let i = r.iter().position(|f| *f == addr)?;
    if r.get(i + 2) != Some(&"HTTP/1.1") {
        return None;
    }
    parse_rate(r.get(i + 3)?)
}

/// Line number of `addr`'s row.
fn line_of(screen: &str, addr: &str) -> Option<usize> {
    screen
        .lines()
        .position(|l| l.split_whitespace().any(|f| f == addr))
}

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn dashboard_sorts_filters_opens_details_and_restores_the_terminal() {
    if !ebpf_available("dashboard_sorts_filters_opens_details_and_restores_the_terminal") {
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new("tui-e2e");
    let (busy_port, quiet_port) = (free_port(), free_port());
    let place = Place::in_cgroup(&cg);
    let _busy_srv = nginx(place, busy_port);
    let _quiet_srv = nginx(place, quiet_port);
    let agent = InProcessAgent::start(&cg, "1s");
    let busy = format!("127.0.0.1:{busy_port}");
    let quiet = format!("127.0.0.1:{quiet_port}");
    let dead = format!("127.0.0.1:{}", free_port());

    // 200 RPS (2 connections, one request each per 10 ms) and 20 RPS, loopback only.
    let mut loads = Loads::new();
    loads.start(&busy, 2, Duration::from_millis(10));
    loads.start(&quiet, 1, Duration::from_millis(50));

    let tmux = Tmux::new(160, 40);
    let saved = std::env::temp_dir().join(kite_testkit::unique("kite-tui-stty"));
    let _saved_guard = RemoveOnDrop(saved.clone());
    let saved = saved.display().to_string();
    tmux.text(&format!(
        "stty -g > {saved}; {TUI} --addr {} --addr {dead}; echo \"EXIT_CODE $?\"",
        agent.addr()
    ));
    tmux.keys(&["Enter"]);

    // Both endpoints, the agent that is down, and the busy one first (sorted by RPS).
    let s = tmux.wait_for("both endpoints with traffic", WAIT, |s| {
        shown_rps(s, &busy).is_some_and(|r| r > 50.0)
            && shown_rps(s, &quiet).is_some_and(|r| r > 5.0)
    });
    assert!(s.contains("RPS▼"), "{s}");
    assert!(
        s.contains(&format!("{dead} down")) && s.contains("refused"),
        "{s}"
    );
    assert!(s.contains("tui-test-node"), "{s}");
    assert!(line_of(&s, &busy) < line_of(&s, &quiet), "{s}");

    // The RPS shown against the load's own rate, over a few windows.
    let mut samples = Vec::new();
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(1000));
        if let Some(r) = shown_rps(&tmux.screen(), &busy) {
            samples.push(r);
        }
    }

    // Sorting: reverse, then columns by their digit (two agents: NODE 1, NAME 2, ENDPOINT 3,
    // DIR 4, PROTO 5, RPS 6, P50 7, P90 8, P99 9, ERR% 0), by > and s (the next column), and
    // back.
    tmux.keys(&["S"]);
    let s = tmux.wait_for("reversed RPS order", WAIT, |s| {
        s.contains("RPS▲") && line_of(s, &quiet) < line_of(s, &busy)
    });
    assert!(line_of(&s, &busy).is_some());
    tmux.keys(&["9"]);
    tmux.wait_for("sorted by p99", WAIT, |s| s.contains("P99▼"));
    tmux.keys(&["0"]);
    tmux.wait_for("sorted by errors", WAIT, |s| s.contains("ERR%▼"));
    tmux.keys(&[">"]);
    tmux.wait_for("sorted by 4xx", WAIT, |s| s.contains("4XX%▼"));
    tmux.keys(&["2"]);
    tmux.wait_for("sorted by name", WAIT, |s| s.contains("NAME▲"));
    tmux.keys(&["s"]);
    // ENDPOINT A to Z: the lower port first.
    let (low, high) = if busy_port < quiet_port {
        (&busy, &quiet)
    } else {
        (&quiet, &busy)
    };
    tmux.wait_for("sorted by endpoint", WAIT, |s| {
        s.contains("ENDPOINT▲") && line_of(s, low) < line_of(s, high)
    });
    tmux.keys(&["6"]);
    tmux.wait_for("sorted by RPS again", WAIT, |s| {
        s.contains("RPS▼") && line_of(s, &busy) < line_of(s, &quiet)
    });

    // The direction filter: nginx's endpoints are inbound.
    tmux.keys(&["d"]);
    tmux.wait_for("inbound only", WAIT, |s| {
        s.contains("in only") && line_of(s, &busy).is_some() && line_of(s, &quiet).is_some()
    });
    tmux.keys(&["d"]);
    tmux.wait_for("outbound only", WAIT, |s| {
        s.contains("out only") && line_of(s, &busy).is_none() && line_of(s, &quiet).is_none()
    });
    tmux.keys(&["d"]);
    tmux.wait_for("both directions", WAIT, |s| {
        !s.contains(" only") && line_of(s, &busy).is_some() && line_of(s, &quiet).is_some()
    });

    // Grouping: both nginx endpoints are one workload (their cgroup) inbound; the group's
    // percentiles need every member's histogram, which the stream is asked for again.
    tmux.keys(&["g"]);
    let group_line = |s: &str| -> Option<Vec<String>> {
        s.lines()
            .find(|l| l.contains("2 endpoints") && l.contains("HTTP/1.1"))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
    };
    let s = tmux.wait_for("grouped by workload, with percentiles", WAIT, |s| {
        s.contains("by workload")
            && group_line(s).is_some_and(|f| {
                let i = f
                    .iter()
                    .position(|x| x == "HTTP/1.1")
                    .unwrap_or(usize::MAX - 9);
                // RPS, P50 (P90, P99 follow): figures, not "-".
                f.get(i + 2).is_some_and(|p| p != "-" && p.ends_with('s'))
                    && f.get(i + 4).is_some_and(|p| p != "-" && p.ends_with('s'))
            })
    });
    let f = group_line(&s).unwrap();
    let i = f.iter().position(|x| x == "HTTP/1.1").unwrap();
    let group_rps = parse_rate(&f[i + 1]).expect("the group's RPS");
    assert!(group_rps > 150.0, "both endpoints' requests: {s}");
    assert!(line_of(&s, &busy).is_none(), "folded: {s}");
    // Enter shows its endpoints under it, Enter again folds it.
    tmux.keys(&["Home", "Enter"]);
    tmux.wait_for("the group's endpoints", WAIT, |s| {
        line_of(s, &busy).is_some() && line_of(s, &quiet).is_some() && s.contains("▾")
    });
    tmux.keys(&["Enter"]);
    tmux.wait_for("the group folded", WAIT, |s| {
        line_of(s, &busy).is_none() && s.contains("▸")
    });
    // By namespace (none known: one group), then endpoints again.
    tmux.keys(&["g"]);
    tmux.wait_for("grouped by namespace", WAIT, |s| {
        s.contains("by namespace") && s.contains("(no namespace)")
    });
    tmux.keys(&["g"]);
    tmux.wait_for("endpoints again", WAIT, |s| {
        !s.contains("by namespace") && line_of(s, &busy).is_some() && line_of(s, &quiet).is_some()
    });

    // Filtering: `/`, text, Enter keeps only the quiet endpoint; Esc clears.
    tmux.keys(&["/"]);
    tmux.text(&format!(":{quiet_port}"));
    tmux.keys(&["Enter"]);
    let applied = format!("filter \":{quiet_port}\"");
    let s = tmux.wait_for("only the quiet endpoint", WAIT, |s| {
        s.contains(&applied) && line_of(s, &quiet).is_some() && line_of(s, &busy).is_none()
    });
    assert!(s.contains("1/2 endpoints"), "{s}");
    tmux.keys(&["Escape"]);
    tmux.wait_for("the filter cleared", WAIT, |s| {
        line_of(s, &quiet).is_some() && line_of(s, &busy).is_some()
    });

    // Detail of the busy endpoint (first row), and back.
    tmux.keys(&["Home"]);
    tmux.keys(&["Enter"]);
    // History and histogram come from the focused endpoint's own `List`: bars with the
    // p50/p99 marks and a history of several windows.
    let s = tmux.wait_for(
        "the detail view with its histogram and history",
        WAIT,
        |s| {
            s.contains("Latency, last window")
                && s.contains("Status codes")
                && s.contains("◂p50")
                && !s.contains("RPS, last 0 windows")
                && !s.contains("RPS, last 1 windows")
        },
    );
    assert!(s.contains(&busy) && s.contains("inbound"), "{s}");
    assert!(s.lines().any(|l| l.trim_start().starts_with("200 ")), "{s}");
    assert!(s.contains("methods GET"), "{s}");
    assert!(
        s.contains("RPS, last") && s.contains("Latency p50 / p99"),
        "{s}"
    );
    tmux.keys(&["Escape"]);
    tmux.wait_for("the table again", WAIT, |s| s.contains("ENDPOINT"));

    // A smaller terminal: everything is laid out again, the footer on the last line.
    tmux.resize(100, 30);
    // (tmux may apply the width and the height in two steps: wait for the final layout.)
    tmux.wait_for("the 100×30 layout", WAIT, |s| {
        let lines: Vec<&str> = s.lines().collect();
        lines.len() == 30
            && lines[0].contains("endpoints")
            && lines[29].contains("q quit")
            && lines.iter().all(|l| l.chars().count() <= 100)
            && s.contains("ENDPOINT")
            && line_of(s, &busy).is_some()
    });
    tmux.resize(160, 40);
    tmux.wait_for("the 160×40 layout", WAIT, |s| {
        let lines: Vec<&str> = s.lines().collect();
        lines.len() == 40
            && lines[0].contains("endpoints")
            && lines[39].contains("q quit")
            && line_of(s, &busy).is_some()
    });

    // Pause and help.
    tmux.keys(&["Space"]);
    tmux.wait_for("paused", WAIT, |s| s.contains("PAUSED"));
    tmux.keys(&["Space"]);
    tmux.wait_for("running again", WAIT, |s| !s.contains("PAUSED"));
    tmux.keys(&["?"]);
    tmux.wait_for("the help", WAIT, |s| s.contains("kite-tui help"));
    tmux.keys(&["Escape"]);
    tmux.wait_for("the help closed", WAIT, |s| !s.contains("kite-tui help"));

    // `q`: the shell's screen is back, the exit code 0, the terminal settings as before.
    tmux.keys(&["q"]);
    let s = tmux.wait_for("kite-tui to exit", WAIT, |s| s.contains("EXIT_CODE 0"));
    assert!(
        s.contains("stty -g >"),
        "the command line is visible again: {s}"
    );
    assert!(!s.contains("ENDPOINT"), "the alternate screen is gone: {s}");
    let check = format!(
        "[ \"$(stty -g)\" = \"$(cat {saved})\" ] && r=same || r=changed; echo \"TTY_STATE $r\""
    );
    tmux.text(&check);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the terminal settings", WAIT, |s| {
        s.contains("TTY_STATE same")
    });

    // Ctrl-C quits too, and restores the terminal as well.
    tmux.keys(&["C-l"]);
    tmux.text(&format!(
        "{TUI} --addr {}; echo \"SECOND_EXIT $?\"",
        agent.addr()
    ));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the dashboard again", WAIT, |s| line_of(s, &busy).is_some());
    tmux.keys(&["C-c"]);
    tmux.wait_for("exit on Ctrl-C", WAIT, |s| s.contains("SECOND_EXIT 0"));
    tmux.text(&check);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the terminal settings", WAIT, |s| {
        s.contains("TTY_STATE same")
    });

    // SIGTERM (e.g. the terminal's owner going away) restores the terminal too.
    let pid_file = format!("{saved}.pid");
    tmux.keys(&["C-l"]);
    tmux.text(&format!(
        "sh -c 'echo $$ > {pid_file}; exec {TUI} --addr {}'; echo \"THIRD_EXIT $?\"",
        agent.addr()
    ));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the dashboard once more", WAIT, |s| {
        line_of(s, &busy).is_some()
    });
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid of kite-tui")
        .trim()
        .parse()
        .unwrap();
    let _ = std::fs::remove_file(&pid_file);
    // SAFETY: plain syscall on the process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tmux.wait_for("exit on SIGTERM", WAIT, |s| s.contains("THIRD_EXIT 0"));
    tmux.text(&check);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the terminal settings", WAIT, |s| {
        s.contains("TTY_STATE same")
    });

    // A panic (here in a task, through a test hook) restores the terminal and fails.
    tmux.keys(&["C-l"]);
    tmux.text(&format!(
        "KITE_TUI_TEST_PANIC=1 {TUI} --addr {}; echo \"FOURTH_EXIT $?\"",
        agent.addr()
    ));
    tmux.keys(&["Enter"]);
    let done = |s: &str| s.lines().any(|l| l.starts_with("FOURTH_EXIT "));
    let s = tmux.wait_for("exit after a panic", WAIT, done);
    assert!(
        s.lines().any(|l| l.trim_end() == "FOURTH_EXIT 1"),
        "a panic must fail: {s}"
    );
    assert!(
        s.contains("KITE_TUI_TEST_PANIC is set"),
        "the panic message is readable: {s}"
    );
    assert!(s.contains("stopped after a panic"), "{s}");
    tmux.text(&check);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the terminal settings", WAIT, |s| {
        s.contains("TTY_STATE same")
    });

    // The shell ends, and with it the session.
    tmux.text("exit");
    tmux.keys(&["Enter"]);
    let deadline = Instant::now() + WAIT;
    while tmux.alive() {
        assert!(Instant::now() < deadline, "tmux session still there");
        thread::sleep(Duration::from_millis(100));
    }

    let (requests, secs) = loads.finish()[0];
    let own = requests as f64 / secs;
    assert!(own > 100.0, "the load ran at {own:.0} RPS only");
    samples.sort_by(f64::total_cmp);
    assert!(samples.len() >= 3, "RPS read {} times", samples.len());
    let median = samples[samples.len() / 2];
    let ratio = median / own;
    eprintln!("busy endpoint: kite-tui showed {samples:?} RPS, the load ran at {own:.1} RPS");
    assert!(
        (0.85..=1.15).contains(&ratio),
        "kite-tui showed {median} RPS, the load ran at {own:.1} RPS ({samples:?})"
    );
}

/// Removes a file on drop.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
