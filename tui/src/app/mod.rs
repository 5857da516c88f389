//! The dashboard's state and how it changes, without a terminal or a network.
//!
//! Everything that happens is an [`Event`] (a key, a resize, news from an agent's stream);
//! [`App::action`] turns it into an [`Action`] (or nothing), [`App::update`] applies the action
//! and may return a follow-up one, and drawing (`crate::ui`) only reads the result. Tests drive
//! the same functions with made-up events.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use kite_proto::v1;

mod entry;
mod event;
mod group;
mod merged;
mod routes;
#[cfg(test)]
pub(crate) mod tests;

pub use entry::{Entry, EntryKey, SortKey, Stats};
pub use event::{Action, AgentEvent, Event};
pub use group::{Group, GroupKey, Grouping};
pub use merged::Merged;
pub use routes::{MAX_ROUTE_SERIES, ROUTE_HISTORY, RouteHistory, RoutePoint};

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
    /// When its last snapshot arrived (`None`: none yet).
    pub last_snapshot: Option<Instant>,
    /// It left for good (`--kube`: its pod was removed); its slot waits for the next one.
    pub left: bool,
}

impl AgentView {
    /// A new agent, connecting.
    fn new(label: String) -> Self {
        Self {
            label,
            conn: Conn::Connecting { attempt: 1 },
            node: None,
            last_error: None,
            endpoints: 0,
            window_seconds: 0.0,
            last_snapshot: None,
            left: false,
        }
    }
}

impl AgentView {
    /// Whether its rows are the last ones it sent before it went away: it is not streaming,
    /// but a snapshot came once.
    pub fn is_stale(&self) -> bool {
        !matches!(self.conn, Conn::Connected) && self.last_snapshot.is_some()
    }
}

/// A row of the table: an endpoint (agent, index into its shown entries), one of its gRPC
/// methods or routes (index into [`Entry::calls`]: under its unfolded endpoint, or a row of
/// the routes view), or a group (index into `groups`; then `agent` and `entry` mean nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowRef {
    agent: u32,
    entry: u32,
    method: Option<u32>,
    group: Option<u32>,
    /// An endpoint (or method) row shown under its expanded group.
    member: bool,
}

/// Which row is selected, across rebuilds.
#[derive(Debug, Clone, PartialEq)]
enum RowId {
    Endpoint(EntryKey, Option<u32>),
    Group(GroupKey),
}

/// What a row shows.
#[derive(Debug, Clone, Copy)]
pub struct RowView<'a> {
    /// The endpoint (for a method or route row, the one it belongs to).
    pub entry: &'a Entry,
    /// The gRPC method or route, for a method or route row.
    pub method: Option<&'a v1::RpcMethod>,
}

/// Sums over the endpoints shown, one per direction: a request that leaves one workload and
/// enters another is counted once on each side, so the two are never added.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Inbound endpoints (the workloads as servers).
    pub inbound: Stats,
    /// Outbound endpoints (the workloads as clients).
    pub outbound: Stats,
}

impl Totals {
    fn add(&mut self, direction: v1::Direction, s: &Stats) {
        let t = match direction {
            v1::Direction::Outbound => &mut self.outbound,
            _ => &mut self.inbound,
        };
        t.rps += s.rps;
        t.requests += s.requests;
        t.errors += s.errors;
        t.client_errors += s.client_errors;
        t.bytes_per_second += s.bytes_per_second;
    }
}

/// Latencies at or above `warn` are yellow, at or above `bad` red (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Yellow from here.
    pub warn: f64,
    /// Red from here.
    pub bad: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            warn: 0.1,
            bad: 0.5,
        }
    }
}

