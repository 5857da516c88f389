//! The agent's own metrics: maps, eBPF counters, enrollment, listeners, scrapes.

use std::fmt;

use kite_common::maps::Stat;
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use crate::daemon::state::State;

pub(super) fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), fmt::Error> {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A counter family with one label (`event`, …): one sample per (value, count).
fn event_counters<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    counts: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in counts {
        ConstCounter::new(v)
            .encode(m.encode_family(&vec![(label.to_string(), value.to_string())])?)?;
    }
    Ok(())
}

pub(super) fn self_metrics(st: &State, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    gauge(
        enc,
        "kite_attached_cgroups",
        "cgroups Kite's programs are attached to",
        st.attachments.len() as i64,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "kite_map_entries",
            "Entries in Kite's eBPF maps (sockets: tracked connections; endpoints: histograms)",
            None,
            MetricType::Gauge,
        )?;
        for (map, v) in [
            ("sockets", st.sockets_used),
            ("endpoints", st.endpoints_used),
        ] {
            ConstGauge::new(v as i64)
                .encode(m.encode_family(&vec![("map".to_string(), map.to_string())])?)?;
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "kite_map_max_entries",
            "Bound of Kite's eBPF maps",
            None,
            MetricType::Gauge,
        )?;
        for (map, v) in [
            ("sockets", st.options.max_sockets),
            ("endpoints", st.options.max_endpoints),
        ] {
            ConstGauge::new(v as i64)
                .encode(m.encode_family(&vec![("map".to_string(), map.to_string())])?)?;
        }
    }
    ebpf_counters(st, enc)?;
    ConstCounter::new(st.bpf.run_time.as_secs_f64()).encode(enc.encode_descriptor(
        "kite_ebpf_run_time",
        "Time spent in Kite's eBPF programs (kernel BPF statistics; 0 unless enabled)",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?)?;
    ConstCounter::new(st.bpf.run_count).encode(enc.encode_descriptor(
        "kite_ebpf_runs",
        "Runs of Kite's eBPF programs (kernel BPF statistics; 0 unless enabled)",
        None,
        MetricType::Counter,
    )?)?;
    event_counters(
        enc,
        "kite_agent_events",
        "Agent events: enrollments (enrolled, refused, bad, enrolled without their malformed route patterns), vanished cgroups, poll errors, expired endpoints, idle endpoints evicted at a budget, --cgroups removed and attached later (re-created or appeared)",
        "event",
        st.agent.named(),
    )?;
    guard_metrics(st, enc)?;
    process_metrics(enc)?;
    gauge(
        enc,
        "kite_waiting_cgroups",
        "--cgroup paths that do not exist (yet, or any more): waited for, not attached",
        st.waiting_cgroups.len() as i64,
    )?;
    gauge(
        enc,
        "kite_tls_libraries_probed",
        "libssl files (distinct inodes) whose SSL_read/SSL_write Kite probes for TLS plaintext",
        st.tls_libraries as i64,
    )?;
    gauge(
        enc,
        "kite_tls_unsupported_processes",
        "Processes of the measured cgroups whose TLS Kite cannot see (Go's crypto/tls, statically linked OpenSSL/BoringSSL, rustls): their HTTPS is not measured; the log names each binary",
        st.tls_unsupported.len() as i64,
    )?;
    ConstCounter::new(st.rpc_names.collapse.untracked).encode(enc.encode_descriptor(
        "kite_route_prefixes_untracked",
        "Route prefixes the low-cardinality collapse did not follow because it follows 8192 already: segments after them are not collapsed (their routes stay as the kernel named them)",
        None,
        MetricType::Counter,
    )?)?;
    let k = st.tls_kernel;
    event_counters(
        enc,
        "kite_ebpf_tls_events",
        "TLS connection events of the uprobe programs: an SSL* with state doing I/O on another recognised socket, OpenSSL having reused it (rebound: a fresh state, the old one's finished requests recorded), a socket closing after its SSL* moved on (stale_closes: ignored), a connection carrying HTTP/2 inside TLS, measured (h2) or not, the 1 024 HTTP/2-in-TLS states being in use (h2_unsupported)",
        "event",
        [
            ("rebound", k.rebound),
            ("stale_closes", k.stale_closes),
            ("h2", k.h2_opened),
            ("h2_unsupported", k.h2_unsupported),
        ],
    )?;
    gauge(
        enc,
        "kite_kubernetes_metadata",
        "1 when pod metadata is followed through the Kubernetes API",
        st.kubernetes as i64,
    )
}

