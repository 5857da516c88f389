//! Drawing: reads an [`App`] and paints it, never changes it.
//!
//! ```text
//! ┌ header: totals, sort, filter, paused ───────────────────────────┐
//! │ one line per agent: connected / connecting / down (last error)  │
//! │ table of endpoints or routes (or the detail view of one)        │
//! │ sparklines of the selected row                                  │
//! └ footer: key hints (or the filter being typed) ──────────────────┘
//! ```

mod detail;
mod routes;
mod table;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph, Widget, Wrap},
};

use kite_proto::v1;

use crate::{
    app::{App, Conn, View},
    human,
};

/// Most lines used for agent states.
const MAX_AGENT_LINES: usize = 3;
/// Height of the sparkline panel under the table (a title line and three rows of bars).
const SPARK_HEIGHT: u16 = 4;

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let l = Areas::of(self, area);
        header(self, l.header, buf);
        agents(self, l.agents, buf);
        match &self.view {
            View::Table => {
                table::render(self, l.body, buf);
                if let Some(spark) = l.spark {
                    table::sparklines(self, spark, buf);
                }
            }
            View::Detail(entry) => {
                let body = l.spark.map_or(l.body, |s| l.body.union(s));
                detail::render(self, entry, body, buf);
            }
        }
        footer(self, l.footer, buf);
        if self.help {
            help(area, buf);
        }
    }
}

/// Where each part goes.
struct Areas {
    header: Rect,
    agents: Rect,
    body: Rect,
    spark: Option<Rect>,
    footer: Rect,
}

impl Areas {
    fn of(app: &App, area: Rect) -> Self {
        let notice = usize::from(app.notice.is_some());
        let agent_lines = (app.present().count() + notice).clamp(1, MAX_AGENT_LINES) as u16;
        let spark = if area.height >= 16 { SPARK_HEIGHT } else { 0 };
        let [header, agents, body, spark_area, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(agent_lines),
            Constraint::Fill(1),
            Constraint::Length(spark),
            Constraint::Length(1),
        ])
        .areas(area);
        Self {
            header,
            agents,
            body,
            spark: (spark > 0).then_some(spark_area),
            footer,
        }
    }
}

/// Rows of endpoints that fit in the table at the app's terminal size.
pub fn table_body_height(app: &App) -> usize {
    let area = Rect::new(0, 0, app.size.0, app.size.1);
    // The table's own header row.
    Areas::of(app, area).body.height.saturating_sub(1) as usize
}

/// The table's columns, left to right, at the app's terminal width (what `1`–`9`, `0`, `s`
/// and `<`/`>` sort by).
pub(crate) fn table_columns(app: &App) -> Vec<crate::app::SortKey> {
    table::columns(app, app.size.0)
        .into_iter()
        .map(|c| c.0)
        .collect()
}

fn header(app: &App, area: Rect, buf: &mut Buffer) {
    let t = &app.totals;
    let mut shown = if app.routes {
        format!(
            "{} routes of {} endpoints",
            app.row_count(),
            app.endpoint_rows()
        )
    } else if app.endpoint_rows() == app.known {
        format!("{} endpoints", app.known)
    } else {
        format!("{}/{} endpoints", app.endpoint_rows(), app.known)
    };
    if app.stale_rows > 0 {
        shown.push_str(&format!(
            " ({} stale{})",
            app.stale_rows,
            if app.hide_stale { ", hidden" } else { "" }
        ));
    }
    let sep = || Span::raw(" │ ").dim();
    // Each direction on its own: a call between two measured workloads is in both.
    let side = |name: &'static str, s: &crate::app::Stats, with_4xx: bool| {
        let (e5, e4) = (s.error_ratio(), s.client_error_ratio());
        let mut v = vec![
            sep(),
            Span::raw(format!("{name} ")).dim(),
            Span::raw(format!("{}/s", human::rate(s.rps))).bold(),
            Span::raw(" err ").dim(),
            error_span(format!("{}%", human::percent(e5)), e5),
        ];
        if with_4xx {
            v.push(Span::raw(" 4xx ").dim());
            v.push(Span::styled(
                format!("{}%", human::percent(e4)),
                if e4 > 0.0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new()
                },
            ));
        }
        v
    };
    let sides = |with_4xx: bool| {
        let mut v = Vec::new();
        for (d, name, s) in [
            (v1::Direction::Inbound, "in", &t.inbound),
            (v1::Direction::Outbound, "out", &t.outbound),
        ] {
            if app.direction.is_none_or(|x| x == d) {
                v.extend(side(name, s, with_4xx));
            }
        }
        v
    };
    // What the user set comes first, so that a narrow terminal cuts figures, not states.
    let mut head = vec![Span::raw(format!(" {shown}"))];
    if app.routes {
        // The view and its order (`r` opened it slowest p99 first; any column sorts it).
        head.push(sep());
        head.push(Span::styled(
            format!(
                "routes by {}{}",
                app.sort.label().to_lowercase(),
                if app.reverse { " (reversed)" } else { "" }
            ),
            Style::new().fg(Color::Cyan),
        ));
    } else if app.grouping != crate::app::Grouping::Endpoint {
        head.push(sep());
        head.push(Span::styled(
            format!("by {}", app.grouping.label()),
            Style::new().fg(Color::Cyan),
        ));
    }
    if let Some(d) = app.direction {
        head.push(sep());
        head.push(Span::styled(
            format!("{} only", d.short()),
            Style::new().fg(Color::Cyan),
        ));
    }
    if !app.filter.is_empty() {
        head.push(sep());
        head.push(Span::styled(
            format!("filter \"{}\"", app.filter),
            Style::new().fg(Color::Cyan),
        ));
    }
    if app.paused {
        head.push(Span::raw(" "));
        head.push(Span::styled(
            " PAUSED ",
            Style::new().bg(Color::Yellow).fg(Color::Black).bold(),
        ));
    }
    let bytes = vec![
        sep(),
        Span::raw(format!(
            "{}/s",
            human::bytes(t.inbound.bytes_per_second + t.outbound.bytes_per_second)
        )),
    ];
    let badge = Span::styled(" kite ", Style::new().bold().reversed());
    let width = |v: &[Span<'_>]| v.iter().map(|s| s.width()).sum::<usize>();
    let room = area.width as usize;
    let full = sides(true);
    let mut line = Vec::new();
    let base = width(&head) + width(&full);
    if base + badge.width() + width(&bytes) <= room {
        line.push(badge);
        line.extend(head);
        line.extend(full);
        line.extend(bytes);
    } else if base + badge.width() <= room {
        line.push(badge);
        line.extend(head);
        line.extend(full);
    } else if base <= room {
        line.extend(head);
        line.extend(full);
    } else {
        // The 4xx shares are in the table's 4XX% column.
        line.extend(head);
        line.extend(sides(false));
    }
    Line::from(line).render(area, buf);
}

