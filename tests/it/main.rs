//! The integration tests, as one test binary (one module per area): each
//! binary links the AWS SDK, etcd-client and cryptoki, so one binary instead
//! of twenty is most of the suite's build time on a small machine.
//! `common` holds the harnesses: real etcd processes, real plugin servers,
//! the shared fixtures.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests stop loudly at the first surprise and print what they saw"
)]

mod aws_kms;
mod bundle;
mod cli_reference;
mod common;
mod deploy;
mod fault_keyring;
mod fault_plugin;
mod fuzz_regressions;
mod grpc_clients;
mod ha;
mod image;
mod inspect_deep;
mod inspect_file;
mod inspect_file_vs_live;
mod inspect_hostile;
mod inspect_live;
mod inspect_live_cli;
mod inspect_wal;
mod inspect_writer;
mod key_cli;
mod keyring_backend;
mod monitoring;
mod ops;
mod package;
mod pkcs11;
mod rotation_e2e;
mod server;
mod server_process;
mod socket_callers;
mod trust;
mod vault;
mod verdict;
mod verify_fixtures;
