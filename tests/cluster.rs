//! Two gateway instances sharing keys and a real Redis Cluster (three
//! masters, one replica each): sessions move freely between the instances,
//! and a master failover costs at most some 503s, never a session.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::{temp_path, GatewayProcess};
use common::redis::RedisCluster;
use common::refresh_api;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sis_gateway::config::Algorithm;

const ADMIN: &str = "test-admin-token";
const KEY_PREFIX: &str = "sis:";
const REFRESH: &str = "/v0/sign_in/refresh";
/// Failover takes a couple of seconds with the test cluster's node timeout.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

fn config(cluster: &RedisCluster, keys: &sis_gateway::tokens::Keygen) -> String {
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[admin]
token = "{ADMIN}"
[store]
url = "redis+cluster://{nodes}"
key_prefix = "{KEY_PREFIX}"
timeout = "250ms"
[tokens]
signing_keys = ["{signing}"]
sealing_keys = ["file:{sealing}"]
[sign_in]
failures_per_minute = 0
[[clients]]
client_id = "mobile"
authentication = "api"
anti_csrf = false
[[routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:9"
"#,
        nodes = nodes.join(","),
        signing = keys.signing_key.display(),
        sealing = keys.sealing_key.display(),
    )
}

/// A session chain: its handle and its latest refresh token.
#[derive(Clone, Debug)]
struct Chain {
    handle: String,
    token: String,
}

impl Chain {
    fn key(&self) -> String {
        format!("{KEY_PREFIX}s:{{{}}}", self.handle)
    }
}

async fn create(http: &reqwest::Client, gw: &GatewayProcess, user: &str) -> Chain {
    let res = http
        .post(gw.admin_url("/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({"user_uuid": user, "client_id": "mobile"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    Chain {
        handle: body["session_handle"].as_str().unwrap().to_owned(),
        token: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

/// Refreshes once and insists on success; advances the chain.
async fn rotate(http: &reqwest::Client, gw: &GatewayProcess, chain: &mut Chain) {
    let (st, next) = refresh_api(http, &gw.url(REFRESH), &chain.token).await;
    assert_eq!(st, StatusCode::OK, "{next:?}");
    chain.token = next.unwrap();
}

/// Only 200 (chain advances) or 503 `Session store unavailable` (chain keeps
/// its token) are acceptable while the store is in trouble.
fn step(chain: &mut Chain, st: StatusCode, next: Result<String, String>) -> bool {
    match (st, next) {
        (StatusCode::OK, Ok(t)) => {
            chain.token = t;
            true
        }
        (StatusCode::SERVICE_UNAVAILABLE, Err(body)) => {
            assert!(body.contains("Session store unavailable"), "{body}");
            false
        }
        (st, next) => panic!("during failover: {st} {next:?} for {}", chain.handle),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_move_between_instances_and_survive_a_master_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let key_dir = temp_path("cluster-keys");
    let keys = sis_gateway::tokens::keygen(&key_dir, Algorithm::Es256).unwrap();
    let cfg = config(&cluster, &keys);
    // Two gateway processes (the built binary) over one cluster.
    let a = GatewayProcess::spawn(&cfg);
    let b = GatewayProcess::spawn(&cfg);
    // Refresh endpoints of both instances, for tasks to alternate between.
    let both = Arc::new([a.url(REFRESH), b.url(REFRESH)]);
    let http = http_client();

    // Both instances publish the same keys.
    let certs = |gw: &GatewayProcess| {
        let url = gw.url("/v0/sign_in/openid_connect/certs");
        let http = http.clone();
        async move {
            let body: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            body
        }
    };
    assert_eq!(certs(&a).await, certs(&b).await);

    // Sessions opened on A refresh on B, and back again.
    let mut victim = create(&http, &a, "u-0").await;
    rotate(&http, &b, &mut victim).await;
    rotate(&http, &a, &mut victim).await;
    let victim_master = cluster
        .master_for_key(&victim.key())
        .expect("a master holds the session");

    // More sessions, until one other lives on the victim's master (it sits
    // out the failover untouched) and some live elsewhere (they keep
    // refreshing through it).
    let mut bystander = None;
    let mut elsewhere = Vec::new();
    for i in 1..=60 {
        if bystander.is_some() && elsewhere.len() >= 3 {
            break;
        }
        let mut s = create(&http, &a, &format!("u-{i}")).await;
        rotate(&http, &b, &mut s).await;
        if cluster.master_for_key(&s.key()) == Some(victim_master) {
            bystander.get_or_insert(s);
        } else if elsewhere.len() < 3 {
            elsewhere.push(s);
        }
    }
    let mut bystander = bystander.expect("a second session on the victim's master");
    assert_eq!(elsewhere.len(), 3);

    // Chains on the other masters refresh continuously, alternating
    // instances, across the whole failover.
    let stop = Arc::new(AtomicBool::new(false));
    let mut background = Vec::new();
    for mut chain in elsewhere {
        let (both, http, stop) = (both.clone(), http.clone(), stop.clone());
        background.push(tokio::spawn(async move {
            let (mut ok, mut unavailable) = (0usize, 0usize);
            for i in 0..100_000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (st, next) = refresh_api(&http, &both[i % 2], &chain.token).await;
                if step(&mut chain, st, next) {
                    ok += 1;
                } else {
                    unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (chain, ok, unavailable)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // What the victim's master acknowledged has reached its replica: an
    // asynchronous replica can lose the last writes of a crashed master, which
    // no client of Redis can prevent.
    cluster.wait_replicated(Duration::from_secs(5));
    cluster.kill_node(victim_master);
    let killed = Instant::now();

    // The victim's chain keeps refreshing through the failover on both
    // instances: only 200 or 503, and it carries on from its latest token.
    let mut rotated_after_kill = 0;
    let mut unavailable = 0;
    let mut i = 0usize;
    while rotated_after_kill < 3 {
        assert!(
            killed.elapsed() < FAILOVER_DEADLINE,
            "no successful refresh within {FAILOVER_DEADLINE:?} of the kill"
        );
        let (st, next) = refresh_api(&http, &both[i % 2], &victim.token).await;
        i += 1;
        if step(&mut victim, st, next) {
            rotated_after_kill += 1;
        } else {
            unavailable += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "victim chain back after {:?} ({unavailable} answers 503)",
        killed.elapsed()
    );
    cluster.wait_healthy(Duration::from_secs(20));

    // After the failover: the chain goes on on both instances; the session
    // that sat it out refreshes with the token it had before the kill.
    rotate(&http, &a, &mut victim).await;
    rotate(&http, &b, &mut victim).await;
    rotate(&http, &b, &mut bystander).await;
    rotate(&http, &a, &mut bystander).await;
    let mut fresh = create(&http, &b, "u-new").await;
    rotate(&http, &a, &mut fresh).await;

    stop.store(true, Ordering::Relaxed);
    for task in background {
        let (mut chain, ok, unavailable) = task.await.expect("background chain");
        assert!(ok > 0, "chain {} made progress", chain.handle);
        eprintln!("chain {}: {ok} × 200, {unavailable} × 503", chain.handle);
        rotate(&http, &a, &mut chain).await;
        rotate(&http, &b, &mut chain).await;
    }
    let _ = std::fs::remove_dir_all(&key_dir);
}

/// Chained refreshes on many sessions across both instances while a master
/// dies mid-stream, without waiting for its replica to catch up: a write the
/// replica had not received when it was promoted is a rotation the store
/// lost, and the successor the client holds rolls it forward. No session is
/// lost; the answers while the slot has no master are 503. Replication on
/// loopback rarely loses a write by itself, so some sessions on the dying
/// master have their last rotation taken back after the promotion (DUMP
/// before it, RESTORE on the new master), as an asynchronous replica would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_refreshes_lose_no_session_when_a_master_dies_mid_stream() {
    let mut cluster = RedisCluster::start(3, 1);
    let key_dir = temp_path("cluster-keys-chains");
    let keys = sis_gateway::tokens::keygen(&key_dir, Algorithm::Es256).unwrap();
    let cfg = config(&cluster, &keys);
    let a = GatewayProcess::spawn(&cfg);
    let b = GatewayProcess::spawn(&cfg);
    let both = Arc::new([a.url(REFRESH), b.url(REFRESH)]);
    let http = http_client();

    let mut sessions = Vec::new();
    for i in 0..16 {
        sessions.push(create(&http, if i % 2 == 0 { &a } else { &b }, &format!("u-{i}")).await);
    }
    let victim_master = cluster
        .master_for_key(&sessions[0].key())
        .expect("a master holds the session");
    let on_victim = sessions
        .iter()
        .filter(|s| cluster.master_for_key(&s.key()) == Some(victim_master))
        .count();
    // Sessions on the victim's master whose last rotation the promoted
    // replica will not have.
    let mut stale = Vec::new();
    for i in 0..200 {
        if stale.len() == 3 {
            break;
        }
        let mut s = create(&http, &a, &format!("u-stale-{i}")).await;
        if cluster.master_for_key(&s.key()) != Some(victim_master) {
            continue;
        }
        rotate(&http, &b, &mut s).await;
        let before = dump(&cluster, victim_master, &s.key());
        rotate(&http, &a, &mut s).await;
        stale.push((s, before));
    }
    assert_eq!(stale.len(), 3);

    let stop = Arc::new(AtomicBool::new(false));
    let mut chains = Vec::new();
    for mut chain in sessions {
        let (both, http, stop) = (both.clone(), http.clone(), stop.clone());
        chains.push(tokio::spawn(async move {
            let (mut rotations, mut unavailable, mut lost) = (0usize, 0usize, 0usize);
            for i in 0..100_000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match refresh_api(&http, &both[i % 2], &chain.token).await {
                    (StatusCode::OK, Ok(t)) => {
                        chain.token = t;
                        rotations += 1;
                    }
                    (StatusCode::SERVICE_UNAVAILABLE, Err(body))
                        if body.contains("Session store unavailable") =>
                    {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => {
                        eprintln!("session {} lost: {other:?}", chain.handle);
                        lost += 1;
                        break;
                    }
                }
            }
            (chain, rotations, unavailable, lost)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.kill_node(victim_master);
    let killed = Instant::now();
    cluster.wait_healthy(FAILOVER_DEADLINE);
    eprintln!("replica promoted after {:?}", killed.elapsed());
    for (s, before) in &stale {
        let promoted = cluster.master_for_key(&s.key()).expect("promoted replica");
        restore(&cluster, promoted, &s.key(), before);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut rotations, mut unavailable, mut lost) = (0, 0, 0);
    for task in chains {
        let (mut chain, r, u, l) = task.await.expect("chain");
        rotations += r;
        unavailable += u;
        lost += l;
        if l == 0 {
            // Its last token still refreshes, on both instances.
            rotate(&http, &a, &mut chain).await;
            rotate(&http, &b, &mut chain).await;
        }
    }
    // The successors whose rotation the store lost roll it forward.
    for (mut s, _) in stale {
        let (st, next) = refresh_api(&http, &both[0], &s.token).await;
        if st != StatusCode::OK {
            eprintln!("session {} lost: {st} {next:?}", s.handle);
            lost += 1;
            continue;
        }
        rotations += 1;
        s.token = next.unwrap();
        rotate(&http, &b, &mut s).await;
    }
    eprintln!(
        "{rotations} rotations, {unavailable} × 503, {lost} sessions lost \
         ({on_victim} of 16 chains and 3 rolled-back sessions on the killed master)"
    );
    assert_eq!(lost, 0, "sessions lost");
    assert!(on_victim > 0);
    let _ = std::fs::remove_dir_all(&key_dir);
}

/// A session key as one node holds it: its DUMP and remaining TTL.
struct Dumped(Vec<u8>, i64);

fn node_connection(cluster: &RedisCluster, node: usize) -> redis::Connection {
    let port = cluster.nodes()[node].port();
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap()
}

fn dump(cluster: &RedisCluster, node: usize, key: &str) -> Dumped {
    let mut c = node_connection(cluster, node);
    let data: Vec<u8> = redis::cmd("DUMP").arg(key).query(&mut c).unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut c).unwrap();
    assert!(ttl > 0);
    Dumped(data, ttl)
}

fn restore(cluster: &RedisCluster, node: usize, key: &str, d: &Dumped) {
    let mut c = node_connection(cluster, node);
    let () = redis::cmd("RESTORE")
        .arg(key)
        .arg(d.1)
        .arg(&d.0)
        .arg("REPLACE")
        .query(&mut c)
        .unwrap();
}

/// A client whose every request gives up after five seconds: a hang fails
/// the test instead of stalling it.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap()
}
