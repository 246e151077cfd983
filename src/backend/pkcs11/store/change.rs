//! The changes `kube-kms key` makes to a token's versions: [`rotate`]
//! (a KEK generated inside the token, never extractable) and
//! [`transition`] (disable, enable, promote, destroy), each under the
//! token-wide lock, writing new state records before deleting the old.
use std::time::SystemTime;

use cryptoki::error::Error as CryptokiError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::Session;

use super::super::lock::TokenLock;
use super::super::token::Token;
use super::super::Pkcs11Error;
use super::{
    call_failure, key_label, read, record_label, seconds, time_of, Record, TokenKeys, TokenVersion,
    APPLICATION, KEY_ID_PREFIX, RECORD_FORMAT,
};
use crate::keyring::ops::Transition;
use crate::keyring::{KeyState, VersionInfo};

fn write_record(
    session: &Session,
    version: &TokenVersion,
    generation: u64,
) -> Result<(), CryptokiError> {
    let record = Record {
        format: RECORD_FORMAT.to_owned(),
        version: version.id,
        key_id: version.key_id.clone(),
        state: version.state.as_str().to_owned(),
        created: seconds(version.created),
        disabled_at: version.disabled_at.map(seconds),
        generation,
    };
    let value = serde_json::to_vec(&record).map_err(|_| CryptokiError::InvalidValue)?;
    session.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Application(APPLICATION.to_vec()),
        Attribute::Label(record_label(version.id).into_bytes()),
        Attribute::Value(value),
    ])?;
    Ok(())
}

/// Writes the new records (generations counted up from `keys`), then deletes
/// the records they supersede.
fn commit(
    session: &Session,
    keys: &TokenKeys,
    changed: &[TokenVersion],
) -> Result<(), CryptokiError> {
    let mut generation = keys.next_generation();
    for version in changed {
        write_record(session, version, generation)?;
        generation = generation.saturating_add(1);
    }
    for version in changed {
        for handle in keys.records.get(&version.id).into_iter().flatten() {
            session.destroy_object(*handle)?;
        }
    }
    Ok(())
}

fn random_tag() -> Result<String, Pkcs11Error> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(Pkcs11Error::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The template of a new KEK: generated inside, never leaves the token.
fn kek_template(id: u32, key_id: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![MechanismType::AES_GCM]),
        Attribute::Label(key_label(id).into_bytes()),
        Attribute::Id(key_id.as_bytes().to_vec()),
    ]
}

/// What `rotate` did.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The new primary.
    pub primary: VersionInfo,
    /// The previous primary, now enabled (none on an empty token).
    pub previous: Option<VersionInfo>,
}

/// Generates version N+1 in the token and makes it primary; the old primary
/// stays enabled. On a token without versions this creates version 1.
pub fn rotate(token: &Token, now: SystemTime) -> Result<Rotation, Pkcs11Error> {
    let _lock = TokenLock::acquire(token)?;
    let keys = read(token)?;
    let highest = keys.versions.iter().map(|v| v.id).max().unwrap_or(0);
    let id = highest.checked_add(1).ok_or_else(|| Pkcs11Error::State {
        label: token.label().to_owned(),
        problem: "version numbers are exhausted; use a new token".into(),
    })?;
    let key_id = format!("{KEY_ID_PREFIX}{id}-{}", random_tag()?);
    let created = time_of(seconds(now));
    let fresh = TokenVersion {
        id,
        key_id: key_id.clone(),
        state: KeyState::Primary,
        created,
        disabled_at: None,
        generation: 0,
    };
    let mut changed = vec![fresh.clone()];
    let previous = keys.primary().map(|old| TokenVersion {
        state: KeyState::Enabled,
        ..old.clone()
    });
    changed.extend(previous.clone());
    token
        .call(|session| {
            session.generate_key(&Mechanism::AesKeyGen, &kek_template(id, &key_id))?;
            commit(session, &keys, &changed)
        })
        .map_err(|error| call_failure(token, "generating the new key", error))?;
    Ok(Rotation {
        primary: fresh.info(),
        previous: previous.map(|v| v.info()),
    })
}

/// Applies `transition` to version `id` under the file keyring's rules.
/// `disabled_at`, when given, must still be the version's disable time (the
/// destroy gate judged its scan reports against it).
pub fn transition(
    token: &Token,
    id: u32,
    transition: Transition,
    now: SystemTime,
    disabled_at: Option<SystemTime>,
) -> Result<VersionInfo, Pkcs11Error> {
    let _lock = TokenLock::acquire(token)?;
    let keys = read(token)?;
    let target = keys
        .version(id)
        .ok_or_else(|| Pkcs11Error::UnknownVersion {
            label: token.label().to_owned(),
            id,
        })?;
    if disabled_at.is_some() && target.disabled_at != disabled_at {
        return Err(Pkcs11Error::Refused(
            crate::keyring::KeyringError::Refused {
                action: transition.action(),
                id,
                reason:
                    "the token changed while the scan reports were checked; run the command again"
                        .into(),
            },
        ));
    }
    let state = transition.check(id, target.state)?;
    let mut updated = TokenVersion {
        state,
        ..target.clone()
    };
    match transition {
        Transition::Disable => updated.disabled_at = Some(time_of(seconds(now))),
        Transition::Enable => updated.disabled_at = None,
        Transition::Promote | Transition::Destroy => {}
    }
    let mut changed = vec![updated.clone()];
    if transition == Transition::Promote {
        if let Some(old) = keys.primary() {
            changed.push(TokenVersion {
                state: KeyState::Enabled,
                ..old.clone()
            });
        }
    }
    let key_id = updated.key_id.clone();
    token
        .call(|session| {
            commit(session, &keys, &changed)?;
            if transition == Transition::Destroy {
                let objects = session.find_objects(&[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::Token(true),
                    Attribute::Id(key_id.as_bytes().to_vec()),
                ])?;
                for object in objects {
                    session.destroy_object(object)?;
                }
            }
            Ok(())
        })
        .map_err(|error| call_failure(token, "changing the key state", error))?;
    if transition == Transition::Destroy {
        token.forget_key(&key_id);
    }
    Ok(updated.info())
}