/// Widest texts of the rows shown, in characters (the table sizes its columns by them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Widths {
    /// `ip:port`.
    pub addr: usize,
    /// Node name.
    pub node: usize,
    /// Protocol.
    pub proto: usize,
    /// Name.
    pub name: usize,
    /// Namespace (0: none known).
    pub namespace: usize,
    /// Workload (0: none known).
    pub workload: usize,
    /// Server workload of outbound rows (0: none known).
    pub server: usize,
    /// Route or method (routes view).
    pub route: usize,
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
    /// The agents, in the order given (then as `--kube` finds them); see [`App::present`].
    pub agents: Vec<AgentView>,
    /// A sentence about the set of agents (`Event::Notice`), shown above them.
    pub notice: Option<String>,
    /// The latest endpoints of each agent.
    live: Vec<Arc<Vec<Entry>>>,
    /// What is displayed (equal to `live` unless paused).
    shown: Vec<Arc<Vec<Entry>>>,
    /// Filtered and sorted rows: endpoints, and the methods of the unfolded ones under them.
    rows: Vec<RowRef>,
    /// `shown` changed since `rows` were built: rebuild before the rows are read again (once
    /// per batch of events, not once per agent snapshot; see [`App::settle`]).
    dirty: bool,
    /// Sums over `rows`.
    pub totals: Totals,
    /// Widest texts among `rows`, in characters.
    pub widths: Widths,
    /// Endpoints known in total (before the filter).
    pub known: usize,
    /// Sort column.
    pub sort: SortKey,
    /// Reverse the natural order of the sort column.
    pub reverse: bool,
    /// Only this direction (`None`: both).
    pub direction: Option<v1::Direction>,
    /// Latency colours.
    pub thresholds: Thresholds,
    /// The filter applied.
    pub filter: String,
    /// The filter being typed (`/` … Enter).
    pub input: Option<String>,
    /// Index of the selected row.
    pub selected: usize,
    /// The selected row's endpoint and method id (method rows), or group.
    selected_key: Option<RowId>,
    /// How rows are grouped (`g`).
    pub grouping: Grouping,
    /// The table lists routes, one row per (endpoint, route) of every endpoint (`r`).
    pub routes: bool,
    /// The sort to go back to when the routes view closes.
    sort_before_routes: (SortKey, bool),
    /// Every route's last windows (sparklines): the agent keeps history per endpoint only.
    pub route_history: RouteHistory,
    /// The groups of `rows` (grouped views).
    groups: Vec<Group>,
    /// Groups whose members are shown under them (Enter).
    expanded: HashSet<GroupKey>,
    /// The next rebuild only opens or closes groups: `groups` stay as they are (their
    /// members, figures and order do not change).
    keep_groups: bool,
    /// Endpoints that passed the filter.
    pub matched: usize,
    /// Pod IPs the agents know (the address of an inbound endpoint of a known workload) →
    /// `namespace/workload`; an IP two workloads share (host network) is left out.
    servers: std::collections::HashMap<String, Option<String>>,
    /// gRPC endpoints whose methods are shown as rows under them (only keys of endpoints
    /// still shown are kept).
    unfolded: HashSet<EntryKey>,
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
    /// Rows of agents that went away are hidden (`x`); they are kept, greyed, otherwise.
    pub hide_stale: bool,
    /// Rows of stale agents among the endpoints shown (before hiding).
    pub stale_rows: usize,
    /// The clock drawing uses for "stale for 12s" (set by [`Action::Tick`] and snapshots).
    pub now: Instant,
}

impl App {
    /// A dashboard for these agents (labels), with a terminal of `size`.
    pub fn new(labels: Vec<String>, size: (u16, u16)) -> Self {
        let n = labels.len();
        Self {
            agents: labels.into_iter().map(AgentView::new).collect(),
            notice: None,
            live: (0..n).map(|_| Arc::new(Vec::new())).collect(),
            shown: (0..n).map(|_| Arc::new(Vec::new())).collect(),
            rows: Vec::new(),
            dirty: false,
            totals: Totals::default(),
            widths: Widths::default(),
            known: 0,
            sort: SortKey::Rps,
            reverse: false,
            direction: None,
            thresholds: Thresholds::default(),
            filter: String::new(),
            input: None,
            selected: 0,
            selected_key: None,
            grouping: Grouping::Endpoint,
            routes: false,
            sort_before_routes: (SortKey::Rps, false),
            route_history: RouteHistory::default(),
            groups: Vec::new(),
            expanded: HashSet::new(),
            keep_groups: false,
            matched: 0,
            servers: Default::default(),
            unfolded: HashSet::new(),
            offset: 0,
            size,
            view: View::Table,
            focused: None,
            paused: false,
            help: false,
            quit: false,
            hide_stale: false,
            stale_rows: 0,
            now: Instant::now(),
        }
    }

