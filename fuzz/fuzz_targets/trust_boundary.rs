#![no_main]
//! Request heads as attackers write them, from client bytes to the bytes
//! the upstream would get: the HTTP/1 parser, the request target (path
//! normalization, one authority), routing and the header policy. Whatever
//! the head, what goes upstream is one request head and nothing else, with
//! no identity header (no session here: the gateway sets none), no `_`
//! name, no refresh or anti-CSRF cookie, no upgrade but WebSocket, and a
//! path and `Host` that route exactly where the request was routed.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use sis_gateway::config::Config;
use sis_gateway::proxy::headers::request_host;
use sis_gateway::proxy::{Outcome, Probe};
use sis_gateway::cookie;
use sis_gateway::target::{normalize_path, PathRules};

const CONFIG: &str = r#"
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:1"
preserve_host = true
[[routes]]
path_prefix = "/secure"
upstream = "http://127.0.0.1:1"
preserve_host = true
auth = "required"
[[routes]]
path_prefix = "/app"
upstream = "http://127.0.0.1:1"
preserve_host = true
auth = "session"
[[routes]]
host = "admin.example"
path_prefix = "/"
upstream = "http://127.0.0.1:1"
preserve_host = true
auth = "required"
"#;

const IDENTITY: [&str; 3] = ["x-sis-user-uuid", "x-sis-session-handle", "x-sis-client-id"];

fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| Probe::new(&Config::parse(CONFIG, "fuzz").unwrap()))
}

fuzz_target!(|data: &[u8]| {
    let Outcome::Forwarded { route, upstream } = probe().forward(data) else {
        return;
    };
    // One request head, whole, and nothing after it (the body is empty).
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(&upstream) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("upstream head does not parse: {other:?} {upstream:?}"),
    };
    assert_eq!(len, upstream.len(), "more than one request head");

    let mut headers = HeaderMap::new();
    for f in req.headers.iter() {
        let name = f.name.to_ascii_lowercase();
        assert!(!name.contains('_'), "`_` name forwarded: {name}");
        assert!(!IDENTITY.contains(&name.as_str()), "identity forwarded: {name}");
        assert_ne!(name, "transfer-encoding");
        if name == "content-length" {
            assert_eq!(f.value, b"0");
        }
        if name == "upgrade" {
            // Each protocol offered is `websocket` or `websocket/<version>`.
            for p in f.value.split(|&b| b == b',') {
                let name = p.trim_ascii().split(|&b| b == b'/').next().unwrap();
                assert!(name.eq_ignore_ascii_case(b"websocket"), "{:?}", f.value);
            }
        }
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(f.value).unwrap(),
        );
    }
    assert_eq!(headers.get_all("host").iter().count(), 1, "one Host");
    // Not even an empty one: whatever a cookie parser upstream could read
    // as either name is gone.
    for name in ["vagov_refresh_token", "vagov_anti_csrf_token"] {
        assert!(
            !cookie::pairs(&headers).any(|(n, _)| cookie::name_is(n, name)),
            "{name} forwarded"
        );
    }

    // The path forwarded is normal, and routes where the request went.
    let path = req.path.unwrap();
    let uri: Uri = path.parse().expect("an origin-form target");
    assert!(uri.scheme().is_none() && uri.authority().is_none(), "{path}");
    assert_eq!(
        normalize_path(uri.path(), PathRules::default()).unwrap(),
        uri.path(),
        "normalizing is idempotent"
    );
    let host = request_host(&headers, &uri);
    assert_eq!(probe().route_name(host, uri.path()), Some(route));
});
