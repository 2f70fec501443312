//! What the README promises that no other test covers: its install step puts
//! a working `agentbus` into a root's `bin` without compiling anything again,
//! its MCP client configuration starts the bridge from there, and its
//! retention table states the values of the topology and of the code.

mod common;

use agentbus::delivery::{ConsumerSpec, DeliveryOptions, Queue};
use agentbus::presence::PresenceOptions;
use agentbus::{AgentOptions, Name};
use agentbus_ops::topology::Topology;
use agentbus_testkit::NatsServer;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const README: &str = include_str!("../../../README.md");
/// The install, reusing this build, takes well under this; a rebuild would not.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the bridge may take to answer one MCP request.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- install

/// Runs the README's install command, as written, into a temporary root
/// (`--root`), offline, on the target directory and profile this test was
/// built in: what `cargo test` compiled is what gets installed, so the step is
/// tested without a second build. The feature sets are compared first, with
/// `cargo tree`, because an install with other features would compile a
/// dozen crates again (and replace the `agentbus` other tests run). Even
/// when it compiles nothing, cargo links `target/<profile>/agentbus` again
/// (to the same file): no other test of this binary runs it.
#[tokio::test]
async fn the_install_step_puts_agentbus_on_path_and_the_mcp_configuration_starts_it() {
    let install = readme_command("cargo install ");
    assert_eq!(install, "cargo install --locked --path crates/agentbus-cli");
    let build = Build::of_this_test();
    build.assert_install_shares_the_features_of_the_tests();

    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut command = tokio::process::Command::from(cargo());
    command
        .args(install.split_whitespace().skip(1))
        .arg("--offline")
        .arg("--root")
        .arg(root.path())
        .args(&build.profile_args)
        .env("CARGO_TARGET_DIR", &build.target_dir)
        .kill_on_drop(true);
    let out = tokio::time::timeout(INSTALL_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("`{install}` did not finish within {INSTALL_TIMEOUT:?}"))
        .expect("run cargo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "`{install}` failed:\n{stderr}");
    assert!(
        !stderr.contains("Compiling"),
        "`{install}` compiled again instead of reusing this build:\n{stderr}"
    );
    eprintln!("installed in {:?}", started.elapsed());

    let bin = root.path().join("bin");
    let version = std::process::Command::new(bin.join("agentbus"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("agentbus {}\n", env!("CARGO_PKG_VERSION"))
    );

    mcp_configuration_starts_the_bridge(&bin).await;
}

/// The README's MCP client configuration, with the installed `bin` on `PATH`
/// and an identity for claude on the test server in place of the
/// placeholders: the client starts `agentbus` by name, and the bridge
/// answers MCP and is on the bus as claude.
async fn mcp_configuration_starts_the_bridge(bin: &Path) {
    let config = readme_mcp_configuration();
    let entry = &config["mcpServers"]["agentbus"];
    assert_eq!(entry["command"], "agentbus", "{config}");
    let args: Vec<&str> = entry["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["mcp", "--agent", "claude"]);
    assert_eq!(
        entry["env"],
        json!({
            "NATS_URL": "nats://127.0.0.1:4222",
            "NATS_NKEY": "/path/to/.agentbus/agents/claude.nk",
            "AGENTBUS_AGENT": "claude",
        })
    );

    // claude's identity, made as `agentbus creds add claude` makes it.
    let server = NatsServer::start().await;
    let claude = server
        .add_identity(agentbus::permissions::Grant::new(
            agentbus::Name::parse("agent name", "claude").unwrap(),
        ))
        .await;
    let agentbus::connect::Credentials::NkeyFile(seed) = claude.credentials() else {
        panic!("an nkey identity")
    };
    let path = std::env::join_paths(std::iter::once(bin.to_owned()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let mut command = common::program(entry["command"].as_str().unwrap());
    command
        .args(&args)
        .env("PATH", path)
        .env_remove("AGENTBUS_DATA_DIR")
        .env("NATS_URL", claude.display_url())
        .env("NATS_NKEY", seed)
        .env("AGENTBUS_AGENT", "claude")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().expect("start `agentbus` from PATH");
    let mut mcp = McpClient {
        stdin: child.stdin.take().unwrap(),
        stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
    };

    let initialized = mcp
        .call(
            1,
            "initialize",
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "readme-check", "version": "1.0"}
            }),
        )
        .await;
    assert_eq!(
        initialized["result"]["serverInfo"]["name"], "agentbus",
        "{initialized}"
    );
    let tools = mcp.call(2, "tools/list", json!({})).await;
    let names: BTreeSet<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{tools}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains("send_message"), "{names:?}");
    let agents = mcp
        .call(
            3,
            "tools/call",
            json!({"name": "list_agents", "arguments": {}}),
        )
        .await;
    let text = agents["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{agents}"));
    let listed: Value = serde_json::from_str(text).unwrap();
    assert!(
        names_in(&listed).contains(&"claude".to_owned()),
        "the bridge is not on the bus: {listed}"
    );
}

