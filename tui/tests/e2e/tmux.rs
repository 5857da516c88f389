//! A real terminal: a private tmux server running a shell, driven with `send-keys` and read
//! with `capture-pane`.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use kite_testkit::unique;

/// A tmux server of our own (its own socket) with one session; killed on drop.
pub struct Tmux {
    socket: String,
    pub session: String,
}

impl Tmux {
    /// A `width`×`height` session running a plain shell.
    pub fn new(width: u16, height: u16) -> Self {
        let t = Self {
            socket: unique("kite-tui-test"),
            session: "kite".into(),
        };
        let out = t
            .cmd()
            .args(["new-session", "-d", "-s", &t.session, "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .args([
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=tmux-256color",
            ])
            .args(["HOME=/tmp", "PS1=test$ ", "bash", "--norc", "--noprofile"])
            .output()
            .expect("tmux (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.wait_for("a shell prompt", Duration::from_secs(10), |s| {
            s.contains("test$")
        });
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// Types `keys` (tmux key names, e.g. `Enter`, `C-c`, or literal text with `-l`).
    pub fn keys(&self, keys: &[&str]) {
        let st = self
            .cmd()
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success(), "send-keys {keys:?}");
    }

    /// Types text literally.
    pub fn text(&self, text: &str) {
        self.keys(&["-l", text]);
    }

    /// The visible screen.
    pub fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `ok`; returns it. Fails with the screen after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}; screen:\n{s}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resizes the window (the program inside gets SIGWINCH).
    pub fn resize(&self, width: u16, height: u16) {
        let st = self
            .cmd()
            .args(["resize-window", "-t", &self.session, "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "resize-window");
    }

    /// Whether the session still exists.
    pub fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", &self.session])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- terminal at failure ---\n{}", self.screen());
        }
        let _ = self.cmd().arg("kill-server").output();
    }
}
