//! The table of endpoints (gRPC methods or routes of unfolded endpoints as rows under them),
//! or of routes (the routes view), and the sparklines of the selected row.

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
    app::{App, Conn, RowView, SortKey, Stats},
    human,
};

/// Numeric columns and their widths, left to right.
const NUMBERS: [(SortKey, u16); 7] = [
    (SortKey::Rps, 6),
    (SortKey::P50, 6),
    (SortKey::P90, 6),
    (SortKey::P99, 6),
    (SortKey::Errors, 5),
    (SortKey::ClientErrors, 5),
    (SortKey::Bytes, 6),
];
/// Numeric columns left out, in this order, while the name column would be narrower than
/// [`MIN_NAME`].
const DROP: [SortKey; 4] = [
    SortKey::P90,
    SortKey::Bytes,
    SortKey::P50,
    SortKey::ClientErrors,
];
/// The same for the routes view, where the latencies matter most.
const DROP_ROUTES: [SortKey; 4] = [
    SortKey::Bytes,
    SortKey::P90,
    SortKey::ClientErrors,
    SortKey::P50,
];
const DIR_WIDTH: u16 = 3;
const SPACING: u16 = 1;
/// Narrowest name column before numeric columns make room.
const MIN_NAME: u16 = 18;
/// Widest name column: on a wide terminal the numbers stay beside the names instead of
/// being pushed to the right edge (long cgroup paths keep their end, see [`fit`]).
const MAX_NAME: u16 = 48;
/// Terminal width from which NAMESPACE and WORKLOAD get columns of their own (when known).
const K8S_COLUMNS_FROM: u16 = 120;

/// The table's columns at `width` for what `app` shows: (column, width), left to right.
pub(crate) fn columns(app: &App, width: u16) -> Vec<(SortKey, u16)> {
    if app.routes {
        return route_columns(app, width);
    }
    let w = &app.widths;
    let mut text: Vec<(SortKey, u16)> = Vec::new();
    if app.multi_node() {
        text.push((SortKey::Node, w.node.clamp(4, 12) as u16));
    }
    text.push((SortKey::Name, 0));
    if width >= K8S_COLUMNS_FROM {
        if w.namespace > 0 {
            text.push((SortKey::Namespace, w.namespace.clamp(9, 20) as u16));
        }
        if w.workload > 0 {
            text.push((SortKey::Workload, w.workload.clamp(8, 24) as u16));
        }
    }
    text.push((SortKey::Endpoint, w.addr.clamp(8, 23) as u16));
    if width >= K8S_COLUMNS_FROM && w.server > 0 {
        text.push((SortKey::Server, w.server.clamp(6, 24) as u16));
    }
    text.extend([
        (SortKey::Dir, DIR_WIDTH),
        (SortKey::Proto, w.proto.clamp(5, 12) as u16),
    ]);
    fill(text, SortKey::Name, w.name, &DROP, width)
}

/// The columns of the routes view: ROUTE first (it takes the room), then the endpoint's
/// NAME, ENDPOINT and DIR; PROTO from [`K8S_COLUMNS_FROM`] columns (a path or a gRPC method
/// already says which).
fn route_columns(app: &App, width: u16) -> Vec<(SortKey, u16)> {
    let w = &app.widths;
    let mut text: Vec<(SortKey, u16)> = Vec::new();
    if app.multi_node() {
        text.push((SortKey::Node, w.node.clamp(4, 12) as u16));
    }
    text.push((SortKey::Route, 0));
    let name = if width >= K8S_COLUMNS_FROM { 32 } else { 16 };
    text.push((SortKey::Name, w.name.clamp(6, name) as u16));
    text.push((SortKey::Endpoint, w.addr.clamp(8, 23) as u16));
    text.push((SortKey::Dir, DIR_WIDTH));
    if width >= K8S_COLUMNS_FROM {
        text.push((SortKey::Proto, w.proto.clamp(5, 12) as u16));
    }
    fill(text, SortKey::Route, w.route, &DROP_ROUTES, width)
}

/// `text` then the numeric columns, leaving out those of `drop` (in order) while the `grow`
/// column would be narrower than [`MIN_NAME`]; `grow` gets the room left, up to what its
/// widest text (`wanted`) needs and at most [`MAX_NAME`].
fn fill(
    mut text: Vec<(SortKey, u16)>,
    grow: SortKey,
    wanted: usize,
    drop: &[SortKey],
    width: u16,
) -> Vec<(SortKey, u16)> {
    let sum = |cols: &[(SortKey, u16)]| cols.iter().map(|(_, w)| w + SPACING).sum::<u16>();
    let mut numbers: Vec<(SortKey, u16)> = NUMBERS.to_vec();
    for d in drop {
        if width.saturating_sub(sum(&text) + sum(&numbers)) >= MIN_NAME {
            break;
        }
        numbers.retain(|(k, _)| k != d);
    }
    let room = width.saturating_sub(sum(&text) + sum(&numbers)).max(4);
    let grow_w = room.min((wanted as u16).clamp(MIN_NAME.min(room), MAX_NAME));
    for c in &mut text {
        if c.0 == grow {
            c.1 = grow_w;
        }
    }
    text.extend(numbers);
    text
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).alignment(Alignment::Right))
}

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

