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
    {
        let mut m = enc.encode_descriptor(
            "kite_ebpf_events",
            "Counters of Kite's eBPF programs: packets, connections, requests, and what the parser could not follow (sync_lost, seq_gaps, step_budget), map overflows (sockets_map_full, endpoints_map_full) and pipelining overflow",
            None,
            MetricType::Counter,
        )?;
        for s in Stat::ALL {
            ConstCounter::new(st.counters[s as usize])
                .encode(m.encode_family(&vec![("event".to_string(), s.name().to_string())])?)?;
        }
    }
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
    {
        let mut m = enc.encode_descriptor(
            "kite_agent_events",
            "Agent events: enrollments (enrolled, refused, bad), vanished cgroups, poll errors, expired endpoints, idle endpoints evicted at a budget, --cgroups removed and attached later (re-created or appeared)",
            None,
            MetricType::Counter,
        )?;
        let a = &st.agent;
        for (name, v) in [
            ("enrolled", a.enrolled),
            ("enroll_refused", a.enroll_refused),
            ("enroll_bad", a.enroll_bad),
            ("vanished_cgroups", a.vanished),
            ("poll_errors", a.poll_errors),
            ("expired_endpoints", a.expired_endpoints),
            ("idle_endpoints", a.idle_endpoints),
            ("static_cgroup_removed", a.static_removed),
            ("static_cgroup_attached_later", a.static_attached_later),
        ] {
            ConstCounter::new(v)
                .encode(m.encode_family(&vec![("event".to_string(), name.to_string())])?)?;
        }
    }
    guard_metrics(st, enc)?;
    gauge(
        enc,
        "kite_waiting_cgroups",
        "--cgroup paths that do not exist (yet, or any more): waited for, not attached",
        st.waiting_cgroups.len() as i64,
    )?;
    gauge(
        enc,
        "kite_kubernetes_metadata",
        "1 when pod metadata is followed through the Kubernetes API",
        st.kubernetes as i64,
    )
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
    {
        let mut m = enc.encode_descriptor(
            "kite_watch_events",
            "Watch streams: started, refused (RESOURCE_EXHAUSTED beyond --max-watch-streams), snapshots skipped because a client did not read in time (latest wins)",
            None,
            MetricType::Counter,
        )?;
        for (event, v) in [
            ("started", &g.watch_started),
            ("refused", &g.watch_refused),
            ("skipped_snapshots", &g.watch_skipped),
        ] {
            ConstCounter::new(v.load(Relaxed))
                .encode(m.encode_family(&vec![("event".to_string(), event.to_string())])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "kite_scrape_events",
        "/metrics answers: expositions encoded (once per poll and format), scrapes served bytes encoded for another, served the previous poll's exposition (--max-scrapes expositions still being read), cut at the send deadline",
        None,
        MetricType::Counter,
    )?;
    for (event, v) in [
        ("encoded", &g.scrape_encoded),
        ("shared", &g.scrape_shared),
        ("stale", &g.scrape_stale),
        ("send_timeout", &g.scrape_send_timeout),
    ] {
        ConstCounter::new(v.load(Relaxed))
            .encode(m.encode_family(&vec![("event".to_string(), event.to_string())])?)?;
    }
    Ok(())
}
