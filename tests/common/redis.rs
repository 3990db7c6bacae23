//! Starts `redis-server` processes for tests.
