//! The wrapped-seed format: what `Encrypt` returns and `Decrypt` accepts.
//! (Owned by the keyring work; see the module docs once written.)
