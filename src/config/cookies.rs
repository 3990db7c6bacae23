//! `[cookies]`: the names and attributes of the token cookies.

use super::raw::RawCookies;
use super::Validator;

pub const DEFAULT_COOKIE_PREFIX: &str = "vagov_";

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

impl Validator {
    /// `sign_in_prefix`: the default `refresh_path` is under it.
    pub(super) fn cookies(&mut self, c: RawCookies, sign_in_prefix: &str) -> CookiesConfig {
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
            .unwrap_or_else(|| format!("{}/refresh", sign_in_prefix));
        if !refresh_path.starts_with('/') {
            self.problem("cookies.refresh_path", "must start with '/'");
        }
        CookiesConfig {
            prefix,
            secure,
            same_site,
            refresh_path,
            domain: c.domain,
            info_domain: c.info_domain,
        }
    }
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
