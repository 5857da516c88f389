//! The detail view of one endpoint: last window and totals, status codes (grpc-status for gRPC
//! endpoints), the latency distribution of the last window, its routes or gRPC methods (a
//! pane of their own, `super::routes`), RPS and p50/p99 history.

use kite_proto::v1;
use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style, Stylize as _},
    symbols::Marker,
    text::{Line, Span},
    widgets::{Axis, Block, Borders, Chart, Dataset, GraphType, Paragraph, Widget, Wrap},
};

use super::{error_span, table::fit};
use crate::{
    app::{App, Entry},
    human,
};

pub(super) fn render(app: &App, e: &Entry, area: Rect, buf: &mut Buffer) {
    let [title, info, rest] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(area);
    title_line(app, e, title, buf);
    info_line(e, info, buf);
    // Laid out for 80×24 first: the figures, status codes and distribution always; the
    // routes (gRPC methods) under them, a third of the height (at least 8 rows: 6 routes);
    // history as two sparkline rows, or as charts once there is room (≥ 22 rows).
    let calls = e.calls().len();
    let pane_h = if calls == 0 || rest.height < 12 {
        0
    } else {
        super::routes::wanted_height(calls).min((rest.height / 3).max(8))
    };
    let left_h = rest.height - pane_h;
    let (charts_h, spark_h) = if left_h >= 22 {
        ((left_h * 2 / 5).max(6), 0)
    } else if left_h >= 14 {
        (0, 2)
    } else {
        (0, 0)
    };
    let [middle, pane, sparks, charts] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(pane_h),
        Constraint::Length(spark_h),
        Constraint::Length(charts_h),
    ])
    .areas(rest);
    if pane_h > 0 {
        super::routes::pane(app, e, pane, buf);
    }
    let [left, right] = Layout::horizontal([Constraint::Length(30), Constraint::Fill(1)])
        .spacing(1)
        .areas(middle);
    // With the routes pane on a small terminal, the totals give their rows to the status
    // codes (the pane has each route's requests since first seen).
    let totals_h = if pane_h > 0 && middle.height < 14 {
        0
    } else {
        3
    };
    let [last, totals, codes] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(totals_h),
        Constraint::Fill(1),
    ])
    .areas(left);
    window_stats(e, last, buf);
    if totals_h > 0 {
        totals_stats(e, totals, buf);
    }
    statuses(e, pane_h == 0, codes, buf);
    // History and histogram come from the detailed copy the agent's task fetched.
    let detailed = app.detailed(e);
    distribution(detailed, right, buf);
    let window = app
        .agents
        .get(e.key.agent)
        .map_or(1.0, |a| a.window_seconds)
        .max(0.001);
    if spark_h > 0 {
        history_sparks(&detailed.history, window, sparks, buf);
    }
    if charts_h > 0 {
        let [rps, lat] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .spacing(2)
                .areas(charts);
        rps_chart(&detailed.history, window, rps, buf);
        latency_chart(&detailed.history, window, lat, buf);
    }
}

/// RPS and p99 history in one line each (small terminals): a label, then the newest
/// `width` windows as bars, newest on the right.
fn history_sparks(h: &[v1::Point], window: f64, area: Rect, buf: &mut Buffer) {
    let rows = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).split(area);
    let label_w = 28u16;
    for (i, (name, f, color)) in [
        (
            "RPS",
            (|p: &v1::Point| p.rps) as fn(&v1::Point) -> f64,
            Color::Green,
        ),
        ("p99", |p: &v1::Point| p.p99_seconds, Color::Magenta),
    ]
    .into_iter()
    .enumerate()
    {
        let [label, bars] =
            Layout::horizontal([Constraint::Length(label_w), Constraint::Fill(1)]).areas(rows[i]);
        let max = h.iter().map(f).fold(0.0, f64::max);
        let text = if h.is_empty() {
            format!(" {name} history: none yet")
        } else {
            let m = if name == "RPS" {
                human::rate(max)
            } else {
                human::latency(Some(max))
            };
            format!(
                " {name} max {m}, {}",
                human::latency(Some(h.len() as f64 * window))
            )
        };
        Line::from(Span::raw(text).dim()).render(label, buf);
        let data: Vec<u64> = h
            .iter()
            .rev()
            .take(bars.width as usize)
            .map(|p| (f(p).max(0.0) * 1e6).round() as u64)
            .collect();
        ratatui::widgets::Sparkline::default()
            .data(data)
            .max(((max * 1e6).round() as u64).max(1))
            .direction(ratatui::widgets::RenderDirection::RightToLeft)
            .style(Style::new().fg(color))
            .render(bars, buf);
    }
}

