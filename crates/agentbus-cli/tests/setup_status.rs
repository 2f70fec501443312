//! `agentbus setup` and `agentbus status` against real servers: a standalone
//! test server (agentbus-testkit) for `setup`, a running `agentbus up` for `status`.

mod common;

use agentbus_testkit::{ClosedPort, NatsServer};
use async_nats::jetstream::stream::StorageType;
use common::{STREAMS, Up, run};
use futures::TryStreamExt;
use std::path::Path;
use std::time::Duration;

/// `agentbus setup --server URL [ARGS]`.
async fn setup(server: &NatsServer, args: &[&str]) -> common::Output {
    let url = server.url_with_credentials();
    let mut all = vec!["setup", "--server", url.as_str()];
    all.extend_from_slice(args);
    run(all).await
}

/// `agentbus setup --server URL --topology FILE [ARGS]`.
async fn setup_with(server: &NatsServer, topology: &Path, args: &[&str]) -> common::Output {
    let topology = topology.to_str().expect("UTF-8 temp path");
    let mut all = vec!["--topology", topology];
    all.extend_from_slice(args);
    setup(server, &all).await
}

/// `{"streams": {...}}` of a successful `setup --json`, as sorted (name, action) pairs.
fn actions(out: &common::Output) -> Vec<(String, String)> {
    common::actions(&out.assert_success().json())
}

