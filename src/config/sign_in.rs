//! `[sign_in]`: where the sign-in endpoints are, who may call them across
//! origins, and the login service behind them.

use http::Uri;

use super::raw::RawSignIn;
use super::routes::{parse_upstream, AuthMode, IdentityHeaders, RouteConfig, Upstream};
use super::{AdoptConfig, KeyMaterial, Validator};

pub const DEFAULT_SIGN_IN_PREFIX: &str = "/v0/sign_in";
pub const DEFAULT_FAILURES_PER_MINUTE: u32 = 60;

#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// Without a trailing slash, e.g. `/v0/sign_in`.
    pub path_prefix: String,
    /// Failed sign-in calls per client address per minute before 429; 0 = off.
    pub failures_per_minute: u32,
    /// Exact origins (`scheme://host[:port]`) allowed credentialed CORS.
    pub cors_origins: Vec<String>,
    /// The login service: every path under `path_prefix` that the gateway
    /// does not answer itself goes here (README, `[sign_in]`); `None` answers
    /// them 404.
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

impl Validator {
    pub(super) fn sign_in(&mut self, si: RawSignIn, keys: &dyn KeyMaterial) -> SignInConfig {
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
        SignInConfig {
            path_prefix,
            failures_per_minute,
            cors_origins,
            upstream,
            adopt,
        }
    }
}
