//! The trust boundary (README, The trust boundary) over real TCP: hostile ways
//! of writing a request, each checked against what a raw recording upstream
//! received (exact bytes) and what the client got, next to the benign
//! neighbours that must still pass unchanged.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::gateway::{raw, RawResponse, TestGateway};
use common::raw::RawConn;
use common::upstream::RecordingUpstream;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// `/pub` and `/` public (the catch-all preserves the client's `Host`),
/// `/secure` required, `/app` session, `/strip` stripped, and the host
/// `admin.example` required everywhere.
fn config(upstream: &str, server: &str) -> String {
    format!(
        r#"
[server]
upstream_timeout = "3s"
{server}
[cookies]
secure = false
refresh_path = "/"
[[clients]]
client_id = "web"
[[routes]]
path_prefix = "/"
upstream = "{upstream}"
preserve_host = true
[[routes]]
path_prefix = "/pub"
upstream = "{upstream}"
[[routes]]
path_prefix = "/secure"
upstream = "{upstream}"
auth = "required"
[[routes]]
path_prefix = "/app"
upstream = "{upstream}"
auth = "session"
[[routes]]
path_prefix = "/strip"
upstream = "{upstream}"
strip_prefix = true
[[routes]]
host = "admin.example"
path_prefix = "/"
upstream = "{upstream}"
auth = "required"
"#
    )
}

struct Setup {
    upstream: RecordingUpstream,
    gw: TestGateway,
}

async fn setup(server: &str) -> Setup {
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(config(&upstream.url, server));
    Setup { upstream, gw }
}

impl Setup {
    /// Sends one raw request (target, extra header lines, body) with
    /// `Host: gw` unless the extra lines set one, and `Connection: close`.
    async fn send(&self, method: &str, target: &str, extra: &str, body: &str) -> RawResponse {
        self.upstream.clear();
        let host = if extra.to_ascii_lowercase().contains("host:") {
            ""
        } else {
            "Host: gw\r\n"
        };
        let req =
            format!("{method} {target} HTTP/1.1\r\n{host}Connection: close\r\n{extra}\r\n{body}");
        let res = raw(self.gw.addr, req.as_bytes()).await;
        // Whatever reached the upstream has arrived by now.
        tokio::time::sleep(Duration::from_millis(50)).await;
        res
    }

    /// `target` is answered `status` with `message`, and nothing reaches
    /// the upstream.
    async fn refused(&self, method: &str, target: &str, extra: &str, status: u16, message: &str) {
        let res = self.send(method, target, extra, "").await;
        assert_eq!(res.status, status, "{target}: {:?}", res);
        assert_eq!(res.json()["errors"], message, "{target}");
        assert_eq!(
            self.upstream.request_count(),
            0,
            "{target} reached the upstream: {}",
            self.upstream.received()
        );
    }

    /// `target` reaches the upstream as `line`, and the client gets its 200.
    async fn forwarded_as(&self, target: &str, line: &str) {
        let res = self.send("GET", target, "", "").await;
        assert_eq!(res.status, 200, "{target}: {res:?}");
        assert_eq!(self.upstream.only_request().line, line, "{target}");
    }
}

#[tokio::test]
async fn underscore_names_never_reach_the_upstream() {
    let s = setup("").await;
    // Spoofed identity on a session route, anonymously.
    let res = s
        .send(
            "GET",
            "/app/x",
            "X_Sis_User_Uuid: victim\r\nX-Custom-Thing: 1\r\n",
            "",
        )
        .await;
    assert_eq!(res.status, 200);
    let got = s.upstream.only_request();
    assert!(!got.has_like("x-sis-user-uuid"), "{got:?}");
    // The benign neighbour: a name with `-` passes.
    assert_eq!(got.get("x-custom-thing"), Some("1"));

    // `Transfer_Encoding` beside the gateway's own `Content-Length`.
    let res = s
        .send(
            "POST",
            "/pub/x",
            "Content-Length: 5\r\nTransfer_Encoding: chunked\r\n",
            "hello",
        )
        .await;
    assert_eq!(res.status, 200);
    let got = s.upstream.only_request();
    assert!(!got.has_like("transfer-encoding"), "{got:?}");
    assert_eq!(got.all("content-length"), ["5"]);
    assert_eq!(got.rest, b"hello");
}

