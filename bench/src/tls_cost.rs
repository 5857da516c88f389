//! Where the HTTPS cost of the OpenSSL probes goes (issue 14, the follow-up's point 4).
//!
//! Kite's TLS programs are attached piece by piece to the system's libssl, every piece
//! measured against no probes in the same run, rounds rotating the order:
//! * `entry`: the entry uprobe on `SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex`
//!   (what a caller outside the measured cgroups runs: one map lookup, then return);
//! * `entry+ret`: the return probes on the four as well (a uretprobe: a second trap at the
//!   return, and the trampoline that replaces the return address);
//! * `entry+ret, measured`: the caller's cgroup in `TLS_CGROUPS` (the entry keeps the call,
//!   the return looks up its state: the map work without plaintext to parse).
//!
//! Two loads: OpenSSL over memory BIOs in one Python process (an `SSL_write_ex` and an
//! `SSL_read_ex` per iteration, no sockets: the trap cost per call alone), and wrk → nginx
//! `ssl` (both outside any measured cgroup: what every sharer of the probed file pays), whose
//! probe calls per request are the entry program's run count over wrk's requests.

use std::{
    fmt::Write as _,
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use kite_agent::ebpf::{Kite, Options};
use kite_testkit::{Place, TestCgroup, free_port, load::wrk_for, tls::Certs};

use crate::{median, report};

/// Command line of `kite-bench tls-cost`.
#[derive(clap::Args, Clone)]
pub struct Opts {
    /// Rounds (each runs every mode once, the order rotating).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 3)]
    pub secs: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    pub conns: u32,
}

/// The OpenSSL functions probed, with the entry program's cookie (as `agent/src/tls`).
const CALLS: [(&str, u64); 4] = [
    ("SSL_read", 1),
    ("SSL_read_ex", 3),
    ("SSL_write", 0),
    ("SSL_write_ex", 2),
];
const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    None,
    Entry,
    /// The entry probe of the `_ex` forms 4 bytes in, on their `call` (x86 uprobes emulate a
    /// `call`; the first instruction, `sub $8,%rsp`, is stepped out of line: a debug trap).
    EntryAtCall,
    EntryRet,
    Measured,
    /// No instruction stepped out of line: the entry probe on each function's first `call`
    /// (the internal read/write with the same arguments in registers), the return probe a
    /// plain uprobe (`kite_ssl_ret_at`) on each `ret`, both emulated by x86 uprobes.
    Emulated,
    /// [`Mode::Emulated`] with the caller's cgroup measured.
    EmulatedMeasured,
    /// Entry probe and uretprobe on the two internal functions all four call
    /// (`ssl_read_internal`, `ssl_write_internal`: `(SSL *, buf, num, size_t *)`, 1 on
    /// success), whose first instruction is a `push` (emulated); the uretprobe's return goes
    /// through the kernel's trampoline.
    Internal,
    /// [`Mode::Internal`] with the caller's cgroup measured.
    InternalMeasured,
}

impl Mode {
    const ALL: [Mode; 9] = [
        Mode::None,
        Mode::Entry,
        Mode::EntryAtCall,
        Mode::EntryRet,
        Mode::Measured,
        Mode::Emulated,
        Mode::EmulatedMeasured,
        Mode::Internal,
        Mode::InternalMeasured,
    ];
    fn name(self) -> &'static str {
        match self {
            Mode::None => "no probes",
            Mode::Entry => "entry",
            Mode::EntryAtCall => "entry at the _ex call",
            Mode::EntryRet => "entry+ret",
            Mode::Measured => "entry+ret, measured",
            Mode::Emulated => "call+ret insns",
            Mode::EmulatedMeasured => "call+ret insns, measured",
            Mode::Internal => "internal fns",
            Mode::InternalMeasured => "internal fns, measured",
        }
    }
}

/// OpenSSL over memory BIOs: a client and a server `SSLObject` in one process, handshake
/// done, then `write` 64 bytes on one and `read` them on the other for `secs` seconds.
/// Prints iterations and the iterations of each whole second.
const CALLS_SCRIPT: &str = r#"
import json, ssl, sys, time
cert, key, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
sctx.load_cert_chain(cert, key)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cctx.check_hostname = False
cctx.verify_mode = ssl.CERT_NONE
ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
c = cctx.wrap_bio(ci, co)
s = sctx.wrap_bio(si, so, server_side=True)
done = [False, False]
for _ in range(100):
    for i, o in enumerate((c, s)):
        if not done[i]:
            try:
                o.do_handshake()
                done[i] = True
            except ssl.SSLWantReadError:
                pass
    si.write(co.read())
    ci.write(so.read())
    if all(done):
        break
