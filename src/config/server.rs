//! `[server]`: the listeners, timeouts and limits of connections, and the
//! path rules of the trust boundary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::RawServer;
use super::Validator;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
pub const DEFAULT_UPSTREAM_COOLDOWN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    /// No response head from the upstream within this → 504.
    pub upstream_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub shutdown_grace: Duration,
    /// A client must send its whole request head within this.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Larger request heads are answered 431.
    pub max_header_size: usize,
    /// How long an upstream that refused a connection is skipped.
    pub upstream_cooldown: Duration,
    pub watch_config: bool,
    /// Runs of `/` in a path are merged into one (README, "The trust
    /// boundary").
    pub merge_slashes: bool,
    /// What becomes of `%2F`, `%5C` and a raw `\` in a path (README, "The
    /// trust boundary").
    pub escaped_slashes: EscapedSlashes,
    /// Request fields whose name holds `_` are forwarded (README, "The trust
    /// boundary").
    pub underscores_in_headers: bool,
    pub tls: Option<TlsConfig>,
}

/// `server.escaped_slashes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400 for an encoded `/` or `\`, or a raw `\`, in a path.
    Reject,
    /// Forwarded as they are; routes match on the undecoded path.
    Keep,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Validator {
    pub(super) fn server(&mut self, s: RawServer) -> ServerConfig {
        let listen = s.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = self
            .socket_addr("server.listen", listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap());
        let admin_listen = s
            .admin_listen
            .as_deref()
            .and_then(|a| self.socket_addr("server.admin_listen", a));
        let mut trusted_proxies = Vec::new();
        for (i, p) in s.trusted_proxies.unwrap_or_default().iter().enumerate() {
            match parse_cidr(p) {
                Some(net) => trusted_proxies.push(net),
                None => self.problem(
                    format!("server.trusted_proxies[{i}]"),
                    format!("invalid CIDR or address {p:?}"),
                ),
            }
        }
        let max_connections = match s.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) if n > 0 => n as usize,
            Some(n) => {
                self.problem(
                    "server.max_connections",
                    format!("must be positive, got {n}"),
                );
                DEFAULT_MAX_CONNECTIONS
            }
        };
        let max_header_size = match s.max_header_size.as_deref() {
            None => DEFAULT_MAX_HEADER_SIZE,
            Some(v) => match self.size("server.max_header_size", v) {
                Some(n) if (8192..=16 * 1024 * 1024).contains(&n) => n as usize,
                Some(_) => {
                    self.problem("server.max_header_size", "must be between 8KiB and 16MiB");
                    DEFAULT_MAX_HEADER_SIZE
                }
                None => DEFAULT_MAX_HEADER_SIZE,
            },
        };
        let tls = s.tls.map(|t| {
            if t.cert.is_none() {
                self.problem("server.tls.cert", "missing: PEM certificate chain path");
            }
            if t.key.is_none() {
                self.problem("server.tls.key", "missing: PEM private key path");
            }
            TlsConfig {
                cert: t.cert.unwrap_or_default().into(),
                key: t.key.unwrap_or_default().into(),
            }
        });
        ServerConfig {
            listen,
            admin_listen,
            trusted_proxies,
            upstream_timeout: self.positive_duration(
                "server.upstream_timeout",
                s.upstream_timeout.as_deref(),
                DEFAULT_UPSTREAM_TIMEOUT,
            ),
            upstream_connect_timeout: self.positive_duration(
                "server.upstream_connect_timeout",
                s.upstream_connect_timeout.as_deref(),
                DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            ),
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                s.shutdown_grace.as_deref(),
                DEFAULT_SHUTDOWN_GRACE,
            ),
            header_read_timeout: self.positive_duration(
                "server.header_read_timeout",
                s.header_read_timeout.as_deref(),
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            idle_timeout: self.positive_duration(
                "server.idle_timeout",
                s.idle_timeout.as_deref(),
                DEFAULT_IDLE_TIMEOUT,
            ),
            max_connections,
            max_header_size,
            upstream_cooldown: self.duration(
                "server.upstream_cooldown",
                s.upstream_cooldown.as_deref(),
                DEFAULT_UPSTREAM_COOLDOWN,
            ),
            watch_config: s.watch_config.unwrap_or(false),
            merge_slashes: s.merge_slashes.unwrap_or(true),
            escaped_slashes: match s.escaped_slashes.as_deref().unwrap_or("reject") {
                "reject" => EscapedSlashes::Reject,
                "keep" => EscapedSlashes::Keep,
                other => {
                    self.problem(
                        "server.escaped_slashes",
                        format!("{other:?} is not one of reject, keep"),
                    );
                    EscapedSlashes::Reject
                }
            },
            underscores_in_headers: s.underscores_in_headers.unwrap_or(false),
            tls,
        }
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
