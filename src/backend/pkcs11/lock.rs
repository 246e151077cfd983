//! The token-wide lock of the `kube-kms key` commands that change a token
//! ([`TokenLock`]): a private data object created and checked for company,
//! plus a node-local `flock`, so that at most one command changes the keys
//! at a time across every node sharing the token.
use std::time::{Duration, SystemTime};

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};

use super::store::{call_failure, seconds};
use super::token::Token;
use super::Pkcs11Error;

/// CKA_APPLICATION of the lock object (not [`super::store::APPLICATION`]: a lock is not a
/// state record).
pub const LOCK_APPLICATION: &[u8] = b"kube-kms-lock";
/// How long a lock may be held before others take it as left by a crashed
/// command.
const LOCK_STALE_AFTER: Duration = Duration::from_secs(60);
/// How long a command waits for the lock.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Mutual exclusion of the `kube-kms key` commands that change a token, for
/// every node that shares it. PKCS#11 has no atomic create-if-absent, so the
/// lock is taken by creating a private data object (CKA_APPLICATION
/// `kube-kms-lock`) and then looking: if it is the only lock object, the
/// lock is ours; if another exists, ours is deleted and the command tries
/// again after a random pause. Two commands that overlap both see two
/// objects and both back off, so at most one ever proceeds. A lock older than
/// [`LOCK_STALE_AFTER`] (by its recorded time) is taken as left behind by a
/// crashed command and deleted. Public lock objects are ignored: anyone
/// could create them.
///
/// Not every token shows an object created by one process to another at
/// once (SoftHSM2 does not), so commands on the same node first take an
/// exclusive `flock` on the PIN file (every command of a node names the same
/// file), then start afresh with the token (a new C_Initialize: the state
/// they read is the one the previous command left).
pub(crate) struct TokenLock<'t> {
    token: &'t Token,
    handle: ObjectHandle,
    /// The node-local lock, released after the token's.
    _local: std::fs::File,
}

impl<'t> TokenLock<'t> {
    pub(crate) fn acquire(token: &'t Token) -> Result<Self, Pkcs11Error> {
        let local = token.lock_locally()?;
        token.reset();
        let started = std::time::Instant::now();
        loop {
            let mut nonce = [0u8; 8];
            getrandom::getrandom(&mut nonce).map_err(Pkcs11Error::Random)?;
            let now = seconds(SystemTime::now());
            let mut value = now.to_be_bytes().to_vec();
            value.extend_from_slice(&nonce);
            let attempt = token
                .call(|session| {
                    let mine = session.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Application(LOCK_APPLICATION.to_vec()),
                        Attribute::Label(b"kube-kms-lock".to_vec()),
                        Attribute::Value(value.clone()),
                    ])?;
                    let mut others = 0;
                    for handle in session.find_objects(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Application(LOCK_APPLICATION.to_vec()),
                    ])? {
                        if handle == mine {
                            continue;
                        }
                        let mut taken_at = None;
                        for attribute in session.get_attributes(handle, &[AttributeType::Value])? {
                            if let Attribute::Value(bytes) = attribute {
                                taken_at = bytes
                                    .get(..8)
                                    .and_then(|b| b.try_into().ok())
                                    .map(u64::from_be_bytes);
                            }
                        }
                        let stale = taken_at.is_none_or(|at| {
                            now.saturating_sub(at) > LOCK_STALE_AFTER.as_secs()
                        });
                        if stale {
                            tracing::warn!(token = %token.label(), "removing a stale kube-kms lock (a key command crashed while it held it)");
                            session.destroy_object(handle)?;
                        } else {
                            others += 1;
                        }
                    }
                    if others > 0 {
                        session.destroy_object(mine)?;
                        return Ok(None);
                    }
                    Ok(Some(mine))
                })
                .map_err(|error| call_failure(token, "taking the token's lock", error))?;
            if let Some(handle) = attempt {
                return Ok(Self {
                    token,
                    handle,
                    _local: local,
                });
            }
            if started.elapsed() > LOCK_WAIT {
                return Err(Pkcs11Error::State {
                    label: token.label().to_owned(),
                    problem: format!(
                        "another kube-kms key command has been changing the keys for more than {}s; run this one again when it is done (a lock left by a crashed command expires after {}s)",
                        LOCK_WAIT.as_secs(),
                        LOCK_STALE_AFTER.as_secs()
                    ),
                });
            }
            let mut pause = [0u8; 1];
            getrandom::getrandom(&mut pause).map_err(Pkcs11Error::Random)?;
            std::thread::sleep(Duration::from_millis(10 + u64::from(pause[0])));
        }
    }
}

impl Drop for TokenLock<'_> {
    fn drop(&mut self) {
        let handle = self.handle;
        if let Err(error) = self.token.call(|session| session.destroy_object(handle)) {
            tracing::warn!(token = %self.token.label(), error = %call_failure(self.token, "releasing the token's lock", error), "the lock stays until it expires");
        }
    }
}
