//! Unit tests of the live source's pure parts (a real etcd is in tests/it/inspect_live.rs).
use super::emit::in_range;
use super::error::printable_key;
use super::session::split_endpoints;
use super::*;

#[test]
fn prefix_range_increments_the_last_byte_below_ff() {
    assert_eq!(
        prefix_range(b"/registry/secrets/"),
        (
            b"/registry/secrets/".to_vec(),
            b"/registry/secrets0".to_vec()
        )
    );
    assert_eq!(
        prefix_range(b"a\xff\xff"),
        (b"a\xff\xff".to_vec(), b"b".to_vec())
    );
    assert_eq!(prefix_range(b"\xff"), (b"\xff".to_vec(), vec![0]));
    assert_eq!(prefix_range(b""), (vec![0], vec![0]));
}

#[test]
fn in_range_honours_open_end() {
    let (start, end) = prefix_range(b"/registry/");
    assert!(in_range(b"/registry/secrets/a", &start, &end));
    assert!(!in_range(b"/registry0", &start, &end));
    assert!(!in_range(b"/regis", &start, &end));
    assert!(in_range(b"\xff\xff", &[0], &[0]));
}

#[test]
fn endpoints_split_on_commas_and_empty_is_an_error() {
    let split = split_endpoints(&["http://a:1, http://b:2".to_owned()]);
    assert_eq!(
        split.ok(),
        Some(vec!["http://a:1".to_owned(), "http://b:2".to_owned()])
    );
    assert!(matches!(
        split_endpoints(&[" , ".to_owned()]),
        Err(LiveError::Config(_))
    ));
}

#[test]
fn printable_key_uses_base64_for_binary_keys() {
    assert_eq!(printable_key(b"/registry/a\0"), "\"/registry/a\"");
    assert_eq!(printable_key(b"\xff\x00\x01"), "base64:/wAB");
}
