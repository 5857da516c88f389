//! Kite's own programs watching a test cgroup.

use std::{
    thread,
    time::{Duration, Instant},
};

use kite_agent::{
    ebpf::{Kite, Options},
    stats::{Collector, EndpointId, Histogram, Interval},
};
use kite_common::maps::{Direction, STAT_COUNT, Stat};

use crate::TestCgroup;

/// Kite attached to a cgroup, polled while load runs.
pub struct Watch {
    pub kite: Kite,
    collector: Collector,
    /// Per poll: (time, interval of the watched endpoint).
    polls: Vec<(Instant, Instant, Interval)>,
    target: Option<(Direction, u16)>,
    total: Interval,
    last_poll: Instant,
}

pub const POLL: Duration = Duration::from_millis(250);

impl Watch {
    pub fn new(cg: &TestCgroup) -> Self {
        Self::with_options(cg, Options::default())
    }

    pub fn with_options(cg: &TestCgroup, options: Options) -> Self {
        let mut w = Self::unattached(options);
        w.attach(cg);
        w
    }

    /// Kite's programs loaded (and verified: seconds) but not attached yet, for a test whose
    /// traffic must already run when Kite attaches ([`Watch::attach`]).
    pub fn unattached(options: Options) -> Self {
        let kite = Kite::load(options).expect("load Kite's eBPF programs");
        let now = Instant::now();
        Self {
            kite,
            collector: Collector::new(now, 8),
            polls: Vec::new(),
            target: None,
            total: Interval::default(),
            last_poll: now,
        }
    }

    /// Attaches the programs to `cg`; the totals start now.
    pub fn attach(&mut self, cg: &TestCgroup) {
        self.kite.attach(&cg.cgroup).expect("attach");
        self.last_poll = Instant::now();
    }

    /// Follow the endpoint with this direction and port (all cgroups, all addresses).
    pub fn target(&mut self, dir: Direction, port: u16) {
        self.target = Some((dir, port));
    }

    pub fn poll(&mut self) {
        let now = Instant::now();
        self.collector
            .update(now, self.kite.endpoints().expect("read endpoints"));
        let mut iv = Interval {
            secs: now.duration_since(self.last_poll).as_secs_f64(),
            ..Interval::default()
        };
        if let Some((dir, port)) = self.target {
            for ep in self.collector.endpoints() {
                let EndpointId {
                    direction, port: p, ..
                } = ep.id;
                if direction == dir && p == port {
                    iv.merge(&ep.last);
                }
            }
        }
        self.total.merge(&iv);
        self.polls.push((self.last_poll, now, iv));
        self.last_poll = now;
    }

    /// Runs `load` in a thread while polling every [`POLL`]; polls once more after it ended
    /// and the stragglers (release, FIN) had time to land.
    pub fn during<R: Send>(&mut self, load: impl FnOnce() -> R + Send) -> R {
        thread::scope(|s| {
            let h = s.spawn(load);
            while !h.is_finished() {
                thread::sleep(POLL);
                self.poll();
            }
            let r = h.join().unwrap();
            thread::sleep(Duration::from_millis(300));
            self.poll();
            r
        })
    }

    /// Everything seen on the target since attach.
    pub fn total(&self) -> &Interval {
        &self.total
    }

    /// RPS from Kite's own windows that lie inside [from, to] (steady state).
    pub fn windowed_rps(&self, from: Instant, to: Instant) -> f64 {
        let (mut n, mut secs) = (0u64, 0f64);
        for (a, b, iv) in &self.polls {
            if *a >= from && *b <= to {
                n += iv.requests;
                secs += iv.secs;
            }
        }
        assert!(secs > 1.0, "too few windows inside the load ({secs:.2} s)");
        n as f64 / secs
    }

    pub fn histogram(&self) -> &Histogram {
        &self.total.hist
    }

    pub fn counters(&self) -> [u64; STAT_COUNT as usize] {
        self.kite.counters().expect("counters")
    }

    pub fn counter(&self, s: Stat) -> u64 {
        self.counters()[s as usize]
    }

    pub fn endpoints(&self) -> Vec<EndpointId> {
        self.collector.endpoints().map(|e| e.id).collect()
    }

    pub fn collector(&self) -> &Collector {
        &self.collector
    }
}

/// `|a - b| / b <= tol`
pub fn assert_close(what: &str, kite: f64, truth: f64, tol: f64) {
    let err = (kite - truth).abs() / truth;
    assert!(
        err <= tol,
        "{what}: Kite {kite:.4} vs client {truth:.4}: {:.2}% off (allowed {:.0}%)",
        err * 100.0,
        tol * 100.0
    );
    eprintln!(
        "  {what}: Kite {kite:.4} client {truth:.4} ({:+.2}%)",
        (kite - truth) / truth * 100.0
    );
}

/// Kite's quantile (seconds).
pub fn kite_q(w: &Watch, q: f64) -> f64 {
    w.histogram().quantile(q).expect("some requests") / 1e9
}
