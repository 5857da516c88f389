//! The init container's side: say hello, wait for the answer, within a deadline.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use crate::{Ack, Hello, MAX_HELLO};

/// Longest wait honoured; longer timeouts are cut to this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often a missing or not yet listening socket is tried again.
const RETRY: Duration = Duration::from_millis(200);

/// One enrollment attempt.
#[derive(Clone, Debug)]
pub struct Request {
    /// The agent's socket.
    pub socket: PathBuf,
    /// What to say.
    pub hello: Hello,
    /// Everything (waiting for the socket to appear, connecting, the answer) ends by then.
    pub timeout: Duration,
}

/// Why a pod was not enrolled.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The socket never accepted a connection.
    #[error("no agent listening on {socket} within {waited:?}: {source}")]
    NoAgent {
        /// The socket.
        socket: PathBuf,
        /// How long we tried.
        waited: Duration,
        /// The last connect error.
        source: std::io::Error,
    },
    /// Connected, but no answer in time.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    /// Reading or writing failed.
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    /// The agent's answer is not an answer.
    #[error("the agent's answer is not valid: {0}")]
    BadAnswer(String),
    /// The agent refused the pod.
    #[error("the agent refused: {0}")]
    Refused(String),
    /// The agent was busy every time it was asked.
    #[error("the agent was busy: {0}")]
    Busy(String),
}

