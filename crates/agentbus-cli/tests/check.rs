//! `agentbus check` against real servers: a testkit server (healthy and
//! misconfigured) and a running `agentbus up`.

mod common;

use agentbus_ops::check::names;
use agentbus_ops::topology::{Discard, Topology};
use agentbus_testkit::NatsServer;
use common::{Up, run};
use std::time::Duration;

/// `agentbus check --server URL [ARGS]`.
async fn check(server: &NatsServer, args: &[&str]) -> common::Output {
    let url = server.url_with_credentials();
    let mut all = vec!["check", "--server", url.as_str()];
    all.extend_from_slice(args);
    run(all).await
}

/// The table rows (after the header, before the summary) as (status, name, detail).
fn rows(stdout: &str) -> Vec<(String, String, String)> {
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["STATUS", "NAME", "DETAIL"], "{stdout}");
    lines
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, char::is_whitespace);
            let status = parts.next().unwrap_or("").to_owned();
            let rest = parts.collect::<Vec<_>>().join(" ");
            let rest = rest.trim_start();
            let (name, detail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            (status, name.to_owned(), detail.trim().to_owned())
        })
        .collect()
}

/// An agent serving `echo` tasks with nothing.
struct Idle(&'static str);

impl agentbus::Agent for Idle {
    fn name(&self) -> &str {
        self.0
    }

    fn task_types(&self) -> Vec<agentbus::TaskTypeSpec> {
        agentbus::TaskTypeSpec::new("echo").into_iter().collect()
    }

    async fn handle(
        &self,
        _task: agentbus::TaskRequest,
        _ctx: agentbus::TaskContext,
    ) -> Result<serde_json::Value, agentbus::TaskError> {
        Ok(serde_json::Value::Null)
    }
}

fn misconfigured_topology() -> Topology {
    let mut topology = Topology::standard();
    let tasks = topology
        .streams
        .iter_mut()
        .find(|s| s.name == "agent-tasks")
        .unwrap();
    tasks.discard = Discard::Old;
    tasks.max_msgs = 40_000;
    topology
}

#[tokio::test]
async fn check_passes_on_a_provisioned_server_and_prints_each_check() {
    common::ensure_nats_server().await;
    let server = NatsServer::start().await;
    let out = check(&server, &[]).await;
    out.assert_success();
    let rows = rows(&out.stdout);
    let names: Vec<&str> = rows.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names, names::ALL, "{}", out.stdout);
    for (status, name, detail) in &rows {
        assert_eq!(status, "PASS", "{name}: {detail}");
        assert!(!detail.is_empty(), "{name} has no explanation");
    }
    assert!(
        out.stdout
            .trim_end()
            .ends_with(&format!("12 of 12 checks passed against {}", server.url())),
        "{}",
        out.stdout
    );
    let password = server
        .url_with_credentials()
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.rsplit_once(':'))
        .map(|(_, password)| password.to_owned())
        .unwrap();
    assert!(!out.stdout.contains(&password), "{}", out.stdout);
    assert!(!out.stderr.contains(&password), "{}", out.stderr);
}

