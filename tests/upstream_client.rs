//! The gateway's HTTP/1.1 client towards upstreams, against raw-TCP
//! upstreams that answer exactly the bytes a test scripts: connection reuse,
//! connections the upstream closes, response framings, interim responses,
//! malformed responses, and the framing of request bodies sent upstream.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::{one_route, raw, TestGateway};
use common::raw::{parse_raw, read_until_closed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted upstream does after answering a request.
#[derive(Clone, Copy, PartialEq)]
enum After {
    KeepOpen,
    Close,
}

/// An upstream on a raw socket: every request gets `answer(n)` (n counts
/// requests from 0), and the connection is kept or closed as it says. It
/// records each request (head and body, as received) and counts connections.
struct ScriptedUpstream {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ScriptedUpstream {
    async fn start(answer: fn(usize) -> (Vec<u8>, After)) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(serve(stream, reqs, answer));
            }
        });
        ScriptedUpstream {
            url,
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    reqs: Arc<Mutex<Vec<String>>>,
    answer: fn(usize) -> (Vec<u8>, After),
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let n = {
            let mut reqs = reqs.lock().unwrap();
            reqs.push(request);
            reqs.len() - 1
        };
        let (bytes, after) = answer(n);
        if stream.write_all(&bytes).await.is_err() || after == After::Close {
            return;
        }
    }
}

/// One request: the head, then a Content-Length or chunked body.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
            let body_end = if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
            {
                (buf.len() >= end + 4 + len).then_some(end + 4 + len)
            } else if head.contains("transfer-encoding: chunked") {
                buf[end + 4..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|p| end + 4 + p + 5)
            } else {
                Some(end + 4)
            };
            if let Some(body_end) = body_end {
                let request = String::from_utf8_lossy(&buf[..body_end]).into_owned();
                buf.drain(..body_end);
                return Some(request);
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let up = ScriptedUpstream::start(|n| (ok(&format!("r{n}")), After::KeepOpen)).await;
    let gw = TestGateway::start(one_route(&up.url));
    // Each worker thread (one per CPU) keeps its own pool: four times as
    // many requests as workers, one after another, need one connection each.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    for i in 0..4 * workers {
        let res = raw(gw.addr, &get("/a")).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.body, format!("r{i}").as_bytes());
    }
    assert!(up.connections() <= workers, "{}", up.connections());
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_reused() {
    // Answers as if keeping the connection, then closes it: the next
    // request must go out on a fresh connection, not fail.
    let up = ScriptedUpstream::start(|n| (ok(&format!("r{n}")), After::Close)).await;
    let gw = TestGateway::start(one_route(&up.url));
    for i in 0..4 {
        let res = raw(gw.addr, &get("/a")).await;
        assert_eq!(res.status, 200, "request {i}");
        assert_eq!(res.body, format!("r{i}").as_bytes());
        // Let the close reach the gateway's idle connection.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.connections(), 4);

    // `Connection: close` from the upstream: not reused either.
    let up = ScriptedUpstream::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            After::Close,
        )
    })
    .await;
    let gw = TestGateway::start(one_route(&up.url));
    for _ in 0..3 {
        assert_eq!(raw(gw.addr, &get("/b")).await.status, 200);
    }
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn chunked_close_delimited_and_interim_responses() {
    let up = ScriptedUpstream::start(|n| match n {
        0 => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
                .to_vec(),
            After::KeepOpen,
        ),
        1 => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nmade"
                .to_vec(),
            After::KeepOpen,
        ),
        _ => (
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec(),
            After::Close,
        ),
    })
    .await;
    let gw = TestGateway::start(one_route(&up.url));
    let res = raw(gw.addr, &get("/chunked")).await;
    assert_eq!(res.status, 200);
    // Re-chunked to the client, the same bytes.
    assert_eq!(res.header("transfer-encoding"), Some("chunked"));
    assert!(String::from_utf8_lossy(&res.body).contains("hello"));
    assert!(String::from_utf8_lossy(&res.body).contains(" world"));

    let res = raw(gw.addr, &get("/interim")).await;
    assert_eq!(res.status, 201);
    assert_eq!(res.body, b"made");

    // HTTP/1.0 client: no chunking, the body ends with the connection.
    let res = raw(gw.addr, b"GET /close HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, b"until the end");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn malformed_upstream_responses_are_502() {
    let up = ScriptedUpstream::start(|n| match n {
        0 => (b"HTTP/1.1 2x0 Nope\r\n\r\n".to_vec(), After::Close),
        1 => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            After::Close,
        ),
        2 => (b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(), After::Close),
        _ => (ok("fine"), After::KeepOpen),
    })
    .await;
    let gw = TestGateway::start(one_route(&up.url));
    for what in ["bad status", "conflicting lengths", "cut head"] {
        let res = raw(gw.addr, &get("/x")).await;
        assert_eq!(res.status, 502, "{what}");
        assert_eq!(res.json()["errors"], "Upstream unavailable", "{what}");
    }
    assert_eq!(raw(gw.addr, &get("/x")).await.body, b"fine");
}

