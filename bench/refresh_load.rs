//! Refresh load driver for `bench/refresh.sh` (target in the README's Benchmarks section).
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
//! The driver runs on the same cores as the gateway and Redis, so it is kept
//! lean: one thread, raw keep-alive TCP, each request written in one piece
//! from a preformatted head, and just enough response parsing to check the
//! status, find the end of a `Content-Length` body and take
//! `data.refresh_token` out of it.
//!
//! `cargo run --release --example refresh_load -- --gateway 127.0.0.1:8080 \
//!     --admin 127.0.0.1:9901 --admin-token T --client bench`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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
    /// Microseconds the driver lets answers gather before it handles them
    /// (0: wake for every answer). With many connections the gateway keeps
    /// requests queued meanwhile; the pause is part of the latencies.
    #[arg(long, default_value_t = 1000)]
    pace_us: u64,
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
    /// The current refresh token without its `v1:` prefix: base64url, `.` and hex only,
    /// so it goes into a form body as it is.
    token: Vec<u8>,
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
    // One thread: the driver shares the cores with the gateway and Redis,
    // so it should cost as little as it can per call.
    let rt = tokio::runtime::Builder::new_current_thread()
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
        let token = plain_token(t.as_bytes()).with_context(|| {
            "the admin API returned a refresh token that is not v1:<base64url>.<nonce>.V0"
        })?;
        shares[i % args.workers].push(Session {
            token: token.to_vec(),
            alive: true,
        });
    }

    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    let issued = Arc::new(AtomicU64::new(0));
    let args = Arc::new(args);

    // Pacing: the one driver thread sleeps a fixed short while, then handles
    // every answer that arrived meanwhile in one pass (yield_now lets the
    // runtime poll its sockets), instead of being woken once per answer.
    if args.pace_us > 0 {
        let pause = Duration::from_micros(args.pace_us);
        tokio::spawn(async move {
            while Instant::now() < window_end {
                std::thread::sleep(pause);
                tokio::task::yield_now().await;
            }
        });
    }

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
            cpu.push_str(&format!(" cpu_{name}={p:.1}%"));
        }
    }
    if let Some(p) = pct_of(self_before, self_after) {
        cpu.push_str(&format!(" cpu_driver={p:.1}%"));
    }
    let statuses: Vec<String> = total
        .statuses
        .iter()
        .map(|(c, n)| format!("{c}x{n}"))
        .collect();
    println!(
        "result label={} rotations_per_s={:.0} p50_ms={:.2} p99_ms={:.2} ok={} errors={} \
         workers={} sessions={} duration_s={} cpu_window_s={:.3}{}{}",
        args.label,
        rate,
        pct(0.50),
        pct(0.99),
        total.ok,
        total.errors,
        args.workers,
        args.sessions,
        duration,
        wall,
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

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The request line and headers of every refresh call, up to the
/// `Content-Length` value.
fn request_head(args: &Args) -> Vec<u8> {
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: ",
        args.path, args.gateway
    )
    .into_bytes()
}

/// The form body's fixed start: the token's `v1:` prefix, percent-encoded.
const FORM_PREFIX: &[u8] = b"refresh_token=v1%3A";