    /// Number of rows after the filter.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// The endpoint of row `i` (for a method row, the endpoint it belongs to; `None` for a
    /// group row).
    pub fn row(&self, i: usize) -> Option<&Entry> {
        let r = self.rows.get(i).filter(|r| r.group.is_none())?;
        self.shown.get(r.agent as usize)?.get(r.entry as usize)
    }

    /// Endpoints that passed the filter (in groups or not).
    pub fn endpoint_rows(&self) -> usize {
        self.matched
    }

    /// The group of row `i`, if it is a group row.
    pub fn group_row(&self, i: usize) -> Option<&Group> {
        self.groups.get(self.rows.get(i)?.group? as usize)
    }

    /// Whether row `i` is shown under its (expanded) group.
    pub fn is_member_row(&self, i: usize) -> bool {
        self.rows.get(i).is_some_and(|r| r.member)
    }

    /// Whether a group's members are shown under it.
    pub fn is_expanded(&self, key: &GroupKey) -> bool {
        self.expanded.contains(key)
    }

    /// The workload an outbound endpoint's server address belongs to, when an agent measures
    /// that workload's inbound side (who calls whom).
    pub fn server_workload(&self, e: &Entry) -> Option<&str> {
        if e.direction != v1::Direction::Outbound {
            return None;
        }
        self.servers.get(&e.key.ip)?.as_deref()
    }

    /// Whether the stream should bring every endpoint's histogram (grouped views merge them).
    pub fn wants_histograms(&self) -> bool {
        self.grouping != Grouping::Endpoint
    }

