//! The terminal and the event loop.
//!
//! The loop waits on one channel only: keys and resizes come from an input thread, snapshots
//! and connection states from one task per agent ([`crate::client::follow`]). It never waits
//! on the network, so the screen stays responsive whatever the agents do. The terminal is put
//! back as it was on every way out: normal exit, error, Ctrl-C or a signal, and panics (a
//! panic hook restores it before the message is printed).

use std::{
    io::{self, Stdout},
    sync::Once,
    thread,
    time::Duration,
};

use ratatui::{
    Terminal,
    backend::{Backend, CrosstermBackend},
    crossterm::{
        cursor, event as ct, execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    Error,
    app::{App, EntryKey, Event, Grouping},
    client::{Target, follow},
};

/// Events queued between the producers and the loop.
const QUEUE: usize = 256;
/// Events applied before the screen is drawn again (so a burst cannot starve drawing).
const BATCH: usize = 64;
/// How often the loop redraws when nothing arrives (stale rows age on screen).
const TICK: Duration = Duration::from_secs(1);

/// Whether the terminal is in Kite's state (raw mode, alternate screen).
static ACTIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Puts the terminal back: main screen, cooked mode, visible cursor. Only the first call
/// after [`TerminalGuard::enter`] acts: leaving the alternate screen twice would move the
/// cursor back over what was printed in between (a panic message, say).
pub fn restore() {
    if !ACTIVE.swap(false, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// The terminal in raw mode on the alternate screen; restored on drop.
pub struct TerminalGuard {
    /// The ratatui terminal.
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen. On panic, `shutdown` is cancelled and the
    /// terminal restored before the panic message is printed.
    pub fn enter(shutdown: &CancellationToken) -> Result<Self, Error> {
        install_panic_hook(shutdown.clone());
        terminal::enable_raw_mode().map_err(Error::Terminal)?;
        ACTIVE.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = execute!(io::stdout(), EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(Error::Terminal(e));
        }
        match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(Error::Terminal(e))
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Set by the panic hook: a panic anywhere (an agent's task included) ends the program with
/// a failure, not with the success of a normal quit.
static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether anything panicked since the terminal was set up.
pub fn panicked() -> bool {
    PANICKED.load(std::sync::atomic::Ordering::SeqCst)
}

fn install_panic_hook(shutdown: CancellationToken) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
            restore();
            shutdown.cancel();
            previous(info);
        }));
    });
}

/// Reads keys and resizes on a thread of its own (crossterm's reads block) until `shutdown`.
pub fn spawn_input(tx: mpsc::Sender<Event>, shutdown: CancellationToken) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !shutdown.is_cancelled() {
            // Without this thread neither q nor Ctrl-C (a plain key in raw mode) could quit:
            // a terminal that cannot be read ends the program.
            match ct::poll(Duration::from_millis(100)) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => return shutdown.cancel(),
            }
            let event = match ct::read() {
                Ok(ct::Event::Key(k)) if k.kind != ct::KeyEventKind::Release => Event::Key(k),
                Ok(ct::Event::Resize(w, h)) => Event::Resize(w, h),
                Ok(_) => continue,
                Err(_) => return shutdown.cancel(),
            };
            if tx.blocking_send(event).is_err() {
                break;
            }
        }
    })
}

/// Applies an event the way the loop does: event → action → update (→ follow-up actions).
pub fn handle(app: &mut App, event: Event) {
    apply(app, event);
    app.settle();
}

/// [`handle`] without rebuilding the rows after a snapshot (the loop does it once per batch).
fn apply(app: &mut App, event: Event) {
    let mut next = app.action(event);
    while let Some(action) = next {
        next = app.update(action);
    }
}

/// What the UI tells the agents' tasks after every batch, without waiting for them.
#[derive(Debug)]
pub struct Publish {
    /// The endpoint in focus (`App::focus`).
    pub focus: watch::Sender<Option<EntryKey>>,
    /// Whether every endpoint's histogram is needed (`App::wants_histograms`).
    pub histograms: watch::Sender<bool>,
    /// How rows are grouped (`--prometheus` sums them in PromQL).
    pub grouping: watch::Sender<Grouping>,
}

impl Publish {
    /// Channels with nothing in focus and no histograms wanted.
    pub fn new() -> Self {
        Self {
            focus: watch::channel(None).0,
            histograms: watch::channel(false).0,
            grouping: watch::channel(Grouping::Endpoint).0,
        }
    }

    /// Sends what changed.
    fn send(&self, app: &App) {
        let f = app.focus();
        if *self.focus.borrow() != f {
            self.focus.send_replace(f);
        }
        let h = app.wants_histograms();
        if *self.histograms.borrow() != h {
            self.histograms.send_replace(h);
        }
        if *self.grouping.borrow() != app.grouping {
            self.grouping.send_replace(app.grouping);
        }
    }
}

impl Default for Publish {
    fn default() -> Self {
        Self::new()
    }
}

