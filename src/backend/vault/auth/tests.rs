//! Unit tests of `auth`.
use super::login::read_secret;
use super::*;

#[test]
fn tokens_print_nothing() {
    let token = VaultToken(Zeroizing::new("hvs.secret-token".into()));
    assert_eq!(format!("{token:?}"), "VaultToken(..)");
    let header = token.header().unwrap();
    assert!(header.is_sensitive());
    assert!(!format!("{header:?}").contains("secret-token"));
}

#[test]
fn secret_files_are_one_trimmed_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "s.abc\n").unwrap();
    assert_eq!(read_secret("t", &path).unwrap().as_str(), "s.abc");
    std::fs::write(&path, "\n").unwrap();
    assert!(read_secret("t", &path).is_err());
    std::fs::write(&path, "a\nb").unwrap();
    let error = read_secret("t", &path).unwrap_err().to_string();
    assert!(!error.contains("a\nb"), "{error}");
    std::fs::write(&path, vec![b'a'; 20_000]).unwrap();
    assert!(read_secret("t", &path).is_err());
    assert!(read_secret("t", &dir.path().join("missing")).is_err());
}

#[test]
fn renewal_comes_at_two_thirds_of_the_ttl() {
    let now = Instant::now();
    assert_eq!(lifetimes(0, now), (None, None));
    let (renew, expires) = lifetimes(30, now);
    assert_eq!(renew, Some(now + Duration::from_secs(20)));
    assert_eq!(expires, Some(now + Duration::from_secs(30)));
}