/// Where each [`Stat`] is exported: (family, help, label name, label value per counter).
/// Each family counts one kind of thing (packets, segments, connections, requests, stream
/// events) and its labels split it into disjoint parts, so its sum means something.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(Stat, &'static str)],
);

/// Every [`Stat`] in exactly one family (checked by a test: a new one must be placed).
pub(super) const EBPF_FAMILIES: &[Family] = &[
    (
        "kite_ebpf_packets",
        "Packets Kite's cgroup_skb programs ran on",
        "",
        &[(Stat::Packets, "")],
    ),
    (
        "kite_ebpf_payload_packets",
        "Packets with TCP payload on a tracked HTTP connection",
        "",
        &[(Stat::PayloadPackets, "")],
    ),
    (
        "kite_ebpf_segments",
        "Payload segments handled out of the ordinary: seen twice (retransmit, skipped), ahead of a gap (out_of_order, placed later), arrived on a listening socket before the connection's own socket existed (listener_data, parked)",
        "event",
        &[
            (Stat::Retransmits, "retransmit"),
            (Stat::OutOfOrder, "out_of_order"),
            (Stat::ListenerData, "listener_data"),
        ],
    ),
    (
        "kite_ebpf_connections_opened",
        "HTTP connections whose tracking started (also those whose parked state their socket took over)",
        "",
        &[(Stat::ConnsOpened, "")],
    ),
    (
        "kite_ebpf_connections_closed",
        "Tracked connections whose state ended: at socket release (released), or freed when the socket closed without one (reaped: children never accepted, orphaned sockets)",
        "how",
        &[
            (Stat::ConnsClosed, "released"),
            (Stat::ConnsReaped, "reaped"),
        ],
    ),
    (
        "kite_ebpf_connections_untracked",
        "Connections Kite does not (or no longer) parse: not tracked because --max-sockets were tracked or the state could not be allocated (sockets_map_full), first message not HTTP/1.x (not_http), switched protocol (upgrade: 101, CONNECT tunnel)",
        "reason",
        &[
            (Stat::SocketsMapFull, "sockets_map_full"),
            (Stat::NotHttp, "not_http"),
            (Stat::Upgrades, "upgrade"),
        ],
    ),
    (
        "kite_ebpf_connections_pending_claimed",
        "Connections whose state, parked while their socket did not exist yet, their socket took over",
        "",
        &[(Stat::PendingClaimed, "")],
    ),
    (
        "kite_ebpf_requests",
        "Requests completed and recorded (their own endpoint's histogram or the overflow endpoint's)",
        "",
        &[(Stat::Requests, "")],
    ),
    (
        "kite_ebpf_requests_overflow",
        "Requests of a new endpoint key sent to their (cgroup, direction)'s overflow endpoint (server_address=\"_OTHER\"): beyond the endpoint budget (endpoint_budget), the endpoint map full (endpoints_map_full), the kernel's allocation failed in a burst (alloc_failed); recorded there unless kite_ebpf_requests_lost_total{reason=\"overflow_map_full\"}",
        "reason",
        &[
            (Stat::EndpointBudgetOverflow, "endpoint_budget"),
            (Stat::EndpointsMapFull, "endpoints_map_full"),
            (Stat::EndpointAllocFailed, "alloc_failed"),
        ],
    ),
    (
        "kite_ebpf_requests_lost",
        "Requests seen and not recorded: beyond the pipelining queue (pipeline_overflow), unanswered when their socket was released (unanswered), overflow requests while the overflow map was full (overflow_map_full), first requests of connections whose state could not be parked (pending_full)",
        "reason",
        &[
            (Stat::PipelineOverflow, "pipeline_overflow"),
            (Stat::Unanswered, "unanswered"),
            (Stat::OverflowMapFull, "overflow_map_full"),
            (Stat::PendingFull, "pending_full"),
        ],
    ),
    (
        "kite_ebpf_stream_events",
        "Times a byte stream could not be followed and waited for the next message boundary it could prove: bytes not HTTP/1.x where a message had to start (sync_lost), missing bytes (seq_gaps), a segment over the per-packet step budget (step_budget), bpf_skb_load_bytes failed (load_errors), a boundary in bytes Kite never parsed (unseen_boundary), a response with no request waiting (orphan_responses), a response whose framing could not be known (unframed_responses)",
        "event",
        &[
            (Stat::SyncLost, "sync_lost"),
            (Stat::SeqGaps, "seq_gaps"),
            (Stat::StepBudget, "step_budget"),
            (Stat::LoadErrors, "load_errors"),
            (Stat::UnseenBoundary, "unseen_boundary"),
            (Stat::OrphanResponses, "orphan_responses"),
            (Stat::UnframedResponses, "unframed_responses"),
        ],
    ),
    (
        "kite_ebpf_budgets_map_full",
        "New endpoint keys recorded without a budget: the budgets map was full",
        "",
        &[(Stat::BudgetsMapFull, "")],
    ),
    (
        "kite_ebpf_http2_connections",
        "HTTP/2 connection states: tracking started at the client preface or midway (opened), of them joined midway at a segment of frame shape (joined) or whose client preface was not seen first (preface_ahead: a segment came ahead of it, or it reached the listener, of them preface_parked), ended at socket release or close (closed), not tracked because 4096 were tracked already or the state could not be allocated (sockets_map_full)",
        "event",
        &[
            (Stat::H2ConnsOpened, "opened"),
            (Stat::H2ConnsJoined, "joined"),
            (Stat::H2PrefaceAhead, "preface_ahead"),
            (Stat::H2PrefaceParked, "preface_parked"),
            (Stat::H2ConnsClosed, "closed"),
            (Stat::H2SocketsMapFull, "sockets_map_full"),
        ],
    ),
    (
        "kite_ebpf_http2_streams",
        "HTTP/2 streams recorded (also in kite_ebpf_requests_total)",
        "",
        &[(Stat::H2Streams, "")],
    ),
    (
        "kite_ebpf_http2_streams_lost",
        "HTTP/2 streams seen and not recorded: no free slot in the connection's stream table (stream_table_full), reset before a response (reset_unanswered), above a GOAWAY's last stream id (goaway_unprocessed), unanswered when the connection went (unanswered), a response with no request known (orphan_responses), open while a direction was lost or resynchronised (resync_dropped)",
        "reason",
        &[
            (Stat::H2StreamTableFull, "stream_table_full"),
            (Stat::H2ResetUnanswered, "reset_unanswered"),
            (Stat::H2GoawayUnprocessed, "goaway_unprocessed"),
            (Stat::H2Unanswered, "unanswered"),
            (Stat::H2OrphanResponses, "orphan_responses"),
            (Stat::H2ResyncDropped, "resync_dropped"),
        ],
    ),
    (
        "kite_ebpf_http2_events",
        "HTTP/2 byte-stream and HPACK events: insertion count unknowable (hpack_desync), a dynamic reference not resolvable (unknown_refs), a cached insertion evicted (cache_evictions), framing lost (lost), bytes beyond a gap never placed (unplaced_ahead), retransmitted (retransmits), gaps skipped inside payloads (seq_gaps), segments waiting beyond a gap (out_of_order), step budget exceeded (step_budget), payload loads failed (load_errors), a lost direction taken up again at a segment of frame shape (resyncs), a direction whose first bytes (the peer's preface) went by before the state existed taken up at its first segment with nothing lost (late_start), a received segment beyond a gap held and parsed once the gap was (held) or not held: window, ranges or the 1024 hold buffers full (hold_full)",
        "event",
        &[
            (Stat::H2HpackDesync, "hpack_desync"),
            (Stat::H2UnknownRefs, "unknown_refs"),
            (Stat::H2CacheEvictions, "cache_evictions"),
            (Stat::H2Lost, "lost"),
            (Stat::H2UnplacedAhead, "unplaced_ahead"),
            (Stat::H2Retransmits, "retransmits"),
            (Stat::H2SeqGaps, "seq_gaps"),
            (Stat::H2OutOfOrder, "out_of_order"),
            (Stat::H2StepBudget, "step_budget"),
            (Stat::H2LoadErrors, "load_errors"),
            (Stat::H2Resyncs, "resyncs"),
            (Stat::H2LateStart, "late_start"),
            (Stat::H2Held, "held"),
            (Stat::H2HoldFull, "hold_full"),
        ],
    ),
    (
        "kite_ebpf_rpc_names",
        "gRPC method names and HTTP/1 route texts the kernel sent user space, once each (sent), not sent because the seen-names map (4096) was full (seen_full) or the ring buffer was (dropped: sent again at the next chance)",
        "event",
        &[
            (Stat::RpcNames, "sent"),
            (Stat::RpcSeenFull, "seen_full"),
            (Stat::RpcNamesDropped, "dropped"),
        ],
    ),
    (
        "kite_ebpf_rpc_other",
        "gRPC calls and HTTP/1 requests recorded under method or route _OTHER: their endpoint had 64 methods or routes already (endpoint_bound), or the kernel's method maps were full (methods_map_full)",
        "reason",
        &[
            (Stat::RpcOther, "endpoint_bound"),
            (Stat::RpcMethodsFull, "methods_map_full"),
        ],
    ),
    (
        "kite_ebpf_tls_connections",
        "TLS connections: recognised by their ClientHello on the packet side (recognised; judged not HTTP there), tied to their SSL* and parsed from plaintext (bound), state freed at SSL_free or TCP_CLOSE (closed), not tracked because the TLS state map was full (state_map_full)",
        "event",
        &[
            (Stat::TlsConns, "recognised"),
            (Stat::TlsBound, "bound"),
            (Stat::TlsClosed, "closed"),
            (Stat::TlsConnsFull, "state_map_full"),
        ],
    ),
    (
        "kite_ebpf_tls_calls_unbound",
        "SSL reads and writes with plaintext on an SSL* not tied to a recognised socket (its handshake began before Kite attached): not measured",
        "",
        &[(Stat::TlsUnbound, "")],
    ),
];

