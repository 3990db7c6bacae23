//! Validation of `gateway.toml`: defaults, and the key and message of each problem.

use super::store::parse_store_url;
use super::*;

fn problems(text: &str) -> Vec<Problem> {
    Config::parse(text, "t.toml").unwrap_err().problems
}

fn keys(text: &str) -> Vec<String> {
    problems(text).into_iter().map(|p| p.key).collect()
}

#[test]
fn empty_file_is_valid_with_defaults() {
    let c = Config::parse("", "t").unwrap();
    assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.store.url, StoreUrl::Memory);
    assert_eq!(c.tokens.refresh_grace, Duration::from_secs(30));
    assert_eq!(c.tokens.session_max_age, Duration::from_secs(45 * 86400));
    assert_eq!(c.cookies.refresh_path, "/v0/sign_in/refresh");
    assert!(c.cookies.secure);
    assert_eq!(c.cookies.same_site, SameSite::Lax);
}

#[test]
fn unknown_keys_are_all_reported() {
    let k = keys("[server.tls]\ncert = \"c\"\nkey = \"k\"\nbogus = 1\n[server]\nlisen = \"x\"\n[tokens]\nfoo = 1\n[[routes]]\nupstream = \"http://a\"\nbogus = true\n");
    assert!(k.contains(&"server.lisen".to_string()), "{k:?}");
    assert!(k.contains(&"tokens.foo".to_string()), "{k:?}");
    assert!(k.contains(&"server.tls.bogus".to_string()), "{k:?}");
    // Named as every other problem names a route's key.
    assert!(k.contains(&"routes[0].bogus".to_string()), "{k:?}");
}

#[test]
fn every_semantic_problem_is_reported_with_its_key() {
    let k = keys(
        r#"
[server]
listen = "nope"
upstream_timeout = "soon"
trusted_proxies = ["10.0.0.0/33"]
[store]
url = "postgres://x"
[tokens]
algorithm = "HS256"
sealing_keys = ["c2hvcnQ="]
[cookies]
same_site = "Sometimes"
[[clients]]
authentication = "magic"
[[routes]]
path_prefix = "/a"
upstream = "ftp://x"
auth = "maybe"
max_body = "lots"
"#,
    );
    for want in [
        "server.listen",
        "server.upstream_timeout",
        "server.trusted_proxies[0]",
        "store.url",
        "tokens.algorithm",
        "tokens.sealing_keys[0]",
        "cookies.same_site",
        "clients[0].client_id",
        "routes[0].upstream",
        "routes[0].auth",
        "routes[0].max_body",
    ] {
        assert!(k.contains(&want.to_string()), "missing {want} in {k:?}");
    }
}

