//! `[[clients]]`: the clients that sign in, how each holds its tokens, and
//! their lifetimes.

use std::time::Duration;

use http::Uri;

use super::raw::RawClient;
use super::Validator;

pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);

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

impl Validator {
    pub(super) fn clients(&mut self, raw: Vec<RawClient>) -> Vec<ClientConfig> {
        let mut clients: Vec<ClientConfig> = Vec::new();
        for (i, rc) in raw.into_iter().enumerate() {
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
        clients
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
}