#[tokio::test]
async fn request_bodies_are_framed_for_the_upstream() {
    let up = ScriptedUpstream::start(|_| (ok("ok"), After::KeepOpen)).await;
    let gw = TestGateway::start(one_route(&up.url));
    // Known length: Content-Length; the client's chunked body: chunked.
    let res = raw(
        gw.addr,
        b"POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(res.status, 200);
    let res = raw(
        gw.addr,
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    // No body on a POST: an explicit zero length.
    let res = raw(
        gw.addr,
        b"POST /empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);

    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    let lower: Vec<String> = reqs.iter().map(|r| r.to_ascii_lowercase()).collect();
    assert!(
        lower[0].starts_with("post /len http/1.1\r\n"),
        "{}",
        reqs[0]
    );
    assert!(lower[0].contains("content-length: 5\r\n"));
    assert!(lower[0].ends_with("\r\n\r\nhello"));
    assert!(
        lower[1].contains("transfer-encoding: chunked\r\n"),
        "{}",
        reqs[1]
    );
    assert!(!lower[1].contains("content-length"));
    assert!(lower[1].ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
    assert!(lower[2].contains("content-length: 0\r\n"), "{}", reqs[2]);
    // Hop-by-hop headers of the client never go upstream.
    for r in &lower {
        assert!(!r.contains("connection: close"), "{r}");
    }
}

/// An upstream response head with mixed-case names, repeated fields, a
/// request id, a Date and a hop-by-hop field.
const PLAIN_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
    X-Request-Id: from-upstream\r\nSet-Cookie: a=1\r\nKeep-Alive: timeout=5\r\n\
    Date: Tue, 01 Jan 2030 00:00:00 GMT\r\nX-Mixed-Case: Kept As Sent\r\n\
    Set-Cookie: b=2\r\nContent-Length: 5\r\n\r\n";

#[tokio::test]
async fn upstream_response_fields_reach_the_client_as_sent() {
    let up = ScriptedUpstream::start(|n| match n {
        // A HEAD answer: the length of what a GET would send, no body.
        1 => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: \"v1\"\r\n\r\n".to_vec(),
            After::KeepOpen,
        ),
        // Chunked with a stray Content-Length: the length is not forwarded.
        2 => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\
              X-After: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                .to_vec(),
            After::Close,
        ),
        _ => (format!("{PLAIN_HEAD}hello").into_bytes(), After::KeepOpen),
    })
    .await;
    let gw = TestGateway::start(one_route(&up.url));

    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(&get("/plain")).await.unwrap();
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the gateway closes the connection");
    let text = String::from_utf8_lossy(&bytes);
    // Names keep the case they were sent in, values their bytes, and fields
    // their order.
    let order: Vec<usize> = [
        "\r\nContent-Type: text/plain\r\n",
        "\r\nSet-Cookie: a=1\r\n",
        "\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n",
        "\r\nX-Mixed-Case: Kept As Sent\r\n",
        "\r\nSet-Cookie: b=2\r\n",
    ]
    .iter()
    .map(|line| {
        text.find(line)
            .unwrap_or_else(|| panic!("{line:?} missing from {text}"))
    })
    .collect();
    assert!(order.is_sorted(), "{text}");
    let res = parse_raw(&bytes);
    assert_eq!(res.status, 200);
    assert_eq!(res.body, b"hello");
    let all = |name: &str| -> Vec<&str> {
        res.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(all("date").len(), 1, "{text}");
    assert_eq!(all("content-length"), ["5"]);
    assert_eq!(all("keep-alive"), Vec::<&str>::new(), "hop-by-hop: {text}");
    let ids = all("x-request-id");
    assert_eq!(ids.len(), 1, "{text}");
    assert_ne!(ids[0], "from-upstream", "the gateway's own id answers");

    let res = raw(
        gw.addr,
        b"HEAD /head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-length"), Some("1234"));
    assert_eq!(res.header("etag"), Some("\"v1\""));

    let res = raw(gw.addr, &get("/chunked")).await;
    assert_eq!(res.header("content-length"), None, "{:?}", res.headers);
    assert_eq!(res.header("transfer-encoding"), Some("chunked"));
    assert_eq!(res.header("x-after"), Some("1"));

    // Over HTTP/2 the same fields arrive, in a header map.
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://x:{}/h2", gw.addr.port()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(h["x-mixed-case"], "Kept As Sent");
    assert_eq!(h["date"], "Tue, 01 Jan 2030 00:00:00 GMT");
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    let ids: Vec<_> = h.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], "from-upstream");
    assert!(!h.contains_key("keep-alive"));
}
