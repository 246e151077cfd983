//! What a WAL entry asks etcd to write: a `raftpb.Entry` (`Type` 1, `Term` 2,
//! `Index` 3, `Data` 4) whose data, for a normal entry, is an
//! `etcdserverpb.InternalRaftRequest` (`v2` 2, `put` 4, `delete_range` 5,
//! `txn` 6 with nested `RequestOp`s and nested txns; other requests are
//! checked for well-formedness and skipped) or, when that does not decode,
//! a v2 `etcdserverpb.Request` (`Method` 2, `Path` 3, `Val` 4), as etcd's
//! apply loop tries them in that order.
//!
//! A field of another wire type than the schema's, or a nested message that
//! does not decode, fails the whole InternalRaftRequest, as gogo protobuf's
//! generated code does: that is what sends etcd to the v2 form.

use crate::inspect::pb::{self, PbError};

/// Deepest nesting of txns accepted (etcd itself stops at its request size;
/// this bounds the stack on crafted input).
pub const MAX_TXN_DEPTH: usize = 64;

/// A decoded `raftpb.Entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry<'a> {
    /// 0 normal, 1 conf change, 2 conf change v2.
    pub entry_type: u64,
    /// Raft term.
    pub term: u64,
    /// Raft index.
    pub index: u64,
    /// The request bytes.
    pub data: &'a [u8],
}

/// Decodes a `raftpb.Entry`.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<'_>, PbError> {
    let mut entry = Entry::default();
    for field in pb::Reader::new(bytes) {
        let field = field?;
        match field.number {
            1 => entry.entry_type = field.varint()?,
            2 => entry.term = field.varint()?,
            3 => entry.index = field.varint()?,
            4 => entry.data = field.bytes()?,
            _ => {}
        }
    }
    Ok(entry)
}

/// One write a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// A put of `value` at `key` (a v3 `PutRequest`, possibly inside a txn,
    /// or a v2 `PUT`/`POST` with its `Val`).
    Put {
        /// The key (the v2 `Path`).
        key: &'a [u8],
        /// The value (possibly a secret: never print it).
        value: &'a [u8],
    },
    /// A delete of `key` (up to `range_end`, when given).
    Delete {
        /// The key.
        key: &'a [u8],
    },
}

/// Which form a normal entry's data had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// An `InternalRaftRequest`.
    Internal,
    /// A v2 `Request` (the fallback).
    V2,
    /// Empty data (raft's no-op entry after an election).
    Empty,
}

/// Why a normal entry's writes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The data is neither form.
    #[error(
        "the entry's data is neither an InternalRaftRequest ({internal}) nor a v2 Request ({v2})"
    )]
    Neither {
        /// Why it is not an InternalRaftRequest.
        internal: PbError,
        /// Why it is not a v2 Request.
        v2: PbError,
    },
    /// Txns nested deeper than [`MAX_TXN_DEPTH`].
    #[error("txns nested deeper than {MAX_TXN_DEPTH} levels: its writes were not read")]
    TooDeep,
}

/// Why an InternalRaftRequest did not decode.
#[derive(Debug)]
enum Nested {
    Pb(PbError),
    TooDeep,
}

impl From<PbError> for Nested {
    fn from(error: PbError) -> Self {
        Nested::Pb(error)
    }
}

/// The writes of a normal entry's data, in order, appended to `ops`.
pub fn decode_request<'a>(data: &'a [u8], ops: &mut Vec<Op<'a>>) -> Result<Form, RequestError> {
    if data.is_empty() {
        return Ok(Form::Empty);
    }
    let before = ops.len();
    let internal = match internal_request(data, ops) {
        Ok(()) => return Ok(Form::Internal),
        Err(Nested::Pb(error)) => error,
        // A well-formed request too deep to follow: not a v2 request either.
        Err(Nested::TooDeep) => {
            ops.truncate(before);
            return Err(RequestError::TooDeep);
        }
    };
    ops.truncate(before);
    match v2_request(data, ops) {
        Ok(()) => Ok(Form::V2),
        Err(v2) => {
            ops.truncate(before);
            Err(RequestError::Neither { internal, v2 })
        }
    }
}

/// Field numbers of `InternalRaftRequest` that hold messages this decoder
/// does not look into (range, compaction, leases, alarms, auth, cluster
/// membership, downgrade...): they must still decode.
fn is_message_field(number: u32) -> bool {
    matches!(number, 3 | 7..=20 | 100 | 1000..=1300)
}

fn internal_request<'a>(data: &'a [u8], ops: &mut Vec<Op<'a>>) -> Result<(), Nested> {
    for field in pb::Reader::new(data) {
        let field = field?;
        match field.number {
            1 => {
                field.varint()?;
            }
            2 => v2_request(field.bytes()?, ops)?,
            4 => put_request(field.bytes()?, ops)?,
            5 => delete_request(field.bytes()?, ops)?,
            6 => txn_request(field.bytes()?, ops, 0)?,
            number if is_message_field(number) => pb::validate(field.bytes()?)?,
            _ => {}
        }
    }
    Ok(())
}

