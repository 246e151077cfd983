//! One WAL segment file, record by record: the framing (an 8-byte
//! little-endian length word whose low 56 bits are the record's length and
//! whose top byte is `0x80 | padding` when the record is padded to 8 bytes),
//! the `walpb.Record` (`type` 1, `crc` 2, `data` 3), and the running CRC-32C
//! chain, as etcd's `wal` decoder reads them (`server/storage/wal/decoder.go`).
//!
//! The file is streamed through a buffered reader; memory is one record (a
//! length is checked against what is left of the file before its buffer
//! grows). The end of the records is a zero length word (etcd preallocates
//! 64 MB segments, so the written part is followed by zeros) or the end of
//! the file. In the last segment a torn record (one that fails to decode or
//! to match the CRC and has a 512-byte sector of zeros, as etcd's
//! `isTornEntry` decides) also ends the records, as etcd's repair would. In
//! both cases everything after must be zeros: non-zero bytes there are
//! records this reader cannot vouch for, an error. Anything else damaged is a
//! [`SegmentError`] with its byte offset.

use std::io::{self, Read};

use crate::inspect::pb::{self, PbError};

mod error;
pub use error::SegmentError;

/// Size of the length word before each record.
pub const FRAME_BYTES: u64 = 8;
/// etcd's `minSectorSize`: the unit a torn write leaves zeroed.
const SECTOR: u64 = 512;

/// A `walpb.Record` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// 1: the member's metadata (node and cluster id), once per segment.
    Metadata,
    /// 2: a `raftpb.Entry`.
    Entry,
    /// 3: a `raftpb.HardState`.
    State,
    /// 4: the running CRC so far (starts each segment, seeds its chain).
    Crc,
    /// 5: a `walpb.Snapshot` marker (index and term of a raft snapshot).
    Snapshot,
    /// Any other number (etcd's reader ignores it; its data is still chained).
    Other(i64),
}

impl RecordType {
    fn from_wire(value: i64) -> Self {
        match value {
            1 => RecordType::Metadata,
            2 => RecordType::Entry,
            3 => RecordType::State,
            4 => RecordType::Crc,
            5 => RecordType::Snapshot,
            other => RecordType::Other(other),
        }
    }

    /// The number on the wire.
    pub fn number(self) -> i64 {
        match self {
            RecordType::Metadata => 1,
            RecordType::Entry => 2,
            RecordType::State => 3,
            RecordType::Crc => 4,
            RecordType::Snapshot => 5,
            RecordType::Other(other) => other,
        }
    }
}

/// One record, borrowed from the reader's buffer until the next call.
#[derive(Debug, Clone, Copy)]
pub struct SegmentRecord<'a> {
    /// Its type.
    pub kind: RecordType,
    /// Its `data` (a `raftpb.Entry` for [`RecordType::Entry`]).
    pub data: &'a [u8],
    /// Offset of its length word in the file.
    pub offset: u64,
}

/// How the records of a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEnd {
    /// At the end of the file, or at a zero length word followed by zeros only.
    Clean {
        /// Where the records end (the rest, if any, is zeros).
        offset: u64,
    },
    /// At a torn record in the last segment (zeros follow it).
    Torn {
        /// Offset of the torn record's length word.
        offset: u64,
    },
}

/// Splits a length word into (record length, padding), as etcd's
/// `decodeFrameSize`: the low 56 bits are the length; when the top bit is
/// set, bits 56-58 are the padding.
pub fn frame_size(word: u64) -> (u64, u64) {
    let length = word & !(0xffu64 << 56);
    let padding = if word >> 63 == 1 {
        (word >> 56) & 0x7
    } else {
        0
    };
    (length, padding)
}

/// Reads the records of one segment.
pub struct SegmentReader<R> {
    reader: R,
    size: u64,
    offset: u64,
    crc: u32,
    last: bool,
    buffer: Vec<u8>,
    end: Option<SegmentEnd>,
    failed: bool,
}

impl<R: Read> SegmentReader<R> {
    /// A reader over a segment of `size` bytes. `previous_crc` is the final
    /// CRC of the segment before it (0 when unknown: the first segment, or
    /// one read alone; the segment's CRC record then seeds the chain, as in
    /// etcd). `last`: the last segment of the log, the only one where a torn
    /// record is expected.
    pub fn new(reader: R, size: u64, previous_crc: u32, last: bool) -> Self {
        Self {
            reader,
            size,
            offset: 0,
            crc: previous_crc,
            last,
            buffer: Vec::new(),
            end: None,
            failed: false,
        }
    }

    /// The running CRC after the records read so far.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// How the records ended, once [`Self::next_record`] returned `Ok(None)`.
    pub fn end(&self) -> Option<SegmentEnd> {
        self.end
    }

