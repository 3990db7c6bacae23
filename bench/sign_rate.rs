//! Raw access-token signing rate: `AccessTokens::sign` in a loop on every
//! core (or `--threads`), with claims shaped like the ones a rotation signs.
//! This is the ceiling a refresh benchmark is compared against (the README's Benchmarks target:
//! RS256 rotations within 80% of what RSA signing alone allows).
//!
//! `cargo run --release --example sign_rate -- --key signing-rs256-….pem`

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use sis_gateway::tokens::{random_hex, token_hash, AccessClaims, AccessTokens};

#[derive(Parser)]
#[command(about = "Access-token signs per second on all cores")]
struct Args {
    /// PEM signing key (ES256, RS256 or EdDSA)
    #[arg(long)]
    key: PathBuf,
    /// Signing threads [default: available cores]
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds of signing after a 0.5 s warm-up
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Upper bound on signatures per thread
    #[arg(long, default_value_t = 10_000_000)]
    max_per_thread: u64,
    /// Name printed with the result line
    #[arg(long, default_value = "sign")]
    label: String,
    /// Clock ticks per second of /proc/self/stat (`getconf CLK_TCK`)
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn claims() -> AccessClaims {
    let now = 1_760_000_000;
    AccessClaims {
        iss: "va.gov sign in".into(),
        aud: vec!["bench".into()],
        client_id: "bench".into(),
        sub: "bench-user-0".into(),
        jti: random_hex(16),
        iat: now,
        exp: now + 300,
        session_handle: "0b6a3c1e-5f2d-4c8e-9a7b-1d2e3f4a5b6c".into(),
        refresh_token_hash: token_hash("v1:successor"),
        parent_refresh_token_hash: Some(token_hash("v1:presented")),
        anti_csrf_token: random_hex(16),
        last_regeneration_time: now,
        version: "V0".into(),
        user_attributes: serde_json::json!({
            "first_name": "Bench", "last_name": "User", "email": "u0@example.gov"
        }),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pem = std::fs::read(&args.key).with_context(|| format!("{}", args.key.display()))?;
    let tokens = AccessTokens::from_pem(&[pem])?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let counted = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_ticks();
    let warmup = Duration::from_millis(500);
    let window = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let tokens = tokens.clone();
            let counted = counted.clone();
            let total = total.clone();
            let max = args.max_per_thread;
            std::thread::spawn(move || {
                let c = claims();
                let mut n = 0u64;
                let mut in_window = 0u64;
                while n < max {
                    std::hint::black_box(tokens.sign(&c).expect("signing"));
                    n += 1;
                    let t = start.elapsed();
                    if t >= warmup + window {
                        break;
                    }
                    if t >= warmup {
                        in_window += 1;
                    }
                }
                counted.fetch_add(in_window, Ordering::Relaxed);
                total.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("signing thread panicked");
    }
    let rate = counted.load(Ordering::Relaxed) as f64 / window.as_secs_f64();
    // CPU time per signature: unlike the rate, not skewed by other processes.
    let cpu_us = match (cpu_before, cpu_ticks()) {
        (Some(a), Some(b)) => {
            let secs = (b - a) as f64 / args.clk_tck as f64;
            format!(
                " cpu_us_per_sign={:.1}",
                secs * 1e6 / total.load(Ordering::Relaxed) as f64
            )
        }
        _ => String::new(),
    };
    println!(
        "result label={} algorithm={} signs_per_s={:.0} threads={} duration_s={}{}",
        args.label,
        tokens.algorithm().name(),
        rate,
        threads,
        args.duration,
        cpu_us
    );
    Ok(())
}
