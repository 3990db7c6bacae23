//! Real upstream servers for tests, on `127.0.0.1:0`.
//!
//! [`TestUpstream`] is a hyper HTTP/1 server. What it does depends on the
//! last path segment:
//! - `…/stream?bytes=N`: N bytes of [`pattern`], chunked, in 64 KiB pieces;
//! - `…/upload`: reads the body and answers `{"len":…,"sha256":"…"}`;
//! - `…/slow?ms=N`: answers `slow` after N ms;
//! - `…/status?code=N`: answers with that status;
//! - `…/ws`: WebSocket echo;
//! - anything else: the request as JSON, `{"method","uri","version","headers":[[name,value],…]}`.
//!
//! Every response carries `x-upstream: <name>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Byte `i` of every streamed or uploaded test body.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// `len` bytes of the pattern starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(offset + i)).collect()
}

/// Hex SHA-256 of `total` pattern bytes.
pub fn pattern_sha256(total: u64) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let chunk = pattern(0, 251 * 1024);
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        ctx.update(&chunk[..n]);
        left -= n as u64;
    }
    hex(ctx.finish().as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct TestUpstream {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Requests served so far.
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        Self::start_named("upstream").await
    }

    pub async fn start_named(name: &str) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let name = HeaderValue::from_str(name).unwrap();
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let name = name.clone();
                        async move {
                            let mut res = handle(req).await;
                            res.headers_mut().insert("x-upstream", name);
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestUpstream {
            addr,
            url: format!("http://{addr}"),
            requests,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

fn query(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut res = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *res.status_mut() = status;
    res
}

async fn handle(req: Request<Incoming>) -> Response<BoxBody> {
    let last = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    match last.as_str() {
        "stream" => {
            let total = query(&req, "bytes").unwrap_or(0);
            let chunk = Bytes::from(pattern(0, 251 * 256)); // a multiple of 251: every chunk starts the pattern over
            let stream = futures_util::stream::unfold(0u64, move |sent| {
                let chunk = chunk.clone();
                async move {
                    if sent >= total {
                        return None;
                    }
                    let n = (total - sent).min(chunk.len() as u64) as usize;
                    Some((
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                            chunk.slice(..n),
                        )),
                        sent + n as u64,
                    ))
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        "upload" => {
            let mut body = req.into_body();
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            let mut len = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            len += d.len() as u64;
                            ctx.update(d);
                        }
                    }
                    Err(_) => return full(StatusCode::BAD_REQUEST, "body error"),
                }
            }
            let json = serde_json::json!({ "len": len, "sha256": hex(ctx.finish().as_ref()) });
            full(StatusCode::OK, json.to_string())
        }
        "slow" => {
            let ms = query(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, "slow")
        }
        "status" => {
            let code = query(&req, "code").unwrap_or(200) as u16;
            full(
                StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
                "status",
            )
        }
        "ws" => websocket(req),
        _ => {
            let wants_cookie = req
                .uri()
                .query()
                .is_some_and(|q| q.contains("set_cookie=1"));
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let json = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            let mut res = full(StatusCode::OK, json.to_string());
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // Hop-by-hop headers the gateway must not pass back to the client.
            res.headers_mut()
                .insert("connection", HeaderValue::from_static("x-upstream-private"));
            res.headers_mut()
                .insert("x-upstream-private", HeaderValue::from_static("1"));
            res.headers_mut()
                .insert("keep-alive", HeaderValue::from_static("timeout=5"));
            res.headers_mut()
                .insert("proxy-authenticate", HeaderValue::from_static("Basic"));
            // The application's own cookie, which the gateway must pass on.
            if wants_cookie {
                res.headers_mut().append(
                    header::SET_COOKIE,
                    HeaderValue::from_static("app_pref=1; Path=/"),
                );
            }
            res
        }
    }
}

fn websocket(mut req: Request<Incoming>) -> Response<BoxBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return full(StatusCode::BAD_REQUEST, "not a websocket request");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut res = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    res.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    res.headers_mut().insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).unwrap(),
    );
    res
}

/// A server that reads a request head and resets the connection (RST)
/// without answering.
pub struct ResettingUpstream {
    pub addr: SocketAddr,
    pub url: String,
    task: JoinHandle<()>,
}

