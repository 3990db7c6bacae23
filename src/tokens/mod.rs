//! Access JWTs and sealed refresh tokens.
//!
//! - [`seal`]: `v1:` refresh tokens (AES-256-GCM under rotating sealing keys) and the
//!   sealed successor kept for the replay window.
//! - [`jwt`]: access tokens signed with parsed aws-lc-rs keys, verified by `kid`, and the JWKS.
//! - [`keys`]: key generation for `sis-gateway keygen`.
//! - [`keyset`]: one JWKS document's keys, and verification of a login service's tokens with them.
//! - [`jwks`]: the keys of a fronted login service's access tokens (`sign_in.adopt.jwks`).
//! - [`jwks_fetch`]: those keys fetched from an `https://` URL and kept fresh.

use std::path::PathBuf;

use aws_lc_rs::{digest, rand};

use crate::config::Algorithm;

pub mod jwks;
pub mod jwks_fetch;
pub mod jwt;
pub mod keys;
pub mod keyset;
pub mod seal;

pub use jwks::KeyFiles;
pub use jwt::{AccessClaims, AccessTokens, VerifyError};
pub use keys::{generate_pem, generate_sealing_key, keygen, Keygen};
pub use seal::{open_successor, seal_successor, OpenError, RefreshPayload, Sealer};

/// Errors of key loading, key generation and signing. Messages never carry key material.
#[derive(thiserror::Error, Debug)]
pub enum TokenError {
    /// `tokens.signing_keys[index]` cannot be read.
    #[error("tokens.signing_keys[{index}]: cannot read {}: {source}", .path.display())]
    SigningKeyUnreadable {
        index: usize,
        path: PathBuf,
        source: std::io::Error,
    },
    /// `tokens.signing_keys[index]` holds no usable key.
    #[error("tokens.signing_keys[{index}]: {}: {problem}", .path.display())]
    SigningKeyUnusable {
        index: usize,
        path: PathBuf,
        problem: KeyProblem,
    },
    /// The first signing key is not of `tokens.algorithm`.
    #[error(
        "tokens.signing_keys[0]: {} holds a {} key, but tokens.algorithm is {}",
        .path.display(), .found.name(), .configured.name()
    )]
    AlgorithmMismatch {
        path: PathBuf,
        found: Algorithm,
        configured: Algorithm,
    },
    /// A PEM handed to [`AccessTokens::from_pem`] is unusable; `index` is its position.
    #[error("signing key #{index}: {problem}")]
    InvalidKey { index: usize, problem: KeyProblem },
    #[error("no signing key given")]
    NoKeys,
    #[error("refusing to overwrite existing file {}", .0.display())]
    AlreadyExists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key generation failed")]
    KeyGeneration,
    #[error("signing failed")]
    Signing,
    #[error("cannot encode access token claims: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Why a PEM holds no usable signing key.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    #[error("not a valid PEM file")]
    NotPem,
    #[error("encrypted private keys are not supported")]
    Encrypted,
    #[error("no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block found")]
    NoPrivateKey,
    #[error("not a P-256 EC private key")]
    NotP256,
    #[error("not a usable RSA private key")]
    NotRsa,
    #[error(
        "unsupported or malformed key (expected a P-256 EC, RSA (2048-8192 bit) or Ed25519 private key)"
    )]
    Unsupported,
}

/// Lowercase hex SHA-256 of `token`: what the store keeps, and the
/// `refresh_token_hash` / `parent_refresh_token_hash` claims.
pub fn token_hash(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// `bytes` bytes from the system CSPRNG, hex encoded (so `2 * bytes` characters).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    hex(&buf)
}

/// Fills `buf` from the system CSPRNG. Without randomness no token can be
/// issued safely, so a failing generator is fatal.
pub(crate) fn fill_random(buf: &mut [u8]) {
    rand::fill(buf).expect("system random number generator failed");
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            token_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn random_hex_has_the_asked_length_and_varies() {
        let a = random_hex(16);
        let b = random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert_eq!(random_hex(0), "");
    }
}