/// Says hello and waits for the answer, within `req.timeout` in all. An agent that closes the
/// connection without answering, resets it, or says it is busy is asked again (with a growing
/// pause, at most 1 s) while time is left; a refusal is final.
pub fn enroll(req: &Request) -> Result<Ack, EnrollError> {
    let start = Instant::now();
    // Capped so that no timeout, however absurd, can overflow the clock and panic.
    let deadline = start + req.timeout.min(MAX_TIMEOUT);
    let mut pause = RETRY;
    loop {
        let err = match attempt(req, start, deadline) {
            Ok(ack) => return Ok(ack),
            Err(e) => e,
        };
        let transient = match &err {
            EnrollError::Busy(_) | EnrollError::Io(_) => true,
            EnrollError::BadAnswer(m) => m.contains("without answering"),
            _ => false,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !transient || left <= pause {
            return Err(err);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// One hello and its answer.
fn attempt(req: &Request, start: Instant, deadline: Instant) -> Result<Ack, EnrollError> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut stream = connect(&req.socket, deadline).map_err(|source| EnrollError::NoAgent {
        socket: req.socket.clone(),
        waited: start.elapsed(),
        source,
    })?;
    let timed_out = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            EnrollError::Timeout(req.timeout)
        }
        _ => EnrollError::Io(e),
    };
    stream
        .set_write_timeout(Some(left().max(Duration::from_millis(1))))
        .map_err(EnrollError::Io)?;
    stream
        .write_all(req.hello.to_line().as_bytes())
        .map_err(timed_out)?;
    let mut line = Vec::new();
    let mut reader = BufReader::new(&stream).take(MAX_HELLO as u64);
    loop {
        let left = left();
        if left.is_zero() {
            return Err(EnrollError::Timeout(req.timeout));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(EnrollError::Io)?;
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) if line.ends_with(b"\n") => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    if line.is_empty() {
        return Err(EnrollError::BadAnswer(
            "the agent closed the connection without answering".into(),
        ));
    }
    let ack: Ack = serde_json::from_slice(&line).map_err(|e| {
        EnrollError::BadAnswer(format!("{e}: {:?}", String::from_utf8_lossy(&line)))
    })?;
    if ack.ok {
        Ok(ack)
    } else if ack.retry {
        Err(EnrollError::Busy(
            ack.error.unwrap_or_else(|| "busy".into()),
        ))
    } else {
        Err(EnrollError::Refused(
            ack.error.unwrap_or_else(|| "no reason given".into()),
        ))
    }
}

/// Connects, trying again while the socket is missing or refuses, until `deadline`.
fn connect(socket: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                thread::sleep(RETRY.min(left));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::read_hello;

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("kite-init-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }
        fn socket(&self) -> PathBuf {
            self.0.join("kite.sock")
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn request(socket: PathBuf, timeout_ms: u64) -> Request {
        Request {
            socket,
            hello: Hello::new("shop", "web-0", "uid-1"),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// A one-connection agent answering `answer` (or nothing, holding the connection open).
    fn agent(socket: &Path, answer: Option<&'static str>) -> thread::JoinHandle<Hello> {
        let listener = UnixListener::bind(socket).unwrap();
        thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let hello = rt.block_on(read_hello(line.as_bytes())).unwrap();
            match answer {
                Some(a) => (&s).write_all(a.as_bytes()).unwrap(),
                None => thread::sleep(Duration::from_millis(800)),
            }
            hello
        })
    }

    #[test]
    fn an_ack_is_returned_and_the_hello_arrives_intact() {
        let d = Dir::new("ack");
        let a = agent(
            &d.socket(),
            Some("{\"ok\":true,\"cgroup\":\"/kubepods/pod1\",\"message\":\"attached\"}\n"),
        );
        let ack = enroll(&request(d.socket(), 2000)).unwrap();
        assert_eq!(ack.cgroup.as_deref(), Some("/kubepods/pod1"));
        assert_eq!(a.join().unwrap(), Hello::new("shop", "web-0", "uid-1"));
    }

    #[test]
    fn a_refusal_carries_the_agents_reason() {
        let d = Dir::new("refuse");
        let _a = agent(
            &d.socket(),
            Some("{\"ok\":false,\"error\":\"not a pod\"}\n"),
        );
        let e = enroll(&request(d.socket(), 2000)).unwrap_err();
        assert!(
            matches!(&e, EnrollError::Refused(r) if r == "not a pod"),
            "{e}"
        );
    }

    #[test]
    fn a_silent_agent_times_out() {
        let d = Dir::new("silent");
        let _a = agent(&d.socket(), None);
        let t = Instant::now();
        let e = enroll(&request(d.socket(), 300)).unwrap_err();
        assert!(matches!(e, EnrollError::Timeout(_)), "{e}");
        assert!(
            t.elapsed() < Duration::from_millis(700),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_garbled_answer_is_reported() {
        let d = Dir::new("garbled");
        let _a = agent(&d.socket(), Some("HTTP/1.1 200 OK\r\n"));
        let e = enroll(&request(d.socket(), 2000)).unwrap_err();
        assert!(matches!(e, EnrollError::BadAnswer(_)), "{e}");
    }

    #[test]
    fn a_missing_agent_is_waited_for_then_reported() {
        let d = Dir::new("missing");
        let t = Instant::now();
        let e = enroll(&request(d.socket(), 500)).unwrap_err();
        assert!(matches!(e, EnrollError::NoAgent { .. }), "{e}");
        assert!(
            t.elapsed() >= Duration::from_millis(450),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn an_agent_starting_late_is_still_reached() {
        let d = Dir::new("late");
        let socket = d.socket();
        let late = thread::spawn(move || {
            thread::sleep(Duration::from_millis(400));
            agent(&socket, Some("{\"ok\":true}\n")).join().unwrap()
        });
        assert!(enroll(&request(d.socket(), 3000)).unwrap().ok);
        late.join().unwrap();
    }

    #[test]
    fn a_connection_closed_without_answer_or_busy_is_retried_within_the_timeout() {
        let dir = Dir::new("retry");
        let listener = UnixListener::bind(dir.socket()).unwrap();
        let agent = thread::spawn(move || {
            // First: closed without a word; second: busy; third: attached.
            drop(listener.accept().unwrap());
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(
                Ack::busy("4 connections from this cgroup are open already")
                    .to_line()
                    .as_bytes(),
            )
            .unwrap();
            s.write_all(b"\n").unwrap();
            drop(s);
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut s = s;
            s.write_all(
                Ack::attached("/kubepods/pod1", "attached")
                    .to_line()
                    .as_bytes(),
            )
            .unwrap();
            s.write_all(b"\n").unwrap();
        });
        let ack = enroll(&request(dir.socket(), 5000)).unwrap();
        assert!(ack.ok);
        agent.join().unwrap();
        // A refusal is final.
        let listener = {
            std::fs::remove_file(dir.socket()).unwrap();
            UnixListener::bind(dir.socket()).unwrap()
        };
        let agent = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(Ack::refused("no").to_line().as_bytes())
                .unwrap();
            s.write_all(b"\n").unwrap();
        });
        let t0 = Instant::now();
        assert!(matches!(
            enroll(&request(dir.socket(), 5000)),
            Err(EnrollError::Refused(_))
        ));
        assert!(t0.elapsed() < Duration::from_secs(1));
        agent.join().unwrap();
    }
}
