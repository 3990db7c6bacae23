//! Configuration reload of the built binary (SIGHUP and `watch_config`)
//! under continuous traffic: routes come and go without a failed request
//! or a dropped connection, a broken file is refused, sessions survive, and
//! the replaced configuration lets go of its upstream connections.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::gateway::{replace_file, temp_path, GatewayProcess};
use common::redis::RedisServer;
use common::upstream::TestUpstream;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sis_gateway::config::Algorithm;
use tokio::net::TcpStream;

const ADMIN: &str = "test-admin-token";
/// No test here may take longer than this, whatever hangs.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// A client whose every request gives up after five seconds.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Runs a test body under [`TEST_LIMIT`].
async fn bounded(name: &str, body: impl std::future::Future<Output = ()>) {
    let started = Instant::now();
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .unwrap_or_else(|_| panic!("{name} took longer than {TEST_LIMIT:?}"));
    eprintln!("{name}: {:?}", started.elapsed());
}

/// A config with one public route per prefix in `routes`.
fn config(upstream: &str, server: &str, routes: &[&str]) -> String {
    let mut out = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{server}
[cookies]
refresh_path = "/"
"#
    );
    for r in routes {
        out.push_str(&format!(
            "[[routes]]\npath_prefix = \"/{r}\"\nupstream = \"{upstream}\"\nauth = \"public\"\n"
        ));
    }
    out
}

