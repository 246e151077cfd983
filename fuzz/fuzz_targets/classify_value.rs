//! Fuzz target `classify_value`: the invariants are in `fuzz/checks.rs` (`checks::classify_value`),
//! shared with `tests/it/fuzz_regressions.rs`, which runs `fuzz/regressions/classify_value/`
//! on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::classify_value(data));
