//! sis-gateway: a reverse-proxy auth gateway for Sign-in Service style sessions.
//!
//! # Layout
//!
//! - [`app`]: everything built from one configuration (proxy, sign-in, metrics) and request dispatch.
//! - [`config`]: `gateway.toml` parsed into a raw form, then validated into a typed [`config::Config`].
//! - [`cookie`]: the one reader of `Cookie` request headers (names and values), for every credential.
//! - [`tokens`]: access JWTs (keys, `kid`, JWKS), sealed `v1:<sealed>.<nonce>.V0` refresh tokens, and
//!   the key sets of an adopted login service (a file, or an `https://` URL fetched and refreshed).
//! - [`session`]: sessions, the rotation rules and the store trait, with memory and Redis backends.
//! - [`sign_in`]: the SiS endpoints (refresh, revoke, logout, certs), their errors, cookies and CORS;
//!   adoption and migration of an existing Sign-in Service's tokens.
//! - [`auth`]: route auth modes and single-flight inline refresh on pass-through routes.
//! - [`target`]: the request target settled before dispatch: normalized path, one authority.
//! - [`proxy`]: route table, the pooled HTTP/1.1 upstream client, header operations and the one
//!   request header policy (`proxy::policy`), upgrades.
//! - [`server`]: the listeners served until shutdown: accepting and connection limits, worker
//!   threads, TLS and h2c detection, the HTTP/1.1 connection loop ([`server::h1`]; HTTP/2 and the
//!   admin listener are hyper's), request ids and the access log, configuration reload, graceful
//!   shutdown (one control moving the server through serving, draining, stopped).
//! - [`admin`]: the admin listener: health, readiness, metrics; `/admin/*` goes to [`sign_in`].
//! - [`demo`]: the built-in demo upstream behind `sis-gateway demo`.
//! - [`metrics`]: the Prometheus registry and the gateway's metric families.
//! - [`ctx`]: per-request facts (peer, request id) every layer reads.
//! - [`http`]: below both the server and the upstream client: request and response bodies with JSON
//!   errors, the [`http::Reply`] a handler answers, upgrades, field-value helpers, and the one HTTP/1
//!   codec ([`http::h1`]) both directions use.
//! - [`time`]: the injectable wall clock for expiry and grace windows, a coarse monotonic clock for
//!   connection timeouts, and request-path timeouts.
//! - [`worker`]: a worker thread's context (its id and upstream pool slot, kept timers, the server's
//!   per-worker state), entered and left in one place; below everything, it imports nothing of the
//!   crate. Its docs list every per-thread item and where it lives.
//!
//! Imports go one way; no module imports one that imports it back: [`server`] → [`admin`] →
//! [`app`] → [`auth`] → [`sign_in`] → [`proxy`], and [`sign_in`] → [`session`] → [`tokens`] →
//! [`config`]; [`cookie`], [`target`], [`metrics`], [`ctx`], [`http`], [`time`] and [`worker`] lie
//! below the modules that use them.
//!
//! A request enters [`server`], its target is settled ([`target`]), it goes to
//! [`app`], and is either a sign-in endpoint ([`sign_in`] → [`session`] → store),
//! another sign-in path (forwarded to the login service, its answer adopted), or a
//! routed request ([`proxy`] route match → [`auth`], which may call [`session`] →
//! upstream). [`session`]
//! knows nothing of HTTP; [`proxy`] nothing of tokens.

// Deeply nested async state machines (connection → dispatch → auth → proxy)
// exceed the default trait-solver depth.
#![recursion_limit = "256"]

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod cookie;
pub mod ctx;
pub mod demo;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod session;
pub mod sign_in;
pub mod target;
pub mod time;
pub mod tokens;
pub mod worker;

/// A future pinned in a box of its own. The box is allocated first and the
/// future made in it, so a large future's state is not built on the stack
/// and copied over, as it is with `Box::pin(fut)`. A macro, because passing
/// the future to a function, even an inlined one, brings the copy back.
macro_rules! boxed {
    ($fut:expr) => {
        Box::into_pin(Box::write(Box::new_uninit(), $fut))
    };
}
pub(crate) use boxed;

pub use app::App;
pub use config::Config;
pub use server::{run, serve, Listeners};
