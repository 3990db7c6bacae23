//! The TOML file as written: every section optional, every value still a
//! string where it needs parsing, so validation can report all problems at once.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawConfig {
    pub(crate) server: RawServer,
    pub(crate) admin: RawAdmin,
    pub(crate) store: RawStore,
    pub(crate) tokens: RawTokens,
    pub(crate) cookies: RawCookies,
    pub(crate) sign_in: RawSignIn,
    pub(crate) clients: Vec<RawClient>,
    pub(crate) routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<String>,
    pub(crate) admin_listen: Option<String>,
    pub(crate) trusted_proxies: Option<Vec<String>>,
    pub(crate) upstream_timeout: Option<String>,
    pub(crate) upstream_connect_timeout: Option<String>,
    pub(crate) shutdown_grace: Option<String>,
    pub(crate) header_read_timeout: Option<String>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) max_connections: Option<i64>,
    pub(crate) max_header_size: Option<String>,
    pub(crate) upstream_cooldown: Option<String>,
    pub(crate) watch_config: Option<bool>,
    pub(crate) merge_slashes: Option<bool>,
    pub(crate) escaped_slashes: Option<String>,
    pub(crate) underscores_in_headers: Option<bool>,
    pub(crate) tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawTls {
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawAdmin {
    pub(crate) token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawStore {
    pub(crate) url: Option<String>,
    pub(crate) key_prefix: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) tls_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawTokens {
    pub(crate) issuer: Option<String>,
    pub(crate) algorithm: Option<String>,
    pub(crate) signing_keys: Option<Vec<String>>,
    pub(crate) sealing_keys: Option<Vec<String>>,
    pub(crate) refresh_grace: Option<String>,
    pub(crate) refresh_skew: Option<String>,
    pub(crate) session_max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawCookies {
    pub(crate) prefix: Option<String>,
    pub(crate) secure: Option<bool>,
    pub(crate) same_site: Option<String>,
    pub(crate) refresh_path: Option<String>,
    pub(crate) domain: Option<String>,
    pub(crate) info_domain: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawSignIn {
    pub(crate) path_prefix: Option<String>,
    pub(crate) failures_per_minute: Option<i64>,
    pub(crate) cors_origins: Option<Vec<String>>,
    pub(crate) upstream: Option<String>,
    pub(crate) adopt: Option<RawAdopt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawAdopt {
    pub(crate) jwks: Option<String>,
    pub(crate) ca: Option<String>,
    pub(crate) issuer: Option<String>,
    pub(crate) migrate: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawClient {
    pub(crate) client_id: Option<String>,
    pub(crate) authentication: Option<String>,
    pub(crate) anti_csrf: Option<bool>,
    pub(crate) access_token_ttl: Option<String>,
    pub(crate) refresh_token_ttl: Option<String>,
    pub(crate) audience: Option<Vec<String>>,
    pub(crate) logout_redirect_uri: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawRoute {
    pub(crate) host: Option<String>,
    pub(crate) path_prefix: Option<String>,
    pub(crate) upstream: Option<String>,
    pub(crate) upstreams: Option<Vec<String>>,
    pub(crate) auth: Option<String>,
    pub(crate) strip_prefix: Option<bool>,
    pub(crate) preserve_host: Option<bool>,
    pub(crate) forward_bearer: Option<bool>,
    pub(crate) login_url: Option<String>,
    pub(crate) max_body: Option<String>,
    pub(crate) identity_headers: Option<BTreeMap<String, String>>,
    pub(crate) upgrades: Option<Vec<String>>,
}