fn ebpf_counters(st: &State, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    for (name, help, label, stats) in EBPF_FAMILIES {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        if label.is_empty() {
            ConstCounter::new(st.counters[stats[0].0 as usize]).encode(m)?;
            continue;
        }
        for (stat, value) in *stats {
            ConstCounter::new(st.counters[*stat as usize])
                .encode(m.encode_family(&vec![(label.to_string(), value.to_string())])?)?;
        }
    }
    Ok(())
}

/// `kite_build_info` and the agent's own process metrics (the names every Prometheus client
/// library's process collector uses), read from `/proc/self` at encode time (once per poll).
fn process_metrics(enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    {
        let mut labels = vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
        if let Some(rev) = option_env!("KITE_REVISION") {
            labels.push(("revision".to_string(), rev.to_string()));
        }
        let mut m = enc.encode_descriptor(
            "kite_build_info",
            "1, labelled with the agent's version (and git revision when the build was given KITE_REVISION)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(m.encode_family(&labels)?)?;
    }
    let Some(p) = Process::read() else {
        return Ok(());
    };
    ConstCounter::new(p.cpu_seconds).encode(enc.encode_descriptor(
        "process_cpu",
        "User and system CPU time the agent spent",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?)?;
    ConstGauge::new(p.start_time_seconds).encode(enc.encode_descriptor(
        "process_start_time",
        "When the agent started, seconds since the Unix epoch",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    )?)?;
    // Whole numbers, printed as such.
    for (name, help, unit, v) in [
        (
            "process_resident_memory",
            "Resident memory of the agent",
            Some(Unit::Bytes),
            p.resident_bytes,
        ),
        (
            "process_virtual_memory",
            "Virtual memory of the agent",
            Some(Unit::Bytes),
            p.virtual_bytes,
        ),
        (
            "process_open_fds",
            "File descriptors the agent has open",
            None,
            p.open_fds,
        ),
        (
            "process_max_fds",
            "The agent's limit of open file descriptors (soft RLIMIT_NOFILE)",
            None,
            p.max_fds,
        ),
    ] {
        ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(enc.encode_descriptor(
            name,
            help,
            unit.as_ref(),
            MetricType::Gauge,
        )?)?;
    }
    Ok(())
}

/// The agent's own process figures, from `/proc/self`.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

impl Process {
    /// Reads the figures; `None` when `/proc` is not there to read.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        // SAFETY: plain libc calls without pointers.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mut p = Self::parse(&stat, &boot, tick.max(1) as f64, page.max(1) as u64)?;
        p.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit to write.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            p.max_fds = lim.rlim_cur;
        }
        Some(p)
    }

    /// From `/proc/self/stat` (proc(5): fields after the parenthesised command name, which
    /// may itself hold spaces and parentheses) and the `btime` line of `/proc/stat`.
    pub fn parse(stat: &str, proc_stat: &str, ticks_per_sec: f64, page: u64) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        // Field 3 (state) is rest's first; field n is rest's (n - 3)th.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let btime: u64 = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks_per_sec,
            start_time_seconds: btime as f64 + field(22)? as f64 / ticks_per_sec,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            ..Self::default()
        })
    }
}

