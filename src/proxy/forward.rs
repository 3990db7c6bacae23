//! Forwarding: [`Proxy::send`] tries a prepared request on the route's
//! upstreams and turns the answer, or the failure, into the client's reply.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};

use super::body::ForwardBody;
use super::exchange::{self, SendError};
use super::upstream::UpstreamTarget;
use super::{error, headers, ClientUpgrade, Outgoing, Proxy, ProxyError, Route};
use crate::ctx::RequestCtx;
use crate::http::body::{Body, RequestBody};
use crate::http::Reply;
use crate::metrics::UpstreamErrorKind;

impl Proxy {
    /// [`prepare`](Self::prepare) then [`send`](Self::send).
    pub async fn forward(
        &self,
        route: &Route,
        req: Request<RequestBody>,
        ctx: &RequestCtx,
        extra_response_headers: HeaderMap,
    ) -> Reply {
        match self.prepare(route, req, ctx) {
            Ok(out) => std::pin::pin!(self.send(out, extra_response_headers, ctx)).await,
            Err(e) => self.fail(route, None, e, ctx).into(),
        }
    }

    /// Sends a prepared request to the route's upstreams (round robin; a
    /// refused connection moves on to the next healthy one) and streams the
    /// response back with hop-by-hop headers stripped and
    /// `extra_response_headers` appended. Upstream failures become 502, no
    /// response head within `server.upstream_timeout` 504.
    pub async fn send(
        &self,
        out: Outgoing<'_>,
        extra_response_headers: HeaderMap,
        ctx: &RequestCtx,
    ) -> Reply {
        let route = out.route;
        // Pinned where it is made: the timeout then holds a pointer, and the
        // exchange's state is not copied into it.
        let exchange = std::pin::pin!(self.exchange(out, ctx));
        match crate::time::timer::timeout(self.upstream_timeout, exchange).await {
            Ok(Ok(Exchanged {
                reply,
                target,
                upgrade,
            })) => {
                let _ = ctx.upstream.set(target.name.clone());
                match self.respond(route, reply, upgrade, extra_response_headers) {
                    Ok(res) => res,
                    Err(e) => self.fail(route, Some(target), e, ctx).into(),
                }
            }
            Ok(Err(ExchangeFailed { error, target })) => {
                self.fail(route, target, error, ctx).into()
            }
            Err(_) => {
                self.metrics
                    .upstream_error(&route.name, UpstreamErrorKind::timeout);
                self.fail(route, None, ProxyError::Timeout, ctx).into()
            }
        }
    }

    fn fail(
        &self,
        route: &Route,
        target: Option<&UpstreamTarget>,
        e: ProxyError,
        ctx: &RequestCtx,
    ) -> Response<Body> {
        let upstream = target.map(|t| &*t.name);
        if e.is_client_error() {
            tracing::debug!(route = %route.name, upstream, request_id = %ctx.request_id, error = %e, "request refused");
        } else {
            tracing::warn!(route = %route.name, upstream, request_id = %ctx.request_id, error = %e, "upstream failure");
        }
        if let Some(t) = target {
            let _ = ctx.upstream.set(t.name.clone());
        }
        e.to_response()
    }

