//! Access tokens already verified, until they expire: the signature check is
//! the one costly step of the hot path, and a browser sends the same token for
//! minutes.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::tokens::jwt::AccessClaims;

const SHARDS: usize = 16;

/// Bytes at the end of a token that go into its cache key: the end of the
/// signature, which differs between any two tokens the gateway signed.
const KEYED_SUFFIX: usize = 64;

/// A verified token's claims, with its identity header values made once.
#[derive(Debug)]
pub struct Verified {
    pub claims: Arc<AccessClaims>,
    /// `sub`, `session_handle` and `client_id` as header values (`None`
    /// for one that cannot be a header value).
    pub identity_values: [Option<HeaderValue>; 3],
}

impl Verified {
    pub fn new(claims: Arc<AccessClaims>) -> Arc<Verified> {
        let value = |s: &str| HeaderValue::from_str(s).ok();
        Arc::new(Verified {
            identity_values: [
                value(&claims.sub),
                value(&claims.session_handle),
                value(&claims.client_id),
            ],
            claims,
        })
    }
}

type Shard = HashMap<u64, (Box<str>, Arc<Verified>)>;

pub struct VerifiedCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
}

impl VerifiedCache {
    /// Holds at most about `capacity` tokens; a full shard is emptied, which
    /// costs only re-verification.
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// The token's key: a keyed hash of its length and its last bytes, so a
    /// lookup does not hash a whole JWT. Only tokens whose signature checked
    /// out are stored, and a hit compares the whole token, so a forged token
    /// made to share a key only ever misses.
    fn key(&self, token: &str) -> u64 {
        let b = token.as_bytes();
        self.hasher
            .hash_one((b.len(), &b[b.len().saturating_sub(KEYED_SUFFIX)..]))
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[key as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// What is known of `token` if it was verified and has not expired.
    pub fn get(&self, token: &str, now_secs: u64) -> Option<Arc<Verified>> {
        let key = self.key(token);
        let mut shard = self.shard(key);
        match shard.get(&key) {
            Some((t, v)) if &**t == token && v.claims.exp > now_secs => Some(v.clone()),
            Some((t, _)) if &**t == token => {
                shard.remove(&key);
                None
            }
            _ => None,
        }
    }

    pub fn insert(&self, token: &str, verified: Arc<Verified>) {
        let key = self.key(token);
        let mut shard = self.shard(key);
        if shard.len() >= self.per_shard {
            shard.clear();
        }
        shard.insert(key, (token.into(), verified));
    }
}