async fn stream_names(server: &NatsServer) -> Vec<String> {
    let js = server.jetstream().await;
    let mut names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn setup_is_idempotent() {
    let server = NatsServer::start_bare().await;
    assert!(stream_names(&server).await.is_empty());

    let first = setup(&server, &["--json"]).await;
    assert_eq!(actions(&first), common::all_with("created", &[]));
    let second = setup(&server, &["--json"]).await;
    assert_eq!(actions(&second), common::all_with("unchanged", &[]));
    assert_eq!(stream_names(&server).await, common::server_stream_names());

    // The table form: a header, then one row per stream (or bucket).
    let table = setup(&server, &[]).await;
    table.assert_success();
    let lines: Vec<&str> = table.stdout.lines().map(str::trim_end).collect();
    let names = common::reported_names();
    assert_eq!(lines.len(), names.len() + 1, "{}", table.stdout);
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["STREAM", "ACTION"],
        "{}",
        table.stdout
    );
    for name in &names {
        assert!(
            lines[1..].iter().any(|l| l.starts_with(&format!("{name} "))
                && l.ends_with(" unchanged")
                && l[name.len()..l.len() - "unchanged".len()].trim().is_empty()),
            "no `{name}  unchanged` row: {}",
            table.stdout
        );
    }
    for name in STREAMS {
        assert!(names.iter().any(|n| n == name));
    }
    assert!(
        !table.stdout.contains(&server.url_with_credentials()),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn setup_updates_a_changed_limit() {
    let server = NatsServer::start_bare().await;
    setup(&server, &["--json"]).await.assert_success();

    let dir = tempfile::tempdir().unwrap();
    let topology = common::topology_file(
        dir.path(),
        "more-messages.toml",
        "max_msgs = 10000",
        "max_msgs = 20000",
    );
    let out = setup_with(&server, &topology, &["--json"]).await;
    assert_eq!(
        actions(&out),
        common::all_with("unchanged", &[("agent-messages", "updated")])
    );
    let js = server.jetstream().await;
    let mut stream = js.get_stream("agent-messages").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_messages, 20_000);
    // Nothing else moved.
    assert_eq!(config.max_bytes, 100 * 1024 * 1024);
    assert_eq!(config.max_age, Duration::from_secs(7 * 86_400));

    // Applying the same file again changes nothing.
    let again = setup_with(&server, &topology, &["--json"]).await;
    assert!(
        actions(&again).iter().all(|(_, a)| a == "unchanged"),
        "{}",
        again.stdout
    );
}

#[tokio::test]
async fn setup_refuses_to_change_storage() {
    let server = NatsServer::start_bare().await;
    setup(&server, &["--json"]).await.assert_success();

    let dir = tempfile::tempdir().unwrap();
    let text = agentbus_ops::topology::STANDARD_TOPOLOGY_TOML;
    let first_stream_end = text.find("[[stream]]\nname = \"agent-broadcast\"").unwrap();
    let topology = dir.path().join("memory.toml");
    std::fs::write(
        &topology,
        text[..first_stream_end].replacen("storage = \"file\"", "storage = \"memory\"", 1)
            + &text[first_stream_end..],
    )
    .unwrap();
    let out = setup_with(&server, &topology, &["--json"]).await;
    let stderr = out.assert_failure();
    let error = common::one_error_line(stderr);
    assert!(error.contains("\"agent-messages\""), "{stderr}");
    assert!(error.contains("storage"), "{stderr}");
    assert!(error.contains("memory"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    let js = server.jetstream().await;
    let mut stream = js.get_stream("agent-messages").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.storage,
        StorageType::File
    );
}

#[tokio::test]
async fn setup_refuses_bad_topology_files_before_touching_the_server() {
    let server = NatsServer::start_bare().await;
    let dir = tempfile::tempdir().unwrap();

    let malformed = common::malformed_topology_file(dir.path());
    let out = setup_with(&server, &malformed, &[]).await;
    let stderr = out.assert_failure();
    let error = common::one_error_line(stderr);
    assert!(
        error.contains(&malformed.display().to_string()),
        "the error does not name the file: {stderr}"
    );
    assert!(error.contains("line"), "{stderr}");

    let request_reply = common::request_reply_topology_file(dir.path());
    let out = setup_with(&server, &request_reply, &[]).await;
    let stderr = out.assert_failure();
    let error = common::one_error_line(stderr);
    assert!(error.contains("request/reply"), "{stderr}");
    assert!(error.contains("agent.*.task"), "{stderr}");

    assert!(
        stream_names(&server).await.is_empty(),
        "setup created streams"
    );
}

#[tokio::test]
async fn status_reports_every_stream_of_a_running_bus() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let up = Up::start(&data_dir, &[]).await;
    let data_dir = data_dir.to_str().unwrap();

    let js = up.jetstream().await;
    js.publish("agent.someone.inbox", "hello".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("tasks.build", "task".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let out = run(["status", "--data-dir", data_dir, "--json"]).await;
    let status = out.assert_success().json();
    assert_eq!(
        status["server"]["version"],
        up.ready()["version"],
        "{status}"
    );
    assert_eq!(status["server"]["url"], up.client_url(), "{status}");
    assert_eq!(
        status["server"]["monitor_url"],
        up.monitor_url(),
        "{status}"
    );
    assert_eq!(status["server"]["monitor_error"], serde_json::Value::Null);
    let streams = status["streams"].as_object().expect("streams object");
    let mut names: Vec<&String> = streams.keys().collect();
    names.sort();
    assert_eq!(
        names,
        common::server_stream_names().iter().collect::<Vec<_>>()
    );
    for name in &names {
        let stream = &streams[name.as_str()];
        // One message each in agent-messages and agent-tasks, nothing elsewhere.
        let expected_messages = u64::from(*name == "agent-messages" || *name == "agent-tasks");
        assert_eq!(
            stream["messages"].as_u64(),
            Some(expected_messages),
            "{name}: {stream}"
        );
        let bytes = stream["bytes"].as_u64().expect("bytes");
        assert_eq!(bytes > 0, expected_messages > 0, "{name}: {stream}");
        // The dashboard `up` serves follows presence with one watch.
        let expected_consumers = u64::from(*name == "KV_agent-presence");
        assert_eq!(
            stream["consumers"].as_u64(),
            Some(expected_consumers),
            "{name}: {stream}"
        );
    }
    assert_eq!(
        status["jetstream"]["streams"].as_u64(),
        Some(names.len() as u64),
        "{status}"
    );
    assert_eq!(
        status["jetstream"]["messages"].as_u64(),
        Some(2),
        "{status}"
    );
    let password = std::fs::read_to_string(up.data_dir().join("password")).unwrap();
    assert!(!out.stdout.contains(password.trim()), "password printed");

    let out = run(["status", "--data-dir", data_dir]).await;
    let table = &out.assert_success().stdout;
    assert!(table.contains(up.client_url()), "{table}");
    for name in &names {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"));
        let expected = match name.as_str() {
            "agent-messages" => "1/10000",
            "agent-broadcast" => "0/5000",
            "agent-tasks" => "1/50000",
            _ => "0/",
        };
        assert!(row.contains(expected), "{name}: {row}");
    }
    assert!(!table.contains(password.trim()), "password printed");
}

#[tokio::test]
async fn status_against_a_closed_port_fails_fast() {
    let closed = ClosedPort::new();
    let port = closed.port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = run(["status", "--server", &url]).await;
    let stderr = out.assert_failure();
    let error = common::one_error_line(stderr);
    assert!(error.contains("cannot reach NATS"), "{stderr}");
    assert!(error.contains(&url), "{stderr}");
    assert!(
        out.elapsed < Duration::from_secs(10),
        "took {:?}",
        out.elapsed
    );
}

#[tokio::test]
async fn status_with_wrong_credentials_is_one_line_without_the_password() {
    let server = NatsServer::start_bare().await;
    let (url, secret) = server.url_with_wrong_password();
    let out = run(["status", "--server", &url]).await;
    let stderr = out.assert_failure();
    let error = common::one_error_line(stderr);
    assert!(error.contains("refused the credentials"), "{stderr}");
    assert!(!stderr.contains(&secret), "password echoed: {stderr}");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[tokio::test]
async fn setup_and_status_reject_an_unknown_flag() {
    for command in ["setup", "status"] {
        let out = run([command, "--no-such-flag"]).await;
        let stderr = out.assert_failure();
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("--no-such-flag"), "{command}: {stderr}");
    }
}