assert all(done), "handshake"
msg = b"x" * 64
n, per, last = 0, [], 0
start = time.monotonic()
mark = start + 1
while True:
    c.write(msg)
    si.write(co.read())
    s.read(64)
    n += 1
    if n % 256 == 0:
        t = time.monotonic()
        if t >= mark:
            per.append(n - last)
            last = n
            mark += 1
        if t - start >= secs:
            break
print(json.dumps({"iters": n, "secs": t - start, "per_sec": per}))
"#;

struct Probes {
    kite: Kite,
    links: Vec<(&'static str, UProbeLinkId)>,
}

impl Probes {
    fn load() -> Self {
        let mut kite = Kite::load(Options::default()).expect("load Kite's eBPF object");
        for name in ["kite_ssl_entry", "kite_ssl_ret", "kite_ssl_ret_at"] {
            uprobe(kite.ebpf_mut(), name)
                .load()
                .expect("load a TLS program");
        }
        Self {
            kite,
            links: Vec::new(),
        }
    }

    fn attach(&mut self, mode: Mode, measured_cgroup: u64) {
        let names: &[&'static str] = match mode {
            Mode::None => &[],
            Mode::Entry | Mode::EntryAtCall => &["kite_ssl_entry"],
            Mode::EntryRet | Mode::Measured => &["kite_ssl_entry", "kite_ssl_ret"],
            Mode::Emulated | Mode::EmulatedMeasured => {
                self.attach_emulated();
                &[]
            }
            Mode::Internal | Mode::InternalMeasured => {
                self.attach_internal();
                &[]
            }
        };
        for (sym, cookie) in CALLS {
            for &name in names {
                let location = if mode == Mode::EntryAtCall && sym.ends_with("_ex") {
                    UProbeAttachLocation::SymbolOffset(sym, 4)
                } else {
                    UProbeAttachLocation::Symbol(sym)
                };
                let point = UProbeAttachPoint {
                    location,
                    cookie: (name == "kite_ssl_entry").then_some(cookie),
                };
                let link = uprobe(self.kite.ebpf_mut(), name)
                    .attach(point, Path::new(LIBSSL), UProbeScope::AllProcesses)
                    .expect("attach to libssl");
                self.links.push((name, link));
            }
        }
        let mut map: BpfHashMap<&mut MapData, u64, u8> = self
            .kite
            .ebpf_mut()
            .map_mut("TLS_CGROUPS")
            .expect("TLS_CGROUPS")
            .try_into()
            .expect("TLS_CGROUPS is a hash map");
        if matches!(
            mode,
            Mode::Measured | Mode::EmulatedMeasured | Mode::InternalMeasured
        ) {
            map.insert(measured_cgroup, 1, 0)
                .expect("TLS_CGROUPS insert");
        } else {
            let _ = map.remove(&measured_cgroup);
        }
    }

    /// [`Mode::Emulated`]'s probes, at the instructions [`insns`] finds.
    fn attach_emulated(&mut self) {
        for (sym, cookie) in CALLS {
            let (call, rets, _) = insns(sym);
            let mut points = vec![("kite_ssl_entry", call, Some(cookie))];
            points.extend(rets.into_iter().map(|r| ("kite_ssl_ret_at", r, None)));
            for (name, off, cookie) in points {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::SymbolOffset(sym, off),
                    cookie,
                };
                let link = uprobe(self.kite.ebpf_mut(), name)
                    .attach(point, Path::new(LIBSSL), UProbeScope::AllProcesses)
                    .expect("attach to libssl");
                self.links.push((name, link));
            }
        }
    }

    /// [`Mode::Internal`]'s probes: on the targets of the `_ex` forms' first `call` (file
    /// offsets: this libssl's `.text` has its addresses equal to its file offsets).
    fn attach_internal(&mut self) {
        for (sym, cookie) in [("SSL_read_ex", 3), ("SSL_write_ex", 2)] {
            let (_, _, target) = insns(sym);
            for (name, cookie) in [("kite_ssl_entry", Some(cookie)), ("kite_ssl_ret", None)] {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(target),
                    cookie,
                };
                let link = uprobe(self.kite.ebpf_mut(), name)
                    .attach(point, Path::new(LIBSSL), UProbeScope::AllProcesses)
                    .expect("attach to libssl");
                self.links.push((name, link));
            }
        }
    }

    fn detach(&mut self) {
        for (name, link) in self.links.drain(..) {
            let _ = uprobe(self.kite.ebpf_mut(), name).detach(link);
        }
    }
}