/// A complete HTTP/1.1 refresh request presenting the token whose base64url
/// part is `token` as a form body (`refresh_token=v1%3A…`), written into
/// `out`. Base64url and `.` need no encoding, so the token is copied as it is.
fn build_request(out: &mut Vec<u8>, head: &[u8], token: &[u8]) {
    out.clear();
    out.extend_from_slice(head);
    push_decimal(out, FORM_PREFIX.len() + token.len());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(FORM_PREFIX);
    out.extend_from_slice(token);
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// One response read off a keep-alive connection.
struct Answer {
    status: u16,
    /// The body, as a range of the read buffer.
    body: std::ops::Range<usize>,
    /// The server will close the connection after this response.
    close: bool,
}

/// Status, `Content-Length` and `Connection: close` of a response head
/// (status line and header lines, ending with the empty line).
fn parse_head(head: &[u8]) -> anyhow::Result<(u16, Option<usize>, bool)> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(decimal)
        .and_then(|code| u16::try_from(code).ok())
        .with_context(|| format!("bad status line {:?}", String::from_utf8_lossy(status_line)))?;
    let mut length = None;
    let mut close = false;
    for line in lines.take_while(|l| !l.is_empty()) {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .context("bad header line")?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(decimal(value).context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            bail!("unexpected Transfer-Encoding in a sign-in answer");
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok((status, length, close))
}

/// A non-empty run of ASCII digits, as a number.
fn decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

/// Where the head in `buf` ends (just past its empty line), looking from
/// `from` on.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from.max(3)..buf.len())
        .find(|&i| {
            buf[i] == b'\n' && buf[i - 1] == b'\r' && buf[i - 2] == b'\n' && buf[i - 3] == b'\r'
        })
        .map(|i| i + 1)
}

/// Reads one response with a `Content-Length` body (what the gateway sends
/// for every sign-in answer) into `buf`.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Answer> {
    let mut filled = 0;
    let mut head = None;
    loop {
        if buf.len() < filled + 4096 {
            buf.resize(filled + 4096, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("connection closed before a complete response");
        }
        let scanned = filled.saturating_sub(3);
        filled += n;
        let (head_len, status, length, close) = match head {
            Some(h) => h,
            None => {
                let Some(head_len) = head_end(&buf[..filled], scanned) else {
                    continue;
                };
                let (status, length, close) = parse_head(&buf[..head_len])?;
                let length = length.context("no Content-Length")?;
                *head.insert((head_len, status, length, close))
            }
        };
        if filled < head_len + length {
            continue;
        }
        if filled > head_len + length {
            bail!("bytes past the end of the response");
        }
        return Ok(Answer {
            status,
            body: head_len..head_len + length,
            close,
        });
    }
}

async fn worker(
    args: &Args,
    mut sessions: Vec<Session>,
    window_start: Instant,
    window_end: Instant,
    issued: &AtomicU64,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut conn: Option<TcpStream> = None;
    let head = request_head(args);
    let mut request = Vec::with_capacity(1024);
    let mut buf = Vec::with_capacity(8192);
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

        let stream = match &mut conn {
            Some(c) => c,
            None => match connect(args.gateway).await {
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

        build_request(&mut request, &head, &sessions[i].token);
        let sent = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            stream.write_all(&request).await?;
            read_response(stream, &mut buf).await
        })
        .await;
        let done = Instant::now();
        let in_window = done >= window_start && done < window_end;

        match outcome {
            Ok(Ok(answer)) => {
                if answer.close {
                    conn = None;
                }
                if answer.status == 200 {
                    match next_token(&buf[answer.body]) {
                        Some(t) => {
                            let token = &mut sessions[i].token;
                            token.clear();
                            token.extend_from_slice(t);
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
                    }
                } else {
                    // 503 leaves the token valid; anything else ends the chain.
                    if answer.status != 503 {
                        sessions[i].alive = false;
                    }
                    if in_window {
                        stats.errors += 1;
                        add_status(&mut stats.statuses, answer.status, 1);
                    }
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

/// The part after `v1:` of `data.refresh_token` of a refresh answer
/// (`{"data":{"access_token":"…","refresh_token":"v1:…"}}`). Tokens are
/// base64url, `.` and hex after `v1:`, so they hold no JSON escapes; anything
/// else is rejected rather than guessed at.
fn next_token(body: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"refresh_token\":\"";
    let body = body.strip_prefix(b"{\"data\":{")?;
    // The keys come out sorted, so the token is normally the last value:
    // look there first, then anywhere.
    let last = body
        .strip_suffix(b"\"}}")
        .and_then(|b| b.iter().rposition(|&c| c == b'"'))
        .filter(|&q| body[..=q].ends_with(KEY))
        .map(|q| q + 1);
    let at = match last {
        Some(at) => at,
        // Quotes are rare in the body: test the key only where one starts.
        None => {
            (0..body.len()).find(|&i| body[i] == b'"' && body[i..].starts_with(KEY))? + KEY.len()
        }
    };
    let rest = &body[at..];
    let len = rest.iter().position(|&b| b == b'"')?;
    plain_token(&rest[..len])
}

/// The part after `v1:` of a token that is `v1:<base64url>.<hex>.V0` (or
/// the earlier `v1:<base64url>`): bytes a form body carries unencoded.
fn plain_token(token: &[u8]) -> Option<&[u8]> {
    let rest = token.strip_prefix(b"v1:")?;
    // Byte by byte without an early exit, so the loop needs no branch per byte.
    let ok = rest
        .iter()
        .fold(!rest.is_empty(), |ok, &b| ok & TOKEN_BYTES[usize::from(b)]);
    ok.then_some(rest)
}

/// The bytes of the base64url alphabet, and the `.` between a token's parts.
const TOKEN_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
        b += 1;
    }
    t
};

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
