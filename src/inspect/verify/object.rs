//! The check that a decrypted value is a well-formed Kubernetes object of the
//! kind its etcd key calls for: `k8s\0` + `runtime.Unknown` (every field
//! parses, `typeMeta.kind` matches, `raw` is a protobuf message) for built-in
//! types, a JSON object with a `kind` (matching where known) for custom
//! resources, or self-described CBOR.
//!
//! It runs on plaintext: nothing here allocates, copies or prints the bytes it
//! reads (the JSON check is a hand-written validator for that reason: serde
//! would copy escaped strings into buffers nobody zeroizes). For `aescbc`,
//! which has no MAC, this check is what tells a wrong key from a right one.

use crate::inspect::classify::{CBOR_MAGIC, PROTOBUF_MAGIC};
use crate::inspect::resource::kind_of_resource;
use crate::inspect::{pb, unknown};

/// What the value under a key must decrypt to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedObject {
    /// A built-in resource whose kind is known (`secrets` → `Secret`).
    Kind(&'static str),
    /// A resource whose kind is not known here (custom resources, rare
    /// built-ins): any well-formed object with a kind.
    AnyKind,
}

/// What a value of `resource` must decrypt to.
pub fn expected_for_resource(resource: &[u8]) -> ExpectedObject {
    kind_of_resource(resource).map_or(ExpectedObject::AnyKind, ExpectedObject::Kind)
}

/// Why a plaintext is not the object expected (deliberately coarse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectProblem {
    /// Not `k8s\0` + a valid runtime.Unknown, nor a JSON object, nor CBOR.
    NotAnObject,
    /// A valid object of another kind (e.g. a ConfigMap under secrets/).
    WrongKind,
}

/// Checks `plaintext` (see the module doc).
pub fn check_object(plaintext: &[u8], expected: ExpectedObject) -> Result<(), ObjectProblem> {
    let kind = if let Some(unknown) = plaintext.strip_prefix(PROTOBUF_MAGIC) {
        protobuf_kind(unknown).ok_or(ObjectProblem::NotAnObject)?
    } else if plaintext.starts_with(CBOR_MAGIC) {
        // Self-described CBOR: only the tag is checked (see the module doc).
        return if plaintext.len() > CBOR_MAGIC.len() {
            Ok(())
        } else {
            Err(ObjectProblem::NotAnObject)
        };
    } else {
        json_kind(plaintext).ok_or(ObjectProblem::NotAnObject)?
    };
    match expected {
        ExpectedObject::Kind(want) if want.as_bytes() != kind => Err(ObjectProblem::WrongKind),
        _ => Ok(()),
    }
}

/// The kind of a `runtime.Unknown` whose every field parses and is one the
/// schema declares, whose `raw` is a non-empty protobuf message and whose kind
/// is non-empty.
fn protobuf_kind(unknown: &[u8]) -> Option<&[u8]> {
    let unknown = unknown::parse(unknown)
        .ok()
        .filter(|unknown| unknown.conforms)?;
    let raw = unknown.raw.filter(|raw| !raw.is_empty())?;
    pb::validate(raw).ok()?;
    unknown.kind.filter(|kind| !kind.is_empty())
}

/// Deepest JSON nesting accepted (recursion bound).
const MAX_JSON_DEPTH: usize = 128;

/// The top-level `kind` of a syntactically valid JSON object that also has an
/// `apiVersion` string.
fn json_kind(text: &[u8]) -> Option<&[u8]> {
    std::str::from_utf8(text).ok()?;
    let mut parser = Json {
        input: text,
        position: 0,
    };
    parser.skip_whitespace();
    let mut top = TopLevel::default();
    parser.object(0, Some(&mut top))?;
    parser.skip_whitespace();
    if parser.position != text.len() {
        return None;
    }
    top.api_version?;
    top.kind.filter(|kind| !kind.is_empty())
}

#[derive(Default)]
struct TopLevel<'a> {
    kind: Option<&'a [u8]>,
    api_version: Option<&'a [u8]>,
}

/// A JSON validator over borrowed bytes (RFC 8259 grammar; the input is
/// already known to be UTF-8).
struct Json<'a> {
    input: &'a [u8],
    position: usize,
}