    /// Bytes of the file consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn read_exact(&mut self, len: usize) -> Result<(), SegmentError> {
        if self.buffer.len() < len {
            self.buffer.resize(len, 0);
        }
        let offset = self.offset;
        let target = self
            .buffer
            .get_mut(..len)
            .ok_or(SegmentError::CutLengthWord { offset })?;
        self.reader
            .read_exact(target)
            .map_err(|source| SegmentError::Io { offset, source })?;
        self.offset += len as u64;
        Ok(())
    }

    /// The next record, `Ok(None)` at the end of the records (see
    /// [`Self::end`]). After an error the reader yields nothing more.
    pub fn next_record(&mut self) -> Result<Option<SegmentRecord<'_>>, SegmentError> {
        if self.failed || self.end.is_some() {
            return Ok(None);
        }
        match self.step() {
            Ok(Some((kind, start, range))) => {
                let data = self.buffer.get(range).unwrap_or(&[]);
                Ok(Some(SegmentRecord {
                    kind,
                    data,
                    offset: start,
                }))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.failed = true;
                Err(error)
            }
        }
    }

    /// Reads one record into the buffer: its type, offset and the range of
    /// its data in the buffer.
    #[allow(clippy::type_complexity)]
    fn step(&mut self) -> Result<Option<(RecordType, u64, std::ops::Range<usize>)>, SegmentError> {
        let start = self.offset;
        let remaining = self.size.saturating_sub(start);
        if remaining == 0 {
            self.end = Some(SegmentEnd::Clean { offset: start });
            return Ok(None);
        }
        if remaining < FRAME_BYTES {
            // Fewer than 8 bytes left: zeros are the end of a zero tail, anything
            // else a length word cut short.
            let mut rest = [0u8; 8];
            let rest = rest.get_mut(..remaining as usize).unwrap_or(&mut []);
            self.reader
                .read_exact(rest)
                .map_err(|source| SegmentError::Io {
                    offset: start,
                    source,
                })?;
            if !is_zero(rest) {
                return Err(SegmentError::CutLengthWord { offset: start });
            }
            self.offset += remaining;
            self.end = Some(SegmentEnd::Clean { offset: start });
            return Ok(None);
        }
        let mut word = [0u8; 8];
        self.reader
            .read_exact(&mut word)
            .map_err(|source| SegmentError::Io {
                offset: start,
                source,
            })?;
        self.offset += FRAME_BYTES;
        let word = u64::from_le_bytes(word);
        if word == 0 {
            self.expect_zeros(start)?;
            self.end = Some(SegmentEnd::Clean { offset: start });
            return Ok(None);
        }
        let (length, padding) = frame_size(word);
        let total = length + padding;
        let left = remaining - FRAME_BYTES;
        if total > left {
            return Err(SegmentError::TooLong {
                offset: start,
                length: total,
                remaining: left,
            });
        }
        // Fits in the file, which is in memory's reach only if it is read.
        let total_len = usize::try_from(total).map_err(|_| SegmentError::TooLong {
            offset: start,
            length: total,
            remaining: left,
        })?;
        let length_len = length as usize;
        self.read_exact(total_len)?;
        let record = self
            .buffer
            .get(..length_len)
            .ok_or(SegmentError::CutLengthWord { offset: start })?;
        let decoded = match decode_record(record) {
            Ok(decoded) => decoded,
            Err(source) => {
                if self.is_torn(start, total_len) {
                    return self.torn(start);
                }
                return Err(SegmentError::Record {
                    offset: start,
                    source,
                });
            }
        };
        let (kind, stored, data) = decoded;
        let data_start = data.start;
        let data_end = data.end;
        if kind == RecordType::Crc {
            // etcd's ReadAll: the chain so far must match, unless unknown (0).
            if self.crc != 0 && stored != self.crc {
                return Err(SegmentError::Chain {
                    offset: start,
                    stored,
                    previous: self.crc,
                });
            }
            self.crc = stored;
        } else {
            let data = self.buffer.get(data_start..data_end).unwrap_or(&[]);
            let computed = crc32c::crc32c_append(self.crc, data);
            if computed != stored {
                if self.is_torn(start, total_len) {
                    return self.torn(start);
                }
                return Err(SegmentError::Crc {
                    offset: start,
                    stored,
                    computed,
                });
            }
            self.crc = computed;
        }
        Ok(Some((kind, start, data_start..data_end)))
    }

    fn torn(
        &mut self,
        start: u64,
    ) -> Result<Option<(RecordType, u64, std::ops::Range<usize>)>, SegmentError> {
        self.expect_zeros(start)?;
        self.end = Some(SegmentEnd::Torn { offset: start });
        Ok(None)
    }

    /// etcd's `isTornEntry`: in the last segment, a record (with its
    /// padding) of which some 512-byte sector of the file is all zeros.
    fn is_torn(&self, start: u64, total_len: usize) -> bool {
        if !self.last {
            return false;
        }
        let Some(data) = self.buffer.get(..total_len) else {
            return false;
        };
        let mut file_offset = start + FRAME_BYTES;
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = (SECTOR - file_offset % SECTOR).min(rest.len() as u64) as usize;
            let (sector, tail) = rest.split_at(chunk.min(rest.len()));
            if is_zero(sector) {
                return true;
            }
            file_offset += chunk as u64;
            rest = tail;
        }
        false
    }

    /// Reads the rest of the file; every byte must be zero.
    fn expect_zeros(&mut self, end: u64) -> Result<(), SegmentError> {
        const CHUNK: usize = 1 << 20;
        if self.buffer.len() < CHUNK {
            self.buffer.resize(CHUNK, 0);
        }
        loop {
            let offset = self.offset;
            let chunk = self.buffer.get_mut(..CHUNK).unwrap_or(&mut []);
            let read = match self.reader.read(chunk) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(SegmentError::Io { offset, source }),
            };
            let bytes = self.buffer.get(..read).unwrap_or(&[]);
            if !is_zero(bytes) {
                let first = bytes.iter().position(|&byte| byte != 0).unwrap_or(0);
                return Err(SegmentError::TrailingData {
                    offset: offset + first as u64,
                    end,
                });
            }
            self.offset += read as u64;
        }
    }
}

