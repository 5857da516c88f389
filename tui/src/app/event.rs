//! What happens ([`Event`]), what the dashboard does about it ([`Action`]), and which key
//! means which action on which screen.

use std::time::Duration;

use kite_proto::v1;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{App, View};

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A key was pressed.
    Key(KeyEvent),
    /// The terminal has a new size (columns, rows).
    Resize(u16, u16),
    /// News from the stream of agent number `.0` (its index in [`App::agents`]).
    Agent(usize, AgentEvent),
    /// A second passed (the loop's clock, for "stale for 12s").
    Tick(std::time::Instant),
    /// A sentence about the set of agents (`--kube`: more nodes than port-forwards, the pod
    /// watch failing), or `None` when there is nothing to say any more.
    Notice(Option<String>),
}

/// What an agent's network task reports.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// A new agent (`--kube`: a node's agent pod appeared) with this label, at this index:
    /// a new one, or the slot of one that left.
    Joined {
        /// How the UI names it.
        label: String,
    },
    /// The agent is gone for good (`--kube`: its node's agent pod was removed): its rows go.
    Left,
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
    /// Sort by the next column of the table (left to right, then around).
    CycleSort,
    /// Sort by the column before.
    PrevSort,
    /// Sort by the table's column number `.0` (from 0, left to right); again: reverse.
    SortColumn(usize),
    /// Show both directions → inbound only → outbound only → both.
    CycleDirection,
    /// Group rows: endpoint → workload → namespace → endpoint.
    CycleGrouping,
    /// The routes view (one row per (endpoint, route), slowest p99 first) or back.
    ToggleRoutes,
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
    /// Show the gRPC methods (or routes) of the selected endpoint as rows under it.
    Unfold,
    /// Hide the methods (routes) of the selected endpoint (or of the method row's endpoint).
    Fold,
    /// Back from the detail view.
    Back,
    /// Freeze or unfreeze the display (snapshots keep arriving).
    TogglePause,
    /// Show or hide the help.
    ToggleHelp,
    /// Hide or show the rows of agents that went away.
    ToggleStale,
    /// The clock moved on.
    Tick(std::time::Instant),
    /// The terminal was resized.
    Resize(u16, u16),
    /// News from an agent.
    Agent(usize, AgentEvent),
    /// A sentence about the set of agents (see [`Event::Notice`]).
    Notice(Option<String>),
}

/// The action of a key on the screen `app` shows.
pub(super) fn key_action(app: &App, key: KeyEvent) -> Option<Action> {
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
    if app.input.is_some() {
        return match key.code {
            KeyCode::Enter => Some(Action::ApplyFilter),
            KeyCode::Esc => Some(Action::ClearFilter),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) if !ctrl => Some(Action::FilterChar(c)),
            code => moves(code),
        };
    }
    if app.help {
        return match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Esc | KeyCode::Char('?') | KeyCode::Enter => Some(Action::ToggleHelp),
            _ => None,
        };
    }
    if let Some(a) = moves(key.code) {
        return Some(a);
    }
    let detail = matches!(app.view, View::Detail(_));
    match key.code {
        KeyCode::Char('q') => Some(Action::Quit),
        KeyCode::Char('k') => Some(Action::Up),
        KeyCode::Char('j') => Some(Action::Down),
        KeyCode::Char('g') if !detail && !app.routes => Some(Action::CycleGrouping),
        KeyCode::Char('r') if !detail => Some(Action::ToggleRoutes),
        KeyCode::Char('G') => Some(Action::End),
        KeyCode::Char('b') if ctrl => Some(Action::PageUp),
        KeyCode::Char('f') if ctrl => Some(Action::PageDown),
        KeyCode::Char(' ') => Some(Action::TogglePause),
        KeyCode::Char('?') => Some(Action::ToggleHelp),
        KeyCode::Char('s' | '>') => Some(Action::CycleSort),
        KeyCode::Char('<') => Some(Action::PrevSort),
        KeyCode::Char(c @ '1'..='9') => Some(Action::SortColumn(c as usize - '1' as usize)),
        KeyCode::Char('0') => Some(Action::SortColumn(9)),
        KeyCode::Char('d') => Some(Action::CycleDirection),
        KeyCode::Char('x') => Some(Action::ToggleStale),
        KeyCode::Char('S') => Some(Action::ReverseSort),
        KeyCode::Char('/') => Some(Action::StartFilter),
        KeyCode::Enter if !detail => Some(Action::Open),
        KeyCode::Right | KeyCode::Char('l') if !detail => Some(Action::Unfold),
        KeyCode::Left | KeyCode::Char('h') if !detail => Some(Action::Fold),
        KeyCode::Esc | KeyCode::Backspace | KeyCode::Left | KeyCode::Char('h') if detail => {
            Some(Action::Back)
        }
        KeyCode::Esc if !app.filter.is_empty() => Some(Action::ClearFilter),
        KeyCode::Esc if app.routes => Some(Action::ToggleRoutes),
        _ => None,
    }
}
