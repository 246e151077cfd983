//! Reading and writing the keyring file.
//!
//! Reading: the file must be a regular file owned by the effective uid with no
//! group/other permission bits (else it is refused with the `chmod`/`chown`
//! that fixes it), at most [`MAX_FILE_SIZE`] bytes. It is read into one
//! zeroizing buffer that never reallocates, and its identity ([`FileStamp`],
//! taken from the open descriptor) is returned so a reloader can tell whether
//! the file changed since.
//!
//! Writing ([`create`], [`modify`]) happens under an exclusive lock on the
//! sidecar `PATH.lock` (the data file itself is replaced by rename, so it cannot
//! carry the lock). The new contents go to a temp file in the same directory
//! (mode 0600, `create_new`), which is fsynced, renamed over the keyring (or,
//! for `create`, hard-linked to it, which fails if the path exists), and the
//! directory is fsynced. A crash at any point leaves the old file or the new
//! one, never a torn file; at worst a stray `.PATH.tmp-*` file remains.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{format, Keyring, KeyringError};

/// Largest keyring file accepted (a keyring with thousands of versions is far smaller).
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// The identity of one version of the file: if any field differs, the file
/// was replaced or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The stamp of the file at `path` now (symlinks followed).
    pub fn of_path(path: &Path) -> std::io::Result<Self> {
        std::fs::metadata(path).map(|meta| Self::of(&meta))
    }
}

/// A keyring as read from its file.
#[derive(Debug)]
pub struct LoadedKeyring {
    /// The validated keyring.
    pub keyring: Keyring,
    /// The identity of the file that was read.
    pub stamp: FileStamp,
}

fn io_error<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> KeyringError + 'p {
    move |source| KeyringError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and validates the keyring at `path` (see the module docs for the checks).
pub fn load(path: &Path) -> Result<LoadedKeyring, KeyringError> {
    let open = OpenOptions::new()
        .read(true)
        // A FIFO at the path must not block the reader.
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path);
    let mut file = match open {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyringError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(error) => return Err(io_error("cannot open keyring", path)(error)),
    };
    let meta = file
        .metadata()
        .map_err(io_error("cannot stat keyring", path))?;
    check_file(path, &meta)?;
    let size = meta.size();
    if size > MAX_FILE_SIZE {
        return Err(KeyringError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: MAX_FILE_SIZE,
        });
    }
    // One spare byte detects a file that grew after the stat.
    let capacity = usize::try_from(size)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let mut buffer = Zeroizing::new(vec![0u8; capacity]);
    let mut filled = 0;
    while let Some(free) = buffer.get_mut(filled..) {
        if free.is_empty() {
            return Err(KeyringError::ChangedWhileReading {
                path: path.to_path_buf(),
            });
        }
        match file.read(free) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(io_error("cannot read keyring", path)(error)),
        }
    }
    let contents = buffer.get(..filled).unwrap_or_default();
    let keyring = format::parse(contents).map_err(|error| error.at(path))?;
    Ok(LoadedKeyring {
        keyring,
        stamp: FileStamp::of(&meta),
    })
}

fn check_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyringError> {
    if !meta.file_type().is_file() {
        return Err(KeyringError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(KeyringError::WrongOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyringError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Writes a new keyring at `path`; fails with [`KeyringError::AlreadyExists`]
/// if anything is there (never overwrites).
pub fn create(path: &Path, keyring: &Keyring) -> Result<(), KeyringError> {
    let _lock = lock(path)?;
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(KeyringError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let contents = format::serialize(keyring).map_err(|error| error.at(path))?;
    let temp = write_temp(path, &contents)?;
    let linked = std::fs::hard_link(&temp, path);
    let removed = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(KeyringError::AlreadyExists {
                path: path.to_path_buf(),
            })
        }
        Err(error) => return Err(io_error("cannot create keyring", path)(error)),
    }
    removed.map_err(io_error("cannot remove temporary file", &temp))?;
    sync_directory(path)
}

/// Loads the keyring at `path` under the exclusive lock, applies `change`,
/// and writes the result atomically. If `change` fails nothing is written.
pub fn modify<T>(
    path: &Path,
    change: impl FnOnce(&mut Keyring) -> Result<T, KeyringError>,
) -> Result<T, KeyringError> {
    let _lock = lock(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_symlink() {
            return Err(KeyringError::Symlink {
                path: path.to_path_buf(),
            });
        }
    }
    let mut loaded = load(path)?;
    let outcome = change(&mut loaded.keyring).map_err(|error| error.at(path))?;
    let contents = format::serialize(&loaded.keyring).map_err(|error| error.at(path))?;
    let temp = write_temp(path, &contents)?;
    if let Err(error) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error("cannot replace keyring", path)(error));
    }
    sync_directory(path)?;
    Ok(outcome)
}

/// Held while a keyring is being changed; the lock is released on drop.
struct WriteLock {
    file: File,
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

fn lock(path: &Path) -> Result<WriteLock, KeyringError> {
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_error("cannot open lock file", &lock_path))?;
    file.lock().map_err(io_error("cannot lock", &lock_path))?;
    Ok(WriteLock { file })
}

fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn write_temp(path: &Path, contents: &[u8]) -> Result<PathBuf, KeyringError> {
    let mut random = [0u8; 6];
    getrandom::getrandom(&mut random).map_err(KeyringError::Random)?;
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keyring".into());
    let temp = directory_of(path).join(format!(".{name}.tmp-{}-{suffix}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(temp),
        Err(error) => {
            let _ = std::fs::remove_file(&temp);
            Err(io_error("cannot write temporary file", &temp)(error))
        }
    }
}

fn sync_directory(path: &Path) -> Result<(), KeyringError> {
    let directory = directory_of(path);
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("cannot sync directory", directory))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    #[test]
    fn create_load_modify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        create(&path, &Keyring::initial(SystemTime::now()).unwrap()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = load(&path).unwrap();
        assert!(matches!(
            create(&path, &Keyring::initial(SystemTime::now()).unwrap()),
            Err(KeyringError::AlreadyExists { .. })
        ));
        modify(&path, |ring| ring.rotate(SystemTime::now())).unwrap();
        let second = load(&path).unwrap();
        assert_ne!(first.stamp, second.stamp);
        assert_eq!(second.keyring.versions().len(), 2);
        // A failing change writes nothing.
        let before = std::fs::read(&path).unwrap();
        assert!(modify(&path, |ring| ring.destroy(1)).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["keyring.json", "keyring.json.lock"]);
    }

    #[test]
    fn refuses_open_modes_and_odd_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring");
        create(&path, &Keyring::initial(SystemTime::now()).unwrap()).unwrap();
        for mode in [0o640, 0o604, 0o610, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = load(&path).unwrap_err();
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        load(&path).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(KeyringError::NotRegularFile { .. })
        ));
        assert!(matches!(
            load(&dir.path().join("missing")),
            Err(KeyringError::NotFound { .. })
        ));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        load(&link).unwrap();
        assert!(matches!(
            modify(&link, |ring| ring.rotate(SystemTime::now())),
            Err(KeyringError::Symlink { .. })
        ));
    }
}
