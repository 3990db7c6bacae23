//! Starts the gateway for tests.
