//! Sealed `v1:` refresh tokens.
//!
//! A token has SiS's own wire shape, `v1:<sealed>.<nonce>.V0`: `<sealed>` is
//! base64url (no padding, so no `.`) of
//! `[8-byte key id][12-byte random nonce][AES-256-GCM ciphertext + tag]`,
//! `<nonce>` is the payload's nonce (32 lower-case hex digits, sealed inside
//! as well) and `V0` the outer version. Clients split a token at `.` and put
//! it back together (the VA mobile app keeps the first two parts in two
//! stores and rebuilds `${part0}.${part1}.V0`), so the outer parts are checked
//! against the sealed ones once the tag checks out: a changed nonce is
//! [`OpenError::Nonce`], a changed version [`OpenError::Version`]. Tokens of
//! the earlier shape, `v1:<sealed>` alone, still open.
//! The key id is derived from the key itself, so a set of sealing keys needs no
//! index: the first key seals, every key opens, and a rotated-out key keeps opening
//! the tokens it sealed for as long as it stays configured. The additional data binds
//! the `v1` prefix and the key id.
//!
//! The plaintext is `[inner version][field]*n`, each field a LEB128 length followed
//! by UTF-8 bytes, in the order of [`RefreshPayload`]'s fields. Inner version 2
//! has six fields, the sixth the parent token's hash (empty for a session's first
//! token); inner version 1, sealed by earlier builds, has the first five and
//! opens with no parent. Nothing about it is trusted before the tag checks out,
//! and the decoder rejects anything but exactly the fields of its version.
//!
//! Nonces are random, so one sealing key should not seal more than about 2^32
//! tokens (at 10,000 rotations/s, five days of uninterrupted peak load); rotate
//! sealing keys well before that.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::{digest, hkdf};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::{fill_random, hex};

const PREFIX: &str = "v1:";
/// The outer version, after the last `.`.
const OUTER_VERSION: &str = "V0";
/// Additional data: the outer format version, then the key id.
const AAD_LABEL: &[u8] = b"v1";
const KEY_ID_LABEL: &[u8] = b"sis-gateway refresh-token key id v1\0";
/// The inner version this gateway seals: six fields, the parent hash last.
const INNER_VERSION: u8 = 2;
/// The inner version of earlier builds: five fields, no parent hash. Still opened.
const INNER_VERSION_NO_PARENT: u8 = 1;
const KEY_ID_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Longer inputs are rejected before any decoding.
const MAX_TOKEN_LEN: usize = 4096;
const FIELDS: usize = 6;

const SUCCESSOR_SALT: &[u8] = b"sis-gateway successor salt v1";
const SUCCESSOR_INFO: &[u8] = b"sis-gateway successor key v1";
const SUCCESSOR_AAD: &[u8] = b"sis-gateway successor v1";

/// Random bytes behind a payload's anti-CSRF token and nonce (16 each).
pub(crate) const PAYLOAD_RANDOM_LEN: usize = 32;
/// Length of the random AES-GCM nonces of tokens and sealed successors.
pub(crate) const SEAL_NONCE_LEN: usize = NONCE_LEN;

/// What a refresh token carries. Expiry lives in the store, not here.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshPayload {
    pub session_handle: String,
    pub user_uuid: String,
    pub client_id: String,
    pub anti_csrf_token: String,
    /// Random part: two tokens of one session never look alike.
    pub nonce: String,
    /// [`token_hash`](super::token_hash) of the token this one succeeds;
    /// `None` for a session's first token (and for tokens of inner version 1).
    /// Lets a store that lost the rotation to this token roll it forward.
    pub parent_hash: Option<String>,
}

impl RefreshPayload {
    /// A payload with a fresh anti-CSRF token and nonce.
    pub fn new(
        session_handle: impl Into<String>,
        user_uuid: impl Into<String>,
        client_id: impl Into<String>,
    ) -> Self {
        // One draw from the generator for both random fields.
        let mut random = [0u8; PAYLOAD_RANDOM_LEN];
        fill_random(&mut random);
        Self::with_random(session_handle, user_uuid, client_id, &random)
    }

