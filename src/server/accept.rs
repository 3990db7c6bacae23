//! Accepting connections: the connection limits, and the handoff of a public
//! connection to a worker thread.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::conn::ConnTicket;
use super::dispatch::serve_connection;
use super::workers::{Handoff, Workers};
use super::{Kind, Shared};

pub(super) async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

pub(super) fn accept_connection(
    shared: &Arc<Shared>,
    workers: &Workers,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
) {
    let slots = match kind {
        Kind::Public => &shared.public_slots,
        Kind::Admin => &shared.admin_slots,
    };
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        shared.metrics.connections_rejected.inc();
        tracing::debug!(%peer, ?kind, "connection limit reached; closing");
        return;
    };
    let _ = stream.set_nodelay(true);
    let ticket = ConnTicket::new(permit, shared.metrics.clone(), shared.open.clone());
    match kind {
        Kind::Public => match stream.into_std() {
            Ok(stream) => workers.dispatch(Handoff {
                stream,
                peer,
                ticket,
            }),
            Err(e) => tracing::warn!(%peer, error = %e, "cannot hand a connection over"),
        },
        Kind::Admin => {
            tokio::spawn(serve_connection(shared.clone(), stream, peer, kind, ticket));
        }
    }
}
