//! The four `vagov_` cookies (README, The sign-in endpoints) and the info
//! token's format.

use cookie::{Cookie, Expiration, SameSite as CookieSameSite};
use http::HeaderValue;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use time::{format_description::FormatItem, macros::format_description, OffsetDateTime};

use crate::config::{CookiesConfig, SameSite};

/// RFC 3986 unreserved characters stay; everything else is encoded, which is
/// what `decodeURIComponent` in the front ends undoes.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

const ISO_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// What the cookies of one rotation carry.
pub struct Issued<'a> {
    pub access_token: &'a str,
    pub refresh_token: &'a str,
    /// `Some` for anti-CSRF clients only.
    pub anti_csrf_token: Option<&'a str>,
    pub access_exp_ms: u64,
    pub refresh_exp_ms: u64,
}

/// `2024-06-06T18:09:35.946Z`.
pub fn iso_millis(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.format(ISO_MILLIS).unwrap_or_default()
}

/// The info token's value: URL-encoded JSON the page's JavaScript reads.
pub fn info_value(access_exp_ms: u64, refresh_exp_ms: u64) -> String {
    let json = serde_json::json!({
        "access_token_expiration": iso_millis(access_exp_ms),
        "refresh_token_expiration": iso_millis(refresh_exp_ms),
    })
    .to_string();
    utf8_percent_encode(&json, URI_COMPONENT).to_string()
}

fn same_site(s: SameSite) -> CookieSameSite {
    match s {
        SameSite::Strict => CookieSameSite::Strict,
        SameSite::Lax => CookieSameSite::Lax,
        SameSite::None => CookieSameSite::None,
    }
}

fn expires_at(ms: u64) -> Expiration {
    Expiration::DateTime(
        OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    )
}

#[derive(Clone, Copy)]
enum Kind {
    Access,
    Refresh,
    AntiCsrf,
    Info,
}

fn build(cfg: &CookiesConfig, kind: Kind, value: String, expires: Expiration) -> HeaderValue {
    let (name, path, domain, http_only) = match kind {
        Kind::Access => (cfg.access_name(), "/", cfg.domain.as_deref(), true),
        Kind::Refresh => (cfg.refresh_name(), cfg.refresh_path.as_str(), None, true),
        Kind::AntiCsrf => (cfg.anti_csrf_name(), "/", None, true),
        Kind::Info => (cfg.info_name(), "/", cfg.info_domain.as_deref(), false),
    };
    let mut c = Cookie::build((name, value))
        .path(path.to_owned())
        .http_only(http_only)
        .secure(cfg.secure)
        .same_site(same_site(cfg.same_site))
        .expires(expires);
    if let Some(d) = domain {
        c = c.domain(d.to_owned());
    }
    // Values are token characters and percent-encoded JSON: always valid.
    HeaderValue::from_str(&c.build().to_string()).expect("cookie is a valid header value")
}

/// `Set-Cookie` values for a fresh rotation: access, refresh, anti-CSRF (when
/// the client uses it) and info.
pub fn issue(cfg: &CookiesConfig, t: &Issued<'_>) -> Vec<HeaderValue> {
    let exp = expires_at(t.refresh_exp_ms);
    let mut out = vec![
        build(cfg, Kind::Access, t.access_token.to_owned(), exp),
        build(cfg, Kind::Refresh, t.refresh_token.to_owned(), exp),
    ];
    if let Some(a) = t.anti_csrf_token {
        out.push(build(cfg, Kind::AntiCsrf, a.to_owned(), exp));
    }
    out.push(build(
        cfg,
        Kind::Info,
        info_value(t.access_exp_ms, t.refresh_exp_ms),
        exp,
    ));
    out
}

/// `Set-Cookie` values that delete all four cookies, with the same paths and
/// domains they were set with.
pub fn expire_all(cfg: &CookiesConfig) -> Vec<HeaderValue> {
    let past = Expiration::DateTime(OffsetDateTime::UNIX_EPOCH);
    [Kind::Access, Kind::Refresh, Kind::AntiCsrf, Kind::Info]
        .into_iter()
        .map(|k| build(cfg, k, String::new(), past))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> CookiesConfig {
        let mut c = Config::parse("", "t").unwrap().cookies;
        c.domain = Some(".example.gov".into());
        c.info_domain = Some("example.gov".into());
        c
    }

    fn parsed(v: &HeaderValue) -> Cookie<'static> {
        Cookie::parse(v.to_str().unwrap().to_owned()).unwrap()
    }

    #[test]
    fn info_token_matches_the_front_end_format() {
        assert_eq!(iso_millis(1_717_697_375_946), "2024-06-06T18:09:35.946Z");
        let v = info_value(1_717_697_375_946, 1_717_698_875_760);
        let decoded = percent_encoding::percent_decode_str(&v)
            .decode_utf8()
            .unwrap();
        assert_eq!(
            decoded,
            r#"{"access_token_expiration":"2024-06-06T18:09:35.946Z","refresh_token_expiration":"2024-06-06T18:34:35.760Z"}"#
        );
        assert!(!v.contains(['{', '"', ':', ',']));
    }

    #[test]
    fn attributes_per_cookie() {
        let c = cfg();
        let set = issue(
            &c,
            &Issued {
                access_token: "a.b.c",
                refresh_token: "v1:xyz",
                anti_csrf_token: Some("csrf"),
                access_exp_ms: 1_717_697_375_946,
                refresh_exp_ms: 1_717_698_875_760,
            },
        );
        assert_eq!(set.len(), 4);
        let [access, refresh, csrf, info] = [0, 1, 2, 3].map(|i| parsed(&set[i]));
        assert_eq!(access.name(), "vagov_access_token");
        assert_eq!(access.domain(), Some("example.gov"));
        assert_eq!(access.path(), Some("/"));
        assert_eq!(access.http_only(), Some(true));
        assert_eq!(access.secure(), Some(true));
        assert_eq!(access.same_site(), Some(CookieSameSite::Lax));
        assert_eq!(refresh.value(), "v1:xyz");
        assert_eq!(refresh.path(), Some("/v0/sign_in/refresh"));
        assert_eq!(refresh.domain(), None);
        assert_eq!(csrf.value(), "csrf");
        assert_eq!(csrf.domain(), None);
        assert_eq!(info.http_only(), None);
        assert_eq!(info.domain(), Some("example.gov"));
        for c in [&access, &refresh, &csrf, &info] {
            assert_eq!(
                c.expires_datetime().unwrap().unix_timestamp(),
                1_717_698_875,
                "{}",
                c.name()
            );
        }
    }

    #[test]
    fn expiring_cookies() {
        let set = expire_all(&cfg());
        assert_eq!(set.len(), 4);
        for v in &set {
            let c = parsed(v);
            assert_eq!(c.value(), "");
            assert_eq!(c.expires_datetime().unwrap().unix_timestamp(), 0);
        }
        assert_eq!(parsed(&set[1]).path(), Some("/v0/sign_in/refresh"));
    }
}
