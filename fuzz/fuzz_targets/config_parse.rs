#![no_main]
//! `gateway.toml` as an operator might mistype it: every input is either a
//! config or a list of problems, never a panic.

use libfuzzer_sys::fuzz_target;
use sis_gateway::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Config::parse(text, "fuzz") {
            assert!(!e.problems.is_empty());
        }
    }
});
