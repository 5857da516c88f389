//! The two messages and the agent's reader of the first.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _};

/// Longest hello (and answer) accepted, newline included.
pub const MAX_HELLO: usize = 4096;
/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;

/// What the init container says: which pod it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version, [`VERSION`].
    pub version: u32,
    /// Pod name (downward API `metadata.name`).
    pub pod: String,
    /// Pod namespace (`metadata.namespace`).
    pub namespace: String,
    /// Pod uid (`metadata.uid`); must match the uid in the peer's pod cgroup.
    pub uid: String,
    /// Name of the container saying hello, for the agent's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The pod's own route patterns (its `kite.io/routes` annotation, through the downward
    /// API), in order; checked by the agent with [`crate::routes::pod_patterns`]. Left out
    /// when empty, so the line is what agents before it read (they ignore the field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

impl Hello {
    /// A version-1 hello for a pod.
    pub fn new(namespace: &str, pod: &str, uid: &str) -> Self {
        Self {
            version: VERSION,
            pod: pod.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            container: None,
            routes: Vec::new(),
        }
    }

    /// The hello as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// The agent's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Whether the pod is measured now.
    pub ok: bool,
    /// The pod cgroup the agent attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// What happened, when `ok` ("attached", "already attached", …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The agent is busy (too many connections from this peer): asking again later may work.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

impl Ack {
    /// A positive answer.
    pub fn attached(cgroup: &str, message: &str) -> Self {
        Self {
            ok: true,
            cgroup: Some(cgroup.into()),
            message: Some(message.into()),
            error: None,
            retry: false,
        }
    }

    /// A refusal with its reason.
    pub fn refused(error: &str) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            ..Self::default()
        }
    }

    /// A refusal worth retrying (the agent is busy).
    pub fn busy(error: &str) -> Self {
        Self {
            retry: true,
            ..Self::refused(error)
        }
    }

    /// The answer as one line, newline not included.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"ok":false}"#.into())
    }
}

/// Why a hello could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The peer said nothing in time (the agent applies the limit).
    #[error("no hello within the time limit")]
    Timeout,
    /// More than [`MAX_HELLO`] bytes without a newline.
    #[error("the hello is longer than {MAX_HELLO} bytes")]
    TooLong,
    /// End of stream before the newline.
    #[error("the connection closed before a complete hello line")]
    Truncated,
    /// Reading failed.
    #[error("reading the hello: {0}")]
    Io(#[from] std::io::Error),
    /// Not a hello.
    #[error("the hello is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A version this side does not speak.
    #[error("unsupported hello version {0} (this agent speaks {VERSION})")]
    Version(u32),
    /// A required field is blank.
    #[error("the hello has an empty {0}")]
    Empty(&'static str),
}

/// Reads and checks one hello line, reading at most [`MAX_HELLO`] bytes.
pub async fn read_hello<R: AsyncBufRead + Unpin>(r: R) -> Result<Hello, HelloError> {
    let mut line = Vec::new();
    let n = r
        .take(MAX_HELLO as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if line.last() != Some(&b'\n') {
        return Err(if n > MAX_HELLO {
            HelloError::TooLong
        } else {
            HelloError::Truncated
        });
    }
    let h: Hello = serde_json::from_slice(&line)?;
    if h.version != VERSION {
        return Err(HelloError::Version(h.version));
    }
    for (name, v) in [
        ("pod", &h.pod),
        ("namespace", &h.namespace),
        ("uid", &h.uid),
    ] {
        if v.trim().is_empty() {
            return Err(HelloError::Empty(name));
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<Hello, HelloError> {
        read_hello(bytes).await
    }

    #[tokio::test]
    async fn a_hello_round_trips() {
        let mut h = Hello::new("shop", "web-0", "0b9c-uid");
        h.container = Some("kite-init".into());
        assert_eq!(read(h.to_line().as_bytes()).await.unwrap(), h);
    }

    #[tokio::test]
    async fn the_largest_hello_kite_init_sends_fits() {
        use crate::routes::{MAX_POD_PATTERN_LEN, MAX_POD_PATTERNS};
        // Kubernetes' longest names: pod 253, namespace 63, container 63 bytes.
        let mut h = Hello::new(
            &"n".repeat(63),
            &"p".repeat(253),
            "0f0d6d7e-1c2b-4e3f-9a8b-7c6d5e4f3a2b",
        );
        h.container = Some("c".repeat(63));
        // The widest pattern characters JSON might escape are not path characters: the
        // longest patterns are plain bytes.
        h.routes = (0..MAX_POD_PATTERNS)
            .map(|i| format!("/{i:x}{}", "a".repeat(MAX_POD_PATTERN_LEN - 2)))
            .collect();
        assert!(crate::routes::pod_patterns(&h.routes).is_ok());
        let line = h.to_line();
        assert!(line.len() <= MAX_HELLO, "{} bytes", line.len());
        assert_eq!(read(line.as_bytes()).await.unwrap(), h);
        // Without routes the field is not sent at all.
        assert!(!Hello::new("a", "b", "c").to_line().contains("routes"));
    }

    #[tokio::test]
    async fn bad_hellos_are_refused_with_a_reason() {
        let long = format!("{}\n", "x".repeat(MAX_HELLO + 10));
        let cases: [(&[u8], &str); 7] = [
            (b"garbage\n", "not valid JSON"),
            (b"{\"version\":1,\"pod\":\"p\"}\n", "not valid JSON"),
            (long.as_bytes(), "longer than"),
            (
                b"{\"version\":2,\"pod\":\"p\",\"namespace\":\"n\",\"uid\":\"u\"}\n",
                "version 2",
            ),
            (
                b"{\"version\":1,\"pod\":\" \",\"namespace\":\"n\",\"uid\":\"u\"}\n",
                "empty pod",
            ),
            (b"{\"version\":1,", "closed before"),
            (b"", "closed before"),
        ];
        for (input, want) in cases {
            let err = read(input).await.unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[tokio::test]
    async fn only_the_first_line_is_read() {
        let two = format!(
            "{}{}",
            Hello::new("a", "b", "c").to_line(),
            Hello::new("x", "y", "z").to_line()
        );
        assert_eq!(read(two.as_bytes()).await.unwrap().pod, "b");
    }

    #[test]
    fn acks_parse_as_sent() {
        for ack in [
            Ack::attached("/kubepods/podx", "attached"),
            Ack::refused("no"),
        ] {
            let back: Ack = serde_json::from_str(&ack.to_line()).unwrap();
            assert_eq!(back, ack);
        }
        assert_eq!(Ack::refused("no").to_line(), r#"{"ok":false,"error":"no"}"#);
    }
}
