//! Fuzz target `decrypt_request`: the invariants are in `fuzz/checks.rs` (`checks::decrypt_request`),
//! shared with `tests/it/fuzz_regressions.rs`, which runs `fuzz/regressions/decrypt_request/`
//! on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::decrypt_request(data));