    /// A payload whose anti-CSRF token and nonce are the hex of `random`
    /// (fresh bytes from the system generator, drawn by the caller together
    /// with others it needs).
    pub(crate) fn with_random(
        session_handle: impl Into<String>,
        user_uuid: impl Into<String>,
        client_id: impl Into<String>,
        random: &[u8; PAYLOAD_RANDOM_LEN],
    ) -> Self {
        let (anti_csrf, nonce) = random.split_at(PAYLOAD_RANDOM_LEN / 2);
        RefreshPayload {
            session_handle: session_handle.into(),
            user_uuid: user_uuid.into(),
            client_id: client_id.into(),
            anti_csrf_token: hex(anti_csrf),
            nonce: hex(nonce),
            parent_hash: None,
        }
    }

    /// The same payload, naming the token it succeeds by its hash.
    pub fn with_parent(mut self, parent_hash: impl Into<String>) -> Self {
        self.parent_hash = Some(parent_hash.into());
        self
    }
}

impl fmt::Debug for RefreshPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshPayload")
            .field("session_handle", &self.session_handle)
            .field("user_uuid", &self.user_uuid)
            .field("client_id", &self.client_id)
            .field("anti_csrf_token", &"[redacted]")
            .field("nonce", &"[redacted]")
            .field("parent_hash", &self.parent_hash)
            .finish()
    }
}

/// Why a refresh token could not be opened.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not a token sealed by one of our keys: bad format, bad base64, unknown key
    /// id, bad tag, or a plaintext that does not decode.
    #[error("refresh token cannot be decrypted")]
    Undecryptable,
    /// Authentic, but of an inner or outer version this gateway does not accept.
    #[error("refresh token version is invalid")]
    Version,
    /// Authentic, but the outer nonce differs from the sealed one.
    #[error("refresh nonce is invalid")]
    Nonce,
}

struct SealKey {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

/// Seals and opens refresh tokens. The first key seals, all keys open.
/// Cloning is cheap.
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<[SealKey]>,
    ephemeral: bool,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .field("ephemeral", &self.ephemeral)
            .finish()
    }
}

impl Sealer {
    /// A sealer over `keys` (the first seals). With no keys it falls back to an
    /// ephemeral key and warns: such tokens die with the process.
    pub fn new(keys: &[[u8; 32]]) -> Sealer {
        if keys.is_empty() {
            tracing::warn!(
                "no tokens.sealing_keys configured: using an ephemeral sealing key; \
                 refresh tokens will not survive a restart nor work across instances. \
                 Do not run this in production"
            );
            return Sealer::ephemeral();
        }
        Sealer {
            keys: keys.iter().map(seal_key).collect(),
            ephemeral: false,
        }
    }

    /// A sealer over one random key, for tests and development.
    pub fn ephemeral() -> Sealer {
        let mut key = [0u8; 32];
        fill_random(&mut key);
        Sealer {
            keys: Arc::new([seal_key(&key)]),
            ephemeral: true,
        }
    }

    /// True when the sealing key is random and lives only in this process.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// Seals `p` into a `v1:` token under the first key.
    pub fn seal(&self, p: &RefreshPayload) -> String {
        self.seal_with_version(p, INNER_VERSION)
    }

    /// As [`seal`](Self::seal), with a nonce the caller drew from the system
    /// generator (together with other random values it needed).
    pub(crate) fn seal_with_nonce(
        &self,
        p: &RefreshPayload,
        nonce: [u8; SEAL_NONCE_LEN],
    ) -> String {
        self.seal_inner(p, INNER_VERSION, nonce)
    }