/// Draws, then applies events and draws again until the user quits, the channel closes or
/// `shutdown` is cancelled. Generic over the backend, so tests run it on a `TestBackend`.
///
/// After every batch of events what the agents' tasks need to know (the endpoint in focus,
/// whether histograms are wanted) is published on `publish`, without waiting for anyone.
pub async fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    rx: &mut mpsc::Receiver<Event>,
    publish: &Publish,
    shutdown: &CancellationToken,
) -> Result<(), B::Error> {
    terminal.draw(|f| f.render_widget(&*app, f.area()))?;
    // A clock for what ages on screen (stale rows) when nothing else arrives.
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        publish.send(app);
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            e = rx.recv() => match e {
                Some(e) => e,
                None => return Ok(()),
            },
            t = tick.tick() => Event::Tick(t.into_std()),
        };
        apply(app, event);
        for _ in 0..BATCH {
            if app.quit {
                break;
            }
            match rx.try_recv() {
                Ok(e) => apply(app, e),
                Err(_) => break,
            }
        }
        if app.quit {
            return Ok(());
        }
        app.settle();
        terminal.draw(|f| f.render_widget(&*app, f.area()))?;
    }
}

/// Cancels `shutdown` on SIGINT, SIGTERM or SIGHUP (Ctrl-C in raw mode arrives as a key).
pub fn cancel_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = shutdown.cancelled() => return,
        }
        shutdown.cancel();
    });
}

/// The interactive dashboard over these agents, until the user quits or `shutdown`.
pub async fn run(
    targets: Vec<Target>,
    cluster: Option<(kube::Client, crate::kube::Cluster)>,
    thresholds: crate::app::Thresholds,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let publish = Publish::new();
    let labels = targets.iter().map(Target::label).collect();
    let spawn = {
        let (tx, focus, histograms) = (
            tx.clone(),
            publish.focus.subscribe(),
            publish.histograms.subscribe(),
        );
        move |i: usize, t: Target, token: CancellationToken| {
            tokio::spawn(follow(
                i,
                t,
                tx.clone(),
                focus.clone(),
                histograms.clone(),
                token,
            ));
        }
    };
    for (i, t) in targets.into_iter().enumerate() {
        spawn(i, t, shutdown.clone());
    }
    if let Some((client, cluster)) = cluster {
        tokio::spawn(crate::kube::follow_cluster(
            client,
            cluster,
            tx.clone(),
            spawn,
            shutdown.clone(),
        ));
    }
    dashboard(labels, thresholds, (tx, rx), publish, shutdown).await
}

/// The dashboard over a Prometheus-compatible server (`--prometheus`): one source, refreshed
/// every `every`, rates over `window`, grouped in PromQL as the UI groups.
pub async fn run_prometheus(
    server: crate::prometheus::Server,
    every: Duration,
    window: Duration,
    thresholds: crate::app::Thresholds,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let publish = Publish::new();
    let labels = vec![server.url.clone()];
    tokio::spawn(crate::prometheus::follow(
        server,
        tx.clone(),
        publish.grouping.subscribe(),
        every,
        window,
        shutdown.clone(),
    ));
    dashboard(labels, thresholds, (tx, rx), publish, shutdown).await
}

/// The terminal, the input thread and the event loop over sources already feeding `tx`.
async fn dashboard(
    labels: Vec<String>,
    thresholds: crate::app::Thresholds,
    (tx, mut rx): (mpsc::Sender<Event>, mpsc::Receiver<Event>),
    publish: Publish,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut guard = TerminalGuard::enter(&shutdown)?;
    let size = guard.terminal.size().map_err(Error::Terminal)?;
    let mut app = App::new(labels, (size.width, size.height));
    app.thresholds = thresholds;
    let input = spawn_input(tx, shutdown.clone());
    // For tests/e2e/dashboard.rs: a panic in a task must restore the terminal and fail.
    if std::env::var_os("KITE_TUI_TEST_PANIC").is_some() {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            panic!("KITE_TUI_TEST_PANIC is set");
        });
    }
    let result = event_loop(&mut guard.terminal, &mut app, &mut rx, &publish, &shutdown).await;
    shutdown.cancel();
    drop(guard);
    // The input thread notices within its poll interval. Not joined without a bound: a
    // terminal that hangs up while it polls can keep crossterm's poll reading end-of-file
    // forever (seen: `q`, then the terminal closed at once), and the process must still end
    // (the thread goes with it).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while !input.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if input.is_finished() {
        let _ = input.join();
    }
    result.map_err(Error::Terminal)
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::app::{
        AgentEvent,
        tests::{ch, endpoint, snapshot},
    };

    #[tokio::test]
    async fn the_loop_draws_updates_and_stops_on_q() {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let mut app = App::new(vec!["127.0.0.1:7777".into()], (80, 24));
        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        tx.send(Event::Agent(
            0,
            AgentEvent::Snapshot(snapshot(
                "node-a",
                vec![endpoint(
                    Some(("shop", "web-1")),
                    "",
                    80,
                    120.0,
                    Some(4.0),
                    0.0,
                )],
            )),
        ))
        .await
        .unwrap();
        tx.send(ch('q')).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            event_loop(&mut terminal, &mut app, &mut rx, &Publish::new(), &shutdown),
        )
        .await
        .expect("the loop ends on q")
        .unwrap();
        assert!(app.quit);
        assert_eq!(app.row_count(), 1);
    }

    #[tokio::test]
    async fn the_loop_stops_when_cancelled_even_with_a_silent_network() {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let mut app = App::new(vec!["127.0.0.1:7777".into()], (80, 24));
        let (_tx, mut rx) = mpsc::channel::<Event>(16);
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.cancel();
        });
        tokio::time::timeout(
            Duration::from_secs(5),
            event_loop(&mut terminal, &mut app, &mut rx, &Publish::new(), &shutdown),
        )
        .await
        .expect("the loop ends when cancelled")
        .unwrap();
        let screen = terminal.backend().to_string();
        assert!(screen.contains("connecting"), "{screen}");
    }
}
