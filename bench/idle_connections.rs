//! Driver for `bench/idle_connections.sh` (target in the README's Benchmarks section: 10,000 idle keep-alive
//! client connections in under 100 MB RSS).
//!
//! Starts a small upstream, runs the gateway binary on a temporary config,
//! opens `--connections` keep-alive connections to it on 127.0.0.1, each
//! completing one request through the proxy, holds them, reads the
//! gateway's VmRSS from /proc, checks a sample still works, and prints the
//! figures. Exits 1 when the gateway's RSS is 100 MB or more.
//!
//! ```text
//! idle_connections [--gateway PATH] [--connections N] [--batch N] [--hold-secs S]
//! ```

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The README's Benchmarks limit for the whole process, in bytes (100 MB).
const LIMIT_BYTES: u64 = 100 * 1000 * 1000;

struct Args {
    gateway: String,
    connections: usize,
    batch: usize,
    hold: Duration,
}

fn args() -> Args {
    let mut a = Args {
        gateway: "target/release/sis-gateway".into(),
        connections: 10_000,
        batch: 500,
        hold: Duration::from_secs(3),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--gateway" => a.gateway = value,
            "--connections" => a.connections = value.parse().expect("--connections N"),
            "--batch" => a.batch = value.parse().expect("--batch N"),
            "--hold-secs" => a.hold = Duration::from_secs(value.parse().expect("--hold-secs S")),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// An upstream that answers every request with a small body.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"idle-bench ok\n",
                    ))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Runs the gateway on a temp config; returns the child and its public address.
fn start_gateway(binary: &str, upstream: SocketAddr, connections: usize) -> (Child, SocketAddr) {
    let dir = std::env::temp_dir().join(format!("sis-idle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
idle_timeout = "10m"
max_connections = {}
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/"
upstream = "http://{upstream}"
auth = "public"
"#,
            connections + 1000
        ),
    )
    .unwrap();
    let mut child = Command::new(binary)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info,access=off")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("public listener ready") {
                if let Some(addr) = line
                    .split("\"addr\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("gateway reports its listener");
    let _ = std::fs::remove_dir_all(&dir);
    (child, addr)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// One keep-alive GET; the status, or an error text.
async fn get(stream: &mut TcpStream) -> Result<u16, String> {
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "bad status line".to_owned());
        }
    }
}

async fn open(addr: SocketAddr, n: usize, batch: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        let k = batch.min(n - conns.len());
        let opened = futures_util::future::join_all((0..k).map(|_| async move {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            match get(&mut s).await? {
                200 => Ok(s),
                other => Err(format!("status {other}")),
            }
        }))
        .await;
        for r in opened {
            conns.push(r.unwrap_or_else(|e| panic!("connection {}: {e}", conns.len())));
        }
    }
    conns
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let upstream = upstream().await;
    let (mut gateway, addr) = start_gateway(&a.gateway, upstream, a.connections);
    let pid = gateway.id();

    // Warm up runtime threads, allocator and the upstream pool.
    drop(open(addr, 200, 100).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kib(pid);

    let started = Instant::now();
    let mut conns = open(addr, a.connections, a.batch).await;
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut held = rss_kib(pid);
    let hold_until = Instant::now() + a.hold;
    while Instant::now() < hold_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        held = held.max(rss_kib(pid));
    }

    // A sample of the idle connections still works.
    let step = (a.connections / 100).max(1);
    let (mut ok, mut sampled) = (0, 0);
    for s in conns.iter_mut().step_by(step) {
        sampled += 1;
        if get(s).await == Ok(200) {
            ok += 1;
        }
    }
    let after_sample = rss_kib(pid);
    drop(conns);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = gateway.kill();
    let _ = gateway.wait();

    let n = a.connections as f64;
    let growth = held.saturating_sub(baseline);
    let pass = held * 1024 < LIMIT_BYTES && ok == sampled;
    println!("idle keep-alive connections: {}", a.connections);
    println!(
        "opened (one request each) in: {:.2} s",
        opened_in.as_secs_f64()
    );
    println!(
        "gateway RSS baseline:          {:>8} KiB ({:.1} MB)",
        baseline,
        baseline as f64 * 1024.0 / 1e6
    );
    println!(
        "gateway RSS holding them:      {:>8} KiB ({:.1} MB)",
        held,
        held as f64 * 1024.0 / 1e6
    );
    println!("gateway RSS after the sample:  {:>8} KiB", after_sample);
    println!(
        "growth per idle connection:    {:>8.2} KiB",
        growth as f64 / n
    );
    println!(
        "total RSS per connection:      {:>8.2} KiB",
        held as f64 / n
    );
    println!("sample of idle connections OK: {ok}/{sampled}");
    println!(
        "target (< 100 MB RSS with {} idle connections): {}",
        a.connections,
        if pass { "PASS" } else { "FAIL" }
    );
    if !pass {
        std::process::exit(1);
    }
}
