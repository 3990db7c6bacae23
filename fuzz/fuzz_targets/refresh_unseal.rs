#![no_main]
//! Opening attacker-supplied refresh tokens: never panics, and only tokens
//! sealed under the key open, with their own outer nonce and version.

use libfuzzer_sys::fuzz_target;
use sis_gateway::tokens::seal::{open_successor, RefreshPayload, Sealer};

fuzz_target!(|data: &[u8]| {
    let sealer = Sealer::new(&[[7u8; 32]]);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = sealer.open(s);
        let _ = open_successor(s, data);
        // A token of ours whose outer parts the input chose opens only with
        // the outer parts it was sealed with, or with none (earlier shape).
        let token = sealer.seal(&RefreshPayload::new("h", "u", "c"));
        let (sealed, outer) = token.split_at(token.find('.').expect("outer parts"));
        let candidate = format!("{sealed}{s}");
        if sealer.open(&candidate).is_ok() {
            assert!(s.is_empty() || s == outer);
        }
    }
});
