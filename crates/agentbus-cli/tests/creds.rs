//! `agentbus creds` against `agentbus up`: an identity per agent, its env
//! file, the sender it stamps, revocation, and the exported permissions on
//! a nats-server configured from them alone.

mod common;

use common::{Up, command, run};
use serde_json::json;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The variables of an env file written by `creds add`.
fn env_file(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `agentbus ARGS` with the variables of an env file, as an agent runs.
async fn run_as(env: &HashMap<String, String>, args: &[&str]) -> common::Output {
    let mut cmd = command();
    cmd.envs(env)
        .env("AGENTBUS_DATA_DIR", "/nonexistent")
        .args(args);
    let output = cmd.output().await.unwrap();
    common::Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: std::time::Duration::ZERO,
    }
}

#[tokio::test]
async fn add_list_send_revoke_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let up = Up::start(&data_dir, &[]).await;
    let data = data_dir.to_str().unwrap();

    let added = run(["creds", "add", "alice", "--json", "--data-dir", data]).await;
    let added = added.assert_success().json();
    assert_eq!(added["agent"], "alice");
    let alice_env_file = Path::new(added["env_file"].as_str().unwrap()).to_owned();
    let mode = std::fs::metadata(&alice_env_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let alice = env_file(&alice_env_file);
    assert_eq!(alice["AGENTBUS_AGENT"], "alice");
    assert_eq!(alice["NATS_URL"], up.client_url(), "no secret in the URL");
    let password = std::fs::read_to_string(data_dir.join("password")).unwrap();
    let text = std::fs::read_to_string(&alice_env_file).unwrap();
    assert!(
        !text.contains(password.trim()),
        "the operator password stays out"
    );
    run([
        "creds",
        "add",
        "bob",
        "--work-type",
        "summarize",
        "--data-dir",
        data,
    ])
    .await
    .assert_success();

    let list = run(["creds", "list", "--json", "--data-dir", data]).await;
    let list = list.assert_success().json();
    let names: Vec<&str> = list["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["agent"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(list["identities"][1]["work_types"], json!(["summarize"]));

    // Alice sends to bob with her env file: stored under her name.
    run_as(&alice, &["send", "bob", r#"{"hello": 1}"#])
        .await
        .assert_success();
    let js = up.jetstream().await;
    let stream = js.get_stream("agent-messages").await.unwrap();
    let stored = stream.get_raw_message(1).await.unwrap();
    assert_eq!(stored.subject.as_str(), "agent.bob.inbox.alice");
    // She queues a task for bob and asks where it stands: her identity may
    // not read the queue, and nobody holds the task, so it is queued.
    let started = std::time::Instant::now();
    let submitted = run_as(&alice, &["submit", "bob", "echo", "{}", "--json"]).await;
    // Without looking at bob's consumers, which her identity may not.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(submitted.status.success(), "{}", submitted.stderr);
    let submitted: serde_json::Value = serde_json::from_str(&submitted.stdout).unwrap();
    let task_id = submitted["task_id"].as_str().unwrap();
    let report = run_as(&alice, &["task", task_id, "--json"]).await;
    assert!(report.status.success(), "{}", report.stderr);
    let report: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(report["state"], "queued", "{report}");
    // She may not read bob's inbox.
    let out = run_as(&alice, &["tail", "agent.bob.inbox.>"]);
    let out = tokio::time::timeout(std::time::Duration::from_secs(3), out).await;
    if let Ok(out) = out {
        assert!(!out.stdout.contains("hello"), "{}", out.stdout);
    }

    // Export, then a plain nats-server configured from it alone.
    let exported = run(["creds", "export", "--data-dir", data]).await;
    let exported = exported.assert_success().stdout.clone();
    let conf_dir = tempfile::tempdir().unwrap();
    assert!(exported.contains("$AGENTBUS_NATS_PASSWORD"), "{exported}");
    assert!(
        !exported.contains(password.trim()),
        "the export holds no secret"
    );
    // The operator of that server puts its own password in (nats-server
    // reads a variable of an included file from the environment only).
    let with_password =
        exported.replace("$AGENTBUS_NATS_PASSWORD", &format!("{:?}", password.trim()));
    std::fs::write(conf_dir.path().join("agents.conf"), with_password).unwrap();
    let conf = conf_dir.path().join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:-1\"\njetstream {{ store_dir: {:?} }}\ninclude \"agents.conf\"\n",
            conf_dir.path().join("js"),
        ),
    )
    .unwrap();
    let other = agentbus_testkit::CustomNatsServer::start(["-c", conf.to_str().unwrap()]).await;
    let other_url = format!("nats://{}", other.address());
    let operator_url = format!("nats://agentbus:{}@{}", password.trim(), other.address());
    run(["setup", "--server", &operator_url])
        .await
        .assert_success();
    let mut alice_there = alice.clone();
    alice_there.insert("NATS_URL".into(), other_url.clone());
    run_as(&alice_there, &["send", "bob", r#"{"there": 1}"#])
        .await
        .assert_success();
    // There too, alice may not delete a stream, read bob's inbox by
    // sequence, have the task queues described or read bob's queue; she
    // may read the last task of her own (her worker's sweep).
    let target =
        agentbus::ServerTarget::from_url(&other_url, agentbus::connect::TargetSource::Explicit)
            .with_credentials(agentbus::connect::Credentials::NkeyFile(
                alice["NATS_NKEY"].clone().into(),
            ))
            .with_agent(Some(agentbus::Name::parse("agent", "alice").unwrap()));
    let client = target.connect("alice").await.unwrap();
    for (subject, body, allowed) in [
        ("$JS.API.STREAM.DELETE.agent-messages", "{}", false),
        (
            "$JS.API.STREAM.MSG.GET.agent-messages",
            r#"{"seq": 1}"#,
            false,
        ),
        (
            "$JS.API.STREAM.INFO.agent-tasks",
            r#"{"subjects_filter": ">"}"#,
            false,
        ),
        ("$JS.API.DIRECT.GET.agent-tasks.tasks.bob", "", false),
        ("$JS.API.DIRECT.GET.agent-tasks.tasks.alice", "", true),
    ] {
        let asked = client.request(subject, body.into());
        let answer = tokio::time::timeout(std::time::Duration::from_millis(500), asked).await;
        assert_eq!(
            matches!(answer, Ok(Ok(_))),
            allowed,
            "{subject}: {answer:?}"
        );
    }
    let operator =
        agentbus::ServerTarget::from_url(&operator_url, agentbus::connect::TargetSource::Explicit)
            .connect("operator")
            .await
            .unwrap();
    let js = async_nats::jetstream::new(operator);
    let stream = js.get_stream("agent-messages").await.unwrap();
    let stored = stream.get_raw_message(1).await.unwrap();
    assert_eq!(stored.subject.as_str(), "agent.bob.inbox.alice");

    // Revoked: the server refuses alice's key, with the server still up.
    let seed = std::fs::read_to_string(&alice["NATS_NKEY"]).unwrap();
    let kept = dir.path().join("alice.nk");
    std::fs::write(&kept, seed).unwrap();
    let revoked = run(["creds", "revoke", "alice", "--json", "--data-dir", data]).await;
    assert_eq!(revoked.assert_success().json()["revoked"], true);
    assert!(!alice_env_file.exists());
    let mut old = alice.clone();
    old.insert("NATS_NKEY".into(), kept.to_str().unwrap().to_owned());
    let mut refused = false;
    for _ in 0..50 {
        let out = run_as(&old, &["send", "bob", r#"{"late": 1}"#]).await;
        if !out.status.success() {
            assert!(out.stderr.contains("refused"), "{}", out.stderr);
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused, "the revoked key is refused");
    run(["creds", "revoke", "alice", "--data-dir", data])
        .await
        .assert_one_error("no agent identity named alice");
}

/// One MCP session over `agentbus mcp`'s stdio, spoken as raw JSON-RPC lines.
struct McpSession {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl McpSession {
    /// `agentbus mcp ARGS` with the variables `env` (and no others of ours).
    fn start(args: &[&str], env: &HashMap<String, String>) -> Self {
        let mut child = command()
            .arg("mcp")
            .args(args)
            .env_remove("NATS_URL")
            .env_remove("AGENTBUS_DATA_DIR")
            .envs(env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start agentbus mcp");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        Self {
            _child: child,
            stdin,
            stdout: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
        }
    }

    async fn write(&mut self, message: serde_json::Value) {
        use tokio::io::AsyncWriteExt as _;
        self.stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Sends request `id` and returns its answer.
    async fn ask(&mut self, id: u64, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.write(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let line =
                tokio::time::timeout(std::time::Duration::from_secs(30), self.stdout.next_line())
                    .await
                    .expect("an answer in time")
                    .unwrap()
                    .expect("a line");
            let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
            if answer["id"] == id {
                return answer;
            }
        }
    }

    async fn initialize(&mut self) -> serde_json::Value {
        self.ask(
            1,
            "initialize",
            json!({
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            }),
        )
        .await
    }
}

#[tokio::test]
async fn the_mcp_bridge_joins_with_the_agents_identity_and_refuses_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let up = Up::start(&data_dir, &[]).await;
    let data = data_dir.to_str().unwrap();

    // No identity for claude yet: the operator's is refused, unless asked for.
    let mut refused =
        McpSession::start(&["--agent", "claude", "--data-dir", data], &HashMap::new());
    let answer = refused.initialize().await;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("agent claude has no identity of its own")
            && message.contains("agentbus creds add claude"),
        "{answer}"
    );
    drop(refused);
    let mut operator = McpSession::start(
        &["--agent", "claude", "--data-dir", data, "--as-operator"],
        &HashMap::new(),
    );
    assert!(operator.initialize().await.get("result").is_some());
    drop(operator);

    // Once claude has one, the bridge finds it in the data directory, and
    // what it sends carries claude as the verified sender.
    run(["creds", "add", "claude", "--data-dir", data])
        .await
        .assert_success();
    let mut bridge = McpSession::start(&["--agent", "claude", "--data-dir", data], &HashMap::new());
    let answer = bridge.initialize().await;
    assert!(answer.get("result").is_some(), "{answer}");
    bridge
        .write(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    let sent = bridge
        .ask(
            2,
            "tools/call",
            json!({"name": "send_message", "arguments": {"to": "bob", "message": "hi"}}),
        )
        .await;
    assert_eq!(sent["result"]["isError"], false, "{sent}");
    let js = up.jetstream().await;
    let stream = js.get_stream("agent-messages").await.unwrap();
    let stored = stream.get_raw_message(1).await.unwrap();
    assert_eq!(stored.subject.as_str(), "agent.bob.inbox.claude");

    // Another agent's env file is not claude's identity.
    let added = run(["creds", "add", "other", "--json", "--data-dir", data]).await;
    let other = env_file(Path::new(
        added.assert_success().json()["env_file"].as_str().unwrap(),
    ));
    let mut wrong = McpSession::start(&["--agent", "claude"], &other);
    let answer = wrong.initialize().await;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("agent other's identity, not claude's"),
        "{answer}"
    );
}