/// Offsets into `sym` (in [`LIBSSL`], per `objdump`) of its first `call` and of its `ret`s.
/// In OpenSSL 3.0 all four functions call the internal read/write with `(SSL *, buf, num,
/// size_t *)` in `rdi`, `rsi`, `rdx`, `rcx`: the entry program reads the same arguments there.
fn insns(sym: &str) -> (u64, Vec<u64>, u64) {
    let dynsym = Command::new("objdump")
        .args(["-T", LIBSSL])
        .output()
        .expect("objdump");
    let text = String::from_utf8_lossy(&dynsym.stdout);
    let (addr, size) = text
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.last() == Some(&sym) && f.len() >= 6).then(|| {
                (
                    u64::from_str_radix(f[0], 16).unwrap(),
                    u64::from_str_radix(f[f.len() - 3], 16).unwrap(),
                )
            })
        })
        .unwrap_or_else(|| panic!("{sym} not in {LIBSSL}"));
    let dis = Command::new("objdump")
        .args([
            "-d",
            &format!("--start-address={addr:#x}"),
            &format!("--stop-address={:#x}", addr + size),
            LIBSSL,
        ])
        .output()
        .expect("objdump");
    let mut call = None;
    let mut target = 0;
    let mut rets = Vec::new();
    for l in String::from_utf8_lossy(&dis.stdout).lines() {
        let mut parts = l.split('\t');
        let (Some(a), Some(_bytes), Some(insn)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(a) = u64::from_str_radix(a.trim().trim_end_matches(':'), 16) else {
            continue;
        };
        let m = insn.split_whitespace().next().unwrap_or("");
        if m == "call" && call.is_none() {
            call = Some(a - addr);
            target = insn
                .split_whitespace()
                .nth(1)
                .and_then(|t| u64::from_str_radix(t, 16).ok())
                .unwrap_or(0);
        } else if m == "ret" {
            rets.push(a - addr);
        }
    }
    (
        call.unwrap_or_else(|| panic!("no call in {sym}")),
        rets,
        target,
    )
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut UProbe {
    ebpf.program_mut(name)
        .expect("program in the object")
        .try_into()
        .expect("a uprobe")
}

/// Run count and run time of the loaded program called `name`.
fn prog_stats(name: &str) -> (u64, Duration) {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str() == Some(name))
        .fold((0, Duration::ZERO), |(n, t), p| {
            (n + p.run_count(), t + p.run_time())
        })
}

struct CallsRun {
    ns_per_iter: f64,
    per_sec: Vec<f64>,
}

