//! The fuzz targets' invariants on stable, in the normal test suite: every
//! file in `fuzz/regressions/TARGET/` (crash inputs and edge cases kept in
//! the repository) and `fuzz/seeds/TARGET/` goes through `checks::TARGET`,
//! the same function the cargo-fuzz target calls (`fuzz/checks.rs`). The
//! bbolt targets also get every shared fixture file and its truncations at
//! page boundaries.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

const FUZZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("read a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every regression and seed input of `target`; returns how
/// many ran (panics, naming the file, on a broken invariant).
fn run_inputs(target: &str, check: fn(&[u8])) -> usize {
    let mut files = files_in(&Path::new(FUZZ).join("regressions").join(target));
    files.extend(files_in(&Path::new(FUZZ).join("seeds").join(target)));
    for file in &files {
        let data = std::fs::read(file).expect("read a fuzz input");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: input {} fails", file.display());
    }
    files.len()
}

fn fixture_files() -> Vec<PathBuf> {
    let mut files = files_in(Path::new(FIXTURES));
    files.extend(files_in(&Path::new(FIXTURES).join("apiserver")));
    files.retain(|path| path.extension().is_some_and(|ext| ext == "db"));
    assert!(files.len() >= 6, "fixtures missing under {FIXTURES}");
    files
}

#[test]
fn keyring_parse_inputs() {
    assert!(run_inputs("keyring_parse", checks::keyring_parse) >= 3);
}

#[test]
fn wrapped_seed_inputs() {
    assert!(run_inputs("wrapped_seed", checks::wrapped_seed) >= 3);
}

#[test]
fn vault_stored_form_inputs() {
    assert!(run_inputs("vault_stored_form", checks::vault_stored_form) >= 3);
}

#[test]
fn decrypt_request_inputs() {
    assert!(run_inputs("decrypt_request", checks::decrypt_request) >= 3);
}

#[test]
fn scan_report_inputs() {
    assert!(run_inputs("scan_report", checks::scan_report) >= 3);
}

#[test]
fn encryption_config_inputs() {
    assert!(run_inputs("encryption_config", checks::encryption_config) >= 3);
}

#[test]
fn wal_segment_inputs() {
    assert!(run_inputs("wal_segment", checks::wal_segment) >= 3);
}

#[test]
fn classify_value_inputs() {
    assert!(run_inputs("classify_value", checks::classify_value) >= 3);
}

#[test]
fn bbolt_file_inputs_fixtures_and_their_truncations() {
    assert!(run_inputs("bbolt_file", checks::bbolt_file) >= 3);
    for file in fixture_files() {
        let data = std::fs::read(&file).expect("read a fixture");
        checks::bbolt_file(&data);
        for cut in (0..data.len()).step_by(4096).chain([data.len() - 1]) {
            checks::bbolt_file(&data[..cut]);
        }
    }
}

#[test]
fn snapshot_trailer_inputs_and_fixtures() {
    assert!(run_inputs("snapshot_trailer", checks::snapshot_trailer) >= 3);
    for file in fixture_files() {
        let data = std::fs::read(&file).expect("read a fixture");
        for mode in [0u8, 1] {
            let mut input = vec![mode];
            input.extend_from_slice(&data);
            checks::snapshot_trailer(&input);
            // A flipped byte in the image must make a present trailer mismatch.
            if let Some(byte) = input.get_mut(8192 + 1) {
                *byte ^= 0x40;
            }
            checks::snapshot_trailer(&input);
        }
    }
}
