//! `[[routes]]`: which requests go to which upstreams, and how each route
//! authenticates them.

use http::header::HeaderName;
use http::Uri;

use super::cookies::path_covers;
use super::raw::RawRoute;
use super::Validator;

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
    /// `name` or `name/version`); others are removed (README, "The trust
    /// boundary").
    pub upgrades: Vec<String>,
    /// A stable name for logs and metrics: `host` + `path_prefix`.
    pub name: String,
}

impl Validator {
    pub(super) fn routes(&mut self, raw: Vec<RawRoute>) -> Vec<RouteConfig> {
        let mut routes: Vec<RouteConfig> = Vec::new();
        for (i, rr) in raw.into_iter().enumerate() {
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
        routes
    }

    /// What a route needs of the other sections: the refresh cookie sent on
    /// its paths, and paths the sign-in endpoints do not shadow.
    pub(super) fn route_paths(
        &mut self,
        routes: &[RouteConfig],
        refresh_path: &str,
        sign_in_prefix: &str,
    ) {
        for (i, r) in routes.iter().enumerate() {
            if r.auth != AuthMode::Public && !path_covers(refresh_path, &r.path_prefix) {
                self.problem(
                    format!("routes[{i}].auth"),
                    format!(
                        "auth = {:?} needs the refresh cookie, but cookies.refresh_path {:?} does not cover path_prefix {:?}; set cookies.refresh_path = \"/\" (or a common prefix)",
                        r.auth, refresh_path, r.path_prefix
                    ),
                );
            }
            if r.path_prefix.starts_with(sign_in_prefix)
                && path_covers(sign_in_prefix, &r.path_prefix)
            {
                self.problem(
                    format!("routes[{i}].path_prefix"),
                    format!("{:?} is shadowed by sign_in.path_prefix", r.path_prefix),
                );
            }
        }
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

pub(super) fn parse_upstream(spec: &str) -> Result<Upstream, String> {
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
