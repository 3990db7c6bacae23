#![no_main]
//! Opening attacker-supplied refresh tokens: never panics, and only tokens
//! sealed under the key open.

use libfuzzer_sys::fuzz_target;
use sis_gateway::tokens::seal::{open_successor, Sealer};

fuzz_target!(|data: &[u8]| {
    let sealer = Sealer::new(&[[7u8; 32]]);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = sealer.open(s);
        let _ = open_successor(s, data);
    }
});
