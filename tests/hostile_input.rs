//! Hostile input over real TCP against the in-process gateway (README,
//! `[server]`): malformed tokens, cookies, headers, percent-encoding, JSON,
//! oversized and ill-framed heads and bodies, and ways around the trust
//! boundary (README, The trust boundary). Every one gets an answer below 500,
//! the gateway never panics on any thread, and it still serves afterwards.
//!
//! A test binary of its own: the panic hook is process-wide, and counting
//! the panics of every thread is only honest when no other test shares the
//! process.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::fixture::{config, create, ADMIN, REFRESH};
use common::gateway::TestGateway;
use common::redis::RedisServer;
use common::upstream::TestUpstream;
use reqwest::StatusCode;

use common::raw::{RawConn, Read};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A raw request with `Host` and `Connection: close`; `extra` are header
/// lines (each ending in CRLF).
fn request(method: &str, target: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{extra}")
        .into_bytes();
    let framed = extra.to_ascii_lowercase();
    if !body.is_empty()
        && !framed.contains("content-length")
        && !framed.contains("transfer-encoding")
    {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn post(target: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        target,
        &format!("Content-Type: {content_type}\r\n"),
        body,
    )
}

fn with_header(method: &str, target: &str, header: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n").into_bytes();
    out.extend_from_slice(header);
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// Sends `bytes` on a fresh connection and reads until the gateway closes
/// it or one whole response has come. Returns the status line's code;
/// `None` only after the HTTP/2 preface, where the answer is a GOAWAY frame.
/// No answer at all fails the test.
async fn hostile(addr: SocketAddr, name: &str, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer and close before reading everything (413).
    let _ = s.write_all(bytes).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Until the gateway closes, or one whole response has arrived.
    let read = RawConn::new(&mut s)
        .read_message_by(false, deadline)
        .await
        .unwrap_or_else(|| panic!("{name}: no answer and no close within 5 s"));
    let (text, status) = match read {
        Read::Message(res) => {
            let status = (res.version == "HTTP/1.1").then_some(res.status);
            (
                format!("{} {} {:?}", res.version, res.status, res.headers),
                status,
            )
        }
        Read::Closed(got) => {
            let text = String::from_utf8_lossy(&got).into_owned();
            let status = text
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok());
            (text, status)
        }
    };
    assert!(!text.is_empty(), "{name}: closed without an answer");
    // After the h2c preface the gateway speaks HTTP/2 (a GOAWAY frame).
    if !name.contains("h2 preface") {
        assert!(
            status.is_some(),
            "{name}: not an HTTP response: {text:.200}"
        );
    }
    status
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_never_gets_500_or_a_hang() {
    // The gateway runs in this process, its connections on threads of its
    // own: count a panic on any thread.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));

    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config(
        &redis.url(),
        &upstream.url,
        "trusted_proxies = [\"127.0.0.1/32\"]\nheader_read_timeout = \"2s\"",
        "",
    ));
    let http = http_client();
    let web = create(&http, &gw, "web").await;
    let real = web["refresh_token"].as_str().unwrap().to_owned();
    let addr = gw.addr;

    let huge = "A".repeat(60 * 1024);
    let too_huge = "A".repeat(200 * 1024);
    let mut nested = "[".repeat(100_000);
    nested.push_str(&"]".repeat(100_000));
    let many_cookies: String = (0..2000).map(|i| format!("c{i}=v; ")).collect();
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut case = |name: &str, bytes: Vec<u8>| cases.push((name.to_owned(), bytes));

    // Tokens in the query string.
    for (name, q) in [
        ("pct ZZ", "refresh_token=%ZZ"),
        ("pct 00", "refresh_token=%00"),
        ("pct lone", "refresh_token=%"),
        ("pct many", "refresh_token=%%%25%2"),
        ("v1 pct garbage", "refresh_token=v1%3A%ZZ%00%FF"),
        ("v1 high bytes", "refresh_token=v1:%FF%FE%FD"),
        ("array form", "refresh_token[]=x&refresh_token[]=y"),
        ("twice", "refresh_token=a&refresh_token=b"),
        ("no value", "refresh_token"),
        ("only separators", "&&&===&"),
        (
            "anti csrf garbage",
            "refresh_token=v1:AAAA&anti_csrf_token=%ZZ",
        ),
    ] {
        case(
            &format!("query {name}"),
            request("POST", &format!("{REFRESH}?{q}"), "", b""),
        );
    }
    case(
        "query huge token",
        request(
            "POST",
            &format!("{REFRESH}?refresh_token=v1:{huge}"),
            "",
            b"",
        ),
    );
    case(
        "query too huge",
        request(
            "POST",
            &format!("{REFRESH}?refresh_token=v1:{too_huge}"),
            "",
            b"",
        ),
    );
    let mut tampered = real.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    case(
        "query tampered real token",
        request(
            "POST",
            &format!(
                "{REFRESH}?refresh_token={}",
                String::from_utf8_lossy(&tampered)
            ),
            "",
            b"",
        ),
    );
    let mut binary_target = format!("{REFRESH}?refresh_token=v1:").into_bytes();
    binary_target.extend_from_slice(&[0xff, 0xfe, 0x80, 0x01]);
    let mut raw_binary = b"POST ".to_vec();
    raw_binary.extend_from_slice(&binary_target);
    raw_binary.extend_from_slice(b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    case("query raw binary bytes", raw_binary);

    // Cookies.
    let mut cookie_cases: Vec<(&str, Vec<u8>)> = vec![
        ("pct ZZ", b"Cookie: vagov_refresh_token=%ZZ".to_vec()),
        ("pct 00", b"Cookie: vagov_refresh_token=v1%3A%00".to_vec()),
        ("quoted", b"Cookie: vagov_refresh_token=\"v1:x\"".to_vec()),
        ("separators", b"Cookie: ;;;=;=;  ; =v".to_vec()),
        ("empty", b"Cookie: ".to_vec()),
        ("many", format!("Cookie: {many_cookies}").into_bytes()),
        (
            "huge",
            format!("Cookie: vagov_refresh_token=v1:{huge}").into_bytes(),
        ),
        (
            "garbage access and refresh",
            b"Cookie: vagov_access_token=a.b.c; vagov_refresh_token=v1:AAAA; vagov_anti_csrf_token=%ZZ".to_vec(),
        ),
        (
            "jwt-shaped access",
            b"Cookie: vagov_access_token=eyJhbGciOiJub25lIn0.eyJleHAiOjF9.; vagov_refresh_token=v1:x".to_vec(),
        ),
    ];
    let mut binary_cookie = b"Cookie: vagov_refresh_token=v1:".to_vec();
    binary_cookie.extend_from_slice(&[0xff, 0xfe, 0x80]);
    cookie_cases.push(("binary", binary_cookie));
    for (name, header) in &cookie_cases {
        case(
            &format!("cookie {name} refresh"),
            with_header("POST", REFRESH, header),
        );
        for path in ["/app/x", "/req/x", "/pub/x", "/v0/sign_in/logout"] {
            case(
                &format!("cookie {name} {path}"),
                with_header("GET", path, header),
            );
        }
    }

    // Authorization headers.
    let mut binary_bearer = b"Authorization: Bearer ".to_vec();
    binary_bearer.extend_from_slice(&[0xff, 0x00, 0x80]);
    for (name, header) in [
        ("garbage", b"Authorization: Bearer a.b.c".to_vec()),
        ("empty", b"Authorization: Bearer ".to_vec()),
        ("scheme only", b"Authorization: Bearer".to_vec()),
        ("basic", b"Authorization: Basic Zm9vOmJhcg==".to_vec()),
        ("huge", format!("Authorization: Bearer {huge}").into_bytes()),
        (
            "alg none",
            b"Authorization: Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.".to_vec(),
        ),
        ("binary", binary_bearer),
    ] {
        for path in [
            "/req/x",
            "/app/x",
            "/v0/sign_in/revoke_all_sessions",
            "/v0/sign_in/logout",
        ] {
            case(
                &format!("auth {name} {path}"),
                with_header("GET", path, &header),
            );
        }
    }

    // JSON and form bodies.
    for (name, body) in [
        ("truncated", b"{".to_vec()),
        ("number", br#"{"refresh_token":5}"#.to_vec()),
        ("null", br#"{"refresh_token":null}"#.to_vec()),
        ("object", br#"{"refresh_token":{"a":1}}"#.to_vec()),
        ("array", b"[]".to_vec()),
        ("string", br#""v1:x""#.to_vec()),
        ("lone surrogate", br#"{"refresh_token":"\ud800"}"#.to_vec()),
        ("escaped nul", br#"{"refresh_token":"v1:\u0000"}"#.to_vec()),
        (
            "duplicate keys",
            br#"{"refresh_token":"v1:a","refresh_token":"v1:b"}"#.to_vec(),
        ),
        ("invalid utf8", b"{\"refresh_token\":\"\xff\xfe\"}".to_vec()),
        ("deep nesting", nested.clone().into_bytes()),
        (
            "huge string",
            format!(r#"{{"refresh_token":"v1:{huge}"}}"#).into_bytes(),
        ),
        ("binary", vec![0u8, 1, 2, 0xff, 0x80, b'{']),
    ] {
        case(&format!("json {name}"), post(REFRESH, json, &body));
        case(
            &format!("json {name} revoke"),
            post("/v0/sign_in/revoke", json, &body),
        );
    }
    for (name, body) in [
        ("pct ZZ", b"refresh_token=%ZZ".to_vec()),
        ("pct 00", b"refresh_token=%00&anti_csrf_token=%00".to_vec()),
        ("separators", b"=&=&&=".to_vec()),
        ("no equals", b"refresh_token".to_vec()),
        ("binary", vec![0xff, 0xfe, b'=', 0x80]),
        ("plus and spaces", b"refresh_token=v1+%20+x".to_vec()),
    ] {
        case(&format!("form {name}"), post(REFRESH, form, &body));
    }
    case(
        "json body as form",
        post(REFRESH, form, br#"{"refresh_token":"v1:x"}"#),
    );
    case(
        "form body as json",
        post(REFRESH, json, b"refresh_token=v1:x"),
    );
    case(
        "unknown content type",
        post(REFRESH, "text/x-weird; charset=unknown", b"v1:x"),
    );

    // Oversized and ill-framed bodies.
    let big = vec![b'a'; 200 * 1024];
    case("oversized by length", post(REFRESH, form, &big));
    case(
        "oversized lying length",
        request(
            "POST",
            REFRESH,
            "Content-Type: application/json\r\nContent-Length: 10000000000\r\n",
            &big[..1024],
        ),
    );
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        chunked.extend_from_slice(&[b'a'; 8192]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    case(
        "oversized chunked",
        request(
            "POST",
            REFRESH,
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            &chunked,
        ),
    );
    case(
        "bad chunk size",
        request(
            "POST",
            REFRESH,
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            b"zz\r\nabc\r\n0\r\n\r\n",
        ),
    );
    case(
        "length and chunked",
        request(
            "POST",
            REFRESH,
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
    );
    case(
        "two lengths",
        request(
            "POST",
            REFRESH,
            "Content-Length: 3\r\nContent-Length: 4\r\n",
            b"abcd",
        ),
    );
    case(
        "length not a number",
        request("POST", REFRESH, "Content-Length: abc\r\n", b"abc"),
    );
    case(
        "unknown transfer coding",
        request("POST", REFRESH, "Transfer-Encoding: gzip\r\n", b"abc"),
    );
    case(
        "oversized upload to a route",
        post("/pub/upload", form, &big),
    );

    // Garbage request lines and headers.
    for (name, bytes) in [
        ("garbage line", b"GARBAGE\r\n\r\n".to_vec()),
        ("binary line", vec![0, 1, 2, 3, 0xff, b'\r', b'\n', b'\r', b'\n']),
        ("http 9.9", b"GET /pub/x HTTP/9.9\r\nHost: gw\r\n\r\n".to_vec()),
        ("http 0.9", b"GET /pub/x\r\n\r\n".to_vec()),
        ("no target", b"GET  HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec()),
        ("control in target", b"GET /pub/\x7f\x01 HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec()),
        ("asterisk", b"GET * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec()),
        (
            "absolute form",
            b"GET http://elsewhere.invalid/pub/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "connect",
            b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("header without colon", b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nNoColon\r\n\r\n".to_vec()),
        ("space in header name", b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nBad Name: x\r\n\r\n".to_vec()),
        ("obs fold", b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n  folded\r\n\r\n".to_vec()),
        ("nul in header", b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nX-A: a\0b\r\n\r\n".to_vec()),
        ("no host", b"GET /pub/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()),
        (
            "two hosts",
            b"GET /pub/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "binary host",
            b"GET /pub/x HTTP/1.1\r\nHost: \xff\xfe\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("lf only", b"GET /pub/x HTTP/1.1\nHost: gw\nConnection: close\n\n".to_vec()),
        ("bare cr", b"GET /pub/x HTTP/1.1\rHost: gw\r\n\r\n".to_vec()),
        ("huge header", format!("GET /pub/x HTTP/1.1\r\nHost: gw\r\nX-Big: {too_huge}\r\n\r\n").into_bytes()),
        (
            "many headers",
            format!(
                "GET /pub/x HTTP/1.1\r\nHost: gw\r\n{}\r\n",
                (0..500).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
        ),
        ("huge line", format!("GET /pub/{too_huge} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes()),
        ("pct path ZZ", b"GET /pub/%ZZ HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec()),
        ("pct path 00", b"GET /pub/%00 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec()),
        (
            "dot segments",
            b"GET /pub/..%2F..%2F../etc/passwd HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "sign-in pct path",
            b"POST /v0/sign_in/%72efresh HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "garbage forwarded",
            b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: ,,;[[::]:x, 999.1.1.1, \xff\r\nX-Forwarded-Proto: \xff\r\nX-Request-Id: \xff\x00\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "garbage upgrade",
            b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nConnection: upgrade\r\nUpgrade: \xff\r\nSec-WebSocket-Key: %%%\r\n\r\n".to_vec(),
        ),
        // Ways around the trust boundary (README, The trust boundary).
        (
            "userinfo target",
            b"GET http://a@gw/req/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "authority form",
            b"GET gw:80 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "absolute form other scheme",
            b"GET ftp://gw/req/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("backslash path", b"GET /pub\\..\\req HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec()),
        ("climbing path", b"GET /../../req/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec()),
        ("encoded dots", b"GET /pub/%2e%2E/req/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec()),
        ("double-encoded dots", b"GET /pub/%252e%252e/req/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec()),
        ("dot parameter", b"GET /pub/..;/req/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec()),
        (
            "h2c upgrade",
            b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n".to_vec(),
        ),
        (
            "underscore framing",
            b"POST /pub/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 3\r\nTransfer_Encoding: chunked\r\n\r\nabc".to_vec(),
        ),
        ("h2 preface then garbage", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec()),
    ] {
        case(&format!("raw {name}"), bytes);
    }

    // Every case, a few at a time.
    let mut statuses = Vec::new();
    for batch in cases.chunks(8) {
        let answers = futures_util::future::join_all(
            batch.iter().map(|(name, bytes)| hostile(addr, name, bytes)),
        )
        .await;
        for ((name, _), status) in batch.iter().zip(answers) {
            if let Some(code) = status {
                assert!(code < 500, "{name}: answered {code}");
            }
            statuses.push((name.clone(), status));
        }
    }
    for (name, status) in &statuses {
        eprintln!("{status:?}\t{name}");
    }

    // The admin API with hostile bodies.
    for body in [
        b"{".to_vec(),
        b"[]".to_vec(),
        br#"{"user_uuid":5,"client_id":"web"}"#.to_vec(),
        br#"{"user_uuid":"u","client_id":"nope"}"#.to_vec(),
        br#"{"user_uuid":"u","client_id":"web","extra":1}"#.to_vec(),
        nested.clone().into_bytes(),
        big.clone(),
    ] {
        // A fresh connection each: see
        // `early_413_tells_the_client_the_connection_closes`.
        let res = http_client()
            .post(gw.admin_url("/admin/sessions"))
            .bearer_auth(ADMIN)
            .header("content-type", json)
            .body(body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    for path in [
        "/admin/sessions/%ZZ",
        "/admin/sessions/%00",
        "/admin/sessions/..%2F",
    ] {
        let res = http_client()
            .delete(gw.admin_url(path))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert!(res.status().as_u16() < 500, "{path}: {}", res.status());
    }

    // Still up, still right: the real session was never touched.
    let http = http_client();
    let res = http.get(gw.url("/pub/after")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = http
        .post(gw.url(REFRESH))
        .header(
            "cookie",
            format!(
                "vagov_refresh_token={real}; vagov_anti_csrf_token={}",
                web["anti_csrf_token"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(PANICS.load(Ordering::Relaxed), 0, "a thread panicked");
}

/// A client whose every request gives up after five seconds: a hang fails
/// the test instead of stalling it.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap()
}
