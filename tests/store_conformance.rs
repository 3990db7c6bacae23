//! One suite of session-store tests, run against the memory store and
//! against Redis (a fresh `redis-server` per test), plus Redis-only tests of
//! key TTLs, outages and cluster failover.

mod common;

use std::time::{Duration, Instant};

use common::redis::{wait_replicated, RedisCluster, RedisSentinel, RedisServer};
use sis_gateway::config::{StoreConfig, StoreUrl};
use sis_gateway::session::{
    AdoptOutcome, MemorySnapshot, NewAdoption, NewSession, RevokeOutcome, RevokeRequest,
    RotateOutcome, RotateRequest, RotatedSession, SessionRecord, SessionStore, Store, StoreError,
};

const T0: u64 = 1_700_000_000_000;
const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;
const REFRESH_TTL: u64 = 30 * MIN;
const GRACE: u64 = 30 * SEC;
const MAX_AGE: u64 = 45 * 24 * 60 * MIN;
const TIMEOUT: Duration = Duration::from_millis(250);
/// How late past `TIMEOUT` an operation against a dead Redis may answer.
const SLACK: Duration = Duration::from_millis(100);

/// A store under test; keeps its Redis server alive.
struct Harness {
    store: Store,
    redis: Option<RedisServer>,
}

fn redis_config(url: StoreUrl) -> StoreConfig {
    StoreConfig {
        url,
        key_prefix: "t:".into(),
        timeout: TIMEOUT,
        tls_ca: None,
    }
}

async fn memory() -> Harness {
    let cfg = StoreConfig {
        url: StoreUrl::Memory,
        key_prefix: "t:".into(),
        timeout: TIMEOUT,
        tls_ca: None,
    };
    Harness {
        store: Store::connect(&cfg).await.unwrap(),
        redis: None,
    }
}

async fn redis() -> Harness {
    let server = RedisServer::start();
    let store = Store::connect(&redis_config(StoreUrl::Redis(server.url())))
        .await
        .unwrap();
    Harness {
        store,
        redis: Some(server),
    }
}

fn hash(label: &str) -> String {
    // Stands in for a SHA-256 hex digest; the store only compares them.
    format!("{label:0>64}")
}

fn record(handle: &str, user: &str, now: u64) -> SessionRecord {
    SessionRecord {
        handle: handle.into(),
        user_uuid: user.into(),
        client_id: "web".into(),
        user_attributes: r#"{"email":"a@example.gov"}"#.into(),
        created_at_ms: now,
        refresh_exp_ms: now + REFRESH_TTL,
    }
}

fn new_session(handle: &str, user: &str, now: u64) -> NewSession {
    NewSession {
        record: record(handle, user, now),
        token_hash: hash(&format!("{handle}-0")),
        max_age_ms: MAX_AGE,
        now_ms: now,
    }
}

fn rotation(handle: &str, presented: &str, new: &str, now: u64) -> RotateRequest {
    RotateRequest {
        handle: handle.into(),
        presented_hash: hash(presented),
        parent_hash: None,
        new_hash: hash(new),
        sealed_successor: format!("sealed({new})").into_bytes(),
        now_ms: now,
        grace_ms: GRACE,
        refresh_ttl_ms: REFRESH_TTL,
        max_age_ms: MAX_AGE,
    }
}

/// A rotation presenting `presented`, a successor token that carries its
/// parent's hash.
fn child_rotation(
    handle: &str,
    parent: &str,
    presented: &str,
    new: &str,
    now: u64,
) -> RotateRequest {
    RotateRequest {
        parent_hash: Some(hash(parent)),
        ..rotation(handle, presented, new, now)
    }
}

fn revocation(handle: &str, presented: &str, parent: Option<&str>, now: u64) -> RevokeRequest {
    RevokeRequest {
        handle: handle.into(),
        presented_hash: hash(presented),
        parent_hash: parent.map(hash),
        now_ms: now,
        grace_ms: GRACE,
        max_age_ms: MAX_AGE,
    }
}

/// One session as it was, to be put back later: the store losing writes.
enum Snapshot {
    Memory(MemorySnapshot),
    /// DUMP of the session key and its remaining TTL.
    Redis(String, Vec<u8>, i64),
}

impl Harness {
    async fn snapshot(&self, handle: &str) -> Snapshot {
        match (&self.store, &self.redis) {
            (Store::Memory(m), _) => Snapshot::Memory(m.snapshot(handle).expect("session exists")),
            (Store::Redis(r), Some(server)) => {
                let key = r.session_key(handle);
                let mut c = raw_redis(server).await;
                let dump: Vec<u8> = ::redis::cmd("DUMP")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                let ttl: i64 = ::redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                assert!(ttl > 0, "session key has a TTL");
                Snapshot::Redis(key, dump, ttl)
            }
            _ => unreachable!("a Redis store has its server"),
        }
    }