/// `PutRequest`: key 1, value 2, lease 3, prev_kv 4, ignore_value 5,
/// ignore_lease 6. A put with `ignore_value` carries no value: skipped.
fn put_request<'a>(data: &'a [u8], ops: &mut Vec<Op<'a>>) -> Result<(), PbError> {
    let mut key: &[u8] = &[];
    let mut value: &[u8] = &[];
    let mut ignore_value = false;
    for field in pb::Reader::new(data) {
        let field = field?;
        match field.number {
            1 => key = field.bytes()?,
            2 => value = field.bytes()?,
            3 | 4 | 6 => {
                field.varint()?;
            }
            5 => ignore_value = field.varint()? != 0,
            _ => {}
        }
    }
    if !ignore_value {
        ops.push(Op::Put { key, value });
    }
    Ok(())
}

/// `DeleteRangeRequest`: key 1, range_end 2, prev_kv 3.
fn delete_request<'a>(data: &'a [u8], ops: &mut Vec<Op<'a>>) -> Result<(), PbError> {
    let mut key: &[u8] = &[];
    for field in pb::Reader::new(data) {
        let field = field?;
        match field.number {
            1 => key = field.bytes()?,
            2 => {
                field.bytes()?;
            }
            3 => {
                field.varint()?;
            }
            _ => {}
        }
    }
    ops.push(Op::Delete { key });
    Ok(())
}

/// `TxnRequest`: compare 1, success 2, failure 3 (`RequestOp`s). Both
/// branches are on disk, whichever one etcd ran.
fn txn_request<'a>(data: &'a [u8], ops: &mut Vec<Op<'a>>, depth: usize) -> Result<(), Nested> {
    if depth >= MAX_TXN_DEPTH {
        return Err(Nested::TooDeep);
    }
    for field in pb::Reader::new(data) {
        let field = field?;
        match field.number {
            1 => pb::validate(field.bytes()?)?,
            2 | 3 => request_op(field.bytes()?, ops, depth)?,
            _ => {}
        }
    }
    Ok(())
}

/// `RequestOp`: request_range 1, request_put 2, request_delete_range 3,
/// request_txn 4.
fn request_op<'a>(data: &'a [u8], ops: &mut Vec<Op<'a>>, depth: usize) -> Result<(), Nested> {
    for field in pb::Reader::new(data) {
        let field = field?;
        match field.number {
            1 => pb::validate(field.bytes()?)?,
            2 => put_request(field.bytes()?, ops)?,
            3 => delete_request(field.bytes()?, ops)?,
            4 => txn_request(field.bytes()?, ops, depth + 1)?,
            _ => {}
        }
    }
    Ok(())
}

/// The v2 `Request`: ID 1, Method 2, Path 3, Val 4, Dir 5, PrevValue 6,
/// PrevIndex 7, PrevExist 8, Expiration 9, Wait 10, Since 11, Recursive 12,
/// Sorted 13, Quorum 14, Time 15, Stream 16, Refresh 17. A `PUT` or `POST`
/// stores `Val` (under `Path`, or a child of it for `POST`); `DELETE`
/// removes `Path`.
fn v2_request<'a>(data: &'a [u8], ops: &mut Vec<Op<'a>>) -> Result<(), PbError> {
    let mut method: &[u8] = &[];
    let mut path: &[u8] = &[];
    let mut value: &[u8] = &[];
    for field in pb::Reader::new(data) {
        let field = field?;
        match field.number {
            2 => method = field.bytes()?,
            3 => path = field.bytes()?,
            4 => value = field.bytes()?,
            6 => {
                field.bytes()?;
            }
            1 | 5 | 7..=17 => {
                field.varint()?;
            }
            _ => {}
        }
    }
    match method {
        b"PUT" | b"POST" => ops.push(Op::Put { key: path, value }),
        b"DELETE" => ops.push(Op::Delete { key: path }),
        _ => {}
    }
    Ok(())
}

/// Building requests, for tests, fuzzing seeds and benchmarks (never on the
/// scan path).
pub mod encode {
    use crate::inspect::pb::encode as pb;

    /// A `PutRequest`.
    pub fn put(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(key.len() + value.len() + 8);
        pb::bytes_field(&mut out, 1, key);
        pb::bytes_field(&mut out, 2, value);
        out
    }

    /// An `InternalRaftRequest` with a header, an id and a plain put.
    pub fn internal_put(id: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        pb::varint_field(&mut out, 1, id);
        pb::bytes_field(&mut out, 4, &put(key, value));
        out
    }

    /// A `RequestOp` holding a put.
    pub fn op_put(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        pb::bytes_field(&mut out, 2, &put(key, value));
        out
    }

    /// A `RequestOp` holding a txn.
    pub fn op_txn(txn: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        pb::bytes_field(&mut out, 4, txn);
        out
    }

