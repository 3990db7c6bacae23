//! Pass-through behaviour against a real upstream over real TCP: headers,
//! routing, errors, load balancing and the admin listener.

mod common;

use bytes::Bytes;
use common::gateway::{echoed, echoed_headers, get, raw, send, TestGateway};
use common::upstream::{closed_port_url, ResettingUpstream, TestUpstream};
use http::Request;
use http_body_util::Full;

/// A gateway config with one catch-all route to `upstream`.
fn config(server: &str, upstream: &str, route_extra: &str) -> String {
    format!(
        r#"
[server]
upstream_timeout = "2s"
{server}
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/"
upstream = "{upstream}"
{route_extra}
"#
    )
}

fn request(addr: std::net::SocketAddr, path: &str, headers: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: app.example:{port}\r\n{headers}Connection: close\r\n\r\n",
        port = addr.port()
    )
    .into_bytes()
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config("", &upstream.url, ""));
    let req = "GET /echo HTTP/1.1\r\nHost: app.example\r\n\
         Connection: close, X-Hop-Listed\r\nConnection: x-hop-second\r\n\
         X-Hop-Listed: 1\r\nX-HOP-SECOND: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
         TE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         X-End-To-End: kept\r\n\r\n";
    let res = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(res.status, 200);
    let seen = echoed_headers(&res.json());
    for hop in [
        "x-hop-listed",
        "x-hop-second",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(
            echoed(&seen, hop).is_empty(),
            "{hop} reached the upstream: {seen:?}"
        );
    }
    assert!(
        echoed(&seen, "connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-hop")),
        "{seen:?}"
    );
    assert_eq!(echoed(&seen, "x-end-to-end"), ["kept"]);
    // The upstream's own hop-by-hop response headers stay on its hop.
    assert_eq!(res.header("x-upstream-private"), None);
    assert_eq!(res.header("keep-alive"), None);
    assert_eq!(res.header("proxy-authenticate"), None);
    assert_eq!(res.header("x-upstream"), Some("upstream"));
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peer_are_replaced() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config("trusted_proxies = []", &upstream.url, ""));
    let res = raw(
        gw.addr,
        &request(
            gw.addr,
            "/",
            "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\
             Forwarded: for=6.6.6.6\r\nX-Request-Id: chosen-by-client\r\n",
        ),
    )
    .await;
    assert_eq!(res.status, 200);
    let seen = echoed_headers(&res.json());
    assert_eq!(echoed(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed(&seen, "x-forwarded-proto"), ["http"]);
    let host = format!("app.example:{}", gw.addr.port());
    assert_eq!(echoed(&seen, "x-forwarded-host"), [host.as_str()]);
    assert!(echoed(&seen, "forwarded").is_empty());
    let id = echoed(&seen, "x-request-id");
    assert_eq!(id.len(), 1);
    assert_ne!(id[0], "chosen-by-client");
    assert!(uuid::Uuid::parse_str(id[0]).is_ok());
    assert_eq!(
        res.header("x-request-id"),
        Some(id[0]),
        "the response carries the same id"
    );
    // Host is the upstream's unless preserve_host.
    assert_eq!(echoed(&seen, "host"), [upstream.addr.to_string().as_str()]);
}

#[tokio::test]
async fn forwarded_headers_from_trusted_proxy_are_appended() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &upstream.url,
        "preserve_host = true",
    ));
    let res = raw(
        gw.addr,
        &request(
            gw.addr,
            "/",
            "X-Forwarded-For: 6.6.6.6, 10.1.1.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: www.example.gov\r\n\
             X-Request-Id: edge-1234\r\n",
        ),
    )
    .await;
    let seen = echoed_headers(&res.json());
    assert_eq!(
        echoed(&seen, "x-forwarded-for"),
        ["6.6.6.6, 10.1.1.1, 127.0.0.1"]
    );
    assert_eq!(echoed(&seen, "x-forwarded-proto"), ["https"]);
    assert_eq!(echoed(&seen, "x-forwarded-host"), ["www.example.gov"]);
    assert_eq!(echoed(&seen, "x-request-id"), ["edge-1234"]);
    assert_eq!(res.header("x-request-id"), Some("edge-1234"));
    let host = format!("app.example:{}", gw.addr.port());
    assert_eq!(
        echoed(&seen, "host"),
        [host.as_str()],
        "preserve_host keeps the client's Host"
    );
}

