//! Fuzz target `wal_segment`: the invariants are in `fuzz/checks.rs` (`checks::wal_segment`),
//! shared with `tests/it/fuzz_regressions.rs`, which runs `fuzz/regressions/wal_segment/`
//! on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::wal_segment(data));
