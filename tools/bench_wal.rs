//! `bench-wal`: writes WAL segments as etcd does (64 MB each, records framed,
//! padded and CRC-32C chained, segment names `%016x-%016x.wal`), full of raft
//! entries carrying kube-apiserver's Secret writes (a Txn comparing the key's
//! mod_revision, then a put of `k8s\0` + a Secret object of about
//! `--value-size` bytes), for `tools/bench-inspect`'s WAL read benchmark.
//! Every segment is filled to its last whole record and padded with zeros,
//! as a preallocated segment etcd cut.
//!
//! Usage: `bench-wal --dir DIR [--segments 5] [--value-size 3000]`.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark tool: prints its figures, and stops at the first failure"
)]

use std::path::PathBuf;

use kube_kms::inspect::classify::build;
use kube_kms::inspect::pb::encode;
use kube_kms::inspect::source::wal::request::encode as request;
use kube_kms::inspect::source::wal::segment::encode::{entry, SegmentWriter};
use kube_kms::inspect::source::wal::segment::RecordType;

/// etcd's `SegmentSizeBytes`.
const SEGMENT_BYTES: usize = 64 * 1000 * 1000;

fn main() {
    let mut dir = None;
    let mut segments = 5usize;
    let mut value_size = 3000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().expect("a value after each flag");
        match arg.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--segments" => segments = value.parse().expect("--segments N"),
            "--value-size" => value_size = value.parse().expect("--value-size BYTES"),
            other => panic!("unknown flag {other}"),
        }
    }
    let dir = dir.expect("--dir DIR");
    std::fs::create_dir_all(&dir).expect("create --dir");
    let mut crc = 0u32;
    let mut index = 1u64;
    let mut written = 0u64;
    for sequence in 0..segments {
        let first_index = index;
        let mut writer = SegmentWriter::new(crc);
        writer.record(RecordType::Metadata, b"\x08\x01\x10\x02");
        writer.record(RecordType::Snapshot, b"");
        loop {
            let key = format!("/registry/secrets/ns-{}/secret-{index}", index % 50);
            let mut data_entry = Vec::new();
            encode::bytes_field(&mut data_entry, 1, b"password");
            encode::bytes_field(&mut data_entry, 2, &vec![b'x'; value_size]);
            let mut raw = Vec::new();
            encode::bytes_field(&mut raw, 2, &data_entry);
            let value = build::plaintext_protobuf("v1", "Secret", &raw);
            let txn = request::txn(
                key.as_bytes(),
                &[request::op_put(key.as_bytes(), &value)],
                &[],
            );
            let data = entry(2, index, 0, &request::internal_txn(index, &txn));
            if writer.bytes.len() + data.len() + 64 > SEGMENT_BYTES {
                break;
            }
            writer.record(RecordType::Entry, &data);
            index += 1;
        }
        crc = writer.crc;
        let mut bytes = writer.bytes;
        bytes.resize(SEGMENT_BYTES, 0);
        let path = dir.join(format!("{sequence:016x}-{first_index:016x}.wal"));
        std::fs::write(&path, &bytes).expect("write a segment");
        written += bytes.len() as u64;
    }
    println!(
        "bench-wal: {segments} segments, {} entries, {written} bytes in {}",
        index - 1,
        dir.display()
    );
}
