//! Tests of the segment reader and of the WAL scan, on segments written by
//! [`segment::encode`] (framed, padded and chained as etcd writes them).

use std::io::Cursor;

use proptest::prelude::*;

use super::request::encode as req;
use super::segment::encode::{entry, SegmentWriter};
use super::segment::{frame_size, RecordType, SegmentEnd, SegmentError, SegmentReader};
use super::*;

/// Every record of `bytes`, or the error that stopped the reader.
/// A record read: type number, data, offset.
type Read = (i64, Vec<u8>, u64);
/// A put handed to the sink: key, value, segment, offset, term, index.
type Put = (Vec<u8>, Vec<u8>, String, u64, u64, u64);

fn read_all(bytes: &[u8], seed: u32, last: bool) -> (Vec<Read>, Result<SegmentEnd, SegmentError>) {
    let mut reader = SegmentReader::new(Cursor::new(bytes), bytes.len() as u64, seed, last);
    let mut records = Vec::new();
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                records.push((record.kind.number(), record.data.to_vec(), record.offset))
            }
            Ok(None) => return (records, Ok(reader.end().unwrap())),
            Err(error) => return (records, Err(error)),
        }
    }
}

fn sample_segment() -> SegmentWriter {
    let mut writer = SegmentWriter::new(0);
    writer.record(RecordType::Metadata, b"\x08\x01\x10\x02");
    writer.record(RecordType::Snapshot, b"");
    for index in 1..=5u64 {
        let data = req::internal_put(
            index,
            format!("/registry/secrets/ns/s{index}").as_bytes(),
            b"k8s\0\x0a\x02v1\x12\x06Secret",
        );
        writer.record(RecordType::Entry, &entry(2, index, 0, &data));
    }
    writer.record(RecordType::State, b"\x08\x02\x10\x01\x18\x05");
    writer
}

#[test]
fn frame_sizes_follow_etcd() {
    assert_eq!(frame_size(13), (13, 0));
    assert_eq!(frame_size(13 | (0x83 << 56)), (13, 3));
    // Only bits 56-58 are padding; other top bits do not count.
    assert_eq!(frame_size(8 | (0xf8 << 56)), (8, 0));
}

#[test]
fn records_read_back_with_a_preallocated_zero_tail() {
    let mut writer = sample_segment();
    let written = writer.bytes.len() as u64;
    writer.bytes.resize(1 << 16, 0);
    let (records, end) = read_all(&writer.bytes, 0, true);
    assert_eq!(end.unwrap(), SegmentEnd::Clean { offset: written });
    let kinds: Vec<i64> = records.iter().map(|r| r.0).collect();
    assert_eq!(kinds, vec![4, 1, 5, 2, 2, 2, 2, 2, 3]);
    // Offsets are 8-byte aligned and increasing.
    assert!(records
        .windows(2)
        .all(|w| w[0].2 < w[1].2 && w[1].2 % 8 == 0));
    // The same without the tail (a segment etcd cut and truncated).
    let (again, end) = read_all(&writer.bytes[..written as usize], 0, false);
    assert_eq!(again, records);
    assert_eq!(end.unwrap(), SegmentEnd::Clean { offset: written });
}

#[test]
fn a_flipped_byte_in_a_record_is_a_crc_error_at_its_offset() {
    let writer = sample_segment();
    let (records, _) = read_all(&writer.bytes, 0, true);
    let (_, data, offset) = records[5].clone();
    // Flip a byte inside the data of the 6th record (an entry).
    let position = offset as usize + 8 + 6 + data.len() / 2;
    let mut damaged = writer.bytes.clone();
    damaged[position] ^= 0x01;
    let (read, end) = read_all(&damaged, 0, true);
    assert_eq!(read.len(), 5);
    match end {
        Err(SegmentError::Crc { offset: at, .. }) => assert_eq!(at, offset),
        other => panic!("expected a CRC error, got {other:?}"),
    }
}

#[test]
fn a_torn_last_record_ends_the_last_segment_only() {
    let mut writer = sample_segment();
    let before = writer.bytes.len();
    let big = vec![0x5a; 1500];
    writer.record(
        RecordType::Entry,
        &entry(
            2,
            6,
            0,
            &req::internal_put(6, b"/registry/secrets/ns/big", &big),
        ),
    );
    // The second half of the record never reached the disk.
    let cut = before + 8 + 600;
    let end_of_record = writer.bytes.len();
    writer.bytes[cut..end_of_record].fill(0);
    writer.bytes.resize(1 << 14, 0);
    let (records, end) = read_all(&writer.bytes, 0, true);
    assert_eq!(records.len(), 9);
    assert_eq!(
        end.unwrap(),
        SegmentEnd::Torn {
            offset: before as u64
        }
    );
    // In a segment that is not the last, the same is damage.
    let (_, end) = read_all(&writer.bytes, 0, false);
    assert!(matches!(end, Err(SegmentError::Crc { offset, .. }) if offset == before as u64));
}

