//! Which server a connection gets: TLS or plain, the gateway's own HTTP/1
//! loop ([`super::h1`]) or hyper's (HTTP/2, h2c, the admin listener).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use super::conn::{
    self, ActiveGuard, ConnState, ConnTicket, TrackedBody, TrackedStream, UntilClosed,
};
use super::h1;
use super::h2c::{self, Opening};
use super::request::public_request;
use super::{Kind, Shared};
use crate::config::ServerConfig;
use crate::http::body::RequestBody;

pub(super) fn connection_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Header and idle timeouts are enforced per connection (see conn.rs);
        // hyper's own header timeout would also close idle keep-alive connections.
        .header_read_timeout(None)
        // A request head that does not fit is answered 431 by hyper.
        .max_buf_size(server.max_header_size.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_size).unwrap_or(u32::MAX));
    builder
}

/// Serves one accepted connection. Public connections speak HTTP/1.1 to the
/// gateway's own server ([`h1`]) and HTTP/2 (h2c with prior knowledge, or
/// ALPN `h2`) to hyper's; the admin listener is served by hyper.
pub(super) async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    ticket: ConnTicket,
) {
    match (&shared.tls, kind) {
        (Some(acceptor), Kind::Public) => {
            let state = ConnState::new();
            let io = TrackedStream::new(stream, state.clone(), ticket);
            // Boxed, as the HTTP/2 arms below: the connection task is as
            // large as its largest state, and the HTTP/1 arm is the one that
            // should decide it.
            let handshake = Box::pin(tokio::time::timeout(
                shared.header_read_timeout,
                acceptor.accept(io),
            ));
            match handshake.await {
                Ok(Ok(tls)) => {
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        Box::pin(serve_http(
                            &shared,
                            TokioIo::new(tls),
                            peer,
                            kind,
                            true,
                            state,
                        ))
                        .await
                    } else {
                        let (read, write) = tokio::io::split(tls);
                        h1::serve(
                            shared.clone(),
                            Box::new(read),
                            Box::new(write),
                            peer,
                            true,
                            None,
                        )
                        .await
                    }
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
        (None, Kind::Public) => serve_plain(shared, stream, peer, ticket).await,
        (_, Kind::Admin) => serve_plain_with_hyper(&shared, stream, peer, kind, ticket).await,
    }
}

/// A public connection without TLS: HTTP/1.1, or h2c with prior knowledge.
/// Its own task, kept apart from the TLS and admin paths so that the task
/// of a waiting HTTP/1 connection is no larger than HTTP/1 needs.
pub(super) async fn serve_plain(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    ticket: ConnTicket,
) {
    match h2c::opening(&stream, &shared).await {
        Opening::H2 => serve_plain_with_hyper(&shared, stream, peer, Kind::Public, ticket).await,
        Opening::Http1 => {
            let (read, write) = stream.into_split();
            h1::serve(
                shared,
                Box::new(read),
                Box::new(write),
                peer,
                false,
                Some(ticket),
            )
            .await
        }
        Opening::Gone => tracing::debug!(%peer, "closed before a request"),
    }
}

/// A plain connection served by hyper (h2c, or the admin listener), boxed
/// so that its state does not size the caller's.
pub(super) async fn serve_plain_with_hyper(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    ticket: ConnTicket,
) {
    let state = ConnState::new();
    let io = TrackedStream::new(stream, state.clone(), ticket);
    Box::pin(serve_http(
        shared,
        TokioIo::new(io),
        peer,
        kind,
        false,
        state,
    ))
    .await
}

pub(super) async fn serve_http<I>(
    shared: &Arc<Shared>,
    io: I,
    peer: SocketAddr,
    kind: Kind,
    tls: bool,
    state: Arc<ConnState>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        let state = state.clone();
        service_fn(move |req: Request<Incoming>| {
            let guard = ActiveGuard::new(&state);
            if req.version() == Version::HTTP_2 {
                state.set_h2();
            }
            let shared = shared.clone();
            // Boxed: hyper keeps room for one request future per connection
            // for the connection's whole life. Unboxed, that room is as large
            // as the deepest request path (auth, store, upstream) and stays
            // resident on every idle keep-alive connection; boxed, it is a
            // pointer, and the request's state lives only while it runs.
            Box::pin(async move {
                let res = match kind {
                    Kind::Public => public_request(&shared, req.map(RequestBody::from), peer, tls)
                        .await
                        .into_response(),
                    Kind::Admin => {
                        let app = shared.app.load_full();
                        crate::admin::handle(&app, req.map(RequestBody::from)).await
                    }
                };
                Ok::<_, Infallible>(res.map(|body| TrackedBody::new(body, guard)))
            })
        })
    };
    conn::spawn_watchdog(
        state.clone(),
        shared.header_read_timeout,
        shared.idle_timeout,
        shared.shutdown(),
        peer,
    );
    let conn = shared.builder.serve_connection_with_upgrades(io, service);
    if let Some(Err(e)) = UntilClosed::new(conn, state.clone()).await {
        tracing::debug!(%peer, error = %e, "connection closed with error");
    }
    state.finished();
}
