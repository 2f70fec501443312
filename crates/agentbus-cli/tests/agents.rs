//! `agentbus agents` against a real nats-server (and redis-server) with an
//! agent running in this process.

mod common;

use agentbus::state::StateStore;
use agentbus::{
    Agent, AgentOptions, Bus, Runtime, TaskContext, TaskError, TaskRequest, TaskTypeSpec,
};
use agentbus_testkit::{NatsServer, RedisServer};
use serde_json::{Value, json};
use std::time::Duration;

struct Echo;

impl Agent for Echo {
    fn name(&self) -> &str {
        "echo_agent"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![
            TaskTypeSpec::new("echo").unwrap(),
            TaskTypeSpec::new("shout")
                .unwrap()
                .with_schema(json!({"type": "object"})),
        ]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(task.payload.into_value())
    }
}

fn options() -> AgentOptions {
    AgentOptions {
        work_queues: false,
        ..AgentOptions::default()
    }
}

#[tokio::test]
async fn agents_lists_a_running_agent_as_json_and_as_a_table() {
    common::ensure_nats_server().await;
    let server = NatsServer::start().await;
    let url = server.url_with_credentials();
    let mut runtime = Runtime::new(Bus::from_client(server.connect().await));
    runtime.add(Echo, options()).await.unwrap();
    let instance = runtime.instance_id().to_owned();

    let out = common::run(["agents", "--json", "--state", "nats", "--server", &url]).await;
    out.assert_success();
    let json = out.json();
    assert_eq!(json["backend"], "nats-kv");
    let agents = json["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{json:#}");
    let agent = &agents[0];
    assert_eq!(agent["name"], "echo_agent");
    assert_eq!(agent["instance_id"], instance.as_str());
    assert_eq!(agent["in_flight"], 0);
    assert_eq!(agent["host"], agentbus::presence::host_name().as_str());
    assert_eq!(
        agent["task_types"],
        json!([{"name": "echo", "schema": null}, {"name": "shout", "schema": {"type": "object"}}])
    );

    let out = common::run(["agents", "--state", "nats", "--server", &url]).await;
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    let header: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "INSTANCE",
            "TASK TYPES",
            "IN FLIGHT",
            "HOST",
            "STARTED",
            "LAST SEEN"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], "echo_agent");
    assert_eq!(row[1], &instance[..12]);
    assert_eq!(row[2], "echo,shout");
    assert_eq!(row[3], "0");
    assert!(lines[1].ends_with("s ago"), "{}", lines[1]);

    runtime.shutdown(Duration::from_secs(1)).await;
    let out = common::run(["agents", "--state", "nats", "--server", &url]).await;
    out.assert_success();
    assert_eq!(out.stdout.trim(), "no agents online (presence in nats-kv)");
}

#[tokio::test]
async fn agents_reads_redis_presence_and_never_prints_the_password() {
    common::ensure_nats_server().await;
    let server = NatsServer::start().await;
    let redis = RedisServer::start().await;
    let bus = Bus::from_client(server.connect().await);
    let store = StateStore::open(&bus, Some(&redis.url())).await.unwrap();
    let mut runtime = Runtime::new(bus).with_state(store);
    runtime.add(Echo, options()).await.unwrap();
    let url = server.url_with_credentials();

    let out = common::run([
        "agents",
        "--json",
        "--state",
        &redis.url(),
        "--server",
        &url,
    ])
    .await;
    out.assert_success();
    let json = out.json();
    assert_eq!(json["backend"], "redis");
    assert_eq!(json["agents"][0]["name"], "echo_agent");
    assert_eq!(json["agents"][0]["instance_id"], runtime.instance_id());
    assert!(!out.stdout.contains(redis.password()));
    assert!(!out.stderr.contains(redis.password()));

    let wrong = redis.url_with_password("not-the-password");
    let out = common::run(["agents", "--state", &wrong, "--server", &url]).await;
    let stderr = out.assert_failure();
    assert!(
        stderr.contains("redis state backend is unavailable"),
        "{stderr}"
    );
    assert!(stderr.contains("redis://:***@127.0.0.1"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    runtime.shutdown(Duration::from_secs(1)).await;
}