#[test]
fn non_zero_bytes_after_the_end_are_an_error() {
    let mut writer = sample_segment();
    let written = writer.bytes.len();
    writer.bytes.resize(written + 4096, 0);
    writer.bytes[written + 3000] = 1;
    let (_, end) = read_all(&writer.bytes, 0, true);
    match end {
        Err(SegmentError::TrailingData { offset, end }) => {
            assert_eq!(offset, (written + 3000) as u64);
            assert_eq!(end, written as u64);
        }
        other => panic!("expected trailing data, got {other:?}"),
    }
}

#[test]
fn a_length_past_the_end_of_the_file_is_an_error() {
    let writer = sample_segment();
    let mut damaged = writer.bytes.clone();
    let (records, _) = read_all(&writer.bytes, 0, true);
    let offset = records[3].2 as usize;
    damaged[offset + 3] = 0x40;
    let (_, end) = read_all(&damaged, 0, true);
    assert!(matches!(end, Err(SegmentError::TooLong { offset: at, .. }) if at == offset as u64));
    // A file cut inside a length word.
    let (_, end) = read_all(&writer.bytes[..offset + 4], 0, false);
    assert!(matches!(end, Err(SegmentError::CutLengthWord { .. })));
}

#[test]
fn the_chain_continues_into_the_next_segment() {
    let first = sample_segment();
    let second = SegmentWriter::new(first.crc);
    let (_, end) = read_all(&second.bytes, first.crc, true);
    end.unwrap();
    // A segment from another chain.
    let (_, end) = read_all(&second.bytes, first.crc ^ 1, true);
    assert!(matches!(end, Err(SegmentError::Chain { offset: 0, .. })));
    // Read alone, its CRC record seeds the chain.
    let (_, end) = read_all(&second.bytes, 0, true);
    end.unwrap();
}

/// A sink that keeps what it is given.
#[derive(Default)]
struct Collect {
    puts: Vec<Put>,
    errors: Vec<String>,
}

impl ObservationSink for Collect {
    fn observe(&mut self, _: Observed<'_>) {
        panic!("WAL puts are copies");
    }
    fn read_error(&mut self, message: String) {
        self.errors.push(message);
    }
    fn observe_copy(&mut self, observed: Observed<'_>, location: Location<'_>) {
        let (
            Observed::Put { key, value, .. },
            Location::Wal {
                segment,
                offset,
                term,
                index,
            },
        ) = (observed, location)
        else {
            panic!("unexpected {observed:?} {location:?}");
        };
        self.puts.push((
            key.to_vec(),
            value.to_vec(),
            segment.to_string(),
            offset,
            term,
            index,
        ));
    }
}

