//! gRPC echo service of Kite's kernel tests on tonic (hyper's HTTP/2 and HPACK).
//!
//! ```text
//! kite-grpc-echo server PORT
//! kite-grpc-echo client TARGET CALLS CONCURRENCY SPEC [churn]
//! ```
//!
//! Same service, messages and command line as `servers/grpc_echo.py` (read its docstring):
//! raw-bytes messages `"DELAY_MS CODE N"` to `kite.test.Echo/{Unary,Lookup,Stream}`, so a test
//! can pair any of the three stacks' clients with any server.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use tonic::{
    Code, Request, Response, Status,
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http,
    server::NamedService,
};

const SERVICE: &str = "kite.test.Echo";

/// Message bytes as they are: no protobuf, no generated code.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `"DELAY_MS CODE N"`.
fn parse(req: &[u8]) -> Result<(Duration, i32, usize), Status> {
    let text = std::str::from_utf8(req).map_err(|_| Status::invalid_argument("not UTF-8"))?;
    let mut f = text.split_whitespace();
    let bad = || Status::invalid_argument(format!("bad request {text:?}"));
    let ms: f64 = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let code: i32 = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let n: usize = f
        .next()
        .map_or(Some(1), |v| v.parse().ok())
        .ok_or_else(bad)?;
    Ok((Duration::from_secs_f64(ms / 1e3), code, n))
}

fn status(code: i32) -> Status {
    Status::new(Code::from_i32(code), format!("kite test status {code}"))
}

/// `x-kite-call` sent back as `x-kite-echo` (see `churn` in grpc_echo.py).
fn echo<T>(req: &Request<Bytes>, mut resp: Response<T>) -> Response<T> {
    if let Some(v) = req.metadata().get("x-kite-call") {
        resp.metadata_mut().insert("x-kite-echo", v.clone());
    }
    resp
}

fn echo_status<T>(req: &Request<Bytes>, mut s: Status) -> Result<Response<T>, Status> {
    if let Some(v) = req.metadata().get("x-kite-call") {
        s.metadata_mut().insert("x-kite-echo", v.clone());
    }
    Err(s)
}

async fn unary(req: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    let (delay, code, _) = parse(req.get_ref())?;
    tokio::time::sleep(delay).await;
    if code != 0 {
        return echo_status(&req, status(code));
    }
    let body = req.get_ref().clone();
    Ok(echo(&req, Response::new(body)))
}

type Messages = Pin<Box<dyn tokio_stream::Stream<Item = Result<Bytes, Status>> + Send>>;

async fn stream(req: Request<Bytes>) -> Result<Response<Messages>, Status> {
    let (delay, code, n) = parse(req.get_ref())?;
    tokio::time::sleep(delay).await;
    let mut items: Vec<Result<Bytes, Status>> = (0..n)
        .map(|i| Ok(Bytes::from(format!("message {i}"))))
        .collect();
    if code != 0 {
        items.push(Err(status(code)));
    }
    let messages: Messages = Box::pin(tokio_stream::iter(items));
    Ok(echo(&req, Response::new(messages)))
}

#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw);
            let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
            Ok(match method.as_str() {
                "Unary" | "Lookup" => grpc.unary(tower::service_fn(unary), req).await,
                "Stream" => grpc.server_streaming(tower::service_fn(stream), req).await,
                _ => Status::unimplemented(method).into_http(),
            })
        })
    }
}

async fn server(port: u16) -> Result<(), String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    tonic::transport::Server::builder()
        .add_service(Echo)
        .serve(addr)
        .await
        .map_err(|e| e.to_string())
}

