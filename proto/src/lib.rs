//! `kite.v1`: the gRPC contract between Kite's node agent and its clients.
//!
//! The messages and the `Kite` service are generated from `proto/kite/v1/kite.proto` at build
//! time (protox + tonic-prost-build, no system `protoc`); the file documents every field.
//!
//! ```no_run
//! use kite_proto::v1::{kite_client::KiteClient, ListRequest};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = KiteClient::connect("http://127.0.0.1:7777").await?;
//! let snapshot = client.list(ListRequest::default()).await?.into_inner();
//! for e in snapshot.endpoints {
//!     println!("{:?} {} rps", e.id, e.last.map_or(0.0, |w| w.rps));
//! }
//! # Ok(()) }
//! ```

/// Generated `kite.v1` types, client and server.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("kite.v1");
}

/// Encoded `FileDescriptorSet` of kite.v1, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kite_v1_descriptor.bin"));

/// The default gRPC port of the agent.
pub const DEFAULT_GRPC_PORT: u16 = 7777;

/// The default Prometheus port of the agent.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

impl v1::Direction {
    /// `in` / `out` / `?`.
    pub fn short(self) -> &'static str {
        match self {
            v1::Direction::Inbound => "in",
            v1::Direction::Outbound => "out",
            v1::Direction::Unspecified => "?",
        }
    }
}

impl v1::Protocol {
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `gRPC`; `HTTP/1.x` when unspecified.
    pub fn label(self) -> &'static str {
        match self {
            v1::Protocol::Unspecified => "HTTP/1.x",
            v1::Protocol::Http10 => "HTTP/1.0",
            v1::Protocol::Http11 => "HTTP/1.1",
            v1::Protocol::Http2 => "HTTP/2",
            v1::Protocol::Grpc => "gRPC",
        }
    }
}

impl v1::EndpointId {
    /// Its protocol as shown, with TLS: `HTTP/1.1`, `HTTP/2+TLS`, `gRPC+TLS`.
    pub fn protocol_label(&self) -> String {
        let p = self.protocol().label();
        if self.tls {
            format!("{p}+TLS")
        } else {
            p.to_string()
        }
    }

    /// Whether its calls are gRPC calls (statuses are grpc-status codes).
    pub fn is_grpc(&self) -> bool {
        self.protocol() == v1::Protocol::Grpc
    }

    /// `ip:port`, IPv6 in brackets.
    pub fn address(&self) -> String {
        if self.ip.contains(':') {
            format!("[{}]:{}", self.ip, self.port)
        } else {
            format!("{}:{}", self.ip, self.port)
        }
    }
}
