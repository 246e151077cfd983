//! Fuzz target `bbolt_file`: the invariants are in `fuzz/checks.rs` (`checks::bbolt_file`),
//! shared with `tests/it/fuzz_regressions.rs`, which runs `fuzz/regressions/bbolt_file/`
//! on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::bbolt_file(data));
