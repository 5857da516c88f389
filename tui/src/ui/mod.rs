//! Drawing: reads an [`App`] and paints it, never changes it.
//!
//! ```text
//! ┌ header: totals, sort, filter, paused ───────────────────────────┐
//! │ one line per agent: connected / connecting / down (last error)  │
//! │ table of endpoints (or the detail view of one)                  │
//! │ sparklines of the selected row                                  │
//! └ footer: key hints (or the filter being typed) ──────────────────┘
//! ```

mod detail;
mod table;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph, Widget, Wrap},
};

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
        let agent_lines = app.agents.len().clamp(1, MAX_AGENT_LINES) as u16;
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

fn header(app: &App, area: Rect, buf: &mut Buffer) {
    let t = &app.totals;
    let shown = if app.row_count() == app.known {
        format!("{} endpoints", app.known)
    } else {
        format!("{}/{} endpoints", app.row_count(), app.known)
    };
    let arrow = if app.reverse { "▲" } else { "▼" };
    let mut spans = vec![
        Span::styled(" kite ", Style::new().bold().reversed()),
        Span::raw(format!(" {shown} │ ")),
        Span::raw("RPS ").dim(),
        Span::raw(human::rate(t.rps)).bold(),
        Span::raw(" │ ").dim(),
        Span::raw("err ").dim(),
        error_span(
            format!("{}%", human::percent(t.error_ratio())),
            t.error_ratio(),
        ),
        Span::raw(" │ ").dim(),
        Span::raw(format!("{}/s", human::bytes(t.bytes_per_second))),
        Span::raw(" │ ").dim(),
        Span::raw(format!("sort {}{arrow}", app.sort.label())),
    ];
    if !app.filter.is_empty() {
        spans.push(Span::raw(" │ ").dim());
        spans.push(Span::styled(
            format!("filter \"{}\"", app.filter),
            Style::new().fg(Color::Cyan),
        ));
    }
    if app.paused {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            " PAUSED ",
            Style::new().bg(Color::Yellow).fg(Color::Black).bold(),
        ));
    }
    Line::from(spans).render(area, buf);
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

fn agent_line(a: &crate::app::AgentView) -> Line<'_> {
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
    let lines: Vec<Line<'_>> = if app.agents.len() <= MAX_AGENT_LINES {
        app.agents.iter().map(agent_line).collect()
    } else {
        // Many agents: a count, then the ones that are not connected.
        let count = |f: fn(&Conn) -> bool| app.agents.iter().filter(|a| f(&a.conn)).count();
        let up = count(|c| matches!(c, Conn::Connected));
        let connecting = count(|c| matches!(c, Conn::Connecting { .. }));
        let down = count(|c| matches!(c, Conn::Down { .. }));
        let mut lines = vec![Line::from(vec![
            Span::raw(format!(" {} agents: ", app.agents.len())),
            Span::styled(format!("{up} connected"), Style::new().fg(Color::Green)),
            Span::raw(", "),
            Span::styled(
                format!("{connecting} connecting"),
                Style::new().fg(Color::Yellow),
            ),
            Span::raw(", "),
            Span::styled(format!("{down} down"), Style::new().fg(Color::Red)),
        ])];
        lines.extend(
            app.agents
                .iter()
                .filter(|a| !matches!(a.conn, Conn::Connected))
                .chain(
                    app.agents
                        .iter()
                        .filter(|a| matches!(a.conn, Conn::Connected)),
                )
                .take(MAX_AGENT_LINES - 1)
                .map(agent_line),
        );
        lines
    };
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
            View::Table => &[
                ("q", "quit"),
                ("↑↓", "move"),
                ("Enter", "detail"),
                ("s", "sort"),
                ("S", "reverse"),
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
    ("Home End g G", "first / last row"),
    ("s", "sort by the next column: RPS, p99, errors, name"),
    ("S", "reverse the sort order"),
    ("/", "filter: type text, Enter applies, Esc clears"),
    ("Enter", "detail of the selected endpoint"),
    ("Esc", "back to the table / clear the filter"),
    ("space", "pause the display (data keeps arriving)"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];

fn help(area: Rect, buf: &mut Buffer) {
    let width = 64.min(area.width);
    let height = (HELP.len() as u16 + 5).min(area.height);
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
    lines.push(Line::raw(" RPS, P50/P90/P99: the agent's last window. ERR%: 4xx + 5xx.").dim());
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
