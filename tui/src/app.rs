//! The dashboard's state and how it changes, without a terminal or a network.
//!
//! Everything that happens is an [`Event`] (a key, a resize, news from an agent's stream);
//! [`App::action`] turns it into an [`Action`] (or nothing), [`App::update`] applies the action
//! and may return a follow-up one, and drawing (`crate::ui`) only reads the result. Tests drive
//! the same functions with made-up events.

use std::{cmp::Ordering, sync::Arc, time::Duration};

use kite_proto::v1;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A key was pressed.
    Key(KeyEvent),
    /// The terminal has a new size (columns, rows).
    Resize(u16, u16),
    /// News from the stream of agent number `.0` (its index in [`App::agents`]).
    Agent(usize, AgentEvent),
}

/// What an agent's network task reports.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// Trying to connect (1 for the first try).
    Connecting {
        /// How many tries so far, this one included.
        attempt: u32,
    },
    /// The `Watch` stream is open.
    Connected,
    /// A snapshot arrived.
    Snapshot(Box<v1::Snapshot>),
    /// The focused endpoint (see [`App::focus`]) with its history and latency histogram,
    /// which the snapshots of the stream leave out to stay small.
    Focus(Box<v1::Endpoint>),
    /// The connection failed or the stream ended; the next try is in `retry_in`.
    Down {
        /// Why, in one line.
        error: String,
        /// When the next try starts.
        retry_in: Duration,
    },
}

/// What the dashboard does about an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Leave.
    Quit,
    /// Select the row above.
    Up,
    /// Select the row below.
    Down,
    /// One page up.
    PageUp,
    /// One page down.
    PageDown,
    /// The first row.
    Home,
    /// The last row.
    End,
    /// Sort by the next column (RPS → p99 → errors → name).
    CycleSort,
    /// Reverse the sort order.
    ReverseSort,
    /// Start typing a filter.
    StartFilter,
    /// A character of the filter being typed.
    FilterChar(char),
    /// Remove the last character of the filter being typed.
    FilterBackspace,
    /// Keep the filter being typed.
    ApplyFilter,
    /// Remove the filter.
    ClearFilter,
    /// Show the selected endpoint in detail.
    Open,
    /// Back from the detail view.
    Back,
    /// Freeze or unfreeze the display (snapshots keep arriving).
    TogglePause,
    /// Show or hide the help.
    ToggleHelp,
    /// The terminal was resized.
    Resize(u16, u16),
    /// News from an agent.
    Agent(usize, AgentEvent),
}

/// Connection state of one agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Conn {
    /// Trying to connect.
    Connecting {
        /// How many tries so far.
        attempt: u32,
    },
    /// Streaming snapshots.
    Connected,
    /// Not reachable; retrying later.
    Down {
        /// Why.
        error: String,
        /// When the next try starts (from the moment it failed).
        retry_in: Duration,
    },
}

/// One agent as the dashboard knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    /// How the user named it: an address, or a node for port-forwarded agents.
    pub label: String,
    /// Connection state.
    pub conn: Conn,
    /// The node the agent reported, once it did.
    pub node: Option<String>,
    /// The last error, kept while reconnecting.
    pub last_error: Option<String>,
    /// Endpoints in its last snapshot.
    pub endpoints: usize,
    /// Length of its windows, seconds.
    pub window_seconds: f64,
}

/// Identifies an endpoint across snapshots: which agent, which cgroup, which direction, which
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    /// Index of the agent.
    pub agent: usize,
    /// cgroup id.
    pub cgroup_id: u64,
    /// `v1::Direction` as a number.
    pub direction: i32,
    /// Server IP.
    pub ip: String,
    /// Server port.
    pub port: u32,
}

/// One endpoint, ready to show.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Who it is.
    pub key: EntryKey,
    /// `namespace/pod`, or the cgroup path when the cgroup is not a known pod.
    pub name: String,
    /// `ip:port`.
    pub addr: String,
    /// The node that measured it.
    pub node: String,
    /// Inbound or outbound.
    pub direction: v1::Direction,
    /// Everything the agent said about it.
    pub ep: v1::Endpoint,
}

impl Entry {
    /// An endpoint of a snapshot of agent `agent` (whose node is `node`).
    pub fn new(agent: usize, node: &str, ep: v1::Endpoint) -> Self {
        let id = ep.id.as_ref();
        let direction = id
            .and_then(|id| v1::Direction::try_from(id.direction).ok())
            .unwrap_or(v1::Direction::Unspecified);
        let cgroup_path = id.map_or("", |id| id.cgroup_path.as_str());
        let name = match ep.workload.as_ref() {
            Some(w) if !w.pod.is_empty() => format!("{}/{}", w.namespace, w.pod),
            _ if !cgroup_path.is_empty() => cgroup_path.to_string(),
            _ => format!("cgroup {}", id.map_or(0, |id| id.cgroup_id)),
        };
        let node = match id {
            Some(id) if !id.node.is_empty() => id.node.clone(),
            _ => node.to_string(),
        };
        Self {
            key: EntryKey {
                agent,
                cgroup_id: id.map_or(0, |id| id.cgroup_id),
                direction: direction as i32,
                ip: id.map(|id| id.ip.clone()).unwrap_or_default(),
                port: id.map_or(0, |id| id.port),
            },
            addr: id.map(|id| id.address()).unwrap_or_default(),
            name,
            node,
            direction,
            ep,
        }
    }