fn guard_metrics(st: &State, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let g = &st.guards;
    {
        let mut m = enc.encode_descriptor(
            "kite_listener_events",
            "Connections of the agent's listeners (grpc, metrics, enroll): accepted, refused beyond the connection cap, closed idle (nothing written within the idle deadline), closed for a slow request header",
            None,
            MetricType::Counter,
        )?;
        for (listener, c) in [
            ("grpc", &g.grpc),
            ("metrics", &g.metrics),
            ("enroll", &g.enroll),
        ] {
            for (event, v) in c.values() {
                ConstCounter::new(v).encode(m.encode_family(&vec![
                    ("listener".to_string(), listener.to_string()),
                    ("event".to_string(), event.to_string()),
                ])?)?;
            }
        }
    }
    event_counters(
        enc,
        "kite_watch_events",
        "Watch streams: started, refused (RESOURCE_EXHAUSTED beyond --max-watch-streams), snapshots skipped because a client did not read in time (latest wins)",
        "event",
        [
            ("started", &g.watch_started),
            ("refused", &g.watch_refused),
            ("skipped_snapshots", &g.watch_skipped),
        ]
        .map(|(e, v)| (e, v.load(Relaxed))),
    )?;
    event_counters(
        enc,
        "kite_scrape_events",
        "/metrics answers: expositions encoded (once per poll and format), scrapes served bytes encoded for another, served the previous poll's exposition (--max-scrapes expositions still being read), cut at the send deadline",
        "event",
        [
            ("encoded", &g.scrape_encoded),
            ("shared", &g.scrape_shared),
            ("stale", &g.scrape_stale),
            ("send_timeout", &g.scrape_send_timeout),
        ]
        .map(|(e, v)| (e, v.load(Relaxed))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stat_is_in_exactly_one_family() {
        let mut seen = [0; kite_common::maps::STAT_COUNT as usize];
        for (name, _, label, stats) in EBPF_FAMILIES {
            assert!(!stats.is_empty(), "{name}");
            // One unlabelled counter, or labelled ones with distinct values.
            assert_eq!(
                label.is_empty(),
                stats.len() == 1 && stats[0].1.is_empty(),
                "{name}"
            );
            for (s, _) in *stats {
                seen[*s as usize] += 1;
            }
        }
        for s in Stat::ALL {
            assert_eq!(seen[s as usize], 1, "{s:?} must be in one family");
        }
    }

    #[test]
    fn proc_self_stat_parses() {
        // A command name with a space and a parenthesis; proc(5) field numbers.
        let stat = "4242 (kite a)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 \
                    123400 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let p = Process::parse(stat, boot, 100.0, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_000.0 + 1234.0);
        assert_eq!(p.virtual_bytes, 987_654_321);
        assert_eq!(p.resident_bytes, 2048 * 4096);
        assert_eq!(Process::parse("42 (x) S", boot, 100.0, 4096), None);
        // This process: its figures are plausible.
        let me = Process::read().unwrap();
        assert!(me.resident_bytes > 1 << 20 && me.virtual_bytes >= me.resident_bytes);
        assert!(me.open_fds >= 3 && me.max_fds >= me.open_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(me.start_time_seconds <= now + 1.0 && me.start_time_seconds > now - 86_400.0);
    }
}
