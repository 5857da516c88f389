//! The routes pane of the detail view: one line per route (HTTP/1) or gRPC method of the
//! endpoint, with its last window (RPS, p50/p90/p99, ERR% and 4XX%), its requests since
//! first seen and a sparkline of its p99 over the windows the dashboard has seen.
//!
//! ```text
//!  Routes (3) · by p99 ─────────────────────────────────────────────────────
//!  ROUTE                 RPS    P50    P90    P99  ERR%  4XX%    REQ  P99 HISTORY
//!  /orders/*             120 4.50ms 9.00ms 18.0ms  2.11  0.97  1.48M  ▂▃▅▇█▆▅
//! ```

use kite_proto::v1;
use ratatui::{
    buffer::Buffer,
    layout::{Alignment, Constraint, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Row, Table, Widget},
};

use super::{error_span, table::fit_method};
use crate::{
    app::{App, Entry, ROUTE_HISTORY, RoutePoint, Stats},
    human,
};

/// Rows a pane of `routes` routes wants: a title, a header, a line each.
pub(super) fn wanted_height(routes: usize) -> u16 {
    (routes as u16).saturating_add(2)
}

/// Eighths of a cell, lowest to highest.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The newest `width` values as a one-line sparkline, newest on the right, scaled to the
/// largest; a window without a value (0) is a space.
pub(crate) fn spark(values: &[f32], width: usize) -> String {
    let shown = &values[values.len().saturating_sub(width)..];
    let max = shown.iter().copied().fold(0.0f32, f32::max);
    let mut s: String = " ".repeat(width - shown.len());
    for &v in shown {
        if v.is_nan() || v <= 0.0 || max <= 0.0 {
            s.push(' ');
        } else {
            let i = ((v / max) * 8.0).ceil() as usize;
            s.push(BARS[i.clamp(1, 8) - 1]);
        }
    }
    s
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).alignment(Alignment::Right))
}

/// The pane of `e`'s routes in `area`.
pub(super) fn pane(app: &App, e: &Entry, area: Rect, buf: &mut Buffer) {
    let calls = app.routes_of(e);
    let grpc = e.is_grpc();
    let what = if grpc { "gRPC methods" } else { "Routes" };
    let order = if app.sort.is_text() {
        "p99".to_string()
    } else {
        app.sort.label().to_lowercase()
    };
    let body = area.height.saturating_sub(2) as usize;
    let more = calls.len().saturating_sub(body);
    let title = if more > 0 {
        format!(" {what} ({}, {more} not shown) · by {order} ", calls.len())
    } else {
        format!(" {what} ({}) · by {order} ", calls.len())
    };
    let block = Block::new()
        .borders(Borders::TOP)
        .title(Span::raw(title).bold().fg(Color::Cyan));
    let inner = block.inner(area);
    block.render(area, buf);

    // Numbers as in the table, then the requests since first seen and the history.
    let numbers: [(&str, u16); 7] = [
        ("RPS", 6),
        ("P50", 6),
        ("P90", 6),
        ("P99", 6),
        ("ERR%", 5),
        ("4XX%", 5),
        ("REQ", 6),
    ];
    let fixed: u16 = numbers.iter().map(|(_, w)| w + 1).sum();
    let room = inner.width.saturating_sub(fixed + 1);
    let widest = calls
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0) as u16;
    // The name first (up to 40 columns), then a history of at least 8 windows; on a wide
    // pane the statuses of the last window too.
    let name_w = widest.clamp(12, 40).min(room.saturating_sub(8)).max(8);
    let status_w = if inner.width >= 160 { 32 } else { 0 };
    let spark_w = room
        .saturating_sub(name_w + status_w + u16::from(status_w > 0))
        .min(ROUTE_HISTORY as u16);
    let mut widths = vec![Constraint::Length(name_w)];
    widths.extend(numbers.iter().map(|(_, w)| Constraint::Length(*w)));
    widths.push(Constraint::Length(spark_w));
    let mut header: Vec<Cell<'static>> = vec![Cell::from(if grpc { "METHOD" } else { "ROUTE" })];
    header.extend(numbers.iter().map(|(k, _)| right(k.to_string())));
    header.push(Cell::from(if spark_w >= 11 {
        "P99 HISTORY"
    } else {
        "P99 HIST"
    }));
    if status_w > 0 {
        widths.push(Constraint::Length(status_w));
        header.push(Cell::from("STATUSES"));
    }

    let marked = app.selected_route(e);
    let rows = calls.iter().take(body).map(|c| {
        let w = c.last.unwrap_or_default();
        let s = Stats::of(&w);
        let name = match (c.name.is_empty(), grpc) {
            (false, _) => c.name.clone(),
            (true, true) => "(method unknown)".into(),
            (true, false) => "(route unknown)".into(),
        };
        let p99s: Vec<f32> = app
            .route_points(&e.key, c.id)
            .map(|h| h.iter().map(|p: &RoutePoint| p.p99).collect())
            .unwrap_or_default();
        let (e5, e4) = (s.error_ratio(), s.client_error_ratio());
        let mut cells = vec![
            Cell::from(fit_method(&name, name_w as usize)),
            right(human::rate(s.rps)),
            latency(app, s.p50),
            latency(app, s.p90),
            latency(app, s.p99),
            Cell::from(Line::from(error_span(human::percent(e5), e5)).alignment(Alignment::Right)),
            Cell::from(
                Line::from(Span::styled(
                    human::percent(e4),
                    if e4 > 0.0 {
                        Style::new().fg(Color::Yellow)
                    } else {
                        Style::new()
                    },
                ))
                .alignment(Alignment::Right),
            ),
            right(human::rate(
                c.totals.as_ref().map_or(0, |t| t.requests) as f64
            )),
            Cell::from(Span::styled(
                spark(&p99s, spark_w as usize),
                Style::new().fg(Color::Magenta),
            )),
        ];
        if status_w > 0 {
            cells.push(Cell::from(Span::raw(statuses(c)).dim()));
        }
        let style = if marked == Some(c.id) {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        Row::new(cells).style(style)
    });
    Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().bold().fg(Color::Cyan)))
        .column_spacing(1)
        .render(inner, buf);
}

/// A latency cell coloured by the user's thresholds, as the table's.
fn latency(app: &App, secs: Option<f64>) -> Cell<'static> {
    let t = app.thresholds;
    let style = match secs {
        Some(s) if s >= t.bad => Style::new().fg(Color::Red),
        Some(s) if s >= t.warn => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    };
    Cell::from(Line::from(Span::styled(human::latency(secs), style)).alignment(Alignment::Right))
}

/// The statuses of a route's last window as one short text (`200 30 404 2`, gRPC: `OK 280
/// NOT_FOUND 15`), most first.
fn statuses(c: &v1::RpcMethod) -> String {
    let mut st: Vec<&v1::StatusCount> = c.statuses.iter().collect();
    st.sort_by(|a, b| b.count.cmp(&a.count).then(a.status.cmp(&b.status)));
    st.iter()
        .map(|s| {
            if s.name.is_empty() {
                format!("{} {}", s.status, s.count)
            } else {
                format!("{} {}", s.name, s.count)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::spark;

    #[test]
    fn sparks_scale_to_the_largest_and_leave_idle_windows_blank() {
        assert_eq!(spark(&[1.0, 2.0, 4.0, 8.0], 4), "▁▂▄█");
        assert_eq!(spark(&[0.0, 8.0], 4), "   █");
        assert_eq!(spark(&[1.0, 2.0, 3.0], 2), "▆█");
        assert_eq!(spark(&[], 3), "   ");
    }
}
