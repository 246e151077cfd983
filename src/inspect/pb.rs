//! A minimal, bounds-checked protobuf wire-format reader over borrowed bytes.
//!
//! It owns exactly what the auditor needs to look inside etcd values without
//! generated code: varints, length-delimited fields, fixed32/fixed64, and
//! skipping of unknown fields. Everything is zero-copy (fields borrow from the
//! input) and every malformed input yields a [`PbError`] naming the offset;
//! nothing here panics. Groups (wire types 3 and 4) are deprecated and never
//! used by the messages read here, so they are rejected rather than skipped.

/// A protobuf decoding problem, with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PbError {
    /// The input ended inside a varint, a length or a fixed-size value.
    #[error("protobuf truncated at offset {offset}: {what}")]
    Truncated {
        /// Offset in the message where the incomplete item starts.
        offset: usize,
        /// What was being read.
        what: &'static str,
    },
    /// A varint longer than 10 bytes (or overflowing 64 bits).
    #[error("protobuf varint too long at offset {offset}")]
    VarintOverflow {
        /// Offset of the varint.
        offset: usize,
    },
    /// A wire type this reader does not accept (groups, or 6/7 which do not exist).
    #[error("protobuf wire type {wire_type} not supported at offset {offset}")]
    BadWireType {
        /// Offset of the tag.
        offset: usize,
        /// The wire type found.
        wire_type: u8,
    },
    /// Field number 0 (invalid in protobuf).
    #[error("protobuf field number 0 at offset {offset}")]
    ZeroField {
        /// Offset of the tag.
        offset: usize,
    },
    /// A field had a different wire type than the message schema says.
    #[error(
        "protobuf field {field} at offset {offset} has wire type {found}, expected {expected}"
    )]
    UnexpectedWireType {
        /// Offset of the tag.
        offset: usize,
        /// Field number.
        field: u32,
        /// Wire type found.
        found: u8,
        /// Wire type expected.
        expected: u8,
    },
}

/// Wire type of a protobuf field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    /// 0: varint (int32/64, uint, bool, enum).
    Varint = 0,
    /// 1: 8 bytes little-endian.
    Fixed64 = 1,
    /// 2: length-delimited (bytes, string, message, packed).
    Len = 2,
    /// 5: 4 bytes little-endian.
    Fixed32 = 5,
}

/// The value of one field, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    /// A varint, undecoded (zigzag or sign handling is up to the caller).
    Varint(u64),
    /// A fixed64 value.
    Fixed64(u64),
    /// Length-delimited bytes.
    Len(&'a [u8]),
    /// A fixed32 value.
    Fixed32(u32),
}

impl FieldValue<'_> {
    fn wire_type(&self) -> u8 {
        match self {
            FieldValue::Varint(_) => WireType::Varint as u8,
            FieldValue::Fixed64(_) => WireType::Fixed64 as u8,
            FieldValue::Len(_) => WireType::Len as u8,
            FieldValue::Fixed32(_) => WireType::Fixed32 as u8,
        }
    }
}

/// One decoded field: its number, its value, and the offset of its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// Field number from the tag.
    pub number: u32,
    /// The value.
    pub value: FieldValue<'a>,
    /// Offset of the tag within the message (for error messages).
    pub offset: usize,
}

impl<'a> Field<'a> {
    /// The bytes of a length-delimited field, or an error naming the field.
    pub fn bytes(&self) -> Result<&'a [u8], PbError> {
        match self.value {
            FieldValue::Len(bytes) => Ok(bytes),
            other => Err(self.mismatch(other, WireType::Len)),
        }
    }

    /// The value of a varint field, or an error naming the field.
    pub fn varint(&self) -> Result<u64, PbError> {
        match self.value {
            FieldValue::Varint(value) => Ok(value),
            other => Err(self.mismatch(other, WireType::Varint)),
        }
    }

    /// A varint field read as a proto `int64` (two's complement).
    pub fn int64(&self) -> Result<i64, PbError> {
        self.varint().map(|value| value as i64)
    }

    fn mismatch(&self, found: FieldValue<'_>, expected: WireType) -> PbError {
        PbError::UnexpectedWireType {
            offset: self.offset,
            field: self.number,
            found: found.wire_type(),
            expected: expected as u8,
        }
    }
}

/// Iterates over the fields of one message. Yields `Err` once on malformed
/// input and then stops.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
    position: usize,
    failed: bool,
}

