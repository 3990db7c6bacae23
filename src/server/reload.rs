//! Configuration reload: its triggers (SIGHUP, a changed file) and the swap
//! of the live [`App`](crate::app::App) for one built from the new file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::Shared;
use crate::app::App;
use crate::config::{Config, ConfigError};

/// How often `watch_config = true` looks at the file's modification time.
pub const CONFIG_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What asked for a reload.
#[derive(Debug, Clone, Copy)]
pub(super) enum ReloadSource {
    Signal,
    FileChanged,
}

/// SIGHUP, and with `server.watch_config` a change of the file's
/// modification time, both for configs loaded from a file.
pub(super) fn reload_triggers(shared: &Arc<Shared>) -> mpsc::Receiver<ReloadSource> {
    let (tx, rx) = mpsc::channel(4);
    let app = shared.app.load();
    let Some(path) = app.config.path.clone() else {
        return rx;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send(ReloadSource::Signal).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload on signal is off")
            }
        }
    }
    if app.config.server.watch_config {
        tokio::spawn(async move {
            let modified =
                |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last: Option<SystemTime> = modified(&path);
            loop {
                tokio::time::sleep(CONFIG_WATCH_INTERVAL).await;
                let now = modified(&path);
                if now.is_some() && now != last {
                    last = now;
                    if tx.send(ReloadSource::FileChanged).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
    rx
}

/// Why a reload kept the running configuration.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReloadError {
    /// The file does not load or validate.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The configuration is valid, but building what it describes failed.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl ReloadError {
    /// The `result` label of `sis_config_reloads_total`.
    fn label(&self) -> &'static str {
        match self {
            ReloadError::Invalid(_) => "invalid",
            ReloadError::Failed(_) => "failed",
        }
    }
}

/// Re-reads the config file and swaps in a new [`App`](crate::app::App). An
/// invalid file is logged and the running configuration kept. Listener
/// addresses, TLS and connection settings only change on restart.
pub(super) async fn reload(shared: Arc<Shared>, source: ReloadSource) {
    let current = shared.app.load_full();
    let Some(path) = current.config.path.clone() else {
        return;
    };
    let result = match try_reload(&shared, &current, &path).await {
        Ok(()) => {
            tracing::info!(?source, path = %path.display(), "configuration reloaded");
            "ok"
        }
        Err(e) => {
            tracing::error!(
                ?source,
                "config reload failed; keeping the running configuration: {e}"
            );
            e.label()
        }
    };
    shared
        .metrics
        .reloads
        .get_or_create(&crate::metrics::ResultLabels { result })
        .inc();
}

/// Loads `path` and swaps in the `App` it describes.
async fn try_reload(shared: &Shared, current: &App, path: &Path) -> Result<(), ReloadError> {
    let config = Config::load(path, &crate::tokens::KeyFiles)?;
    let (old, new) = (&current.config.server, &config.server);
    if old.listen != new.listen
        || old.admin_listen != new.admin_listen
        || old.tls.is_some() != new.tls.is_some()
        || old.max_connections != new.max_connections
        || old.header_read_timeout != new.header_read_timeout
        || old.idle_timeout != new.idle_timeout
        || old.max_header_size != new.max_header_size
    {
        tracing::warn!(
            "server listener and connection settings changed; they take effect on restart"
        );
    }
    let app = current.rebuild(config).await.map_err(ReloadError::Failed)?;
    shared.app.store(Arc::new(app));
    shared.reloaded.send_modify(|n| *n += 1);
    Ok(())
}
