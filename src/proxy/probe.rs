//! The request path from client bytes to upstream bytes, without sockets:
//! what the `trust_boundary` fuzz target drives.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::Request;

use super::{exchange, Proxy, Tunnels};
use crate::config::Config;
use crate::ctx::{RequestCtx, RequestId};
use crate::http::body::RequestBody;
use crate::metrics::Metrics;
use crate::target::{self, PathRules};

/// One configuration's proxy and path rules.
#[doc(hidden)]
pub struct Probe {
    proxy: Proxy,
    rules: PathRules,
    sign_in_prefix: String,
}

/// What became of one request head.
#[doc(hidden)]
#[derive(Debug)]
pub enum Outcome {
    /// Not a complete, valid head, or refused before routing (400).
    Refused,
    /// A sign-in endpoint path, or no route: nothing goes upstream.
    NotForwarded,
    Forwarded {
        /// The route chosen.
        route: Arc<str>,
        /// The request head written to the upstream, whole.
        upstream: Vec<u8>,
    },
}

impl Probe {
    pub fn new(config: &Config) -> Probe {
        Probe {
            proxy: Proxy::new(config, Arc::new(Metrics::new()), Tunnels::new())
                .expect("plain http upstreams need no TLS roots"),
            rules: PathRules::of(&config.server),
            sign_in_prefix: config.sign_in.path_prefix.clone(),
        }
    }

    /// Parses `head` as the HTTP/1 server does, settles its target, routes
    /// it and encodes the request the upstream would get (with an empty
    /// body: the body's framing is the upstream client's, not the policy's).
    pub fn forward(&self, head: &[u8]) -> Outcome {
        let Some(parts) = crate::http::h1::parse_head(head) else {
            return Outcome::Refused;
        };
        let mut req = Request::from_parts(parts, RequestBody::empty());
        if target::admit(&mut req, self.rules).is_err() {
            return Outcome::Refused;
        }
        let path = req.uri().path();
        if path.starts_with(&self.sign_in_prefix) {
            return Outcome::NotForwarded;
        }
        let Some(route) = self.proxy.route_for_request(&req) else {
            return Outcome::NotForwarded;
        };
        let ctx = RequestCtx {
            peer: SocketAddr::from(([192, 0, 2, 1], 40000)),
            client_ip: [192, 0, 2, 1].into(),
            request_id: RequestId::generated(*b"00000000-0000-4000-8000-000000000000"),
            tls: false,
            upstream: OnceLock::new(),
            adoption: OnceLock::new(),
        };
        let Ok(out) = self.proxy.prepare(route, req, &ctx) else {
            return Outcome::NotForwarded;
        };
        let target = route
            .upstreams
            .candidates()
            .next()
            .expect("a route has an upstream");
        let added = exchange::Added {
            target: (target, &out.path),
            host: out.client_host.as_ref().unwrap_or(&target.host),
            request_id: ctx.request_id.as_bytes(),
            forwarded: &out.forwarded,
        };
        let mut upstream = Vec::new();
        exchange::encode_request_head(
            &out.parts,
            &added,
            &http_body::Body::size_hint(&out.body),
            &mut upstream,
        );
        Outcome::Forwarded {
            route: route.name.clone(),
            upstream,
        }
    }

    /// The route `host` and `path` would take, by name.
    pub fn route_name(&self, host: Option<&str>, path: &str) -> Option<Arc<str>> {
        self.proxy.route_for(host, path).map(|r| r.name.clone())
    }
}
