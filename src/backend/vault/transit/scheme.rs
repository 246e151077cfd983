//! The names and forms of the Vault backend: mount and key names, the
//! key_id scheme (`kk-vault-vN-MOUNT/KEY`), the associated data that binds a
//! seed to its key_id, and the compact stored form of a Transit ciphertext.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::{TransitError, AD_LABEL, FORMAT_BYTE, KEY_ID_PREFIX, MAX_STORED_LEN};

/// Checks a mount path: non-empty segments of `[A-Za-z0-9_.-]` joined by `/`.
pub fn validate_mount(mount: &str) -> Result<(), TransitError> {
    let bad = |problem| TransitError::BadName {
        what: "--vault-mount",
        value: mount.to_owned(),
        problem,
    };
    if mount.is_empty() || mount.len() > 200 {
        return Err(bad("must be 1 to 200 characters"));
    }
    if !mount
        .split('/')
        .all(|segment| !segment.is_empty() && segment.bytes().all(name_byte))
    {
        return Err(bad(
            "must be segments of letters, digits, '_', '-' and '.' joined by '/' (no leading or trailing '/')",
        ));
    }
    Ok(())
}

/// Checks a Transit key name (Transit's own rule: word characters, `-`, `.`).
pub fn validate_key(key: &str) -> Result<(), TransitError> {
    if key.is_empty() || key.len() > 128 || !key.bytes().all(name_byte) {
        return Err(TransitError::BadName {
            what: "--vault-key",
            value: key.to_owned(),
            problem: "must be 1 to 128 letters, digits, '_', '-' or '.'",
        });
    }
    Ok(())
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// The key_id of `version` of `mount/key`.
pub fn key_id_for(mount: &str, key: &str, version: u32) -> String {
    format!("{KEY_ID_PREFIX}{version}-{mount}/{key}")
}

/// Splits a Vault key_id into (version, mount, key); `None` unless it is
/// `kk-vault-vN-MOUNT/KEY` with `N` in 1..=u32::MAX without leading zeros
/// and valid mount and key names.
pub fn parse_key_id(key_id: &str) -> Option<(u32, &str, &str)> {
    let rest = key_id.strip_prefix(KEY_ID_PREFIX)?;
    let (number, path) = rest.split_once('-')?;
    if number.is_empty() || number.starts_with('0') || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: u32 = number.parse().ok()?;
    let (mount, key) = path.rsplit_once('/')?;
    if validate_mount(mount).is_err() || validate_key(key).is_err() {
        return None;
    }
    Some((version, mount, key))
}

/// The associated data bound to ciphertexts under `key_id`.
pub fn associated_data(key_id: &str) -> String {
    B64.encode(format!("{AD_LABEL}{key_id}"))
}

/// The stored form of Transit's `vault:vN:<base64>` made under `version`.
pub fn compact(version: u32, transit: &str) -> Result<Vec<u8>, String> {
    let prefix = format!("vault:v{version}:");
    let encoded = transit
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("a ciphertext not of version {version}"))?;
    let raw = B64
        .decode(encoded)
        .map_err(|_| "a ciphertext that is not base64".to_owned())?;
    let mut stored = Vec::with_capacity(5 + raw.len());
    stored.push(FORMAT_BYTE);
    stored.extend_from_slice(&version.to_be_bytes());
    stored.extend_from_slice(&raw);
    Ok(stored)
}

/// Transit's `vault:vN:<base64>` from a stored form, if it is one made
/// under `version`.
pub fn expand(version: u32, stored: &[u8]) -> Option<String> {
    if stored.len() > MAX_STORED_LEN {
        return None;
    }
    let (&format, rest) = stored.split_first()?;
    if format != FORMAT_BYTE || rest.len() < 4 + 12 + 16 {
        return None;
    }
    let (number, raw) = rest.split_at(4);
    let stored_version = u32::from_be_bytes(number.try_into().ok()?);
    if stored_version != version {
        return None;
    }
    Some(format!("vault:v{version}:{}", B64.encode(raw)))
}
