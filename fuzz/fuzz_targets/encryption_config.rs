//! Fuzz target `encryption_config`: the invariants are in `fuzz/checks.rs` (`checks::encryption_config`),
//! shared with `tests/it/fuzz_regressions.rs`, which runs `fuzz/regressions/encryption_config/`
//! on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::encryption_config(data));