    async fn restore(&self, snapshot: Snapshot) {
        match (&self.store, snapshot) {
            (Store::Memory(m), Snapshot::Memory(s)) => m.restore(s),
            (Store::Redis(_), Snapshot::Redis(key, dump, ttl)) => {
                let mut c = raw_redis(self.redis.as_ref().unwrap()).await;
                let () = ::redis::cmd("RESTORE")
                    .arg(&key)
                    .arg(ttl)
                    .arg(dump)
                    .arg("REPLACE")
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
            _ => unreachable!("snapshot of another backend"),
        }
    }
}

/// A plain connection to a test server, for what the store does not do.
async fn raw_redis(server: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn create(store: &Store, handle: &str, user: &str, now: u64) {
    store.create(new_session(handle, user, now)).await.unwrap();
}

fn expect_rotated(o: RotateOutcome) -> RotatedSession {
    match o {
        RotateOutcome::Rotated(r) => r,
        other => panic!("expected Rotated, got {other:?}"),
    }
}

fn expect_replay(o: RotateOutcome) -> (RotatedSession, Vec<u8>) {
    match o {
        RotateOutcome::Replay {
            session,
            sealed_successor,
        } => (session, sealed_successor),
        other => panic!("expected Replay, got {other:?}"),
    }
}

async fn get(store: &Store, handle: &str, now: u64) -> Option<SessionRecord> {
    store.get(handle, now, MAX_AGE).await.unwrap()
}

// ---- the shared suite ------------------------------------------------------

async fn create_get(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    assert_eq!(get(s, "h1", T0).await, Some(record("h1", "u1", T0)));
    assert_eq!(
        get(s, "h1", T0 + REFRESH_TTL - 1).await,
        Some(record("h1", "u1", T0))
    );
    assert_eq!(get(s, "nope", T0).await, None);
    // Checked against the caller's time and max age.
    assert_eq!(get(s, "h1", T0 + REFRESH_TTL).await, None);
    assert_eq!(s.get("h1", T0 + 10 * MIN, 10 * MIN).await.unwrap(), None);
}

async fn rotate_extends_expiry(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    let now = T0 + 20 * MIN;
    let rotated = expect_rotated(s.rotate(rotation("h1", "h1-0", "t1", now)).await.unwrap());
    assert_eq!(rotated.refresh_exp_ms, now + REFRESH_TTL);
    assert_eq!(rotated.created_at_ms, T0);
    assert_eq!(
        rotated.user_attributes,
        record("h1", "u1", T0).user_attributes
    );
    // Alive past the first expiry now, and otherwise as it was created.
    let rec = rotated.into_record("h1", "u1", "web");
    assert_eq!(
        rec,
        SessionRecord {
            refresh_exp_ms: now + REFRESH_TTL,
            ..record("h1", "u1", T0)
        }
    );
    assert_eq!(get(s, "h1", T0 + REFRESH_TTL + MIN).await, Some(rec));
    // The new token rotates on.
    expect_rotated(
        s.rotate(rotation("h1", "t1", "t2", now + MIN))
            .await
            .unwrap(),
    );
}

async fn replay_in_grace_returns_same_blob(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    let first = expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    for i in 0..10 {
        // Racers bring their own (different) successor; they get the first one.
        let req = rotation("h1", "h1-0", &format!("other{i}"), T0 + MIN + i * SEC);
        let (rec, blob) = expect_replay(s.rotate(req).await.unwrap());
        assert_eq!(blob, b"sealed(t1)");
        assert_eq!(rec, first);
    }
    // The replays changed nothing: the successor is still current.
    expect_rotated(
        s.rotate(rotation("h1", "t1", "t2", T0 + 2 * MIN))
            .await
            .unwrap(),
    );
}

async fn grace_zero_replay_is_theft(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    let mut r = rotation("h1", "h1-0", "t1", T0 + MIN);
    r.grace_ms = 0;
    expect_rotated(s.rotate(r.clone()).await.unwrap());
    // A replay brings a successor of its own.
    r.now_ms += 1;
    r.new_hash = hash("t1-replay");
    assert!(matches!(s.rotate(r).await.unwrap(), RotateOutcome::Theft));
    assert_eq!(get(s, "h1", T0 + MIN).await, None);
}

async fn replay_after_grace_is_theft(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    // Last moment inside the window, then the first one outside it.
    expect_replay(
        s.rotate(rotation("h1", "h1-0", "x", T0 + MIN + GRACE - 1))
            .await
            .unwrap(),
    );
    let late = rotation("h1", "h1-0", "x", T0 + MIN + GRACE);
    assert!(matches!(
        s.rotate(late).await.unwrap(),
        RotateOutcome::Theft
    ));
    assert_eq!(get(s, "h1", T0 + MIN + GRACE).await, None);
    // Every token of the session is dead, the successor included.
    let succ = rotation("h1", "t1", "t2", T0 + MIN + GRACE + 1);
    assert!(matches!(
        s.rotate(succ).await.unwrap(),
        RotateOutcome::NoSession
    ));
}

async fn replay_after_successor_used_is_theft(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    expect_rotated(
        s.rotate(rotation("h1", "t1", "t2", T0 + MIN + SEC))
            .await
            .unwrap(),
    );
    // Still inside T0's window, but T1 has been used.
    let replay = rotation("h1", "h1-0", "x", T0 + MIN + 2 * SEC);
    assert!(matches!(
        s.rotate(replay).await.unwrap(),
        RotateOutcome::Theft
    ));
    assert_eq!(get(s, "h1", T0 + MIN + 2 * SEC).await, None);
    let t2 = rotation("h1", "t2", "t3", T0 + MIN + 3 * SEC);
    assert!(matches!(
        s.rotate(t2).await.unwrap(),
        RotateOutcome::NoSession
    ));
}

async fn unknown_hash_is_theft(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    create(s, "h2", "u1", T0).await;
    let wrong = rotation("h1", "never-issued", "t1", T0 + MIN);
    assert!(matches!(
        s.rotate(wrong).await.unwrap(),
        RotateOutcome::Theft
    ));
    assert_eq!(get(s, "h1", T0 + MIN).await, None);
    // Other sessions of the user are untouched, and the index forgot h1.
    assert!(get(s, "h2", T0 + MIN).await.is_some());
    let listed = s.list_user("u1", T0 + MIN, MAX_AGE).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.handle.as_str()).collect::<Vec<_>>(),
        ["h2"]
    );
    // A handle that never existed is no session, not theft.
    let missing = rotation("nope", "h1-0", "t1", T0 + MIN);
    assert!(matches!(
        s.rotate(missing).await.unwrap(),
        RotateOutcome::NoSession
    ));
}

