//! Fuzz target `keyring_parse`: the invariants are in `fuzz/checks.rs` (`checks::keyring_parse`),
//! shared with `tests/it/fuzz_regressions.rs`, which runs `fuzz/regressions/keyring_parse/`
//! on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::keyring_parse(data));
