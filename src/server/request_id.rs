//! Request ids: a trusted proxy's `X-Request-Id` kept when valid, else a
//! fresh random UUID.

use std::cell::Cell;

use http::header::HeaderValue;

use crate::ctx::{RequestId, GENERATED_LEN};

/// A request id from a trusted proxy is kept when it is 1–128 visible ASCII
/// characters; anything else is replaced.
pub(super) fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// A random (v4) UUID. Request ids need to be unique, not secret, so they
/// come from a per-thread generator seeded once from the OS.
pub(super) fn new_request_id() -> RequestId {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
            a ^ b.rotate_left(32)
        });
    }
    // splitmix64
    fn next(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let bytes = STATE.with(|s| {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&next(s).to_le_bytes());
        out[8..].copy_from_slice(&next(s).to_le_bytes());
        out
    });
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0u8; GENERATED_LEN];
    uuid.hyphenated().encode_lower(&mut text);
    RequestId::generated(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = new_request_id();
            let text = id.as_str().to_owned();
            let parsed = uuid::Uuid::parse_str(&text).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(text, parsed.hyphenated().to_string());
            assert_eq!(id.to_header_value(), text.as_str());
            assert!(seen.insert(text.clone()), "{text} repeated");
        }
    }

    #[test]
    fn request_id_validation() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_request_id(
            &HeaderValue::from_bytes(b"\xff").unwrap()
        ));
        assert!(!valid_request_id(
            &HeaderValue::from_str(&"x".repeat(129)).unwrap()
        ));
    }
}