fn title_line(app: &App, e: &Entry, area: Rect, buf: &mut Buffer) {
    let mut spans = vec![
        Span::raw(" "),
        Span::raw(e.name.clone()).bold(),
        Span::raw(" · "),
        Span::raw(e.addr.clone()).bold(),
        Span::raw(format!(
            " · {} · {} · on {}",
            match e.direction {
                v1::Direction::Inbound => "inbound",
                v1::Direction::Outbound => "outbound",
                v1::Direction::Unspecified => "?",
            },
            e.protocol,
            e.node
        )),
    ];
    if let Some(age) = app.stale_for(e.key.agent) {
        spans.push(Span::styled(
            format!("  stale: its agent went away {} ago", human::age(age)),
            Style::new().fg(Color::DarkGray),
        ));
    } else if !app.detail_is_live() {
        spans.push(Span::styled(
            "  not reported any more (last values)",
            Style::new().fg(Color::Red),
        ));
    }
    Line::from(spans).render(area, buf);
}

fn info_line(e: &Entry, area: Rect, buf: &mut Buffer) {
    let id = e.ep.id.clone().unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(w) = &e.ep.workload {
        if !w.workload_kind.is_empty() {
            parts.push(format!("{}/{}", w.workload_kind, w.workload_name));
        }
        if !w.container.is_empty() {
            parts.push(format!("container {}", w.container));
        }
    }
    if !id.cgroup_path.is_empty() {
        parts.push(format!("cgroup {}", id.cgroup_path));
    }
    parts.push(format!("cgroup id {}", id.cgroup_id));
    let width = area.width.saturating_sub(2) as usize;
    Line::from(format!(" {}", fit(&parts.join(" · "), width)))
        .dim()
        .render(area, buf);
}

fn section(title: String) -> Block<'static> {
    Block::new()
        .borders(Borders::TOP)
        .title(Span::raw(title).bold().fg(Color::Cyan))
}

fn kv(k: &str, v: String) -> [Span<'static>; 2] {
    [
        Span::raw(format!(" {k:<4}")).dim(),
        Span::raw(format!("{v:>7}")),
    ]
}

fn window_stats(e: &Entry, area: Rect, buf: &mut Buffer) {
    let w = e.ep.last.unwrap_or_default();
    // ERR%: server errors, as in the table.
    let err = crate::app::Stats::of(&w).error_ratio();
    let lines = vec![
        Line::from_iter(
            kv("RPS", human::rate(w.rps))
                .into_iter()
                .chain(kv("req", human::rate(w.requests as f64))),
        ),
        Line::from_iter(
            kv("p50", human::latency(w.p50_seconds))
                .into_iter()
                .chain(kv("p90", human::latency(w.p90_seconds))),
        ),
        Line::from_iter(
            kv("p99", human::latency(w.p99_seconds))
                .into_iter()
                .chain(kv("max", human::latency(w.max_seconds))),
        ),
        Line::from(vec![
            Span::raw(" err ").dim(),
            error_span(format!("{:>7}", format!("{}%", human::percent(err))), err),
            Span::raw(if e.is_grpc() {
                format!("  srv {} failed {}", w.rpc_server_errors, w.rpc_errors)
            } else {
                format!("  5xx {} 4xx {}", w.status_5xx, w.status_4xx)
            })
            .dim(),
        ]),
        Line::from(vec![
            Span::raw(" B/s ").dim(),
            Span::raw(format!(
                "{:>7} in {:>7} out",
                human::bytes(w.request_bytes_per_second),
                human::bytes(w.response_bytes_per_second)
            )),
        ]),
    ];
    Paragraph::new(lines)
        .block(section(format!(
            " Last window {} ",
            human::latency(Some(w.seconds))
        )))
        .render(area, buf);
}

