//! Fuzz target `wrapped_seed`: the invariants are in `fuzz/checks.rs` (`checks::wrapped_seed`),
//! shared with `tests/it/fuzz_regressions.rs`, which runs `fuzz/regressions/wrapped_seed/`
//! on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::wrapped_seed(data));