impl Drop for ResettingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResettingUpstream {
    pub async fn start() -> ResettingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.set_zero_linger();
                    drop(stream);
                });
            }
        });
        ResettingUpstream {
            addr,
            url: format!("http://{addr}"),
            task,
        }
    }
}

/// An address on which nothing listens (connections are refused).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// The bytes of each connection a [`RecordingUpstream`] accepted.
type Recorded = Arc<std::sync::Mutex<Vec<Arc<std::sync::Mutex<Vec<u8>>>>>>;

/// A raw TCP upstream that keeps the exact bytes of every connection. It
/// answers each request head (and its Content-Length or chunked body) with
/// `200` and `Connection: close`, then keeps reading until the gateway
/// closes, so whatever else the gateway sends on that connection is kept
/// too. An upgrade request is answered `101` with its own `Upgrade` value,
/// and the connection then echoes what it reads; a path holding
/// `force101` is answered `101` with `Upgrade: h2c` whatever was asked.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub url: String,
    connections: Recorded,
    task: JoinHandle<()>,
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingUpstream {
    pub async fn start() -> RecordingUpstream {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Recorded::default();
        let all = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
                all.lock().unwrap().push(kept.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut seen = Vec::new();
                    let mut answered = false;
                    let mut tunnel = false;
                    loop {
                        let read =
                            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                                .await;
                        let n = match read {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => return,
                        };
                        kept.lock().unwrap().extend_from_slice(&buf[..n]);
                        if tunnel {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if answered {
                            continue;
                        }
                        let Some(answer) = recorded_answer(&seen) else {
                            continue;
                        };
                        answered = true;
                        tunnel = answer.starts_with(b"HTTP/1.1 101");
                        if stream.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RecordingUpstream {
            addr,
            url: format!("http://{addr}"),
            connections,
            task,
        }
    }

    /// The bytes of every connection so far, in the order they were accepted.
    pub fn connections(&self) -> Vec<Vec<u8>> {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// Everything received, on every connection, as text.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.connections().concat()).into_owned()
    }

    /// How many request lines were received, on every connection.
    pub fn request_count(&self) -> usize {
        self.received().matches(" HTTP/1.1\r\n").count()
    }

    /// The only request received: its head (request line and fields, lower
    /// case names) and what followed it. Panics unless exactly one request
    /// came, on one connection.
    pub fn only_request(&self) -> RecordedRequest {
        let conns = self.connections();
        assert_eq!(conns.len(), 1, "connections: {:?}", self.received());
        assert_eq!(self.request_count(), 1, "requests: {:?}", self.received());
        let bytes = &conns[0];
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a whole request head");
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap().to_owned();
        let fields = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        RecordedRequest {
            line,
            fields,
            rest: bytes[end + 4..].to_vec(),
        }
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        self.connections.lock().unwrap().clear();
    }
}

/// One request as a [`RecordingUpstream`] received it.
#[derive(Debug)]
pub struct RecordedRequest {
    /// `GET /path HTTP/1.1`
    pub line: String,
    /// Names in lower case, in order.
    pub fields: Vec<(String, String)>,
    /// The bytes after the head (the body).
    pub rest: Vec<u8>,
}

impl RecordedRequest {
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    /// Whether some field name, with `_` read as `-`, is `name`.
    pub fn has_like(&self, name: &str) -> bool {
        self.fields.iter().any(|(k, _)| k.replace('_', "-") == name)
    }
}

/// The answer to a request whose bytes so far are `seen`, once its head and
/// body are complete.
fn recorded_answer(seen: &[u8]) -> Option<Vec<u8>> {
    let end = seen.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
    let body = &seen[end + 4..];
    let field = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    if let Some(len) = field("content-length").and_then(|l| l.parse::<usize>().ok()) {
        if body.len() < len {
            return None;
        }
    } else if field("transfer-encoding").is_some() && !body.ends_with(b"0\r\n\r\n") {
        return None;
    }
    let line = head.split("\r\n").next().unwrap_or("");
    if line.contains("force101") {
        return Some(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec(),
        );
    }
    if let Some(protocol) = field("upgrade") {
        return Some(
            format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n")
                .into_bytes(),
        );
    }
    Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec())
}
