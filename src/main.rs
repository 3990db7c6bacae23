//! `sis-gateway`: command line only. Parses arguments, loads the config,
//! starts logging and calls [`sis_gateway::run`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use sis_gateway::config::{Algorithm, Config, Secret, Upstream};
use sis_gateway::tokens::KeyFiles;
use sis_gateway::Listeners;
use tokio::net::TcpListener;

const DEFAULT_CONFIG: &str = "gateway.toml";

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
    /// Write a signing key (PEM) and a sealing key into a directory
    Keygen {
        /// Directory to write into (created when missing; existing files are never overwritten)
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
        /// Access-token signing algorithm
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::Es256)]
        algorithm: KeyAlgorithm,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyAlgorithm {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "EdDSA")]
    EdDsa,
}

impl From<KeyAlgorithm> for Algorithm {
    fn from(a: KeyAlgorithm) -> Algorithm {
        match a {
            KeyAlgorithm::Es256 => Algorithm::Es256,
            KeyAlgorithm::Rs256 => Algorithm::Rs256,
            KeyAlgorithm::EdDsa => Algorithm::EdDsa,
        }
    }
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
        Command::Keygen { dir, algorithm } => keygen(&dir, algorithm.into()),
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
    match Config::load(path, &KeyFiles) {
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

fn keygen(dir: &Path, algorithm: Algorithm) -> anyhow::Result<()> {
    let k = sis_gateway::tokens::keygen(dir, algorithm)?;
    println!("wrote {} (kid {})", k.signing_key.display(), k.kid);
    println!("wrote {}", k.sealing_key.display());
    println!();
    println!("[tokens]");
    println!("algorithm = \"{}\"", algorithm.name());
    println!("signing_keys = [\"{}\"]", k.signing_key.display());
    println!("sealing_keys = [\"file:{}\"]", k.sealing_key.display());
    Ok(())
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
    let config = Config::load(path, &KeyFiles)?;
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
    let file_config = config
        .map(|path| Config::load(path, &KeyFiles))
        .transpose()?;
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
        let admin_token = match &config.admin.token {
            Some(t) => t.expose().to_owned(),
            None => {
                let t = sis_gateway::tokens::random_hex(16);
                config.admin.token = Some(Secret::new(t.clone()));
                t
            }
        };

        println!("sis-gateway demo");
        println!("  demo upstream  {upstream_url}");
        println!("  gateway        http://{listen}/   (open in a browser: the headers the upstream receives)");
        println!("  metrics        http://{admin_addr}/metrics");
        println!("  try:");
        println!(
            "    curl -s http://{listen}/headers -H 'Cookie: {prefix}refresh_token=secret; theme=dark' -H 'X-Sis-User-Uuid: spoofed'"
        );
        println!("    (the upstream sees theme=dark, but neither the refresh cookie nor the spoofed header)");
        let demo_session = tokio::spawn(open_demo_sessions(admin_addr, admin_token, listen, prefix));
        let listeners = Listeners {
            public,
            admin: Some(admin),
        };
        let served = sis_gateway::run(config, listeners, shutdown_signal()).await;
        demo_session.abort();
        served
    })
}

/// Opens two demo sessions through the admin API (an API client and a
/// browser client) and prints the calls that use them.
async fn open_demo_sessions(admin: SocketAddr, token: String, listen: SocketAddr, prefix: String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut opened = Vec::new();
    for client_id in ["mobile", "web"] {
        let body = format!(
            r#"{{"user_uuid":"demo-user","client_id":"{client_id}","user_attributes":{{"first_name":"Demo"}}}}"#
        );
        let req = http::Request::post(format!("http://{admin}/admin/sessions"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::from(body));
        let Ok(req) = req else { return };
        let session = match client.request(req).await {
            Ok(res) => match res.into_body().collect().await {
                Ok(b) => serde_json::from_slice::<serde_json::Value>(&b.to_bytes()).ok(),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let Some(session) = session.filter(|s| s["refresh_token"].is_string()) else {
            tracing::warn!(client_id, "could not open a demo session");
            return;
        };
        opened.push(session);
    }
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    const TOKEN_PARAM: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_');
    let api = &opened[0];
    let web = &opened[1];
    println!();
    println!("demo sessions (user demo-user):");
    println!("  refresh the API client's session (each call rotates; use the refresh_token it returns next):");
    println!(
        "    curl -s -X POST 'http://{listen}/v0/sign_in/refresh?refresh_token={}'",
        percent_encoding::utf8_percent_encode(&text(api, "refresh_token"), TOKEN_PARAM)
    );
    println!("  a browser with only its refresh cookie: the gateway refreshes inline and sets new cookies:");
    println!(
        "    curl -si http://{listen}/ -H 'Cookie: {prefix}refresh_token={}; {prefix}anti_csrf_token={}'",
        text(web, "refresh_token"),
        text(web, "anti_csrf_token")
    );
    println!("  a browser with a valid access cookie: identity headers, no store call:");
    println!(
        "    curl -s http://{listen}/ -H 'Accept: application/json' -H 'Cookie: {prefix}access_token={}'",
        text(web, "access_token")
    );
    println!();
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
