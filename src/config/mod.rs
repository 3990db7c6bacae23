//! `gateway.toml`: the raw file (module `raw`) validated into a typed [`Config`].
//!
//! Validation collects every problem, each naming its key, so `sis-gateway
//! check` can report them all in one run. Each section has its own module,
//! holding its typed form, its defaults (the `DEFAULT_*` constants) and its
//! validation; this one reads the file and validates the sections in order.

mod admin;
mod adopt;
mod clients;
mod cookies;
mod raw;
mod routes;
mod secret;
mod server;
mod sign_in;
mod store;
mod tokens;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use admin::AdminConfig;
pub use adopt::{AdoptConfig, JwksSource};
pub use clients::{
    Authentication, ClientConfig, DEFAULT_ACCESS_TOKEN_TTL, DEFAULT_REFRESH_TOKEN_TTL,
};
pub use cookies::{path_covers, CookiesConfig, SameSite, DEFAULT_COOKIE_PREFIX};
pub use routes::{AuthMode, IdentityHeaders, RouteConfig, Upstream};
pub use secret::Secret;
pub use server::{
    EscapedSlashes, ServerConfig, TlsConfig, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_SIZE, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_UPSTREAM_CONNECT_TIMEOUT, DEFAULT_UPSTREAM_COOLDOWN, DEFAULT_UPSTREAM_TIMEOUT,
};
pub use sign_in::{SignInConfig, DEFAULT_FAILURES_PER_MINUTE, DEFAULT_SIGN_IN_PREFIX};
pub use store::{
    StoreConfig, StoreUrl, DEFAULT_KEY_PREFIX, DEFAULT_STORE_TIMEOUT, DEFAULT_STORE_URL,
};
pub use tokens::{
    Algorithm, TokensConfig, DEFAULT_ISSUER, DEFAULT_REFRESH_GRACE, DEFAULT_REFRESH_SKEW,
    DEFAULT_SESSION_MAX_AGE,
};

use raw::RawConfig;

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

/// Reads the key material a configuration names. It is read where the keys
/// are built (`tokens`); checking it while validating makes a key file that
/// does not parse a problem of the file, reported by `sis-gateway check`
/// with the others and refused at start and at reload.
pub trait KeyMaterial {
    /// Reads the keys `sign_in.adopt.jwks` names, when they are read at
    /// load (a file). The message of an error is for `sign_in.adopt.jwks`.
    fn check_adopt_jwks(&self, adopt: &AdoptConfig) -> Result<(), KeyMaterialError>;
}

/// Why key material is unusable, as the module that reads it says.
pub type KeyMaterialError = Box<dyn std::error::Error + Send + Sync>;

/// Reads no key material: what [`Config::parse`] checks with. The keys are
/// then read when the gateway is built from the configuration.
pub struct Unread;

impl KeyMaterial for Unread {
    fn check_adopt_jwks(&self, _: &AdoptConfig) -> Result<(), KeyMaterialError> {
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
        let raw: RawConfig = serde_ignored::deserialize(de, |path| unknown.push(key_of(&path)))
            .map_err(|e| fail(vec![toml_problem(text, &e)]))?;
        let mut v = Validator::default();
        for key in unknown {
            v.problem(key, "unknown key");
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
        let server = self.server(raw.server);
        let admin = self.admin(raw.admin);
        let store = self.store(raw.store);
        let tokens = self.tokens(raw.tokens);
        let sign_in = self.sign_in(raw.sign_in, keys);
        let cookies = self.cookies(raw.cookies, &sign_in.path_prefix);
        let clients = self.clients(raw.clients);
        let routes = self.routes(raw.routes);
        self.route_paths(&routes, &cookies.refresh_path, &sign_in.path_prefix);

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
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"45d"` or `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

/// An ignored key's path as every other problem names its key:
/// `routes[0].prefix`, with the insides of options left out.
fn key_of(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_of(parent)),
        Path::Map { parent, key } => match key_of(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_of(parent),
    }
}

#[cfg(test)]
mod tests;
