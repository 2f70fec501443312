//! The data directory of `agentbus up`: one running bus per directory.
//!
//! Which directory that is (`--data-dir`, `AGENTBUS_DATA_DIR`, `./.agentbus`)
//! is decided by [`agentbus::connect::resolve_data_dir`], since clients look for
//! its `connection.env` the same way. This module holds the directory for one
//! `up`: its lock, its password and its `connection.env`. The directory is
//! private (0700) since it holds secrets: made so when created, tightened
//! when found open to other users (and refused when that cannot be done).
//!
//! ```text
//! <data-dir>/
//!   up.lock          held while `agentbus up` runs (its pid inside)
//!   password         the generated password of user `agentbus` (0600)
//!   connection.env   NATS_URL and AGENTBUS_MONITOR_URL, only while the bus is ready (0600)
//!   nats.conf        generated server config (no secrets in it)
//!   nats-server.log  the server's log
//!   jetstream/       the JetStream store: every stream's messages
//! ```

use crate::private_file::write_private;
use agentbus::connect::{CONNECTION_FILE, ConnectionFile};
use rand::Rng;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The user `agentbus up` creates.
pub const BUS_USER: &str = "agentbus";

const LOCK_FILE: &str = "up.lock";
const PASSWORD_FILE: &str = "password";
/// The file holding the web dashboard's token.
pub const DASHBOARD_TOKEN_FILE: &str = "dashboard-token";
const PASSWORD_LEN: usize = 32;
/// The mode of the data directory: its owner's alone.
const PRIVATE_MODE: u32 = 0o700;

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// The directory or its lock could not be created or read.
    #[error("cannot use data directory {}: {source}; pass --data-dir with a writable directory", .path.display())]
    Unusable {
        /// The data directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A file in the directory could not be read or written.
    #[error(
        "cannot use data directory {}: {}: {source}; pass --data-dir with a writable directory",
        .path.display(),
        .file.display()
    )]
    UnusableFile {
        /// The data directory.
        path: PathBuf,
        /// The file.
        file: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Another `agentbus up` holds the directory.
    #[error(
        "data directory {} is in use by the running `agentbus up`{}; stop that one first or pass another --data-dir",
        .path.display(),
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The data directory.
        path: PathBuf,
        /// The process id of the `agentbus up` holding it, when readable.
        pid: Option<u32>,
    },
    /// The directory is open to other users and cannot be made private.
    #[error(
        "data directory {} is open to other users (mode {mode:04o}) and cannot be made private: {source}; run `chmod 700 {}` as its owner, or pass --data-dir with a directory of your own",
        .path.display(),
        .path.display()
    )]
    NotPrivate {
        /// The data directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Why it cannot be made private.
        #[source]
        source: std::io::Error,
    },
}

/// Why the data directory cannot be used, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataDirErrorKind {
    /// The directory or a file in it cannot be created, read or written.
    Unusable,
    /// Another `agentbus up` holds the directory.
    InUse,
    /// The directory is open to other users and cannot be made private.
    NotPrivate,
}

impl DataDirError {
    /// Why the directory cannot be used.
    pub fn kind(&self) -> DataDirErrorKind {
        match self {
            Self::Unusable { .. } | Self::UnusableFile { .. } => DataDirErrorKind::Unusable,
            Self::InUse { .. } => DataDirErrorKind::InUse,
            Self::NotPrivate { .. } => DataDirErrorKind::NotPrivate,
        }
    }
}