/// An MCP client over the bridge's stdio: one JSON-RPC message per line.
struct McpClient {
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl McpClient {
    /// Sends request `id` and waits for its answer (skipping notifications).
    async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.stdin
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self
                    .stdout
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the bridge runs");
                let message: Value = serde_json::from_str(&line).unwrap();
                if message["id"] == id {
                    return message;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within {WAIT:?}"))
    }
}

/// Every `"name"` in `value`, at any depth.
fn names_in(value: &Value) -> Vec<String> {
    match value {
        Value::Object(map) => map
            .iter()
            .flat_map(|(key, v)| match (key.as_str(), v) {
                ("name", Value::String(name)) => vec![name.clone()],
                _ => names_in(v),
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(names_in).collect(),
        _ => Vec::new(),
    }
}

/// Where and how this test was built.
struct Build {
    /// The target directory.
    target_dir: PathBuf,
    /// What selects this build's profile (and target) for `cargo install`.
    profile_args: Vec<String>,
}

impl Build {
    /// Read from the path of the `agentbus` binary built beside this test:
    /// `<target>[/<triple>]/<profile dir>/agentbus`.
    fn of_this_test() -> Self {
        let binary = Path::new(common::BIN);
        let profile_dir = binary.parent().unwrap();
        let mut profile_args = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => vec!["--debug".to_owned()],
            "release" => Vec::new(),
            custom => vec!["--profile".to_owned(), custom.to_owned()],
        };
        let mut target_dir = profile_dir.parent().unwrap().to_owned();
        // Cargo tags the target directory's root; a triple's directory is below it.
        if !target_dir.join("CACHEDIR.TAG").exists() {
            let triple = target_dir.file_name().unwrap().to_str().unwrap().to_owned();
            profile_args.extend(["--target".to_owned(), triple]);
            target_dir = target_dir.parent().unwrap().to_owned();
        }
        Self {
            target_dir,
            profile_args,
        }
    }

    /// Every package of the installed tree has the features it has in the
    /// workspace's test tree: cargo then reuses what the tests compiled.
    fn assert_install_shares_the_features_of_the_tests(&self) {
        let installed = self.tree(&["-p", "agentbus-cli", "-e", "normal,build"]);
        let tests = self.tree(&["--workspace"]);
        let differing: Vec<&String> = installed.difference(&tests).collect();
        assert!(
            differing.is_empty(),
            "`cargo install --path crates/agentbus-cli` would compile these again, with other features than the workspace (ask for the workspace's features in crates/agentbus-cli/Cargo.toml): {differing:#?}"
        );
    }

    /// `package version|features` of every package in a `cargo tree`.
    fn tree(&self, select: &[&str]) -> BTreeSet<String> {
        let out = cargo()
            .args(["tree", "--offline", "--locked", "--prefix", "none"])
            .args(["-f", "{p}|{f}"])
            .args(select)
            .args(self.target_args())
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|line| line.trim_end_matches(" (*)").to_owned())
            .filter(|line| !line.is_empty())
            .collect()
    }

    /// `--target <triple>`, when the build had one.
    fn target_args(&self) -> Vec<String> {
        match self.profile_args.iter().position(|a| a == "--target") {
            Some(at) => self.profile_args[at..at + 2].to_vec(),
            None => Vec::new(),
        }
    }
}

/// Cargo, in the workspace, with the environment of the `cargo test` that
/// runs this test: without the variables cargo sets for the test itself.
/// Build scripts watch some of them (ring's reruns when `CARGO_PKG_NAME`
/// changes), so with them cargo would compile again what the tests compiled.
fn cargo() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_for_the_test = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CFG_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || [
                "CARGO",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name);
        if set_for_the_test {
            command.env_remove(name);
        }
    }
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    command
}

/// The one command line of the README that starts with `prefix`, without
/// its comment.
fn readme_command(prefix: &str) -> String {
    let lines: Vec<&str> = README
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split(" #").next().unwrap().trim())
        .collect();
    assert_eq!(lines.len(), 1, "{prefix:?} in the README: {lines:?}");
    lines[0].to_owned()
}

/// The README's JSON block with `mcpServers`.
fn readme_mcp_configuration() -> Value {
    let blocks: Vec<&str> = README
        .split("```json\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .filter(|block| block.contains("mcpServers"))
        .collect();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    serde_json::from_str(blocks[0]).unwrap()
}

// ---------------------------------------------------------------- retention

/// The README's "Retention and expiry" table: each row's cells by its first
/// cell, with the header row and the separator left out.
fn retention_table() -> BTreeMap<String, Vec<String>> {
    let section = README
        .split("\n## Retention and expiry\n")
        .nth(1)
        .expect("the README has a Retention and expiry section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| ---"))
        .skip(1)
        .map(|line| {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect();
            assert_eq!(cells.len(), 4, "{line}");
            (cells[0].clone(), cells[1..].to_vec())
        })
        .collect()
}

