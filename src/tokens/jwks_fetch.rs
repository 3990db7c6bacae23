//! Fetching `sign_in.adopt.jwks` from an `https://` URL and keeping it
//! fresh (README, "Fetching the JWKS").
//!
//! - One background task per URL source: it fetches at start, then every
//!   [`REFRESH_INTERVAL`], or as the answer's `Cache-Control: max-age` asks
//!   within [`MIN_REFRESH`]..=[`MAX_REFRESH`]. A failed fetch keeps the last
//!   good set and is retried sooner ([`retry_after`]).
//! - A token naming a key the set lacks asks for an early refetch, at most
//!   once per [`EARLY_REFETCH_EVERY`], so a rotated key is picked up without
//!   waiting for the interval.
//! - TLS is rustls with aws-lc-rs: the system's roots, or the PEM bundle of
//!   `sign_in.adopt.ca`. Redirects are not followed.
//! - The task ends when the keys it fills are dropped (a reload that changed
//!   the URL).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::{mpsc, watch};

use super::keyset::{JwksError, KeySet};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::time::SharedClock;

/// Between good fetches when the answer names no `max-age`.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The shortest `max-age` honoured: a shorter one is fetched this often.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
/// The longest `max-age` honoured, so a key the login service withdraws
/// stops being accepted within this.
pub const MAX_REFRESH: Duration = Duration::from_secs(60 * 60);
/// The first retry after a failed fetch; each further failure doubles it,
/// up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Early refetches (for a key the set lacks) are at most this often.
pub const EARLY_REFETCH_EVERY: Duration = Duration::from_secs(30);
/// A fetch that has not completed within this has failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A JWKS document larger than this is refused.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// A JWKS at an `https://` URL.
pub(crate) struct Remote {
    url: Uri,
    /// `sign_in.adopt.ca`: trusted instead of the system's roots.
    ca: Option<Vec<CertificateDer<'static>>>,
    early: EarlyRefetch,
    status: Arc<Status>,
    /// Wakes the task for an early refetch; set when started. The task
    /// ends when this is dropped.
    kick: OnceLock<mpsc::Sender<()>>,
}

/// What the task tells the rest of the gateway.
struct Status {
    /// An early refetch was asked for and has not completed.
    fetching: AtomicBool,
    /// Fetch attempts completed, good or not.
    attempts: watch::Sender<u64>,
    /// Why the last fetch failed, when it did.
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .finish()
    }
}

impl Remote {
    /// `url` is an `https://` URL checked by the configuration
    /// ([`crate::config::JwksSource`]).
    pub(crate) fn new(
        url: Uri,
        ca: Option<Vec<CertificateDer<'static>>>,
        clock: SharedClock,
    ) -> Remote {
        Remote {
            url,
            ca,
            early: EarlyRefetch::new(clock),
            status: Arc::new(Status {
                fetching: AtomicBool::new(false),
                attempts: watch::channel(0).0,
                last_error: Mutex::new(None),
            }),
            kick: OnceLock::new(),
        }
    }

    pub(crate) fn same_source(&self, other: &Remote) -> bool {
        self.url == other.url && self.ca == other.ca
    }

    pub(crate) fn why_not_ready(&self) -> String {
        let last = self
            .status
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match last {
            Some(e) => format!(
                "no JWKS of the login service fetched yet from {}: {e}",
                self.url
            ),
            None => format!(
                "the JWKS of the login service is being fetched from {}",
                self.url
            ),
        }
    }

    /// Starts the task filling `set` (once), and waits for its first
    /// attempt for at most the fetch timeout.
    pub(crate) async fn start(
        &self,
        set: &Arc<ArcSwapOption<KeySet>>,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        if self.kick.get().is_some() {
            return Ok(());
        }
        let fetcher = Fetcher::new(&self.url, self.ca.as_deref())?;
        let (tx, rx) = mpsc::channel(1);
        if self.kick.set(tx).is_err() {
            return Ok(());
        }
        let outcomes = metrics.family(
            "adopt_jwks_fetches",
            "Fetches of the login service's JWKS (sign_in.adopt.jwks), by outcome: ok, \
             unreachable, status, invalid",
            Family::<OutcomeLabels, Counter>::default,
        );
        let mut first = self.status.attempts.subscribe();
        tokio::spawn(refresh(
            fetcher,
            rx,
            set.clone(),
            self.status.clone(),
            outcomes,
        ));
        let _ = tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), first.changed()).await;
        Ok(())
    }

    /// Asks the task for an early refetch, unless one was asked for less
    /// than [`EARLY_REFETCH_EVERY`] ago. True when asked.
    pub(crate) fn ask_early(&self) -> bool {
        let Some(kick) = self.kick.get() else {
            return false;
        };
        if !self.early.allow() {
            return false;
        }
        self.status.fetching.store(true, Ordering::Release);
        let _ = kick.try_send(());
        true
    }

    /// Asks for an early refetch (or joins one under way) and waits for it.
    /// True when one completed, good or not.
    pub(crate) async fn refetched(&self) -> bool {
        let mut attempts = self.status.attempts.subscribe();
        attempts.borrow_and_update();
        if !(self.status.fetching.load(Ordering::Acquire) || self.ask_early()) {
            return false;
        }
        let done = async {
            while attempts.changed().await.is_ok() {
                if !self.status.fetching.load(Ordering::Acquire) {
                    return true;
                }
            }
            false
        };
        tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), done)
            .await
            .unwrap_or(false)
    }
}

