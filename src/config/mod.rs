//! `gateway.toml`: the raw file (module `raw`) validated into a typed [`Config`].
//!
//! Validation collects every problem, each naming its key, so `sis-gateway
//! check` can report them all in one run. Defaults are the `DEFAULT_*`
//! constants below.

mod adopt;
mod raw;
mod secret;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::Uri;
use ipnet::IpNet;

pub use adopt::{AdoptConfig, JwksSource};
pub use secret::Secret;

use raw::{RawClient, RawConfig, RawRoute};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
pub const DEFAULT_UPSTREAM_COOLDOWN: Duration = Duration::from_secs(10);
pub const DEFAULT_STORE_URL: &str = "memory://";
pub const DEFAULT_KEY_PREFIX: &str = "sis:";
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);
pub const DEFAULT_ISSUER: &str = "va.gov sign in";
pub const DEFAULT_REFRESH_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_REFRESH_SKEW: Duration = Duration::from_secs(30);
pub const DEFAULT_SESSION_MAX_AGE: Duration = Duration::from_secs(45 * 24 * 3600);
pub const DEFAULT_COOKIE_PREFIX: &str = "vagov_";
pub const DEFAULT_SIGN_IN_PREFIX: &str = "/v0/sign_in";
pub const DEFAULT_FAILURES_PER_MINUTE: u32 = 60;
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);

/// One configuration problem: the key it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem{}",
            self.source_name,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub tokens: TokensConfig,
    pub cookies: CookiesConfig,
    pub sign_in: SignInConfig,
    /// Clients by `client_id`, in file order.
    pub clients: Vec<ClientConfig>,
    pub routes: Vec<RouteConfig>,
    /// The file this came from, for reloads.
    pub path: Option<PathBuf>,
}

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
    /// Runs of `/` in a path are merged into one (SPEC §5a).
    pub merge_slashes: bool,
    /// What becomes of `%2F`, `%5C` and a raw `\` in a path (SPEC §5a).
    pub escaped_slashes: EscapedSlashes,
    /// Request fields whose name holds `_` are forwarded (SPEC §5a).
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

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`; `None` turns the admin API off.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    /// `redis://` or `rediss://`, passed to the client as written.
    Redis(String),
    /// `redis+cluster://h1:p1,h2:p2` (or `rediss+cluster://`): one URL per node.
    Cluster(Vec<String>),
    /// `redis+sentinel://h:p[,h:p]/master`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        tls: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub url: StoreUrl,
    pub key_prefix: String,
    pub timeout: Duration,
    /// PEM bundle of the CA that signed the Redis servers' certificates, for
    /// `rediss://` with a private CA; the system roots otherwise.
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Es256,
    Rs256,
    EdDsa,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Rs256 => "RS256",
            Algorithm::EdDsa => "EdDSA",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub issuer: String,
    pub algorithm: Algorithm,
    /// PEM files; the first signs, all verify. Empty = ephemeral key.
    pub signing_keys: Vec<PathBuf>,
    /// 32-byte secrets; the first seals, all open. Empty = ephemeral.
    pub sealing_keys: Vec<[u8; 32]>,
    pub refresh_grace: Duration,
    pub refresh_skew: Duration,
    pub session_max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Clone)]
pub struct CookiesConfig {
    pub prefix: String,
    pub secure: bool,
    pub same_site: SameSite,
    pub refresh_path: String,
    pub domain: Option<String>,
    pub info_domain: Option<String>,
}

impl CookiesConfig {
    pub fn access_name(&self) -> String {
        format!("{}access_token", self.prefix)
    }
    pub fn refresh_name(&self) -> String {
        format!("{}refresh_token", self.prefix)
    }
    pub fn anti_csrf_name(&self) -> String {
        format!("{}anti_csrf_token", self.prefix)
    }
    pub fn info_name(&self) -> String {
        format!("{}info_token", self.prefix)
    }
}