/// A data directory held exclusively by this process until dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory (mode 0700) if needed and takes its lock. An
    /// existing directory open to other users is made private first (0700,
    /// said in one warning), or refused untouched when it is not this
    /// user's. Fails without touching anything when another process holds it.
    pub fn open_exclusive(path: &Path) -> Result<Self, DataDirError> {
        let unusable = |source: std::io::Error| DataDirError::Unusable {
            path: path.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_MODE)
            .create(path)
            .map_err(unusable)?;
        let path = path.canonicalize().map_err(unusable)?;
        // Before the lock file is made in it. A directory another `up` holds
        // is private already.
        if let Some(was) = make_private(&path, effective_uid())? {
            tracing::warn!(
                "data directory {} was open to other users (mode {was:04o}); made it private (0700), since it holds the bus's password",
                path.display()
            );
        }
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK_FILE))
            .map_err(unusable)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = lock.read_to_string(&mut text);
                return Err(DataDirError::InUse {
                    path,
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(err)) => return Err(unusable(err)),
        }
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(unusable)?;
        Ok(Self { path, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The password of user `agentbus`, generated and stored (0600) on first use.
    pub fn password(&self) -> Result<String, DataDirError> {
        secret_in(&self.path, PASSWORD_FILE)
    }

    /// The token of the web dashboard, generated and stored (0600) on first use.
    pub fn dashboard_token(&self) -> Result<String, DataDirError> {
        secret_in(&self.path, DASHBOARD_TOKEN_FILE)
    }

    /// Path of `connection.env`.
    pub fn connection_file(&self) -> PathBuf {
        self.path.join(CONNECTION_FILE)
    }

    /// Writes `connection.env` (0600).
    pub fn write_connection_file(&self, file: &ConnectionFile) -> Result<(), DataDirError> {
        write_private(&self.connection_file(), &file.render()).map_err(|source| {
            DataDirError::Unusable {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Removes `connection.env`, so clients stop finding a bus that is not running.
    pub fn remove_connection_file(&self) {
        let _ = std::fs::remove_file(self.connection_file());
    }
}

/// The secret kept in file `name` of directory `dir`, generated and stored
/// (0600) when the file is missing or empty. `dir` must exist.
pub fn secret_in(dir: &Path, name: &str) -> Result<String, DataDirError> {
    let file = dir.join(name);
    let unusable = |source: std::io::Error| DataDirError::UnusableFile {
        path: dir.to_owned(),
        file: file.clone(),
        source,
    };
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(unusable(err)),
    }
    let secret = new_password();
    write_private(&file, &format!("{secret}\n")).map_err(unusable)?;
    Ok(secret)
}

/// A new random password for a nats-server user. nats-server reads a
/// config value as a token: starting with a letter keeps it a string (an
/// all-digit or date-like value would parse as a number or a date).
pub fn new_password() -> String {
    let mut rng = rand::rng();
    let first = char::from(b'a' + rng.random_range(0..26u8));
    std::iter::once(first)
        .chain(
            (&mut rng)
                .sample_iter(&rand::distr::Alphanumeric)
                .take(PASSWORD_LEN - 1)
                .map(char::from),
        )
        .collect()
}

/// The user this process acts as.
#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes nothing, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes `path` private (0700) when group or others have any access to it,
/// if user `me` owns it. Returns the mode it had when it was changed.
fn make_private(path: &Path, me: u32) -> Result<Option<u32>, DataDirError> {
    let metadata = std::fs::metadata(path).map_err(|source| DataDirError::Unusable {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    let not_private = |source| DataDirError::NotPrivate {
        path: path.to_owned(),
        mode,
        source,
    };
    if metadata.uid() != me {
        return Err(not_private(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("it belongs to user {}, not to user {me}", metadata.uid()),
        )));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_MODE))
        .map_err(not_private)?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_new_directory_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/.agentbus");
        DataDir::open_exclusive(&path).unwrap();
        assert_eq!(mode_of(&path), PRIVATE_MODE);
        assert_eq!(mode_of(&dir.path().join("new")), PRIVATE_MODE);
    }

    #[test]
    fn an_open_directory_is_made_private_and_its_contents_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".agentbus");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("nats.conf"), "port: 4222\n").unwrap();
        std::fs::create_dir(path.join("jetstream")).unwrap();
        set_mode(&path.join("nats.conf"), 0o644);
        set_mode(&path.join("jetstream"), 0o755);
        set_mode(&path, 0o755);

        let data = DataDir::open_exclusive(&path).unwrap();
        assert_eq!(mode_of(&path), PRIVATE_MODE);
        assert_eq!(mode_of(&path.join("nats.conf")), 0o644);
        assert_eq!(mode_of(&path.join("jetstream")), 0o755);
        assert_eq!(
            std::fs::read_to_string(path.join("nats.conf")).unwrap(),
            "port: 4222\n"
        );
        drop(data);
        // Private already: nothing to change.
        let me = std::fs::metadata(&path).unwrap().uid();
        assert_eq!(make_private(&path, me).unwrap(), None);
    }

    #[test]
    fn an_open_directory_of_another_user_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        let owner = std::fs::metadata(dir.path()).unwrap().uid();
        let other = owner.wrapping_add(1);
        let err = make_private(dir.path(), other).unwrap_err();
        assert_eq!(err.kind(), DataDirErrorKind::NotPrivate);
        let path = dir.path().display();
        assert_eq!(
            err.to_string(),
            format!(
                "data directory {path} is open to other users (mode 0755) and cannot be made private: it belongs to user {owner}, not to user {other}; run `chmod 700 {path}` as its owner, or pass --data-dir with a directory of your own"
            )
        );
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(mode_of(dir.path()), 0o755);
    }

    #[test]
    fn second_holder_is_refused_and_told_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open_exclusive(dir.path()).unwrap();
        let err = DataDir::open_exclusive(dir.path()).unwrap_err();
        assert!(
            matches!(err, DataDirError::InUse { pid: Some(p), .. } if p == std::process::id()),
            "{err}"
        );
        drop(first);
        assert!(DataDir::open_exclusive(dir.path()).is_ok());
    }

    #[test]
    fn password_is_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open_exclusive(dir.path()).unwrap();
        let first = data.password().unwrap();
        assert_eq!(first.len(), PASSWORD_LEN);
        assert!(
            first.starts_with(|c: char| c.is_ascii_lowercase()),
            "{first}"
        );
        assert_eq!(data.password().unwrap(), first);
        let mode = std::fs::metadata(dir.path().join(PASSWORD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn unwritable_directory_is_one_clear_error() {
        let err = DataDir::open_exclusive(Path::new("/proc/agentbus-data")).unwrap_err();
        assert!(
            err.to_string()
                .contains("pass --data-dir with a writable directory"),
            "{err}"
        );
    }

    #[test]
    fn kinds_say_in_use_or_unusable_and_keep_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDir::open_exclusive(dir.path()).unwrap();
        let err = DataDir::open_exclusive(dir.path()).unwrap_err();
        assert_eq!(err.kind(), DataDirErrorKind::InUse);

        let err = DataDir::open_exclusive(Path::new("/proc/agentbus-data")).unwrap_err();
        assert_eq!(err.kind(), DataDirErrorKind::Unusable);
        assert!(
            std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>()),
            "{err:?}"
        );
    }

    #[test]
    fn an_unreadable_password_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open_exclusive(dir.path()).unwrap();
        // A directory where the password file should be cannot be read as one.
        std::fs::create_dir(dir.path().join(PASSWORD_FILE)).unwrap();
        let err = data.password().unwrap_err();
        assert_eq!(err.kind(), DataDirErrorKind::Unusable);
        let file = data.path().join(PASSWORD_FILE);
        let source = std::error::Error::source(&err).expect("the read's I/O error");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot use data directory {}: {}: {source}; pass --data-dir with a writable directory",
                data.path().display(),
                file.display()
            )
        );
    }
}