/// The background task of one URL source: fetch, wait, fetch again, until
/// `kicks` closes.
async fn refresh(
    fetcher: Fetcher,
    mut kicks: mpsc::Receiver<()>,
    set: Arc<ArcSwapOption<KeySet>>,
    status: Arc<Status>,
    outcomes: Family<OutcomeLabels, Counter>,
) {
    let mut failures = 0u32;
    loop {
        let result = tokio::time::timeout(FETCH_TIMEOUT, fetcher.fetch())
            .await
            .unwrap_or(Err(FetchError::Timeout));
        let wait = match result {
            Ok((keys, cache_control)) => {
                let kids = keys.kids().join(",");
                let changed = set
                    .load()
                    .as_ref()
                    .is_none_or(|old| old.kids().join(",") != kids);
                if changed || failures > 0 {
                    tracing::info!(url = %fetcher.url, kids, "fetched the login service's JWKS");
                }
                set.store(Some(Arc::new(keys)));
                failures = 0;
                *status.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                outcomes
                    .get_or_create(&OutcomeLabels { outcome: "ok" })
                    .inc();
                refresh_after(cache_control.as_ref())
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let kept = set.load().is_some();
                tracing::warn!(
                    url = %fetcher.url,
                    error = %e,
                    kept_last_good_set = kept,
                    "cannot fetch the login service's JWKS"
                );
                *status.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                outcomes
                    .get_or_create(&OutcomeLabels {
                        outcome: e.outcome(),
                    })
                    .inc();
                retry_after(failures)
            }
        };
        status.fetching.store(false, Ordering::Release);
        status.attempts.send_modify(|n| *n += 1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            kick = kicks.recv() => if kick.is_none() { break },
        }
    }
}

/// How long a good set is used before it is fetched again: the answer's
/// `max-age` within [`MIN_REFRESH`]..=[`MAX_REFRESH`] (`no-cache` and
/// `no-store` count as 0), else [`REFRESH_INTERVAL`].
pub(crate) fn refresh_after(cache_control: Option<&HeaderValue>) -> Duration {
    match cache_control.and_then(max_age) {
        Some(secs) => Duration::from_secs(secs).clamp(MIN_REFRESH, MAX_REFRESH),
        None => REFRESH_INTERVAL,
    }
}

/// The `max-age` of a `Cache-Control` value, in seconds (RFC 9111 §5.2.2.1).
fn max_age(value: &HeaderValue) -> Option<u64> {
    let text = value.to_str().ok()?;
    let mut age = None;
    for directive in text.split(',') {
        let (name, arg) = match directive.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return Some(0);
        }
        if name.eq_ignore_ascii_case("max-age") {
            // A value too large for u64 is as good as "forever".
            age = arg
                .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
                .map(|a| a.parse().unwrap_or(u64::MAX));
        }
    }
    age
}

/// The wait before the next attempt after `failures` failed fetches in a
/// row: [`RETRY_FIRST`], doubled per further failure, at most [`RETRY_MAX`].
pub(crate) fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_FIRST * (1u32 << doublings)).min(RETRY_MAX)
}

/// At most one early refetch per [`EARLY_REFETCH_EVERY`], on the gateway's
/// clock.
struct EarlyRefetch {
    clock: SharedClock,
    /// When the last one was allowed, in ms; 0 before any.
    last_ms: AtomicU64,
}

