//! Programs from Debian's packages that tests need (`redis-server`,
//! `chromium`): found on `PATH`, else installed with `apt-get` when the
//! tests run as root, once per machine (a lock file keeps parallel test
//! processes from installing at once); else the test panics saying how to
//! install it. Tests that need one are never skipped silently.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `program`, from `PATH` or installed from Debian package `package`;
/// `purpose` names the tests that need it, for the panic messages.
pub fn debian_program(program: &str, package: &str, purpose: &str) -> PathBuf {
    if let Some(path) = on_path(program) {
        return path;
    }
    if !(is_root() && on_path("apt-get").is_some()) {
        panic!(
            "{program} is not on PATH; install it (Debian/Ubuntu: `apt-get install {package}`) to run {purpose}"
        );
    }
    // One installer at a time across test processes; the others find it on PATH after.
    let lock_path = std::env::temp_dir().join(format!("agentbus-testkit-{package}-install.lock"));
    let lock = File::create(&lock_path)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|err| panic!("cannot lock {}: {err}", lock_path.display()));
    if let Some(path) = on_path(program) {
        return path;
    }
    eprintln!("agentbus-testkit: installing {package} with apt-get");
    for args in [
        &["update"][..],
        &["install", "-y", "--no-install-recommends", package][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|err| panic!("cannot run apt-get: {err}"));
        assert!(
            status.success(),
            "`apt-get {}` failed ({status}); install {package} by hand to run {purpose}",
            args.join(" ")
        );
    }
    on_path(program).unwrap_or_else(|| {
        panic!("apt-get installed {package} but {program} is not on PATH; add /usr/bin to PATH")
    })
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Whether this process runs as root (Linux; elsewhere assumed not).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}