async fn client(
    target: &str,
    calls: usize,
    concurrency: usize,
    spec: &str,
    churn: bool,
) -> Result<(), String> {
    let plan: Vec<(String, String)> = spec
        .split(',')
        .map(|item| {
            let f: Vec<&str> = item.split(':').collect();
            let n = f.get(3).copied().unwrap_or("1");
            (f[0].to_owned(), format!("{} {} {n}", f[1], f[2]))
        })
        .collect();
    if plan.iter().any(|(m, _)| m.is_empty()) {
        return Err(format!("bad SPEC {spec:?}"));
    }
    // One channel: one HTTP/2 connection, calls multiplexed on it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let plan = Arc::new(plan);
    let next = Arc::new(Mutex::new(0usize));
    let out = Arc::new(Mutex::new(vec![serde_json::Value::Null; calls]));
    let echoed = Arc::new(Mutex::new(0usize));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (plan, next, out, echoed) = (plan.clone(), next.clone(), out.clone(), echoed.clone());
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    let i = *n;
                    *n += 1;
                    i
                };
                if i >= calls {
                    return;
                }
                let (method, req) = &plan[i % plan.len()];
                let path: http::uri::PathAndQuery = format!("/{SERVICE}/{method}").parse().unwrap();
                let id = churn.then(|| format!("{i:08}-{:048x}", rand_u128()));
                let request = || {
                    let mut r = Request::new(Bytes::from(req.clone()));
                    if let Some(id) = &id {
                        r.metadata_mut()
                            .insert("x-kite-call", id.parse().expect("ASCII metadata"));
                    }
                    r
                };
                let t0 = Instant::now();
                let mut first = None;
                // The server's `x-kite-echo`, from headers, trailers or a status.
                let mut back: Vec<tonic::metadata::MetadataMap> = Vec::new();
                let code = match grpc.ready().await {
                    Err(_) => Code::Unavailable,
                    Ok(()) if method == "Stream" => {
                        match grpc.server_streaming(request(), path, Raw).await {
                            Err(s) => {
                                back.push(s.metadata().clone());
                                s.code()
                            }
                            Ok(r) => {
                                back.push(r.metadata().clone());
                                let mut s = r.into_inner();
                                let code = loop {
                                    match s.message().await {
                                        Ok(Some(_)) => {
                                            first.get_or_insert_with(Instant::now);
                                        }
                                        Ok(None) => break Code::Ok,
                                        Err(st) => {
                                            back.push(st.metadata().clone());
                                            break st.code();
                                        }
                                    }
                                };
                                if let Ok(Some(t)) = s.trailers().await {
                                    back.push(t);
                                }
                                code
                            }
                        }
                    }
                    Ok(()) => match grpc.unary(request(), path, Raw).await {
                        Ok(r) => {
                            back.push(r.metadata().clone());
                            Code::Ok
                        }
                        Err(s) => {
                            back.push(s.metadata().clone());
                            s.code()
                        }
                    },
                };
                if let Some(id) = &id
                    && back.iter().any(|m| {
                        m.get("x-kite-echo")
                            .is_some_and(|v| v.to_str().is_ok_and(|v| v == id))
                    })
                {
                    *echoed.lock().unwrap() += 1;
                }
                let t1 = Instant::now();
                let ms = |t: Instant| (t - t0).as_secs_f64() * 1e3;
                out.lock().unwrap()[i] =
                    serde_json::json!([method, code as i32, ms(first.unwrap_or(t1)), ms(t1)]);
            }
        }));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())?;
    }
    let calls = std::mem::take(&mut *out.lock().unwrap());
    let echoed = *echoed.lock().unwrap();
    println!(
        "{}",
        serde_json::json!({ "calls": calls, "echoed": echoed })
    );
    Ok(())
}

/// 128 random bits from the OS (printed zero-padded to the other stacks' 48 hex digits).
fn rand_u128() -> u128 {
    use std::io::Read;
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u128::from_ne_bytes(b)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = match a.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["server", port] => match port.parse() {
            Ok(p) => rt.block_on(server(p)),
            Err(_) => Err(format!("bad PORT {port:?}")),
        },
        ["client", target, calls, conc, spec, ref churn @ ..] if churn.len() <= 1 => {
            match (calls.parse(), conc.parse(), churn) {
                (Ok(c), Ok(n), [] | ["churn"]) if n > 0 => {
                    rt.block_on(client(target, c, n, spec, !churn.is_empty()))
                }
                _ => Err(
                    "CALLS and CONCURRENCY are positive integers, then `churn` or nothing".into(),
                ),
            }
        }
        _ => Err(
            "usage: kite-grpc-echo server PORT | client TARGET CALLS CONCURRENCY SPEC [churn]"
                .into(),
        ),
    };
    if let Err(e) = r {
        eprintln!("kite-grpc-echo: {e}");
        std::process::exit(2);
    }
}