    fn window(&self) -> Option<&v1::Window> {
        self.ep.last.as_ref()
    }

    /// Requests per second in the last window.
    pub fn rps(&self) -> f64 {
        self.window().map_or(0.0, |w| w.rps)
    }

    /// p50 of the last window, seconds.
    pub fn p50(&self) -> Option<f64> {
        self.window().and_then(|w| w.p50_seconds)
    }

    /// p90 of the last window, seconds.
    pub fn p90(&self) -> Option<f64> {
        self.window().and_then(|w| w.p90_seconds)
    }

    /// p99 of the last window, seconds.
    pub fn p99(&self) -> Option<f64> {
        self.window().and_then(|w| w.p99_seconds)
    }

    /// (4xx + 5xx) / requests in the last window.
    pub fn error_ratio(&self) -> f64 {
        self.window().map_or(0.0, |w| w.error_ratio)
    }

    /// Request and response bytes per second in the last window.
    pub fn bytes_per_second(&self) -> f64 {
        self.window().map_or(0.0, |w| {
            w.request_bytes_per_second + w.response_bytes_per_second
        })
    }

    /// Whether the filter text (lower case) is in its name, address, direction, node, cgroup
    /// path, workload or container, ignoring ASCII case.
    pub fn matches(&self, needle_lower: &str) -> bool {
        if needle_lower.is_empty() {
            return true;
        }
        let has = |hay: &str| contains_ignore_ascii_case(hay, needle_lower);
        let w = self.ep.workload.as_ref();
        has(&self.name)
            || has(&self.addr)
            || has(self.direction.short())
            || has(&self.node)
            || self.ep.id.as_ref().is_some_and(|id| has(&id.cgroup_path))
            || w.is_some_and(|w| has(&w.workload_name) || has(&w.container))
    }
}

/// Whether `needle` (lower case) occurs in `hay`, ignoring ASCII case, without allocating.
fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty()
        || n.len() <= h.len()
            && h.windows(n.len())
                .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// The column rows are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Requests per second, busiest first.
    Rps,
    /// p99 latency, slowest first.
    P99,
    /// Error ratio, worst first.
    Errors,
    /// Name, then address, alphabetically.
    Name,
}

impl SortKey {
    /// The next column for `s`.
    pub fn next(self) -> Self {
        match self {
            SortKey::Rps => SortKey::P99,
            SortKey::P99 => SortKey::Errors,
            SortKey::Errors => SortKey::Name,
            SortKey::Name => SortKey::Rps,
        }
    }

    /// As shown in the header.
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Rps => "RPS",
            SortKey::P99 => "P99",
            SortKey::Errors => "ERR%",
            SortKey::Name => "NAME",
        }
    }

    fn compare(self, a: &Entry, b: &Entry) -> Ordering {
        // Numbers: largest first; names: A to Z.
        // A total order even with NaN from the wire (NaN sorts last): std's sorts may panic
        // on comparators that are not.
        let key = |x: f64| if x.is_nan() { f64::NEG_INFINITY } else { x };
        let num = |x: f64, y: f64| key(y).total_cmp(&key(x));
        match self {
            SortKey::Rps => num(a.rps(), b.rps()),
            SortKey::P99 => num(a.p99().unwrap_or(-1.0), b.p99().unwrap_or(-1.0)),
            SortKey::Errors => num(a.error_ratio(), b.error_ratio()),
            SortKey::Name => Ordering::Equal,
        }
    }
}

/// Sums over the rows shown.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Requests per second.
    pub rps: f64,
    /// Requests in the last windows.
    pub requests: u64,
    /// Of which 4xx or 5xx.
    pub errors: u64,
    /// Bytes per second, both ways.
    pub bytes_per_second: f64,
}

impl Totals {
    /// errors / requests.
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Which screen is shown.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    /// The table of endpoints.
    Table,
    /// One endpoint; the last copy of it seen (kept when it disappears).
    Detail(Box<Entry>),
}

/// The whole dashboard.
#[derive(Debug, Clone)]
pub struct App {
    /// The agents, in the order given.
    pub agents: Vec<AgentView>,
    /// The latest endpoints of each agent.
    live: Vec<Arc<Vec<Entry>>>,
    /// What is displayed (equal to `live` unless paused).
    shown: Vec<Arc<Vec<Entry>>>,
    /// Filtered and sorted rows: (agent, index into its shown entries).
    rows: Vec<(u32, u32)>,
    /// `shown` changed since `rows` were built: rebuild before the rows are read again (once
    /// per batch of events, not once per agent snapshot; see [`App::settle`]).
    dirty: bool,
    /// Sums over `rows`.
    pub totals: Totals,
    /// Widest address and node name among `rows`, in characters.
    pub widths: (usize, usize),
    /// Endpoints known in total (before the filter).
    pub known: usize,
    /// Sort column.
    pub sort: SortKey,
    /// Reverse the natural order of the sort column.
    pub reverse: bool,
    /// The filter applied.
    pub filter: String,
    /// The filter being typed (`/` … Enter).
    pub input: Option<String>,
    /// Index of the selected row.
    pub selected: usize,
    selected_key: Option<EntryKey>,
    /// First row on screen.
    pub offset: usize,
    /// Terminal size (columns, rows).
    pub size: (u16, u16),
    /// Current screen.
    pub view: View,
    /// The last detailed copy of the focused endpoint.
    focused: Option<(EntryKey, Box<v1::Endpoint>)>,
    /// The display is frozen.
    pub paused: bool,
    /// The help is shown.
    pub help: bool,
    /// The user asked to leave.
    pub quit: bool,
}