/// Shortens a gRPC method (`package.Service/Method`) to `width` characters, keeping its end:
/// the method and service names tell methods apart, the package rarely does.
pub(crate) fn fit_method(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width || width == 0 {
        return fit(s, width);
    }
    let tail: String = s.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
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

pub(super) fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let cols = columns(app, area.width);
    let widths: Vec<Constraint> = cols.iter().map(|(_, w)| Constraint::Length(*w)).collect();
    let titles: Vec<Cell<'static>> = cols
        .iter()
        .map(|(k, _)| {
            let title = if *k == app.sort {
                // ▲: A to Z, or smallest first; ▼ the other way.
                let up = k.is_text() != app.reverse;
                format!("{}{}", k.label(), if up { "▲" } else { "▼" })
            } else {
                k.label().to_string()
            };
            if k.is_text() {
                Cell::from(title)
            } else {
                right(title)
            }
        })
        .collect();

    let height = area.height.saturating_sub(1) as usize;
    let selected = app.selected;
    // The app keeps the selection on screen; stay safe if the size it knows is stale.
    let offset = app
        .offset
        .min(selected)
        .max((selected + 1).saturating_sub(height));
    let rows = (offset..(offset + height).min(app.row_count())).filter_map(|i| {
        if let Some(g) = app.group_row(i) {
            return Some(group_row(app, g, &cols, i == selected, app.row_is_stale(i)));
        }
        let v = app.row_view(i)?;
        let stale = app
            .row_is_stale(i)
            .then(|| app.stale_for(v.entry.key.agent))
            .flatten();
        Some(row(
            app,
            v,
            &cols,
            stale,
            i == selected,
            app.is_member_row(i),
        ))
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

/// A group's row: `▸`/`▾` and its name, the number of its endpoints in the ENDPOINT column,
/// its figures (percentiles from the merged histograms; `-` until every member's came).
fn group_row(
    app: &App,
    g: &crate::app::Group,
    cols: &[(SortKey, u16)],
    selected: bool,
    stale: bool,
) -> Row<'static> {
    let s = g.stats;
    let cells = cols.iter().map(|(k, w)| {
        let w = *w as usize;
        match k {
            SortKey::Name => {
                let mark = if app.is_expanded(&g.key) {
                    "▾"
                } else {
                    "▸"
                };
                Cell::from(format!("{mark} {}", fit(&g.name, w.saturating_sub(2))))
            }
            SortKey::Node => Cell::from(fit(&g.node, w)),
            SortKey::Namespace => Cell::from(fit(&g.key.namespace, w)),
            SortKey::Workload if g.key.namespace.is_empty() => Cell::from(""),
            SortKey::Workload => Cell::from(fit(&g.key.workload, w)),
            SortKey::Endpoint => Cell::from(fit(
                &match g.members.len() {
                    1 => "1 endpoint".to_string(),
                    n => format!("{n} endpoints"),
                },
                w,
            )),
            SortKey::Server | SortKey::Route => Cell::from(""),
            SortKey::Dir => Cell::from(g.direction.short()),
            SortKey::Proto => Cell::from(g.protocol.clone()),
            SortKey::Rps => right(human::rate(s.rps)),
            SortKey::P50 if stale => right(human::latency(s.p50)),
            SortKey::P90 if stale => right(human::latency(s.p90)),
            SortKey::P99 if stale => right(human::latency(s.p99)),
            SortKey::P50 => latency_cell(app, s.p50),
            SortKey::P90 => latency_cell(app, s.p90),
            SortKey::P99 => latency_cell(app, s.p99),
            SortKey::Errors if stale => right(human::percent(s.error_ratio())),
            SortKey::Errors => {
                let r = s.error_ratio();
                Cell::from(Line::from(error_span(human::percent(r), r)).alignment(Alignment::Right))
            }
            SortKey::ClientErrors => right(human::percent(s.client_error_ratio())),
            SortKey::Bytes => right(human::bytes(s.bytes_per_second)),
        }
    });
    let mut style = Style::new().bold();
    if stale {
        style = style.fg(Color::DarkGray);
    }
    if selected {
        style = style.add_modifier(Modifier::REVERSED);
    }
    Row::new(cells.collect::<Vec<_>>()).style(style)
}

/// A latency, coloured by the user's thresholds.
fn latency_cell(app: &App, secs: Option<f64>) -> Cell<'static> {
    let t = app.thresholds;
    let style = match secs {
        Some(s) if s >= t.bad => Style::new().fg(Color::Red),
        Some(s) if s >= t.warn => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    };
    Cell::from(Line::from(Span::styled(human::latency(secs), style)).alignment(Alignment::Right))
}

/// The NAME cell of an endpoint with gRPC methods or routes says whether they are unfolded
/// (`▾`) or not (`▸`); a method (route) row is indented under its endpoint and leaves the
/// other text cells empty. In the routes view a row is a route with its endpoint's cells.
///
/// A row of an agent that went away (`stale`: the time since its last snapshot) is grey,
/// without the colours of errors and latencies (old numbers), its name after `✗` and that age.
fn row(
    app: &App,
    v: RowView<'_>,
    cols: &[(SortKey, u16)],
    stale: Option<std::time::Duration>,
    selected: bool,
    member: bool,
) -> Row<'static> {
    // Members of an expanded group are indented under it.
    let indent = if member { "  " } else { "" };
    let e = v.entry;
    // With a NAMESPACE column the name is the pod's alone.
    let split = cols.iter().any(|(k, _)| *k == SortKey::Namespace);
    let stats = match v.method {
        Some(m) => m.last.as_ref().map(Stats::of).unwrap_or_default(),
        None => e.stats(),
    };
    let routes_view = app.routes;
    let call_name = |m: &'_ kite_proto::v1::RpcMethod| -> String {
        match (m.name.is_empty(), e.is_grpc()) {
            (false, _) => m.name.clone(),
            (true, true) => "(method unknown)".into(),
            (true, false) => "(route unknown)".into(),
        }
    };
    let cells = cols.iter().map(|(k, w)| {
        let w = *w as usize;
        match (k, v.method) {
            (SortKey::Route, Some(m)) => Cell::from(fit_method(&call_name(m), w)),
            (SortKey::Route, None) => Cell::from(""),
            (SortKey::Name, Some(m)) if !routes_view => Cell::from(format!(
                "{indent}  └ {}",
                fit_method(&call_name(m), w.saturating_sub(4 + indent.len()))
            )),
            (SortKey::Name, _) => {
                let name = match e.ep.workload.as_ref() {
                    Some(wl) if split && !wl.pod.is_empty() => wl.pod.as_str(),
                    _ => e.name.as_str(),
                };
                let age = stale.map(|d| format!("✗{} ", human::age(d)));
                let w =
                    w.saturating_sub(age.as_ref().map_or(0, |a| a.chars().count()) + indent.len());
                let text = if routes_view || e.calls().is_empty() {
                    fit(name, w)
                } else {
                    let mark = if app.is_unfolded(&e.key) {
                        "▾"
                    } else {
                        "▸"
                    };
                    format!("{mark} {}", fit(name, w.saturating_sub(2)))
                };
                Cell::from(format!("{indent}{}{text}", age.unwrap_or_default()))
            }
            (k, Some(_)) if k.is_text() && !routes_view => Cell::from(""),
            (SortKey::Node, _) => Cell::from(fit(&e.node, w)),
            (SortKey::Namespace, _) => Cell::from(fit(e.namespace(), w)),
            (SortKey::Workload, _) => Cell::from(fit(e.workload(), w)),
            (SortKey::Endpoint, _) => Cell::from(fit_addr(&e.addr, w)),
            (SortKey::Server, _) => Cell::from(fit(app.server_workload(e).unwrap_or(""), w)),
            (SortKey::Dir, _) => Cell::from(e.direction.short()),
            (SortKey::Proto, _) => Cell::from(e.protocol.clone()),
            (SortKey::Rps, _) => right(human::rate(stats.rps)),
            (SortKey::P50 | SortKey::P90 | SortKey::P99, _) if stale.is_some() => {
                right(human::latency(match k {
                    SortKey::P50 => stats.p50,
                    SortKey::P90 => stats.p90,
                    _ => stats.p99,
                }))
            }
            (SortKey::Errors, _) if stale.is_some() => right(human::percent(stats.error_ratio())),
            (SortKey::ClientErrors, _) if stale.is_some() => {
                right(human::percent(stats.client_error_ratio()))
            }
            (SortKey::P50, _) => latency_cell(app, stats.p50),
            (SortKey::P90, _) => latency_cell(app, stats.p90),
            (SortKey::P99, _) => latency_cell(app, stats.p99),
            (SortKey::Errors, _) => {
                let r = stats.error_ratio();
                Cell::from(Line::from(error_span(human::percent(r), r)).alignment(Alignment::Right))
            }
            (SortKey::ClientErrors, _) => {
                let r = stats.client_error_ratio();
                let style = if r > 0.0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new()
                };
                Cell::from(
                    Line::from(Span::styled(human::percent(r), style)).alignment(Alignment::Right),
                )
            }
            (SortKey::Bytes, _) => right(human::bytes(stats.bytes_per_second)),
        }
    });
    let mut style = if stale.is_some() {
        Style::new().fg(Color::DarkGray)
    } else if v.method.is_some() && !routes_view {
        Style::new().dim()
    } else {
        Style::new()
    };
    if selected {
        style = style.add_modifier(Modifier::REVERSED);
    }
    Row::new(cells.collect::<Vec<_>>()).style(style)
}