#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// Without a trailing slash, e.g. `/v0/sign_in`.
    pub path_prefix: String,
    /// Failed sign-in calls per client address per minute before 429; 0 = off.
    pub failures_per_minute: u32,
    /// Exact origins (`scheme://host[:port]`) allowed credentialed CORS.
    pub cors_origins: Vec<String>,
    /// The login service: every path under `path_prefix` that the gateway
    /// does not answer itself goes here (SPEC §8); `None` answers them 404.
    pub upstream: Option<Upstream>,
    /// `[sign_in.adopt]`: the login service's own tokens are adopted.
    pub adopt: Option<AdoptConfig>,
}

impl SignInConfig {
    /// The route that sign-in paths the gateway does not answer are
    /// forwarded on: a `public` route to `upstream`, so they are forwarded
    /// as any public route is (refresh credentials stripped, method, query
    /// and body intact).
    pub fn upstream_route(&self) -> Option<RouteConfig> {
        let upstream = self.upstream.clone()?;
        Some(RouteConfig {
            host: None,
            path_prefix: self.path_prefix.clone(),
            upstreams: vec![upstream],
            auth: AuthMode::Public,
            strip_prefix: false,
            preserve_host: false,
            forward_bearer: false,
            login_url: None,
            max_body: None,
            identity_headers: IdentityHeaders::default(),
            // Sign-in is plain request and response: no tunnel is offered.
            upgrades: Vec::new(),
            name: self.path_prefix.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication {
    Cookie,
    Api,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub client_id: String,
    pub authentication: Authentication,
    pub anti_csrf: bool,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// The `aud` claim; defaults to `[client_id]`.
    pub audience: Vec<String>,
    pub logout_redirect_uri: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Public,
    Session,
    Required,
}

#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user_uuid: HeaderName,
    pub session_handle: HeaderName,
    pub client_id: HeaderName,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            user_uuid: HeaderName::from_static("x-sis-user-uuid"),
            session_handle: HeaderName::from_static("x-sis-session-handle"),
            client_id: HeaderName::from_static("x-sis-client-id"),
        }
    }
}

/// One upstream base: `http://host:port[/base/path]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// As written, for logs and metrics.
    pub name: String,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix prepended to forwarded paths, without a trailing slash ("" for none).
    pub base_path: String,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lower-cased host without port; `None` matches every host.
    pub host: Option<String>,
    /// Starts with `/`.
    pub path_prefix: String,
    pub upstreams: Vec<Upstream>,
    pub auth: AuthMode,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    pub forward_bearer: bool,
    pub login_url: Option<String>,
    pub max_body: Option<u64>,
    pub identity_headers: IdentityHeaders,
    /// Protocols an `Upgrade` may ask for and be tunnelled (lower case,
    /// `name` or `name/version`); others are removed (SPEC §5a).
    pub upgrades: Vec<String>,
    /// A stable name for logs and metrics: `host` + `path_prefix`.
    pub name: String,
}

/// Reads the key material a configuration names. It is read where the keys
/// are built (`tokens`); checking it while validating makes a key file that
/// does not parse a problem of the file, reported by `sis-gateway check`
/// with the others and refused at start and at reload.
pub trait KeyMaterial {
    /// Reads the keys `sign_in.adopt.jwks` names, when they are read at
    /// load (a file). The message of an error is for `sign_in.adopt.jwks`.
    fn check_adopt_jwks(&self, adopt: &AdoptConfig) -> Result<(), String>;
}

/// Reads no key material: what [`Config::parse`] checks with. The keys are
/// then read when the gateway is built from the configuration.
pub struct Unread;

impl KeyMaterial for Unread {
    fn check_adopt_jwks(&self, _: &AdoptConfig) -> Result<(), String> {
        Ok(())
    }
}

impl Config {
    /// Reads and validates a file, with the key material it names.
    pub fn load(path: &Path, keys: &dyn KeyMaterial) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![Problem {
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        let mut config = Config::parse_with(&text, &name, keys)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Validates TOML text; `source_name` names it in errors. Key files are
    /// not read (see [`Config::parse_with`]).
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, source_name, &Unread)
    }