#[tokio::test]
async fn refresh_cookies_and_spoofed_identity_headers_never_reach_the_upstream() {
    let upstream = TestUpstream::start().await;
    let text = format!(
        r#"
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/"
upstream = "{0}"
[[routes]]
path_prefix = "/other"
upstream = "{0}"
identity_headers = {{ user_uuid = "X-Remote-User" }}
"#,
        upstream.url
    );
    let gw = TestGateway::start(text.as_str());
    let res = raw(
        gw.addr,
        &request(
            gw.addr,
            "/page",
            "Cookie: a=1; vagov_refresh_token=v1%3Asecret; vagov_access_token=at\r\n\
             Cookie: vagov_anti_csrf_token=csrf;b=2\r\nCookie: VAGOV_REFRESH_TOKEN=x, c=3\r\n\
             X-Sis-User-Uuid: spoofed\r\nx-sis-session-handle: spoofed\r\nX-Sis-Client-Id: spoofed\r\n\
             X-Remote-User: spoofed\r\n",
        ),
    )
    .await;
    assert_eq!(res.status, 200);
    let seen = echoed_headers(&res.json());
    assert_eq!(
        echoed(&seen, "cookie"),
        ["a=1; vagov_access_token=at; b=2; c=3"]
    );
    for name in [
        "x-sis-user-uuid",
        "x-sis-session-handle",
        "x-sis-client-id",
        "x-remote-user",
    ] {
        assert!(
            echoed(&seen, name).is_empty(),
            "{name} reached the upstream"
        );
    }
    let body = String::from_utf8_lossy(&res.body);
    assert!(
        !body.contains("secret") && !body.contains("csrf") && !body.contains("spoofed"),
        "{body}"
    );

    // Only secret cookies: the header goes away entirely.
    let res = raw(
        gw.addr,
        &request(
            gw.addr,
            "/",
            "Cookie: vagov_refresh_token=x; vagov_anti_csrf_token=y\r\n",
        ),
    )
    .await;
    assert!(echoed(&echoed_headers(&res.json()), "cookie").is_empty());
}

#[tokio::test]
async fn routing_prefixes_hosts_strip_prefix_and_base_path() {
    let a = TestUpstream::start_named("a").await;
    let b = TestUpstream::start_named("b").await;
    let c = TestUpstream::start_named("c").await;
    let text = format!(
        r#"
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/app"
upstream = "{a}/base"
strip_prefix = true
[[routes]]
host = "api.example"
path_prefix = "/"
upstream = "{b}"
[[routes]]
path_prefix = "/static"
upstream = "{c}"
"#,
        a = a.url,
        b = b.url,
        c = c.url
    );
    let gw = TestGateway::start(text.as_str());
    let at = |path: &str, host: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        async move { raw(gw.addr, req.as_bytes()).await }
    };
    let res = at("/app/x/y?q=1&r=%2F", "www.example").await;
    assert_eq!(res.header("x-upstream"), Some("a"));
    assert_eq!(res.json()["uri"], "/base/x/y?q=1&r=%2F");
    let res = at("/app", "www.example").await;
    assert_eq!(res.json()["uri"], "/base/");
    let res = at("/application", "www.example").await;
    assert_eq!(res.status, 404);
    assert_eq!(res.json(), serde_json::json!({"errors": "No route"}));
    let res = at("/app/x", "API.example:443").await;
    assert_eq!(
        res.header("x-upstream"),
        Some("b"),
        "host routes come first"
    );
    let res = at("/static/logo.png", "www.example").await;
    assert_eq!(res.header("x-upstream"), Some("c"));
    assert_eq!(res.json()["uri"], "/static/logo.png");
    assert!(res.header("x-request-id").is_some());
}

