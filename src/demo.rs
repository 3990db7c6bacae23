//! The built-in demo upstream behind `sis-gateway demo`: a small HTTP/1
//! server that shows what an application behind the gateway receives.
//!
//! - `GET /`: an HTML page listing the request headers (identity headers
//!   appear here; the refresh and anti-CSRF cookies never do).
//! - `GET /headers`: the same as JSON.
//! - `/echo`: answers with the request body, streamed.
//! - `/slow?ms=N`: answers after N milliseconds (at most 60 s).
//! - `/ws`: a WebSocket echo.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::http::body::{self, Body};

/// Serves the demo upstream on `listener` until the task is dropped.
pub async fn serve_demo_upstream(listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "demo upstream: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|req| async move { Ok::<_, Infallible>(handle(req).await) });
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "demo upstream: connection error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => html(headers_page(&req)),
        (&Method::GET, "/headers") => {
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
            body::json(
                StatusCode::OK,
                &serde_json::json!({
                    "method": req.method().as_str(),
                    "uri": req.uri().to_string(),
                    "headers": headers,
                }),
            )
        }
        (_, "/echo") => {
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            let mut res = Response::new(req.into_body().map_err(Into::into).boxed_unsync());
            if let Some(ct) = content_type {
                res.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            res
        }
        (_, "/slow") => {
            let ms = query_param(req.uri().query(), "ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(body::full(format!("slept {ms} ms\n")))
        }
        (&Method::GET, "/ws") => websocket_echo(req),
        _ => body::json_error(StatusCode::NOT_FOUND, "Not found"),
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn html(page: String) -> Response<Body> {
    let mut res = Response::new(body::full(page));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn headers_page(req: &Request<Incoming>) -> String {
    let mut rows = String::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        let mark = if name.as_str().starts_with("x-sis-") {
            " class=\"id\""
        } else {
            ""
        };
        let _ = writeln!(
            rows,
            "<tr{mark}><th>{}</th><td>{}</td></tr>",
            escape(name.as_str()),
            escape(&value)
        );
    }
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>sis-gateway demo upstream</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}td{{font-family:monospace;word-break:break-all}}tr.id{{background:#e8f5e9}}</style>
</head><body>
<h1>Demo upstream</h1>
<p>This is what the application behind the gateway received for <code>{} {}</code>.
Identity headers (<code>x-sis-*</code>) are highlighted; refresh and anti-CSRF cookies never arrive here.</p>
<table>
{rows}</table>
<p>Also: <a href="/headers">/headers</a> (JSON), <code>/echo</code>, <a href="/slow?ms=500">/slow?ms=500</a>, <code>/ws</code> (WebSocket echo).</p>
</body></html>
"#,
        escape(req.method().as_str()),
        escape(&req.uri().to_string()),
    )
}

/// Accepts a WebSocket upgrade (RFC 6455 §4.2.2) and echoes every text and
/// binary message.
fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    let headers: &HeaderMap = req.headers();
    let wants_ws = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| wants_ws) else {
        return body::json_error(StatusCode::BAD_REQUEST, "Expected a WebSocket upgrade");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "demo upstream: upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::new(body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    res
}
