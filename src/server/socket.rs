//! The listening unix socket: creating it with the right mode without a
//! window where it is reachable with looser permissions, replacing a stale
//! socket left by a crash, refusing to steal a live one or to delete any other
//! kind of file, and removing it again on shutdown.
//!
//! How the mode is set race-free: `bind(2)` creates the socket file with mode
//! `0777 & !umask`, and a `chmod` afterwards leaves a window in which another
//! local user could connect. Changing the process umask would affect every
//! thread. Instead the socket is bound inside a fresh private directory (mode
//! 0700, created next to the final path so the rename stays on one
//! filesystem), chmod-ed there while nobody else can reach it, and then moved
//! into place with `renameat2(RENAME_NOREPLACE)`, which never replaces an
//! existing file. When the final path is taken, it is examined: a socket that
//! refuses connections is stale and is removed (then the rename is retried); a
//! socket that accepts is a live server (error); anything else is not ours to
//! delete (error). A listening socket keeps working after its file is renamed:
//! clients reach it through the inode. The staging directory (`.kkXXXXXXXX`)
//! exists only between bind and rename; since the socket is bound there, the
//! socket's directory path must leave room for it within the 107-byte limit
//! of unix socket addresses.
//!
//! Abstract sockets (`@name`, Linux only) have no file and no permissions:
//! any process in the network namespace can connect (and the static pod runs
//! on the host network), so [`SocketListener::bind`] refuses them; only
//! [`SocketListener::bind_allowing_abstract`] (`--allow-abstract-socket`)
//! binds one.
//!
//! The listener remembers the socket file's owner uid (read once at bind
//! time; the process' effective uid for an abstract socket): the caller check
//! ([`crate::server::callers`]) admits it by default.
use std::future::Future as _;
use std::io;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

/// Unix socket addresses hold at most 107 path bytes plus a NUL.
const MAX_SOCKET_PATH: usize = 108;
/// `/.kkXXXXXXXX/s`: the staging directory and socket name added to the directory.
const STAGING_NAME_LEN: usize = 14;

/// The default socket mode: only the owner (kube-apiserver runs as the same user) may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketAddress {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket (written `@name`), which has no file and no permissions.
    Abstract(String),
}

impl SocketAddress {
    /// Parses `unix:///path`, `/path`, `unix:///@name` or `@name`.
    pub fn parse(text: &str) -> Self {
        let text = text.strip_prefix("unix://").unwrap_or(text);
        match text.strip_prefix("/@").or_else(|| text.strip_prefix('@')) {
            Some(name) => SocketAddress::Abstract(name.to_owned()),
            None => SocketAddress::Path(PathBuf::from(text)),
        }
    }
}

impl std::fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddress::Path(path) => write!(f, "{}", path.display()),
            SocketAddress::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

/// Why the socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process accepts connections on the socket.
    #[error("another kube-kms is serving on {0}: stop it first or choose another --socket")]
    InUse(String),
    /// The path holds something that is not a socket.
    #[error("{path} exists and is a {kind}, not a socket: remove it or choose another --socket")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
        /// What is there instead.
        kind: &'static str,
    },
    /// The directory that should hold the socket is missing.
    #[error("socket directory {0} does not exist: create it (e.g. mkdir -m 0755 -p {0})")]
    NoDirectory(PathBuf),
    /// The mode has bits outside 0o777.
    #[error("socket mode {0:o} is not a permission mode (expected e.g. 0600 or 0660)")]
    BadMode(u32),
    /// The socket's directory path is too long for a unix socket address.
    #[error("socket path {0} is too long: its directory must be under {limit} bytes", limit = MAX_SOCKET_PATH - STAGING_NAME_LEN)]
    TooLong(PathBuf),
    /// An abstract socket name without the explicit opt-in.
    #[error("refusing abstract socket {0}: an abstract socket has no file permissions, so any process in the network namespace can reach it (and the static pod runs on the host network); use a socket path, or pass --allow-abstract-socket if every process in that namespace is trusted")]
    AbstractRefused(String),
    /// The path has no file name (e.g. ends in `/..`).
    #[error("socket path {0} does not name a file")]
    BadPath(PathBuf),
    /// A system call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A bound, listening socket, ready for [`crate::server::Server::run`].
#[derive(Debug)]
pub struct SocketListener {
    listener: UnixListener,
    file: Option<SocketFile>,
    address: SocketAddress,
    owner_uid: u32,
}

impl SocketListener {
    /// Binds `address`; a socket file gets `mode` (e.g. [`DEFAULT_SOCKET_MODE`]).
    /// An abstract name is refused ([`SocketError::AbstractRefused`]).
    /// Must be called inside a tokio runtime.
    pub fn bind(address: &SocketAddress, mode: u32) -> Result<Self, SocketError> {
        if let SocketAddress::Abstract(_) = address {
            return Err(SocketError::AbstractRefused(address.to_string()));
        }
        Self::bind_allowing_abstract(address, mode)
    }

