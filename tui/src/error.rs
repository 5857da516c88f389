//! What can go wrong, as one enum with lowercase messages.

use std::time::Duration;

/// An error of `kite-tui`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `--addr` that is not `host:port` or `http://host:port`.
    #[error("invalid agent address {addr:?}: {reason}")]
    Addr {
        /// As given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection to an agent could not be made.
    #[error("{target}: {}", one_line(.source))]
    Connect {
        /// The agent.
        target: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// Nothing listens at the address.
    #[error("{target}: connection refused")]
    Refused {
        /// The agent.
        target: String,
    },
    /// Something answers at the address, but not a Kite agent (see `probe`).
    #[error("{what}")]
    NotAgent {
        /// The address.
        target: String,
        /// The whole sentence, naming the address.
        what: String,
    },
    /// A call failed.
    #[error("{target}: {}", status_line(.status))]
    Rpc {
        /// The agent.
        target: String,
        /// What it (or the transport) answered.
        #[source]
        status: Box<tonic::Status>,
    },
    /// No answer in time.
    #[error("{target}: no answer within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The agent.
        target: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The Kubernetes API refused or failed.
    #[error("{what}: {}", one_line(.source))]
    Kube {
        /// What we were doing.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<kube::Error>,
    },
    /// No agent pod to talk to.
    #[error(
        "no Running kite-agent pod in namespace {namespace:?} with labels {selector:?}{}",
        node.as_ref().map(|n| format!(" on node {n}")).unwrap_or_default()
    )]
    NoAgentPods {
        /// Where we looked.
        namespace: String,
        /// Which labels.
        selector: String,
        /// On which node, when looking for one node's agent.
        node: Option<String>,
    },
    /// The port-forward did not give a stream.
    #[error("port-forward to pod {pod}: {reason}")]
    PortForward {
        /// The pod.
        pod: String,
        /// What went wrong.
        reason: String,
    },
    /// A `--tls-cert`, `--tls-key` or `--ca` file could not be used.
    #[error("{path}: {reason}")]
    Tls {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Flags that do not go together.
    #[error("{0}")]
    Flag(String),
    /// Not one agent answered (`--once`).
    #[error("no agent answered: {}", .errors.join("; "))]
    NoAnswer {
        /// Why each one did not.
        errors: Vec<String>,
    },
    /// The `--prometheus` server failed, or is not one, or holds no Kite series (one
    /// sentence naming the URL).
    #[error("{0}")]
    Prometheus(String),
    /// The terminal could not be set up or written.
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
}

/// A status as one line: the message, and the code when the message does not say it.
fn status_line(s: &tonic::Status) -> String {
    let msg = s.message().trim();
    let code = s.code();
    let base = match code {
        tonic::Code::Unavailable | tonic::Code::Unknown if !msg.is_empty() => msg.to_string(),
        _ if msg.is_empty() => code.description().to_string(),
        _ => format!("{}: {msg}", code.description()),
    };
    match std::error::Error::source(s) {
        Some(src) => {
            let cause = one_line(src);
            if base.contains(&cause) {
                base
            } else {
                format!("{base}: {cause}")
            }
        }
        None => base,
    }
}

/// An error and its causes on one line, without repeating a cause that its parent already
/// quotes and without transport jargon that says nothing ("transport error").
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        let noise = matches!(
            text.as_str(),
            "transport error" | "client error (Connect)" | "tcp connect error"
        );
        if !noise && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(&'static str, #[source] Option<Box<E>>);

    #[test]
    fn one_line_drops_noise_and_repeats() {
        let e = E(
            "transport error",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(one_line(&e), "Connection refused (os error 111)");
        let e = E("listing pods: 403", Some(Box::new(E("403", None))));
        assert_eq!(one_line(&e), "listing pods: 403");
    }

    #[test]
    fn statuses_read_well() {
        let e = Error::Rpc {
            target: "a:1".into(),
            status: Box::new(tonic::Status::unimplemented("")),
        };
        assert_eq!(
            e.to_string(),
            "a:1: Operation is not implemented or not supported"
        );
        let e = Error::Rpc {
            target: "a:1".into(),
            status: Box::new(tonic::Status::unavailable("agent going away")),
        };
        assert_eq!(e.to_string(), "a:1: agent going away");
    }
}
