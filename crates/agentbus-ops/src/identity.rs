//! Agent identities of a local bus: one nkey per agent, its permissions,
//! and the server's authorization file built from them.
//!
//! ```text
//! <data-dir>/
//!   identities.json    every agent identity: public key and grant (0600)
//!   auth.conf          the server's `authorization` block, generated (0600)
//!   nats-server.pid    the running server's pid, to reload it
//!   agents/<name>.nk   an agent's nkey seed (0600)
//!   agents/<name>.env  NATS_URL, NATS_NKEY, AGENTBUS_AGENT and AGENTBUS_WORK_TYPES (0600)
//! ```
//!
//! The seed never reaches the server: it knows the public key only. Adding
//! or revoking an identity rewrites `auth.conf` and asks the server to reload
//! (SIGHUP): other connections stay up, and a revoked agent's connection is
//! closed by the server.

use crate::private_file::write_private;
use agentbus::ServerTarget;
use agentbus::connect::{AGENT_VAR, NATS_URL_VAR, NKEY_VAR, WORK_TYPES_VAR};
use agentbus::connect::{ConnectErrorKind, Credentials, TargetSource};
use agentbus::permissions::Grant;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a change may take to reach the running server.
const APPLY_WITHIN: Duration = Duration::from_secs(10);

/// File listing every agent identity.
pub const IDENTITIES_FILE: &str = "identities.json";
/// The server's generated authorization block.
pub const AUTH_FILE: &str = "auth.conf";
/// Where the server writes its pid.
pub const PID_FILE: &str = "nats-server.pid";
/// Directory of the agents' seed and env files.
pub const AGENTS_DIR: &str = "agents";
/// Variable through which the server reads the operator's password.
pub const PASSWORD_VAR: &str = "AGENTBUS_NATS_PASSWORD";

/// Agent `agent`'s env file in data directory `dir`
/// (`<dir>/agents/<agent>.env`), whether or not it exists.
pub fn env_file(dir: &Path, agent: &str) -> PathBuf {
    dir.join(AGENTS_DIR).join(format!("{agent}.env"))
}

/// Agent `agent`'s nkey seed file in data directory `dir`.
fn seed_file(dir: &Path, agent: &str) -> PathBuf {
    dir.join(AGENTS_DIR).join(format!("{agent}.nk"))
}

/// One agent identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// What the agent may do.
    #[serde(flatten)]
    pub grant: Grant,
    /// Its nkey's public key (`U...`): all the server knows of it.
    pub public_key: String,
    /// When it was made (RFC 3339).
    pub created: String,
}

/// Why identities could not be read, written or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("cannot use {}: {source}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `identities.json` is not what agentbus writes.
    #[error("cannot read {}: {source}; restore it or remove it and add the identities again", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// No identity has this name.
    #[error("no agent identity named {0}; `agentbus creds list` shows them")]
    Unknown(String),
    /// The key pair could not be made.
    #[error("cannot make an nkey: {0}")]
    Key(String),
    /// The operator could not connect to provision the agent's consumers.
    #[error(transparent)]
    Connect(#[from] agentbus::ConnectError),
    /// The agent's consumers could not be provisioned.
    #[error(transparent)]
    Provision(#[from] agentbus::delivery::ConsumerError),
    /// The server did not take the new identity in time.
    #[error(
        "the server did not take agent {agent}'s identity within {}s; see nats-server.log in the data directory",
        .within.as_secs()
    )]
    NotAccepted {
        /// The agent.
        agent: String,
        /// How long it was given.
        within: Duration,
    },
    /// The server still accepted a revoked identity after the reload.
    #[error(
        "the server still accepts agent {agent}'s revoked key after {}s; see nats-server.log in the data directory",
        .within.as_secs()
    )]
    StillAccepted {
        /// The agent.
        agent: String,
        /// How long it was given.
        within: Duration,
    },
}

/// What [`Identities::add`] made.
#[derive(Debug, Clone)]
pub struct Added {
    /// The identity.
    pub identity: Identity,
    /// Its env file.
    pub env_file: PathBuf,
    /// Its seed file.
    pub seed_file: PathBuf,
}