#[test]
fn type_errors_name_the_key() {
    let p = problems("[server]\nlisten = 8080\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "server.listen", "{:?}", p[0]);
    assert!(p[0].message.contains("line 2"), "{:?}", p[0]);
}

#[test]
fn refresh_path_must_cover_session_routes() {
    let text = r#"
[[routes]]
path_prefix = "/app"
upstream = "http://127.0.0.1:1"
auth = "session"
"#;
    let p = problems(text);
    assert_eq!(p[0].key, "routes[0].auth");
    assert!(p[0].message.contains("refresh_path"));
    let ok = format!("[cookies]\nrefresh_path = \"/\"\n{text}");
    Config::parse(&ok, "t").unwrap();
    let ok = format!("[cookies]\nrefresh_path = \"/app\"\n{text}");
    Config::parse(&ok, "t").unwrap();
}

#[test]
fn store_urls() {
    assert_eq!(
        parse_store_url("redis+cluster://a:1,b:2").unwrap(),
        StoreUrl::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
    );
    assert_eq!(
        parse_store_url("redis+sentinel://s:26379/mymaster").unwrap(),
        StoreUrl::Sentinel {
            sentinels: vec!["redis://s:26379".into()],
            master: "mymaster".into(),
            tls: false
        }
    );
    assert_eq!(
        parse_store_url("redis://127.0.0.1:6379/0").unwrap(),
        StoreUrl::Redis("redis://127.0.0.1:6379/0".into())
    );
    assert!(parse_store_url("redis+sentinel://s:1").is_err());
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(
        parse_duration("45d").unwrap(),
        Duration::from_secs(45 * 86400)
    );
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    assert!(parse_duration("-1s").is_err());
    let c = Config::parse(
        "[[routes]]\nupstream = \"http://127.0.0.1:1/base/\"\nmax_body = \"10MB\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.routes[0].max_body, Some(10_000_000));
    assert_eq!(c.routes[0].upstreams[0].base_path, "/base");
}

#[test]
fn path_cover_rules() {
    assert!(path_covers("/", "/anything"));
    assert!(path_covers("/app", "/app/x"));
    assert!(path_covers("/app/", "/app/x"));
    assert!(!path_covers("/app", "/application"));
    assert!(!path_covers("/v0/sign_in/refresh", "/"));
}

#[test]
fn dev_default_is_valid() {
    let c = Config::dev_default("http://127.0.0.1:3000");
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.clients.len(), 2);
}

#[test]
fn sign_in_upstream_is_validated_and_routed_publicly() {
    for bad in ["ftp://x", "nope", "http://h/?q=1", "/relative"] {
        let k = keys(&format!("[sign_in]\nupstream = \"{bad}\"\n"));
        assert_eq!(k, ["sign_in.upstream"], "{bad}");
    }
    let c = Config::parse("", "t").unwrap();
    assert!(c.sign_in.upstream.is_none());
    assert!(c.sign_in.upstream_route().is_none());
    let c = Config::parse(
        "[sign_in]\npath_prefix = \"/v1/sis/\"\nupstream = \"http://127.0.0.1:3001/base/\"\n",
        "t",
    )
    .unwrap();
    let route = c.sign_in.upstream_route().unwrap();
    assert_eq!(route.path_prefix, "/v1/sis");
    assert_eq!(route.auth, AuthMode::Public);
    assert_eq!(route.upstreams[0].authority.as_str(), "127.0.0.1:3001");
    assert_eq!(route.upstreams[0].base_path, "/base");
}

#[test]
fn trust_boundary_keys() {
    let c = Config::parse("[[routes]]\nupstream = \"http://a\"\n", "t").unwrap();
    assert!(c.server.merge_slashes);
    assert_eq!(c.server.escaped_slashes, EscapedSlashes::Reject);
    assert!(!c.server.underscores_in_headers);
    assert_eq!(c.routes[0].upgrades, ["websocket"]);
    let c = Config::parse(
        "[server]\nmerge_slashes = false\nescaped_slashes = \"keep\"\nunderscores_in_headers = true\n[[routes]]\nupstream = \"http://a\"\nupgrades = [\"WebSocket\", \"foo/2\"]\n",
        "t",
    )
    .unwrap();
    assert!(!c.server.merge_slashes);
    assert_eq!(c.server.escaped_slashes, EscapedSlashes::Keep);
    assert!(c.server.underscores_in_headers);
    assert_eq!(c.routes[0].upgrades, ["websocket", "foo/2"]);
    let k = keys(
        "[server]\nescaped_slashes = \"decode\"\n[[routes]]\nupstream = \"http://a\"\nupgrades = [\"web socket\", \"\", \"a/\"]\n",
    );
    assert_eq!(
        k,
        [
            "server.escaped_slashes",
            "routes[0].upgrades[0]",
            "routes[0].upgrades[1]",
            "routes[0].upgrades[2]"
        ]
    );
    let k = keys("[server]\nmerge_slashes = \"yes\"\n");
    assert_eq!(k, ["server.merge_slashes"]);
}

/// A file under the temp dir holding `contents`, named for this test.
fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("sis-gateway-config-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

fn adopt_config(jwks: &str, extra: &str) -> String {
    format!(
        "[sign_in]\nupstream = \"http://127.0.0.1:3001\"\n[sign_in.adopt]\njwks = \"{jwks}\"\n{extra}"
    )
}

#[test]
fn sign_in_adopt_takes_a_file_or_an_https_url() {
    // The file is read where the keys are built (`tokens::KeyFiles`).
    let c = Config::parse(
        &adopt_config("file:/etc/sis/jwks.json", "issuer = \"va.gov sign in\"\n"),
        "t",
    )
    .unwrap();
    let adopt = c.sign_in.adopt.unwrap();
    assert_eq!(
        adopt.source,
        JwksSource::File(PathBuf::from("/etc/sis/jwks.json"))
    );
    assert_eq!(adopt.issuer.as_deref(), Some("va.gov sign in"));
    assert!(adopt.migrate, "migrate defaults to true");
    let c = Config::parse(&adopt_config("file:/x.json", "migrate = false\n"), "t").unwrap();
    assert!(!c.sign_in.adopt.unwrap().migrate);
    assert!(Config::parse("", "t").unwrap().sign_in.adopt.is_none());

    let url = "https://sis.example.gov:8443/v0/sign_in/openid_connect/certs";
    let adopt = Config::parse(&adopt_config(url, ""), "t")
        .unwrap()
        .sign_in
        .adopt
        .unwrap();
    match adopt.source {
        JwksSource::Https(u) => assert_eq!(u.port_u16(), Some(8443)),
        other => panic!("{other:?}"),
    }
    assert!(JwksSource::parse("https://[::1]/jwks").is_ok());
    for (bad, want) in [
        ("https://", "not a URL"),
        ("https://user:pw@sis.example.gov/jwks", "credentials"),
        ("https://sis example/jwks", "not a URL"),
    ] {
        let e = JwksSource::parse(bad).unwrap_err();
        assert!(e.contains(want), "{bad}: {e}");
    }

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = temp_file("adopt-ca.pem", &cert.cert.pem());
    let with_ca = adopt_config(
        "https://localhost:8443/jwks",
        &format!("ca = \"file:{}\"\n", ca.display()),
    );
    let a = Config::parse(&with_ca, "t").unwrap().sign_in.adopt.unwrap();
    assert_eq!(a.ca.map(|c| c.len()), Some(1));
    // A CA is for a URL.
    let p = problems(&adopt_config(
        "file:/x.json",
        &format!("ca = \"file:{}\"\n", ca.display()),
    ));
    assert!(p.iter().any(|p| p.key == "sign_in.adopt.ca"), "{p:?}");
}

#[test]
fn sign_in_adopt_problems_name_the_key() {
    let bad_json = temp_file("adopt-bad.json", "{\"keys\": 3}");
    let cases = [
        ("http://sis.example.gov/jwks", "plain http://"),
        ("https://user:pw@sis.example.gov/jwks", "credentials"),
        ("/etc/jwks.json", "must be file:PATH"),
    ];
    for (spec, want) in cases {
        let p = problems(&adopt_config(spec, ""));
        assert_eq!(p.len(), 1, "{spec}: {p:?}");
        assert_eq!(p[0].key, "sign_in.adopt.jwks", "{spec}");
        assert!(p[0].message.contains(want), "{spec}: {}", p[0].message);
    }
    let url = "https://sis.example.gov/jwks";
    for (ca, want) in [
        ("/etc/ca.pem", "must be file:PATH"),
        ("file:/nonexistent/ca.pem", "cannot read"),
        (&format!("file:{}", bad_json.display()), "no certificate"),
    ] {
        let p = problems(&adopt_config(url, &format!("ca = \"{ca}\"\n")));
        assert_eq!(p.len(), 1, "{ca}: {p:?}");
        assert_eq!(p[0].key, "sign_in.adopt.ca", "{ca}");
        assert!(p[0].message.contains(want), "{ca}: {}", p[0].message);
    }
    let k = keys("[sign_in.adopt]\nissuer = \"x\"\n");
    assert!(k.contains(&"sign_in.adopt".to_string()), "{k:?}");
    assert!(k.contains(&"sign_in.adopt.jwks".to_string()), "{k:?}");
    let k = keys(&adopt_config("file:/x", "bogus = 1\n"));
    assert!(k.contains(&"sign_in.adopt.bogus".to_string()), "{k:?}");
}
