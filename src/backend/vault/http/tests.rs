//! Unit tests of `http`.
use super::*;

#[test]
fn addresses_must_be_bare_http_urls() {
    assert_eq!(
        base_url("https://vault.example:8200/").unwrap(),
        "https://vault.example:8200"
    );
    assert_eq!(
        base_url("http://127.0.0.1:8200").unwrap(),
        "http://127.0.0.1:8200"
    );
    for bad in [
        "vault:8200",
        "ftp://vault",
        "https://vault/v1",
        "https://vault?x=1",
        "",
    ] {
        assert!(base_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn errors_quote_only_vaults_error_list() {
    assert_eq!(
        vault_errors(br#"{"errors":["permission denied","x"]}"#),
        "permission denied; x"
    );
    assert_eq!(
        vault_errors(br#"{"data":{"plaintext":"c2VjcmV0"}}"#),
        "no error message"
    );
    assert_eq!(vault_errors(b"not json"), "no error message");
    let long = format!(r#"{{"errors":["{}"]}}"#, "é".repeat(400));
    assert!(vault_errors(long.as_bytes()).len() <= 304);
}

/// A local HTTP/1.1 server answering the statuses of `script` in turn
/// (then 200); returns its address and how many requests it saw.
async fn scripted(script: Vec<u16>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let counter = std::sync::Arc::clone(&counter);
            let script = script.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                loop {
                    let Ok(read) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    let index = counter.fetch_add(1, Ordering::SeqCst);
                    let status = script.get(index).copied().unwrap_or(200);
                    let body = if status == 200 {
                        r#"{"data":{}}"#.to_owned()
                    } else {
                        format!(r#"{{"errors":["scripted {status}"]}}"#)
                    };
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, seen)
}

#[tokio::test]
async fn server_errors_are_retried_within_the_deadline_and_403_is_not() {
    use std::sync::atomic::Ordering;
    let (address, seen) = scripted(vec![503, 500, 502]).await;
    let http = VaultHttp::new(
        &address,
        None,
        &TlsOptions::default(),
        Duration::from_secs(1),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = http
        .request(Method::GET, "sys/x", None, None, deadline)
        .await
        .unwrap();
    assert_eq!(answer.as_slice(), br#"{"data":{}}"#);
    assert_eq!(seen.load(Ordering::SeqCst), 4);

    let (address, seen) = scripted(vec![403, 403]).await;
    let http = VaultHttp::new(
        &address,
        None,
        &TlsOptions::default(),
        Duration::from_secs(1),
    )
    .unwrap();
    let error = http
        .request(Method::GET, "transit/keys/k", None, None, deadline)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        HttpError::PermissionDenied {
            path: "transit/keys/k".into()
        }
    );
    assert!(error.to_string().contains("permission denied"));
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // Always 503: the deadline ends the retries with the last reason.
    let (address, _) = scripted(vec![503; 1000]).await;
    let http = VaultHttp::new(
        &address,
        None,
        &TlsOptions::default(),
        Duration::from_secs(1),
    )
    .unwrap();
    let started = Instant::now();
    let error = http
        .request(
            Method::GET,
            "sys/y",
            None,
            None,
            Instant::now() + Duration::from_millis(400),
        )
        .await
        .unwrap_err();
    // Bounded by the deadline (generously: a loaded machine is slow).
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(&error, HttpError::Unavailable { detail, .. } if detail.contains("scripted 503")),
        "{error}"
    );
    // A 400 is final, with Vault's reason.
    let (address, seen) = scripted(vec![400]).await;
    let http = VaultHttp::new(
        &address,
        None,
        &TlsOptions::default(),
        Duration::from_secs(1),
    )
    .unwrap();
    let error = http
        .request(Method::GET, "sys/z", None, None, deadline)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("scripted 400"), "{error}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[test]
fn half_a_client_identity_is_refused() {
    let options = TlsOptions {
        client_cert: Some(PathBuf::from("/nonexistent.pem")),
        ..TlsOptions::default()
    };
    assert!(matches!(
        tls_config(&options),
        Err(TlsError::HalfClientIdentity)
    ));
}