impl EarlyRefetch {
    fn new(clock: SharedClock) -> EarlyRefetch {
        EarlyRefetch {
            clock,
            last_ms: AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        let now = self.clock.now_ms().max(1);
        let last = self.last_ms.load(Ordering::Acquire);
        let every = EARLY_REFETCH_EVERY.as_millis() as u64;
        if last != 0 && now < last.saturating_add(every) {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Why a fetch failed.
#[derive(thiserror::Error, Debug)]
enum FetchError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(hyper::Error),
    #[error("answered {0} (200 expected)")]
    Status(StatusCode),
    #[error("the answer is larger than {MAX_JWKS_BYTES} bytes or broken")]
    Body,
    #[error("the answer is not a usable JWKS: {0}")]
    Invalid(#[from] JwksError),
    #[error("cannot build the request: {0}")]
    Request(http::Error),
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
}

impl FetchError {
    /// The `outcome` label of `sis_adopt_jwks_fetches_total`.
    fn outcome(&self) -> &'static str {
        match self {
            FetchError::Connect(_)
            | FetchError::Tls(_)
            | FetchError::Http(_)
            | FetchError::Timeout => "unreachable",
            FetchError::Status(_) => "status",
            FetchError::Body | FetchError::Invalid(_) | FetchError::Request(_) => "invalid",
        }
    }
}

/// One GET of the JWKS URL over a fresh TLS connection (a fetch every few
/// minutes needs no pool), with hyper's HTTP/1 client.
struct Fetcher {
    url: Uri,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

impl Fetcher {
    fn new(url: &Uri, ca: Option<&[CertificateDer<'static>]>) -> anyhow::Result<Fetcher> {
        let host = url
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("sign_in.adopt.jwks: {host:?} is not a TLS server name"))?;
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(certs) => {
                for cert in certs {
                    roots
                        .add(cert.clone())
                        .context("sign_in.adopt.ca: a certificate is not usable")?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    anyhow::bail!(
                        "sign_in.adopt.jwks is an https:// URL but no system root certificates \
                         were found (install ca-certificates, or set sign_in.adopt.ca)"
                    );
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Fetcher {
            port: url.port_u16().unwrap_or(443),
            url: url.clone(),
            host,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        })
    }

    /// The key set at the URL, and the answer's `Cache-Control`.
    async fn fetch(&self) -> Result<(KeySet, Option<HeaderValue>), FetchError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(FetchError::Tls)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(FetchError::Http)?;
        let conn = tokio::spawn(conn);
        let path = self
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = self.url.authority().map_or("", |a| a.as_str());
        let req = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "sis-gateway")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(FetchError::Request)?;
        let res = sender.send_request(req).await.map_err(FetchError::Http)?;
        if res.status() != StatusCode::OK {
            conn.abort();
            return Err(FetchError::Status(res.status()));
        }
        let cache_control = res.headers().get(header::CACHE_CONTROL).cloned();
        let body = Limited::new(res.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|_| FetchError::Body)?
            .to_bytes();
        drop(sender);
        conn.abort();
        let keys = KeySet::parse(&body)?;
        Ok((keys, cache_control))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    fn cc(v: &'static str) -> Option<HeaderValue> {
        Some(HeaderValue::from_static(v))
    }

    #[test]
    fn max_age_is_honoured_within_bounds() {
        assert_eq!(refresh_after(None), REFRESH_INTERVAL);
        assert_eq!(
            refresh_after(cc("public, max-age=600").as_ref()),
            Duration::from_secs(600)
        );
        assert_eq!(
            refresh_after(cc("Max-Age=\"120\"").as_ref()),
            Duration::from_secs(120)
        );
        // Too short, or asking not to be cached: the floor.
        assert_eq!(refresh_after(cc("max-age=5").as_ref()), MIN_REFRESH);
        assert_eq!(refresh_after(cc("max-age=0").as_ref()), MIN_REFRESH);
        assert_eq!(refresh_after(cc("no-cache").as_ref()), MIN_REFRESH);
        assert_eq!(
            refresh_after(cc("max-age=600, no-store").as_ref()),
            MIN_REFRESH
        );
        // Too long (or absurd): the ceiling.
        assert_eq!(refresh_after(cc("max-age=86400").as_ref()), MAX_REFRESH);
        assert_eq!(
            refresh_after(cc("max-age=99999999999999999999999").as_ref()),
            MAX_REFRESH
        );
        // Not a max-age: the default interval.
        for v in [
            "max-age=-1",
            "max-age=",
            "max-age=1h",
            "public",
            "s-maxage=10",
        ] {
            assert_eq!(
                refresh_after(Some(&HeaderValue::from_static(v))),
                REFRESH_INTERVAL,
                "{v}"
            );
        }
        let bad = HeaderValue::from_bytes(b"max-age=\xff").unwrap();
        assert_eq!(refresh_after(Some(&bad)), REFRESH_INTERVAL);
    }

    #[test]
    fn failed_fetches_are_retried_sooner_and_backed_off() {
        assert_eq!(retry_after(1), RETRY_FIRST);
        assert_eq!(retry_after(2), RETRY_FIRST * 2);
        assert_eq!(retry_after(3), RETRY_FIRST * 4);
        assert_eq!(retry_after(7), RETRY_MAX);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
        assert!(RETRY_MAX <= REFRESH_INTERVAL);
    }

    #[test]
    fn early_refetches_are_rate_limited_on_the_clock() {
        let clock = ManualClock::new();
        let early = EarlyRefetch::new(Arc::new(clock.clone()));
        assert!(early.allow(), "the first is allowed");
        assert!(!early.allow());
        clock.advance(EARLY_REFETCH_EVERY - Duration::from_millis(1));
        assert!(!early.allow());
        clock.advance(Duration::from_millis(1));
        assert!(early.allow());
        assert!(!early.allow());
    }
}