impl<'a> Reader<'a> {
    /// A reader over one encoded message.
    pub fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            position: 0,
            failed: false,
        }
    }

    fn read_varint(&mut self, what: &'static str) -> Result<u64, PbError> {
        let start = self.position;
        // Tags and small lengths are one byte: skip the loop for them.
        if let Some(&byte) = self.input.get(start) {
            if byte < 0x80 {
                self.position = start + 1;
                return Ok(u64::from(byte));
            }
        }
        let mut value: u64 = 0;
        for index in 0..10 {
            let Some(&byte) = self.input.get(start + index) else {
                return Err(PbError::Truncated {
                    offset: start,
                    what,
                });
            };
            let low = u64::from(byte & 0x7f);
            if index == 9 && byte > 1 {
                return Err(PbError::VarintOverflow { offset: start });
            }
            value |= low << (7 * index);
            if byte & 0x80 == 0 {
                self.position = start + index + 1;
                return Ok(value);
            }
        }
        Err(PbError::VarintOverflow { offset: start })
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], PbError> {
        let start = self.position;
        let bytes = start
            .checked_add(len)
            .and_then(|end| self.input.get(start..end))
            .ok_or(PbError::Truncated {
                offset: start,
                what,
            })?;
        self.position = start + len;
        Ok(bytes)
    }

    fn next_field(&mut self) -> Result<Field<'a>, PbError> {
        let offset = self.position;
        let tag = self.read_varint("tag")?;
        let wire_type = (tag & 7) as u8;
        let number = tag >> 3;
        if number == 0 {
            return Err(PbError::ZeroField { offset });
        }
        let number = u32::try_from(number).map_err(|_| PbError::VarintOverflow { offset })?;
        let value = match wire_type {
            0 => FieldValue::Varint(self.read_varint("varint value")?),
            1 => {
                let bytes = self.take(8, "fixed64 value")?;
                let mut array = [0u8; 8];
                array.copy_from_slice(bytes);
                FieldValue::Fixed64(u64::from_le_bytes(array))
            }
            2 => {
                let length_offset = self.position;
                let len = self.read_varint("length")?;
                let len = usize::try_from(len).map_err(|_| PbError::Truncated {
                    offset: length_offset,
                    what: "length-delimited value",
                })?;
                FieldValue::Len(self.take(len, "length-delimited value")?)
            }
            5 => {
                let bytes = self.take(4, "fixed32 value")?;
                let mut array = [0u8; 4];
                array.copy_from_slice(bytes);
                FieldValue::Fixed32(u32::from_le_bytes(array))
            }
            other => {
                return Err(PbError::BadWireType {
                    offset,
                    wire_type: other,
                })
            }
        };
        Ok(Field {
            number,
            value,
            offset,
        })
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Field<'a>, PbError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.input.len() {
            return None;
        }
        let result = self.next_field();
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

/// Checks that `input` is a well-formed sequence of fields (any numbers).
pub fn validate(input: &[u8]) -> Result<(), PbError> {
    for field in Reader::new(input) {
        field?;
    }
    Ok(())
}

/// Encoding helpers, used by tests, fuzzing seeds and benchmarks to build
/// values in the wire format (never on the scan path).
pub mod encode {
    /// Appends a varint.
    pub fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    /// Appends a tag.
    pub fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire_type));
    }

    /// Appends a length-delimited field.
    pub fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
        tag(out, field, 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    /// Appends a varint field.
    pub fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
        tag(out, field, 0);
        varint(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_each_wire_type() {
        let mut message = Vec::new();
        encode::varint_field(&mut message, 1, 300);
        encode::bytes_field(&mut message, 2, b"abc");
        encode::tag(&mut message, 3, 1);
        message.extend_from_slice(&7u64.to_le_bytes());
        encode::tag(&mut message, 4, 5);
        message.extend_from_slice(&9u32.to_le_bytes());
        let fields: Vec<_> = Reader::new(&message).collect::<Result<_, _>>().unwrap();
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[0].varint(), Ok(300));
        assert_eq!(fields[1].bytes(), Ok(&b"abc"[..]));
        assert_eq!(fields[2].value, FieldValue::Fixed64(7));
        assert_eq!(fields[3].value, FieldValue::Fixed32(9));
        assert!(fields[1].varint().is_err());
    }

    #[test]
    fn negative_int64_is_ten_bytes() {
        let mut message = Vec::new();
        encode::varint_field(&mut message, 2, (-5i64) as u64);
        let field = Reader::new(&message).next().unwrap().unwrap();
        assert_eq!(field.int64(), Ok(-5));
    }

    #[test]
    fn truncated_length_names_offset() {
        let mut message = Vec::new();
        encode::varint_field(&mut message, 1, 1);
        encode::tag(&mut message, 2, 2);
        encode::varint(&mut message, 10);
        message.extend_from_slice(b"abc");
        let error = validate(&message).unwrap_err();
        assert_eq!(
            error,
            PbError::Truncated {
                offset: 4,
                what: "length-delimited value"
            }
        );
    }

    #[test]
    fn groups_and_overlong_varints_are_rejected() {
        assert!(matches!(
            validate(&[0x0b]),
            Err(PbError::BadWireType { wire_type: 3, .. })
        ));
        assert!(matches!(
            validate(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(PbError::VarintOverflow { offset: 1 })
        ));
        assert!(matches!(validate(&[0x00]), Err(PbError::ZeroField { .. })));
        assert!(matches!(
            validate(&[0x08, 0x80]),
            Err(PbError::Truncated { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            for field in Reader::new(&bytes).flatten() {
                let _ = field.bytes();
                let _ = field.varint();
            }
        }

        #[test]
        fn varints_round_trip(value in proptest::prelude::any::<u64>()) {
            let mut message = Vec::new();
            encode::varint_field(&mut message, 7, value);
            let field = Reader::new(&message).next().unwrap().unwrap();
            proptest::prop_assert_eq!(field.number, 7);
            proptest::prop_assert_eq!(field.varint(), Ok(value));
        }
    }
}