fn calls_run(place: Place<'_>, certs: &Certs, secs: u64) -> CallsRun {
    let out = kite_testkit::command(
        place,
        &[
            "python3",
            "-c",
            CALLS_SCRIPT,
            certs.cert.to_str().unwrap(),
            certs.key.to_str().unwrap(),
            &secs.to_string(),
        ],
    )
    .stdin(Stdio::null())
    .output()
    .expect("python3");
    assert!(
        out.status.success(),
        "the memory-BIO loop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> &str {
        let i = text.find(&format!("\"{k}\": ")).expect("a field") + k.len() + 4;
        let rest = &text[i..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        &rest[..end]
    };
    let iters: f64 = field("iters").parse().unwrap();
    let secs_run: f64 = field("secs").parse().unwrap();
    let per_sec = text
        .split("\"per_sec\": [")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap_or("")
        .split(',')
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .map(|n| 1e9 / n)
        .collect();
    CallsRun {
        ns_per_iter: secs_run * 1e9 / iters,
        per_sec,
    }
}

#[derive(Default)]
struct Row {
    calls_ns: Vec<f64>,
    calls_per_sec_ns: Vec<f64>,
    rps: Vec<f64>,
    calls_per_req: Vec<f64>,
    prog_ns_per_req: Vec<f64>,
}

/// Runs the decomposition and returns its Markdown section.
pub fn run(o: &Opts) -> String {
    let certs = Certs::new();
    let cg = TestCgroup::new("bench-tls-cost");
    let cg_id = std::fs::metadata(&cg.cgroup.dir)
        .map(|m| m.ino())
        .unwrap_or(0);
    let nginx_cg = TestCgroup::new("bench-tls-cost-nginx");
    let port = free_port();
    let _nginx = kite_testkit::tls::nginx_tls(Place::in_cgroup(&nginx_cg), port, &certs);
    let url = format!("https://127.0.0.1:{port}/");
    let mut probes = Probes::load();
    let mut rows: std::collections::BTreeMap<Mode, Row> = Default::default();
    for round in 0..o.rounds {
        for k in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(k + round) % Mode::ALL.len()];
            probes.attach(mode, cg_id);
            let row = rows.entry(mode).or_default();
            // The memory-BIO loop, in the cgroup that `Measured` measures.
            let c = calls_run(Place::in_cgroup(&cg), &certs, o.secs);
            row.calls_ns.push(c.ns_per_iter);
            row.calls_per_sec_ns.extend(c.per_sec.iter().copied());
            // wrk → nginx over https, nobody measured.
            let (n0, _) = prog_stats("kite_ssl_entry");
            let (_, t0e) = prog_stats("kite_ssl_entry");
            let (_, t0r) = prog_stats("kite_ssl_ret");
            let w = wrk_for(
                Place::default(),
                &url,
                2,
                o.conns,
                Duration::from_secs(o.secs),
                &[],
            );
            let (n1, t1e) = prog_stats("kite_ssl_entry");
            let (_, t1r) = prog_stats("kite_ssl_ret");
            let req = w.requests.max(1) as f64;
            row.rps.push(w.rps());
            if mode != Mode::None {
                row.calls_per_req.push((n1 - n0) as f64 / req);
                row.prog_ns_per_req
                    .push(((t1e - t0e) + (t1r - t0r)).as_nanos() as f64 / req);
            }
            eprintln!(
                "  tls-cost round {round}: {:<22} memory BIO {:>7.0} ns/iteration (per second: {}), \
                 https {:>8.0} rps",
                mode.name(),
                c.ns_per_iter,
                c.per_sec
                    .iter()
                    .map(|n| format!("{n:.0}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                w.rps()
            );
            probes.detach();
        }
    }
    let base_calls = median(&mut rows[&Mode::None].calls_ns.clone());
    let base_rps = median(&mut rows[&Mode::None].rps.clone());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(mode, r)| {
            let calls = median(&mut r.calls_ns.clone());
            let rps = median(&mut r.rps.clone());
            let (lo, hi) = r
                .calls_per_sec_ns
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            let cpr = (!r.calls_per_req.is_empty()).then(|| median(&mut r.calls_per_req.clone()));
            let prog =
                (!r.prog_ns_per_req.is_empty()).then(|| median(&mut r.prog_ns_per_req.clone()));
            // Per probed call: two calls an iteration.
            let per_call = (calls - base_calls) / 2.0;
            let lost_us = (1.0 / rps - 1.0 / base_rps) * 1e6;
            vec![
                mode.name().to_string(),
                format!("{calls:.0}"),
                format!("{lo:.0}–{hi:.0}"),
                if *mode == Mode::None {
                    "–".into()
                } else {
                    format!("{per_call:.0}")
                },
                format!("{rps:.0}"),
                format!("{:.3}×", rps / base_rps),
                if *mode == Mode::None {
                    "–".into()
                } else {
                    format!("{lost_us:.1}")
                },
                cpr.map_or("–".into(), |n| format!("{n:.1}")),
                prog.map_or("–".into(), |n| format!("{n:.0}")),
            ]
        })
        .collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### HTTPS: where the OpenSSL probes' cost goes\n\n\
         `kite-bench tls-cost`: Kite's TLS programs attached piece by piece to {LIBSSL} \
         (all processes), {} rounds × {} s, order rotating, medians. *Memory BIO*: one Python \
         process, OpenSSL client and server over memory BIOs, an `SSL_write_ex` and an \
         `SSL_read_ex` per iteration (ns per iteration; the per-second range shows whether the \
         cost drifts while the probes stay attached; per probed call = (mode − none) / 2). \
         *https*: wrk (2 threads, {} connections) → nginx `ssl` (1 worker), nobody measured: \
         what every sharer of the file pays; probe calls per request from the entry program's \
         run count, program ns per request from the kernel's BPF statistics (entry + return \
         programs).\n",
        o.rounds, o.secs, o.conns
    );
    md += &report::table(
        &[
            "mode",
            "memory BIO ns/iter",
            "per-second range",
            "ns per probed call",
            "https RPS",
            "RPS ×",
            "µs lost/request",
            "probe calls/request",
            "program ns/request",
        ],
        &table,
    );
    md
}

/// Whether the machine has what the run needs (root, libssl at [`LIBSSL`], python3, wrk).
pub fn available() -> Result<(), String> {
    if !Path::new(LIBSSL).exists() {
        return Err(format!("{LIBSSL} is missing"));
    }
    for tool in ["python3", "wrk", "nginx", "openssl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            return Err(format!("{tool} is missing"));
        }
    }
    Ok(())
}