/// An error percentage, coloured by how bad it is.
pub(crate) fn error_span<'a>(text: String, ratio: f64) -> Span<'a> {
    let style = if ratio >= 0.05 {
        Style::new().fg(Color::Red)
    } else if ratio > 0.0 {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    };
    Span::styled(text, style)
}

fn agent_line(a: &crate::app::AgentView, stale: Option<std::time::Duration>) -> Line<'_> {
    let node = a.node.as_deref().filter(|n| *n != a.label);
    let mut spans = Vec::new();
    let (mark, color) = match a.conn {
        Conn::Connected => ("●", Color::Green),
        Conn::Connecting { .. } => ("◌", Color::Yellow),
        Conn::Down { .. } => ("✗", Color::Red),
    };
    spans.push(Span::styled(format!(" {mark} "), Style::new().fg(color)));
    spans.push(Span::raw(a.label.as_str()).bold());
    if let Some(n) = node {
        spans.push(Span::raw(format!(" ({n})")));
    }
    spans.push(Span::raw(" "));
    // Just after the state word.
    let at = spans.len() + 1;
    match &a.conn {
        Conn::Connected => {
            spans.push(Span::styled("connected", Style::new().fg(color)));
            spans.push(Span::raw(format!(
                " · {} endpoints · window {}",
                a.endpoints,
                human::latency(Some(a.window_seconds))
            )));
        }
        Conn::Connecting { attempt } => {
            let text = if *attempt > 1 {
                format!("connecting (attempt {attempt})")
            } else {
                "connecting".to_string()
            };
            spans.push(Span::styled(text, Style::new().fg(color)));
            if let Some(e) = &a.last_error {
                spans.push(Span::raw(format!(" · last error: {e}")).dim());
            }
        }
        Conn::Down { error, retry_in } => {
            spans.push(Span::styled("down", Style::new().fg(color).bold()));
            spans.push(Span::raw(format!(": {error}")));
            spans.push(Span::raw(format!(" · retry in {}", retry(*retry_in))).dim());
        }
    }
    if let Some(age) = stale {
        // Right after the state word, so that a narrow terminal cuts the error instead.
        spans.insert(
            at,
            Span::styled(
                format!(
                    " (last snapshot {} ago, its rows kept; x hides)",
                    human::age(age)
                ),
                Style::new().fg(Color::DarkGray),
            ),
        );
    }
    Line::from(spans)
}

fn retry(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{s:.1}s")
    }
}

fn agents(app: &App, area: Rect, buf: &mut Buffer) {
    let mut lines: Vec<Line<'_>> = Vec::new();
    if let Some(n) = &app.notice {
        lines.push(Line::from(Span::styled(
            format!(" {n}"),
            Style::new().fg(Color::Yellow),
        )));
    }
    let room = MAX_AGENT_LINES - lines.len();
    let present = app.present();
    let n = present.clone().count();
    if n <= room {
        lines.extend(present.map(|(i, a)| agent_line(a, app.stale_for(i))));
    } else {
        // Many agents: a count, then the ones that are not connected.
        let count = |f: fn(&Conn) -> bool| present.clone().filter(|(_, a)| f(&a.conn)).count();
        let up = count(|c| matches!(c, Conn::Connected));
        let connecting = count(|c| matches!(c, Conn::Connecting { .. }));
        let down = count(|c| matches!(c, Conn::Down { .. }));
        lines.push(Line::from(vec![
            Span::raw(format!(" {n} agents: ")),
            Span::styled(format!("{up} connected"), Style::new().fg(Color::Green)),
            Span::raw(", "),
            Span::styled(
                format!("{connecting} connecting"),
                Style::new().fg(Color::Yellow),
            ),
            Span::raw(", "),
            Span::styled(format!("{down} down"), Style::new().fg(Color::Red)),
        ]));
        lines.extend(
            present
                .clone()
                .filter(|(_, a)| !matches!(a.conn, Conn::Connected))
                .chain(present.filter(|(_, a)| matches!(a.conn, Conn::Connected)))
                .take(room - 1)
                .map(|(i, a)| agent_line(a, app.stale_for(i))),
        );
    }
    Paragraph::new(lines).render(area, buf);
}

