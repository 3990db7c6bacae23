//! In-process session store: one mutex over a map of sessions and a per-user
//! index. For a single gateway instance (development, tests); sessions are
//! lost on restart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::{
    AdoptOutcome, NewAdoption, NewSession, RevokeOutcome, RevokeRequest, RotateOutcome,
    RotateRequest, SessionRecord, SessionStore, StoreError,
};

/// How often the sweeper drops expired sessions.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// One stored session: the record plus the token state of README, How rotation
/// works.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    record: SessionRecord,
    cur: String,
    prev: Option<String>,
    /// End of `prev`'s replay window.
    prev_until_ms: u64,
    /// Sealed successor of `prev`.
    succ: Vec<u8>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    users: HashMap<String, HashSet<String>>,
    /// Handle of an adopted session → the sealed first token and the end of
    /// the adoption window.
    adoptions: HashMap<String, (Vec<u8>, u64)>,
}

impl Inner {
    /// Writes a new session, replacing any under its handle.
    fn insert(&mut self, s: NewSession) {
        let handle = s.record.handle.clone();
        let user = s.record.user_uuid.clone();
        self.remove(&handle);
        self.sessions.insert(
            handle.clone(),
            Entry {
                record: s.record,
                cur: s.token_hash,
                prev: None,
                prev_until_ms: 0,
                succ: Vec::new(),
            },
        );
        self.users.entry(user).or_default().insert(handle);
    }

    fn remove(&mut self, handle: &str) -> Option<Entry> {
        let entry = self.sessions.remove(handle)?;
        let user = &entry.record.user_uuid;
        if let Some(set) = self.users.get_mut(user) {
            set.remove(handle);
            if set.is_empty() {
                self.users.remove(user);
            }
        }
        Some(entry)
    }
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    /// The latest `now_ms` any caller passed in. The sweeper expires entries
    /// against it rather than reading a clock, so an injected clock governs
    /// expiry here as everywhere else.
    latest_now_ms: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave an entry half-written
        // (every update is a single insert or remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn saw(&self, now_ms: u64) {
        self.latest_now_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    fn sweep(&self) -> usize {
        let now = self.latest_now_ms.load(Ordering::Relaxed);
        let mut inner = self.lock();
        let expired: Vec<String> = inner
            .sessions
            .iter()
            .filter(|(_, e)| e.record.refresh_exp_ms <= now)
            .map(|(h, _)| h.clone())
            .collect();
        for handle in &expired {
            inner.remove(handle);
        }
        inner.adoptions.retain(|_, (_, until)| now < *until);
        expired.len()
    }
}

/// Sessions in process memory. Cheap to clone; clones share the map.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store. Inside a Tokio runtime this also starts a sweeper task
    /// that drops expired sessions every few seconds and ends with the store.
    pub fn new() -> Self {
        let shared = Arc::new(Shared::default());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweeper(Arc::downgrade(&shared)));
        }
        MemoryStore { shared }
    }

    /// Drops sessions whose refresh expiry has passed (by the latest time any
    /// caller reported); returns how many.
    pub fn sweep(&self) -> usize {
        self.shared.sweep()
    }

    /// Number of stored sessions, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.shared.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of one session as it is now, for tests that make the store
    /// lose writes (as a promoted asynchronous replica or a restored backup
    /// does): take a snapshot, rotate, then [`restore`](Self::restore) it.
    #[doc(hidden)]
    pub fn snapshot(&self, handle: &str) -> Option<MemorySnapshot> {
        let inner = self.shared.lock();
        inner
            .sessions
            .get(handle)
            .map(|e| MemorySnapshot(handle.to_owned(), e.clone()))
    }

    /// Puts a session back as it was at [`snapshot`](Self::snapshot).
    #[doc(hidden)]
    pub fn restore(&self, snapshot: MemorySnapshot) {
        let MemorySnapshot(handle, entry) = snapshot;
        let mut inner = self.shared.lock();
        inner.remove(&handle);
        let user = entry.record.user_uuid.clone();
        inner.sessions.insert(handle.clone(), entry);
        inner.users.entry(user).or_default().insert(handle);
    }
}

