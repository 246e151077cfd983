//! Fuzz target `scan_report`: the invariants are in `fuzz/checks.rs` (`checks::scan_report`),
//! shared with `tests/it/fuzz_regressions.rs`, which runs `fuzz/seeds/scan_report/`
//! on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::scan_report(data));
