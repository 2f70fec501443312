//! npm packages for the interoperability tests (nats.js, the MCP Inspector),
//! installed with the machine's `npm` into a directory that later tests and
//! later runs reuse.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory under `root` whose `node_modules` holds `packages`
/// (`name@version` each), installed unless an earlier run finished it. A lock
/// file keeps concurrent test processes from installing the same set at once.
///
/// Scripts `require` the packages with `NODE_PATH=<dir>/node_modules`;
/// commands they ship are in `<dir>/node_modules/.bin`.
pub fn npm_packages(root: &Path, packages: &[&str]) -> PathBuf {
    assert!(!packages.is_empty(), "name at least one npm package");
    std::fs::create_dir_all(root).expect("create the directory for npm packages");
    let name = dir_name(packages);
    let dir = root.join(&name);
    let ready = dir.join(".agentbus-ready");
    let wanted = packages.join("\n");
    let lock =
        std::fs::File::create(root.join(format!("{name}.lock"))).expect("create the lock file");
    lock.lock().expect("lock the npm package directory");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(wanted.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the npm package directory");
        let output = Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&dir)
            .args(["--no-audit", "--no-fund", "--loglevel=error"])
            .args(packages)
            .output()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run npm ({err}): install Node.js with npm (e.g. apt-get install nodejs npm)"
                )
            });
        assert!(
            output.status.success(),
            "npm install {} failed ({}): {}",
            packages.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(&ready, &wanted).expect("mark the npm packages ready");
    }
    dir
}

/// `npm-` and the packages, as one file name: `@scope/name@1.2` → `scope+name@1.2`.
fn dir_name(packages: &[&str]) -> String {
    let names: Vec<String> = packages
        .iter()
        .map(|p| p.trim_start_matches('@').replace('/', "+"))
        .collect();
    format!("npm-{}", names.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_named_after_the_packages() {
        assert_eq!(
            dir_name(&["@nats-io/services@3.0.0-25", "left-pad@1.3.0"]),
            "npm-nats-io+services@3.0.0-25-left-pad@1.3.0"
        );
    }
}
