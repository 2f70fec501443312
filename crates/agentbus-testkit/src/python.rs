//! Python virtual environments for the interoperability tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The python of a virtual environment under `root` with `package==version`
/// installed, created unless an earlier run finished it. A lock file keeps
/// concurrent test processes from building the same environment at once.
pub fn python_venv(root: &Path, package: &str, version: &str) -> PathBuf {
    std::fs::create_dir_all(root).expect("create the directory for python venvs");
    let venv = root.join(format!("python-venv-{package}-{version}"));
    let python = venv.join("bin").join("python");
    let ready = venv.join(".agentbus-ready");
    let lock = std::fs::File::create(root.join(format!("python-venv-{package}.lock")))
        .expect("create the lock file");
    lock.lock().expect("lock the python venv");
    if !(ready.exists() && python.exists()) {
        let _ = std::fs::remove_dir_all(&venv);
        run_setup(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (install python3 >= 3.10 with its venv module, e.g. apt-get install python3-venv)",
        );
        run_setup(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("{package}=={version}"),
            ]),
            &format!("pip install {package}"),
        );
        std::fs::write(&ready, version).expect("mark the venv ready");
    }
    python
}

fn run_setup(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