fn totals_stats(e: &Entry, area: Rect, buf: &mut Buffer) {
    let t = e.ep.totals.unwrap_or_default();
    let err = if t.requests == 0 {
        0.0
    } else {
        (t.status_5xx + t.rpc_server_errors) as f64 / t.requests as f64
    };
    let lines = vec![
        Line::from(vec![
            Span::raw(" req ").dim(),
            Span::raw(format!("{:>7}", human::rate(t.requests as f64))),
            Span::raw(" err ").dim(),
            error_span(format!("{}%", human::percent(err)), err),
        ]),
        Line::from_iter(
            kv("p50", human::latency(t.p50_seconds))
                .into_iter()
                .chain(kv("p99", human::latency(t.p99_seconds))),
        ),
    ];
    Paragraph::new(lines)
        .block(section(" Since first seen ".into()))
        .render(area, buf);
}

fn status_color(code: u32) -> Color {
    match code {
        500.. => Color::Red,
        400..500 => Color::Yellow,
        300..400 => Color::Cyan,
        _ => Color::Green,
    }
}

/// How a gRPC status is shown: its name (`OK`, `NOT_FOUND`), `unknown` when the kernel could
/// not know it; coloured green (OK), red (a server error in OpenTelemetry's gRPC conventions),
/// yellow (the caller's error), dim (unknown).
fn grpc_status(s: &v1::StatusCount) -> (String, Style) {
    let style = match s.status {
        0 => Style::new().fg(Color::Green),
        2 | 4 | 12 | 13 | 14 | 15 => Style::new().fg(Color::Red),
        GRPC_STATUS_UNKNOWN => Style::new().dim(),
        _ => Style::new().fg(Color::Yellow),
    };
    let name = if s.name.is_empty() {
        "unknown".to_string()
    } else {
        s.name.clone()
    };
    (name, style)
}

/// [`v1::StatusCount::status`] of a gRPC call whose grpc-status could not be known.
const GRPC_STATUS_UNKNOWN: u32 = 0xffff;