    /// As [`seal`](Self::seal), with an arbitrary inner version (tests only).
    #[doc(hidden)]
    pub fn seal_with_version(&self, p: &RefreshPayload, version: u8) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        self.seal_inner(p, version, nonce)
    }

    fn seal_inner(&self, p: &RefreshPayload, version: u8, nonce: [u8; NONCE_LEN]) -> String {
        let k = &self.keys[0];
        let parent = p.parent_hash.as_deref().unwrap_or("");
        let all: [&str; FIELDS] = [
            &p.session_handle,
            &p.user_uuid,
            &p.client_id,
            &p.anti_csrf_token,
            &p.nonce,
            parent,
        ];
        // Version 1 (tests only) has no parent field.
        let fields = if version == INNER_VERSION_NO_PARENT {
            &all[..FIELDS - 1]
        } else {
            &all[..]
        };
        let body_len: usize = fields.iter().map(|f| f.len() + 5).sum();
        let mut buf = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + 1 + body_len + TAG_LEN);
        buf.extend_from_slice(&k.id);
        buf.extend_from_slice(&nonce);
        let header_len = buf.len();
        buf.push(version);
        for f in fields {
            put_len(&mut buf, f.len());
            buf.extend_from_slice(f.as_bytes());
        }
        let tag = k
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&k.id)),
                &mut buf[header_len..],
            )
            .expect("AES-GCM sealing of a short buffer cannot fail");
        buf.extend_from_slice(tag.as_ref());
        let outer_len = 2 + p.nonce.len() + OUTER_VERSION.len();
        let mut out = String::with_capacity(PREFIX.len() + buf.len().div_ceil(3) * 4 + outer_len);
        out.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&buf, &mut out);
        out.push('.');
        out.push_str(&p.nonce);
        out.push('.');
        out.push_str(OUTER_VERSION);
        out
    }

    /// Opens a token sealed by any of our keys. Never panics, whatever `token` is.
    pub fn open(&self, token: &str) -> Result<RefreshPayload, OpenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(OpenError::Undecryptable);
        }
        let (b64, outer) = split_outer(token)?;
        // Decoded on the stack: a token is at most MAX_TOKEN_LEN characters.
        let mut buf = [0u8; MAX_TOKEN_LEN / 4 * 3];
        let len = URL_SAFE_NO_PAD
            .decode_slice(b64, &mut buf)
            .map_err(|_| OpenError::Undecryptable)?;
        let raw = &mut buf[..len];
        if raw.len() < KEY_ID_LEN + NONCE_LEN + 1 + TAG_LEN {
            return Err(OpenError::Undecryptable);
        }
        let (id, rest) = raw.split_at_mut(KEY_ID_LEN);
        let k = self
            .keys
            .iter()
            .find(|k| k.id == *id)
            .ok_or(OpenError::Undecryptable)?;
        let (nonce, sealed) = rest.split_at_mut(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Undecryptable)?;
        let plain = k
            .key
            .open_in_place(nonce, Aad::from(aad(&k.id)), sealed)
            .map_err(|_| OpenError::Undecryptable)?;
        let payload = decode_payload(plain)?;
        check_outer(&payload, outer)?;
        Ok(payload)
    }

    /// True when `token` has the SiS shape (`v1:` and visible ASCII) but
    /// none of these keys sealed it: its sealed part is not this format's
    /// base64url, or names a key id this sealer does not hold. Such a token
    /// is another Sign-in Service's. A token under one of these keys that
    /// does not open (altered) is not foreign.
    pub fn is_foreign(&self, token: &str) -> bool {
        let Some(rest) = token.strip_prefix(PREFIX) else {
            return false;
        };
        if rest.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return false;
        }
        let sealed = rest.split('.').next().unwrap_or_default();
        let mut buf = [0u8; MAX_TOKEN_LEN / 4 * 3];
        match URL_SAFE_NO_PAD.decode_slice(sealed, &mut buf) {
            Ok(len) if len >= KEY_ID_LEN => !self.keys.iter().any(|k| k.id == buf[..KEY_ID_LEN]),
            _ => true,
        }
    }
}

/// The parts of a token after its sealed part: `.<nonce>.<version>`.
struct Outer<'a> {
    nonce: &'a str,
    version: &'a str,
}

/// The sealed part of a token `v1:<sealed>.<nonce>.<version>` and its outer
/// parts (`None` for the earlier shape, `v1:<sealed>`). `<sealed>` has no
/// `.`, so it ends at the first.
fn split_outer(token: &str) -> Result<(&str, Option<Outer<'_>>), OpenError> {
    let rest = token.strip_prefix(PREFIX).ok_or(OpenError::Undecryptable)?;
    match rest.split_once('.') {
        None => Ok((rest, None)),
        Some((sealed, tail)) => {
            let (nonce, version) = tail.rsplit_once('.').ok_or(OpenError::Undecryptable)?;
            Ok((sealed, Some(Outer { nonce, version })))
        }
    }
}

