//! The user PIN: read from its file (size, owner and mode checked, kept in
//! zeroizing memory), and which login answers mean the PIN itself is refused.
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use cryptoki::error::RvError;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::super::Pkcs11Error;
use crate::keyring::FileStamp;

/// Largest PIN file read (a PIN is a few dozen bytes).
const MAX_PIN_FILE: u64 = 4096;

/// Reads the user PIN from `path`: at most 4 KiB, owned by the user the
/// process runs as or by root, not accessible to group or others, trailing
/// line break removed, not empty. The bytes stay in zeroizing memory.
pub fn read_pin_file(path: &Path) -> Result<AuthPin, Pkcs11Error> {
    read_pin(path).map(|(pin, _)| pin)
}

pub(super) fn read_pin(path: &Path) -> Result<(AuthPin, FileStamp), Pkcs11Error> {
    let pin_error = |problem: String| Pkcs11Error::PinFile {
        path: path.to_path_buf(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|error| pin_error(error.to_string()))?;
    let metadata = file
        .metadata()
        .map_err(|error| pin_error(error.to_string()))?;
    if !metadata.is_file() {
        return Err(pin_error("not a regular file".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me && metadata.uid() != 0 {
        return Err(pin_error(format!(
            "is owned by uid {}, neither the user kube-kms runs as (uid {me}) nor root, who could swap the PIN under it: run `chown {me} {}` (or root)",
            metadata.uid(),
            path.display()
        )));
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(pin_error(format!(
            "has mode {:04o}, which lets group or others read or change the PIN: run `chmod 600 {}`",
            metadata.mode() & 0o7777,
            path.display()
        )));
    }
    let stamp = FileStamp::of(&metadata);
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_PIN_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| pin_error(error.to_string()))?;
    if bytes.len() as u64 > MAX_PIN_FILE {
        return Err(pin_error(format!(
            "is larger than {MAX_PIN_FILE} bytes: not a PIN file"
        )));
    }
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(pin_error("is empty".into()));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| pin_error("is not UTF-8 text".into()))?
        .to_owned();
    Ok((AuthPin::from(text), stamp))
}

/// Whether C_Login's `rv` says the PIN itself is wrong or unusable (so
/// trying it again would only burn a retry).
pub(super) fn refuses_the_pin(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::PinIncorrect
            | RvError::PinLocked
            | RvError::PinInvalid
            | RvError::PinLenRange
            | RvError::PinExpired
    )
}
