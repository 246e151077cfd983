//! The connection to one PKCS#11 token: the loaded module, the user PIN, and
//! a pool of logged-in read/write sessions that blocking calls borrow.
//!
//! PKCS#11 sessions are not `Sync`, so each call takes one session out of the
//! pool, uses it on the calling (blocking) thread and puts it back. Login
//! state belongs to the application, not the session: the first session of a
//! fresh pool logs in, the others find the token already logged in. A call
//! that fails with an error saying the session, the login or the token itself
//! is gone empties the pool (and forgets the slot and the cached object
//! handles), so the next call finds the token again, opens new sessions and
//! logs in again: that is how the plugin recovers when the token comes back.
//!
//! The PIN file is re-read whenever a login is needed and the file changed
//! (device, inode, size, mtime or ctime). When the token refuses the PIN
//! (CKR_PIN_INCORRECT, CKR_PIN_LOCKED, ...), no login is tried again with the
//! same PIN: every try burns one of the token's PIN retries, and a token
//! shared by every control-plane node would soon lock for all of them. Logins
//! resume once the file changes.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::Pkcs11Error;
use crate::keyring::FileStamp;

mod pin;

pub use pin::read_pin_file;
use pin::{read_pin, refuses_the_pin};

/// How long opening the token or a key command waits for the node-local lock.
const LOCAL_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Idle sessions kept open; more are opened under load and closed when returned.
pub(crate) const IDLE_SESSIONS: usize = 16;

/// What the pool holds between calls.
#[derive(Default)]
struct Pool {
    /// The initialized module; dropped on a reset so the next call
    /// initializes it again (modules list their tokens at C_Initialize).
    context: Option<Pkcs11>,
    slot: Option<Slot>,
    idle: Vec<Session>,
    /// key_id → handle of its secret key object (valid while the pool is).
    keys: HashMap<String, ObjectHandle>,
}

/// The PIN as last read, and whether the token refused it.
struct PinState {
    pin: AuthPin,
    stamp: FileStamp,
    /// Set when the token refused `pin`: the return value it gave.
    refused: Option<RvError>,
}