/// `sis_config_reloads_total{result="<result>"}` from the admin listener.
async fn reloads(gw: &GatewayProcess, result: &str) -> u64 {
    let url = format!("http://{}/metrics", gw.admin_addr.unwrap());
    let text = http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("sis_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

async fn wait_for_reloads(gw: &GatewayProcess, result: &str, n: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while reloads(gw, result).await < n {
        assert!(
            Instant::now() < deadline,
            "no {n}th reload with result {result} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn status(http: &reqwest::Client, url: String) -> StatusCode {
    http.get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap()
        .status()
}

/// Waits until `url` answers `want`.
async fn wait_for_status(http: &reqwest::Client, url: String, want: StatusCode, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = status(http, url.clone()).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{url} still answers {got}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One HTTP/1.1 keep-alive connection that must survive the whole test: a
/// dropped connection fails its next request.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeepAlive { sender }
    }

    async fn get(&mut self, path: &str) -> Result<u16, String> {
        tokio::time::timeout(Duration::from_secs(5), self.get_inner(path))
            .await
            .map_err(|_| format!("GET {path} timed out"))?
    }

    async fn get_inner(&mut self, path: &str) -> Result<u16, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::get(path)
            .header("host", "gw")
            .body(Empty::new())
            .unwrap();
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        res.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok(status)
    }
}

/// Client tasks that request `/keep/…` on their own keep-alive connections
/// until stopped; each returns how many answers it got, or the first failure.
fn traffic(
    addr: SocketAddr,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Result<usize, String>>> {
    (0..tasks)
        .map(|t| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut conn = KeepAlive::open(addr).await;
                let mut n = 0;
                for i in 0..200_000usize {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match conn.get(&format!("/keep/{t}/{i}")).await {
                        Ok(200) => n += 1,
                        other => return Err(format!("request {i} of task {t}: {other:?}")),
                    }
                    // Continuous but not CPU-bound: a loaded 2-core CI
                    // machine runs the gateway and these clients side by side.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(n)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_routes_under_traffic_and_refuses_a_broken_file() {
    bounded(
        "sighup_swaps_routes_under_traffic_and_refuses_a_broken_file",
        async {
            let upstream = TestUpstream::start().await;
            let mut gw = GatewayProcess::spawn(&config(&upstream.url, "", &["keep", "old"]));
            let http = http_client();
            assert_eq!(status(&http, gw.url("/old/x")).await, StatusCode::OK);
            assert_eq!(status(&http, gw.url("/new/x")).await, StatusCode::NOT_FOUND);

            // A keep-alive connection opened before the reload and idle during it.
            let mut idle = KeepAlive::open(gw.addr).await;
            assert_eq!(idle.get("/keep/idle").await, Ok(200));

            let stop = Arc::new(AtomicBool::new(false));
            let clients = traffic(gw.addr, 3, &stop);
            tokio::time::sleep(Duration::from_millis(300)).await;

            // Add /new, remove /old.
            replace_file(
                gw.config_path(),
                &config(&upstream.url, "", &["keep", "new"]),
            );
            gw.signal("HUP");
            wait_for_status(
                &http,
                gw.url("/new/x"),
                StatusCode::OK,
                Duration::from_secs(5),
            )
            .await;
            let res = http.get(gw.url("/old/x")).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::NOT_FOUND);
            let body: Value = res.json().await.unwrap();
            assert!(body["errors"].is_string(), "{body}");
            assert_eq!(reloads(&gw, "ok").await, 1);
            tokio::time::sleep(Duration::from_millis(300)).await;

            // A file that is not TOML, then one with an unknown key: both refused,
            // the running configuration keeps serving.
            for (i, broken) in [
                "[server\nlisten = ".to_owned(),
                config(&upstream.url, "no_such_key = 1", &["keep", "old"]),
            ]
            .iter()
            .enumerate()
            {
                replace_file(gw.config_path(), broken);
                gw.signal("HUP");
                wait_for_reloads(&gw, "invalid", i as u64 + 1, Duration::from_secs(5)).await;
                assert!(gw.is_running());
                assert_eq!(status(&http, gw.url("/new/x")).await, StatusCode::OK);
                assert_eq!(status(&http, gw.url("/old/x")).await, StatusCode::NOT_FOUND);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert_eq!(reloads(&gw, "ok").await, 1);

            stop.store(true, Ordering::Relaxed);
            for client in clients {
                let n = client.await.unwrap().expect("no request failed");
                assert!(n > 10, "only {n} requests");
            }
            // The connection that idled through three reloads works, and sees the
            // new routes.
            assert_eq!(idle.get("/keep/after").await, Ok(200));
            assert_eq!(idle.get("/new/after").await, Ok(200));
            assert_eq!(idle.get("/old/after").await, Ok(404));
            assert!(gw.terminate().success());
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_reloads_on_file_change_alone() {
    bounded("watch_config_reloads_on_file_change_alone", async {
        let upstream = TestUpstream::start().await;
        let server = "watch_config = true";
        let gw = GatewayProcess::spawn(&config(&upstream.url, server, &["keep", "old"]));
        let http = http_client();
        assert_eq!(status(&http, gw.url("/new/x")).await, StatusCode::NOT_FOUND);
        let stop = Arc::new(AtomicBool::new(false));
        let clients = traffic(gw.addr, 2, &stop);

        // The watcher looks every two seconds; no signal is sent.
        replace_file(
            gw.config_path(),
            &config(&upstream.url, server, &["keep", "new"]),
        );
        wait_for_status(
            &http,
            gw.url("/new/x"),
            StatusCode::OK,
            Duration::from_secs(8),
        )
        .await;
        assert_eq!(status(&http, gw.url("/old/x")).await, StatusCode::NOT_FOUND);

        replace_file(gw.config_path(), "[[routes]\n");
        wait_for_reloads(&gw, "invalid", 1, Duration::from_secs(8)).await;
        assert_eq!(status(&http, gw.url("/new/x")).await, StatusCode::OK);

        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.unwrap().expect("no request failed");
        }
        assert_eq!(reloads(&gw, "ok").await, 1);
    })
    .await;
}

fn session_config(store_url: &str, keys: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[admin]
token = "{ADMIN}"
[store]
url = "{store_url}"
[tokens]
{keys}
[cookies]
refresh_path = "/"
[sign_in]
failures_per_minute = 0
[[clients]]
client_id = "mobile"
authentication = "api"
anti_csrf = false
"#
    )
}

/// Opens a session through the admin API; (access token, refresh token).
async fn open_session(gw: &GatewayProcess) -> (String, String) {
    let res = http_client()
        .post(format!("http://{}/admin/sessions", gw.admin_addr.unwrap()))
        .bearer_auth(ADMIN)
        .json(&json!({"user_uuid": "u-reload", "client_id": "mobile"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn refresh(gw: &GatewayProcess, token: &str) -> (StatusCode, Value) {
    let res = http_client()
        .post(gw.url("/v0/sign_in/refresh"))
        .query(&[("refresh_token", token)])
        .send()
        .await
        .unwrap();
    let st = res.status();
    (st, res.json().await.unwrap_or(Value::Null))
}

/// A route that needs a valid access token, added by the reload.
fn required_route(upstream: &str) -> String {
    format!("[[routes]]\npath_prefix = \"/req\"\nupstream = \"{upstream}\"\nauth = \"required\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_tokens_survive_a_reload() {
    bounded("sessions_and_tokens_survive_a_reload", async {
        let redis = RedisServer::start();
        let upstream = TestUpstream::start().await;
        let dir = temp_path("reload-keys");
        let keys = sis_gateway::tokens::keygen(&dir, Algorithm::Es256).unwrap();
        let keys = format!(
            "signing_keys = [\"{}\"]\nsealing_keys = [\"file:{}\"]",
            keys.signing_key.display(),
            keys.sealing_key.display()
        );
        let cfg = session_config(&redis.url(), &keys);
        let gw = GatewayProcess::spawn(&cfg);
        let (access, token) = open_session(&gw).await;

        replace_file(
            gw.config_path(),
            &format!("{cfg}{}", required_route(&upstream.url)),
        );
        gw.signal("HUP");
        wait_for_reloads(&gw, "ok", 1, Duration::from_secs(5)).await;

        // The access token issued before the reload is still good…
        let res = http_client()
            .get(gw.url("/req/x"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        // …and so is the refresh token.
        let (st, body) = refresh(&gw, &token).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_sessions_survive_a_reload() {
    bounded("memory_store_sessions_survive_a_reload", async {
        let cfg = session_config(
            "memory://",
            "sealing_keys = [\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"]",
        );
        let gw = GatewayProcess::spawn(&cfg);
        let (_, token) = open_session(&gw).await;
        replace_file(gw.config_path(), &format!("{cfg}\n# touched\n"));
        gw.signal("HUP");
        wait_for_reloads(&gw, "ok", 1, Duration::from_secs(5)).await;
        let (st, body) = refresh(&gw, &token).await;
        assert_eq!(st, StatusCode::OK, "{body}");
    })
    .await;
}

/// An upstream on raw TCP that answers every request `200 ok` on a kept-alive
/// connection and counts the connections it accepted and saw closed.
struct CountingUpstream {
    url: String,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingUpstream {
    async fn start() -> CountingUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                break;
                            }
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingUpstream {
            url,
            accepted,
            closed,
        }
    }
}

/// A reload releases the configuration it replaced (and the pooled upstream
/// connections it holds) even on workers that get no further request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_the_old_configurations_upstream_connections() {
    bounded(
        "a_reload_closes_the_old_configurations_upstream_connections",
        async {
            let old = CountingUpstream::start().await;
            let new = TestUpstream::start().await;
            let gw = GatewayProcess::spawn(&config(&old.url, "", &["app"]));
            let http = http_client();
            // Fresh connections, so every worker serves some and pools one.
            for i in 0..8 {
                let mut conn = KeepAlive::open(gw.addr).await;
                assert_eq!(conn.get(&format!("/app/{i}")).await, Ok(200));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let accepted = old.accepted.load(Ordering::SeqCst);
            assert!(accepted >= 1);
            assert_eq!(old.closed.load(Ordering::SeqCst), 0, "pooled, not closed");

            replace_file(gw.config_path(), &config(&new.url, "", &["app"]));
            gw.signal("HUP");
            wait_for_reloads(&gw, "ok", 1, Duration::from_secs(5)).await;
            // No request reaches the gateway's workers from here on.
            let deadline = Instant::now() + Duration::from_secs(5);
            while old.closed.load(Ordering::SeqCst) < accepted {
                assert!(
                    Instant::now() < deadline,
                    "{} of {accepted} pooled connections to the old upstream still open",
                    accepted - old.closed.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert_eq!(status(&http, gw.url("/app/x")).await, StatusCode::OK);
            assert_eq!(new.count(), 1);
        },
    )
    .await;
}
