//! Exposition formats, content negotiation, and the encode-once cache of `/metrics` answers.

use std::{
    fmt,
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
use prometheus_client::registry::Registry;

use super::KiteCollector;
use crate::daemon::state::{Guards, Shared};

/// Exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, for scrapers that ask for it.
    OpenMetrics,
    /// The classic Prometheus text format (0.0.4), the default: every client and
    /// `promtool check metrics` read it.
    Prometheus,
    /// Prometheus' protobuf format (length-delimited `io.prometheus.client.MetricFamily`), the
    /// only one that carries native histograms: what Prometheus asks for first when native
    /// histograms are enabled.
    Protobuf,
}

/// The media type of [`Format::Protobuf`].
const PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

impl Format {
    /// From an HTTP `Accept` header: the supported media range of highest quality (the first
    /// of equal ones), the classic text format when none is or there is no header.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let mut best = (0.0f32, Format::Prometheus);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut proto, mut delimited) = (1.0f32, false, false);
            for p in parts {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    // RFC 9110 qvalues are 0..=1; anything else is no preference.
                    "q" => {
                        q = v
                            .parse()
                            .ok()
                            .filter(|q: &f32| (0.0..=1.0).contains(q))
                            .unwrap_or(0.0)
                    }
                    "proto" => proto = v == "io.prometheus.client.MetricFamily",
                    "encoding" => delimited = v == "delimited",
                    _ => {}
                }
            }
            let format = match media.as_str() {
                "application/vnd.google.protobuf" if proto && delimited => Format::Protobuf,
                "application/openmetrics-text" => Format::OpenMetrics,
                "text/plain" | "text/*" | "*/*" => Format::Prometheus,
                _ => continue,
            };
            if q > best.0 {
                best = (q, format);
            }
        }
        best.1
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::Protobuf => PROTOBUF,
        }
    }
}

/// The exposition.
pub fn render(registry: &Registry, format: Format) -> Result<Vec<u8>, fmt::Error> {
    render_sized(registry, format, 0)
}

/// The exposition into a buffer of `capacity` bytes to start with (the previous size: the
/// buffer then never doubles past what it needs).
pub fn render_sized(
    registry: &Registry,
    format: Format,
    capacity: usize,
) -> Result<Vec<u8>, fmt::Error> {
    let mut out = String::with_capacity(capacity);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?
        }
        Format::Protobuf => {
            return prometheus_client::encoding::prometheus_protobuf::encode_to_vec(registry)
                .map_err(|_| fmt::Error);
        }
    }
    Ok(out.into_bytes())
}

/// `/metrics` answers, bounded whatever scrapers do.
///
/// The exposition is encoded at most once per poll (and format) and the same bytes go to every
/// scraper of that poll. At most `max_alive` expositions (plus one per format) exist at once: one still being read
/// by a slow scraper counts until it is done, and each answer must be read within a send
/// deadline. When a new poll's exposition would exceed that, scrapers get the newest one
/// already encoded (a poll older, counted as `stale`) instead of a new copy.
pub struct Exposition {
    registry: Registry,
    shared: Shared,
    max_alive: usize,
    send_deadline: Duration,
    cache: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// The newest exposition of each format (by [`Format::slot`]).
    newest: [Option<Cached>; 3],
    /// Every exposition handed out and maybe still being sent.
    alive: Vec<Weak<Body>>,
}

struct Cached {
    generation: u64,
    body: Arc<Body>,
}

impl Format {
    /// Its place in the cache.
    fn slot(self) -> usize {
        match self {
            Format::Prometheus => 0,
            Format::OpenMetrics => 1,
            Format::Protobuf => 2,
        }
    }
}

/// An encoded exposition, shared by its readers.
struct Body(Vec<u8>);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Keeps its exposition alive while its bytes are being sent.
struct Share(Arc<Body>);

impl AsRef<[u8]> for Share {
    fn as_ref(&self) -> &[u8] {
        &self.0.0
    }
}

/// A chunk of the answer handed to the HTTP layer at a time.
const CHUNK: usize = 64 * 1024;

impl Exposition {
    /// Over the shared state.
    pub fn new(shared: Shared, max_alive: usize, send_deadline: Duration) -> Self {
        Self {
            registry: KiteCollector::registry(shared.clone()),
            shared,
            max_alive: max_alive.max(1),
            send_deadline,
            cache: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    async fn body(&self, format: Format) -> Result<(Format, Arc<Body>), fmt::Error> {
        let (generation, guards) = {
            let st = self.shared.read();
            (st.generation, st.guards.clone())
        };
        let mut cache = self.cache.lock().await;
        let slot = format.slot();
        if let Some(c) = cache.newest[slot].as_ref()
            && c.generation == generation
        {
            Guards::inc(&guards.scrape_shared);
            return Ok((format, c.body.clone()));
        }
        let hint = cache.newest[slot]
            .as_ref()
            .map_or(0, |c| c.body.0.len() + c.body.0.len() / 16);
        // The cache's own references to older polls do not count: dropped before encoding
        // unless a scraper still reads them.
        for c in &mut cache.newest {
            *c = c
                .take()
                .filter(|c| c.generation == generation || Arc::strong_count(&c.body) > 1);
        }
        cache.alive.retain(|w| w.strong_count() > 0);
        if cache.alive.len() >= self.max_alive
            && let Some(c) = cache.newest[slot].as_ref()
        {
            // Slow readers still hold the previous expositions: no new copy. Only ever one of
            // the format asked for; with none of it, one more is encoded (so at most
            // `max_alive` plus one per format exist).
            Guards::inc(&guards.scrape_stale);
            return Ok((format, c.body.clone()));
        }
        cache.newest[slot] = None;
        cache.alive.retain(|w| w.strong_count() > 0);
        let text = render_sized(&self.registry, format, hint)?;
        Guards::inc(&guards.scrape_encoded);
        if text.len() > 1 << 20 {
            // Thousands of endpoints render to tens of megabytes; give the pages back once
            // the answer is on its way rather than keep them as the process's high-water mark.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                // SAFETY: plain glibc call.
                unsafe { libc::malloc_trim(0) };
            });
        }
        let body = Arc::new(Body(text));
        cache.alive.push(Arc::downgrade(&body));
        cache.newest[slot] = Some(Cached {
            generation,
            body: body.clone(),
        });
        Ok((format, body))
    }

