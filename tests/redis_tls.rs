//! `rediss://`: the session store over TLS to a real `redis-server` that
//! only speaks TLS, with its certificate signed by a private CA.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{temp_path, TestGateway};
use serde_json::{json, Value};

#[tokio::test]
async fn sessions_rotate_over_tls() {
    let dir = temp_path("redis-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-auth-clients",
            "no",
        ])
        .arg("--tls-cert-file")
        .arg(&cert_pem)
        .arg("--tls-key-file")
        .arg(&key_pem)
        .arg("--tls-ca-cert-file")
        .arg(&ca_pem)
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server with TLS did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let gw = TestGateway::start(format!(
        r#"
[admin]
token = "t"
[store]
url = "rediss://127.0.0.1:{port}/0"
tls_ca = "{}"
[[clients]]
client_id = "mobile"
authentication = "api"
[[routes]]
upstream = "http://127.0.0.1:9"
"#,
        ca_pem.display()
    ));
    let http = reqwest::Client::new();
    let ready = http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the store is reachable over TLS");
    let s: Value = http
        .post(gw.admin_url("/admin/sessions"))
        .bearer_auth("t")
        .json(&json!({"user_uuid": "u", "client_id": "mobile"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .query(&[("refresh_token", s["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A plain-text client cannot talk to this server: the traffic is TLS.
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "PING"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PONG"));

    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
