//! One request on the public listener: request id, client address, the
//! app's answer, its metrics and its access log line.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use http::Request;
use tracing::Level;

use super::request_id::{new_request_id, valid_request_id};
use super::Shared;
use crate::ctx::{RequestCtx, RequestId};
use crate::http::body::RequestBody;
use crate::http::Reply;
use crate::proxy::{self, headers};

/// One request on the public listener: request id, client address, dispatch,
/// metrics and the access log line.
pub(super) async fn public_request(
    shared: &Shared,
    req: Request<RequestBody>,
    peer: SocketAddr,
    tls: bool,
) -> Reply {
    let start = Instant::now();
    let app = shared.app();
    let trusted_proxies = &app.config.server.trusted_proxies;
    let trusted = proxy::is_trusted(trusted_proxies, peer.ip());

    let kept = trusted
        .then(|| req.headers().get(&crate::ctx::X_REQUEST_ID))
        .flatten()
        .filter(|v| valid_request_id(v));
    let request_id = match kept {
        Some(id) => RequestId::kept(id.clone()),
        None => new_request_id(),
    };
    let client_ip = if trusted {
        headers::client_ip_from_forwarded(req.headers(), peer.ip().to_canonical(), |ip| {
            proxy::is_trusted(trusted_proxies, ip)
        })
    } else {
        peer.ip().to_canonical()
    };
    let ctx = RequestCtx {
        peer,
        client_ip,
        request_id,
        tls,
        upstream: OnceLock::new(),
        adoption: OnceLock::new(),
    };
    // Only pay for copying what the log line needs when it is written.
    let log = tracing::enabled!(target: "access", Level::INFO).then(|| {
        (
            req.method().clone(),
            req.version(),
            req.uri().path().to_owned(),
        )
    });

    let handled = std::pin::pin!(app.handle(req, &ctx)).await;
    let mut reply = handled.response;
    let elapsed = start.elapsed();
    let status = reply.status().as_u16();
    handled.route.record(status, elapsed);
    if let Some((method, version, path)) = log {
        let upstream = ctx.upstream.get().map(|u| &**u);
        let adoption = ctx.adoption.get().copied();
        tracing::info!(
            target: "access",
            method = %method,
            path = %path,
            version = ?version,
            route = %handled.route.name,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream,
            adoption,
            request_id = %ctx.request_id,
            client_ip = %ctx.client_ip,
        );
    }
    reply.request_id = Some(ctx.request_id);
    reply
}
