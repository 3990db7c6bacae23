//! Starts the gateway for tests: in-process ([`TestGateway`], on its own
//! runtime thread) or as the built binary ([`GatewayProcess`]), with both
//! listeners on ephemeral loopback ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sis_gateway::config::Config;
use sis_gateway::Listeners;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub use super::raw::{parse_raw, read_until_closed, RawResponse};

/// A config as TOML text or already validated.
pub trait IntoConfig {
    fn into_config(self) -> Config;
}

impl IntoConfig for Config {
    fn into_config(self) -> Config {
        self
    }
}

impl IntoConfig for &str {
    fn into_config(self) -> Config {
        Config::parse(self, "test").unwrap_or_else(|e| panic!("test config invalid: {e}"))
    }
}

impl IntoConfig for String {
    fn into_config(self) -> Config {
        self.as_str().into_config()
    }
}

/// The gateway running in this process, on a runtime of its own (2 worker
/// threads) so a test's own runtime cannot stall it.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<Result<(), String>>>,
}

impl TestGateway {
    pub fn start(config: impl IntoConfig) -> TestGateway {
        let config = config.into_config();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let result = rt.block_on(async move {
                let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx
                    .send((public.local_addr().unwrap(), admin.local_addr().unwrap()))
                    .unwrap();
                let listeners = Listeners {
                    public,
                    admin: Some(admin),
                };
                sis_gateway::run(config, listeners, async {
                    let _ = shutdown_rx.await;
                })
                .await
            });
            let _ = done_tx.send(result.map_err(|e| format!("{e:#}")));
        });
        let (addr, admin_addr) = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("gateway started");
        TestGateway {
            addr,
            admin_addr,
            shutdown: Some(shutdown_tx),
            done: Some(done_rx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// Resolves the shutdown future given to `run`.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (blocking) until `run` has returned, and returns its result.
    pub fn wait(&mut self, timeout: Duration) -> Result<(), String> {
        let rx = self.done.take().expect("wait once");
        rx.recv_timeout(timeout)
            .map_err(|e| format!("gateway did not stop: {e}"))?
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// The built binary running as a child process, logging JSON.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    config_path: PathBuf,
}

/// A config with one public route `/` to `upstream` and a 2 s upstream
/// timeout.
pub fn one_route(upstream: &str) -> String {
    format!(
        r#"
[server]
upstream_timeout = "2s"
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/"
upstream = "{upstream}"
"#
    )
}

/// A fresh path under the system temp dir.
pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "sis-gateway-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sis-gateway")
}

impl GatewayProcess {
    /// Writes `config` to a temp file and runs `sis-gateway run` on it. The
    /// config should listen on `127.0.0.1:0`; the bound addresses are read
    /// from the log.
    pub fn spawn(config: &str) -> GatewayProcess {
        let config_path = temp_path("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(binary())
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sis-gateway");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the gateway never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let addr = v
                    .get("addr")
                    .and_then(|a| a.as_str())
                    .and_then(|a| a.parse().ok());
                match (v.get("message").and_then(|m| m.as_str()), addr) {
                    (Some("public listener ready"), Some(a)) => {
                        let _ = tx.send((true, a));
                    }
                    (Some("admin listener ready"), Some(a)) => {
                        let _ = tx.send((false, a));
                    }
                    _ => {}
                }
            }
        });
        let (mut addr, mut admin_addr) = (None, None);
        let has_admin = config.contains("admin_listen");
        while addr.is_none() || (has_admin && admin_addr.is_none()) {
            let (public, a): (bool, SocketAddr) = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("gateway process reports its listeners");
            if public {
                addr = Some(a);
            } else {
                admin_addr = Some(a);
            }
        }
        GatewayProcess {
            child,
            addr: addr.unwrap(),
            admin_addr,
            config_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        let admin = self.admin_addr.expect("config sets server.admin_listen");
        format!("http://{admin}{path}")
    }

    /// Replaces the config file the process was started with.
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Resident memory of the process in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("gateway did not exit after SIGTERM");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// A plain HTTP/1 client for tests.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends `req` and collects the response body.
pub async fn send(req: Request<Full<Bytes>>) -> Response<Bytes> {
    let res = client().request(req).await.expect("request sent");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Response::from_parts(parts, body)
}

pub async fn get(url: &str) -> Response<Bytes> {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

/// Writes `request` as is and reads until the server closes the connection
/// (send `Connection: close`): the response as [`parse_raw`] takes it.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let (buf, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    parse_raw(&buf)
}

/// Headers an echoing test upstream received, lower-cased names.
pub fn echoed_headers(json: &serde_json::Value) -> Vec<(String, String)> {
    json["headers"]
        .as_array()
        .expect("headers array")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn echoed<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

impl GatewayProcess {
    /// The config file the process was started with (rewrite it, then
    /// SIGHUP, to reload).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

/// Replaces the file at `path` with `contents` in one step (write a sibling,
/// then rename), so a reader never sees it half written.
pub fn replace_file(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp-replace");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
