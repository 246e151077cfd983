//! The file keyring as a [`super::KeyBackend`]. (Being written.)
