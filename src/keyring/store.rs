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
//! one, never a torn file; at worst a stray `.NAME.tmp-*` file remains, and it
//! holds every key of the keyring. [`remove_stale_temps`] removes those (under
//! the lock, so never a writer's live one), overwriting them with zeros
//! before unlinking; [`create`] and [`modify`] run it under their own lock,
//! `kube-kms serve` and the read-only `key` commands call it directly.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{format, Keyring, KeyringError};

/// Largest keyring file accepted (a keyring with thousands of versions is far smaller).
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// The identity of one version of a file (the keyring, a PIN file): if any
/// field differs, the file was replaced or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of an open file's (or a path's) metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
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
    scrub_temps_locked(path)?;
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(KeyringError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    // Written as one more than the given generation, like every write: a new
    // keyring is at generation 1 (0 means "written before the counter").
    let contents = format::serialize_as(keyring, keyring.generation.saturating_add(1))
        .map_err(|error| error.at(path))?;
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
    scrub_temps_locked(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_symlink() {
            return Err(KeyringError::Symlink {
                path: path.to_path_buf(),
            });
        }
    }
    let mut loaded = load(path)?;
    let outcome = change(&mut loaded.keyring).map_err(|error| error.at(path))?;
    loaded.keyring.generation = loaded.keyring.generation.saturating_add(1);
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

/// The prefix of the temp files of the keyring at `path`: `.NAME.tmp-`.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keyring".into());
    format!(".{name}.tmp-")
}

/// Removes the temp files a crashed writer left next to the keyring at `path`
/// (`.NAME.tmp-*`, regular files owned by the effective uid: nobody else's),
/// overwriting each with zeros and syncing before the unlink, since each holds
/// every key. Takes the keyring's lock, so a writer's live temp file is never
/// touched. Returns how many were removed. Does nothing (and creates no lock
/// file) when the keyring's directory does not exist or is read-only.
pub fn remove_stale_temps(path: &Path) -> Result<usize, KeyringError> {
    let directory = directory_of(path);
    if !directory.is_dir() {
        return Ok(0);
    }
    // A read-only mount (the static pod mounts the keyring's directory so)
    // holds no temp file this side could have left, and cannot be cleaned.
    let _lock = match lock(path) {
        Ok(lock) => lock,
        Err(KeyringError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::ReadOnlyFilesystem =>
        {
            return Ok(0)
        }
        Err(error) => return Err(error),
    };
    scrub_temps_locked(path)
}

fn scrub_temps_locked(path: &Path) -> Result<usize, KeyringError> {
    let directory = directory_of(path);
    let prefix = temp_prefix(path);
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(io_error("cannot list directory", directory)(error)),
    };
    let euid = rustix::process::geteuid().as_raw();
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io_error("cannot list directory", directory))?;
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let temp = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&temp) else {
            continue;
        };
        if !meta.file_type().is_file() || meta.uid() != euid {
            tracing::warn!(file = %temp.display(), "not removing a keyring temp file that is not a regular file of ours");
            continue;
        }
        overwrite_with_zeros(&temp, meta.size());
        std::fs::remove_file(&temp)
            .map_err(io_error("cannot remove stale temporary file", &temp))?;
        tracing::warn!(file = %temp.display(), "removed a temporary keyring file left by an interrupted write");
        removed += 1;
    }
    if removed > 0 {
        sync_directory(path)?;
    }
    Ok(removed)
}

/// Best effort: on a filesystem that writes in place (ext4, xfs) the old
/// blocks are overwritten; copy-on-write filesystems and SSD remapping may
/// keep them (docs/threat-model.md).
fn overwrite_with_zeros(temp: &Path, size: u64) {
    let Ok(mut file) = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(temp)
    else {
        return;
    };
    let zeros = [0u8; 4096];
    let mut left = size.min(MAX_FILE_SIZE);
    while left > 0 {
        let chunk = usize::try_from(left.min(4096)).unwrap_or(4096);
        if file
            .write_all(zeros.get(..chunk).unwrap_or(&zeros))
            .is_err()
        {
            return;
        }
        left -= chunk as u64;
    }
    let _ = file.sync_all();
}

fn write_temp(path: &Path, contents: &[u8]) -> Result<PathBuf, KeyringError> {
    let mut random = [0u8; 6];
    getrandom::getrandom(&mut random).map_err(KeyringError::Random)?;
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let temp = directory_of(path).join(format!(
        "{}{}-{suffix}",
        temp_prefix(path),
        std::process::id()
    ));
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
    fn stale_temps_are_removed_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        create(&path, &Keyring::initial(SystemTime::now()).unwrap()).unwrap();
        // What a writer killed between write_temp and rename leaves behind.
        let contents = format::serialize(&load(&path).unwrap().keyring).unwrap();
        let stale = write_temp(&path, &contents).unwrap();
        let other = dir.path().join(".other.json.tmp-1-abcdef");
        std::fs::write(&other, b"not ours").unwrap();
        modify(&path, |ring| ring.rotate(SystemTime::now())).unwrap();
        assert!(!stale.exists(), "stale temp file survived a write");
        assert!(other.exists(), "another keyring's temp file was removed");
        let stale = write_temp(&path, &contents).unwrap();
        assert_eq!(remove_stale_temps(&path).unwrap(), 1);
        assert!(!stale.exists());
        assert_eq!(remove_stale_temps(&path).unwrap(), 0);
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
