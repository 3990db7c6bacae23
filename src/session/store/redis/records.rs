//! The session hash as Redis holds it: its field names and the decoding of
//! its values (everything stored is text; numbers are decimal).

use std::fmt;

use ::redis::Cmd;

use super::super::{RotatedSession, SessionRecord, StoreError};

/// Record fields, in the order `get` reads them.
const RECORD_FIELDS: [&str; 5] = ["user", "client", "attrs", "created", "exp"];

pub(super) fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(super) fn text(bytes: Vec<u8>, field: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| corrupt(format_args!("{field} is not UTF-8")))
}

pub(super) fn number(s: &str, field: &str) -> Result<u64, StoreError> {
    s.parse()
        .map_err(|_| corrupt(format_args!("{field} is not a number")))
}

/// A record from `user client attrs created exp`, as stored.
pub(super) fn record(handle: &str, fields: Vec<Vec<u8>>) -> Result<SessionRecord, StoreError> {
    let [user, client, attrs, created, exp]: [Vec<u8>; 5] = fields
        .try_into()
        .map_err(|_| corrupt("wrong number of session fields"))?;
    Ok(SessionRecord {
        handle: handle.to_owned(),
        user_uuid: text(user, "user")?,
        client_id: text(client, "client")?,
        user_attributes: text(attrs, "attrs")?,
        created_at_ms: number(&text(created, "created")?, "created")?,
        refresh_exp_ms: number(&text(exp, "exp")?, "exp")?,
    })
}

/// What `rotate.lua` answers about a rotated session: `attrs created exp`.
pub(super) fn rotated(fields: impl Iterator<Item = Vec<u8>>) -> Result<RotatedSession, StoreError> {
    let mut fields = fields.fuse();
    let (Some(attrs), Some(created), Some(exp), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(corrupt("wrong number of session fields"));
    };
    Ok(RotatedSession {
        user_attributes: text(attrs, "attrs")?,
        created_at_ms: number(&text(created, "created")?, "created")?,
        refresh_exp_ms: number(&text(exp, "exp")?, "exp")?,
    })
}

/// A record from an HMGET of [`RECORD_FIELDS`]; `None` when the hash is gone.
pub(super) fn record_from_hmget(
    handle: &str,
    fields: Vec<Option<Vec<u8>>>,
) -> Result<Option<SessionRecord>, StoreError> {
    if fields.iter().all(Option::is_none) {
        return Ok(None);
    }
    let fields: Option<Vec<Vec<u8>>> = fields.into_iter().collect();
    let fields = fields.ok_or_else(|| corrupt("session hash lacks a field"))?;
    record(handle, fields).map(Some)
}

pub(super) fn hmget_record(key: &str) -> Cmd {
    let mut cmd = ::redis::cmd("HMGET");
    cmd.arg(key).arg(&RECORD_FIELDS[..]);
    cmd
}