    /// Validates TOML text and the key material it names.
    pub fn parse_with(
        text: &str,
        source_name: &str,
        keys: &dyn KeyMaterial,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_owned(),
            problems,
        };
        let de = toml::Deserializer::parse(text).map_err(|e| fail(vec![toml_problem(text, &e)]))?;
        let mut unknown = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
            .map_err(|e| fail(vec![toml_problem(text, &e)]))?;
        let mut v = Validator::default();
        for key in unknown {
            // serde_ignored writes `?` for the inside of an Option.
            v.problem(key.replace(".?", ""), "unknown key");
        }
        let config = v.config(raw, keys);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(v.problems))
        }
    }

    /// The embedded default: memory store, ephemeral keys, plain-HTTP cookies,
    /// one `web` cookie client, and a single route to `upstream`.
    pub fn dev_default(upstream: &str) -> Config {
        let text = format!(
            r#"
[cookies]
secure = false
refresh_path = "/"
[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = true
[[clients]]
client_id = "mobile"
authentication = "api"
anti_csrf = false
refresh_token_ttl = "45d"
[[routes]]
path_prefix = "/"
upstream = "{upstream}"
auth = "session"
"#
        );
        Config::parse(&text, "(built-in)").expect("built-in config is valid")
    }

    pub fn client(&self, client_id: &str) -> Option<&ClientConfig> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }
}

fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else {
        return Problem {
            key: "(syntax)".into(),
            message,
        };
    };
    let offset = span.start.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    Problem {
        key: key_at(text, offset).unwrap_or_else(|| "(syntax)".into()),
        message: format!("{message} (line {line_no})"),
    }
}

