//! Refresh load driver for `bench/refresh.sh` (SPEC §7).
//!
//! Opens `--sessions` sessions through the admin API, then runs `--workers`
//! workers, each on its own keep-alive HTTP/1.1 connection, each owning a
//! share of the sessions and chaining refreshes: every call presents the
//! refresh token the previous call on that session returned. A 200 counts as
//! a rotation; anything else is an error, and its session is dropped (a
//! broken chain would only produce theft errors from then on).
//!
//! Only calls that complete inside the measurement window (after the warm-up)
//! count. Every loop is bounded both in time and in count.
//!
//! `cargo run --release --example refresh_load -- --gateway 127.0.0.1:8080 \
//!     --admin 127.0.0.1:9901 --admin-token T --client bench`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "Chained refresh-token rotations against a running gateway")]
struct Args {
    /// Public listener of the gateway
    #[arg(long)]
    gateway: SocketAddr,
    /// Admin listener of the gateway
    #[arg(long)]
    admin: SocketAddr,
    #[arg(long)]
    admin_token: String,
    /// An `api` client without anti-CSRF
    #[arg(long, default_value = "bench")]
    client: String,
    /// Refresh endpoint path
    #[arg(long, default_value = "/v0/sign_in/refresh")]
    path: String,
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Concurrent workers, one connection each
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Seconds of load before the measurement window
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds of the measurement window
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Upper bound on refresh calls over the whole run
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Name printed with the result line
    #[arg(long, default_value = "run")]
    label: String,
    /// `name=PID` of a process whose CPU use over the window is reported
    #[arg(long = "pid")]
    pids: Vec<String>,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`)
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

struct Session {
    refresh_token: String,
    alive: bool,
}

#[derive(Default)]
struct WorkerStats {
    ok: u64,
    errors: u64,
    /// Microseconds of each call counted in the window.
    latencies_us: Vec<u32>,
    /// status → count, for calls in the window that were not 200; 0 is a
    /// transport error, 1 no answer within 5 s.
    statuses: Vec<(u16, u64)>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.workers == 0 || args.sessions < args.workers {
        bail!("need at least one session per worker (--sessions >= --workers > 0)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let created = Instant::now();
    let tokens = open_sessions(&args).await?;
    eprintln!(
        "[{}] opened {} sessions in {:.1}s",
        args.label,
        tokens.len(),
        created.elapsed().as_secs_f64()
    );

    let mut shares: Vec<Vec<Session>> = (0..args.workers).map(|_| Vec::new()).collect();
    for (i, t) in tokens.into_iter().enumerate() {
        shares[i % args.workers].push(Session {
            refresh_token: t,
            alive: true,
        });
    }

    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    let issued = Arc::new(AtomicU64::new(0));
    let args = Arc::new(args);

    let mut tasks = Vec::with_capacity(args.workers);
    for share in shares {
        let args = args.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            worker(&args, share, window_start, window_end, &issued).await
        }));
    }

    // CPU of the watched processes over the window.
    let watched = parse_pids(&args.pids)?;
    tokio::time::sleep_until(window_start.into()).await;
    let cpu_before: Vec<Option<u64>> = watched.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let self_before = cpu_ticks(std::process::id());
    let measured_from = Instant::now();
    tokio::time::sleep_until(window_end.into()).await;
    let cpu_after: Vec<Option<u64>> = watched.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let self_after = cpu_ticks(std::process::id());
    let wall = measured_from.elapsed().as_secs_f64();

    let mut total = WorkerStats::default();
    for t in tasks {
        let s = t.await.context("worker panicked")?;
        total.ok += s.ok;
        total.errors += s.errors;
        total.latencies_us.extend(s.latencies_us);
        for (code, n) in s.statuses {
            add_status(&mut total.statuses, code, n);
        }
    }
    total.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if total.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((total.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(total.latencies_us[i]) / 1000.0
    };
    let duration = args.duration;
    let rate = total.ok as f64 / duration;

    let mut cpu = String::new();
    let pct_of = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
        Some((b? - a?) as f64 / args.clk_tck as f64 / wall * 100.0)
    };
    for (i, (name, _)) in watched.iter().enumerate() {
        if let Some(p) = pct_of(cpu_before[i], cpu_after[i]) {
            cpu.push_str(&format!(" cpu_{name}={p:.0}%"));
        }
    }
    if let Some(p) = pct_of(self_before, self_after) {
        cpu.push_str(&format!(" cpu_driver={p:.0}%"));
    }
    let statuses: Vec<String> = total
        .statuses
        .iter()
        .map(|(c, n)| format!("{c}x{n}"))
        .collect();
    println!(
        "result label={} rotations_per_s={:.0} p50_ms={:.2} p99_ms={:.2} ok={} errors={} \
         workers={} sessions={} duration_s={}{}{}",
        args.label,
        rate,
        pct(0.50),
        pct(0.99),
        total.ok,
        total.errors,
        args.workers,
        args.sessions,
        duration,
        cpu,
        if statuses.is_empty() {
            String::new()
        } else {
            format!(" error_statuses={}", statuses.join(","))
        },
    );
    if total.ok == 0 {
        bail!("no successful rotation in the window");
    }
    Ok(())
}

/// Opens the sessions through the admin API, 32 calls at a time.
async fn open_sessions(args: &Args) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let url = format!("http://{}/admin/sessions", args.admin);
    let mut out = Vec::with_capacity(args.sessions);
    let mut next = 0usize;
    while next < args.sessions {
        let batch = (args.sessions - next).min(32);
        let calls = (next..next + batch).map(|i| {
            let http = http.clone();
            let url = url.clone();
            let body = serde_json::json!({
                "user_uuid": format!("bench-user-{i}"),
                "client_id": args.client,
                "user_attributes": {"first_name": "Bench", "last_name": "User", "email": format!("u{i}@example.gov")},
            });
            async move {
                let res = http
                    .post(url)
                    .bearer_auth(&args.admin_token)
                    .json(&body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await?;
                let status = res.status();
                let v: serde_json::Value = res.json().await?;
                if status != reqwest::StatusCode::CREATED {
                    bail!("admin API answered {status}: {v}");
                }
                v["refresh_token"]
                    .as_str()
                    .map(str::to_owned)
                    .context("no refresh_token in the admin API answer")
            }
        });
        for r in futures_util::future::join_all(calls).await {
            out.push(r?);
        }
        next += batch;
    }
    Ok(out)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn worker(
    args: &Args,
    mut sessions: Vec<Session>,
    window_start: Instant,
    window_end: Instant,
    issued: &AtomicU64,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    let host = args.gateway.to_string();
    let mut next = 0usize;
    loop {
        if Instant::now() >= window_end
            || issued.fetch_add(1, Ordering::Relaxed) >= args.max_requests
        {
            break;
        }
        let Some(i) = (0..sessions.len())
            .map(|k| (next + k) % sessions.len())
            .find(|&i| sessions[i].alive)
        else {
            break;
        };
        next = i + 1;

        let send = match &mut conn {
            Some(c) if !c.is_closed() => c,
            _ => match connect(args.gateway).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    if Instant::now() >= window_start {
                        stats.errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };

        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("refresh_token", &sessions[i].refresh_token)
            .finish();
        let req = Request::builder()
            .method(Method::POST)
            .uri(args.path.as_str())
            .header(header::HOST, host.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");

        let sent = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            let res = send.send_request(req).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        })
        .await;
        let done = Instant::now();
        let in_window = done >= window_start && done < window_end;

        match outcome {
            Ok(Ok((StatusCode::OK, body))) => match next_token(&body) {
                Some(t) => {
                    sessions[i].refresh_token = t;
                    if in_window {
                        stats.ok += 1;
                        let us = (done - sent).as_micros().min(u128::from(u32::MAX)) as u32;
                        stats.latencies_us.push(us);
                    }
                }
                None => {
                    sessions[i].alive = false;
                    if in_window {
                        stats.errors += 1;
                        add_status(&mut stats.statuses, 200, 1);
                    }
                }
            },
            Ok(Ok((status, _))) => {
                // 503 leaves the token valid; anything else ends the chain.
                if status != StatusCode::SERVICE_UNAVAILABLE {
                    sessions[i].alive = false;
                }
                if in_window {
                    stats.errors += 1;
                    add_status(&mut stats.statuses, status.as_u16(), 1);
                }
            }
            Ok(Err(e)) => {
                // The response was lost: the token may or may not have been
                // rotated; the replay window makes a retry safe, so keep it.
                conn = None;
                if in_window {
                    if stats.errors == 0 {
                        eprintln!("[{}] transport error: {e:#}", args.label);
                    }
                    stats.errors += 1;
                    add_status(&mut stats.statuses, 0, 1);
                }
            }
            Err(_) => {
                // No answer in 5 s; as above, the token is kept.
                conn = None;
                if in_window {
                    stats.errors += 1;
                    add_status(&mut stats.statuses, 1, 1);
                }
            }
        }
    }
    stats
}

fn next_token(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["data"]["refresh_token"].as_str().map(str::to_owned)
}

fn add_status(statuses: &mut Vec<(u16, u64)>, code: u16, n: u64) {
    match statuses.iter_mut().find(|(c, _)| *c == code) {
        Some((_, count)) => *count += n,
        None => statuses.push((code, n)),
    }
}

fn parse_pids(specs: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    specs
        .iter()
        .map(|s| {
            let (name, pid) = s.split_once('=').context("--pid takes name=PID")?;
            Ok((
                name.to_owned(),
                pid.parse().context("--pid takes name=PID")?,
            ))
        })
        .collect()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