/// The agent identities of one data directory.
#[derive(Debug)]
pub struct Identities {
    dir: PathBuf,
    list: Vec<Identity>,
}

impl Identities {
    /// Reads the identities of `dir` (none when it has no file yet).
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(IDENTITIES_FILE);
        let list = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|source| IdentityError::Corrupt { path, source })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(IdentityError::File { path, source }),
        };
        Ok(Self {
            dir: dir.to_owned(),
            list,
        })
    }

    /// Every identity, by name.
    pub fn list(&self) -> &[Identity] {
        &self.list
    }

    /// Makes a new identity for `grant` (replacing the agent's previous one
    /// and its key), writes its seed and env file, and saves the list.
    /// `nats_url` (without credentials) goes into the env file.
    pub fn add(&mut self, grant: Grant, nats_url: &str) -> Result<Added, IdentityError> {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair
            .seed()
            .map_err(|err| IdentityError::Key(err.to_string()))?;
        create_private_dir(&self.dir.join(AGENTS_DIR))?;
        let seed_file = seed_file(&self.dir, grant.agent.as_str());
        let env_file = env_file(&self.dir, grant.agent.as_str());
        let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        write(&seed_file, &format!("{seed}\n"))?;
        write(
            &env_file,
            &format!(
                "# The identity of agent {agent}, made by `agentbus creds add`: keep it private.\n{NATS_URL_VAR}={nats_url}\n{NKEY_VAR}={seed}\n{AGENT_VAR}={agent}\n{WORK_TYPES_VAR}={work_types}\n",
                agent = grant.agent,
                work_types = grant
                    .work_types
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                seed = absolute(&seed_file).display(),
            ),
        )?;
        let identity = Identity {
            grant,
            public_key: pair.public_key(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        self.list.retain(|i| i.grant.agent != identity.grant.agent);
        self.list.push(identity.clone());
        self.list.sort_by(|a, b| a.grant.agent.cmp(&b.grant.agent));
        self.save()?;
        Ok(Added {
            identity,
            env_file: absolute(&env_file),
            seed_file: absolute(&seed_file),
        })
    }

    /// Removes `agent`'s identity and its files, and saves the list.
    pub fn revoke(&mut self, agent: &str) -> Result<Identity, IdentityError> {
        let index = self
            .list
            .iter()
            .position(|i| i.grant.agent.as_str() == agent)
            .ok_or_else(|| IdentityError::Unknown(agent.to_owned()))?;
        let identity = self.list.remove(index);
        self.save()?;
        for file in [seed_file(&self.dir, agent), env_file(&self.dir, agent)] {
            let _ = std::fs::remove_file(file);
        }
        Ok(identity)
    }

    fn save(&self) -> Result<(), IdentityError> {
        let text = serde_json::to_string_pretty(&self.list).expect("identities serialize");
        write(&self.dir.join(IDENTITIES_FILE), &text)
    }

    /// The server's `authorization` block: the operator `operator` (its
    /// password read from [`PASSWORD_VAR`]) and every agent identity with
    /// its permissions.
    pub fn authorization(&self, operator: &str) -> String {
        let mut out = String::from(
            "# Generated by agentbus from identities.json; edits are overwritten.\nauthorization {\n  users = [\n",
        );
        out.push_str(&format!(
            "    {{ user: {operator:?}, password: ${PASSWORD_VAR} }}\n"
        ));
        for identity in &self.list {
            out.push_str(&user_entry(identity));
        }
        out.push_str("  ]\n}\n");
        out
    }

    /// Writes [`Identities::authorization`] to the directory's `auth.conf`,
    /// and to that of each further node of a cluster it runs
    /// ([`node_dirs`]). Returns the directory's own.
    pub fn write_authorization(&self, operator: &str) -> Result<PathBuf, IdentityError> {
        let text = self.authorization(operator);
        for dir in node_dirs(&self.dir) {
            write(&dir.join(AUTH_FILE), &text)?;
        }
        Ok(self.dir.join(AUTH_FILE))
    }

    /// Writes `auth.conf` and asks the directory's running servers (one, or
    /// each node of a cluster), if any, to reload it. `Ok(false)` when no
    /// server runs there.
    pub fn apply(&self, operator: &str) -> Result<bool, IdentityError> {
        self.write_authorization(operator)?;
        let mut reloaded = false;
        for dir in node_dirs(&self.dir) {
            reloaded |= reload(&dir);
        }
        Ok(reloaded)
    }
}

/// What [`enroll`] made.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The identity and its files.
    pub added: Added,
    /// The agent's server target (its credentials, accepted by the server);
    /// `None` when no server runs in the directory.
    pub target: Option<ServerTarget>,
}

