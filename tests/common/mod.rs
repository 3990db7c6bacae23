//! Real parts for integration tests: `redis-server` processes, upstream
//! servers and the gateway itself, each on an ephemeral loopback port.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod gateway;
pub mod redis;
pub mod upstream;