/// The row whose first cell starts with `what`: its kept, limits and then cells.
fn row<'a>(table: &'a BTreeMap<String, Vec<String>>, what: &str) -> &'a [String] {
    let rows: Vec<&Vec<String>> = table
        .iter()
        .filter(|(first, _)| first.starts_with(what))
        .map(|(_, cells)| cells)
        .collect();
    assert_eq!(rows.len(), 1, "rows starting with {what:?}: {table:#?}");
    rows[0]
}

#[test]
fn the_retention_table_states_the_topology_and_the_defaults_of_the_code() {
    let table = retention_table();
    let topology = Topology::standard();

    // One row per stream and bucket, and none for anything else.
    let named: BTreeSet<&str> = table
        .keys()
        .filter(|first| first.starts_with("stream `") || first.starts_with("KV `"))
        .map(|first| first.split('`').nth(1).unwrap())
        .collect();
    let shipped: BTreeSet<&str> = topology
        .streams
        .iter()
        .map(|s| s.name.as_str())
        .chain(topology.buckets.iter().map(|b| b.name.as_str()))
        .collect();
    assert_eq!(named, shipped);

    for spec in &topology.streams {
        let cells = row(&table, &format!("stream `{}`", spec.name));
        assert!(
            cells[0].starts_with(&human_duration(spec.max_age)),
            "{}: {cells:?}",
            spec.name
        );
        assert_eq!(
            cells[1],
            format!(
                "{} msgs, {}",
                thousands(spec.max_msgs.try_into().unwrap()),
                human_size(spec.max_bytes)
            ),
            "{}",
            spec.name
        );
    }
    for bucket in &topology.buckets {
        let cells = row(&table, &format!("KV `{}`", bucket.name));
        assert!(
            cells[0].starts_with(&human_duration(bucket.max_age)),
            "{}: {cells:?}",
            bucket.name
        );
        if let Some(markers) = bucket.limit_markers {
            let said = format!("an expiry marker stays {}", human_duration(markers));
            assert!(cells[2].contains(&said), "{}: {cells:?}", bucket.name);
        }
    }

    let windows: BTreeSet<Duration> = topology
        .streams
        .iter()
        .map(|s| s.duplicate_window)
        .collect();
    assert_eq!(windows.len(), 1, "one duplicate window for every stream");
    let window = windows.into_iter().next().unwrap();
    assert_eq!(
        row(&table, "duplicate window of every stream")[0],
        human_duration(window)
    );

    let agent = AgentOptions::default();
    let retries = row(&table, "retry memory of an agentbus runtime");
    assert_eq!(retries[0], human_duration(agent.dedup_window));
    assert_eq!(
        retries[1],
        format!(
            "about {} task ids per agent",
            thousands(u64::try_from(agent.dedup_capacity).unwrap())
        )
    );

    assert_eq!(
        row(&table, "a cancelled handler that does not stop")[0],
        format!(
            "{} (`AgentOptions::cancel_grace`)",
            human_duration(agent.cancel_grace)
        )
    );

    let delivery = DeliveryOptions::default();
    let handled = row(&table, "a task or message being handled");
    assert_eq!(
        handled[0],
        format!(
            "{} without an ack or a progress ack",
            human_duration(delivery.ack_wait)
        )
    );
    assert_eq!(handled[1], format!("{} deliveries", delivery.max_deliver));

    let presence = PresenceOptions::default();
    let heartbeat = format!(
        "{} without a heartbeat (one every {})",
        human_duration(presence.offline_after),
        human_duration(presence.interval)
    );
    let presence_row = row(&table, "KV `agent-presence`");
    assert!(presence_row[0].ends_with(&heartbeat), "{presence_row:?}");

    let queue_consumer = ConsumerSpec::task_queue(
        &Queue::Agent(Name::parse("agent", "a").unwrap()),
        agentbus::Priority::Normal,
    );
    assert_eq!(
        row(&table, "work-queue consumers")[0],
        format!(
            "{} idle (inactive threshold)",
            human_duration(queue_consumer.inactive_threshold().unwrap())
        )
    );
    assert_eq!(
        ConsumerSpec::inbox(&Name::parse("agent", "a").unwrap()).inactive_threshold(),
        None,
        "the README says inbox consumers are kept"
    );

    assert_eq!(
        row(&table, "a task claimed through the MCP bridge")[0],
        human_duration(agentbus_mcp::CLAIM_LEASE)
    );
}

/// `7 days`, `2 min`, `30 s`: the README's way of writing a duration.
fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    assert_eq!(Duration::from_secs(seconds), duration, "whole seconds only");
    match seconds {
        86_400 => "1 day".to_owned(),
        s if s.is_multiple_of(86_400) => format!("{} days", s / 86_400),
        s if s >= 60 && s.is_multiple_of(60) => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// `100 MiB`: sizes in the README.
fn human_size(bytes: i64) -> String {
    const UNITS: [(i64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(unit, _)| bytes % unit == 0)
        .map_or_else(
            || format!("{bytes} B"),
            |(unit, name)| format!("{} {name}", bytes / unit),
        )
}

/// `10,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