/// Gives `grant`'s agent an identity, as `agentbus creds add` does: makes
/// it in `ids`, writes `auth.conf` for operator user `operator_user`, and,
/// when the directory's server runs, reloads it, provisions the agent's
/// consumers through `operator` and waits until the new identity is accepted.
pub async fn enroll(
    ids: &mut Identities,
    grant: Grant,
    operator: &ServerTarget,
    operator_user: &str,
) -> Result<Enrolled, IdentityError> {
    let url = operator.display_url().to_owned();
    let added = ids.add(grant.clone(), &url)?;
    if !ids.apply(operator_user)? {
        return Ok(Enrolled {
            added,
            target: None,
        });
    }
    // The signal is taken in the background, and the server may refuse a
    // connection while it reloads: the new key being accepted shows that
    // the reload is over, and only then does the operator connect.
    let target = ServerTarget::from_url(&url, TargetSource::Explicit)
        .with_credentials(Credentials::NkeyFile(added.seed_file.clone()))
        .with_agent(Some(grant.agent.clone()))
        .with_work_types(Some(grant.work_types.clone()));
    if !wait_until_accepted(&target, APPLY_WITHIN).await {
        return Err(IdentityError::NotAccepted {
            agent: grant.agent.to_string(),
            within: APPLY_WITHIN,
        });
    }
    let bus = agentbus::Bus::connect(operator, "agentbus-creds").await?;
    provision(&bus, &grant).await?;
    Ok(Enrolled {
        added,
        target: Some(target),
    })
}

/// Whether [`withdraw`] reached a running server.
#[derive(Debug, Clone)]
pub struct Withdrawn {
    /// The identity removed.
    pub identity: Identity,
    /// Whether a server ran in the directory and now refuses the identity.
    pub server_reloaded: bool,
}