/// The dotted key whose value sits at `offset`: the nearest table header above
/// it plus the key on its line. Used to name the key of a type error.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let table = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(['[', ']']).trim().to_owned())
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.problem(key, format!("invalid duration {s:?}: {e}"));
                    default
                }
            },
        }
    }

    fn positive_duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        let d = self.duration(key, value, default);
        if d.is_zero() {
            self.problem(key, "must be greater than zero");
            return default;
        }
        d
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    key,
                    format!(
                        "invalid address {value:?}: expected host-ip:port, e.g. 127.0.0.1:8080"
                    ),
                );
                None
            }
        }
    }

    fn size(&mut self, key: &str, value: &str) -> Option<u64> {
        match value.trim().parse::<bytesize::ByteSize>() {
            Ok(b) => Some(b.as_u64()),
            Err(e) => {
                self.problem(key, format!("invalid size {value:?}: {e}"));
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig, keys: &dyn KeyMaterial) -> Config {
        let s = raw.server;
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
        let server = ServerConfig {
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
        };

        let admin = AdminConfig {
            token: raw.admin.token.and_then(|t| match Secret::resolve(&t) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.problem("admin.token", e);
                    None
                }
            }),
        };

        let store = StoreConfig {
            // The URL may carry a password, so it may come from env: or file:.
            url: match Secret::resolve(raw.store.url.as_deref().unwrap_or(DEFAULT_STORE_URL)) {
                Ok(url) => parse_store_url(url.expose()).unwrap_or_else(|e| {
                    self.problem("store.url", e);
                    StoreUrl::Memory
                }),
                Err(e) => {
                    self.problem("store.url", e);
                    StoreUrl::Memory
                }
            },
            key_prefix: raw
                .store
                .key_prefix
                .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned()),
            timeout: self.positive_duration(
                "store.timeout",
                raw.store.timeout.as_deref(),
                DEFAULT_STORE_TIMEOUT,
            ),
            tls_ca: raw.store.tls_ca.map(PathBuf::from),
        };
        if let Some(ca) = &store.tls_ca {
            if !ca.is_file() {
                self.problem(
                    "store.tls_ca",
                    format!("no such file {:?}", ca.display().to_string()),
                );
            }
        }
        if store.key_prefix.contains(['{', '}']) {
            self.problem(
                "store.key_prefix",
                "must not contain '{' or '}' (used for hash tags)",
            );
        }

        let t = raw.tokens;
        let algorithm = match t.algorithm.as_deref().unwrap_or("ES256") {
            "ES256" => Algorithm::Es256,
            "RS256" => Algorithm::Rs256,
            "EdDSA" => Algorithm::EdDsa,
            other => {
                self.problem(
                    "tokens.algorithm",
                    format!("unsupported {other:?}: one of ES256, RS256, EdDSA"),
                );
                Algorithm::Es256
            }
        };
        let mut signing_keys = Vec::new();
        for (i, p) in t.signing_keys.unwrap_or_default().into_iter().enumerate() {
            if !Path::new(&p).is_file() {
                self.problem(
                    format!("tokens.signing_keys[{i}]"),
                    format!("no such file {p:?}"),
                );
            }
            signing_keys.push(PathBuf::from(p));
        }
        let mut sealing_keys = Vec::new();
        for (i, spec) in t.sealing_keys.unwrap_or_default().iter().enumerate() {
            let key = format!("tokens.sealing_keys[{i}]");
            match Secret::resolve(spec) {
                Ok(secret) => match decode_sealing_key(secret.expose()) {
                    Some(k) => sealing_keys.push(k),
                    None => self.problem(key, "must be 32 bytes, base64-encoded"),
                },
                Err(e) => self.problem(key, e),
            }
        }
        let tokens = TokensConfig {
            issuer: t.issuer.unwrap_or_else(|| DEFAULT_ISSUER.to_owned()),
            algorithm,
            signing_keys,
            sealing_keys,
            refresh_grace: self.duration(
                "tokens.refresh_grace",
                t.refresh_grace.as_deref(),
                DEFAULT_REFRESH_GRACE,
            ),
            refresh_skew: self.duration(
                "tokens.refresh_skew",
                t.refresh_skew.as_deref(),
                DEFAULT_REFRESH_SKEW,
            ),
            session_max_age: self.positive_duration(
                "tokens.session_max_age",
                t.session_max_age.as_deref(),
                DEFAULT_SESSION_MAX_AGE,
            ),
        };

        let si = raw.sign_in;
        let mut path_prefix = si
            .path_prefix
            .unwrap_or_else(|| DEFAULT_SIGN_IN_PREFIX.to_owned());
        if !path_prefix.starts_with('/') {
            self.problem("sign_in.path_prefix", "must start with '/'");
        }
        while path_prefix.len() > 1 && path_prefix.ends_with('/') {
            path_prefix.pop();
        }
        let failures_per_minute = match si.failures_per_minute {
            None => DEFAULT_FAILURES_PER_MINUTE,
            Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => n as u32,
            Some(n) => {
                self.problem("sign_in.failures_per_minute", format!("out of range: {n}"));
                DEFAULT_FAILURES_PER_MINUTE
            }
        };
        let mut cors_origins = Vec::new();
        for (i, o) in si.cors_origins.unwrap_or_default().into_iter().enumerate() {
            match o.parse::<Uri>() {
                Ok(u)
                    if u.scheme().is_some()
                        && u.authority().is_some()
                        && u.path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
                        && !o.ends_with('/') =>
                {
                    cors_origins.push(o)
                }
                _ => self.problem(
                    format!("sign_in.cors_origins[{i}]"),
                    format!("{o:?} is not an origin like https://www.example.gov (no path, no trailing slash)"),
                ),
            }
        }
        let upstream = si.upstream.and_then(|spec| match parse_upstream(&spec) {
            Ok(u) => Some(u),
            Err(e) => {
                self.problem("sign_in.upstream", e);
                None
            }
        });
        let adopt = self.adopt(si.adopt, upstream.is_some(), keys);
        let sign_in = SignInConfig {
            path_prefix,
            failures_per_minute,
            cors_origins,
            upstream,
            adopt,
        };

        let c = raw.cookies;
        let same_site = match c.same_site.as_deref().unwrap_or("Lax") {
            "Strict" | "strict" => SameSite::Strict,
            "Lax" | "lax" => SameSite::Lax,
            "None" | "none" => SameSite::None,
            other => {
                self.problem(
                    "cookies.same_site",
                    format!("{other:?} is not one of Strict, Lax, None"),
                );
                SameSite::Lax
            }
        };
        let secure = c.secure.unwrap_or(true);
        if same_site == SameSite::None && !secure {
            self.problem(
                "cookies.same_site",
                "SameSite=None requires cookies.secure = true",
            );
        }
        let prefix = c.prefix.unwrap_or_else(|| DEFAULT_COOKIE_PREFIX.to_owned());
        if prefix.is_empty() || !prefix.bytes().all(is_cookie_name_byte) {
            self.problem(
                "cookies.prefix",
                format!("{prefix:?} is not a valid cookie name prefix"),
            );
        }
        let refresh_path = c
            .refresh_path
            .unwrap_or_else(|| format!("{}/refresh", sign_in.path_prefix));
        if !refresh_path.starts_with('/') {
            self.problem("cookies.refresh_path", "must start with '/'");
        }
        let cookies = CookiesConfig {
            prefix,
            secure,
            same_site,
            refresh_path,
            domain: c.domain,
            info_domain: c.info_domain,
        };

        let mut clients: Vec<ClientConfig> = Vec::new();
        for (i, rc) in raw.clients.into_iter().enumerate() {
            if let Some(client) = self.client(i, rc) {
                if clients.iter().any(|c| c.client_id == client.client_id) {
                    self.problem(
                        format!("clients[{i}].client_id"),
                        format!("duplicate client_id {:?}", client.client_id),
                    );
                } else {
                    clients.push(client);
                }
            }
        }

        let mut routes: Vec<RouteConfig> = Vec::new();
        for (i, rr) in raw.routes.into_iter().enumerate() {
            if let Some(route) = self.route(i, rr) {
                if routes
                    .iter()
                    .any(|r| r.host == route.host && r.path_prefix == route.path_prefix)
                {
                    self.problem(
                        format!("routes[{i}]"),
                        format!("duplicate route {}", route.name),
                    );
                } else {
                    routes.push(route);
                }
            }
        }
        for (i, r) in routes.iter().enumerate() {
            if r.auth != AuthMode::Public && !path_covers(&cookies.refresh_path, &r.path_prefix) {
                self.problem(
                    format!("routes[{i}].auth"),
                    format!(
                        "auth = {:?} needs the refresh cookie, but cookies.refresh_path {:?} does not cover path_prefix {:?}; set cookies.refresh_path = \"/\" (or a common prefix)",
                        r.auth, cookies.refresh_path, r.path_prefix
                    ),
                );
            }
            if r.path_prefix.starts_with(&sign_in.path_prefix)
                && path_covers(&sign_in.path_prefix, &r.path_prefix)
            {
                self.problem(
                    format!("routes[{i}].path_prefix"),
                    format!("{:?} is shadowed by sign_in.path_prefix", r.path_prefix),
                );
            }
        }

        Config {
            server,
            admin,
            store,
            tokens,
            cookies,
            sign_in,
            clients,
            routes,
            path: None,
        }
    }

    fn client(&mut self, i: usize, rc: RawClient) -> Option<ClientConfig> {
        let key = |k: &str| format!("clients[{i}].{k}");
        let Some(client_id) = rc.client_id.filter(|c| !c.is_empty()) else {
            self.problem(key("client_id"), "missing");
            return None;
        };
        let authentication = match rc.authentication.as_deref().unwrap_or("cookie") {
            "cookie" => Authentication::Cookie,
            "api" => Authentication::Api,
            other => {
                self.problem(
                    key("authentication"),
                    format!("{other:?} is not one of cookie, api"),
                );
                Authentication::Cookie
            }
        };
        let access_token_ttl = self.positive_duration(
            &key("access_token_ttl"),
            rc.access_token_ttl.as_deref(),
            DEFAULT_ACCESS_TOKEN_TTL,
        );
        let refresh_token_ttl = self.positive_duration(
            &key("refresh_token_ttl"),
            rc.refresh_token_ttl.as_deref(),
            DEFAULT_REFRESH_TOKEN_TTL,
        );
        let audience = rc.audience.unwrap_or_else(|| vec![client_id.clone()]);
        if audience.is_empty() {
            self.problem(key("audience"), "must not be empty");
        }
        if let Some(uri) = &rc.logout_redirect_uri {
            if uri
                .parse::<Uri>()
                .map(|u| u.scheme().is_none())
                .unwrap_or(true)
            {
                self.problem(
                    key("logout_redirect_uri"),
                    format!("{uri:?} is not an absolute URL"),
                );
            }
        }
        Some(ClientConfig {
            client_id,
            authentication,
            anti_csrf: rc.anti_csrf.unwrap_or(false),
            access_token_ttl,
            refresh_token_ttl,
            audience,
            logout_redirect_uri: rc.logout_redirect_uri,
        })
    }

    fn route(&mut self, i: usize, rr: RawRoute) -> Option<RouteConfig> {
        let key = |k: &str| format!("routes[{i}].{k}");
        let path_prefix = rr.path_prefix.unwrap_or_else(|| "/".to_owned());
        if !path_prefix.starts_with('/') {
            self.problem(key("path_prefix"), "must start with '/'");
        }
        let mut specs = Vec::new();
        match (rr.upstream, rr.upstreams) {
            (Some(_), Some(_)) => self.problem(
                key("upstream"),
                "set either upstream or upstreams, not both",
            ),
            (Some(u), None) => specs.push((key("upstream"), u)),
            (None, Some(list)) => {
                if list.is_empty() {
                    self.problem(key("upstreams"), "must not be empty");
                }
                for (j, u) in list.into_iter().enumerate() {
                    specs.push((format!("routes[{i}].upstreams[{j}]"), u));
                }
            }
            (None, None) => self.problem(key("upstream"), "missing: set upstream or upstreams"),
        }
        let mut upstreams = Vec::new();
        for (k, spec) in specs {
            match parse_upstream(&spec) {
                Ok(u) => upstreams.push(u),
                Err(e) => self.problem(k, e),
            }
        }
        let auth = match rr.auth.as_deref().unwrap_or("public") {
            "public" => AuthMode::Public,
            "session" => AuthMode::Session,
            "required" => AuthMode::Required,
            other => {
                self.problem(
                    key("auth"),
                    format!("{other:?} is not one of public, session, required"),
                );
                AuthMode::Public
            }
        };
        let max_body = rr
            .max_body
            .as_deref()
            .and_then(|v| self.size(&key("max_body"), v));
        let mut identity_headers = IdentityHeaders::default();
        for (name, value) in rr.identity_headers.unwrap_or_default() {
            let k = format!("routes[{i}].identity_headers.{name}");
            let Ok(header) = HeaderName::from_bytes(value.as_bytes()) else {
                self.problem(k, format!("{value:?} is not a valid header name"));
                continue;
            };
            match name.as_str() {
                "user_uuid" => identity_headers.user_uuid = header,
                "session_handle" => identity_headers.session_handle = header,
                "client_id" => identity_headers.client_id = header,
                _ => self.problem(
                    k,
                    "unknown key: one of user_uuid, session_handle, client_id",
                ),
            }
        }
        if let Some(login) = &rr.login_url {
            if login.parse::<Uri>().is_err() {
                self.problem(key("login_url"), format!("{login:?} is not a URL"));
            }
        }
        let mut upgrades = Vec::new();
        for (j, p) in rr
            .upgrades
            .unwrap_or_else(|| vec!["websocket".to_owned()])
            .into_iter()
            .enumerate()
        {
            if is_upgrade_protocol(&p) {
                upgrades.push(p.to_ascii_lowercase());
            } else {
                self.problem(
                    format!("routes[{i}].upgrades[{j}]"),
                    format!("{p:?} is not a protocol name like \"websocket\" (RFC 9110 §7.8)"),
                );
            }
        }
        let host = rr.host.map(|h| h.to_ascii_lowercase());
        if upstreams.is_empty() {
            return None;
        }
        Some(RouteConfig {
            name: format!("{}{}", host.as_deref().unwrap_or(""), path_prefix),
            host,
            path_prefix,
            upstreams,
            auth,
            strip_prefix: rr.strip_prefix.unwrap_or(false),
            preserve_host: rr.preserve_host.unwrap_or(false),
            forward_bearer: rr.forward_bearer.unwrap_or(false),
            login_url: rr.login_url,
            max_body,
            identity_headers,
            upgrades,
        })
    }
}