/// The status codes of the last window; `methods`: also a gRPC endpoint's methods (when the
/// routes pane is not shown).
fn statuses(e: &Entry, methods: bool, area: Rect, buf: &mut Buffer) {
    let grpc = e.is_grpc();
    let total: u64 = e.ep.statuses.iter().map(|s| s.count).sum();
    // Errors first (5xx, then 4xx; gRPC: server errors, then the caller's), then by count: on
    // a small terminal the box shows only its first lines, and those are what someone opening
    // the detail view looks for.
    let mut statuses: Vec<&v1::StatusCount> = e.ep.statuses.iter().collect();
    let class = |code: u32| match (grpc, code) {
        (true, 0) | (true, GRPC_STATUS_UNKNOWN) => 2,
        (true, 2 | 4 | 12 | 13 | 14 | 15) => 0,
        (true, _) => 1,
        (false, 500..) => 0,
        (false, 400..500) => 1,
        _ => 2,
    };
    statuses.sort_by(|a, b| {
        (class(a.status), std::cmp::Reverse(a.count), a.status).cmp(&(
            class(b.status),
            std::cmp::Reverse(b.count),
            b.status,
        ))
    });
    let share = |n: u64, of: u64| {
        Span::raw(format!(
            " {:>5}%",
            human::percent(n as f64 / of.max(1) as f64)
        ))
        .dim()
    };
    let mut lines: Vec<Line<'_>> = statuses
        .iter()
        .map(|s| {
            let (label, style) = if grpc {
                let (name, style) = grpc_status(s);
                (format!(" {name:<15}"), style)
            } else {
                (
                    format!(" {:<4}", s.status),
                    Style::new().fg(status_color(s.status)),
                )
            };
            Line::from(vec![
                Span::styled(label, style),
                Span::raw(if grpc {
                    format!("{:>6}", human::rate(s.count as f64))
                } else {
                    format!("{:>7}", human::rate(s.count as f64))
                }),
                share(s.count, total),
            ])
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::raw(" no requests in the last window").dim());
    }
    if grpc && methods {
        // One line per method: its calls, p99, failures and statuses.
        for m in &e.ep.rpcs {
            let w = m.last.unwrap_or_default();
            let name = if m.name.is_empty() {
                "(method unknown)"
            } else {
                m.name.as_str()
            };
            let width = area.width.saturating_sub(2) as usize;
            lines.push(Line::from(
                Span::raw(format!(" {}", super::table::fit_method(name, width))).bold(),
            ));
            lines.push(Line::from(vec![
                Span::raw(format!(
                    "   {}/s p99 {} err ",
                    human::rate(w.rps),
                    human::latency(w.p99_seconds)
                )),
                {
                    let err = crate::app::Stats::of(&w).error_ratio();
                    error_span(format!("{}%", human::percent(err)), err)
                },
            ]));
            let mut spans = vec![Span::raw("  ")];
            for st in &m.statuses {
                let (name, style) = grpc_status(st);
                spans.push(Span::styled(format!(" {name} {}", st.count), style));
            }
            lines.push(Line::from(spans));
        }
    } else if !grpc && !e.ep.methods.is_empty() {
        let methods: Vec<String> =
            e.ep.methods
                .iter()
                .map(|m| format!("{} {}", m.method, human::rate(m.count as f64)))
                .collect();
        lines.push(Line::from(vec![
            Span::raw(" methods ").dim(),
            Span::raw(methods.join(" · ")),
        ]));
    }
    let title = if grpc && methods {
        " grpc-status · methods "
    } else if grpc {
        " grpc-status "
    } else {
        " Status codes "
    };
    // Method lines are longer than the column: wrapped, not cut.
    Paragraph::new(lines)
        .block(section(title.into()))
        .wrap(Wrap { trim: false })
        .render(area, buf);
}

/// A row of the latency distribution: (lower, upper] seconds and a count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bin {
    pub lower: f64,
    pub upper: f64,
    pub count: u64,
}

/// Groups Kite's native-histogram buckets (16 per power of two of seconds) into
/// power-of-two bins of seconds, so no bucket straddles two bins (empty ones in between
/// included, so the shape is right), then merges neighbours until at most `rows` remain.
pub(crate) fn bins(buckets: &[v1::Bucket], rows: usize) -> Vec<Bin> {
    // Octaves of seconds by a bucket's (exclusive) lower edge, clamped to 2^-30 s (≈ 1 ns) …
    // 2^10 s (17 min) so that odd bounds from the wire cannot ask for a huge or negative range.
    let octave =
        |secs: f64| -> i32 { secs.clamp(2f64.powi(-30), 2f64.powi(10)).log2().floor() as i32 };
    let mut nonempty: Vec<&v1::Bucket> = buckets
        .iter()
        .filter(|b| b.count > 0 && b.lower_seconds.is_finite() && b.lower_seconds >= 0.0)
        .collect();
    nonempty.sort_by(|a, b| a.lower_seconds.total_cmp(&b.lower_seconds));
    let (Some(first), Some(last)) = (nonempty.first(), nonempty.last()) else {
        return Vec::new();
    };
    let (lo, hi) = (octave(first.lower_seconds), octave(last.lower_seconds));
    let edge = |o: i32| 2f64.powi(o);
    let mut out: Vec<Bin> = (lo..=hi)
        .map(|o| Bin {
            lower: edge(o),
            upper: edge(o + 1),
            count: 0,
        })
        .collect();
    for b in &nonempty {
        let i = (octave(b.lower_seconds) - lo).max(0) as usize;
        if let Some(bin) = out.get_mut(i) {
            bin.count += b.count;
        }
    }
    if let Some(b) = out.first_mut() {
        b.lower = b.lower.min(first.lower_seconds);
    }
    if let Some(b) = out.last_mut()
        && last.upper_seconds.is_infinite()
    {
        b.upper = f64::INFINITY;
    }
    let rows = rows.max(1);
    while out.len() > rows {
        out = out
            .chunks(2)
            .map(|c| Bin {
                lower: c[0].lower,
                upper: c[c.len() - 1].upper,
                count: c.iter().map(|b| b.count).sum(),
            })
            .collect();
    }
    out
}