impl App {
    /// A dashboard for these agents (labels), with a terminal of `size`.
    pub fn new(labels: Vec<String>, size: (u16, u16)) -> Self {
        let n = labels.len();
        Self {
            agents: labels
                .into_iter()
                .map(|label| AgentView {
                    label,
                    conn: Conn::Connecting { attempt: 1 },
                    node: None,
                    last_error: None,
                    endpoints: 0,
                    window_seconds: 0.0,
                })
                .collect(),
            live: (0..n).map(|_| Arc::new(Vec::new())).collect(),
            shown: (0..n).map(|_| Arc::new(Vec::new())).collect(),
            rows: Vec::new(),
            dirty: false,
            totals: Totals::default(),
            widths: (0, 0),
            known: 0,
            sort: SortKey::Rps,
            reverse: false,
            filter: String::new(),
            input: None,
            selected: 0,
            selected_key: None,
            offset: 0,
            size,
            view: View::Table,
            focused: None,
            paused: false,
            help: false,
            quit: false,
        }
    }

    /// Number of rows after the filter.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// The entry on row `i`.
    pub fn row(&self, i: usize) -> Option<&Entry> {
        let (a, j) = *self.rows.get(i)?;
        self.shown.get(a as usize)?.get(j as usize)
    }

    /// The selected entry.
    pub fn selected_entry(&self) -> Option<&Entry> {
        self.row(self.selected)
    }

    /// The filter in effect: the one being typed, or the one applied.
    pub fn active_filter(&self) -> &str {
        self.input.as_deref().unwrap_or(&self.filter)
    }

    /// Whether several nodes are shown (then each row names its node).
    pub fn multi_node(&self) -> bool {
        self.agents.len() > 1
    }

    /// The endpoint whose history and histogram are shown: the one in the detail view, or
    /// the selected row. Its agent's task fetches them (`AgentEvent::Focus`).
    pub fn focus(&self) -> Option<EntryKey> {
        match &self.view {
            View::Detail(e) => Some(e.key.clone()),
            View::Table => self.selected_entry().map(|e| e.key.clone()),
        }
    }

    /// `e` with its history and histogram: the detailed copy when there is one for it, else
    /// the entry itself.
    pub fn detailed<'a>(&'a self, e: &'a Entry) -> &'a v1::Endpoint {
        match &self.focused {
            Some((k, ep)) if *k == e.key => ep,
            _ => &e.ep,
        }
    }

    /// Turns an event into an action, depending on what is on screen.
    pub fn action(&self, event: Event) -> Option<Action> {
        match event {
            Event::Resize(w, h) => Some(Action::Resize(w, h)),
            Event::Agent(i, e) => Some(Action::Agent(i, e)),
            Event::Key(key) => self.key_action(key),
        }
    }

