//! Listeners, TLS, connection limits, dispatch, access log, graceful shutdown.