/// True when every byte is zero (an OR over words: vectorizes, no early exit
/// per byte).
fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &byte| acc | byte) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&byte| byte == 0)
}

/// Decodes a `walpb.Record`: (type, crc, range of `data` within `record`).
/// A field of another wire type than the schema's is an error (as gogo
/// protobuf's generated code); unknown fields are skipped.
pub fn decode_record(record: &[u8]) -> Result<(RecordType, u32, std::ops::Range<usize>), PbError> {
    let mut kind = 0i64;
    let mut crc = 0u32;
    let mut data = 0..0;
    let base = record.as_ptr() as usize;
    for field in pb::Reader::new(record) {
        let field = field?;
        match field.number {
            1 => kind = field.int64()?,
            // gogo's uint32 decoding keeps the low 32 bits.
            2 => crc = field.varint()? as u32,
            3 => {
                let bytes = field.bytes()?;
                let start = (bytes.as_ptr() as usize).saturating_sub(base);
                data = start..start + bytes.len();
            }
            _ => {}
        }
    }
    Ok((RecordType::from_wire(kind), crc, data))
}

/// Writing segments, for tests, fuzzing seeds and benchmarks (never on the
/// scan path): records framed, padded and chained as etcd writes them.
pub mod encode {
    use crate::inspect::pb::encode as pb;

    use super::RecordType;

    /// A segment being written.
    #[derive(Debug, Clone, Default)]
    pub struct SegmentWriter {
        /// The bytes so far.
        pub bytes: Vec<u8>,
        /// The running CRC.
        pub crc: u32,
    }

    impl SegmentWriter {
        /// A segment whose chain continues from `previous_crc` (0 for the
        /// first); it starts with the CRC record, as etcd's do.
        pub fn new(previous_crc: u32) -> Self {
            let mut writer = Self {
                bytes: Vec::new(),
                crc: previous_crc,
            };
            writer.crc_record();
            writer
        }

        /// Appends a CRC record carrying the running CRC.
        pub fn crc_record(&mut self) {
            let mut record = Vec::new();
            pb::varint_field(&mut record, 1, RecordType::Crc.number() as u64);
            pb::varint_field(&mut record, 2, u64::from(self.crc));
            self.frame(&record);
        }

        /// Appends a record of `kind` with `data`, chaining its CRC.
        pub fn record(&mut self, kind: RecordType, data: &[u8]) {
            self.crc = crc32c::crc32c_append(self.crc, data);
            let mut record = Vec::with_capacity(data.len() + 16);
            pb::varint_field(&mut record, 1, kind.number() as u64);
            pb::varint_field(&mut record, 2, u64::from(self.crc));
            pb::bytes_field(&mut record, 3, data);
            self.frame(&record);
        }

        /// Frames record bytes: length word (with padding bits), bytes, padding.
        pub fn frame(&mut self, record: &[u8]) {
            let length = record.len() as u64;
            let padding = (8 - length % 8) % 8;
            let word = if padding == 0 {
                length
            } else {
                length | ((0x80 | padding) << 56)
            };
            self.bytes.extend_from_slice(&word.to_le_bytes());
            self.bytes.extend_from_slice(record);
            self.bytes.resize(self.bytes.len() + padding as usize, 0);
        }
    }

    /// A `raftpb.Entry` (normal when `entry_type` is 0).
    pub fn entry(term: u64, index: u64, entry_type: u64, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 24);
        pb::varint_field(&mut out, 1, entry_type);
        pb::varint_field(&mut out, 2, term);
        pb::varint_field(&mut out, 3, index);
        pb::bytes_field(&mut out, 4, data);
        out
    }
}