fn empty_message(app: &App) -> Line<'static> {
    let any = |f: fn(&Conn) -> bool| app.present().any(|(_, a)| f(&a.conn));
    let text = if !app.active_filter().is_empty() && app.known > 0 {
        format!(
            "Nothing matches \"{}\" (Esc clears the filter).",
            app.active_filter()
        )
    } else if let Some(d) = app.direction.filter(|_| app.known > 0) {
        format!(
            "No {} endpoints (d shows both directions).",
            match d {
                kite_proto::v1::Direction::Outbound => "outbound",
                _ => "inbound",
            }
        )
    } else if !any(|c| matches!(c, Conn::Connected)) {
        if any(|c| matches!(c, Conn::Down { .. }))
            || app.present().any(|(_, a)| a.last_error.is_some())
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

/// RPS and p99 history of the selected row, newest on the right: an endpoint's (from the
/// agent), or a method's or route's (kept by the dashboard, [`App::route_points`]).
pub(super) fn sparklines(app: &App, area: Rect, buf: &mut Buffer) {
    let Some(v) = app.row_view(app.selected) else {
        return;
    };
    let e = v.entry;
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    // (rps, p99 seconds), oldest first; the figures now; what the panel names.
    let (h, now, name): (Vec<(f64, f64)>, Stats, String) = match v.method {
        Some(m) => (
            app.route_points(&e.key, m.id)
                .map(|p| {
                    p.iter()
                        .map(|p| (f64::from(p.rps), f64::from(p.p99)))
                        .collect()
                })
                .unwrap_or_default(),
            m.last.as_ref().map(Stats::of).unwrap_or_default(),
            format!("{} {}", fit(&e.name, 16), fit_method(&m.name, 24)),
        ),
        None => (
            app.detailed(e)
                .history
                .iter()
                .map(|p| (p.rps, p.p99_seconds))
                .collect(),
            e.stats(),
            fit(&e.name, 24),
        ),
    };
    let newest_first = |f: fn(&(f64, f64)) -> u64, width: u16| -> Vec<u64> {
        h.iter().rev().take(width as usize).map(f).collect()
    };
    let max_rps = h.iter().map(|p| p.0).fold(0.0, f64::max);
    let max_p99 = h.iter().map(|p| p.1).fold(0.0, f64::max);
    let title = |what: &str, now: String, max: Option<String>, name: Option<&str>| {
        let mut spans = vec![Span::raw(format!(" {what} ")).bold(), Span::raw(now)];
        if let Some(m) = max {
            spans.push(Span::raw(format!(" (max {m})")));
        }
        spans.push(Span::raw(" "));
        if let Some(name) = name {
            spans.push(Span::raw(format!("· {name} ")).dim());
        }
        Line::from(spans)
    };
    let has = !h.is_empty();
    Sparkline::default()
        .block(Block::new().borders(Borders::TOP).title(title(
            "RPS",
            human::rate(now.rps),
            has.then(|| human::rate(max_rps)),
            Some(&name),
        )))
        .data(newest_first(|p| (p.0 * 100.0).round() as u64, left.width))
        .direction(RenderDirection::RightToLeft)
        .style(Style::new().fg(Color::Green))
        .render(left, buf);
    Sparkline::default()
        .block(Block::new().borders(Borders::TOP).title(title(
            "p99",
            human::latency(now.p99),
            has.then(|| human::latency(Some(max_p99))),
            None,
        )))
        .data(newest_first(|p| (p.1 * 1e6).round() as u64, right.width))
        .direction(RenderDirection::RightToLeft)
        .style(Style::new().fg(Color::Magenta))
        .render(right, buf);
}

#[cfg(test)]
mod tests {
    use super::{fit, fit_addr, fit_method};

    #[test]
    fn long_methods_keep_their_end() {
        assert_eq!(fit_method("a.B/C", 10), "a.B/C");
        assert_eq!(
            fit_method("helloworld.Greeter/SayHello", 18),
            "….Greeter/SayHello"
        );
    }

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
