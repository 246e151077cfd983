//! Byte containers for key material, seeds and plaintexts.
//!
//! They zeroize on drop, do not implement `Clone` implicitly into plain
//! vectors, and their `Debug` prints a length-free placeholder, so a secret
//! that ends up in a `{:?}` or a panic message shows nothing. The only way to
//! the bytes is the greppable `expose_secret()`.
use zeroize::Zeroize;

/// A secret of variable length: a DEK seed, a plaintext object, a key file's contents.
#[derive(Clone, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are zeroized when this value drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Copies `bytes` into a new secret. The caller remains responsible for its own copy.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The secret bytes. Every call site is a place where a secret is used.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Mutable access, for decrypting in place.
    pub fn expose_secret_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// Number of bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // The slice impls are a memset behind an optimization barrier;
        // `Vec<u8>`'s own `zeroize` writes byte by byte (volatile), about
        // 8x slower, and a verifying scan drops a plaintext per value.
        // Together they cover what it covers: the bytes and the spare
        // capacity.
        self.0.as_mut_slice().zeroize();
        self.0.spare_capacity_mut().zeroize();
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

/// A 256-bit key (a KEK or a derived subkey).
#[derive(Clone)]
pub struct Key256(Box<[u8; 32]>);

impl Key256 {
    /// Takes a key from an array, zeroizing the parameter. Arrays are `Copy`:
    /// a caller's named local is copied, not moved, and survives; pass an
    /// expression, or use [`Key256::from_slice`] and wipe the source yourself.
    pub fn from_array(mut bytes: [u8; 32]) -> Self {
        let key = Self(Box::new(bytes));
        bytes.zeroize();
        key
    }

    /// Copies a key from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut array: [u8; 32] = bytes.try_into().ok()?;
        let key = Self(Box::new(array));
        array.zeroize();
        Some(key)
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = Self(Box::new([0u8; 32]));
        getrandom::getrandom(key.0.as_mut_slice())?;
        Ok(key)
    }

    /// The key bytes. Every call site is a place where key material is used.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for Key256 {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Key256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key256(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let s = SecretBytes::copy_from(b"hunter2-hunter2");
        let k = Key256::from_array([0xAB; 32]);
        let shown = format!("{s:?} {k:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert!(!shown.contains("171"));
    }
}