    /// [`SocketListener::bind`], but an abstract name is bound too
    /// (`--allow-abstract-socket`): only the caller check then guards it.
    pub fn bind_allowing_abstract(address: &SocketAddress, mode: u32) -> Result<Self, SocketError> {
        if mode & !0o777 != 0 {
            return Err(SocketError::BadMode(mode));
        }
        let (std_listener, file, owner_uid) = match address {
            SocketAddress::Path(path) => {
                let (listener, file, owner) = bind_path(path, mode)?;
                (listener, Some(file), owner)
            }
            SocketAddress::Abstract(name) => (
                bind_abstract(name)?,
                None,
                rustix::process::geteuid().as_raw(),
            ),
        };
        let describe = PathBuf::from(address.to_string());
        std_listener
            .set_nonblocking(true)
            .map_err(io_error("configure", &describe))?;
        let listener =
            UnixListener::from_std(std_listener).map_err(io_error("register", &describe))?;
        Ok(Self {
            listener,
            file,
            address: address.clone(),
            owner_uid,
        })
    }

    /// The uid owning the socket file (for an abstract socket: this process'
    /// effective uid), admitted by the caller check.
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    /// The address it listens on.
    pub fn address(&self) -> &SocketAddress {
        &self.address
    }

    pub(crate) fn into_parts(self) -> (Incoming, Option<SocketFile>) {
        (
            Incoming {
                listener: self.listener,
                backoff: None,
            },
            self.file,
        )
    }
}

fn bind_abstract(name: &str) -> Result<std::os::unix::net::UnixListener, SocketError> {
    let shown = PathBuf::from(format!("@{name}"));
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(io_error("name", &shown))?;
    std::os::unix::net::UnixListener::bind_addr(&address).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            SocketError::InUse(shown.display().to_string())
        } else {
            SocketError::Io {
                action: "bind",
                path: shown.clone(),
                source,
            }
        }
    })
}

/// A private directory holding the socket until it is moved into place;
/// removed (with whatever is left in it) when dropped.
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn bind_path(
    path: &Path,
    mode: u32,
) -> Result<(std::os::unix::net::UnixListener, SocketFile, u32), SocketError> {
    if path.file_name().is_none() {
        return Err(SocketError::BadPath(path.to_owned()));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(SocketError::NoDirectory(parent.to_owned()));
    }
    let mut suffix = [0u8; 4];
    getrandom::getrandom(&mut suffix).map_err(|error| {
        io_error("choose a temporary name in", parent)(io::Error::other(error.to_string()))
    })?;
    let private = PrivateDir(parent.join(format!(".kk{:08x}", u32::from_ne_bytes(suffix))));
    let staged = private.0.join("s");
    if staged.as_os_str().len() >= MAX_SOCKET_PATH {
        return Err(SocketError::TooLong(path.to_owned()));
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private.0)
        .map_err(io_error("create private directory", &private.0))?;
    let listener =
        std::os::unix::net::UnixListener::bind(&staged).map_err(io_error("bind", &staged))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("set the mode of", &staged))?;
    let metadata = std::fs::symlink_metadata(&staged).map_err(io_error("inspect", &staged))?;
    let file = SocketFile {
        path: path.to_owned(),
        device: metadata.dev(),
        inode: metadata.ino(),
    };
    // Three attempts: a stale socket removed between our look and our rename
    // by someone else only costs a retry.
    for _ in 0..3 {
        match move_into_place(&staged, path) {
            Ok(()) => return Ok((listener, file, metadata.uid())),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                examine_existing(path)?;
            }
            Err(error) => return Err(io_error("move the socket to", path)(error)),
        }
    }
    Err(SocketError::InUse(path.display().to_string()))
}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`.
fn move_into_place(from: &Path, to: &Path) -> io::Result<()> {
    let cwd = rustix::fs::CWD;
    match rustix::fs::renameat_with(
        cwd.as_fd(),
        from,
        cwd.as_fd(),
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        // Filesystems without RENAME_NOREPLACE: check, then rename.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            std::fs::rename(from, to)
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Something is at the socket path: remove it if it is a stale socket, else explain.
fn examine_existing(path: &Path) -> Result<(), SocketError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error("inspect", path)(error)),
    };
    let file_type = metadata.file_type();
    if !file_type.is_socket() {
        let kind = if file_type.is_dir() {
            "directory"
        } else if file_type.is_symlink() {
            "symbolic link"
        } else if file_type.is_file() {
            "regular file"
        } else if file_type.is_fifo() {
            "named pipe"
        } else {
            "special file"
        };
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
            kind,
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.display().to_string())),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::warn!(socket = %path.display(), "replacing a stale socket left by an earlier run");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(io_error("remove the stale socket", path)(error)),
            }
        }
        Err(error) => Err(io_error("probe the existing socket", path)(error)),
    }
}

/// The socket file this process created, identified by device and inode so
/// that shutdown never removes a file another process put at the same path.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    device: u64,
    inode: u64,
}

impl SocketFile {
    /// Removes the socket file if it is still ours. Idempotent.
    pub(crate) fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(metadata) if metadata.dev() == self.device && metadata.ino() == self.inode => {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    tracing::warn!(socket = %self.path.display(), %error, "could not remove the socket");
                }
            }
            _ => {}
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The stream of accepted connections handed to tonic. Accept errors never
/// end it: transient ones (a client that went away) are skipped, resource
/// exhaustion (EMFILE...) backs off briefly instead of spinning.
pub(crate) struct Incoming {
    listener: UnixListener,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<UnixStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(sleep) = self.backoff.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, _)) => return Poll::Ready(Some(Ok(stream))),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; retrying shortly");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        }
    }
}
