//! Health, readiness, metrics and the session admin API.