/// A horizontal bar of `frac` (0..=1) of `width` cells, in eighths.
fn bar(frac: f64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (frac.clamp(0.0, 1.0) * width as f64 * 8.0).round() as usize;
    let mut s: String = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        s.push(PARTS[eighths % 8]);
    }
    s
}

fn distribution(ep: &v1::Endpoint, area: Rect, buf: &mut Buffer) {
    let w = ep.last.unwrap_or_default();
    let block = section(format!(
        " Latency, last window: {} requests ",
        human::rate(w.requests as f64)
    ));
    let inner = block.inner(area);
    block.render(area, buf);
    let buckets = ep
        .histogram
        .as_ref()
        .map(|h| h.buckets.as_slice())
        .unwrap_or_default();
    let bins = bins(buckets, inner.height as usize);
    if bins.is_empty() {
        Line::raw(" no requests in the last window")
            .dim()
            .render(inner, buf);
        return;
    }
    let total: u64 = bins.iter().map(|b| b.count).sum();
    let max = bins.iter().map(|b| b.count).max().unwrap_or(1).max(1);
    // "1.05ms–2.10ms", " 3.38k  36.4%", " ◂p50 p99".
    let label_w = 13;
    let tail_w = 14 + 9;
    let bar_w = (inner.width as usize)
        .saturating_sub(label_w + 1 + tail_w)
        .max(1);
    let within = |b: &Bin, q: Option<f64>| q.is_some_and(|q| q >= b.lower && q < b.upper);
    let lines: Vec<Line<'_>> = bins
        .iter()
        .map(|b| {
            let label = format!(
                "{}–{}",
                human::latency(Some(b.lower)),
                human::latency(Some(b.upper))
            );
            let mut marks = Vec::new();
            if within(b, w.p50_seconds) {
                marks.push("p50");
            }
            if within(b, w.p99_seconds) {
                marks.push("p99");
            }
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!(" ◂{}", marks.join(" "))
            };
            Line::from(vec![
                Span::raw(format!("{label:>label_w$} ")).dim(),
                Span::styled(
                    format!("{:<bar_w$}", bar(b.count as f64 / max as f64, bar_w)),
                    Style::new().fg(Color::Blue),
                ),
                Span::raw(format!(
                    " {:>6} {:>5}%",
                    human::rate(b.count as f64),
                    human::percent(b.count as f64 / total as f64)
                )),
                Span::styled(marks, Style::new().fg(Color::Magenta)),
            ])
        })
        .collect();
    Paragraph::new(lines).render(inner, buf);
}

/// x: seconds before now, one point per window.
fn series(h: &[v1::Point], window: f64, f: impl Fn(&v1::Point) -> Option<f64>) -> Vec<(f64, f64)> {
    let n = h.len();
    h.iter()
        .enumerate()
        .filter_map(|(i, p)| f(p).map(|v| (-((n - 1 - i) as f64) * window, v)))
        .collect()
}