/// The outer version and nonce agree with the sealed payload (checked in
/// this order, as the Rails Sign-in Service does).
fn check_outer(payload: &RefreshPayload, outer: Option<Outer<'_>>) -> Result<(), OpenError> {
    let Some(outer) = outer else {
        return Ok(());
    };
    if outer.version != OUTER_VERSION {
        return Err(OpenError::Version);
    }
    if outer.nonce != payload.nonce {
        return Err(OpenError::Nonce);
    }
    Ok(())
}

fn seal_key(secret: &[u8; 32]) -> SealKey {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(KEY_ID_LABEL);
    ctx.update(secret);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&ctx.finish().as_ref()[..KEY_ID_LEN]);
    let key = UnboundKey::new(&AES_256_GCM, secret).expect("a 32-byte key fits AES-256-GCM");
    SealKey {
        id,
        key: LessSafeKey::new(key),
    }
}

fn aad(id: &[u8; KEY_ID_LEN]) -> [u8; AAD_LABEL.len() + KEY_ID_LEN] {
    let mut a = [0u8; AAD_LABEL.len() + KEY_ID_LEN];
    a[..AAD_LABEL.len()].copy_from_slice(AAD_LABEL);
    a[AAD_LABEL.len()..].copy_from_slice(id);
    a
}

/// LEB128 length.
fn put_len(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf.push(b);
            return;
        }
        buf.push(b | 0x80);
    }
}

/// Reads a LEB128 length of at most two bytes (tokens are capped well below 16 KiB),
/// in its shortest form only.
fn take_len(input: &mut &[u8]) -> Option<usize> {
    let (&b0, rest) = input.split_first()?;
    if b0 & 0x80 == 0 {
        *input = rest;
        return Some(usize::from(b0));
    }
    let (&b1, rest) = rest.split_first()?;
    if b1 & 0x80 != 0 || b1 == 0 {
        return None;
    }
    *input = rest;
    Some(usize::from(b0 & 0x7f) | (usize::from(b1) << 7))
}

fn take_field(input: &mut &[u8]) -> Option<String> {
    let len = take_len(input)?;
    if len > input.len() {
        return None;
    }
    let (field, rest) = input.split_at(len);
    *input = rest;
    std::str::from_utf8(field).ok().map(str::to_owned)
}

fn decode_payload(plain: &[u8]) -> Result<RefreshPayload, OpenError> {
    let (&version, mut rest) = plain.split_first().ok_or(OpenError::Undecryptable)?;
    let count = match version {
        INNER_VERSION => FIELDS,
        INNER_VERSION_NO_PARENT => FIELDS - 1,
        _ => return Err(OpenError::Version),
    };
    let mut fields: [String; FIELDS] = Default::default();
    for f in &mut fields[..count] {
        *f = take_field(&mut rest).ok_or(OpenError::Undecryptable)?;
    }
    if !rest.is_empty() {
        return Err(OpenError::Undecryptable);
    }
    let [session_handle, user_uuid, client_id, anti_csrf_token, nonce, parent] = fields;
    Ok(RefreshPayload {
        session_handle,
        user_uuid,
        client_id,
        anti_csrf_token,
        nonce,
        parent_hash: (!parent.is_empty()).then_some(parent),
    })
}

/// The key that only a holder of `presented_token` can derive: HKDF-SHA256
/// (RFC 5869) of the token, with [`SUCCESSOR_SALT`] and [`SUCCESSOR_INFO`].
/// The label differs from plain SHA-256 ([`super::token_hash`]), so the store
/// cannot derive it.
fn successor_key(presented_token: &str) -> LessSafeKey {
    let prk =
        hkdf::Salt::new(hkdf::HKDF_SHA256, SUCCESSOR_SALT).extract(presented_token.as_bytes());
    let okm = prk
        .expand(&[SUCCESSOR_INFO], &AES_256_GCM)
        .expect("HKDF output of one AES-256 key is within bounds");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// Seals `successor_token` so that only a holder of `presented_token` can open it:
/// `[12-byte nonce][ciphertext + tag]`. This is what the store keeps for the replay
/// window; it knows only `token_hash(presented_token)`.
pub fn seal_successor(presented_token: &str, successor_token: &str) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    seal_successor_with_nonce(presented_token, successor_token, nonce)
}