    /// Answers one scrape.
    pub async fn answer(&self, accept: Option<&str>) -> axum::response::Response {
        use axum::{http::StatusCode, response::IntoResponse as _};
        let format = Format::from_accept(accept);
        let guards = self.shared.read().guards.clone();
        let (format, body) = match self.body(format).await {
            Ok(b) => b,
            Err(_) => {
                return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response();
            }
        };
        let body = Bytes::from_owner(Share(body));
        let len = body.len();
        let deadline = tokio::time::Instant::now() + self.send_deadline;
        // The exposition stays alive until its last chunk is taken (or the connection drops).
        let chunks = futures_util::stream::unfold((body, 0usize), move |(body, at)| {
            let guards = guards.clone();
            async move {
                if at >= body.len() {
                    return None;
                }
                if tokio::time::Instant::now() > deadline {
                    Guards::inc(&guards.scrape_send_timeout);
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the scraper did not read the answer within the send deadline",
                    );
                    return Some((Err(e), (Bytes::new(), 0)));
                }
                let end = (at + CHUNK).min(body.len());
                let chunk = body.slice(at..end);
                // The last chunk releases the whole exposition once sent.
                let rest = if end >= body.len() {
                    Bytes::new()
                } else {
                    body
                };
                Some((Ok(chunk), (rest, if end >= len { 0 } else { end })))
            }
        });
        (
            StatusCode::OK,
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    format.content_type().to_string(),
                ),
                (axum::http::header::CONTENT_LENGTH, len.to_string()),
            ],
            axum::body::Body::from_stream(chunks),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{daemon::state::State, ebpf::Options};

    fn exposition(max_alive: usize) -> (Shared, Exposition) {
        let shared = Shared::new(State::new(
            "node-1".into(),
            Duration::from_secs(1),
            4,
            Options::default(),
        ));
        let e = Exposition::new(shared.clone(), max_alive, Duration::from_secs(1));
        (shared, e)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn every_scraper_gets_the_format_it_asked_for_even_when_slow_readers_hold_others() {
        rt().block_on(async {
            let (shared, e) = exposition(1);
            // A slow protobuf reader holds the only exposition allowed.
            let (f, held) = e.body(Format::Protobuf).await.unwrap();
            assert_eq!(f, Format::Protobuf);
            shared.write().generation += 1;
            let (f, text) = e.body(Format::Prometheus).await.unwrap();
            assert_eq!(f, Format::Prometheus);
            assert!(std::str::from_utf8(&text.0).unwrap().contains("# TYPE"));
            // Same poll, same format: the same bytes, both formats cached side by side.
            let (_, again) = e.body(Format::Prometheus).await.unwrap();
            assert!(Arc::ptr_eq(&text, &again));
            // At the bound, a protobuf scraper gets the protobuf exposition still being read
            // (a poll old), never the text one.
            let (f, proto) = e.body(Format::Protobuf).await.unwrap();
            assert_eq!(f, Format::Protobuf);
            assert!(Arc::ptr_eq(&proto, &held));
            let g = shared.read().guards.clone();
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!((load(&g.scrape_encoded), load(&g.scrape_stale)), (2, 1));
            // Once read, the next poll is encoded anew.
            drop((held, proto, again));
            shared.write().generation += 1;
            let (_, fresh) = e.body(Format::Protobuf).await.unwrap();
            assert!(!fresh.0.is_empty());
            assert_eq!(load(&g.scrape_encoded), 3);
        });
    }

    #[test]
    fn accept_picks_the_best_supported_format() {
        // What Prometheus sends with native histograms enabled, and without.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        let plain = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(native)), Format::Protobuf);
        assert_eq!(Format::from_accept(Some(plain)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("image/png")), Format::Prometheus);
        // Protobuf only when it is the delimited MetricFamily stream.
        assert_eq!(
            Format::from_accept(Some("application/vnd.google.protobuf;q=1,text/plain;q=0.1")),
            Format::Prometheus
        );
        // Not a quality: ignored.
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;q=inf,text/plain;q=0.5")),
            Format::Prometheus
        );
        // Quality decides, not the order.
        assert_eq!(
            Format::from_accept(Some(
                "text/plain;q=0.2, application/vnd.google.protobuf; proto=\"io.prometheus.client.MetricFamily\"; encoding=delimited; q=0.9"
            )),
            Format::Protobuf
        );
    }
}
