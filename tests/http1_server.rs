//! The gateway's HTTP/1.1 server on the wire: pipelining, chunked request
//! bodies, bodies left unread, HEAD, HTTP/1.0 keep-alive, `Expect:
//! 100-continue`, refused framing, an upgrade whose first bytes arrive
//! with its request, and exchanges that leave nothing behind for the next.
//! Raw TCP clients against a real upstream.

mod common;

use common::gateway::{one_route, raw, RawResponse, TestGateway};
use common::raw::RawConn;
use common::upstream::TestUpstream;

#[tokio::test]
async fn pipelined_requests_answer_in_order() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(one_route(&upstream.url));
    let mut c = RawConn::connect(gw.addr).await;
    c.send(
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /status?code=404 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let first = c.read_message(false).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["uri"], "/first");
    assert_eq!(c.read_message(false).await.status, 404);
    let third = c.read_message(false).await;
    assert_eq!(third.json()["uri"], "/third");
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn chunked_request_body_reaches_the_upstream_whole() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(one_route(&upstream.url));
    let mut c = RawConn::connect(gw.addr).await;
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(b"5;ext=1\r\nhello\r\n");
    req.extend_from_slice(b"6\r\n world\r\n");
    req.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    // Byte by byte: the decoder must cope with any split.
    for b in req {
        c.send(&[b]).await;
    }
    let res = c.read_message(false).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["len"], 11);
    assert_eq!(
        res.json()["sha256"],
        "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    );
    // The connection goes on.
    c.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.read_message(false).await.json()["uri"], "/after");
}

#[tokio::test]
async fn a_small_unread_body_is_drained_and_the_connection_kept() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(one_route(&upstream.url));
    let mut c = RawConn::connect(gw.addr).await;
    // No Host: answered 400 by the gateway without reading the body.
    c.send(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789")
        .await;
    assert_eq!(c.read_message(false).await.status, 400);
    c.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let res = c.read_message(false).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["uri"], "/next");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn a_large_unread_body_closes_the_connection() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(one_route(&upstream.url));
    let mut c = RawConn::connect(gw.addr).await;
    c.send(b"POST /x HTTP/1.1\r\nContent-Length: 10000000\r\n\r\nstart")
        .await;
    let res = c.read_message(false).await;
    assert_eq!(res.status, 400);
    assert_eq!(res.header("connection"), Some("close"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn head_http10_and_expect_continue() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(one_route(&upstream.url));

    // HEAD: the length of the GET, no body, and the connection goes on.
    let mut c = RawConn::connect(gw.addr).await;
    c.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = c.read_message(true).await;
    assert_eq!(head.status, 200);
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    c.send(b"GET /g HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.read_message(false).await.json()["uri"], "/g");

    // HTTP/1.0 with keep-alive: answered in 1.0, kept open.
    let mut c = RawConn::connect(gw.addr).await;
    c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let res = c.read_message(false).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("connection"), Some("keep-alive"));
    c.send(b"GET /b HTTP/1.0\r\n\r\n").await;
    let res = c.read_message(false).await;
    assert_eq!(res.json()["uri"], "/b");
    assert_eq!(res.header("connection"), Some("close"));
    assert!(c.closed().await);

    // Expect: 100-continue: the interim answer, then the real one.
    let mut c = RawConn::connect(gw.addr).await;
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(c.read_message(false).await.status, 100);
    c.send(b"hello").await;
    let res = c.read_message(false).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["len"], 5);
}

#[tokio::test]
async fn ambiguous_framing_is_refused_before_the_upstream() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(one_route(&upstream.url));
    for req in [
        &b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let res = raw(gw.addr, req).await;
        assert_eq!(res.status, 400, "{:?}", String::from_utf8_lossy(req));
        assert_eq!(res.header("connection"), Some("close"));
        assert!(res.json()["errors"].is_string());
    }
    // A broken chunk: the upstream sees a failed body, the client no 5xx
    // from the framing, and the connection closes.
    let mut c = RawConn::connect(gw.addr).await;
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    let res = c.read_message(false).await;
    eprintln!(
        "broken chunk: {} {:?}",
        res.status,
        String::from_utf8_lossy(&res.body)
    );
    assert_eq!(res.status, 400);
    assert!(c.closed().await);
}

#[tokio::test]
async fn websocket_bytes_sent_with_the_upgrade_request_are_relayed() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(one_route(&upstream.url));
    let mut c = RawConn::connect(gw.addr).await;
    let mut req = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    // A masked text frame "hi", in the same write as the request.
    let mask = [1u8, 2, 3, 4];
    req.extend_from_slice(&[0x81, 0x82]);
    req.extend_from_slice(&mask);
    req.extend(b"hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    c.send(&req).await;
    let res = c.read_message(false).await;
    assert_eq!(res.status, 101);
    assert_eq!(
        res.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(c.read_exact(4).await, [0x81, 0x02, b'h', b'i']);
}

/// Header maps and write buffers are reused from one message to the next on
/// a thread: nothing of one exchange may show up in the next.
#[tokio::test]
async fn nothing_carries_over_between_exchanges_on_a_connection() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(one_route(&upstream.url));
    let mut c = RawConn::connect(gw.addr).await;
    let count =
        |res: &RawResponse, name: &str| res.headers.iter().filter(|(k, _)| k == name).count();
    let sent_to_upstream = |res: &RawResponse, name: &str| {
        res.json()["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == name)
            .count()
    };

    let mut ids = Vec::new();
    for round in 0..3 {
        c.send(b"GET /one?set_cookie=1 HTTP/1.1\r\nHost: x\r\nX-One: 1\r\nX-Extra: a\r\n\r\n")
            .await;
        let first = c.read_message(false).await;
        assert_eq!(first.status, 200);
        assert_eq!(sent_to_upstream(&first, "x-one"), 1, "round {round}");
        assert_eq!(count(&first, "set-cookie"), 1);

        c.send(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let second = c.read_message(false).await;
        assert_eq!(second.status, 200);
        assert_eq!(second.json()["uri"], "/two");
        assert_eq!(sent_to_upstream(&second, "x-one"), 0, "round {round}");
        assert_eq!(sent_to_upstream(&second, "x-extra"), 0);
        assert_eq!(sent_to_upstream(&second, "x-request-id"), 1);
        assert_eq!(count(&second, "set-cookie"), 0, "round {round}");
        for res in [&first, &second] {
            assert_eq!(count(res, "date"), 1);
            assert_eq!(count(res, "content-length"), 1);
            assert_eq!(count(res, "x-request-id"), 1);
            assert_eq!(
                res.header("content-length")
                    .unwrap()
                    .parse::<usize>()
                    .unwrap(),
                res.body.len()
            );
            ids.push(res.header("x-request-id").unwrap().to_owned());
        }
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "request ids repeat: {ids:?}");
}