    /// Row `i`: an endpoint, or one of its gRPC methods or routes (`None` for a group row).
    pub fn row_view(&self, i: usize) -> Option<RowView<'_>> {
        let r = self.rows.get(i).filter(|r| r.group.is_none())?;
        let entry = self.shown.get(r.agent as usize)?.get(r.entry as usize)?;
        let method = match r.method {
            Some(m) => Some(entry.calls().get(m as usize)?),
            None => None,
        };
        Some(RowView { entry, method })
    }

    /// The last windows of route (or method) `id` of endpoint `key`, oldest first.
    pub fn route_points(
        &self,
        key: &EntryKey,
        id: u32,
    ) -> Option<&std::collections::VecDeque<RoutePoint>> {
        self.route_history.get(key, id)
    }

    /// Whether the methods (routes) of this endpoint are shown as rows under it.
    pub fn is_unfolded(&self, key: &EntryKey) -> bool {
        self.unfolded.contains(key)
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
        self.present().nth(1).is_some()
    }

    /// The agents that have not left, with their indexes.
    pub fn present(&self) -> impl Iterator<Item = (usize, &AgentView)> + Clone {
        self.agents.iter().enumerate().filter(|(_, a)| !a.left)
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
            Event::Tick(t) => Some(Action::Tick(t)),
            Event::Agent(i, e) => Some(Action::Agent(i, e)),
            Event::Notice(n) => Some(Action::Notice(n)),
            Event::Key(key) => event::key_action(self, key),
        }
    }

    /// Applies an action; returns a follow-up action, if any.
    pub fn update(&mut self, action: Action) -> Option<Action> {
        // Snapshots only mark the rows stale; anything that reads or moves rows sees them
        // rebuilt first.
        if !matches!(
            action,
            Action::Agent(..) | Action::Tick(_) | Action::Notice(_)
        ) {
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
                self.sort_by(self.sort.next_in(&crate::ui::table_columns(self)));
            }
            Action::PrevSort => {
                self.sort_by(self.sort.prev_in(&crate::ui::table_columns(self)));
            }
            Action::SortColumn(n) => {
                if let Some(k) = crate::ui::table_columns(self).get(n) {
                    if *k == self.sort {
                        self.reverse = !self.reverse;
                        self.rebuild();
                    } else {
                        self.sort_by(*k);
                    }
                }
            }
            Action::CycleDirection => {
                self.direction = match self.direction {
                    None => Some(v1::Direction::Inbound),
                    Some(v1::Direction::Inbound) => Some(v1::Direction::Outbound),
                    Some(_) => None,
                };
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
            Action::CycleGrouping => {
                self.grouping = self.grouping.next();
                self.rebuild();
            }
            Action::ToggleRoutes => {
                self.routes = !self.routes;
                if self.routes {
                    // Slowest first: what the routes view is for.
                    self.sort_before_routes = (self.sort, self.reverse);
                    self.sort = SortKey::P99;
                    self.reverse = false;
                } else {
                    // The selected route's row if its endpoint is unfolded, else the
                    // endpoint's (`rebuild` falls back to it).
                    (self.sort, self.reverse) = self.sort_before_routes;
                }
                self.rebuild();
            }
            Action::Unfold if self.group_row(self.selected).is_some() => {
                if let Some(g) = self.group_row(self.selected) {
                    self.expanded.insert(g.key.clone());
                    self.keep_groups = true;
                    self.rebuild();
                }
            }
            Action::Fold if self.group_row(self.selected).is_some() => {
                if let Some(g) = self.group_row(self.selected) {
                    let k = g.key.clone();
                    self.expanded.remove(&k);
                    self.keep_groups = true;
                    self.rebuild();
                }
            }
            Action::Open if self.group_row(self.selected).is_some() => {
                if let Some(g) = self.group_row(self.selected) {
                    let k = g.key.clone();
                    if !self.expanded.remove(&k) {
                        self.expanded.insert(k);
                    }
                    self.keep_groups = true;
                    self.rebuild();
                }
            }
            Action::Unfold if self.routes => {}
            Action::Fold if self.routes => {}
            Action::Unfold => {
                if let Some(e) = self.selected_entry()
                    && !e.calls().is_empty()
                {
                    self.unfolded.insert(e.key.clone());
                    self.rebuild();
                }
            }
            Action::Fold => {
                if let Some(e) = self.selected_entry() {
                    let key = e.key.clone();
                    if self.unfolded.remove(&key) {
                        // A method row folds into its endpoint's row, which stays selected.
                        self.selected_key = Some(RowId::Endpoint(key, None));
                        self.rebuild();
                    } else if self.is_member_row(self.selected) {
                        // A member folds into its group.
                        let g = self.groups.iter().find(|g| {
                            g.members
                                .iter()
                                .any(|&(a, j)| self.shown[a as usize][j as usize].key == key)
                        });
                        if let Some(k) = g.map(|g| g.key.clone()) {
                            self.expanded.remove(&k);
                            self.selected_key = Some(RowId::Group(k));
                            self.keep_groups = true;
                            self.rebuild();
                        }
                    }
                }
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
            Action::ToggleStale => {
                self.hide_stale = !self.hide_stale;
                self.rebuild();
            }
            Action::Tick(t) => self.now = self.now.max(t),
            Action::Resize(w, h) => {
                self.size = (w, h);
                self.scroll();
            }
            Action::Agent(i, event) => self.agent_event(i, event),
            Action::Notice(n) => self.notice = n,
        }
        None
    }

    fn agent_event(&mut self, i: usize, event: AgentEvent) {
        if let AgentEvent::Joined { label } = event {
            // A new agent, or one in the slot of one that left (so slots stay bounded by the
            // agents followed at once).
            if i >= self.agents.len() {
                self.agents.resize_with(i + 1, || AgentView {
                    left: true,
                    ..AgentView::new(String::new())
                });
                self.live.resize_with(i + 1, Default::default);
                self.shown.resize_with(i + 1, Default::default);
            }
            self.agents[i] = AgentView::new(label);
            self.route_history.forget(i);
            self.set_live(i, Vec::new());
            self.shown[i] = self.live[i].clone();
            self.dirty = true;
            return;
        }
        let Some(agent) = self.agents.get_mut(i).filter(|a| !a.left) else {
            return;
        };
        match event {
            AgentEvent::Joined { .. } => {}
            AgentEvent::Left => {
                agent.left = true;
                self.route_history.forget(i);
                self.set_live(i, Vec::new());
                // Gone for good, paused or not.
                self.shown[i] = self.live[i].clone();
                self.dirty = true;
            }
            AgentEvent::Connecting { attempt } => {
                agent.conn = Conn::Connecting { attempt };
                self.dirty = true;
            }
            AgentEvent::Connected => {
                agent.conn = Conn::Connected;
                agent.last_error = None;
                self.dirty = true;
            }
            AgentEvent::Snapshot(snap) => {
                let now = Instant::now();
                self.now = self.now.max(now);
                agent.last_snapshot = Some(now);
                agent.conn = Conn::Connected;
                agent.last_error = None;
                agent.node = Some(snap.node.clone());
                agent.endpoints = snap.endpoints.len();
                agent.window_seconds = snap.window_seconds;
                let snap = *snap;
                let entries: Vec<Entry> = snap
                    .endpoints
                    .into_iter()
                    .map(|ep| Entry::new(i, &snap.node, ep))
                    .collect();
                self.route_history.record(i, &entries);
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
                // Its rows stay, greyed and marked stale, until it is back or `x` hides them.
                self.dirty = true;
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

    fn sort_by(&mut self, key: SortKey) {
        self.sort = key;
        self.reverse = false;
        self.rebuild();
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
        self.selected_key = self.row_key(self.selected);
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

    /// The identity of row `i`: its endpoint, and its method's id for a method row; or its
    /// group.
    fn row_key(&self, i: usize) -> Option<RowId> {
        if let Some(g) = self.group_row(i) {
            return Some(RowId::Group(g.key.clone()));
        }
        let v = self.row_view(i)?;
        Some(RowId::Endpoint(v.entry.key.clone(), v.method.map(|m| m.id)))
    }

    /// Filters, sorts and sums again; the selection follows its endpoint (or method).
    fn rebuild(&mut self) {
        // Only groups opened or closed since the last rebuild, on the same data: the groups
        // (each a merge of its members' histograms) are still right.
        let keep_groups = std::mem::take(&mut self.keep_groups) && !self.dirty;
        self.dirty = false;
        let needle = self.active_filter().to_lowercase();
        let needle = needle.trim();
        let mut endpoints: Vec<(u32, u32)> = Vec::new();
        self.known = 0;
        self.stale_rows = 0;
        for (a, entries) in self.shown.iter().enumerate() {
            self.known += entries.len();
            let stale = self.agents.get(a).is_some_and(AgentView::is_stale);
            if stale {
                self.stale_rows += entries.len();
                if self.hide_stale {
                    continue;
                }
            }
            for (j, e) in entries.iter().enumerate() {
                if self.direction.is_none_or(|d| d == e.direction) && e.matches(needle) {
                    endpoints.push((a as u32, j as u32));
                }
            }
        }
        // Who is behind which pod IP: inbound endpoints' own addresses (not loopback or
        // unspecified: every pod has those). The same data as last time: the same map.
        if !keep_groups {
            self.servers_of_pods();
        }
        let servers = &self.servers;
        let server_of = |e: &Entry| -> &str {
            if e.direction != v1::Direction::Outbound {
                return "";
            }
            servers
                .get(&e.key.ip)
                .and_then(|w| w.as_deref())
                .unwrap_or("")
        };
        let shown = &self.shown;
        let (sort, reverse) = (self.sort, self.reverse);
        let entry = |&(a, j): &(u32, u32)| &shown[a as usize][j as usize];
        // Kept groups keep their members' order: the endpoints need no sort.
        if !keep_groups {
            endpoints.sort_unstable_by(|x, y| {
                let (a, b) = (entry(x), entry(y));
                let primary = match sort {
                    SortKey::Server => server_of(a).cmp(server_of(b)),
                    _ => sort.compare(a, b),
                };
                let names = a
                    .name
                    .cmp(&b.name)
                    .then_with(|| a.addr.cmp(&b.addr))
                    .then_with(|| a.key.cmp(&b.key));
                // Text columns: names break ties in the same direction (NAME▼ is Z to A);
                // numbers: ties A to Z whichever way the numbers go.
                if sort.is_text() {
                    let o = primary.then(names);
                    if reverse { o.reverse() } else { o }
                } else {
                    let primary = if reverse { primary.reverse() } else { primary };
                    primary.then(names)
                }
            });
        }
        // Unfolded gRPC endpoints: their methods under them, in the same order.
        self.unfolded.retain(|k| {
            shown
                .get(k.agent)
                .is_some_and(|es| es.iter().any(|e| e.key == *k))
        });
        self.matched = endpoints.len();
        // The routes view is of routes, not groups.
        let grouping = if self.routes {
            Grouping::Endpoint
        } else {
            self.grouping
        };
        let groups = if grouping == Grouping::Endpoint {
            Vec::new()
        } else if keep_groups {
            std::mem::take(&mut self.groups)
        } else {
            let mut groups = group::build(grouping, endpoints.iter().map(|r| (*r, entry(r))));
            groups.sort_by(|a, b| {
                let primary = match sort {
                    SortKey::Node => a.node.cmp(&b.node),
                    SortKey::Namespace => a.key.namespace.cmp(&b.key.namespace),
                    SortKey::Workload => a.key.workload.cmp(&b.key.workload),
                    SortKey::Endpoint => b.members.len().cmp(&a.members.len()),
                    SortKey::Server | SortKey::Route => std::cmp::Ordering::Equal,
                    SortKey::Dir => a.key.direction.cmp(&b.key.direction),
                    SortKey::Proto => a.protocol.cmp(&b.protocol),
                    SortKey::Name => std::cmp::Ordering::Equal,
                    k => k.compare_stats(&a.stats, &b.stats),
                };
                let names = a.name.cmp(&b.name).then_with(|| a.key.cmp(&b.key));
                if sort.is_text() {
                    let o = primary.then(names);
                    if reverse { o.reverse() } else { o }
                } else {
                    let primary = if reverse { primary.reverse() } else { primary };
                    primary.then(names)
                }
            });
            self.expanded.retain(|k| groups.iter().any(|g| g.key == *k));
            groups
        };
        self.rows.clear();
        let mut totals = Totals::default();
        let mut widths = Widths::default();
        // An endpoint row (and its methods when unfolded).
        let mut push = |rows: &mut Vec<RowRef>, r: &(u32, u32), member: bool| {
            let e = entry(r);
            rows.push(RowRef {
                agent: r.0,
                entry: r.1,
                method: None,
                group: None,
                member,
            });
            let indent = if member { 2 } else { 0 };
            widths.addr = widths.addr.max(e.addr.len());
            widths.node = widths.node.max(e.node.chars().count());
            widths.proto = widths.proto.max(e.protocol.len());
            widths.name = widths.name.max(e.name.chars().count() + indent);
            widths.namespace = widths.namespace.max(e.namespace().chars().count());
            widths.workload = widths.workload.max(e.workload().chars().count());
            widths.server = widths.server.max(server_of(e).chars().count());
            if self.unfolded.contains(&e.key) {
                // Method rows are indented by 4 ("  └ ").
                let rpcs = e.calls();
                let longest = rpcs.iter().map(|m| m.name.chars().count()).max();
                widths.name = widths.name.max(longest.unwrap_or(0) + 4 + indent);
                let mut methods: Vec<u32> = (0..rpcs.len() as u32).collect();
                methods.sort_by(|x, y| {
                    let (a, b) = (&rpcs[*x as usize], &rpcs[*y as usize]);
                    let primary = sort.compare_windows(a.last.as_ref(), b.last.as_ref());
                    let primary = if reverse { primary.reverse() } else { primary };
                    primary.then_with(|| a.name.cmp(&b.name))
                });
                rows.extend(methods.into_iter().map(|m| RowRef {
                    agent: r.0,
                    entry: r.1,
                    method: Some(m),
                    group: None,
                    member,
                }));
            }
        };
        let mut rows = Vec::with_capacity(endpoints.len());
        if self.routes {
            // One row per (endpoint, route) that passes the filter, all sorted together.
            let mut calls: Vec<(u32, u32, u32)> = Vec::new();
            for r in &endpoints {
                let e = entry(r);
                for (m, c) in e.calls().iter().enumerate() {
                    if routes::route_matches(e, c, needle) {
                        calls.push((r.0, r.1, m as u32));
                    }
                }
            }
            let call = |&(a, j, m): &(u32, u32, u32)| {
                let e = entry(&(a, j));
                (e, &e.calls()[m as usize])
            };
            calls.sort_unstable_by(|x, y| routes::compare(sort, reverse, call(x), call(y)));
            for c in &calls {
                let (e, route) = call(c);
                rows.push(RowRef {
                    agent: c.0,
                    entry: c.1,
                    method: Some(c.2),
                    group: None,
                    member: false,
                });
                widths.addr = widths.addr.max(e.addr.len());
                widths.node = widths.node.max(e.node.chars().count());
                widths.proto = widths.proto.max(e.protocol.len());
                widths.name = widths.name.max(e.name.chars().count());
                widths.route = widths.route.max(route.name.chars().count());
            }
        } else if grouping == Grouping::Endpoint {
            for r in &endpoints {
                push(&mut rows, r, false);
            }
        } else {
            for (gi, g) in groups.iter().enumerate() {
                rows.push(RowRef {
                    agent: u32::MAX,
                    entry: u32::MAX,
                    method: None,
                    group: Some(gi as u32),
                    member: false,
                });
                if self.expanded.contains(&g.key) {
                    for r in &g.members {
                        push(&mut rows, r, true);
                    }
                }
            }
        }
        for g in &groups {
            widths.name = widths.name.max(g.name.chars().count() + 2);
            // "12 endpoints" in the ENDPOINT column.
            widths.addr = widths.addr.max(g.members.len().to_string().len() + 10);
            widths.namespace = widths.namespace.max(g.key.namespace.chars().count());
            // Without a namespace the "workload" is the pod's cgroup, already the NAME.
            if !g.key.namespace.is_empty() {
                widths.workload = widths.workload.max(g.key.workload.chars().count());
            }
            widths.node = widths.node.max(g.node.chars().count());
            widths.proto = widths.proto.max(g.protocol.len());
        }
        for r in &endpoints {
            let e = entry(r);
            // Totals are of what is measured now: stale rows are not in them.
            if !self
                .agents
                .get(e.key.agent)
                .is_some_and(AgentView::is_stale)
            {
                totals.add(e.direction, &e.stats());
            }
        }
        self.rows = rows;
        self.groups = groups;
        self.totals = totals;
        self.widths = widths;
        // The selection follows its endpoint or group; the detail view refreshes its copy.
        match self.selected_key.clone() {
            Some(RowId::Endpoint(key, method)) => {
                let at = |m: Option<u32>| {
                    (0..self.rows.len()).find(|i| {
                        self.row_view(*i)
                            .is_some_and(|v| v.entry.key == key && v.method.map(|x| x.id) == m)
                    })
                };
                // A method that went away: its endpoint; an endpoint in a folded group: the
                // group.
                let group = || {
                    (0..self.rows.len()).find(|i| {
                        self.group_row(*i).is_some_and(|g| {
                            g.members
                                .iter()
                                .any(|&(a, j)| self.shown[a as usize][j as usize].key == key)
                        })
                    })
                };
                if let Some(i) = at(method).or_else(|| at(None)).or_else(group) {
                    self.selected = i;
                }
            }
            Some(RowId::Group(k)) => {
                if let Some(i) =
                    (0..self.rows.len()).find(|i| self.group_row(*i).is_some_and(|g| g.key == k))
                {
                    self.selected = i;
                }
            }
            None => {}
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

    /// Fills `servers`: pod IP → `namespace/workload` from the inbound endpoints shown.
    fn servers_of_pods(&mut self) {
        self.servers.clear();
        for e in self.shown.iter().flat_map(|es| es.iter()) {
            let ip: Option<std::net::IpAddr> = e.key.ip.parse().ok();
            if e.direction != v1::Direction::Inbound
                || e.workload().is_empty()
                || ip.is_none_or(|ip| ip.is_loopback() || ip.is_unspecified())
            {
                continue;
            }
            let who = format!("{}/{}", e.namespace(), e.workload());
            self.servers
                .entry(e.key.ip.clone())
                .and_modify(|w| {
                    if w.as_deref() != Some(who.as_str()) {
                        *w = None;
                    }
                })
                .or_insert(Some(who));
        }
    }

    /// Whether row `i` is a stale agent's (greyed, its age shown).
    pub fn row_is_stale(&self, i: usize) -> bool {
        match self.group_row(i) {
            // A group is stale when all its members are.
            Some(g) => g
                .members
                .iter()
                .all(|&(a, _)| self.agents.get(a as usize).is_some_and(AgentView::is_stale)),
            None => self
                .rows
                .get(i)
                .and_then(|r| self.agents.get(r.agent as usize))
                .is_some_and(AgentView::is_stale),
        }
    }

    /// How long ago agent `i`'s last snapshot came, whole seconds.
    pub fn stale_for(&self, i: usize) -> Option<Duration> {
        let a = self.agents.get(i)?;
        let t = a.last_snapshot.filter(|_| a.is_stale())?;
        Some(Duration::from_secs(
            self.now.saturating_duration_since(t).as_secs(),
        ))
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
