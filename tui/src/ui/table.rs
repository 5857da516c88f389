//! The table of endpoints and the sparklines of the selected one.

use ratatui::{
    buffer::Buffer,
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{
        Block, Borders, Cell, Paragraph, RenderDirection, Row, Sparkline, Table, Widget, Wrap,
    },
};

use super::error_span;
use crate::{
    app::{App, Conn, Entry, SortKey},
    human,
};

/// Numeric columns: title and width.
const NUMBERS: [(&str, u16); 6] = [
    ("RPS", 6),
    ("P50", 6),
    ("P90", 6),
    ("P99", 6),
    ("ERR%", 5),
    ("B/S", 6),
];
const DIR_WIDTH: u16 = 3;
const SPACING: u16 = 1;

/// Shortens `s` to `width` characters with an ellipsis, keeping the end of paths (their most
/// specific part) and the start of anything else.
pub(crate) fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    if s.starts_with('/') {
        let tail: String = s.chars().skip(n - (width - 1)).collect();
        format!("…{tail}")
    } else {
        let head: String = s.chars().take(width - 1).collect();
        format!("{head}…")
    }
}

/// Shortens an `address:port` to `width` characters, keeping the port (what tells two
/// endpoints of one long IPv6 address apart).
pub(crate) fn fit_addr(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    match s.rsplit_once(':') {
        Some((host, port)) if port.len() + 2 < width => {
            let keep = width - port.len() - 2;
            let head: String = host.chars().take(keep).collect();
            format!("{head}…:{port}")
        }
        _ => fit(s, width),
    }
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).alignment(Alignment::Right))
}

/// The numeric columns shown at this width: all of them unless the name column would get
/// narrower than [`MIN_NAME`]; then P90, then B/S, are left out.
fn numbers_for(width: u16, other: u16) -> Vec<(&'static str, u16)> {
    let mut cols: Vec<(&str, u16)> = NUMBERS.to_vec();
    for drop in ["P90", "B/S"] {
        let used: u16 = cols.iter().map(|(_, w)| w + SPACING).sum::<u16>() + other;
        if width.saturating_sub(used) >= MIN_NAME {
            break;
        }
        cols.retain(|(t, _)| *t != drop);
    }
    cols
}

/// Narrowest name column before numeric columns make room.
const MIN_NAME: u16 = 18;

pub(super) fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let multi = app.multi_node();
    let node_w = if multi {
        app.widths.1.clamp(4, 12) as u16
    } else {
        0
    };
    let addr_w = app.widths.0.clamp(8, 23) as u16;
    // Node, address and direction columns with their spacing.
    let other = if multi { node_w + SPACING } else { 0 } + addr_w + SPACING + DIR_WIDTH + SPACING;
    let numbers = numbers_for(area.width, other);
    let used: u16 = numbers.iter().map(|(_, w)| w + SPACING).sum::<u16>() + other;
    let name_w = area.width.saturating_sub(used).max(4);

    let mut widths = Vec::new();
    let mut titles = Vec::new();
    if multi {
        widths.push(Constraint::Length(node_w));
        titles.push(Cell::from("NODE"));
    }
    widths.extend([
        Constraint::Length(name_w),
        Constraint::Length(addr_w),
        Constraint::Length(DIR_WIDTH),
    ]);
    let arrow = |up: bool| if up { "▲" } else { "▼" };
    let name_title = if app.sort == SortKey::Name {
        format!("NAME{}", arrow(!app.reverse))
    } else {
        "NAME".to_string()
    };
    titles.extend([
        Cell::from(name_title),
        Cell::from("ENDPOINT"),
        Cell::from("DIR"),
    ]);
    for (t, w) in &numbers {
        widths.push(Constraint::Length(*w));
        let title = if *t == app.sort.label() {
            format!("{t}{}", arrow(app.reverse))
        } else {
            t.to_string()
        };
        titles.push(right(title));
    }

    let height = area.height.saturating_sub(1) as usize;
    let selected = app.selected;
    // The app keeps the selection on screen; stay safe if the size it knows is stale.
    let offset = app
        .offset
        .min(selected)
        .max((selected + 1).saturating_sub(height));
    let rows = (offset..(offset + height).min(app.row_count())).filter_map(|i| {
        let e = app.row(i)?;
        let row = row(
            e,
            multi,
            node_w as usize,
            name_w as usize,
            addr_w as usize,
            &numbers,
        );
        Some(if i == selected {
            row.style(Style::new().add_modifier(Modifier::REVERSED))
        } else {
            row
        })
    });
    let header = Row::new(titles).style(Style::new().bold().fg(Color::Cyan));
    Table::new(rows, widths)
        .header(header)
        .column_spacing(SPACING)
        .render(area, buf);

    if app.row_count() == 0 {
        let msg_area = Rect {
            y: area.y + area.height / 2,
            height: area.height.saturating_sub(area.height / 2),
            ..area
        };
        Paragraph::new(empty_message(app))
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true })
            .render(msg_area, buf);
    }
}