fn hint<'a>(key: &'a str, what: &'a str) -> [Span<'a>; 2] {
    [
        Span::styled(key, Style::new().fg(Color::Cyan).bold()),
        Span::raw(format!(" {what}  ")),
    ]
}

fn footer(app: &App, area: Rect, buf: &mut Buffer) {
    let line = if let Some(input) = &app.input {
        let mut spans = vec![
            Span::styled(" / ", Style::new().fg(Color::Cyan).bold()),
            Span::raw(input.as_str()),
            Span::styled("█", Style::new().add_modifier(Modifier::SLOW_BLINK)),
            Span::raw("   "),
        ];
        spans.extend(hint("Enter", "apply"));
        spans.extend(hint("Esc", "clear"));
        Line::from(spans)
    } else {
        let mut spans = vec![Span::raw(" ")];
        let hints: &[(&str, &str)] = match app.view {
            View::Table if app.routes => &[
                ("q", "quit"),
                ("Enter", "detail"),
                ("r", "endpoints"),
                ("1-9 s", "sort"),
                ("d", "dir"),
                ("/", "filter"),
                ("space", "pause"),
                ("?", "help"),
            ],
            View::Table => &[
                ("q", "quit"),
                ("Enter", "detail"),
                ("r", "routes"),
                ("1-9 s", "sort"),
                ("g", "group"),
                ("d", "dir"),
                ("/", "filter"),
                ("space", "pause"),
                ("?", "help"),
            ],
            View::Detail(_) => &[
                ("Esc", "back"),
                ("↑↓", "prev/next"),
                ("space", "pause"),
                ("?", "help"),
                ("q", "quit"),
            ],
        };
        // What does not fit goes, least needed first (the help lists every key).
        let width = |h: &[(&str, &str)]| {
            1 + h
                .iter()
                .map(|(k, w)| k.chars().count() + w.len() + 3)
                .sum::<usize>()
        };
        let mut hints = hints.to_vec();
        for k in ["space", "d", "g", "/"] {
            if width(&hints) <= area.width as usize {
                break;
            }
            hints.retain(|(key, _)| *key != k);
        }
        for (k, w) in hints {
            spans.extend(hint(k, w));
        }
        Line::from(spans)
    };
    line.style(Style::new().bg(Color::DarkGray))
        .render(area, buf);
}

/// Keys, as the help overlay lists them.
const HELP: &[(&str, &str)] = &[
    ("↑ ↓  k j", "move the selection"),
    ("PgUp PgDn", "one page up / down"),
    ("Home End G", "first / last row"),
    (
        "g",
        "group: endpoint, workload, namespace (Enter → ▸ ▾ opens one)",
    ),
    ("1-9 0", "sort by column 1 … 10 (again: reverse)"),
    ("s > <", "sort by the next / previous column"),
    ("S", "reverse the sort order"),
    ("d", "direction: both, inbound only, outbound only"),
    ("/", "filter: type text, Enter applies, Esc clears"),
    ("Enter", "detail of the selected endpoint (its routes too)"),
    (
        "→ ← l h",
        "show / hide an endpoint's routes or gRPC methods",
    ),
    (
        "r",
        "routes of every endpoint, slowest p99 first; again: back",
    ),
    ("Esc", "back to the table / clear the filter"),
    ("space", "pause the display (data keeps arriving)"),
    ("x", "hide / show the greyed rows of agents that went away"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];

fn help(area: Rect, buf: &mut Buffer) {
    let width = 64.min(area.width);
    let height = (HELP.len() as u16 + 6).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    Clear.render(popup, buf);
    let mut lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(k, w)| {
            Line::from(vec![
                Span::styled(format!(" {k:>12}  "), Style::new().fg(Color::Cyan).bold()),
                Span::raw(*w),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::raw(" RPS, P50/P90/P99: the agent's last window. ERR%: 5xx (gRPC:").dim());
    lines
        .push(Line::raw(" server-error statuses); 4XX%: 4xx (gRPC: other statuses but OK).").dim());
    lines.push(Line::raw(" B/S: request + response bytes per second.").dim());
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(
            Block::bordered()
                .title(" kite-tui help ")
                .title_bottom(Line::from(" ? or Esc closes ").right_aligned()),
        )
        .render(popup, buf);
}

#[cfg(test)]
mod tests;