#[tokio::test]
async fn check_json_is_one_document_with_every_check_passing() {
    let server = NatsServer::start().await;
    let out = check(&server, &["--json"]).await;
    out.assert_success();
    let report = out.json();
    assert_eq!(report["passed"], true, "{report}");
    let checks = report["checks"].as_array().expect("checks is an array");
    assert_eq!(checks.len(), names::ALL.len(), "{report}");
    for (check, name) in checks.iter().zip(names::ALL) {
        assert_eq!(check["name"], name, "{report}");
        assert_eq!(check["passed"], true, "{check}");
        assert!(
            check["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{check}"
        );
    }
}

#[tokio::test]
async fn check_fails_on_a_misconfigured_server_naming_the_check_and_the_reason() {
    let server = NatsServer::start_with_topology(&misconfigured_topology()).await;

    let out = check(&server, &[]).await;
    out.assert_failure();
    assert_eq!(out.status.code(), Some(1));
    let rows = rows(&out.stdout);
    assert_eq!(rows.len(), names::ALL.len(), "{}", out.stdout);
    let failed: Vec<(&str, &str)> = rows
        .iter()
        .filter(|(status, _, _)| status == "FAIL")
        .map(|(_, name, detail)| (name.as_str(), detail.as_str()))
        .collect();
    assert_eq!(
        failed.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        [names::STREAMS, names::DEDUP_AND_DISCARD],
        "{}",
        out.stdout
    );
    assert!(
        failed[0]
            .1
            .contains("agent-tasks: max_msgs is 40000 on the server but 50000"),
        "{}",
        out.stdout
    );
    assert!(failed[1].1.contains("discard is Old"), "{}", out.stdout);
    assert!(
        out.stdout.contains("10 of 12 checks passed"),
        "{}",
        out.stdout
    );

    let out = check(&server, &["--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let report = out.json();
    assert_eq!(report["passed"], false, "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), names::ALL.len());
    let streams = checks.iter().find(|c| c["name"] == names::STREAMS).unwrap();
    assert_eq!(streams["passed"], false);
    assert!(
        streams["detail"].as_str().unwrap().contains("max_msgs"),
        "{streams}"
    );
}

#[tokio::test]
async fn check_takes_the_topology_to_compare_with() {
    let server = NatsServer::start_with_topology(&misconfigured_topology()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = common::topology_file(
        dir.path(),
        "fewer-tasks.toml",
        "max_msgs = 50000\nmax_bytes = \"200MiB\"\nmax_age = \"14d\"\nstorage = \"file\"\ndiscard = \"new\"",
        "max_msgs = 40000\nmax_bytes = \"200MiB\"\nmax_age = \"14d\"\nstorage = \"file\"\ndiscard = \"old\"",
    );
    let out = check(&server, &["--json", "--topology", file.to_str().unwrap()]).await;
    let report = out.json();
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // The streams match that topology; discard "old" is still wrong for a work queue.
    assert_eq!(failed, [names::DEDUP_AND_DISCARD], "{report}");
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn check_passes_against_agentbus_up_found_through_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let mut up = Up::start(&data_dir, &[]).await;
    let server_pid = up.server_pid();
    let check_json = async || {
        let out = run([
            "check".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--json".as_ref(),
        ])
        .await;
        (out.status.success(), out.json())
    };

    let (succeeded, report) = check_json().await;
    assert!(succeeded, "{report}");
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["checks"].as_array().unwrap().len(), names::ALL.len());
    let detail = |report: &serde_json::Value, name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| {
                (
                    c["passed"].as_bool().unwrap(),
                    c["detail"].as_str().unwrap().to_owned(),
                )
            })
            .unwrap()
    };
    let (_, probed) = detail(&report, names::PERMISSIONS);
    assert!(
        probed.starts_with("a probe identity sent under its own name"),
        "{probed}"
    );
    // The probe identity is gone again.
    assert!(common::identities(&data_dir).await.is_empty());

    // An agent served with the operator's password is named; once it has an
    // identity of its own, the check passes again.
    let serve = async |target: &agentbus::ServerTarget| {
        let mut runtime =
            agentbus::Runtime::new(agentbus::Bus::connect(target, "alice").await.unwrap());
        runtime
            .add(Idle("alice"), agentbus::AgentOptions::default())
            .await
            .unwrap();
        runtime
    };
    let runtime = serve(&up.target()).await;
    let (_, report) = check_json().await;
    let (passed, named) = detail(&report, names::OPERATOR_AGENTS);
    assert!(!passed, "{report}");
    assert!(named.contains("alice (user agentbus)"), "{named}");
    assert_eq!(report["passed"], false);
    runtime.shutdown(Duration::from_secs(2)).await;
    run([
        "creds",
        "add",
        "alice",
        "--work-type",
        "echo",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ])
    .await
    .assert_success();
    let alice = agentbus::ServerTarget::from_env_file(&data_dir.join("agents/alice.env")).unwrap();
    let runtime = serve(&alice).await;
    let (_, report) = check_json().await;
    let (passed, named) = detail(&report, names::OPERATOR_AGENTS);
    assert!(passed, "{named}");
    assert!(named.contains("(1)"), "{named}");
    runtime.shutdown(Duration::from_secs(2)).await;

    let status = up.terminate().await;
    assert!(status.success(), "up exited with {status}: {}", up.stderr());
    assert!(
        common::wait_gone(server_pid, common::EXIT_TIMEOUT).await,
        "nats-server {server_pid} still runs after up stopped"
    );
    assert!(!agentbus_testkit::process_alive(up.pid()));
}

#[tokio::test]
async fn check_against_a_server_that_never_answers_fails_in_bounded_time() {
    // A listener that accepts but never speaks NATS.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let secret = agentbus::TaskId::new().to_string().replace('-', "");
    let url = format!("nats://u:{secret}@{}", silent.local_addr().unwrap());
    let out = run(["check", "--server", url.as_str()]).await;
    let stderr = out.assert_failure();
    assert_eq!(out.status.code(), Some(1));
    let error = common::one_error_line(stderr);
    assert!(error.contains("cannot reach NATS"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.elapsed < Duration::from_secs(15), "{:?}", out.elapsed);
}

/// A dead letter parked while the dead-letter stream was full fails the
/// `dead-letters` check, naming where it came from; `agentbus dlq list`
/// moves it once the stream has room, and the check passes again.
#[tokio::test]
async fn a_parked_dead_letter_fails_the_check_until_it_is_moved() {
    let server = NatsServer::start().await;
    let js = server.jetstream().await;
    let parked = js
        .get_key_value(agentbus::subject::PARKED_LETTERS_BUCKET)
        .await
        .unwrap();
    let letter = serde_json::json!({
        "subject": "tasks.stuck",
        "task_id": "parked-1",
        "body": {"task_id": "parked-1", "task_type": "t", "payload": {}},
        "attempts": 3,
        "errors": [],
        "reason": "failed 3 times",
        "dead_lettered_at": "2026-11-30T00:00:00Z",
        "original_sequence": 7
    });
    parked
        .put(
            agentbus::subject::parked_letter("tasks.stuck", 7),
            serde_json::to_vec(&letter).unwrap().into(),
        )
        .await
        .unwrap();
    let out = check(&server, &["--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let report = out.json();
    let dead_letters = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == names::DEAD_LETTERS)
        .unwrap()
        .clone();
    assert_eq!(dead_letters["passed"], false, "{dead_letters}");
    let detail = dead_letters["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 dead letter(s)") && detail.contains("tasks.stuck"),
        "{detail}"
    );

    let url = server.url_with_credentials();
    let listed = run(["dlq", "list", "--json", "--server", url.as_str()]).await;
    assert_eq!(listed.status.code(), Some(0), "{}", listed.stderr);
    let listed = listed.json();
    assert_eq!(listed["parked"].as_array().unwrap().len(), 0, "{listed}");
    assert_eq!(listed["dead_letters"][0]["task_id"], "parked-1", "{listed}");
    let out = check(&server, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", out.stdout);
}