#[tokio::test]
async fn only_allowed_upgrades_are_offered() {
    let s = setup("").await;
    // h2c: removed, and the request goes as a plain one.
    let res = s
        .send(
            "GET",
            "/pub/x",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
            "",
        )
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    let got = s.upstream.only_request();
    assert!(got.get("upgrade").is_none(), "{got:?}");
    assert!(got.get("http2-settings").is_none(), "{got:?}");
    assert!(
        !got.all("connection").iter().any(|c| c.contains("pgrade")),
        "{got:?}"
    );

    // A 101 for a protocol that was not offered is 502, and no tunnel.
    let res = s.send("GET", "/pub/force101", "", "").await;
    assert_eq!(res.status, 502, "{res:?}");
    let res = s
        .send(
            "GET",
            "/pub/force101",
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            "",
        )
        .await;
    assert_eq!(res.status, 502, "{res:?}");

    // The benign neighbour: a WebSocket upgrade is offered and tunnelled.
    s.upstream.clear();
    let mut c = RawConn::connect(s.gw.addr).await;
    c.send(
        b"GET /pub/ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let res = c.read_message(false).await;
    assert_eq!(
        (res.version.as_str(), res.status),
        ("HTTP/1.1", 101),
        "{res:?}"
    );
    c.send(b"tunnelled bytes").await;
    assert_eq!(c.read_exact(15).await, b"tunnelled bytes");
    let received = s.upstream.received();
    assert!(
        received.contains("\r\nupgrade: websocket\r\n"),
        "{received}"
    );
}

#[tokio::test]
async fn one_authority_per_request() {
    let s = setup("").await;
    // Absolute-form wins over Host: routed, forwarded and reported as one.
    let res = s
        .send("GET", "http://www.example/x", "Host: admin.example\r\n", "")
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    let got = s.upstream.only_request();
    assert_eq!(got.line, "GET /x HTTP/1.1");
    assert_eq!(got.all("host"), ["www.example"]);
    assert_eq!(got.all("x-forwarded-host"), ["www.example"]);
    assert!(!s.upstream.received().contains("admin.example"));
    // An absolute-form target with an empty path goes upstream as `/`.
    let res = s.send("GET", "http://www.example?q=..", "", "").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(s.upstream.only_request().line, "GET /?q=.. HTTP/1.1");

    // And the other way round: the target's authority picks the required
    // route, whatever Host says.
    s.refused(
        "GET",
        "http://admin.example/x",
        "Host: www.example\r\n",
        401,
        "Not authenticated",
    )
    .await;
    s.refused(
        "GET",
        "http://admin.example@www.example/x",
        "",
        400,
        "Userinfo in the request target",
    )
    .await;
    s.refused("GET", "www.example:80", "", 400, "Invalid request target")
        .await;
    s.refused(
        "CONNECT",
        "www.example:443",
        "Host: www.example:443\r\n",
        400,
        "CONNECT is not supported",
    )
    .await;
    s.refused("OPTIONS", "*", "", 400, "Invalid request target")
        .await;

    // HTTP/1.0 without Host on a `preserve_host` route: the upstream still
    // gets one Host, its own.
    s.upstream.clear();
    let res = raw(s.gw.addr, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(res.status, 200, "{res:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = s.upstream.only_request();
    assert_eq!(got.all("host"), [s.upstream.addr.to_string().as_str()]);
}

#[tokio::test]
async fn paths_route_as_they_are_forwarded() {
    let s = setup("").await;
    // Every spelling of /secure/x meets the required route's 401.
    for target in [
        "/a/../secure/x",
        "/a/%2e%2e/secure/x",
        "/a/%2E./secure/x",
        "/./secure/x",
        "/%73ecure/x",
        "//secure//x",
        "/pub/../secure/x",
    ] {
        s.refused("GET", target, "", 401, "Not authenticated").await;
    }
    // Refused outright.
    for (target, message) in [
        ("/pub/a%2Fb", "Encoded slash or backslash in the path"),
        ("/pub/a%2fb", "Encoded slash or backslash in the path"),
        ("/pub/a%5cb", "Encoded slash or backslash in the path"),
        ("/pub/a%5Cb", "Encoded slash or backslash in the path"),
        ("/pub/a\\b", "Encoded slash or backslash in the path"),
        (
            "/pub/..%2F..%2Fsecure",
            "Encoded slash or backslash in the path",
        ),
        ("/..", "Path climbs above the root"),
        ("/pub/../../secure/x", "Path climbs above the root"),
        ("/%2e%2e/secure/x", "Path climbs above the root"),
        ("/pub/%ZZ", "Malformed percent-encoding in the path"),
        (
            "/pub/%%32%65%%32%65/secure",
            "Malformed percent-encoding in the path",
        ),
        ("/pub/..;/secure/x", "Ambiguous dot segment in the path"),
    ] {
        s.refused("GET", target, "", 400, message).await;
    }
    // What goes upstream is the normalized path, and the query as it came.
    s.forwarded_as("/pub/a/../b", "GET /pub/b HTTP/1.1").await;
    s.forwarded_as("/%70ub//x/./y", "GET /pub/x/y HTTP/1.1")
        .await;
    s.forwarded_as("/strip/a/%2e%2e/b?q=1", "GET /b?q=1 HTTP/1.1")
        .await;
    // Benign neighbours pass byte for byte.
    s.forwarded_as("/pub/a%20b/%C3%A9", "GET /pub/a%20b/%C3%A9 HTTP/1.1")
        .await;
    s.forwarded_as(
        "/pub/x?a=../../secure&b=%2F&c=//",
        "GET /pub/x?a=../../secure&b=%2F&c=// HTTP/1.1",
    )
    .await;
    s.forwarded_as("/pub/.well-known/x", "GET /pub/.well-known/x HTTP/1.1")
        .await;
    // Sign-in endpoints are dispatched on the same path: this is the
    // refresh endpoint, not a route.
    let res = s.send("POST", "/v0/sign_in/%72efresh", "", "").await;
    assert_eq!(res.status, 400, "{res:?}");
    assert_eq!(res.json()["errors"], "Refresh token is not defined");
    assert_eq!(s.upstream.request_count(), 0);
}

#[tokio::test]
async fn keep_escaped_slashes_and_allow_underscores() {
    let s =
        setup("escaped_slashes = \"keep\"\nunderscores_in_headers = true\nmerge_slashes = false")
            .await;
    s.forwarded_as("/pub/a%2Fb", "GET /pub/a%2Fb HTTP/1.1")
        .await;
    s.forwarded_as("/pub/a%5cb\\c", "GET /pub/a%5cb\\c HTTP/1.1")
        .await;
    s.forwarded_as("/pub//x", "GET /pub//x HTTP/1.1").await;
    // Routed on the undecoded path: `%2F` is not a segment boundary.
    s.forwarded_as("/pub/..%2Fsecure", "GET /pub/..%2Fsecure HTTP/1.1")
        .await;
    // Dot segments still go.
    s.refused("GET", "/pub/../secure/x", "", 401, "Not authenticated")
        .await;

    let res = s
        .send(
            "POST",
            "/app/x",
            "X_Custom: 1\r\nX_Sis_User_Uuid: victim\r\nX_Forwarded_For: 6.6.6.6\r\nTransfer_Encoding: chunked\r\nContent-Length: 2\r\n",
            "hi",
        )
        .await;
    assert_eq!(res.status, 200);
    let got = s.upstream.only_request();
    assert_eq!(got.get("x_custom"), Some("1"), "{got:?}");
    assert!(!got.has_like("x-sis-user-uuid"), "{got:?}");
    assert!(got.get("x_forwarded_for").is_none(), "{got:?}");
    assert!(!got.has_like("transfer-encoding"), "{got:?}");
    assert_eq!(got.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(got.rest, b"hi");
}

#[tokio::test]
async fn http2_requests_meet_the_same_rules() {
    let s = setup("").await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let get = |path: &str| {
        let uri = format!("http://{}{}", s.gw.addr, path);
        let client = client.clone();
        async move {
            let res = client
                .request(
                    http::Request::get(uri)
                        .header("x_sis_user_uuid", "victim")
                        .body(Full::default())
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    s.upstream.clear();
    let (status, _) = get("/%73ecure/x").await;
    assert_eq!(status, 401);
    let (status, _) = get("/a/%2e%2e/secure/x").await;
    assert_eq!(status, 401);
    let (status, body) = get("/pub/a%2Fb").await;
    assert_eq!(status, 400, "{body:?}");
    assert_eq!(s.upstream.request_count(), 0);

    let (status, _) = get("/pub/a/%2e%2e/b").await;
    assert_eq!(status, 200);
    let got = s.upstream.only_request();
    assert_eq!(got.line, "GET /pub/b HTTP/1.1");
    assert!(!got.has_like("x-sis-user-uuid"), "{got:?}");
    assert_eq!(
        got.all("x-forwarded-host"),
        [s.gw.addr.to_string().as_str()]
    );
}