/// As [`seal_successor`], with a nonce the caller drew from the system
/// generator.
pub(crate) fn seal_successor_with_nonce(
    presented_token: &str,
    successor_token: &str,
    nonce: [u8; SEAL_NONCE_LEN],
) -> Vec<u8> {
    let key = successor_key(presented_token);
    let mut buf = Vec::with_capacity(NONCE_LEN + successor_token.len() + TAG_LEN);
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(successor_token.as_bytes());
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(SUCCESSOR_AAD),
            &mut buf[NONCE_LEN..],
        )
        .expect("AES-GCM sealing of a short buffer cannot fail");
    buf.extend_from_slice(tag.as_ref());
    buf
}

/// Opens what [`seal_successor`] made; `None` unless `presented_token` is the token
/// it was sealed for.
pub fn open_successor(presented_token: &str, sealed: &[u8]) -> Option<String> {
    if sealed.len() < NONCE_LEN + TAG_LEN || sealed.len() > MAX_TOKEN_LEN + NONCE_LEN + TAG_LEN {
        return None;
    }
    let key = successor_key(presented_token);
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut ct = ct.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(SUCCESSOR_AAD), &mut ct)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> RefreshPayload {
        RefreshPayload::new(
            "1b6bbd3e-8c4f-4f47-9c2c-0a0d3c1c6a11",
            "c0ffee00-1234-4abc-8def-000000000001",
            "vaweb",
        )
    }

    /// The base64url part of a token, between `v1:` and the first `.`.
    fn sealed_part(t: &str) -> &str {
        t[3..].split('.').next().unwrap()
    }

    #[test]
    fn foreign_tokens_are_told_from_ours() {
        let s = Sealer::ephemeral();
        let ours = s.seal(&payload());
        assert!(!s.is_foreign(&ours));
        // Ours, altered: still ours (it does not open, but is not migrated).
        let mut altered = ours.clone().into_bytes();
        let i = altered.len() - 10;
        altered[i] = if altered[i] == b'0' { b'1' } else { b'0' };
        assert!(!s.is_foreign(std::str::from_utf8(&altered).unwrap()));
        // Another sealer's, and the Rails shape (standard base64).
        assert!(s.is_foreign(&Sealer::ephemeral().seal(&payload())));
        assert!(s.is_foreign("v1:+/8AAbc=.0123456789abcdef0123456789abcdef.V0"));
        assert!(s.is_foreign("v1:YWJj"));
        for not_sis in ["", "v1:", "v2:abc", "abc", "v1:a b", "v1:\u{e9}"] {
            assert!(!s.is_foreign(not_sis), "{not_sis:?}");
        }
    }

    #[test]
    fn round_trip() {
        let s = Sealer::ephemeral();
        let p = payload();
        let t = s.seal(&p);
        assert!(t.starts_with("v1:"));
        assert!(t.len() < 400, "token is {} bytes", t.len());
        let parts: Vec<&str> = t[3..].split('.').collect();
        assert_eq!(parts.len(), 3, "{t}");
        assert!(parts[0]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(parts[1], p.nonce);
        assert_eq!(parts[1].len(), 32);
        assert!(parts[1]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(parts[2], "V0");
        assert_eq!(s.open(&t), Ok(p.clone()));
        // Two seals of one payload differ.
        assert_ne!(s.seal(&p), t);
    }

    #[test]
    fn round_trip_odd_fields() {
        let s = Sealer::ephemeral();
        let mut p = payload();
        p.client_id = "ü".repeat(100);
        p.session_handle = String::new();
        assert_eq!(s.open(&s.seal(&p)), Ok(p));
    }

    #[test]
    fn new_payload_has_fresh_random_parts() {
        let a = payload();
        let b = payload();
        assert_eq!(a.anti_csrf_token.len(), 32);
        assert_ne!(a.anti_csrf_token, b.anti_csrf_token);
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn debug_redacts_secrets() {
        let p = payload();
        let d = format!("{p:?}");
        assert!(!d.contains(&p.anti_csrf_token));
        assert!(!d.contains(&p.nonce));
        assert!(d.contains("vaweb"));
    }

    #[test]
    fn tampering_any_byte_is_undecryptable() {
        let s = Sealer::ephemeral();
        let t = s.seal(&payload());
        let sealed = sealed_part(&t);
        let outer = &t[3 + sealed.len()..];
        let raw = URL_SAFE_NO_PAD.decode(sealed).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let bad = URL_SAFE_NO_PAD.encode(&bad);
            for bad in [format!("v1:{bad}{outer}"), format!("v1:{bad}")] {
                assert_eq!(s.open(&bad), Err(OpenError::Undecryptable), "byte {i}");
            }
        }
        // Tampering with the text itself, character by character.
        for i in 0..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bytes).unwrap();
            assert!(s.open(&bad).is_err(), "char {i}");
        }
        // Truncated and extended: the sealed part, then the outer ones.
        let old = format!("v1:{sealed}");
        assert_eq!(s.open(&old[..old.len() - 1]), Err(OpenError::Undecryptable));
        assert_eq!(s.open(&format!("{old}A")), Err(OpenError::Undecryptable));
        assert_eq!(s.open(&t[..t.len() - 1]), Err(OpenError::Version));
        assert_eq!(s.open(&format!("{t}A")), Err(OpenError::Version));
    }

    #[test]
    fn outer_nonce_and_version_are_checked() {
        let s = Sealer::ephemeral();
        let p = payload();
        let t = s.seal(&p);
        let sealed = sealed_part(&t);
        let nonce = &p.nonce;
        // What the VA mobile app does: split at `.`, keep the first two
        // parts apart, rebuild with `.V0`.
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(
            s.open(&format!("{}.{}.V0", parts[0], parts[1])),
            Ok(p.clone())
        );
        // The earlier shape, the sealed part alone, still opens.
        assert_eq!(s.open(&format!("v1:{sealed}")), Ok(p.clone()));
        let other = "0".repeat(32);
        let upper = nonce.to_ascii_uppercase();
        for bad_nonce in [other.as_str(), "", &nonce[1..], &upper, "a.b"] {
            let bad = format!("v1:{sealed}.{bad_nonce}.V0");
            assert_eq!(s.open(&bad), Err(OpenError::Nonce), "{bad_nonce:?}");
        }
        for bad_version in ["V1", "v0", "", "V0 ", "V00"] {
            let bad = format!("v1:{sealed}.{nonce}.{bad_version}");
            assert_eq!(s.open(&bad), Err(OpenError::Version), "{bad_version:?}");
        }
        // The version is checked before the nonce.
        assert_eq!(
            s.open(&format!("v1:{sealed}.{other}.V9")),
            Err(OpenError::Version)
        );
        // Wrong numbers of parts, or a sealed part that is not ours.
        for bad in [
            format!("v1:{sealed}."),
            format!("v1:{sealed}.{nonce}"),
            format!("v1:.{nonce}.V0"),
            format!("v1:{sealed}A.{nonce}.V0"),
            format!("{sealed}.{nonce}.V0"),
        ] {
            assert_eq!(s.open(&bad), Err(OpenError::Undecryptable), "{bad}");
        }
    }

    #[test]
    fn other_key_is_undecryptable() {
        let t = Sealer::ephemeral().seal(&payload());
        assert_eq!(Sealer::ephemeral().open(&t), Err(OpenError::Undecryptable));
    }

    #[test]
    fn rotation_keeps_old_tokens_open() {
        let old = [7u8; 32];
        let new = [9u8; 32];
        let before = Sealer::new(&[old]);
        let after = Sealer::new(&[new, old]);
        let p = payload();
        let t_old = before.seal(&p);
        assert_eq!(after.open(&t_old), Ok(p.clone()));
        let t_new = after.seal(&p);
        assert_eq!(after.open(&t_new), Ok(p.clone()));
        assert_eq!(before.open(&t_new), Err(OpenError::Undecryptable));
        // Same keys on another instance: same result.
        assert_eq!(Sealer::new(&[new]).open(&t_new), Ok(p));
    }

    #[test]
    fn parent_hash_round_trips() {
        let s = Sealer::ephemeral();
        let p = payload().with_parent(super::super::token_hash("v1:parent"));
        let t = s.seal(&p);
        assert!(t.len() < 400, "token is {} bytes", t.len());
        assert_eq!(s.open(&t), Ok(p.clone()));
        // A first token carries no parent.
        assert_eq!(s.open(&s.seal(&payload())).unwrap().parent_hash, None);
    }

    #[test]
    fn five_field_tokens_keep_opening() {
        // Sealed by an earlier build: inner version 1, five fields.
        let s = Sealer::ephemeral();
        let p = payload();
        let t = s.seal_with_version(&p.clone().with_parent("ignored"), 1);
        assert_eq!(s.open(&t), Ok(p));
    }

    #[test]
    fn foreign_inner_version() {
        let s = Sealer::ephemeral();
        let t = s.seal_with_version(&payload(), 3);
        assert_eq!(s.open(&t), Err(OpenError::Version));
        let t = s.seal_with_version(&payload(), 0);
        assert_eq!(s.open(&t), Err(OpenError::Version));
    }

    #[test]
    fn empty_key_list_is_ephemeral() {
        let s = Sealer::new(&[]);
        assert!(s.is_ephemeral());
        assert!(!Sealer::new(&[[1; 32]]).is_ephemeral());
        let p = payload();
        assert_eq!(s.open(&s.seal(&p)), Ok(p));
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        let s = Sealer::ephemeral();
        let long = "A".repeat(10 * 1024);
        let long_v1 = format!("v1:{long}");
        let inputs: Vec<&str> = vec![
            "",
            "v1:",
            "v1",
            "v2:abc",
            "V1:abc",
            "v1:=",
            "v1:AAAA",
            "v1:!!!!",
            "v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            " v1:abc",
            "v1%3Aabc",
            "v1:ü",
            &long,
            &long_v1,
        ];
        for i in inputs {
            assert_eq!(s.open(i), Err(OpenError::Undecryptable), "{:.40}", i);
        }
        for n in 0..2000 {
            let g = super::super::random_hex(n % 300);
            assert!(s.open(&g).is_err());
            assert!(s.open(&format!("v1:{g}")).is_err());
            let mut bytes = vec![0u8; n % 300];
            fill_random(&mut bytes);
            let b64 = format!("v1:{}", URL_SAFE_NO_PAD.encode(&bytes));
            assert!(s.open(&b64).is_err());
        }
    }

    #[test]
    fn authentic_garbage_plaintext_is_undecryptable() {
        // Right key and tag over plaintexts that are not a payload.
        let s = Sealer::new(&[[3u8; 32]]);
        let k = &s.keys[0];
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![1],
            vec![1, 5, b'a'],
            vec![1, 0, 0, 0, 0],
            vec![1, 0, 0, 0, 0, 0, 0],
            vec![1, 0, 0, 0, 0, 1, 0xff],
            vec![1, 0x80, 0x00, 0, 0, 0, 0],
            vec![1, 0xff, 0xff, 0xff, 0xff, 0x0f],
            vec![2, 0, 0, 0, 0, 0],
            vec![2, 0, 0, 0, 0, 0, 0, 0],
            vec![2, 0, 0, 0, 0, 0, 2, b'a'],
        ];
        for plain in cases {
            let mut buf = k.id.to_vec();
            let nonce = [5u8; NONCE_LEN];
            buf.extend_from_slice(&nonce);
            let start = buf.len();
            buf.extend_from_slice(&plain);
            let tag = k
                .key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(&k.id)),
                    &mut buf[start..],
                )
                .unwrap();
            buf.extend_from_slice(tag.as_ref());
            let t = format!("v1:{}", URL_SAFE_NO_PAD.encode(&buf));
            assert_eq!(s.open(&t), Err(OpenError::Undecryptable), "{plain:?}");
        }
    }

    #[test]
    fn lengths_round_trip() {
        for n in [0usize, 1, 127, 128, 300, 4095, 16383] {
            let mut buf = Vec::new();
            put_len(&mut buf, n);
            let mut s = buf.as_slice();
            assert_eq!(take_len(&mut s), Some(n));
            assert!(s.is_empty());
        }
    }

    /// `cargo test --release --lib tokens::seal::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn throughput() {
        let s = Sealer::new(&[[1; 32], [2; 32]]);
        let p = payload();
        let t = s.seal(&p);
        let n = 200_000u32;
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(s.seal(&p));
        }
        let seal = f64::from(n) / start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(s.open(&t).unwrap());
        }
        let open = f64::from(n) / start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(seal_successor(&t, &t));
        }
        let succ = f64::from(n) / start.elapsed().as_secs_f64();
        println!("seal {seal:.0}/s  open {open:.0}/s  seal_successor {succ:.0}/s");
    }

    #[test]
    fn successor_key_is_hkdf_sha256() {
        // The successor's format is pinned: AES-256-GCM under HKDF-SHA256 of
        // the presented token with these salt, info and AAD labels, so
        // successors sealed by any version of the gateway open alike.
        let token = Sealer::ephemeral().seal(&payload());
        let sealed = seal_successor(&token, "v1:successor");
        let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, SUCCESSOR_SALT)
            .extract(token.as_bytes());
        let okm = prk
            .expand(&[SUCCESSOR_INFO], &AES_256_GCM)
            .expect("one AES-256 key");
        let key = LessSafeKey::new(UnboundKey::from(okm));
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let mut ct = ct.to_vec();
        let plain = key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).unwrap(),
                Aad::from(SUCCESSOR_AAD),
                &mut ct,
            )
            .expect("opens with the HKDF key");
        assert_eq!(plain, b"v1:successor");
    }

    #[test]
    fn seals_with_given_nonces() {
        let s = Sealer::ephemeral();
        let p = RefreshPayload::with_random("h", "u", "c", &[7u8; PAYLOAD_RANDOM_LEN]);
        assert_eq!(p.anti_csrf_token, "07".repeat(16));
        assert_eq!(p.nonce, "07".repeat(16));
        let t = s.seal_with_nonce(&p, [9u8; SEAL_NONCE_LEN]);
        assert_eq!(s.open(&t), Ok(p));
        let raw = URL_SAFE_NO_PAD.decode(sealed_part(&t)).unwrap();
        assert_eq!(raw[KEY_ID_LEN..KEY_ID_LEN + NONCE_LEN], [9u8; NONCE_LEN]);
        let sealed = seal_successor_with_nonce(&t, "v1:next", [5u8; SEAL_NONCE_LEN]);
        assert_eq!(sealed[..NONCE_LEN], [5u8; NONCE_LEN]);
        assert_eq!(open_successor(&t, &sealed).as_deref(), Some("v1:next"));
    }

    #[test]
    fn successor_round_trip() {
        let s = Sealer::ephemeral();
        let t = s.seal(&payload());
        let t2 = s.seal(&payload());
        let sealed = seal_successor(&t, &t2);
        assert!(!sealed
            .windows(8)
            .any(|w| t2.as_bytes().windows(8).any(|x| x == w)));
        assert_eq!(open_successor(&t, &sealed).as_deref(), Some(t2.as_str()));
        assert_eq!(open_successor(&t2, &sealed), None);
        assert_eq!(open_successor("", &sealed), None);
        // The store knows only the hash of the presented token.
        assert_eq!(open_successor(&super::super::token_hash(&t), &sealed), None);
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(open_successor(&t, &bad), None);
        assert_eq!(open_successor(&t, &[]), None);
        assert_eq!(open_successor(&t, &[0u8; 27]), None);
        assert_eq!(open_successor(&t, &[0u8; 100]), None);
    }
}
