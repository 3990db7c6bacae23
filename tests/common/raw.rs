//! The one reader of raw HTTP/1 responses for tests that speak plain TCP to a
//! server: [`RawConn::read_message`] reads one whole response as it is framed
//! (no body, Content-Length, chunked, or until the connection closes) and
//! leaves what follows it; [`read_until_closed`] reads everything until the
//! peer closes; [`parse_raw`] parses bytes already read.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a read waits for the server before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A response as it came: status, fields (lower-case names, trimmed values)
/// and body.
#[derive(Debug)]
pub struct RawResponse {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// What reading one response came to.
#[derive(Debug)]
pub enum Read {
    /// A whole response.
    Message(RawResponse),
    /// The peer closed (or reset) the connection before a whole response
    /// came; what had come, possibly not HTTP at all.
    Closed(Vec<u8>),
}

/// A raw connection that reads one response at a time, keeping the bytes
/// that follow a response for the next read.
pub struct RawConn<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl RawConn<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> RawConn<TcpStream> {
        RawConn::new(TcpStream::connect(addr).await.unwrap())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    pub fn new(stream: S) -> RawConn<S> {
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; false when the peer closed or reset the connection.
    /// `None` when `deadline` passed first.
    async fn fill_by(&mut self, deadline: Instant) -> Option<bool> {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(true)
            }
            Err(_) => None,
        }
    }

    async fn fill(&mut self) -> bool {
        self.fill_by(Instant::now() + READ_TIMEOUT)
            .await
            .expect("an answer in time")
    }

    /// Reads one whole response (none of a body for HEAD and 1xx/204/304;
    /// Content-Length; chunked; otherwise until the connection closes) and
    /// leaves what follows it. Fails the test when the connection closes
    /// first or nothing comes in time.
    pub async fn read_message(&mut self, head_request: bool) -> RawResponse {
        match self
            .read_message_by(head_request, Instant::now() + READ_TIMEOUT)
            .await
            .expect("a whole answer in time")
        {
            Read::Message(res) => res,
            Read::Closed(bytes) => panic!(
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }

    /// [`read_message`](Self::read_message), told apart from a connection
    /// that closes first; `None` when `deadline` passes first.
    pub async fn read_message_by(&mut self, head_request: bool, deadline: Instant) -> Option<Read> {
        macro_rules! fill {
            () => {
                match self.fill_by(deadline).await? {
                    true => {}
                    false => return Some(Read::Closed(std::mem::take(&mut self.buf))),
                }
            };
        }
        let end = loop {
            // Only a status line starts a response; anything else is read
            // until the connection closes.
            if self.buf.starts_with(b"HTTP/") {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
            }
            fill!();
        };
        let mut res = parse_head(&self.buf[..end]);
        let no_body = head_request || matches!(res.status, 100..=199 | 204 | 304);
        let chunked = res.header("transfer-encoding") == Some("chunked");
        let length = res
            .header("content-length")
            .map(|v| v.parse::<usize>().unwrap());
        if no_body {
            self.buf.drain(..end);
            return Some(Read::Message(res));
        }
        if let Some(len) = length {
            while self.buf.len() < end + len {
                fill!();
            }
            res.body = self.buf[end..end + len].to_vec();
            self.buf.drain(..end + len);
        } else if chunked {
            let mut body = Vec::new();
            let mut at = end;
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf[at..].windows(2).position(|w| w == b"\r\n") {
                        break at + i;
                    }
                    fill!();
                };
                let size = std::str::from_utf8(&self.buf[at..line_end]).unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                if size == 0 {
                    // Trailer fields, then the empty line.
                    let trailers_end = loop {
                        if let Some(i) = self.buf[line_end..]
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                        {
                            break line_end + i + 4;
                        }
                        fill!();
                    };
                    self.buf.drain(..trailers_end);
                    break;
                }
                while self.buf.len() < line_end + 2 + size + 2 {
                    fill!();
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                at = line_end + 2 + size + 2;
            }
            res.body = body;
        } else {
            // Delimited by the end of the connection.
            while self.fill_by(deadline).await? {}
            res.body = self.buf.split_off(end);
            self.buf.clear();
        }
        Some(Read::Message(res))
    }

    /// Exactly `n` bytes that follow what was read (a tunnel's, say).
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "closed after {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// True when the server closed the connection (after what was read).
    pub async fn closed(&mut self) -> bool {
        self.buf.clear();
        !self.fill().await
    }
}

/// Reads until the peer closes the connection (or resets it) or `limit`
/// passes; returns what was read and whether the peer closed.
pub async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    limit: Duration,
) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (buf, false),
        }
    }
}

/// The status line and fields of a response head (the bytes up to and
/// including its empty line).
fn parse_head(head: &[u8]) -> RawResponse {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next().unwrap().split(' ');
    let version = status_line.next().unwrap().to_owned();
    let status = status_line
        .next()
        .unwrap_or_else(|| panic!("no status in {head:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("no status in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawResponse {
        version,
        status,
        headers,
        body: Vec::new(),
    }
}

/// A response read whole (until the connection closed): its head, and the
/// bytes after it as they came, cut to Content-Length when there is one
/// (a chunked body keeps its chunk framing).
pub fn parse_raw(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let mut res = parse_head(&buf[..end + 4]);
    let mut body = buf[end + 4..].to_vec();
    if let Some(len) = res
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    res.body = body;
    res
}

/// Sends `GET path` on a kept-alive raw connection and reads its response;
/// returns the status.
pub async fn keep_alive_get(stream: &mut TcpStream, path: &str) -> u16 {
    let mut conn = RawConn::new(stream);
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    conn.read_message(false).await.status
}
