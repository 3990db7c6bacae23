//! Access tokens already verified, until they expire: the signature check is
//! the one costly step of the hot path, and a browser sends the same token for
//! minutes.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::tokens::jwt::AccessClaims;

const SHARDS: usize = 16;

pub struct VerifiedCache {
    shards: Vec<Mutex<HashMap<Box<str>, Arc<AccessClaims>>>>,
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

    fn shard(&self, token: &str) -> &Mutex<HashMap<Box<str>, Arc<AccessClaims>>> {
        &self.shards[self.hasher.hash_one(token) as usize % SHARDS]
    }

    /// The claims of `token` if it was verified and has not expired.
    pub fn get(&self, token: &str, now_secs: u64) -> Option<Arc<AccessClaims>> {
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        match shard.get(token) {
            Some(c) if c.exp > now_secs => Some(c.clone()),
            Some(_) => {
                shard.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, token: &str, claims: Arc<AccessClaims>) {
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard {
            shard.clear();
        }
        shard.insert(token.into(), claims);
    }
}