impl<'a> Json<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.position).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.position += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.position += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1, None),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize, mut top: Option<&mut TopLevel<'a>>) -> Option<()> {
        if depth > MAX_JSON_DEPTH {
            return None;
        }
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.position += 1;
            return Some(());
        }
        loop {
            self.skip_whitespace();
            let name = self.string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            match top.as_deref_mut() {
                Some(fields) if name == b"kind" || name == b"apiVersion" => {
                    let text = if self.peek()? == b'"' {
                        self.string()?
                    } else {
                        return None;
                    };
                    if name == b"kind" {
                        fields.kind = Some(text);
                    } else {
                        fields.api_version = Some(text);
                    }
                }
                _ => self.value(depth)?,
            }
            self.skip_whitespace();
            match self.next()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_JSON_DEPTH {
            return None;
        }
        self.expect(b'[')?;
        self.skip_whitespace();
        if self.peek()? == b']' {
            self.position += 1;
            return Some(());
        }
        loop {
            self.skip_whitespace();
            self.value(depth)?;
            self.skip_whitespace();
            match self.next()? {
                b',' => continue,
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A string; returns its raw contents (escapes not decoded).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.position;
        loop {
            match self.next()? {
                b'"' => return self.input.get(start..self.position - 1),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            if !self.next()?.is_ascii_hexdigit() {
                                return None;
                            }
                        }
                    }
                    _ => return None,
                },
                0..=0x1f => return None,
                _ => {}
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.position.checked_add(word.len())?;
        (self.input.get(self.position..end)? == word).then(|| self.position = end)
    }

    fn digits(&mut self) -> Option<()> {
        let start = self.position;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.position += 1;
        }
        (self.position > start).then_some(())
    }

    fn number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.position += 1;
        }
        if self.peek()? == b'0' {
            self.position += 1;
        } else {
            self.digits()?;
        }
        if self.peek() == Some(b'.') {
            self.position += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.position += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.position += 1;
            }
            self.digits()?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::classify::build;

    #[test]
    fn protobuf_objects_of_the_right_kind_pass() {
        let secret = build::plaintext_protobuf("v1", "Secret", b"\x0a\x03abc");
        let expected = expected_for_resource(b"secrets");
        assert_eq!(expected, ExpectedObject::Kind("Secret"));
        assert_eq!(check_object(&secret, expected), Ok(()));
        assert_eq!(
            check_object(&secret, ExpectedObject::Kind("ConfigMap")),
            Err(ObjectProblem::WrongKind)
        );
        assert_eq!(check_object(&secret, ExpectedObject::AnyKind), Ok(()));
    }

    #[test]
    fn broken_protobuf_is_not_an_object() {
        let secret = build::plaintext_protobuf("v1", "Secret", b"\x0a\x03abc");
        for len in 0..secret.len() {
            assert_eq!(
                check_object(&secret[..len], ExpectedObject::Kind("Secret")),
                Err(ObjectProblem::NotAnObject),
                "truncated to {len}"
            );
        }
        // An empty raw object, or a raw that is not protobuf.
        let empty = build::plaintext_protobuf("v1", "Secret", b"");
        assert!(check_object(&empty, ExpectedObject::AnyKind).is_err());
        let garbage = build::plaintext_protobuf("v1", "Secret", b"\x0a\x09abc");
        assert!(check_object(&garbage, ExpectedObject::AnyKind).is_err());
        assert!(check_object(b"random bytes", ExpectedObject::AnyKind).is_err());
    }

    #[test]
    fn json_objects() {
        let widget = br#" {"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w","n":[1,-2.5e3,true,null,"x\"y\u00e9"]}} "#;
        assert_eq!(check_object(widget, ExpectedObject::AnyKind), Ok(()));
        assert_eq!(
            check_object(widget, ExpectedObject::Kind("Secret")),
            Err(ObjectProblem::WrongKind)
        );
        for bad in [
            &br#"{"kind":"Widget"}"#[..],
            br#"{"apiVersion":"v1","kind":"Widget""#,
            br#"{"apiVersion":"v1","kind":"Widget"} x"#,
            br#"{"apiVersion":"v1","kind":7}"#,
            br#"{"apiVersion":"v1","kind":"W","a":01}"#,
            br#"{"apiVersion":"v1","kind":"W","a":[1,]}"#,
            br#"["apiVersion","kind"]"#,
            b"{\"apiVersion\":\"v1\",\"kind\":\"W\",\"a\":\"\x01\"}",
        ] {
            assert_eq!(
                check_object(bad, ExpectedObject::AnyKind),
                Err(ObjectProblem::NotAnObject),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"W\",\"a\":{}{}}}",
            "[".repeat(1000),
            "]".repeat(1000)
        );
        assert!(check_object(deep.as_bytes(), ExpectedObject::AnyKind).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = check_object(&bytes, ExpectedObject::AnyKind);
            let mut prefixed = b"k8s\x00".to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = check_object(&prefixed, ExpectedObject::Kind("Secret"));
            let mut json = br#"{"apiVersion":"v1","kind":"W","x":"#.to_vec();
            json.extend_from_slice(&bytes);
            let _ = check_object(&json, ExpectedObject::AnyKind);
        }

        #[test]
        fn serde_json_values_pass(value in proptest_json()) {
            let object = serde_json::json!({"apiVersion": "v1", "kind": "Widget", "spec": value});
            let text = serde_json::to_vec(&object).unwrap_or_default();
            proptest::prop_assert_eq!(check_object(&text, ExpectedObject::AnyKind), Ok(()));
            let pretty = serde_json::to_vec_pretty(&object).unwrap_or_default();
            proptest::prop_assert_eq!(check_object(&pretty, ExpectedObject::AnyKind), Ok(()));
        }
    }

    fn proptest_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }
}