#[tokio::test]
async fn upstream_refused_is_502_and_slow_upstream_is_504() {
    let slow = TestUpstream::start().await;
    let text = format!(
        r#"
[server]
upstream_timeout = "300ms"
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/closed"
upstream = "{closed}"
[[routes]]
path_prefix = "/slow"
upstream = "{slow}"
"#,
        closed = closed_port_url(),
        slow = slow.url
    );
    let gw = TestGateway::start(text.as_str());
    let res = get(&gw.url("/closed/x")).await;
    assert_eq!(res.status(), 502);
    assert_eq!(&res.body()[..], br#"{"errors":"Upstream unavailable"}"#);
    assert_eq!(
        res.headers()["content-type"],
        "application/json; charset=utf-8"
    );

    let started = std::time::Instant::now();
    let res = get(&gw.url("/slow/slow?ms=3000")).await;
    assert_eq!(res.status(), 504);
    assert_eq!(&res.body()[..], br#"{"errors":"Upstream timed out"}"#);
    assert!(started.elapsed() < std::time::Duration::from_millis(2000));

    let metrics = get(&gw.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(metrics.body());
    assert!(
        text.contains(r#"sis_upstream_errors_total{route="/closed",kind="refused"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sis_upstream_errors_total{route="/slow",kind="timeout"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sis_requests_total{route="/slow",status="504"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn upstream_reset_is_502() {
    let upstream = ResettingUpstream::start().await;
    let gw = TestGateway::start(config("", &upstream.url, ""));
    let res = get(&gw.url("/")).await;
    assert_eq!(res.status(), 502);
    assert_eq!(&res.body()[..], br#"{"errors":"Upstream unavailable"}"#);
    let metrics = get(&gw.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(metrics.body());
    assert!(text.contains(r#"kind="reset""#), "{text}");
}

#[tokio::test]
async fn body_over_max_body_is_413_by_length_and_while_streaming() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config("", &upstream.url, "max_body = \"1KiB\""));

    // Declared length over the limit: refused before any byte is read.
    let req =
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n";
    let res = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(res.status, 413);
    assert_eq!(
        res.json(),
        serde_json::json!({"errors": "Request body too large"})
    );
    assert_eq!(upstream.count(), 0);

    // Chunked: caught while streaming.
    let mut req = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b'a'; 0x400]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let res = raw(gw.addr, &req).await;
    assert_eq!(res.status, 413);
    assert_eq!(
        res.json(),
        serde_json::json!({"errors": "Request body too large"})
    );

    // At the limit: fine.
    let res = send(
        Request::post(gw.url("/upload"))
            .body(Full::new(Bytes::from(vec![b'a'; 1024])))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let json: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(json["len"], 1024);
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config("max_header_size = \"16KiB\"", &upstream.url, ""));
    let big = "a".repeat(20 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let res = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(res.status, 431);
    assert_eq!(upstream.count(), 0);
    // Below the limit is fine.
    let ok = "a".repeat(8 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {ok}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(gw.addr, req.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn missing_or_repeated_host_is_400() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config("", &upstream.url, ""));
    for head in [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    ] {
        let res = raw(gw.addr, head.as_bytes()).await;
        assert_eq!(res.status, 400, "{head:?}");
        assert!(res.json()["errors"].as_str().unwrap().contains("Host"));
    }
    assert_eq!(upstream.count(), 0);
    // HTTP/1.0 may omit it.
    let res = raw(gw.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn round_robin_and_dead_upstream_skipped() {
    let a = TestUpstream::start_named("a").await;
    let b = TestUpstream::start_named("b").await;
    let text = format!(
        r#"
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/rr"
upstreams = ["{a}", "{b}"]
[[routes]]
path_prefix = "/dead"
upstreams = ["{closed}", "{a}"]
"#,
        a = a.url,
        b = b.url,
        closed = closed_port_url()
    );
    let gw = TestGateway::start(text.as_str());
    let mut names = Vec::new();
    for _ in 0..6 {
        let res = get(&gw.url("/rr/x")).await;
        assert_eq!(res.status(), 200);
        names.push(res.headers()["x-upstream"].to_str().unwrap().to_owned());
    }
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 3, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 3, "{names:?}");
    assert_ne!(names[0], names[1]);

    // A POST with a body is retried on the next upstream too: nothing was sent.
    for i in 0..6 {
        let res = send(
            Request::post(gw.url("/dead/upload"))
                .body(Full::new(Bytes::from(vec![b'x'; 100 + i])))
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-upstream"], "a");
        let json: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(json["len"], 100 + i);
    }
    let metrics = get(&gw.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(metrics.body());
    assert!(
        text.contains(r#"sis_upstream_errors_total{route="/dead",kind="refused"} 1"#),
        "the dead upstream is tried once, then cooled down: {text}"
    );
}

#[tokio::test]
async fn all_upstreams_down_is_502() {
    let text = format!(
        "[cookies]\nrefresh_path = \"/\"\n[[routes]]\npath_prefix = \"/\"\nupstreams = [\"{}\", \"{}\"]\n",
        closed_port_url(),
        closed_port_url()
    );
    let gw = TestGateway::start(text.as_str());
    for _ in 0..3 {
        let res = get(&gw.url("/")).await;
        assert_eq!(res.status(), 502);
        assert_eq!(&res.body()[..], br#"{"errors":"Upstream unavailable"}"#);
    }
}

#[tokio::test]
async fn admin_listener_health_readiness_metrics() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config("", &upstream.url, ""));
    assert_eq!(get(&gw.url("/x")).await.status(), 200);

    let res = get(&gw.admin_url("/healthz")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(&res.body()[..], br#"{"status":"ok"}"#);
    let res = get(&gw.admin_url("/readyz")).await;
    assert_eq!(res.status(), 200);
    let res = get(&gw.admin_url("/metrics")).await;
    assert_eq!(res.status(), 200);
    let text = String::from_utf8_lossy(res.body());
    for family in [
        r#"sis_requests_total{route="/",status="200"} 1"#,
        r#"sis_request_duration_seconds_count{route="/"} 1"#,
        "sis_open_connections",
        "sis_connections_total",
    ] {
        assert!(text.contains(family), "{family} missing from {text}");
    }
    assert_eq!(get(&gw.admin_url("/nope")).await.status(), 404);
    // The admin API is sign-in's; the listener hands it over.
    assert!(get(&gw.admin_url("/admin/sessions"))
        .await
        .status()
        .is_client_error());
    // The public listener does not serve admin endpoints.
    let res = get(&gw.url("/metrics")).await;
    assert!(!String::from_utf8_lossy(res.body()).contains("sis_requests_total"));
}
