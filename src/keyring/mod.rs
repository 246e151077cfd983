//! The versioned KEK keyring file. (Being written.)