    /// A `TxnRequest` as kube-apiserver writes one: compare the key's
    /// mod_revision, then the `success` ops (else the `failure` ops).
    pub fn txn(key: &[u8], success: &[Vec<u8>], failure: &[Vec<u8>]) -> Vec<u8> {
        let mut compare = Vec::new();
        pb::varint_field(&mut compare, 1, 0); // result EQUAL
        pb::varint_field(&mut compare, 2, 3); // target MOD
        pb::bytes_field(&mut compare, 3, key);
        pb::varint_field(&mut compare, 6, 0); // mod_revision
        let mut out = Vec::new();
        pb::bytes_field(&mut out, 1, &compare);
        for op in success {
            pb::bytes_field(&mut out, 2, op);
        }
        for op in failure {
            pb::bytes_field(&mut out, 3, op);
        }
        out
    }

    /// An `InternalRaftRequest` holding a txn, with a request header.
    pub fn internal_txn(id: u64, txn: &[u8]) -> Vec<u8> {
        let mut header = Vec::new();
        pb::varint_field(&mut header, 1, id);
        let mut out = Vec::new();
        pb::varint_field(&mut out, 1, id);
        pb::bytes_field(&mut out, 6, txn);
        pb::bytes_field(&mut out, 100, &header);
        out
    }

    /// A v2 `Request`.
    pub fn v2(id: u64, method: &str, path: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        pb::varint_field(&mut out, 1, id);
        pb::bytes_field(&mut out, 2, method.as_bytes());
        pb::bytes_field(&mut out, 3, path);
        pb::bytes_field(&mut out, 4, value);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(data: &[u8]) -> (Form, Vec<Op<'_>>) {
        let mut ops = Vec::new();
        let form = decode_request(data, &mut ops).unwrap();
        (form, ops)
    }

    #[test]
    fn plain_put_txn_and_nested_txn() {
        let data = encode::internal_put(7, b"/registry/secrets/a/b", b"k8s\0plain");
        assert_eq!(
            ops(&data),
            (
                Form::Internal,
                vec![Op::Put {
                    key: b"/registry/secrets/a/b",
                    value: b"k8s\0plain"
                }]
            )
        );
        let inner = encode::txn(b"/k2", &[encode::op_put(b"/k2", b"v2")], &[]);
        let txn = encode::txn(
            b"/k1",
            &[encode::op_put(b"/k1", b"v1"), encode::op_txn(&inner)],
            &[encode::op_put(b"/k3", b"v3")],
        );
        let data = encode::internal_txn(9, &txn);
        assert_eq!(
            ops(&data).1,
            vec![
                Op::Put {
                    key: b"/k1",
                    value: b"v1"
                },
                Op::Put {
                    key: b"/k2",
                    value: b"v2"
                },
                Op::Put {
                    key: b"/k3",
                    value: b"v3"
                },
            ]
        );
    }

    #[test]
    fn v2_requests_are_the_fallback_as_in_etcd() {
        for method in ["PUT", "POST"] {
            let data = encode::v2(3, method, b"/registry/secrets/a/b", b"secret");
            assert_eq!(
                ops(&data),
                (
                    Form::V2,
                    vec![Op::Put {
                        key: b"/registry/secrets/a/b",
                        value: b"secret"
                    }]
                ),
                "{method}"
            );
        }
        // A v2 request etcd writes at startup (member attributes).
        let data = encode::v2(4, "QGET", b"/0/members/1/attributes", b"{}");
        assert_eq!(ops(&data), (Form::V2, vec![]));
        let data = encode::v2(5, "DELETE", b"/x", b"");
        assert_eq!(ops(&data), (Form::V2, vec![Op::Delete { key: b"/x" }]));
    }

    #[test]
    fn damaged_data_is_an_error_not_a_panic() {
        let data = encode::internal_put(7, b"/registry/secrets/a/b", b"value");
        for cut in 1..data.len() {
            let mut ops = Vec::new();
            let _ = decode_request(&data[..cut], &mut ops);
        }
        // Nested txns beyond the bound are refused.
        let mut txn = encode::txn(b"/k", &[encode::op_put(b"/k", b"v")], &[]);
        for _ in 0..MAX_TXN_DEPTH + 1 {
            txn = encode::txn(b"/k", &[encode::op_txn(&txn)], &[]);
        }
        let data = encode::internal_txn(1, &txn);
        let mut ops = Vec::new();
        assert_eq!(decode_request(&data, &mut ops), Err(RequestError::TooDeep));
        assert!(ops.is_empty());
    }

    #[test]
    fn entries_decode() {
        let data = encode::internal_put(1, b"/k", b"v");
        let bytes = crate::inspect::source::wal::segment::encode::entry(4, 17, 0, &data);
        assert_eq!(
            decode_entry(&bytes).unwrap(),
            Entry {
                entry_type: 0,
                term: 4,
                index: 17,
                data: &data
            }
        );
    }
}