/// One session as [`MemoryStore::snapshot`] saw it.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct MemorySnapshot(String, Entry);

async fn sweeper(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.sweep();
    }
}

/// Whether a presented token's sealed parent hash names `cur`.
fn is_parent(parent_hash: Option<&str>, cur: &str) -> bool {
    parent_hash.is_some_and(|p| !p.is_empty() && p == cur)
}

/// The rotation rules applied to one entry; the flag says the session must
/// be deleted. `rotate.lua` is the same logic for Redis.
fn rotate_entry(entry: &mut Entry, r: &RotateRequest) -> (RotateOutcome, bool) {
    let rec = &entry.record;
    let max_exp = rec.created_at_ms.saturating_add(r.max_age_ms);
    if r.now_ms >= rec.refresh_exp_ms || r.now_ms >= max_exp {
        return (RotateOutcome::NoSession, true);
    }
    let current = r.presented_hash == entry.cur;
    if current || is_parent(r.parent_hash.as_deref(), &entry.cur) {
        // Current, or the successor of current whose rotation the store
        // lost: either way the presented token is the one rotated away.
        entry.prev = Some(r.presented_hash.clone());
        entry.cur = r.new_hash.clone();
        entry.prev_until_ms = r.now_ms.saturating_add(r.grace_ms);
        entry.succ = r.sealed_successor.clone();
        entry.record.refresh_exp_ms = r.now_ms.saturating_add(r.refresh_ttl_ms).min(max_exp);
        let session = (&entry.record).into();
        return if current {
            (RotateOutcome::Rotated(session), false)
        } else {
            (RotateOutcome::RolledForward(session), false)
        };
    }
    let is_prev = entry.prev.as_deref() == Some(r.presented_hash.as_str());
    if is_prev && entry.cur == r.new_hash {
        // This very request, applied before and sent again.
        return (RotateOutcome::Rotated((&entry.record).into()), false);
    }
    if is_prev && r.grace_ms > 0 && r.now_ms < entry.prev_until_ms {
        return (
            RotateOutcome::Replay {
                session: (&entry.record).into(),
                sealed_successor: entry.succ.clone(),
            },
            false,
        );
    }
    (RotateOutcome::Theft, true)
}

/// The revoke rules applied to one entry (`revoke.lua` for Redis); the
/// session is deleted whatever the outcome.
fn revoke_entry(entry: &Entry, r: &RevokeRequest) -> RevokeOutcome {
    let rec = &entry.record;
    if !rec.is_live(r.now_ms, r.max_age_ms) {
        return RevokeOutcome::NoSession;
    }
    let good = r.presented_hash == entry.cur
        || is_parent(r.parent_hash.as_deref(), &entry.cur)
        || (entry.prev.as_deref() == Some(r.presented_hash.as_str())
            && r.grace_ms > 0
            && r.now_ms < entry.prev_until_ms);
    if good {
        RevokeOutcome::Revoked
    } else {
        RevokeOutcome::Theft
    }
}

impl SessionStore for MemoryStore {
    async fn create(&self, s: NewSession) -> Result<(), StoreError> {
        self.shared.saw(s.now_ms);
        self.shared.lock().insert(s);
        Ok(())
    }

    async fn adopt(&self, a: NewAdoption) -> Result<AdoptOutcome, StoreError> {
        let now = a.session.now_ms;
        self.shared.saw(now);
        let handle = a.session.record.handle.clone();
        let mut inner = self.shared.lock();
        if let Some((sealed, until)) = inner.adoptions.get(&handle) {
            if now < *until {
                let sealed_token = sealed.clone();
                let live = inner
                    .sessions
                    .get(&handle)
                    .map(|e| &e.record)
                    .filter(|r| r.is_live(now, a.session.max_age_ms))
                    .cloned();
                return Ok(match live {
                    Some(session) => AdoptOutcome::Adopted {
                        session,
                        sealed_token,
                    },
                    None => AdoptOutcome::Gone,
                });
            }
        }
        inner.adoptions.remove(&handle);
        inner.insert(a.session);
        if a.window_ms > 0 {
            inner
                .adoptions
                .insert(handle, (a.sealed_token, now.saturating_add(a.window_ms)));
        }
        Ok(AdoptOutcome::Created)
    }