async fn sliding_expiry(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    // Just in time, twice, each sliding the window.
    let r1 = expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + REFRESH_TTL - 1))
            .await
            .unwrap(),
    );
    assert_eq!(r1.refresh_exp_ms, T0 + 2 * REFRESH_TTL - 1);
    // Too late: the window has closed and the session is deleted.
    let late = rotation("h1", "t1", "t2", r1.refresh_exp_ms);
    assert!(matches!(
        s.rotate(late).await.unwrap(),
        RotateOutcome::NoSession
    ));
    assert_eq!(get(s, "h1", T0).await, None);
}

async fn max_age_not_extended(h: Harness) {
    let s = &h.store;
    let max_age = 60 * MIN;
    let mut new = new_session("h1", "u1", T0);
    new.max_age_ms = max_age;
    s.create(new).await.unwrap();
    let rot = |presented: &str, new: &str, now: u64| {
        let mut r = rotation("h1", presented, new, now);
        r.max_age_ms = max_age;
        r
    };
    let r = expect_rotated(s.rotate(rot("h1-0", "t1", T0 + 20 * MIN)).await.unwrap());
    assert_eq!(r.refresh_exp_ms, T0 + 50 * MIN);
    let r = expect_rotated(s.rotate(rot("t1", "t2", T0 + 45 * MIN)).await.unwrap());
    assert_eq!(
        r.refresh_exp_ms,
        T0 + max_age,
        "capped by the absolute lifetime"
    );
    assert_eq!(s.get("h1", T0 + max_age, max_age).await.unwrap(), None);
    let over = rot("t2", "t3", T0 + max_age);
    assert!(matches!(
        s.rotate(over).await.unwrap(),
        RotateOutcome::NoSession
    ));
    // Over-age sessions are deleted, whatever max age a later caller passes.
    assert_eq!(get(s, "h1", T0 + 50 * MIN).await, None);
}

async fn revoke(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    assert!(s.revoke("h1").await.unwrap());
    assert_eq!(get(s, "h1", T0).await, None);
    let r = rotation("h1", "h1-0", "t1", T0 + MIN);
    assert!(matches!(
        s.rotate(r).await.unwrap(),
        RotateOutcome::NoSession
    ));
    assert!(!s.revoke("h1").await.unwrap());
    assert!(s.list_user("u1", T0, MAX_AGE).await.unwrap().is_empty());
}