/// Revokes `agent`'s identity, as `agentbus creds revoke` does: removes it
/// and its files, writes `auth.conf` and, when the directory's server runs,
/// reloads it and waits until the server, reached as `operator` says,
/// refuses the agent's key (its connections are closed by then).
pub async fn withdraw(
    ids: &mut Identities,
    agent: &str,
    operator: Option<&ServerTarget>,
    operator_user: &str,
) -> Result<Withdrawn, IdentityError> {
    // Kept in memory to tell when the server refuses it: the file goes now.
    let seed = std::fs::read_to_string(seed_file(&ids.dir, agent)).ok();
    let identity = ids.revoke(agent)?;
    if !ids.apply(operator_user)? {
        return Ok(Withdrawn {
            identity,
            server_reloaded: false,
        });
    }
    if let Some((seed, operator)) = seed.zip(operator) {
        let old = operator
            .clone()
            .with_agent(None)
            .with_credentials(Credentials::NkeySeed(seed.trim().to_owned()));
        let deadline = std::time::Instant::now() + APPLY_WITHIN;
        loop {
            match old.connect("agentbus-creds-probe").await {
                Err(err) if err.kind() == ConnectErrorKind::Refused => break,
                _ if std::time::Instant::now() > deadline => {
                    return Err(IdentityError::StillAccepted {
                        agent: agent.to_owned(),
                        within: APPLY_WITHIN,
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    Ok(Withdrawn {
        identity,
        server_reloaded: true,
    })
}

/// Makes the consumers `grant`'s agent works but may not make itself
/// (its inbox and direct channel), through `operator`, a connection that
/// may. Existing ones keep their cursor and messages.
pub async fn provision(
    operator: &agentbus::Bus,
    grant: &Grant,
) -> Result<(), agentbus::delivery::ConsumerError> {
    let defaults = agentbus::delivery::DeliveryOptions::default();
    for spec in grant.consumers().iter().filter(|s| s.is_provisioned()) {
        spec.create_sharing(operator, &defaults).await?;
    }
    Ok(())
}

/// Waits until the server accepts `target`'s credentials (after a reload),
/// up to `within`; `false` if it never did.
async fn wait_until_accepted(target: &ServerTarget, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if target.connect("agentbus-creds-probe").await.is_ok() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent's entry in the `users` list.
fn user_entry(identity: &Identity) -> String {
    let permissions = identity.grant.permissions();
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "    # agent {agent}\n    {{ nkey: {key:?}, permissions: {{\n      publish: {{ allow: [{publish}] }}\n      subscribe: {{ allow: [{subscribe}] }}\n      allow_responses: {{ max: 1, expires: \"{expires}s\" }}\n    }} }}\n",
        agent = identity.grant.agent,
        key = identity.public_key,
        publish = list(&permissions.publish),
        subscribe = list(&permissions.subscribe),
        expires = permissions.response_window.as_secs(),
    )
}

/// The directory of each further node of a cluster that `agentbus up
/// --cluster` runs in a data directory.
pub const NODES_DIR: &str = "nodes";

/// The directory of node `node` (1 and up) of a cluster run in data
/// directory `dir`; node 0 is `dir` itself.
pub fn node_dir(dir: &Path, node: usize) -> PathBuf {
    dir.join(NODES_DIR).join(format!("n{node}"))
}

/// `dir` and the directories of the further nodes of a cluster run in it
/// (`nodes/*`), in order: the servers whose users are `dir`'s identities.
pub fn node_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_owned()];
    if let Ok(entries) = std::fs::read_dir(dir.join(NODES_DIR)) {
        let mut nodes: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.is_dir())
            .collect();
        nodes.sort();
        dirs.extend(nodes);
    }
    dirs
}

/// Asks the server whose pid file is in `dir` to reload its configuration.
fn reload(dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    else {
        return false;
    };
    crate::local_server::send_reload(pid)
}

fn write(path: &Path, text: &str) -> Result<(), IdentityError> {
    write_private(path, text).map_err(|source| IdentityError::File {
        path: path.to_owned(),
        source,
    })
}

fn create_private_dir(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| IdentityError::File {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbus::Name;
    use agentbus::connect::OPERATOR_USER;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn add_writes_private_files_and_revoke_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Identities::load(dir.path()).unwrap();
        let added = ids
            .add(
                Grant::new(Name::parse("agent name", "bob").unwrap()),
                "nats://127.0.0.1:1",
            )
            .unwrap();
        for file in [&added.env_file, &added.seed_file] {
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        let env = std::fs::read_to_string(&added.env_file).unwrap();
        assert!(env.contains("NATS_URL=nats://127.0.0.1:1\n"), "{env}");
        assert!(env.contains("AGENTBUS_AGENT=bob\n"), "{env}");
        let seed = std::fs::read_to_string(&added.seed_file).unwrap();
        assert!(seed.starts_with("SU"), "an nkey user seed");
        assert!(
            !env.contains(seed.trim()),
            "the env file names the seed file, not the seed"
        );
        let auth = ids.authorization(OPERATOR_USER);
        assert!(auth.contains(&added.identity.public_key));
        assert!(
            !auth.contains(seed.trim()),
            "the server never gets the seed"
        );
        assert_eq!(Identities::load(dir.path()).unwrap().list().len(), 1);
        ids.revoke("bob").unwrap();
        assert!(!added.env_file.exists() && !added.seed_file.exists());
        assert!(Identities::load(dir.path()).unwrap().list().is_empty());
        assert!(matches!(ids.revoke("bob"), Err(IdentityError::Unknown(_))));
    }
}