/// A token found by label in a PKCS#11 module, with its PIN file.
pub struct Token {
    module: PathBuf,
    label: String,
    pin_file: PathBuf,
    pin: Mutex<PinState>,
    pool: Mutex<Pool>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.module)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Whether an error means the session, the login or the token is gone (so
/// the pool must be rebuilt), rather than a problem with one request.
/// CKR_GENERAL_ERROR is not among them: SoftHSM2 answers it for a GCM tag
/// that does not verify, and a dead token shows itself by other codes.
pub(crate) fn breaks_the_pool(error: &CryptokiError) -> bool {
    match error {
        CryptokiError::Pkcs11(rv, _) => matches!(
            rv,
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::SessionCount
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::PinExpired
                | RvError::PinIncorrect
                | RvError::SlotIdInvalid
        ),
        _ => true,
    }
}

/// A one-line description of a PKCS#11 error, e.g. `C_OpenSession returned TokenNotPresent`.
pub(crate) fn short(error: &CryptokiError) -> String {
    match error {
        CryptokiError::Pkcs11(rv, function) => format!("C_{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

/// Why a call through [`Token::call`] failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Getting a logged-in session failed (token absent, wrong PIN, ...).
    Session(Pkcs11Error),
    /// The operation itself failed.
    Operation(CryptokiError),
}

impl Token {
    /// Reads the PIN from `pin_file`, loads `module`, initializes it, and
    /// checks that a token labelled `label` is present and accepts the PIN
    /// (one session is opened and kept).
    pub fn open(module: &Path, label: &str, pin_file: &Path) -> Result<Self, Pkcs11Error> {
        let (pin, stamp) = read_pin(pin_file)?;
        let token = Self {
            module: module.to_path_buf(),
            label: label.to_owned(),
            pin_file: pin_file.to_path_buf(),
            pin: Mutex::new(PinState {
                pin,
                stamp,
                refused: None,
            }),
            pool: Mutex::new(Pool::default()),
        };
        // One opening at a time on this node, and not while a `kube-kms key`
        // command changes the token (it holds the same lock): some tokens
        // (SoftHSM2) fail a login or miss the token while another process
        // writes it, and a login itself may write.
        let local = token.lock_locally()?;
        // SoftHSM2 may not list a token for the moment another process
        // rewrites its files: look again a few times before saying it is
        // not there.
        let mut attempts = 0;
        let session = loop {
            match token.take_session() {
                Err(Pkcs11Error::NoToken { .. }) if attempts < 10 => {
                    attempts += 1;
                    token.reset();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                result => break result?,
            }
        };
        token.give_back(session);
        drop(local);
        Ok(token)
    }

    /// Takes an exclusive `flock` on the PIN file, waiting for it: the
    /// node-local half of the lock that serializes the `kube-kms key`
    /// commands changing the token (see `store`). Released when the file
    /// is dropped.
    pub(crate) fn lock_locally(&self) -> Result<std::fs::File, Pkcs11Error> {
        let pin_error = |problem: String| Pkcs11Error::PinFile {
            path: self.pin_file.clone(),
            problem,
        };
        let file = std::fs::File::open(&self.pin_file)
            .map_err(|error| pin_error(format!("cannot be opened to lock it: {error}")))?;
        // Bounded: a command stuck on a hung token must not stop others
        // (or `serve`) from starting for ever.
        let started = std::time::Instant::now();
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(file),
                Err(rustix::io::Errno::WOULDBLOCK) if started.elapsed() < LOCAL_LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(pin_error(format!(
                        "is locked by another kube-kms process on this node (a key command changing the token) for more than {}s; run this again when it is done",
                        LOCAL_LOCK_WAIT.as_secs()
                    )))
                }
                Err(error) => return Err(pin_error(format!("cannot be locked: {error}"))),
            }
        }
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        // The pool is a cache: a panic elsewhere leaves nothing half-updated that matters.
        self.pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads and initializes the module.
    fn initialize(&self) -> Result<Pkcs11, Pkcs11Error> {
        let context = Pkcs11::new(&self.module).map_err(|error| Pkcs11Error::Module {
            path: self.module.clone(),
            problem: error.to_string(),
        })?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                Ok(context)
            }
            Err(error) => Err(Pkcs11Error::Module {
                path: self.module.clone(),
                problem: format!("C_Initialize failed: {}", short(&error)),
            }),
        }
    }

    fn find_slot(&self, context: &Pkcs11) -> Result<Slot, Pkcs11Error> {
        let slots = context
            .get_slots_with_token()
            .map_err(|error| self.failure("listing the slots", error))?;
        let mut present = Vec::new();
        for slot in slots {
            let Ok(info) = context.get_token_info(slot) else {
                continue;
            };
            let label = info.label().trim_end().to_owned();
            if label == self.label {
                return Ok(slot);
            }
            present.push(label);
        }
        Err(Pkcs11Error::NoToken {
            label: self.label.clone(),
            module: self.module.clone(),
            present: if present.is_empty() {
                "none".into()
            } else {
                present.join(", ")
            },
        })
    }

    /// A token failure with this token's label.
    pub(crate) fn failure(&self, operation: &'static str, source: CryptokiError) -> Pkcs11Error {
        Pkcs11Error::Token {
            label: self.label.clone(),
            operation,
            detail: short(&source),
        }
    }

    fn take_session(&self) -> Result<Session, Pkcs11Error> {
        let (context, slot) = {
            let mut pool = self.lock();
            if let Some(session) = pool.idle.pop() {
                return Ok(session);
            }
            let context = match &pool.context {
                Some(context) => context.clone(),
                None => {
                    let context = self.initialize()?;
                    pool.context = Some(context.clone());
                    context
                }
            };
            let slot = match pool.slot {
                Some(slot) => slot,
                None => {
                    let slot = self.find_slot(&context)?;
                    pool.slot = Some(slot);
                    slot
                }
            };
            (context, slot)
        };
        let session = context
            .open_rw_session(slot)
            .map_err(|error| self.failure("opening a session", error))?;
        self.login(&session)?;
        Ok(session)
    }

    /// Logs `session`'s application in with the PIN, re-reading the PIN file
    /// if it changed; refuses without calling C_Login while the token's last
    /// answer to this very PIN was that it is wrong or locked.
    fn login(&self, session: &Session) -> Result<(), Pkcs11Error> {
        let mut state = self
            .pin
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::fs::metadata(&self.pin_file).map(|metadata| FileStamp::of(&metadata));
        if now.as_ref().ok() != Some(&state.stamp) {
            let (pin, stamp) = read_pin(&self.pin_file)?;
            if state.refused.is_some() {
                tracing::info!(token = %self.label, pin_file = %self.pin_file.display(), "the PIN file changed: logging in again");
            }
            *state = PinState {
                pin,
                stamp,
                refused: None,
            };
        }
        if let Some(rv) = state.refused {
            return Err(self.pin_refused(rv));
        }
        match session.login(UserType::User, Some(&state.pin)) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CryptokiError::Pkcs11(rv, _)) if refuses_the_pin(rv) => {
                state.refused = Some(rv);
                tracing::error!(
                    token = %self.label,
                    pin_file = %self.pin_file.display(),
                    result = ?rv,
                    "the token refused the PIN: no more logins with it until the PIN file changes"
                );
                Err(self.pin_refused(rv))
            }
            Err(error) => Err(self.failure("logging in with the PIN", error)),
        }
    }

    fn pin_refused(&self, rv: RvError) -> Pkcs11Error {
        Pkcs11Error::PinFile {
            path: self.pin_file.clone(),
            problem: format!(
                "holds a PIN that token {:?} refused (C_Login returned {rv:?}); kube-kms does not try it again, because every try uses up one of the token's PIN retries: write the right user PIN to the file (it is re-read at the next login), or have the SO unlock the token if it is locked",
                self.label
            ),
        }
    }

    fn give_back(&self, session: Session) {
        let mut pool = self.lock();
        if pool.idle.len() < IDLE_SESSIONS {
            pool.idle.push(session);
        }
    }

    /// Forgets every session, the slot, the cached handles and the module
    /// context, so the next call starts afresh: the module is initialized
    /// again (finalized once the last session of the old context closes),
    /// finds the token again and logs in again.
    pub(crate) fn reset(&self) {
        let stale = {
            let mut pool = self.lock();
            std::mem::take(&mut *pool)
        };
        drop(stale);
    }

    /// Runs `operation` on a pooled, logged-in session (blocking: call it
    /// from a blocking thread). A failure that [`breaks_the_pool`] resets it.
    pub(crate) fn call<T>(
        &self,
        operation: impl FnOnce(&Session) -> Result<T, CryptokiError>,
    ) -> Result<T, CallError> {
        let session = match self.take_session() {
            Ok(session) => session,
            Err(error) => {
                self.reset();
                return Err(CallError::Session(error));
            }
        };
        match operation(&session) {
            Ok(value) => {
                self.give_back(session);
                Ok(value)
            }
            Err(error) if breaks_the_pool(&error) => {
                drop(session);
                self.reset();
                Err(CallError::Operation(error))
            }
            Err(error) => {
                self.give_back(session);
                Err(CallError::Operation(error))
            }
        }
    }

    /// The handle of the trusted KEK whose CKA_ID is `key_id` (cached).
    /// Secret keys with that CKA_ID that fail [`Token::kek_problem`] are
    /// skipped: a key_id is public, and a public key object carrying it
    /// could be made by anyone who can load the module.
    pub(crate) fn key_handle(
        &self,
        session: &Session,
        key_id: &str,
    ) -> Result<Option<ObjectHandle>, CryptokiError> {
        if let Some(handle) = self.lock().keys.get(key_id) {
            return Ok(Some(*handle));
        }
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(key_id.as_bytes().to_vec()),
        ])?;
        let mut trusted = None;
        for handle in found {
            match self.kek_problem(session, handle)? {
                None if trusted.is_none() => trusted = Some(handle),
                None => tracing::warn!(
                    token = %self.label,
                    key_id,
                    "more than one trusted key object carries this key_id; using the first found"
                ),
                Some(reason) => tracing::warn!(
                    token = %self.label,
                    key_id,
                    reason,
                    "ignoring a key object that carries this key_id but is not a KEK kube-kms generated"
                ),
            }
        }
        let Some(handle) = trusted else {
            return Ok(None);
        };
        self.lock().keys.insert(key_id.to_owned(), handle);
        Ok(Some(handle))
    }

    /// Why the secret key `handle` is not a KEK kube-kms can trust (`None`:
    /// it is): it must be an AES token object, private, sensitive, not
    /// extractable, and generated inside the token (CKA_LOCAL).
    pub(crate) fn kek_problem(
        &self,
        session: &Session,
        handle: ObjectHandle,
    ) -> Result<Option<&'static str>, CryptokiError> {
        let attributes = session.get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Local,
            ],
        )?;
        let mut key_type = None;
        let (mut token, mut private, mut sensitive, mut extractable, mut local) =
            (None, None, None, None, None);
        for attribute in attributes {
            match attribute {
                Attribute::KeyType(value) => key_type = Some(value),
                Attribute::Token(value) => token = Some(value),
                Attribute::Private(value) => private = Some(value),
                Attribute::Sensitive(value) => sensitive = Some(value),
                Attribute::Extractable(value) => extractable = Some(value),
                Attribute::Local(value) => local = Some(value),
                _ => {}
            }
        }
        Ok(if key_type != Some(KeyType::AES) {
            Some("not an AES key")
        } else if token != Some(true) {
            Some("not a token object (CKA_TOKEN is not true)")
        } else if private != Some(true) {
            Some("a public object (CKA_PRIVATE is not true): anyone could have made it without the PIN")
        } else if sensitive != Some(true) {
            Some("its value can be read (CKA_SENSITIVE is not true)")
        } else if extractable != Some(false) {
            Some("it can be exported (CKA_EXTRACTABLE is not false)")
        } else if local != Some(true) {
            Some("it was not generated inside the token (CKA_LOCAL is not true): its value was known to someone")
        } else {
            None
        })
    }

    /// Forgets the cached handle of `key_id` (its object was destroyed).
    pub(crate) fn forget_key(&self, key_id: &str) {
        self.lock().keys.remove(key_id);
    }
}
