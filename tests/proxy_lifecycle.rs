//! Connection lifecycle (graceful shutdown, timeouts, connection cap) and
//! the command line.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::gateway::{binary, get, temp_path, GatewayProcess, TestGateway};
use common::raw::{keep_alive_get, read_until_closed};
use common::upstream::TestUpstream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let upstream = TestUpstream::start().await;
    let mut gw = TestGateway::start(config(&upstream.url, "shutdown_grace = \"10s\""));
    let slow_url = gw.url("/slow?ms=1500");
    let in_flight = tokio::spawn(async move { get(&slow_url).await });
    // An idle keep-alive connection is closed at once by the drain.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(keep_alive_get(&mut idle, "/k").await, 200);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    gw.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "new connections are refused once shutdown began"
    );
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(2)).await;
    assert!(closed, "idle connections close during the drain");

    let res = in_flight.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(&res.body()[..], b"slow");
    let result = tokio::task::spawn_blocking(move || gw.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(result, Ok(()));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_drain() {
    let upstream = TestUpstream::start().await;
    let mut gw = TestGateway::start(config(&upstream.url, "shutdown_grace = \"300ms\""));
    let slow_url = gw.url("/slow?ms=5000");
    let in_flight = tokio::spawn(async move {
        common::gateway::client()
            .request(
                http::Request::get(slow_url)
                    .body(Default::default())
                    .unwrap(),
            )
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    gw.begin_shutdown();
    let result = tokio::task::spawn_blocking(move || gw.wait(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(result, Ok(()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        in_flight.await.unwrap().is_err(),
        "the request past the grace is cut"
    );
}

#[tokio::test]
async fn header_read_timeout_and_idle_timeout_are_separate() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config(
        &upstream.url,
        "header_read_timeout = \"300ms\"\nidle_timeout = \"1200ms\"",
    ));

    // A request head that never completes is cut after the header timeout.
    let mut slowloris = TcpStream::connect(gw.addr).await.unwrap();
    slowloris
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut slowloris, Duration::from_secs(3)).await;
    assert!(closed);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1000),
        "{took:?}"
    );

    // An idle keep-alive connection outlives the header timeout…
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(keep_alive_get(&mut conn, "/k").await, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(keep_alive_get(&mut conn, "/k").await, 200);
    // …and is closed after the idle timeout.
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut conn, Duration::from_secs(3)).await;
    assert!(closed);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(2000),
        "{took:?}"
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_closed() {
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config(&upstream.url, "max_connections = 2"));
    let mut a = TcpStream::connect(gw.addr).await.unwrap();
    let mut b = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(keep_alive_get(&mut a, "/k").await, 200);
    assert_eq!(keep_alive_get(&mut b, "/k").await, 200);

    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (data, closed) = read_until_closed(&mut c, Duration::from_secs(2)).await;
    assert!(
        closed && data.is_empty(),
        "the third connection is closed unanswered"
    );

    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(keep_alive_get(&mut d, "/k").await, 200);
    let metrics = get(&gw.admin_url("/metrics")).await;
    assert!(String::from_utf8_lossy(metrics.body()).contains("sis_connections_rejected_total 1"));
}

#[test]
fn check_reports_every_problem_with_its_key() {
    let path = temp_path("broken.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "nope"
upstream_timeout = "abc"
[tokens]
algorithm = "HS256"
[[routes]]
path_prefix = "app"
upstream = "ftp://x"
auth = "sometimes"
surprise = 1
"#,
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.listen: ",
        "server.upstream_timeout: ",
        "tokens.algorithm: ",
        "routes[0].path_prefix: ",
        "routes[0].upstream: ",
        "routes[0].auth: ",
        "surprise: unknown key",
    ] {
        assert!(
            stderr.lines().any(|l| l.contains(key)),
            "{key} missing from:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 7, "one line per problem:\n{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_accepts_a_valid_file_and_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml");
    let out = Command::new(binary())
        .args(["check", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let out = Command::new(binary())
        .args(["check", "--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn run_without_a_config_file_names_it() {
    let out = Command::new(binary())
        .args(["run", "--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gateway.toml"));
}

#[test]
fn sigterm_stops_the_process_cleanly() {
    let upstream_addr = "127.0.0.1:9"; // never contacted
    let mut gw = GatewayProcess::spawn(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[cookies]\nrefresh_path = \"/\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"http://{upstream_addr}\"\n"
    ));
    assert!(gw.admin_addr.is_some());
    let status = gw.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_keeps_it_when_invalid() {
    let a = TestUpstream::start_named("a").await;
    let b = TestUpstream::start_named("b").await;
    let config = |upstream: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[cookies]\nrefresh_path = \"/\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"{upstream}\"\n"
        )
    };
    let mut gw = GatewayProcess::spawn(&config(&a.url));
    let upstream_of = |res: &http::Response<bytes::Bytes>| {
        res.headers()["x-upstream"].to_str().unwrap().to_owned()
    };
    assert_eq!(upstream_of(&get(&gw.url("/")).await), "a");

    gw.rewrite_config(&config(&b.url));
    gw.signal("HUP");
    let mut now = String::new();
    for _ in 0..50 {
        now = upstream_of(&get(&gw.url("/")).await);
        if now == "b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(now, "b", "the reloaded route is used");

    // An invalid file is refused; the running config stays.
    gw.rewrite_config("[server]\nlisten = \"nope\"\n");
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream_of(&get(&gw.url("/")).await), "b");
    let metrics = get(&format!("http://{}/metrics", gw.admin_addr.unwrap())).await;
    let text = String::from_utf8_lossy(metrics.body()).into_owned();
    assert!(
        text.contains(r#"sis_config_reloads_total{result="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sis_config_reloads_total{result="invalid"} 1"#),
        "{text}"
    );
    assert!(gw.terminate().success());
}
