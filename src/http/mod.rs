//! HTTP below both the server and the upstream client: the body types, what
//! a handler answers ([`reply::Reply`]), upgrades, field-value helpers and
//! the HTTP/1 codec ([`h1`]).

/// The error of a body stream, whichever side it came from.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub mod body;
pub mod fields;
pub mod h1;
pub mod reply;
pub mod upgrade;

pub use self::body::{Body, RequestBody};
pub use self::reply::Reply;
pub use self::upgrade::PendingUpgrade;