    async fn rotate(&self, r: RotateRequest) -> Result<RotateOutcome, StoreError> {
        self.shared.saw(r.now_ms);
        let mut inner = self.shared.lock();
        let Some(entry) = inner.sessions.get_mut(&r.handle) else {
            return Ok(RotateOutcome::NoSession);
        };
        let (outcome, delete) = rotate_entry(entry, &r);
        if delete {
            inner.remove(&r.handle);
        }
        Ok(outcome)
    }

    async fn get(
        &self,
        handle: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.shared.saw(now_ms);
        let inner = self.shared.lock();
        Ok(inner
            .sessions
            .get(handle)
            .map(|e| &e.record)
            .filter(|r| r.is_live(now_ms, max_age_ms))
            .cloned())
    }

    async fn revoke(&self, handle: &str) -> Result<bool, StoreError> {
        Ok(self.shared.lock().remove(handle).is_some())
    }

    async fn revoke_token(&self, r: RevokeRequest) -> Result<RevokeOutcome, StoreError> {
        self.shared.saw(r.now_ms);
        let mut inner = self.shared.lock();
        Ok(match inner.remove(&r.handle) {
            Some(entry) => revoke_entry(&entry, &r),
            None => RevokeOutcome::NoSession,
        })
    }

    async fn list_user(
        &self,
        user_uuid: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.shared.saw(now_ms);
        let inner = self.shared.lock();
        let mut out: Vec<SessionRecord> = inner
            .users
            .get(user_uuid)
            .into_iter()
            .flatten()
            .filter_map(|h| inner.sessions.get(h))
            .map(|e| &e.record)
            .filter(|r| r.is_live(now_ms, max_age_ms))
            .cloned()
            .collect();
        sort_records(&mut out);
        Ok(out)
    }

    async fn revoke_user(&self, user_uuid: &str) -> Result<usize, StoreError> {
        let mut inner = self.shared.lock();
        let handles = inner.users.remove(user_uuid).unwrap_or_default();
        Ok(handles
            .iter()
            .filter(|h| inner.sessions.remove(*h).is_some())
            .count())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Oldest first; the handle breaks ties so the order is stable.
pub(super) fn sort_records(records: &mut [SessionRecord]) {
    records.sort_by(|a, b| (a.created_at_ms, &a.handle).cmp(&(b.created_at_ms, &b.handle)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_session(handle: &str, now: u64) -> NewSession {
        NewSession {
            record: SessionRecord {
                handle: handle.into(),
                user_uuid: "u1".into(),
                client_id: "web".into(),
                user_attributes: "{}".into(),
                created_at_ms: now,
                refresh_exp_ms: now + 1_000,
            },
            token_hash: "h0".into(),
            max_age_ms: 10_000,
            now_ms: now,
        }
    }

    #[tokio::test]
    async fn sweep_uses_latest_caller_time() {
        let store = MemoryStore::new();
        store.create(new_session("a", 1_000)).await.unwrap();
        store.create(new_session("b", 1_500)).await.unwrap();
        assert_eq!(store.sweep(), 0);
        // A caller at t=2200 makes "a" (exp 2000) sweepable, not "b" (exp 2500).
        assert!(store.get("b", 2_200, 10_000).await.unwrap().is_some());
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.len(), 1);
        assert!(store.list_user("u1", 2_200, 10_000).await.unwrap().len() == 1);
    }

    #[tokio::test]
    async fn theft_removes_user_index_entry() {
        let store = MemoryStore::new();
        store.create(new_session("a", 1_000)).await.unwrap();
        let r = RotateRequest {
            handle: "a".into(),
            presented_hash: "nope".into(),
            parent_hash: Some("nope either".into()),
            new_hash: "h1".into(),
            sealed_successor: vec![1],
            now_ms: 1_100,
            grace_ms: 100,
            refresh_ttl_ms: 1_000,
            max_age_ms: 10_000,
        };
        assert!(matches!(
            store.rotate(r).await.unwrap(),
            RotateOutcome::Theft
        ));
        assert!(store.shared.lock().users.is_empty());
    }
}