#[test]
fn scan_reads_segments_in_order_with_their_chain() {
    let dir = tempfile::tempdir().unwrap();
    let first = sample_segment();
    let mut second = SegmentWriter::new(first.crc);
    let txn = req::txn(
        b"/registry/secrets/ns/t",
        &[req::op_put(b"/registry/secrets/ns/t", b"plain")],
        &[],
    );
    second.record(
        RecordType::Entry,
        &entry(3, 6, 0, &req::internal_txn(6, &txn)),
    );
    second.record(
        RecordType::Entry,
        &entry(
            3,
            7,
            0,
            &req::v2(7, "PUT", b"/registry/secrets/ns/v2", b"v2 value"),
        ),
    );
    second.record(RecordType::Entry, &entry(3, 8, 0, b""));
    second.record(RecordType::Entry, &entry(3, 9, 1, b"\x08\x01"));
    let mut tail = second.bytes.clone();
    tail.resize(1 << 16, 0);
    let a = dir.path().join("0000000000000000-0000000000000000.wal");
    let b = dir.path().join("0000000000000001-0000000000000006.wal");
    std::fs::write(&a, &first.bytes).unwrap();
    std::fs::write(&b, &tail).unwrap();
    let paths = segments_in(dir.path()).unwrap();
    assert_eq!(paths, vec![a.clone(), b.clone()]);
    let mut sink = Collect::default();
    let summary = scan_segments(&paths, &mut sink);
    assert!(sink.errors.is_empty(), "{:?}", sink.errors);
    assert_eq!(summary.segments, 2);
    assert_eq!(summary.entries, 9);
    assert_eq!(summary.puts, 7);
    assert_eq!(summary.v2_requests, 1);
    assert_eq!(summary.last_index, 9);
    let keys: Vec<String> = sink
        .puts
        .iter()
        .map(|p| String::from_utf8_lossy(&p.0).into_owned())
        .collect();
    assert_eq!(keys[5], "/registry/secrets/ns/t");
    assert_eq!(keys[6], "/registry/secrets/ns/v2");
    let put = &sink.puts[5];
    assert_eq!(
        (put.2.as_str(), put.4, put.5),
        (b.display().to_string().as_str(), 3, 6)
    );
    // A second segment from another chain is an error naming it.
    let other = SegmentWriter::new(first.crc ^ 0xdead);
    std::fs::write(&b, &other.bytes).unwrap();
    let mut sink = Collect::default();
    scan_segments(&paths, &mut sink);
    assert_eq!(sink.errors.len(), 1);
    assert!(
        sink.errors[0].contains("0000000000000001-0000000000000006.wal"),
        "{}",
        sink.errors[0]
    );
    assert!(
        sink.errors[0].contains("byte offset 0"),
        "{}",
        sink.errors[0]
    );
}

fn records_strategy() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    prop::collection::vec((1u8..=5, prop::collection::vec(any::<u8>(), 0..300)), 0..20)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever records are written, with whatever zero tail, they read
    /// back exactly, at 8-byte aligned offsets.
    #[test]
    fn written_records_read_back(records in records_strategy(), tail in 0usize..2048, seed in any::<u32>()) {
        let mut writer = SegmentWriter::new(seed);
        for (kind, data) in &records {
            let kind = if *kind == 4 { RecordType::Entry } else { RecordType::Other(i64::from(*kind)) };
            writer.record(match kind.number() { 1 => RecordType::Metadata, 2 => RecordType::Entry, 3 => RecordType::State, 5 => RecordType::Snapshot, _ => kind }, data);
        }
        let written = writer.bytes.len() as u64;
        writer.bytes.resize(writer.bytes.len() + tail, 0);
        let (read, end) = read_all(&writer.bytes, seed, true);
        prop_assert_eq!(end.unwrap(), SegmentEnd::Clean { offset: written });
        prop_assert_eq!(read.len(), records.len() + 1);
        for ((_, data), (_, read_data, offset)) in records.iter().zip(read.iter().skip(1)) {
            prop_assert_eq!(data, read_data);
            prop_assert_eq!(offset % 8, 0);
        }
    }

    /// Any damage: no panic, an error (if any) names an offset inside the
    /// file, and a flipped byte of a record's data is never read as valid.
    #[test]
    fn damage_is_found_or_harmless(records in records_strategy(), position in any::<prop::sample::Index>(), bits in 1u8..=255, last in any::<bool>()) {
        let mut writer = SegmentWriter::new(0);
        for (_, data) in &records {
            writer.record(RecordType::Entry, data);
        }
        let (clean, _) = read_all(&writer.bytes, 0, last);
        let mut damaged = writer.bytes.clone();
        let at = position.index(damaged.len());
        damaged[at] ^= bits;
        let (read, end) = read_all(&damaged, 0, last);
        if let Err(error) = &end {
            prop_assert!(error.offset() <= damaged.len() as u64);
        }
        // Records before the damaged one are read as they were.
        let ends: Vec<u64> = clean.iter().skip(1).map(|c| c.2).chain([writer.bytes.len() as u64]).collect();
        for ((read, clean), end) in read.iter().zip(clean.iter()).zip(ends) {
            if end <= at as u64 {
                prop_assert_eq!(read, clean);
            }
        }
        // A record whose data bytes changed is never returned as read.
        for (kind, data, offset) in &read {
            if let Some(original) = clean.iter().find(|c| c.2 == *offset && c.0 == *kind) {
                if *kind != 4 && original.1 != *data {
                    prop_assert!(false, "changed data passed the CRC at {}", offset);
                }
            }
        }
    }

    /// Arbitrary bytes never panic the reader.
    #[test]
    fn arbitrary_bytes_do_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), last in any::<bool>()) {
        let _ = read_all(&bytes, 0, last);
    }
}