async fn list_and_revoke_user(h: Harness) {
    let s = &h.store;
    create(s, "c", "u1", T0 + 2).await;
    create(s, "a", "u1", T0).await;
    create(s, "b", "u1", T0 + 1).await;
    create(s, "z", "u2", T0).await;
    let handles = |v: Vec<SessionRecord>| v.into_iter().map(|r| r.handle).collect::<Vec<_>>();
    let now = T0 + MIN;
    assert_eq!(
        handles(s.list_user("u1", now, MAX_AGE).await.unwrap()),
        ["a", "b", "c"]
    );
    assert!(s.revoke("b").await.unwrap());
    assert_eq!(
        handles(s.list_user("u1", now, MAX_AGE).await.unwrap()),
        ["a", "c"]
    );
    // Expired sessions are not listed.
    assert!(s
        .list_user("u1", T0 + REFRESH_TTL + 2, MAX_AGE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.revoke_user("u1").await.unwrap(), 2);
    assert!(s.list_user("u1", now, MAX_AGE).await.unwrap().is_empty());
    assert_eq!(get(s, "a", now).await, None);
    assert_eq!(s.revoke_user("u1").await.unwrap(), 0);
    assert_eq!(
        handles(s.list_user("u2", now, MAX_AGE).await.unwrap()),
        ["z"]
    );
    assert!(s
        .list_user("nobody", now, MAX_AGE)
        .await
        .unwrap()
        .is_empty());
}

async fn concurrent_rotates_converge(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    // Each racer brings a successor of its own, as real requests do.
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let new = format!("t1-{i}");
                (
                    new.clone(),
                    s.rotate(rotation("h1", "h1-0", &new, T0 + MIN)).await,
                )
            })
        })
        .collect();
    let (mut winners, mut blobs) = (Vec::new(), Vec::new());
    for t in tasks {
        let (new, outcome) = t.await.unwrap();
        match outcome.unwrap() {
            RotateOutcome::Rotated(_) => winners.push(new),
            RotateOutcome::Replay {
                sealed_successor, ..
            } => blobs.push(sealed_successor),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((winners.len(), blobs.len()), (1, 99));
    let winner = &winners[0];
    let sealed = format!("sealed({winner})").into_bytes();
    assert!(blobs.iter().all(|b| *b == sealed));
    expect_rotated(
        s.rotate(rotation("h1", winner, "t2", T0 + 2 * MIN))
            .await
            .unwrap(),
    );
}

async fn lost_rotation_rolls_forward(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    let before = h.snapshot("h1").await;
    // The client gets t1 from this rotation; then the store loses it (an
    // asynchronous replica promoted, a backup restored).
    expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    h.restore(before).await;
    assert_eq!(get(s, "h1", T0 + MIN).await, Some(record("h1", "u1", T0)));

    // t1's parent is current: it rotates as if the lost step had landed.
    let rolled = match s
        .rotate(child_rotation("h1", "h1-0", "t1", "t2", T0 + 2 * MIN))
        .await
        .unwrap()
    {
        RotateOutcome::RolledForward(r) => r,
        other => panic!("expected RolledForward, got {other:?}"),
    };
    assert_eq!(rolled.refresh_exp_ms, T0 + 2 * MIN + REFRESH_TTL);
    // t1 is now the previous token: its replays converge on t2.
    let (_, blob) = expect_replay(
        s.rotate(child_rotation(
            "h1",
            "h1-0",
            "t1",
            "t2-other",
            T0 + 2 * MIN + SEC,
        ))
        .await
        .unwrap(),
    );
    assert_eq!(blob, b"sealed(t2)");
    // The chain continues.
    expect_rotated(
        s.rotate(child_rotation("h1", "t1", "t2", "t3", T0 + 3 * MIN))
            .await
            .unwrap(),
    );
    expect_rotated(
        s.rotate(child_rotation("h1", "t2", "t3", "t4", T0 + 4 * MIN))
            .await
            .unwrap(),
    );
    // The original token is theft afterwards.
    assert!(matches!(
        s.rotate(rotation("h1", "h1-0", "x", T0 + 5 * MIN))
            .await
            .unwrap(),
        RotateOutcome::Theft
    ));
    assert_eq!(get(s, "h1", T0 + 5 * MIN).await, None);
}

async fn successor_of_a_token_never_current_is_theft(h: Harness) {
    let s = &h.store;
    // Its parent was never a token of the session.
    create(s, "h1", "u1", T0).await;
    assert!(matches!(
        s.rotate(child_rotation("h1", "stranger", "t1", "t2", T0 + MIN))
            .await
            .unwrap(),
        RotateOutcome::Theft
    ));
    assert_eq!(get(s, "h1", T0 + MIN).await, None);

    // Its parent was current once, but no longer: a sibling of the token the
    // session moved to.
    create(s, "h2", "u1", T0).await;
    expect_rotated(
        s.rotate(rotation("h2", "h2-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    assert!(matches!(
        s.rotate(child_rotation(
            "h2",
            "h2-0",
            "t1-sibling",
            "t2",
            T0 + MIN + SEC
        ))
        .await
        .unwrap(),
        RotateOutcome::Theft
    ));
    assert_eq!(get(s, "h2", T0 + MIN + SEC).await, None);

    // Two rotations lost: the grandchild's parent is not current either.
    create(s, "h3", "u1", T0).await;
    let before = h.snapshot("h3").await;
    expect_rotated(
        s.rotate(rotation("h3", "h3-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    expect_rotated(
        s.rotate(child_rotation("h3", "h3-0", "t1", "t2", T0 + 2 * MIN))
            .await
            .unwrap(),
    );
    h.restore(before).await;
    assert!(matches!(
        s.rotate(child_rotation("h3", "t1", "t2", "t3", T0 + 3 * MIN))
            .await
            .unwrap(),
        RotateOutcome::Theft
    ));
}

async fn resent_rotation_is_answered_alike(h: Harness) {
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    // Even with replays disabled, the same request sent twice (its first
    // answer lost) rotates once and answers the same both times.
    let r = RotateRequest {
        grace_ms: 0,
        ..rotation("h1", "h1-0", "t1", T0 + MIN)
    };
    let first = expect_rotated(s.rotate(r.clone()).await.unwrap());
    let again = expect_rotated(s.rotate(r).await.unwrap());
    assert_eq!(first, again);
    expect_rotated(
        s.rotate(rotation("h1", "t1", "t2", T0 + 2 * MIN))
            .await
            .unwrap(),
    );
    // Once the successor moved on, the same request is theft as any replay.
    assert!(matches!(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + 2 * MIN + SEC))
            .await
            .unwrap(),
        RotateOutcome::Theft
    ));
}

async fn revoke_token_classifies(h: Harness) {
    let s = &h.store;
    let now = T0 + MIN;
    // The current token.
    create(s, "h1", "u1", T0).await;
    assert_eq!(
        s.revoke_token(revocation("h1", "h1-0", None, now))
            .await
            .unwrap(),
        RevokeOutcome::Revoked
    );
    assert_eq!(get(s, "h1", now).await, None);
    assert_eq!(
        s.revoke_token(revocation("h1", "h1-0", None, now))
            .await
            .unwrap(),
        RevokeOutcome::NoSession
    );
    // The rotated-away token inside its replay window.
    create(s, "h2", "u1", T0).await;
    expect_rotated(s.rotate(rotation("h2", "h2-0", "t1", now)).await.unwrap());
    assert_eq!(
        s.revoke_token(revocation("h2", "h2-0", None, now + SEC))
            .await
            .unwrap(),
        RevokeOutcome::Revoked
    );
    assert_eq!(get(s, "h2", now).await, None);
    // Outside it: theft, and the session is gone all the same.
    create(s, "h3", "u1", T0).await;
    expect_rotated(s.rotate(rotation("h3", "h3-0", "t1", now)).await.unwrap());
    assert_eq!(
        s.revoke_token(revocation("h3", "h3-0", None, now + GRACE))
            .await
            .unwrap(),
        RevokeOutcome::Theft
    );
    assert_eq!(get(s, "h3", now + GRACE).await, None);
    assert!(matches!(
        s.rotate(child_rotation("h3", "h3-0", "t1", "t2", now + GRACE))
            .await
            .unwrap(),
        RotateOutcome::NoSession
    ));
    // A token the session never had.
    create(s, "h4", "u1", T0).await;
    assert_eq!(
        s.revoke_token(revocation("h4", "nope", Some("nope-0"), now))
            .await
            .unwrap(),
        RevokeOutcome::Theft
    );
    // The successor whose rotation the store lost.
    create(s, "h5", "u1", T0).await;
    assert_eq!(
        s.revoke_token(revocation("h5", "t1", Some("h5-0"), now))
            .await
            .unwrap(),
        RevokeOutcome::Revoked
    );
    // An expired session.
    create(s, "h6", "u1", T0).await;
    assert_eq!(
        s.revoke_token(revocation("h6", "h6-0", None, T0 + REFRESH_TTL))
            .await
            .unwrap(),
        RevokeOutcome::NoSession
    );
    assert!(s.list_user("u1", now, MAX_AGE).await.unwrap().is_empty());
}

/// The adoption of one token of another Sign-in Service, under its
/// handle, at `now`; `first` stands in for the first token, sealed.
fn adoption(handle: &str, first: &str, now: u64) -> NewAdoption {
    NewAdoption {
        session: NewSession {
            record: record(handle, "u1", now),
            token_hash: hash(first),
            max_age_ms: MAX_AGE,
            now_ms: now,
        },
        sealed_token: format!("sealed({first})").into_bytes(),
        window_ms: GRACE,
    }
}

async fn adoptions_converge(h: Harness) {
    let s = &h.store;
    assert_eq!(
        s.adopt(adoption("a1", "first", T0)).await.unwrap(),
        AdoptOutcome::Created
    );
    // Within the window another adoption writes nothing and answers the
    // first one's session and token.
    assert_eq!(
        s.adopt(adoption("a1", "second", T0 + SEC)).await.unwrap(),
        AdoptOutcome::Adopted {
            session: record("a1", "u1", T0),
            sealed_token: b"sealed(first)".to_vec(),
        }
    );
    assert_eq!(s.list_user("u1", T0 + SEC, MAX_AGE).await.unwrap().len(), 1);
    // The session's token is the first adoption's.
    expect_rotated(
        s.rotate(rotation("a1", "first", "next", T0 + SEC))
            .await
            .unwrap(),
    );

    // Parallel adoptions: one writes, every other gets its token.
    let outcomes = futures_util::future::join_all(
        (0..16).map(|i| s.adopt(adoption("a2", &format!("t{i}"), T0))),
    )
    .await;
    let mut created = 0;
    let mut tokens = std::collections::HashSet::new();
    for o in outcomes {
        match o.unwrap() {
            AdoptOutcome::Created => created += 1,
            AdoptOutcome::Adopted { sealed_token, .. } => {
                tokens.insert(sealed_token);
            }
            AdoptOutcome::Gone => panic!("gone"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(tokens.len(), 1);
    let winner = String::from_utf8(tokens.into_iter().next().unwrap()).unwrap();
    let winner = &winner["sealed(".len()..winner.len() - 1];
    expect_rotated(
        s.rotate(rotation("a2", winner, "a2-next", T0 + SEC))
            .await
            .unwrap(),
    );

    // Revoked within the window: gone, and nothing written.
    assert!(s.revoke("a2").await.unwrap());
    assert_eq!(
        s.adopt(adoption("a2", "late", T0 + 2 * SEC)).await.unwrap(),
        AdoptOutcome::Gone
    );
    assert_eq!(get(s, "a2", T0 + 2 * SEC).await, None);

    // After the window, an adoption is a new one: it replaces the session.
    let later = T0 + GRACE + SEC;
    assert_eq!(
        s.adopt(adoption("a1", "again", later)).await.unwrap(),
        AdoptOutcome::Created
    );
    assert_eq!(get(s, "a1", later).await, Some(record("a1", "u1", later)));
    assert!(matches!(
        s.rotate(rotation("a1", "next", "x", later)).await.unwrap(),
        RotateOutcome::Theft
    ));
}

async fn ping(h: Harness) {
    h.store.ping().await.unwrap();
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::memory().await).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::redis().await).await
                }
            )*
        }
    };
}

