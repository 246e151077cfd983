//! Test code shared by the integration tests (`mod common;` in each).
// Each test binary uses a different part of it.
#![allow(dead_code)]

pub mod apiserver;
pub mod bao;
pub mod bbolt_craft;
pub mod etcd;
pub mod fixtures;
pub mod grpcio;
pub mod inspect;
pub mod plugin;
