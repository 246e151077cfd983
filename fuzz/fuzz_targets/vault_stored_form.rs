//! Fuzz target `vault_stored_form`: the invariants are in `fuzz/checks.rs`
//! (`checks::vault_stored_form`), shared with `tests/it/fuzz_regressions.rs`,
//! which runs `fuzz/regressions/vault_stored_form/` on stable.
#![no_main]
#![forbid(unsafe_code)]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::vault_stored_form(data));
