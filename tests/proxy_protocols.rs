//! Protocols on the client side: h2c, HTTPS with ALPN h2, WebSocket upgrades.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::gateway::{echoed, echoed_headers, temp_path, TestGateway};
use common::upstream::TestUpstream;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn config(upstream: &str, server: &str) -> String {
    format!(
        r#"
[server]
{server}
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/"
upstream = "{upstream}"
"#
    )
}

async fn body_json(res: hyper::Response<hyper::body::Incoming>) -> serde_json::Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn h2c_request_is_forwarded_as_http11() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config(&upstream.url, ""));
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://app.example:{}/h2/path?x=1", gw.addr.port()))
        .header("cookie", "a=1")
        .header("cookie", "vagov_refresh_token=secret")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let json = body_json(res).await;
    assert_eq!(json["version"], "HTTP/1.1");
    assert_eq!(json["uri"], "/h2/path?x=1");
    let seen = echoed_headers(&json);
    assert_eq!(echoed(&seen, "host"), [upstream.addr.to_string().as_str()]);
    let host = format!("app.example:{}", gw.addr.port());
    assert_eq!(echoed(&seen, "x-forwarded-host"), [host.as_str()]);
    assert_eq!(
        echoed(&seen, "cookie"),
        ["a=1; b=2"],
        "HTTP/2 cookie fields joined, secrets removed"
    );

    // A POST body streams over h2 too.
    let req = Request::post(format!("http://app.example:{}/upload", gw.addr.port()))
        .body(Full::new(Bytes::from(vec![7u8; 100_000])))
        .unwrap();
    let json = body_json(sender.send_request(req).await.unwrap()).await;
    assert_eq!(json["len"], 100_000);
}

#[tokio::test]
async fn https_with_alpn_h2_and_http11() {
    let upstream = TestUpstream::start().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = temp_path("cert.pem");
    let key_path = temp_path("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let gw = TestGateway::start(config(
        &upstream.url,
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"",
            cert_path.display(),
            key_path.display()
        ),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls_config = |alpn: &[u8]| {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(c))
    };
    let server_name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // h2 by ALPN
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = tls_config(b"h2")
        .connect(server_name.clone(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("https://localhost:{}/tls", gw.addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    let json = body_json(res).await;
    assert_eq!(json["version"], "HTTP/1.1");
    assert_eq!(
        echoed(&echoed_headers(&json), "x-forwarded-proto"),
        ["https"]
    );

    // http/1.1 by ALPN
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = tls_config(b"http/1.1")
        .connect(server_name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/tls1")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_11);
    let json = body_json(res).await;
    assert_eq!(
        echoed(&echoed_headers(&json), "x-forwarded-proto"),
        ["https"]
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (buf, _) =
        common::raw::read_until_closed(&mut tcp, std::time::Duration::from_secs(5)).await;
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    let _ = std::fs::remove_file(cert_path);
    let _ = std::fs::remove_file(key_path);
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config(&upstream.url, ""));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let url = format!("ws://{}/chat/ws", gw.addr);
    let (mut ws, res) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(res.status(), 101);
    assert!(res.headers().contains_key("x-request-id"));
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let big = vec![42u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    for i in 0..20 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..20 {
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("m{i}"))
        );
    }
    ws.close(None).await.unwrap();

    let metrics = common::gateway::get(&gw.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(metrics.body());
    assert!(
        text.contains(r#"sis_requests_total{route="/",status="101"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn upgrade_refused_by_upstream_is_passed_through() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config(&upstream.url, ""));
    // The upstream answers a normal 200 to an upgrade request on a non-ws path.
    let req = "GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n";
    let res = common::gateway::raw(gw.addr, req.as_bytes()).await;
    assert_eq!(res.status, 200);
    let seen = echoed_headers(&res.json());
    assert_eq!(
        echoed(&seen, "upgrade"),
        ["websocket"],
        "upgrade requests keep Upgrade"
    );
    assert_eq!(echoed(&seen, "connection"), ["upgrade"]);
}