fn row(
    e: &Entry,
    multi: bool,
    node_w: usize,
    name_w: usize,
    addr_w: usize,
    numbers: &[(&str, u16)],
) -> Row<'static> {
    let mut cells = Vec::with_capacity(10);
    if multi {
        cells.push(Cell::from(fit(&e.node, node_w)));
    }
    cells.extend([
        Cell::from(fit(&e.name, name_w)),
        Cell::from(fit_addr(&e.addr, addr_w)),
        Cell::from(e.direction.short()),
    ]);
    let err = e.error_ratio();
    for (t, _) in numbers {
        cells.push(match *t {
            "RPS" => right(human::rate(e.rps())),
            "P50" => right(human::latency(e.p50())),
            "P90" => right(human::latency(e.p90())),
            "P99" => right(human::latency(e.p99())),
            "ERR%" => Cell::from(
                Line::from(error_span(human::percent(err), err)).alignment(Alignment::Right),
            ),
            _ => right(human::bytes(e.bytes_per_second())),
        });
    }
    Row::new(cells)
}

fn empty_message(app: &App) -> Line<'static> {
    let any = |f: fn(&Conn) -> bool| app.agents.iter().any(|a| f(&a.conn));
    let text = if !app.active_filter().is_empty() && app.known > 0 {
        format!(
            "Nothing matches \"{}\" (Esc clears the filter).",
            app.active_filter()
        )
    } else if !any(|c| matches!(c, Conn::Connected)) {
        if any(|c| matches!(c, Conn::Down { .. }))
            || app.agents.iter().any(|a| a.last_error.is_some())
        {
            "No agent reachable yet; retrying (errors above). Is kite-agent running there? See --addr, --kube."
                .into()
        } else {
            "Connecting...".into()
        }
    } else {
        "No endpoints yet: an agent shows the HTTP traffic of its --cgroup cgroups and enrolled pods."
            .into()
    };
    Line::from(text).dim()
}

/// RPS and p99 history of the selected endpoint, newest on the right.
pub(super) fn sparklines(app: &App, area: Rect, buf: &mut Buffer) {
    let Some(e) = app.selected_entry() else {
        return;
    };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let h = &app.detailed(e).history;
    let newest_first = |f: fn(&kite_proto::v1::Point) -> u64, width: u16| -> Vec<u64> {
        h.iter().rev().take(width as usize).map(f).collect()
    };
    let max_rps = h.iter().map(|p| p.rps).fold(0.0, f64::max);
    let max_p99 = h.iter().map(|p| p.p99_seconds).fold(0.0, f64::max);
    let title = |what: &str, now: String, max: Option<String>, name: bool| {
        let mut spans = vec![Span::raw(format!(" {what} ")).bold(), Span::raw(now)];
        if let Some(m) = max {
            spans.push(Span::raw(format!(" (max {m})")));
        }
        spans.push(Span::raw(" "));
        if name {
            spans.push(Span::raw(format!("· {} ", fit(&e.name, 24))).dim());
        }
        Line::from(spans)
    };
    let has = !h.is_empty();
    Sparkline::default()
        .block(Block::new().borders(Borders::TOP).title(title(
            "RPS",
            human::rate(e.rps()),
            has.then(|| human::rate(max_rps)),
            true,
        )))
        .data(newest_first(|p| (p.rps * 100.0).round() as u64, left.width))
        .direction(RenderDirection::RightToLeft)
        .style(Style::new().fg(Color::Green))
        .render(left, buf);
    Sparkline::default()
        .block(Block::new().borders(Borders::TOP).title(title(
            "p99",
            human::latency(e.p99()),
            has.then(|| human::latency(Some(max_p99))),
            false,
        )))
        .data(newest_first(
            |p| (p.p99_seconds * 1e6).round() as u64,
            right.width,
        ))
        .direction(RenderDirection::RightToLeft)
        .style(Style::new().fg(Color::Magenta))
        .render(right, buf);
}

#[cfg(test)]
mod tests {
    use super::{fit, fit_addr};

    #[test]
    fn long_addresses_keep_their_port() {
        assert_eq!(fit_addr("10.0.0.1:8080", 23), "10.0.0.1:8080");
        let v6 = "[2001:db8:aaaa:bbbb:cccc::1]:8080";
        let short = fit_addr(v6, 23);
        assert_eq!(short.chars().count(), 23);
        assert!(short.ends_with("…:8080"), "{short}");
        assert!(short.starts_with("[2001:db8"), "{short}");
    }

    #[test]
    fn fit_keeps_the_end_of_paths_and_the_start_of_names() {
        assert_eq!(fit("shop/web", 10), "shop/web");
        assert_eq!(fit("shop/web-7d9f8-x2z", 10), "shop/web-…");
        assert_eq!(
            fit("/kubepods.slice/pod1.slice/app.scope", 11),
            "…/app.scope"
        );
        assert_eq!(fit("abc", 0), "");
    }
}