suite!(
    create_get,
    rotate_extends_expiry,
    replay_in_grace_returns_same_blob,
    grace_zero_replay_is_theft,
    replay_after_grace_is_theft,
    replay_after_successor_used_is_theft,
    unknown_hash_is_theft,
    sliding_expiry,
    max_age_not_extended,
    revoke,
    list_and_revoke_user,
    concurrent_rotates_converge,
    lost_rotation_rolls_forward,
    successor_of_a_token_never_current_is_theft,
    resent_rotation_is_answered_alike,
    revoke_token_classifies,
    adoptions_converge,
    ping,
);

// ---- Redis only ------------------------------------------------------------

fn pttl(server: &RedisServer, key: &str) -> i64 {
    server.cli(&["PTTL", key]).parse().unwrap()
}

/// Asserts `op` fails within the store timeout plus slack; returns the error.
async fn fails_fast<T: std::fmt::Debug>(
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> StoreError {
    let started = Instant::now();
    let res = op.await;
    let took = started.elapsed();
    let err = res.expect_err("the store is down");
    eprintln!("failed in {took:?}: {err}");
    assert!(took <= TIMEOUT + SLACK, "took {took:?}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_have_ttls() {
    let h = redis().await;
    let server = h.redis.as_ref().unwrap();
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    let ttl = pttl(server, "t:s:{h1}");
    assert!(ttl > 0 && ttl as u64 <= REFRESH_TTL, "session PTTL {ttl}");
    let index_ttl = pttl(server, "t:u:{u1}");
    assert!(index_ttl as u64 > MAX_AGE - MIN, "index PTTL {index_ttl}");
    // Rotation late in the window resets the TTL to the new expiry.
    expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + 29 * MIN))
            .await
            .unwrap(),
    );
    let ttl = pttl(server, "t:s:{h1}");
    assert!(
        ttl as u64 > REFRESH_TTL - MIN,
        "session PTTL after rotation {ttl}"
    );
    // No token-like value is stored: only hashes and the sealed blob.
    let dump = server.cli(&["HGETALL", "t:s:{h1}"]);
    assert!(dump.contains(&hash("t1")) && dump.contains("sealed(t1)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rotation_loads_a_flushed_script() {
    let h = redis().await;
    let server = h.redis.as_ref().unwrap();
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    // As after a Redis restart or failover: the script cache is empty.
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    expect_rotated(
        s.rotate(rotation("h1", "t1", "t2", T0 + 2 * MIN))
            .await
            .unwrap(),
    );
    assert_eq!(server.cli(&["HGET", "t:s:{h1}", "cur"]), hash("t2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rotation_of_a_damaged_session_is_an_error() {
    let h = redis().await;
    let server = h.redis.as_ref().unwrap();
    let s = &h.store;
    // A field the rotation reads is missing.
    create(s, "h1", "u1", T0).await;
    server.cli(&["HDEL", "t:s:{h1}", "created"]);
    let err = s
        .rotate(rotation("h1", "h1-0", "t1", T0 + MIN))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    // A hash holding none of the fields a rotation reads.
    server.cli(&["HSET", "t:s:{h2}", "user", "u1"]);
    let err = s
        .rotate(rotation("h2", "h2-0", "t1", T0 + MIN))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    // Neither was changed or deleted.
    assert_eq!(server.cli(&["HGET", "t:s:{h1}", "cur"]), hash("h1-0"));
    assert_eq!(server.cli(&["EXISTS", "t:s:{h2}"]), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_theft_and_expiry_leave_the_user_index() {
    let h = redis().await;
    let server = h.redis.as_ref().unwrap();
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    create(s, "h2", "u1", T0).await;
    let theft = rotation("h1", "not-a-token-of-h1", "t1", T0 + MIN);
    assert!(matches!(
        s.rotate(theft).await.unwrap(),
        RotateOutcome::Theft
    ));
    assert_eq!(server.cli(&["SMEMBERS", "t:u:{u1}"]), "h2");
    let late = rotation("h2", "h2-0", "t1", T0 + REFRESH_TTL);
    assert!(matches!(
        s.rotate(late).await.unwrap(),
        RotateOutcome::NoSession
    ));
    assert_eq!(server.cli(&["EXISTS", "t:s:{h2}"]), "0");
    assert_eq!(server.cli(&["EXISTS", "t:u:{u1}"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_list_user_cleans_stale_index() {
    let h = redis().await;
    let server = h.redis.as_ref().unwrap();
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    create(s, "h2", "u1", T0).await;
    server.cli(&["DEL", "t:s:{h1}"]);
    let listed = s.list_user("u1", T0, MAX_AGE).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(server.cli(&["SMEMBERS", "t:u:{u1}"]), "h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_then_restarted() {
    let mut h = redis().await;
    let s = h.store.clone();
    create(&s, "h1", "u1", T0).await;
    h.redis.as_mut().unwrap().stop();
    for _ in 0..3 {
        fails_fast(s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))).await;
        fails_fast(s.get("h1", T0, MAX_AGE)).await;
        fails_fast(s.ping()).await;
    }
    h.redis.as_mut().unwrap().restart();
    // Nothing was lost or revoked, and the first call after the restart works.
    expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    s.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_times_out_then_recovers() {
    let h = redis().await;
    let server = h.redis.as_ref().unwrap();
    let s = &h.store;
    create(s, "h1", "u1", T0).await;
    server.pause();
    let err = fails_fast(s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))).await;
    assert!(matches!(err, StoreError::Timeout), "{err:?}");
    let err = fails_fast(s.get("h1", T0, MAX_AGE)).await;
    assert!(matches!(err, StoreError::Timeout), "{err:?}");
    server.resume();
    // The timed-out rotation may have run once Redis woke up; either way the
    // same request now converges on one successor, on the first try: the
    // connection that failed during the pause is not handed out again.
    match s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN + SEC)).await {
        Ok(RotateOutcome::Rotated(_)) => {}
        Ok(RotateOutcome::Replay {
            sealed_successor, ..
        }) => assert_eq!(sealed_successor, b"sealed(t1)"),
        other => panic!("first call after the pause: {other:?}"),
    }
    s.get("h1", T0 + MIN + SEC, MAX_AGE).await.unwrap();
    s.ping().await.unwrap();
    expect_rotated(
        s.rotate(rotation("h1", "t1", "t2", T0 + 2 * MIN))
            .await
            .unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start() {
    let mut server = RedisServer::start();
    server.stop();
    let started = Instant::now();
    let store = Store::connect(&redis_config(StoreUrl::Redis(server.url())))
        .await
        .expect("connect does not need Redis");
    assert!(started.elapsed() < TIMEOUT);
    fails_fast(store.ping()).await;
    fails_fast(store.create(new_session("h1", "u1", T0))).await;
    server.restart();
    store.ping().await.unwrap();
    create(&store, "h1", "u1", T0).await;
    assert!(get(&store, "h1", T0).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_rotates_across_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let cfg = redis_config(StoreUrl::Cluster(cluster.urls()));
    let s = Store::connect(&cfg).await.unwrap();
    // Sessions spread over the slots, each with its own user index.
    for i in 0..10 {
        create(&s, &format!("h{i}"), &format!("u{}", i % 3), T0).await;
    }
    for i in 0..10 {
        let h = format!("h{i}");
        expect_rotated(
            s.rotate(rotation(&h, &format!("{h}-0"), "t1", T0 + MIN))
                .await
                .unwrap(),
        );
    }
    assert_eq!(s.list_user("u0", T0 + MIN, MAX_AGE).await.unwrap().len(), 4);
    cluster.wait_replicated(Duration::from_secs(5));

    let victim = cluster
        .master_for_key("t:s:{h0}")
        .expect("a master holds h0");
    cluster.kill_node(victim);
    cluster.wait_healthy(Duration::from_secs(20));

    // The client learns the new topology; the session survived on the replica.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rec = loop {
        match s.rotate(rotation("h0", "t1", "t2", T0 + 2 * MIN)).await {
            Ok(o) => break expect_rotated(o),
            Err(e) if Instant::now() < deadline => {
                eprintln!("during failover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cluster store did not recover: {e}"),
        }
    };
    assert_eq!(rec.refresh_exp_ms, T0 + 2 * MIN + REFRESH_TTL);
    for i in 1..10 {
        let h = format!("h{i}");
        expect_rotated(
            s.rotate(rotation(&h, "t1", "t2", T0 + 2 * MIN))
                .await
                .unwrap(),
        );
    }
    assert_eq!(s.revoke_user("u0").await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_follows_failover() {
    let master = RedisServer::start();
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
    let sentinel = RedisSentinel::start("sis", master.port(), 1);
    let cfg = redis_config(StoreUrl::Sentinel {
        sentinels: vec![sentinel.url()],
        master: "sis".into(),
        tls: false,
    });
    let s = Store::connect(&cfg).await.unwrap();
    create(&s, "h1", "u1", T0).await;
    expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    wait_replicated(&master, Duration::from_secs(5));

    assert_eq!(sentinel.cli(&["SENTINEL", "FAILOVER", "sis"]), "OK");
    let deadline = Instant::now() + Duration::from_secs(15);
    while sentinel.master_port("sis") != Some(replica.port()) {
        assert!(
            Instant::now() < deadline,
            "sentinel failover did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Demote the old master now rather than wait for the sentinel's next
    // round to do it; until then a write could land on it and be lost (a
    // property of Sentinel itself).
    let new_port = replica.port().to_string();
    assert_eq!(master.cli(&["REPLICAOF", "127.0.0.1", &new_port]), "OK");

    // The store still talks to the old master; its READONLY answer sends the
    // store back to the sentinel for the new one.
    let deadline = Instant::now() + Duration::from_secs(5);
    let rec = loop {
        match s.rotate(rotation("h1", "t1", "t2", T0 + 2 * MIN)).await {
            Ok(o) => break expect_rotated(o),
            Err(e) if Instant::now() < deadline => eprintln!("after failover: {e}"),
            Err(e) => panic!("sentinel store did not follow the failover: {e}"),
        }
    };
    assert_eq!(rec.refresh_exp_ms, T0 + 2 * MIN + REFRESH_TTL);
    assert!(replica.cli(&["HGET", "t:s:{h1}", "cur"]) == hash("t2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connection_attempt_during_pause_is_not_handed_out() {
    let h = redis().await;
    let server = h.redis.as_ref().unwrap();
    create(&h.store, "h1", "u1", T0).await;
    // A second store, as a second worker would have: its first connection
    // attempt starts while Redis is paused and times out.
    let s = Store::connect(&redis_config(StoreUrl::Redis(server.url())))
        .await
        .unwrap();
    server.pause();
    let err = fails_fast(s.get("h1", T0, MAX_AGE)).await;
    assert!(matches!(err, StoreError::Timeout), "{err:?}");
    tokio::time::sleep(TIMEOUT * 2).await;
    server.resume();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The failed attempt is not the answer: the call is sent on a fresh
    // connection and succeeds on the first try.
    let started = Instant::now();
    expect_rotated(
        s.rotate(rotation("h1", "h1-0", "t1", T0 + MIN))
            .await
            .unwrap(),
    );
    assert!(started.elapsed() < TIMEOUT);
}
