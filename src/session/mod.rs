//! Sessions, rotation rules and the store trait.
//!
//! A session is kept under its handle and knows only hashes of refresh
//! tokens; [`store`] holds the atomic rotation rules (README, How rotation
//! works) with a memory and a Redis backend that apply them identically.

pub mod service;
pub mod store;

pub use store::*;
