//! `sis-gateway`: command line only. Parses arguments, loads the config,
//! starts logging and calls [`sis_gateway::run`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use sis_gateway::config::{Config, Upstream};
use sis_gateway::Listeners;
use tokio::net::TcpListener;

const DEFAULT_CONFIG: &str = "gateway.toml";

/// Requests allocate many small, short-lived buffers across worker threads;
/// mimalloc serves them faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sis-gateway",
    version,
    about = "Reverse-proxy auth gateway for Sign-in Service sessions"
)]
struct Cli {
    /// Configuration file [default: gateway.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log output format; the level comes from RUST_LOG (default: info)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured listeners (the default command)
    Run,
    /// Validate a configuration file: prints every problem as `key: message`
    Check,
    /// Start a demo upstream and the gateway in front of it
    Demo {
        /// Public listener of the demo gateway
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    // `keygen` (signing and sealing keys) is added here.
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Check => return check(cli.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG))),
        Command::Run => {
            let path = cli.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            run(&path, cli.log_format)
        }
        Command::Demo { listen } => demo(cli.config.as_deref(), listen, cli.log_format),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sis-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            for problem in &e.problems {
                eprintln!("{problem}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Keeps the non-blocking log writer flushing until dropped.
type LogGuard = tracing_appender::non_blocking::WorkerGuard;

fn init_logging(format: LogFormat) -> LogGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// The control runtime: listeners, the admin API, signals, reloads. Client
/// connections are served by the gateway's worker threads.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(path: &Path, log_format: LogFormat) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let _guard = init_logging(log_format);
    runtime()?.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        sis_gateway::run(config, listeners, shutdown_signal()).await
    })
}

/// The demo: the built-in upstream on an ephemeral port and the gateway in
/// front of it, with `Config::dev_default` (or the given file with every
/// route pointed at the demo upstream), the admin listener on an ephemeral
/// port.
fn demo(config: Option<&Path>, listen: SocketAddr, log_format: LogFormat) -> anyhow::Result<()> {
    let file_config = config.map(Config::load).transpose()?;
    let _guard = init_logging(log_format);
    runtime()?.block_on(async {
        let upstream_listener = TcpListener::bind("127.0.0.1:0").await?;
        let upstream_addr = upstream_listener.local_addr()?;
        tokio::spawn(sis_gateway::demo::serve_demo_upstream(upstream_listener));
        let upstream_url = format!("http://{upstream_addr}");

        let mut config = match file_config {
            Some(mut c) => {
                let upstream = Upstream {
                    name: upstream_url.clone(),
                    scheme: http::uri::Scheme::HTTP,
                    authority: upstream_addr.to_string().parse()?,
                    base_path: String::new(),
                };
                for route in &mut c.routes {
                    route.upstreams = vec![upstream.clone()];
                }
                c
            }
            None => Config::dev_default(&upstream_url),
        };
        config.server.listen = listen;
        let public = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind {listen} (choose another with --listen)"))?;
        let admin_addr = config.server.admin_listen.unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
        let admin = TcpListener::bind(admin_addr).await?;
        let admin_addr = admin.local_addr()?;
        let prefix = config.cookies.prefix.clone();

        println!("sis-gateway demo");
        println!("  demo upstream  {upstream_url}");
        println!("  gateway        http://{listen}/   (open in a browser: the headers the upstream receives)");
        println!("  metrics        http://{admin_addr}/metrics");
        println!("  try:");
        println!(
            "    curl -s http://{listen}/headers -H 'Cookie: {prefix}refresh_token=secret; theme=dark' -H 'X-Sis-User-Uuid: spoofed'"
        );
        println!("    (the upstream sees theme=dark, but neither the refresh cookie nor the spoofed header)");
        println!("  Ctrl-C stops.");

        let listeners = Listeners {
            public,
            admin: Some(admin),
        };
        sis_gateway::run(config, listeners, shutdown_signal()).await
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
