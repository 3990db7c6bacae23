//! Large bodies stream through the gateway process in both directions with
//! their bytes intact, while its memory stays flat.

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::gateway::GatewayProcess;
use common::upstream::{hex, pattern, pattern_sha256, TestUpstream};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const SIZE: u64 = 200 * 1024 * 1024;
/// Generous: the gateway buffers at most a few 64 KiB pieces per direction.
const MAX_RSS_GROWTH_KIB: u64 = 60 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `total` pattern bytes as a streamed request body, in 64 KiB pieces.
fn pattern_body(
    total: u64,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>>> {
    let chunk = Bytes::from(pattern(0, 251 * 256));
    StreamBody::new(futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(chunk.len() as u64) as usize;
            Some((Ok(Frame::data(chunk.slice(..n))), sent + n as u64))
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_and_download_stream_with_flat_memory() {
    let upstream = TestUpstream::start().await;
    let mut gw = GatewayProcess::spawn(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
upstream_timeout = "60s"
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/"
upstream = "{}"
"#,
        upstream.url
    ));

    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Warm up (pools, allocator arenas) before taking the baseline.
    sender.ready().await.expect("connection ready");
    let warm = sender
        .send_request(
            Request::post("/upload")
                .header("host", "gateway.test")
                .body(pattern_body(1024 * 1024))
                .unwrap(),
        )
        .await
        .unwrap();
    warm.into_body().collect().await.unwrap();
    let baseline = gw.rss_kib();

    // Upload: the upstream hashes what it receives.
    let started = Instant::now();
    // A keep-alive HTTP/1 sender takes the next request only once the
    // previous exchange has fully finished.
    sender.ready().await.expect("connection ready");
    let res = sender
        .send_request(
            Request::post("/upload")
                .header("host", "gateway.test")
                .body(pattern_body(SIZE))
                .unwrap(),
        )
        .await
        .expect("upload through the gateway");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let expected = pattern_sha256(SIZE);
    assert_eq!(json["len"], SIZE);
    assert_eq!(json["sha256"], expected.as_str());
    let upload_time = started.elapsed();
    let after_upload = gw.rss_kib();

    // Download: hash while reading, never holding the body.
    let started = Instant::now();
    // A keep-alive HTTP/1 sender takes the next request only once the
    // previous exchange has fully finished.
    sender.ready().await.expect("connection ready");
    let res = sender
        .send_request(
            Request::get(format!("/stream?bytes={SIZE}"))
                .header("host", "gateway.test")
                .body(pattern_body(0))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut len = 0u64;
    let mut peak = after_upload;
    let mut frames = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            len += data.len() as u64;
            ctx.update(data);
        }
        frames += 1;
        if frames.is_multiple_of(512) {
            peak = peak.max(gw.rss_kib());
        }
    }
    assert_eq!(len, SIZE);
    assert_eq!(hex(ctx.finish().as_ref()), expected);
    let download_time = started.elapsed();
    let after_download = gw.rss_kib();
    peak = peak.max(after_download);

    eprintln!(
        "upload {:?}, download {:?}; RSS baseline {baseline} KiB, after upload {after_upload} KiB, peak {peak} KiB, after download {after_download} KiB",
        upload_time, download_time
    );
    assert!(
        peak.saturating_sub(baseline) < MAX_RSS_GROWTH_KIB,
        "gateway memory grew from {baseline} KiB to {peak} KiB"
    );
    assert!(gw.terminate().success());
}
