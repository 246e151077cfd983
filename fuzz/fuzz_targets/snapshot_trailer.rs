//! Fuzz target `snapshot_trailer`: the invariants are in `fuzz/checks.rs` (`checks::snapshot_trailer`),
//! shared with `tests/it/fuzz_regressions.rs`, which runs `fuzz/regressions/snapshot_trailer/`
//! on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::snapshot_trailer(data));