    fn key_action(&self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c')) {
            return Some(Action::Quit);
        }
        let moves = |code: KeyCode| match code {
            KeyCode::Up => Some(Action::Up),
            KeyCode::Down => Some(Action::Down),
            KeyCode::PageUp => Some(Action::PageUp),
            KeyCode::PageDown => Some(Action::PageDown),
            KeyCode::Home => Some(Action::Home),
            KeyCode::End => Some(Action::End),
            _ => None,
        };
        if self.input.is_some() {
            return match key.code {
                KeyCode::Enter => Some(Action::ApplyFilter),
                KeyCode::Esc => Some(Action::ClearFilter),
                KeyCode::Backspace => Some(Action::FilterBackspace),
                KeyCode::Char(c) if !ctrl => Some(Action::FilterChar(c)),
                code => moves(code),
            };
        }
        if self.help {
            return match key.code {
                KeyCode::Char('q') => Some(Action::Quit),
                KeyCode::Esc | KeyCode::Char('?') | KeyCode::Enter => Some(Action::ToggleHelp),
                _ => None,
            };
        }
        if let Some(a) = moves(key.code) {
            return Some(a);
        }
        let detail = matches!(self.view, View::Detail(_));
        match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Char('k') => Some(Action::Up),
            KeyCode::Char('j') => Some(Action::Down),
            KeyCode::Char('g') => Some(Action::Home),
            KeyCode::Char('G') => Some(Action::End),
            KeyCode::Char('b') if ctrl => Some(Action::PageUp),
            KeyCode::Char('f') if ctrl => Some(Action::PageDown),
            KeyCode::Char(' ') => Some(Action::TogglePause),
            KeyCode::Char('?') => Some(Action::ToggleHelp),
            KeyCode::Char('s') => Some(Action::CycleSort),
            KeyCode::Char('S') => Some(Action::ReverseSort),
            KeyCode::Char('/') => Some(Action::StartFilter),
            KeyCode::Enter if !detail => Some(Action::Open),
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left | KeyCode::Char('h') if detail => {
                Some(Action::Back)
            }
            KeyCode::Esc if !self.filter.is_empty() => Some(Action::ClearFilter),
            _ => None,
        }
    }

    /// Applies an action; returns a follow-up action, if any.
    pub fn update(&mut self, action: Action) -> Option<Action> {
        // Snapshots only mark the rows stale; anything that reads or moves rows sees them
        // rebuilt first.
        if !matches!(action, Action::Agent(..)) {
            self.settle();
        }
        match action {
            Action::Quit => self.quit = true,
            Action::Up => self.select(self.selected.saturating_sub(1)),
            Action::Down => self.select(self.selected.saturating_add(1)),
            Action::PageUp => self.select(self.selected.saturating_sub(self.page())),
            Action::PageDown => self.select(self.selected.saturating_add(self.page())),
            Action::Home => self.select(0),
            Action::End => self.select(usize::MAX),
            Action::CycleSort => {
                self.sort = self.sort.next();
                self.reverse = false;
                self.rebuild();
            }
            Action::ReverseSort => {
                self.reverse = !self.reverse;
                self.rebuild();
            }
            Action::StartFilter => {
                self.input = Some(self.filter.clone());
                self.help = false;
            }
            Action::FilterChar(c) => {
                if let Some(s) = self.input.as_mut() {
                    s.push(c);
                    self.rebuild();
                }
            }
            Action::FilterBackspace => {
                if let Some(s) = self.input.as_mut() {
                    s.pop();
                    self.rebuild();
                }
            }
            Action::ApplyFilter => {
                if let Some(s) = self.input.take() {
                    self.filter = s.trim().to_string();
                    self.rebuild();
                }
            }
            Action::ClearFilter => {
                self.input = None;
                self.filter.clear();
                self.rebuild();
            }
            Action::Open => {
                if let Some(e) = self.selected_entry() {
                    self.view = View::Detail(Box::new(e.clone()));
                }
            }
            Action::Back => {
                if matches!(self.view, View::Table) {
                    return (!self.filter.is_empty()).then_some(Action::ClearFilter);
                }
                self.view = View::Table;
            }
            Action::TogglePause => {
                self.paused = !self.paused;
                if !self.paused {
                    self.shown = self.live.clone();
                    self.rebuild();
                }
            }
            Action::ToggleHelp => self.help = !self.help,
            Action::Resize(w, h) => {
                self.size = (w, h);
                self.scroll();
            }
            Action::Agent(i, event) => self.agent_event(i, event),
        }
        None
    }

    fn agent_event(&mut self, i: usize, event: AgentEvent) {
        let Some(agent) = self.agents.get_mut(i) else {
            return;
        };
        match event {
            AgentEvent::Connecting { attempt } => agent.conn = Conn::Connecting { attempt },
            AgentEvent::Connected => {
                agent.conn = Conn::Connected;
                agent.last_error = None;
            }
            AgentEvent::Snapshot(snap) => {
                agent.conn = Conn::Connected;
                agent.last_error = None;
                agent.node = Some(snap.node.clone());
                agent.endpoints = snap.endpoints.len();
                agent.window_seconds = snap.window_seconds;
                let snap = *snap;
                let entries = snap
                    .endpoints
                    .into_iter()
                    .map(|ep| Entry::new(i, &snap.node, ep))
                    .collect();
                self.set_live(i, entries);
            }
            AgentEvent::Focus(ep) => {
                let key = Entry::new(
                    i,
                    "",
                    v1::Endpoint {
                        id: ep.id.clone(),
                        ..Default::default()
                    },
                )
                .key;
                if self.focus().as_ref() == Some(&key) {
                    self.focused = Some((key, ep));
                }
            }
            AgentEvent::Down { error, retry_in } => {
                agent.last_error = Some(error.clone());
                agent.conn = Conn::Down { error, retry_in };
                agent.endpoints = 0;
                self.set_live(i, Vec::new());
            }
        }
    }

    fn set_live(&mut self, i: usize, entries: Vec<Entry>) {
        self.live[i] = Arc::new(entries);
        if !self.paused {
            self.shown[i] = self.live[i].clone();
            self.dirty = true;
        }
    }

    /// Rebuilds the rows if snapshots arrived since the last time: the event loop calls it
    /// once per batch, before drawing, so N agents' snapshots cost one sort, not N.
    pub fn settle(&mut self) {
        if self.dirty {
            self.rebuild();
        }
    }

    /// Rows on one page of the table.
    fn page(&self) -> usize {
        crate::ui::table_body_height(self).max(1)
    }

    fn select(&mut self, i: usize) {
        self.selected = i.min(self.rows.len().saturating_sub(1));
        self.selected_key = self.selected_entry().map(|e| e.key.clone());
        if let View::Detail(_) = self.view
            && let Some(e) = self.selected_entry()
        {
            self.view = View::Detail(Box::new(e.clone()));
        }
        self.scroll();
    }

    /// Keeps the selection on screen.
    fn scroll(&mut self) {
        let page = self.page();
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + page {
            self.offset = self.selected + 1 - page;
        }
        // No empty space below the last row when the table could be full.
        let max_offset = self.rows.len().saturating_sub(page);
        self.offset = self.offset.min(max_offset);
    }

    /// Filters, sorts and sums again; the selection follows its endpoint.
    fn rebuild(&mut self) {
        self.dirty = false;
        let needle = self.active_filter().to_lowercase();
        let needle = needle.trim();
        self.rows.clear();
        self.known = 0;
        for (a, entries) in self.shown.iter().enumerate() {
            self.known += entries.len();
            for (j, e) in entries.iter().enumerate() {
                if e.matches(needle) {
                    self.rows.push((a as u32, j as u32));
                }
            }
        }
        let shown = &self.shown;
        let (sort, reverse) = (self.sort, self.reverse);
        let entry = |&(a, j): &(u32, u32)| &shown[a as usize][j as usize];
        self.rows.sort_unstable_by(|x, y| {
            let (a, b) = (entry(x), entry(y));
            let primary = sort.compare(a, b);
            let primary = if reverse { primary.reverse() } else { primary };
            let names = a
                .name
                .cmp(&b.name)
                .then_with(|| a.addr.cmp(&b.addr))
                .then_with(|| a.key.cmp(&b.key));
            let names = if reverse && sort == SortKey::Name {
                names.reverse()
            } else {
                names
            };
            primary.then(names)
        });
        let mut totals = Totals::default();
        let mut widths = (0, 0);
        for r in &self.rows {
            let e = entry(r);
            widths.0 = widths.0.max(e.addr.len());
            widths.1 = widths.1.max(e.node.chars().count());
            totals.rps += e.rps();
            totals.bytes_per_second += e.bytes_per_second();
            if let Some(w) = e.window() {
                totals.requests += w.requests;
                totals.errors += w.status_4xx + w.status_5xx;
            }
        }
        self.totals = totals;
        self.widths = widths;
        // The selection follows its endpoint; the detail view refreshes its copy.
        if let Some(key) = &self.selected_key
            && let Some(i) = self.rows.iter().position(|r| &entry(r).key == key)
        {
            self.selected = i;
        }
        if let View::Detail(d) = &self.view {
            let fresh = self
                .shown
                .get(d.key.agent)
                .and_then(|es| es.iter().find(|e| e.key == d.key))
                .cloned();
            if let Some(e) = fresh {
                self.view = View::Detail(Box::new(e));
            }
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
        self.scroll();
    }

    /// Whether the endpoint in the detail view is still reported.
    pub fn detail_is_live(&self) -> bool {
        match &self.view {
            View::Detail(d) => self
                .shown
                .get(d.key.agent)
                .is_some_and(|es| es.iter().any(|e| e.key == d.key)),
            View::Table => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ratatui::crossterm::event::KeyEventState;

    use super::*;

    pub(crate) fn key(code: KeyCode) -> Event {
        Event::Key(KeyEvent {
            code,
            modifiers: KeyModifiers::NONE,
            kind: KeyEventKind::Press,
            state: KeyEventState::NONE,
        })
    }

    pub(crate) fn ch(c: char) -> Event {
        key(KeyCode::Char(c))
    }

    /// An endpoint with these numbers.
    pub(crate) fn endpoint(
        ns_pod: Option<(&str, &str)>,
        cgroup: &str,
        port: u32,
        rps: f64,
        p99_ms: Option<f64>,
        err: f64,
    ) -> v1::Endpoint {
        let requests = rps.round() as u64;
        let errors = (requests as f64 * err).round() as u64;
        v1::Endpoint {
            id: Some(v1::EndpointId {
                node: String::new(),
                cgroup_id: 1000 + u64::from(port),
                cgroup_path: cgroup.into(),
                direction: v1::Direction::Inbound as i32,
                ip: "10.0.0.1".into(),
                port,
            }),
            workload: ns_pod.map(|(ns, pod)| v1::Workload {
                namespace: ns.into(),
                pod: pod.into(),
                ..Default::default()
            }),
            last: Some(v1::Window {
                seconds: 1.0,
                requests,
                rps,
                p50_seconds: p99_ms.map(|ms| ms / 4e3),
                p90_seconds: p99_ms.map(|ms| ms / 2e3),
                p99_seconds: p99_ms.map(|ms| ms / 1e3),
                status_5xx: errors,
                error_ratio: err,
                request_bytes_per_second: rps * 100.0,
                response_bytes_per_second: rps * 1000.0,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn snapshot(node: &str, endpoints: Vec<v1::Endpoint>) -> Box<v1::Snapshot> {
        Box::new(v1::Snapshot {
            time_unix_ms: 1_700_000_000_000,
            window_seconds: 1.0,
            node: node.into(),
            endpoints,
        })
    }

    /// Applies an event the way the event loop does (a batch of one: rows settled after).
    pub(crate) fn feed(app: &mut App, event: Event) {
        let mut next = app.action(event);
        while let Some(a) = next {
            next = app.update(a);
        }
        app.settle();
    }

    fn three() -> App {
        let mut app = App::new(vec!["127.0.0.1:7777".into()], (100, 30));
        feed(
            &mut app,
            Event::Agent(
                0,
                AgentEvent::Snapshot(snapshot(
                    "node-a",
                    vec![
                        endpoint(Some(("shop", "web-1")), "", 80, 120.0, Some(4.0), 0.0),
                        endpoint(Some(("shop", "api-1")), "", 8080, 950.0, Some(2.0), 0.1),
                        endpoint(
                            None,
                            "/system.slice/nginx.service",
                            443,
                            5.0,
                            Some(40.0),
                            0.5,
                        ),
                    ],
                )),
            ),
        );
        app
    }

    fn names(app: &App) -> Vec<&str> {
        (0..app.row_count())
            .map(|i| app.row(i).unwrap().name.as_str())
            .collect()
    }

    #[test]
    fn rows_sort_by_each_column_and_reverse() {
        let mut app = three();
        assert_eq!(
            names(&app),
            ["shop/api-1", "shop/web-1", "/system.slice/nginx.service"]
        );
        feed(&mut app, ch('s'));
        assert_eq!(app.sort, SortKey::P99);
        assert_eq!(
            names(&app),
            ["/system.slice/nginx.service", "shop/web-1", "shop/api-1"]
        );
        feed(&mut app, ch('s'));
        assert_eq!(app.sort, SortKey::Errors);
        assert_eq!(app.row(0).unwrap().name, "/system.slice/nginx.service");
        feed(&mut app, ch('s'));
        assert_eq!(app.sort, SortKey::Name);
        assert_eq!(
            names(&app),
            ["/system.slice/nginx.service", "shop/api-1", "shop/web-1"]
        );
        feed(&mut app, ch('S'));
        assert!(app.reverse);
        assert_eq!(
            names(&app),
            ["shop/web-1", "shop/api-1", "/system.slice/nginx.service"]
        );
        feed(&mut app, ch('s'));
        assert_eq!((app.sort, app.reverse), (SortKey::Rps, false));
    }

    #[test]
    fn moving_stays_in_bounds_and_selection_follows_its_endpoint() {
        let mut app = three();
        feed(&mut app, key(KeyCode::Up));
        assert_eq!(app.selected, 0);
        feed(&mut app, ch('j'));
        assert_eq!(app.selected_entry().unwrap().name, "shop/web-1");
        feed(&mut app, ch('G'));
        assert_eq!(app.selected, 2);
        feed(&mut app, key(KeyCode::Down));
        assert_eq!(app.selected, 2);
        feed(&mut app, ch('g'));
        assert_eq!(app.selected, 0);
        feed(&mut app, key(KeyCode::PageDown));
        assert_eq!(app.selected, 2);
        feed(&mut app, key(KeyCode::PageUp));
        assert_eq!(app.selected, 0);
        // Select web-1, then it becomes the busiest: the selection moves with it.
        feed(&mut app, ch('j'));
        feed(
            &mut app,
            Event::Agent(
                0,
                AgentEvent::Snapshot(snapshot(
                    "node-a",
                    vec![
                        endpoint(Some(("shop", "web-1")), "", 80, 5000.0, Some(4.0), 0.0),
                        endpoint(Some(("shop", "api-1")), "", 8080, 950.0, Some(2.0), 0.1),
                    ],
                )),
            ),
        );
        assert_eq!(app.selected, 0);
        assert_eq!(app.selected_entry().unwrap().name, "shop/web-1");
    }

    #[test]
    fn scrolling_keeps_the_selection_visible() {
        let mut app = App::new(vec!["a".into()], (80, 24));
        let eps = (0..100)
            .map(|i| {
                endpoint(
                    None,
                    &format!("/cg/{i:03}"),
                    1000 + i,
                    1000.0 - i as f64,
                    None,
                    0.0,
                )
            })
            .collect();
        feed(
            &mut app,
            Event::Agent(0, AgentEvent::Snapshot(snapshot("n", eps))),
        );
        let page = crate::ui::table_body_height(&app);
        assert!(page > 5 && page < 24, "{page}");
        feed(&mut app, key(KeyCode::PageDown));
        assert_eq!(app.selected, page);
        assert!(app.offset <= app.selected && app.selected < app.offset + page);
        feed(&mut app, key(KeyCode::End));
        assert_eq!((app.selected, app.offset), (99, 100 - page));
        feed(&mut app, Event::Resize(80, 50));
        assert!(app.offset <= 99 && 99 < app.offset + crate::ui::table_body_height(&app));
        feed(&mut app, key(KeyCode::Home));
        assert_eq!((app.selected, app.offset), (0, 0));
    }

    #[test]
    fn filter_previews_while_typing_applies_on_enter_and_esc_clears() {
        let mut app = three();
        feed(&mut app, ch('/'));
        assert_eq!(app.input.as_deref(), Some(""));
        // While typing, `q` and `s` are text, not commands.
        for c in "SHOP/w".chars() {
            feed(&mut app, ch(c));
        }
        assert!(!app.quit);
        assert_eq!(names(&app), ["shop/web-1"]);
        feed(&mut app, key(KeyCode::Backspace));
        feed(&mut app, key(KeyCode::Backspace));
        assert_eq!(names(&app), ["shop/api-1", "shop/web-1"]);
        feed(&mut app, key(KeyCode::Enter));
        assert_eq!((app.input.as_deref(), app.filter.as_str()), (None, "SHOP"));
        assert_eq!(app.row_count(), 2);
        // Addresses and directions match too.
        feed(&mut app, ch('/'));
        feed(&mut app, key(KeyCode::Esc));
        assert_eq!((app.input.as_deref(), app.filter.as_str()), (None, ""));
        assert_eq!(app.row_count(), 3);
        feed(&mut app, ch('/'));
        for c in ":443".chars() {
            feed(&mut app, ch(c));
        }
        feed(&mut app, key(KeyCode::Enter));
        assert_eq!(names(&app), ["/system.slice/nginx.service"]);
        // Esc in the table clears an applied filter.
        feed(&mut app, key(KeyCode::Esc));
        assert_eq!(app.row_count(), 3);
        // Totals follow the filter.
        assert_eq!(app.totals.rps, 1075.0);
    }

    #[test]
    fn detail_opens_on_the_selection_follows_moves_and_survives_the_endpoint() {
        let mut app = three();
        feed(&mut app, ch('j'));
        feed(&mut app, key(KeyCode::Enter));
        let View::Detail(d) = &app.view else {
            panic!("not in detail")
        };
        assert_eq!(d.name, "shop/web-1");
        // Keys move the selection, the detail follows.
        feed(&mut app, ch('j'));
        let View::Detail(d) = &app.view else {
            panic!("not in detail")
        };
        assert_eq!(d.name, "/system.slice/nginx.service");
        assert!(app.detail_is_live());
        // The agent goes down: the detail keeps its last copy.
        feed(
            &mut app,
            Event::Agent(
                0,
                AgentEvent::Down {
                    error: "connection refused".into(),
                    retry_in: Duration::from_millis(500),
                },
            ),
        );
        assert!(matches!(&app.view, View::Detail(d) if d.name == "/system.slice/nginx.service"));
        assert!(!app.detail_is_live());
        assert_eq!(app.row_count(), 0);
        feed(&mut app, key(KeyCode::Esc));
        assert_eq!(app.view, View::Table);
        // Enter on an empty table does nothing.
        feed(&mut app, key(KeyCode::Enter));
        assert_eq!(app.view, View::Table);
    }

    #[test]
    fn pause_freezes_the_rows_but_not_the_connection_states() {
        let mut app = three();
        feed(&mut app, ch(' '));
        assert!(app.paused);
        feed(
            &mut app,
            Event::Agent(
                0,
                AgentEvent::Snapshot(snapshot(
                    "node-a",
                    vec![endpoint(Some(("x", "y")), "", 1, 1.0, None, 0.0)],
                )),
            ),
        );
        assert_eq!(app.row_count(), 3);
        assert_eq!(app.agents[0].endpoints, 1);
        feed(&mut app, ch(' '));
        assert_eq!(names(&app), ["x/y"]);
    }

    #[test]
    fn help_quit_and_connection_states() {
        let mut app = three();
        feed(&mut app, ch('?'));
        assert!(app.help);
        // Other keys do nothing while the help is up.
        feed(&mut app, ch('s'));
        assert_eq!(app.sort, SortKey::Rps);
        feed(&mut app, key(KeyCode::Esc));
        assert!(!app.help);
        feed(
            &mut app,
            Event::Agent(0, AgentEvent::Connecting { attempt: 3 }),
        );
        assert_eq!(app.agents[0].conn, Conn::Connecting { attempt: 3 });
        feed(
            &mut app,
            Event::Agent(
                0,
                AgentEvent::Down {
                    error: "refused".into(),
                    retry_in: Duration::from_secs(1),
                },
            ),
        );
        assert_eq!(app.agents[0].last_error.as_deref(), Some("refused"));
        feed(&mut app, Event::Agent(0, AgentEvent::Connected));
        assert_eq!(
            (&app.agents[0].conn, &app.agents[0].last_error),
            (&Conn::Connected, &None)
        );
        // Events for agents that do not exist are ignored.
        feed(&mut app, Event::Agent(7, AgentEvent::Connected));
        feed(&mut app, ch('q'));
        assert!(app.quit);
        let mut app = three();
        feed(&mut app, ch('/'));
        feed(
            &mut app,
            Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        );
        assert!(app.quit);
    }

    #[test]
    fn focus_follows_the_selection_and_keeps_only_its_detailed_copy() {
        let mut app = three();
        let focused = app.focus().unwrap();
        assert_eq!(app.row(0).unwrap().key, focused);
        let detailed = |port: u32| {
            let mut ep = endpoint(Some(("shop", "x")), "", port, 1.0, None, 0.0);
            ep.history = vec![v1::Point::default(); 7];
            Box::new(ep)
        };
        // A copy for another endpoint than the focused one is ignored.
        feed(&mut app, Event::Agent(0, AgentEvent::Focus(detailed(80))));
        let e = app.selected_entry().unwrap();
        assert!(app.detailed(e).history.is_empty());
        feed(&mut app, Event::Agent(0, AgentEvent::Focus(detailed(8080))));
        let e = app.selected_entry().unwrap();
        assert_eq!(app.detailed(e).history.len(), 7);
        // Moving the selection moves the focus; the detail view keeps it.
        feed(&mut app, ch('j'));
        assert_eq!(app.focus().unwrap().port, 80);
        feed(&mut app, key(KeyCode::Enter));
        feed(
            &mut app,
            Event::Agent(0, AgentEvent::Snapshot(snapshot("node-a", vec![]))),
        );
        assert_eq!(app.focus().unwrap().port, 80);
    }

    #[test]
    fn filter_ignores_ascii_case_without_allocating() {
        assert!(contains_ignore_ascii_case("/Kite-Test/A", "kite-test"));
        assert!(contains_ignore_ascii_case("abc", ""));
        assert!(!contains_ignore_ascii_case("ab", "abc"));
    }

    #[test]
    fn agents_merge_and_rows_name_their_node() {
        let mut app = App::new(vec!["a:7777".into(), "b:7777".into()], (120, 30));
        assert!(app.multi_node());
        for (i, node) in ["node-a", "node-b"].iter().enumerate() {
            feed(
                &mut app,
                Event::Agent(
                    i,
                    AgentEvent::Snapshot(snapshot(
                        node,
                        vec![endpoint(
                            Some(("shop", "web")),
                            "",
                            80,
                            10.0 + i as f64,
                            None,
                            0.0,
                        )],
                    )),
                ),
            );
        }
        assert_eq!(app.row_count(), 2);
        assert_eq!(app.row(0).unwrap().node, "node-b");
        assert_eq!(app.row(1).unwrap().node, "node-a");
        assert_eq!(app.known, 2);
        // Filtering by node.
        feed(&mut app, ch('/'));
        for c in "node-a".chars() {
            feed(&mut app, ch(c));
        }
        assert_eq!(app.row_count(), 1);
    }
}

#[cfg(test)]
mod batch_tests {
    use super::{tests::*, *};

    /// Several agents' snapshots in one batch are sorted once, and a key in the same batch
    /// sees the new rows (never indices into replaced entries).
    #[test]
    fn snapshots_mark_rows_stale_until_settled_and_keys_settle_first() {
        let mut app = App::new(vec!["a:1".into(), "b:1".into()], (100, 30));
        let ep = |port: u32, rps: f64| v1::Endpoint {
            id: Some(v1::EndpointId {
                ip: "10.0.0.1".into(),
                port,
                direction: 1,
                ..Default::default()
            }),
            last: Some(v1::Window {
                rps,
                requests: rps as u64,
                ..Default::default()
            }),
            ..Default::default()
        };
        let apply = |app: &mut App, e: Event| {
            let mut next = app.action(e);
            while let Some(a) = next {
                next = app.update(a);
            }
        };
        apply(
            &mut app,
            Event::Agent(
                0,
                AgentEvent::Snapshot(snapshot("a", vec![ep(1, 5.0), ep(2, 50.0)])),
            ),
        );
        apply(
            &mut app,
            Event::Agent(1, AgentEvent::Snapshot(snapshot("b", vec![ep(3, 500.0)]))),
        );
        assert!(app.dirty);
        assert_eq!(app.row_count(), 0, "not rebuilt per snapshot");
        // A key in the same batch rebuilds first, then moves.
        apply(&mut app, Event::Key(KeyCode::Down.into()));
        assert!(!app.dirty);
        assert_eq!(app.row_count(), 3);
        assert_eq!(
            app.selected_entry().unwrap().ep.id.as_ref().unwrap().port,
            2
        );
        // A smaller snapshot then a key: the selection stays within the new rows.
        apply(
            &mut app,
            Event::Agent(0, AgentEvent::Snapshot(snapshot("a", vec![]))),
        );
        apply(
            &mut app,
            Event::Agent(1, AgentEvent::Snapshot(snapshot("b", vec![]))),
        );
        apply(&mut app, Event::Key(KeyCode::End.into()));
        assert_eq!(app.row_count(), 0);
        assert!(app.selected_entry().is_none());
    }

    #[test]
    fn nan_from_the_wire_sorts_last_without_panicking() {
        let mut app = App::new(vec!["a:1".into()], (100, 30));
        let eps: Vec<v1::Endpoint> = (0..50u32)
            .map(|i| v1::Endpoint {
                id: Some(v1::EndpointId {
                    ip: "10.0.0.1".into(),
                    port: i,
                    direction: 1,
                    ..Default::default()
                }),
                last: Some(v1::Window {
                    rps: if i % 3 == 0 { f64::NAN } else { f64::from(i) },
                    p99_seconds: Some(if i % 4 == 0 { f64::NAN } else { 0.001 }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        feed(
            &mut app,
            Event::Agent(0, AgentEvent::Snapshot(snapshot("a", eps))),
        );
        for _ in 0..4 {
            feed(&mut app, Event::Key(KeyCode::Char('s').into()));
            feed(&mut app, Event::Key(KeyCode::Char('S').into()));
        }
        assert_eq!(app.row_count(), 50);
        for _ in 0..4 {
            if app.sort == SortKey::Rps && !app.reverse {
                break;
            }
            feed(&mut app, Event::Key(KeyCode::Char('s').into()));
        }
        assert!(app.sort == SortKey::Rps && !app.reverse);
        assert_eq!(app.row(0).unwrap().rps(), 49.0);
        assert!(app.row(49).unwrap().rps().is_nan(), "NaN sorts last");
    }
}
