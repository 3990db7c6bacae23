//! The memory of recent inline refreshes: a token refreshed in this process
//! within its replay window is answered again without a store call.

use std::collections::HashMap;

use crate::tokens::token_hash;

use super::{Bundle, Sessions};

/// Results of recent inline refreshes, reused for the replay window so a burst
/// of requests carrying one refresh cookie costs one store call.
#[derive(Default)]
pub(super) struct Recent {
    /// Presented token hash → its successor bundle and the end of its window.
    by_presented: HashMap<String, (Bundle, u64)>,
    /// Successor token hash → the presented token hash it came from; when the
    /// successor is itself rotated, the older entry must stop answering.
    by_successor: HashMap<String, String>,
}

/// Past this many entries, expired ones are swept on insert.
const RECENT_SWEEP_AT: usize = 50_000;

impl Sessions {
    /// The result of a recent inline refresh of the token with this hash,
    /// while its replay window lasts.
    pub(super) fn remembered(&self, presented_hash: &str) -> Option<Bundle> {
        let now = self.clock.now_ms();
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .by_presented
            .get(presented_hash)
            .filter(|(_, until)| now < *until)
            .map(|(bundle, _)| bundle.clone())
    }

    /// Remembers `bundle` as the answer to the token with this hash for the
    /// replay window.
    pub(super) fn remember(&self, presented_hash: &str, bundle: &Bundle) {
        let now = self.clock.now_ms();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.by_presented.len() >= RECENT_SWEEP_AT {
            let Recent {
                by_presented,
                by_successor,
            } = &mut *recent;
            by_presented.retain(|_, (_, until)| now < *until);
            by_successor.retain(|_, presented| by_presented.contains_key(presented));
        }
        recent
            .by_successor
            .insert(token_hash(&bundle.refresh_token), presented_hash.to_owned());
        recent.by_presented.insert(
            presented_hash.to_owned(),
            (bundle.clone(), now + self.grace.as_millis() as u64),
        );
    }

    /// `presented_hash` was just rotated away: a remembered result that handed
    /// it out as a successor must not be served any more.
    pub(super) fn forget_predecessor(&self, presented_hash: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(older) = recent.by_successor.remove(presented_hash) {
            recent.by_presented.remove(&older);
        }
    }

    /// The session of the token with this hash is gone: forget the result
    /// that handed it out and the result it was answered with.
    pub(super) fn forget_token(&self, hash: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(older) = recent.by_successor.remove(hash) {
            recent.by_presented.remove(&older);
        }
        if let Some((bundle, _)) = recent.by_presented.remove(hash) {
            recent
                .by_successor
                .remove(&bundle.claims.refresh_token_hash);
        }
    }
}
