//! How a bundle is protected on export ([`Protection`]: age X25519
//! recipients or a passphrase) and opened on import ([`Unlock`]: an age
//! identity file or the passphrase), read from small secret files.
use std::io::Read as _;
use std::path::Path;

use age::secrecy::SecretString;
use zeroize::Zeroizing;

use super::BundleError;

/// How a bundle is protected when exported.
pub enum Protection {
    /// Encrypted to these age X25519 recipients (any of their identities opens it).
    Recipients(Vec<age::x25519::Recipient>),
    /// Encrypted to a passphrase (age scrypt).
    Passphrase(SecretString),
}

/// How a bundle is opened when imported.
pub enum Unlock {
    /// age X25519 identities (the contents of an age identity file).
    Identities(Vec<age::x25519::Identity>),
    /// The passphrase the bundle was exported with.
    Passphrase(SecretString),
}

impl Protection {
    /// Parses `age1...` recipient strings (at least one).
    pub fn recipients(texts: &[String]) -> Result<Self, BundleError> {
        if texts.is_empty() {
            return Err(BundleError::Protection(
                "give at least one --recipient (age1...) or a --passphrase-file".into(),
            ));
        }
        let mut recipients = Vec::with_capacity(texts.len());
        for text in texts {
            let recipient = text.trim().parse::<age::x25519::Recipient>().map_err(|_| {
                BundleError::Protection(format!(
                    "{text:?} is not an age X25519 recipient (it starts with age1; `age-keygen -y IDENTITY_FILE` prints it)"
                ))
            })?;
            recipients.push(recipient);
        }
        Ok(Protection::Recipients(recipients))
    }

    /// Reads a passphrase from the first line of `path`.
    pub fn passphrase_file(path: &Path) -> Result<Self, BundleError> {
        Ok(Protection::Passphrase(read_passphrase(path)?))
    }
}

impl Unlock {
    /// Reads an age identity file (`AGE-SECRET-KEY-1...` lines, `#` comments).
    pub fn identity_file(path: &Path) -> Result<Self, BundleError> {
        let text = read_small_secret(path, "cannot read identity file")?;
        let text = std::str::from_utf8(&text).map_err(|_| {
            BundleError::Protection(format!(
                "identity file {} is not UTF-8 text; it must hold AGE-SECRET-KEY-1... lines (age-keygen output)",
                path.display()
            ))
        })?;
        let mut identities = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The line is secret: the error names its number only.
            let identity = line.parse::<age::x25519::Identity>().map_err(|_| {
                BundleError::Protection(format!(
                    "identity file {} line {}: not an age X25519 identity (AGE-SECRET-KEY-1...)",
                    path.display(),
                    index + 1
                ))
            })?;
            identities.push(identity);
        }
        if identities.is_empty() {
            return Err(BundleError::Protection(format!(
                "identity file {} holds no AGE-SECRET-KEY-1... line (create one with age-keygen)",
                path.display()
            )));
        }
        Ok(Unlock::Identities(identities))
    }

    /// Reads a passphrase from the first line of `path`.
    pub fn passphrase_file(path: &Path) -> Result<Self, BundleError> {
        Ok(Unlock::Passphrase(read_passphrase(path)?))
    }
}

fn read_small_secret(path: &Path, action: &'static str) -> Result<Zeroizing<Vec<u8>>, BundleError> {
    let io = |source| BundleError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buffer = Zeroizing::new(Vec::with_capacity(4096));
    file.take(64 * 1024).read_to_end(&mut buffer).map_err(io)?;
    Ok(buffer)
}

fn read_passphrase(path: &Path) -> Result<SecretString, BundleError> {
    let text = read_small_secret(path, "cannot read passphrase file")?;
    let first_line = text.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    let passphrase = std::str::from_utf8(first_line).map_err(|_| {
        BundleError::Protection(format!(
            "passphrase file {} is not UTF-8 text",
            path.display()
        ))
    })?;
    if passphrase.chars().count() < 12 {
        return Err(BundleError::Protection(format!(
            "the passphrase in {} is shorter than 12 characters; use a long random one (e.g. `openssl rand -base64 32`)",
            path.display()
        )));
    }
    Ok(SecretString::from(passphrase.to_owned()))
}