fn x_axis<'a>(n: usize, window: f64) -> Axis<'a> {
    let span = (n.saturating_sub(1)) as f64 * window;
    Axis::default()
        .bounds([-span.max(window), 0.0])
        .labels([
            format!("-{}", human::latency(Some(span.max(window)))),
            "now".to_string(),
        ])
        .style(Style::new().dim())
}

fn no_history(block: Block<'_>, area: Rect, buf: &mut Buffer) {
    Paragraph::new(Line::raw(" no history yet").dim())
        .block(block)
        .render(area, buf);
}

fn rps_chart(h: &[v1::Point], window: f64, area: Rect, buf: &mut Buffer) {
    let block = section(format!(" RPS, last {} windows ", h.len()));
    if h.is_empty() {
        return no_history(block, area, buf);
    }
    let data = series(h, window, |p| Some(p.rps));
    let max = data.iter().map(|p| p.1).fold(0.0, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    Chart::new(vec![
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Green))
            .data(&data),
    ])
    .block(block)
    .x_axis(x_axis(h.len(), window))
    .y_axis(
        Axis::default()
            .bounds([0.0, top])
            .labels(["0".to_string(), human::rate(top)])
            .style(Style::new().dim()),
    )
    .render(area, buf);
}

fn latency_chart(h: &[v1::Point], window: f64, area: Rect, buf: &mut Buffer) {
    let block = section(" Latency p50 / p99 ".into());
    if h.is_empty() {
        return no_history(block, area, buf);
    }
    let positive = |v: f64| (v > 0.0).then_some(v);
    let p50 = series(h, window, |p| positive(p.p50_seconds));
    let p99 = series(h, window, |p| positive(p.p99_seconds));
    let max = p99.iter().chain(&p50).map(|p| p.1).fold(0.0, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1e-3 };
    Chart::new(vec![
        Dataset::default()
            .name("p50")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Cyan))
            .data(&p50),
        Dataset::default()
            .name("p99")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Magenta))
            .data(&p99),
    ])
    .block(block)
    .x_axis(x_axis(h.len(), window))
    .y_axis(
        Axis::default()
            .bounds([0.0, top])
            .labels(["0".to_string(), human::latency(Some(top))])
            .style(Style::new().dim()),
    )
    .render(area, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(lower_us: f64, upper_us: f64, count: u64) -> v1::Bucket {
        v1::Bucket {
            lower_seconds: lower_us / 1e6,
            upper_seconds: upper_us / 1e6,
            count,
        }
    }

    #[test]
    fn bins_group_by_power_of_two_and_fill_gaps() {
        // Bins are powers of two of seconds: 2^-14 s = 61 µs, 2^-12 s = 244 µs.
        let b = [
            bucket(66.0, 68.0, 3),
            bucket(70.0, 72.0, 2),
            bucket(270.0, 280.0, 5),
        ];
        let bins = bins(&b, 10);
        assert_eq!(bins.len(), 3);
        assert_eq!(bins.iter().map(|b| b.count).collect::<Vec<_>>(), [5, 0, 5]);
        assert!((bins[0].lower - 2f64.powi(-14)).abs() < 1e-15);
        // Fewer rows: neighbours merge, nothing is lost.
        let merged = super::bins(&b, 2);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged.iter().map(|b| b.count).sum::<u64>(), 10);
        assert!(super::bins(&[], 5).is_empty());
        // The overflow bucket keeps its infinite edge.
        let inf = super::bins(&[bucket(1.0, 2.0, 1), bucket(6.8e7, f64::INFINITY, 1)], 40);
        assert!(inf.last().unwrap().upper.is_infinite());
    }

    #[test]
    fn bars_use_eighths() {
        assert_eq!(bar(1.0, 3), "███");
        assert_eq!(bar(0.5, 3), "█▌");
        assert_eq!(bar(0.0, 3), "");
    }
}