/// `name` or `name/version`, each an RFC 9110 token.
fn is_upgrade_protocol(p: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match p.split_once('/') {
        Some((name, version)) => token(name) && token(version),
        None => token(p),
    }
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"45d"` or `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn decode_sealing_key(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let s = s.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .ok()?;
    bytes.try_into().ok()
}

/// True when a cookie with `Path=cookie_path` is sent for every path under `prefix`
/// (RFC 6265 §5.1.4 path-match).
pub fn path_covers(cookie_path: &str, prefix: &str) -> bool {
    if cookie_path == "/" || cookie_path == prefix {
        return true;
    }
    let cp = cookie_path.trim_end_matches('/');
    prefix == cp || prefix.starts_with(&format!("{cp}/"))
}

fn parse_upstream(spec: &str) -> Result<Upstream, String> {
    let uri: Uri = spec
        .parse()
        .map_err(|e| format!("invalid upstream URL {spec:?}: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("upstream {spec:?} needs a scheme (http:// or https://)"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("upstream {spec:?}: scheme must be http or https"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("upstream {spec:?} needs a host"))?;
    if uri.query().is_some() {
        return Err(format!("upstream {spec:?} must not have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream {
        name: spec.to_owned(),
        scheme,
        authority,
        base_path,
    })
}

fn parse_store_url(url: &str) -> Result<StoreUrl, String> {
    if url == "memory://" || url == "memory" {
        return Ok(StoreUrl::Memory);
    }
    let split = |rest: &str| -> Vec<String> {
        rest.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    for (scheme, tls) in [("redis+cluster://", false), ("rediss+cluster://", true)] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (nodes, _) = rest.split_once('/').unwrap_or((rest, ""));
            let nodes = split(nodes);
            if nodes.is_empty() {
                return Err(format!("{url:?}: no cluster nodes"));
            }
            let base = if tls { "rediss" } else { "redis" };
            return Ok(StoreUrl::Cluster(
                nodes.into_iter().map(|n| format!("{base}://{n}")).collect(),
            ));
        }
    }
    for (scheme, tls) in [("redis+sentinel://", false), ("rediss+sentinel://", true)] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let Some((hosts, master)) = rest.split_once('/') else {
                return Err(format!(
                    "{url:?}: expected redis+sentinel://host:port/master-name"
                ));
            };
            let sentinels = split(hosts);
            if sentinels.is_empty() || master.is_empty() {
                return Err(format!(
                    "{url:?}: expected redis+sentinel://host:port/master-name"
                ));
            }
            return Ok(StoreUrl::Sentinel {
                sentinels: sentinels
                    .into_iter()
                    .map(|n| format!("redis://{n}"))
                    .collect(),
                master: master.to_owned(),
                tls,
            });
        }
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(StoreUrl::Redis(url.to_owned()));
    }
    Err(format!(
        "{url:?}: expected memory://, redis://, rediss://, redis+cluster:// or redis+sentinel://"
    ))
}

#[cfg(test)]
mod tests;
