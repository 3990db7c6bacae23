//! Relaying upgraded connections (WebSocket) after a `101 Switching Protocols`.

use std::sync::Arc;

use http::Request;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::http::body::RequestBody;
use crate::http::PendingUpgrade;
use crate::metrics::Metrics;

/// The client's side of an upgrade: from the gateway's HTTP/1 server, or
/// from hyper.
pub enum ClientUpgrade {
    H1(PendingUpgrade),
    Hyper(OnUpgrade),
}

impl ClientUpgrade {
    /// Takes the upgrade handle out of a request.
    pub fn take(req: &mut Request<RequestBody>) -> ClientUpgrade {
        match req.extensions_mut().remove::<PendingUpgrade>() {
            Some(pending) => ClientUpgrade::H1(pending),
            None => ClientUpgrade::Hyper(hyper::upgrade::on(req)),
        }
    }

    async fn connection(self) -> Result<Box<dyn Io>, UpgradeFailed> {
        match self {
            ClientUpgrade::H1(pending) => match pending.connection().await {
                Some(io) => Ok(Box::new(io)),
                None => Err(UpgradeFailed::NotUpgraded),
            },
            ClientUpgrade::Hyper(on) => Ok(Box::new(TokioIo::new(on.await?))),
        }
    }
}

/// Why the client's side of an upgrade never became a connection.
#[derive(Debug, thiserror::Error)]
enum UpgradeFailed {
    /// The gateway's HTTP/1 server ended the connection instead of handing
    /// it over.
    #[error("the client connection was not upgraded")]
    NotUpgraded,
    /// hyper could not hand the connection over.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The running tunnels: counted, so shutdown can wait for them, and stoppable
/// at once when the drain deadline passes. Cloning shares the set.
#[derive(Clone)]
pub struct Tunnels {
    count: Arc<watch::Sender<usize>>,
    stop: Arc<watch::Sender<bool>>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self::new()
    }
}

impl Tunnels {
    pub fn new() -> Tunnels {
        Tunnels {
            count: Arc::new(watch::channel(0).0),
            stop: Arc::new(watch::channel(false).0),
        }
    }

    /// Number of tunnels relaying now.
    pub fn active(&self) -> usize {
        *self.count.borrow()
    }

    /// Resolves when no tunnel is left.
    pub async fn drained(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Closes every tunnel now.
    pub fn stop_all(&self) {
        self.stop.send_replace(true);
    }

    /// Relays bytes both ways between the client's and the upstream's
    /// upgraded connections, in a task of its own, until either side closes.
    pub(super) fn spawn(
        &self,
        client: ClientUpgrade,
        upstream: super::connect::UpstreamConn,
        metrics: Arc<Metrics>,
        route: Arc<str>,
    ) {
        let mut stop = self.stop.subscribe();
        let count = self.count.clone();
        count.send_modify(|n| *n += 1);
        metrics.tunnels_active.inc();
        tokio::spawn(async move {
            let relay = async {
                let mut upstream = upstream.into_stream();
                let mut client = match client.connection().await {
                    Ok(client) => client,
                    Err(e) => {
                        tracing::debug!(%route, error = %e, "upgrade failed");
                        return;
                    }
                };
                match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    Ok((up, down)) => tracing::debug!(%route, up, down, "tunnel closed"),
                    Err(e) => tracing::debug!(%route, error = %e, "tunnel closed with error"),
                }
            };
            tokio::select! {
                _ = relay => {}
                _ = stop.wait_for(|s| *s) => tracing::debug!(%route, "tunnel stopped by shutdown"),
            }
            metrics.tunnels_active.dec();
            count.send_modify(|n| *n -= 1);
        });
    }
}
