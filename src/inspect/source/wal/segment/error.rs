//! What can be damaged in a WAL segment, each with the byte offset it names
//! (the reader's one error type).

use std::io;

use crate::inspect::pb::PbError;

/// Damage in a segment: what, and where.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// Reading the file failed.
    #[error("read error at byte offset {offset}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// The error.
        source: io::Error,
    },
    /// The file ends inside a length word.
    #[error("the file ends inside the length word at byte offset {offset} (cut short?)")]
    CutLengthWord {
        /// Offset of the length word.
        offset: u64,
    },
    /// A record longer than what is left of the file.
    #[error("the record at byte offset {offset} claims {length} bytes (with padding), but only {remaining} are left in the file: a damaged length word or a cut file")]
    TooLong {
        /// Offset of the length word.
        offset: u64,
        /// Its length plus padding.
        length: u64,
        /// Bytes left after the length word.
        remaining: u64,
    },
    /// The record bytes are not a `walpb.Record`.
    #[error("the record at byte offset {offset} does not decode: {source}")]
    Record {
        /// Offset of the length word.
        offset: u64,
        /// Why.
        source: PbError,
    },
    /// The running CRC does not match the record's.
    #[error("CRC mismatch in the record at byte offset {offset}: the record says {stored:08x}, the data gives {computed:08x} (damaged data)")]
    Crc {
        /// Offset of the length word.
        offset: u64,
        /// The CRC in the record.
        stored: u32,
        /// The running CRC computed.
        computed: u32,
    },
    /// A CRC record that does not continue the previous segment's chain.
    #[error("the CRC record at byte offset {offset} carries {stored:08x}, but the previous segment ended at {previous:08x}: a segment is missing, replaced or damaged")]
    Chain {
        /// Offset of the length word.
        offset: u64,
        /// The CRC in the record.
        stored: u32,
        /// The previous segment's final CRC.
        previous: u32,
    },
    /// Non-zero bytes after the end of the records.
    #[error("non-zero bytes at byte offset {offset}, after the records ended at byte offset {end}: unsynced records of a torn write, or damage; they were not read")]
    TrailingData {
        /// First non-zero byte.
        offset: u64,
        /// Where the records ended.
        end: u64,
    },
}

impl SegmentError {
    /// The byte offset the error names.
    pub fn offset(&self) -> u64 {
        match self {
            SegmentError::Io { offset, .. }
            | SegmentError::CutLengthWord { offset }
            | SegmentError::TooLong { offset, .. }
            | SegmentError::Record { offset, .. }
            | SegmentError::Crc { offset, .. }
            | SegmentError::Chain { offset, .. }
            | SegmentError::TrailingData { offset, .. } => *offset,
        }
    }
}