    async fn exchange<'r>(
        &self,
        out: Outgoing<'r>,
        ctx: &RequestCtx,
    ) -> Result<Exchanged<'r>, ExchangeFailed<'r>> {
        let Outgoing {
            route,
            parts,
            body,
            path,
            upgrade,
            client_host,
            forwarded,
        } = out;
        let mut body = ForwardBody::new(body, route.config.max_body);
        let mut last = None;
        for target in route.upstreams.candidates() {
            let added = exchange::Added {
                target: (target, &path),
                // The client's with `preserve_host`; else, and when an
                // HTTP/1.0 client sent none, the upstream's.
                host: client_host.as_ref().unwrap_or(&target.host),
                request_id: ctx.request_id.as_bytes(),
                forwarded: &forwarded,
            };
            let sent = {
                let sending = std::pin::pin!(self.connector.send(
                    &target.endpoint,
                    target.pools.current(),
                    &parts,
                    &mut body,
                    &added
                ));
                sending.await
            };
            match sent {
                Ok(res) => {
                    crate::http::h1::give_map(parts.headers);
                    return Ok(Exchanged {
                        reply: res,
                        target,
                        upgrade,
                    });
                }
                Err(SendError::Connect(error)) => {
                    // Nothing was sent: skip this upstream for a while and
                    // try the next.
                    let kind = error::classify_connect(&error);
                    self.metrics.upstream_error(&route.name, kind);
                    tracing::warn!(route = %route.name, upstream = %target.name, request_id = %ctx.request_id,
                        ?kind, error = %error, "upstream connect failed");
                    route.upstreams.mark_down(target);
                    last = Some(ExchangeFailed {
                        error: ProxyError::Connect {
                            kind,
                            source: error,
                        },
                        target: Some(target),
                    });
                }
                Err(SendError::BodyTooLarge) => {
                    return Err(ExchangeFailed {
                        error: ProxyError::BodyTooLarge,
                        target: Some(target),
                    });
                }
                Err(SendError::ClientBody(_)) => {
                    return Err(ExchangeFailed {
                        error: ProxyError::BadRequestBody,
                        target: Some(target),
                    });
                }
                Err(SendError::Exchange(e)) => {
                    self.metrics.upstream_error(&route.name, e.kind);
                    let error = ProxyError::Upstream {
                        kind: e.kind,
                        detail: e.detail,
                    };
                    return Err(ExchangeFailed {
                        error,
                        target: Some(target),
                    });
                }
            }
        }
        Err(last.unwrap_or(ExchangeFailed {
            error: ProxyError::NoHealthyUpstream,
            target: None,
        }))
    }

    fn respond(
        &self,
        route: &Route,
        reply: Reply,
        upgrade: Option<(ClientUpgrade, HeaderValue)>,
        extra_response_headers: HeaderMap,
    ) -> Result<Reply, ProxyError> {
        let mut res = reply;
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (client_side, asked) = upgrade.ok_or(ProxyError::BadUpgrade)?;
            let chosen = res
                .headers()
                .get(header::UPGRADE)
                .cloned()
                .filter(|p| offered(&asked, p))
                .ok_or(ProxyError::BadUpgrade)?;
            let upstream_side = res
                .extensions()
                .get::<exchange::UpstreamUpgrade>()
                .and_then(exchange::UpstreamUpgrade::take)
                .ok_or(ProxyError::BadUpgrade)?;
            self.tunnels.spawn(
                client_side,
                upstream_side,
                self.metrics.clone(),
                route.name.clone(),
            );
            headers::strip_hop_by_hop(res.headers_mut());
            headers::set_upgrade(res.headers_mut(), chosen);
        }
        // Otherwise its hop-by-hop fields were left out as it was parsed.
        let mut last: Option<HeaderName> = None;
        for (name, value) in extra_response_headers {
            if let Some(n) = name {
                last = Some(n);
            }
            if let Some(n) = &last {
                res.append_header(n.clone(), value);
            }
        }
        res.extensions_mut().clear();
        Ok(res)
    }
}

/// An upstream's response head, the upstream that gave it, and the client's
/// side of an upgrade with the protocols it asked for.
struct Exchanged<'r> {
    reply: Reply,
    target: &'r UpstreamTarget,
    upgrade: Option<(ClientUpgrade, HeaderValue)>,
}

/// Why no upstream answered, and the last one tried (`None` when every
/// upstream was cooling down).
struct ExchangeFailed<'r> {
    error: ProxyError,
    target: Option<&'r UpstreamTarget>,
}

/// True when `chosen` is one of the comma-separated protocols in `asked`
/// (RFC 9110 §7.8).
fn offered(asked: &HeaderValue, chosen: &HeaderValue) -> bool {
    let chosen = chosen.as_bytes().trim_ascii();
    asked
        .as_bytes()
        .split(|&b| b == b',')
        .any(|p| p.trim_ascii().eq_ignore_ascii_case(chosen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_protocol_must_be_offered() {
        let asked = HeaderValue::from_static("websocket, foo/2");
        assert!(offered(&asked, &HeaderValue::from_static("WebSocket")));
        assert!(offered(&asked, &HeaderValue::from_static("foo/2")));
        assert!(!offered(&asked, &HeaderValue::from_static("h2c")));
    }
}
