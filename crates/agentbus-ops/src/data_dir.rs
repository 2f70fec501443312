//! The data directory of `agentbus up`: one running bus per directory.
//!
//! Which directory that is (`--data-dir`, `AGENTBUS_DATA_DIR`, `./.agentbus`)
//! is decided by [`agentbus::connect::resolve_data_dir`], since clients look for
//! its `connection.env` the same way. This module holds the directory for one
//! `up`: its lock, its password and its `connection.env`.
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
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The user `agentbus up` creates.
pub const BUS_USER: &str = "agentbus";

const LOCK_FILE: &str = "up.lock";
const PASSWORD_FILE: &str = "password";
const PASSWORD_LEN: usize = 32;

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory or a file in it could not be created or read.
    #[error("cannot use data directory {}: {reason}; pass --data-dir with a writable directory", .path.display())]
    Unusable {
        /// The data directory.
        path: PathBuf,
        /// What failed.
        reason: String,
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
}

/// A data directory held exclusively by this process until dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory (mode 0700) if needed and takes its lock.
    /// Fails without touching anything when another process holds it.
    pub fn open_exclusive(path: &Path) -> Result<Self, DataDirError> {
        let unusable = |reason: String| DataDirError::Unusable {
            path: path.to_owned(),
            reason,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|err| unusable(err.to_string()))?;
        let path = path
            .canonicalize()
            .map_err(|err| unusable(err.to_string()))?;
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK_FILE))
            .map_err(|err| unusable(err.to_string()))?;
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
            Err(TryLockError::Error(err)) => return Err(unusable(err.to_string())),
        }
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(|err| unusable(err.to_string()))?;
        Ok(Self { path, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The password of user `agentbus`, generated and stored (0600) on first use.
    pub fn password(&self) -> Result<String, DataDirError> {
        let file = self.path.join(PASSWORD_FILE);
        let unusable = |err: std::io::Error| DataDirError::Unusable {
            path: self.path.clone(),
            reason: format!("{}: {err}", file.display()),
        };
        match std::fs::read_to_string(&file) {
            Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(unusable(err)),
        }
        // nats-server reads the value of the variable holding the password as
        // a config token: starting with a letter keeps it a string (an
        // all-digit or date-like value would parse as a number or a date).
        let mut rng = rand::rng();
        let first = char::from(b'a' + rng.random_range(0..26u8));
        let password: String = std::iter::once(first)
            .chain(
                (&mut rng)
                    .sample_iter(&rand::distr::Alphanumeric)
                    .take(PASSWORD_LEN - 1)
                    .map(char::from),
            )
            .collect();
        write_private(&file, &format!("{password}\n")).map_err(unusable)?;
        Ok(password)
    }

    /// Path of `connection.env`.
    pub fn connection_file(&self) -> PathBuf {
        self.path.join(CONNECTION_FILE)
    }

    /// Writes `connection.env` (0600).
    pub fn write_connection_file(&self, file: &ConnectionFile) -> Result<(), DataDirError> {
        write_private(&self.connection_file(), &file.render()).map_err(|err| {
            DataDirError::Unusable {
                path: self.path.clone(),
                reason: err.to_string(),
            }
        })
    }

    /// Removes `connection.env`, so clients stop finding a bus that is not running.
    pub fn remove_connection_file(&self) {
        let _ = std::fs::remove_file(self.connection_file());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
}
