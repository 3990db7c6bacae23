//! The SiS endpoints under `sign_in.path_prefix`.

pub mod cookies;
pub mod cors;
pub mod params;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::body::{json_error, Body};
use crate::config::Config;
use crate::ctx::RequestCtx;

/// The sign-in endpoints and everything they need.
pub struct SignIn {
    prefix: String,
}

impl SignIn {
    pub async fn new(config: &Config) -> anyhow::Result<SignIn> {
        Ok(SignIn {
            prefix: config.sign_in.path_prefix.clone(),
        })
    }

    /// True when `path` belongs to the sign-in endpoints.
    pub fn matches(&self, path: &str) -> bool {
        path.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    pub async fn handle(&self, _req: Request<Incoming>, _ctx: &RequestCtx) -> Response<Body> {
        json_error(StatusCode::NOT_FOUND, "Not found")
    }

    /// The session admin API (`/admin/...` on the admin listener).
    pub async fn admin(&self, _req: Request<Incoming>) -> Response<Body> {
        json_error(StatusCode::NOT_FOUND, "Not found")
    }

    /// Readiness of what sign-in depends on (the session store).
    pub async fn ready(&self) -> bool {
        true
    }
}
