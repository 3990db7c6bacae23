//! The HTTP/1 connection loop over in-memory IO: keep-alive, pipelining,
//! unread bodies, malformed heads, `Connection: close` and the idle timeout,
//! against a real `App` (memory store, ephemeral keys, one route). Requests
//! to paths no route serves are answered 404 by the gateway itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::serve;
use crate::app::App;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::Shared;

const WAIT: Duration = Duration::from_secs(10);

async fn shared(idle_timeout: Duration) -> Arc<Shared> {
    let mut config = Config::parse(
        r#"
[cookies]
refresh_path = "/app"
[[routes]]
path_prefix = "/app"
upstream = "http://127.0.0.1:9"
"#,
        "test",
    )
    .unwrap();
    config.server.idle_timeout = idle_timeout;
    config.server.header_read_timeout = Duration::from_secs(2);
    // So that a test's `X-Request-Id` comes back and tells answers apart.
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let app = App::build(config, Arc::new(Metrics::new())).await.unwrap();
    Arc::new(Shared::new(app).unwrap())
}

/// A client end, and the connection task serving the other.
struct Conn {
    client: DuplexStream,
    buf: Vec<u8>,
    task: JoinHandle<()>,
}

async fn connect(idle_timeout: Duration) -> Conn {
    let (client, server) = tokio::io::duplex(1 << 21);
    let (read, write) = tokio::io::split(server);
    let shared = shared(idle_timeout).await;
    let task = tokio::spawn(serve(
        shared,
        Box::new(read),
        Box::new(write),
        "127.0.0.1:40000".parse().unwrap(),
        false,
        None,
    ));
    Conn {
        client,
        buf: Vec::new(),
        task,
    }
}

struct Answer {
    status: u16,
    /// The head, lower-cased.
    head: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n == name).then(|| v.trim())
        })
    }
}

impl Conn {
    async fn send(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).await.unwrap();
    }

    /// The next response (with a `Content-Length` body, as the gateway's
    /// own answers have).
    async fn answer(&mut self) -> Answer {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec())
                    .unwrap()
                    .to_ascii_lowercase();
                let status = head[9..12].parse().unwrap();
                let answer = Answer { status, head };
                let len: usize = answer
                    .header("content-length")
                    .map_or(0, |v| v.parse().unwrap());
                if self.buf.len() >= end + 4 + len {
                    self.buf.drain(..end + 4 + len);
                    return answer;
                }
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(WAIT, self.client.read(&mut chunk))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(n > 0, "connection closed before a whole answer");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The connection task ends (the server closed the connection).
    async fn closed(self) {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the connection closes")
            .unwrap();
    }

    /// The connection task is still serving.
    async fn still_open(&self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!self.task.is_finished(), "the connection closed");
    }
}

fn get(path: &str, request_id: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nX-Request-Id: {request_id}\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn keep_alive_serves_two_requests_on_one_connection() {
    let mut conn = connect(Duration::from_secs(30)).await;
    conn.send(&get("/one", "a")).await;
    let first = conn.answer().await;
    assert_eq!(first.status, 404);
    assert_eq!(first.header("x-request-id"), Some("a"));
    conn.still_open().await;
    conn.send(&get("/two", "b")).await;
    let second = conn.answer().await;
    assert_eq!(second.status, 404);
    assert_eq!(second.header("x-request-id"), Some("b"));
    conn.still_open().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mut conn = connect(Duration::from_secs(30)).await;
    let mut both = get("/one", "first");
    both.extend(get("/two", "second"));
    both.extend(get("/three", "third"));
    conn.send(&both).await;
    for id in ["first", "second", "third"] {
        assert_eq!(conn.answer().await.header("x-request-id"), Some(id));
    }
    conn.still_open().await;
}

#[tokio::test]
async fn a_small_unread_body_is_drained_and_the_connection_kept() {
    let mut conn = connect(Duration::from_secs(30)).await;
    conn.send(b"POST /nothing HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n0123456789")
        .await;
    let answer = conn.answer().await;
    assert_eq!(answer.status, 404);
    assert_ne!(answer.header("connection"), Some("close"));
    conn.send(&get("/next", "next")).await;
    assert_eq!(conn.answer().await.header("x-request-id"), Some("next"));
    conn.still_open().await;
}

#[tokio::test]
async fn a_large_unread_body_closes_the_connection() {
    let mut conn = connect(Duration::from_secs(30)).await;
    conn.send(b"POST /nothing HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n")
        .await;
    conn.send(&vec![b'x'; 100_000]).await;
    let answer = conn.answer().await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.header("connection"), Some("close"));
    // The server reads away what is still coming until the client is done.
    conn.client.shutdown().await.unwrap();
    conn.closed().await;
}

#[tokio::test]
async fn a_malformed_head_is_answered_400_and_closes() {
    let mut conn = connect(Duration::from_secs(30)).await;
    conn.send(b"GET / HTTP/1.1\r\nHost: test\r\nNo colon here\r\n\r\n")
        .await;
    let answer = conn.answer().await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("connection"), Some("close"));
    conn.client.shutdown().await.unwrap();
    conn.closed().await;
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let mut conn = connect(Duration::from_secs(30)).await;
    conn.send(b"GET /once HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    let answer = conn.answer().await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.header("connection"), Some("close"));
    conn.closed().await;
}

#[tokio::test]
async fn an_idle_connection_times_out() {
    let mut conn = connect(Duration::from_millis(200)).await;
    conn.send(&get("/one", "a")).await;
    assert_eq!(conn.answer().await.status, 404);
    // Nothing more: the idle timeout closes it.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, conn.client.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(n, 0);
    conn.closed().await;
}
