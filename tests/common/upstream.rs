//! Real upstream servers for tests.
