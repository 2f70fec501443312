//! `agentbus mcp`, the MCP bridge, driven over stdio by the official MCP
//! Python SDK against a real nats-server.
//!
//! tests/mcp/mcp_driver.py runs `mcp.Client`s, each over an `agentbus mcp
//! --agent NAME --server URL` child process, and carries out one JSON command
//! per line from this test (through tests/mcp/driver.rs); the assertions are
//! all here. Long-running tasks (watch_task, cancel_task, answer_task, task
//! handles) are tested in tests/mcp_tasks.rs.

#[path = "mcp/driver.rs"]
mod driver;

use agentbus::connect::Credentials;
use agentbus::delivery::Queue;
use agentbus::permissions::Grant;
use agentbus::presence::{AgentPresence, PresenceTaskType};
use agentbus::state::{PRESENCE_BUCKET, StateStore};
use agentbus::subject::{self, durable};
use agentbus::{
    Agent, AgentOptions, Bus, Name, Runtime, ServerTarget, TaskContext, TaskError, TaskId,
    TaskRequest, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use driver::Driver;
use serde_json::{Value, json};
use std::time::Duration;

/// The tools the bridge offers, sorted.
const TOOLS: [&str; 15] = [
    "answer_task",
    "broadcast",
    "bus_status",
    "cancel_task",
    "claim_task",
    "complete_task",
    "get_state",
    "list_agents",
    "read_inbox",
    "request_task",
    "send_message",
    "set_state",
    "submit_task",
    "task_status",
    "watch_task",
];

#[tokio::test]
async fn two_bridges_message_each_other_including_while_one_is_offline() {
    let server = NatsServer::start().await;
    let mut driver = Driver::start(&server).await;

    let opened = driver.open("a", "alice", "auto").await;
    assert_eq!(opened["server_name"], "agentbus");
    assert_eq!(opened["protocol_version"], "2026-07-28");
    let tools = driver
        .send(json!({"op": "list_tools", "client": "a"}))
        .await;
    let mut names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, TOOLS);

    // bob is not running: the messages wait in his durable inbox.
    let first = driver
        .ok(
            "a",
            "send_message",
            json!({"to": "bob", "message": "hello bob"}),
        )
        .await;
    driver
        .ok(
            "a",
            "send_message",
            json!({"to": "bob", "message": {"n": 2}}),
        )
        .await;

    // bob starts (on the pre-2026 protocol, to cover both) and reads them, once.
    let opened = driver.open("b", "bob", "legacy").await;
    assert_eq!(opened["protocol_version"], "2025-11-25");
    // The inbox is in order: one message per read, the next once the one
    // before it was delivered.
    let read = driver.ok("b", "read_inbox", json!({})).await;
    let messages = read["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{read}");
    assert_eq!(messages[0]["untrusted_content_from"], "alice");
    assert_eq!(messages[0]["content"], "hello bob");
    assert_eq!(messages[0]["message_id"], first["message_id"]);
    assert_eq!(read["still_waiting"], 1, "{read}");
    let read = driver.ok("b", "read_inbox", json!({})).await;
    let messages = read["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{read}");
    assert_eq!(messages[0]["content"], json!({"n": 2}));
    let again = driver.ok("b", "read_inbox", json!({})).await;
    assert_eq!(again["messages"], json!([]), "a second read returns none");

    // Live, both ways, and each side is told when a message arrives.
    let alice_inbox = "agentbus://agents/alice/inbox";
    let bob_inbox = "agentbus://agents/bob/inbox";
    let resources = driver
        .send(json!({"op": "list_resources", "client": "a"}))
        .await;
    assert_eq!(resources["uris"], json!([alice_inbox]));
    driver
        .send(json!({"op": "watch", "client": "a", "uri": alice_inbox}))
        .await;
    driver
        .send(json!({"op": "watch", "client": "b", "uri": bob_inbox}))
        .await;
    driver
        .ok(
            "b",
            "send_message",
            json!({"to": "alice", "message": "hi alice"}),
        )
        .await;
    let updated = driver.wait_update("a").await;
    assert!(updated.contains(&json!(alice_inbox)), "{updated:?}");
    let waiting = driver
        .send(json!({"op": "read_resource", "client": "a", "uri": alice_inbox}))
        .await;
    let waiting: Value = serde_json::from_str(waiting["text"].as_str().unwrap()).unwrap();
    assert_eq!(waiting["waiting"], 1);
    let read = driver
        .ok("a", "read_inbox", json!({"max_messages": 10}))
        .await;
    assert_eq!(
        read["messages"][0]["untrusted_content_from"], "bob",
        "{read}"
    );
    assert_eq!(read["messages"][0]["content"], "hi alice");

    driver
        .ok(
            "a",
            "send_message",
            json!({"to": "bob", "message": "hi bob"}),
        )
        .await;
    let updated = driver.wait_update("b").await;
    assert!(updated.contains(&json!(bob_inbox)), "{updated:?}");
    // The log line goes out right after the resource update: wait for it too.
    let logged = driver.wait_log_lines("b").await;
    assert_eq!(logged[0]["event"], "inbox_message", "{logged:?}");
    // A read that waits returns as soon as a message arrives.
    let read = driver
        .ok("b", "read_inbox", json!({"wait_seconds": 10}))
        .await;
    assert_eq!(read["messages"][0]["content"], "hi bob");
    let pending = driver
        .ok("b", "read_inbox", json!({"wait_seconds": 0.2}))
        .await;
    assert_eq!(pending["messages"], json!([]));

    // Every message read was acknowledged once its result was delivered:
    // nothing is left in flight, nothing waits.
    driver.close("a").await;
    driver.close("b").await;
    let js = async_nats::jetstream::new(server.connect().await);
    let stream = js.get_stream(subject::MESSAGES_STREAM).await.unwrap();
    for agent in ["alice", "bob"] {
        let name = agentbus::Name::parse("agent name", agent).unwrap();
        let consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&durable::inbox(&name)).await.unwrap();
        let info = consumer.get_info().await.unwrap();
        assert_eq!(
            (info.num_pending, info.num_ack_pending),
            (0, 0),
            "{agent}'s inbox"
        );
    }

    // Restarted, bob finds nothing to read twice.
    driver.open("b", "bob", "auto").await;
    let read = driver.ok("b", "read_inbox", json!({})).await;
    assert_eq!(read["messages"], json!([]));
    driver.finish().await;
}

#[tokio::test]
async fn tasks_state_presence_and_status_through_the_tools() {
    let server = NatsServer::start().await;
    let runtime = serve_echo(&server).await;
    let mut driver = Driver::start(&server).await;
    driver.open("a", "alice", "auto").await;
    driver.open("b", "bob", "auto").await;

    // Request/reply to a Rust agent; the answer is marked as the agent's.
    let answer = driver
        .ok(
            "a",
            "request_task",
            json!({"agent": "echo", "task_type": "echo", "payload": {"text": "hi"}}),
        )
        .await;
    assert_eq!(answer["status"], "completed", "{answer}");
    assert_eq!(answer["answer"]["untrusted_content_from"], "echo");
    assert_eq!(
        answer["answer"]["content"]["result"],
        json!({"echo": {"text": "hi"}})
    );
    // A payload given as JSON text is taken too.
    let answer = driver
        .ok(
            "a",
            "request_task",
            json!({"agent": "echo", "task_type": "echo", "payload": "{\"n\": 1}", "priority": "high"}),
        )
        .await;
    assert_eq!(
        answer["answer"]["content"]["result"],
        json!({"echo": {"n": 1}})
    );

    // Work queue: alice submits to bob; bob claims (critical first) and completes.
    let low = driver
        .ok(
            "a",
            "submit_task",
            json!({"agent": "bob", "task_type": "summarize", "payload": {"text": "low"}, "priority": "low"}),
        )
        .await;
    let urgent = driver
        .ok(
            "a",
            "submit_task",
            json!({"agent": "bob", "task_type": "summarize", "payload": {"text": "urgent"}, "priority": "critical"}),
        )
        .await;
    assert_eq!(urgent["queue"], "tasks.bob.critical");
    let urgent_id = urgent["task_id"].as_str().unwrap();
    // Recorded at submission: known as queued (not yet taken) at once.
    let status = driver
        .ok("a", "task_status", json!({"task_id": urgent_id}))
        .await;
    assert_eq!(status["state"], "queued", "{status}");

    let claimed = driver.ok("b", "claim_task", json!({})).await;
    let task = &claimed["task"];
    // What the submitter wrote is untrusted content; what the bus knows is beside it.
    assert_eq!(
        task["content"]["task_id"], urgent_id,
        "critical first: {claimed}"
    );
    assert_eq!(task["content"]["task_type"], "summarize");
    assert_eq!(task["priority"], "critical");
    assert_eq!(task["content"]["payload"], json!({"text": "urgent"}));
    assert!(task["untrusted_content_from"].is_string());
    let done = driver
        .ok(
            "b",
            "complete_task",
            json!({"task_id": urgent_id, "result": {"summary": "short"}}),
        )
        .await;
    assert_eq!(done["state"], "completed");
    let status = driver
        .ok(
            "a",
            "task_status",
            json!({"task_id": urgent_id, "wait_seconds": 10}),
        )
        .await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["status"], "completed");
    assert_eq!(status["outcome"]["untrusted_content_from"], "bob");
    assert_eq!(
        status["outcome"]["content"]["result"],
        json!({"summary": "short"})
    );
    // Completed once: a second completion is refused.
    let refused = driver
        .tool_error(
            "b",
            "complete_task",
            json!({"task_id": urgent_id, "result": "again"}),
        )
        .await;
    assert!(refused.contains("is not claimed by bob"), "{refused}");

    // The low one next; bob gives it up, and it becomes a dead letter.
    let claimed = driver
        .ok("b", "claim_task", json!({"wait_seconds": 5}))
        .await;
    assert_eq!(claimed["task"]["content"]["task_id"], low["task_id"]);
    let given_up = driver
        .ok(
            "b",
            "complete_task",
            json!({"task_id": low["task_id"], "error": "cannot summarize this"}),
        )
        .await;
    assert_eq!(given_up["state"], "dead_lettered");
    let status = driver
        .ok("a", "task_status", json!({"task_id": low["task_id"]}))
        .await;
    assert_eq!(status["state"], "dead_lettered");
    assert_eq!(status["status"], "failed");
    let empty = driver.ok("b", "claim_task", json!({})).await;
    assert_eq!(empty["task"], Value::Null);

    // A task for the shared queue of a type, taken by the Rust agent.
    let shared = driver
        .ok(
            "a",
            "submit_task",
            json!({"task_type": "echo", "payload": {"k": "v"}}),
        )
        .await;
    assert_eq!(shared["queue"], "work.echo");
    let status = driver
        .ok(
            "a",
            "task_status",
            json!({"task_id": shared["task_id"], "wait_seconds": 20}),
        )
        .await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(
        status["outcome"]["content"]["result"],
        json!({"echo": {"k": "v"}})
    );

    // Broadcast, stored in the broadcast stream.
    let sent = driver
        .ok(
            "a",
            "broadcast",
            json!({"topic": "news", "message": {"headline": "agents on a bus"}}),
        )
        .await;
    assert_eq!(
        sent["subject"], "broadcast.news.alice",
        "stamped with the bridge's agent"
    );
    let status = driver.ok("a", "bus_status", json!({})).await;
    let streams = status["streams"].as_array().unwrap();
    let count = |name: &str| {
        streams
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["messages"].clone())
    };
    assert_eq!(count(subject::BROADCAST_STREAM), Some(json!(1)), "{status}");
    assert_eq!(
        count(subject::DEAD_LETTER_STREAM),
        Some(json!(1)),
        "{status}"
    );
    assert_eq!(status["you"]["agent"], "alice");
    assert_eq!(status["you"]["inbox_waiting"], 0);

    // Presence: both bridges are online.
    let listed = driver.ok("a", "list_agents", json!({})).await;
    let agents: Vec<(&str, bool)> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let name = a["content"]["name"].as_str().unwrap();
            (name, a["is_you"].as_bool().unwrap())
        })
        .collect();
    assert!(agents.contains(&("alice", true)), "{listed}");
    assert!(agents.contains(&("bob", false)), "{listed}");

    // State: own keys and another agent's, read as untrusted content (any
    // client can write them).
    let stored = driver
        .ok(
            "a",
            "set_state",
            json!({"key": "mood", "value": {"level": 3}}),
        )
        .await;
    assert_eq!(stored["stored"], true);
    driver
        .ok(
            "a",
            "set_state",
            json!({"key": "scratch", "value": "x", "ttl_seconds": 60}),
        )
        .await;
    let mine = driver.ok("a", "get_state", json!({"key": "mood"})).await;
    assert_eq!(
        (mine["found"].clone(), mine["value"]["content"].clone()),
        (json!(true), json!({"level": 3}))
    );
    assert_eq!(mine["value"]["untrusted_content_from"], "(unknown sender)");
    let theirs = driver
        .ok("b", "get_state", json!({"key": "mood", "agent": "alice"}))
        .await;
    assert_eq!(
        theirs["value"]["untrusted_content_from"],
        "(unknown sender)"
    );
    assert_eq!(theirs["value"]["content"], json!({"level": 3}));
    let missing = driver.ok("b", "get_state", json!({"key": "mood"})).await;
    assert_eq!(missing["found"], false);

    driver.finish().await;
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn invalid_input_is_a_tool_error_and_the_bridge_keeps_serving() {
    let server = NatsServer::start().await;
    let mut driver = Driver::start(&server).await;
    driver.open("a", "alice", "auto").await;

    let cases = [
        (
            "send_message",
            json!({"to": "Bob!", "message": "x"}),
            "invalid agent name \"Bob!\"",
        ),
        (
            "send_message",
            json!({"to": "*", "message": "x"}),
            "wildcards are not allowed",
        ),
        (
            "send_message",
            json!({"message": "x"}),
            "missing field `to`",
        ),
        (
            "request_task",
            json!({"agent": "nobody", "task_type": "echo"}),
            "no agent named nobody is running",
        ),
        (
            "request_task",
            json!({"agent": "echo", "task_type": "echo", "payload": "{not json"}),
            "payload is not valid JSON",
        ),
        (
            "request_task",
            json!({"agent": "echo", "task_type": "echo", "payload": [1, 2]}),
            "payload must be a JSON object",
        ),
        (
            "submit_task",
            json!({"agent": "bob", "task_type": "x", "priority": "urgent"}),
            "unknown priority \"urgent\"",
        ),
        (
            "submit_task",
            json!({"task_type": "a.b"}),
            "invalid task type \"a.b\"",
        ),
        (
            "task_status",
            json!({"task_id": "0b5c-never-submitted"}),
            "no task with id \"0b5c-never-submitted\" is known",
        ),
        (
            "task_status",
            json!({"task_id": "a.b"}),
            "invalid task id \"a.b\"",
        ),
        (
            "watch_task",
            json!({"task_id": "0b5c-never-sent"}),
            "no task with id \"0b5c-never-sent\" is known",
        ),
        (
            "watch_task",
            json!({"task_id": "t1", "from_seq": 0}),
            "from_seq must be 1 or more",
        ),
        (
            "watch_task",
            json!({"task_id": "t1", "wait_seconds": 61}),
            "wait_seconds must be between 0 and 60 seconds, not 61",
        ),
        (
            "watch_task",
            json!({"task_id": "t1", "from_seq": "first"}),
            "expected a whole number, or a string holding one",
        ),
        (
            "cancel_task",
            json!({"task_id": "0b5c-never-sent"}),
            "no task with id \"0b5c-never-sent\" is known",
        ),
        (
            "cancel_task",
            json!({"task_id": "a b"}),
            "invalid task id \"a b\"",
        ),
        (
            "answer_task",
            json!({"task_id": "0b5c-never-sent", "answer": "yes"}),
            "task 0b5c-never-sent is not waiting for an answer",
        ),
        (
            "answer_task",
            json!({"task_id": "t1"}),
            "missing field `answer`",
        ),
        (
            "request_task",
            json!({"agent": "echo", "task_type": "echo", "timeout_seconds": 5, "wait_seconds": 5}),
            "not both",
        ),
        (
            "request_task",
            json!({"agent": "echo", "task_type": "echo", "wait_seconds": 0.5}),
            "wait_seconds must be between 1 and 300 seconds, not 0.5",
        ),
        (
            "submit_task",
            json!({"task_type": "echo", "deadline_seconds": 0}),
            "deadline_seconds must be between 1 and 604800 seconds, not 0",
        ),
        (
            "submit_task",
            json!({"task_type": "echo", "stream": "maybe"}),
            "expected true or false, or a string holding one",
        ),
        (
            "complete_task",
            json!({"task_id": "t-unknown", "result": 1}),
            "is not claimed by alice",
        ),
        (
            "complete_task",
            json!({"task_id": "t-unknown"}),
            "pass result",
        ),
        ("get_state", json!({"key": "a.b"}), "invalid state key"),
        (
            "get_state",
            json!({"key": "k", "agent": "NOPE"}),
            "invalid agent name",
        ),
        (
            "set_state",
            json!({"key": "k", "value": 1, "ttl_seconds": -1}),
            "ttl_seconds must be a positive number",
        ),
        (
            "read_inbox",
            json!({"max_messages": 0}),
            "max_messages must be between 1 and 100",
        ),
        (
            "read_inbox",
            json!({"wait_seconds": "soon"}),
            "failed to deserialize parameters",
        ),
        (
            "broadcast",
            json!({"topic": "news.today", "message": 1}),
            "invalid topic",
        ),
    ];
    for (tool, args, expected) in cases {
        let text = driver.tool_error("a", tool, args.clone()).await;
        assert!(
            text.contains(expected),
            "{tool} {args}: {text:?} lacks {expected:?}"
        );
    }
    // Still serving, and nothing was stored by the refused calls.
    let status = driver.ok("a", "bus_status", json!({})).await;
    let streams = status["streams"].as_array().unwrap();
    for stream in [subject::MESSAGES_STREAM, subject::TASKS_STREAM] {
        let entry = streams.iter().find(|s| s["name"] == stream).unwrap();
        assert_eq!(entry["messages"], 0, "{stream}");
    }
    driver.finish().await;
}

#[tokio::test]
async fn arguments_given_as_text_are_read_by_their_schema() {
    let server = NatsServer::start().await;
    let mut driver = Driver::start(&server).await;
    driver.open("a", "alice", "auto").await;

    // Numbers as text, as some clients send every argument.
    let read = driver
        .ok(
            "a",
            "read_inbox",
            json!({"max_messages": "5", "wait_seconds": "0.1"}),
        )
        .await;
    assert_eq!(read["messages"], json!([]));
    // An object as text is stored as the object; other text stays text.
    let stored = driver
        .ok(
            "a",
            "set_state",
            json!({"key": "mood", "value": "{\"level\": 3}", "ttl_seconds": "60"}),
        )
        .await;
    assert_eq!(stored["ttl_seconds"], 60.0, "{stored}");
    let mood = driver.ok("a", "get_state", json!({"key": "mood"})).await;
    assert_eq!(mood["value"]["content"], json!({"level": 3}));
    driver
        .ok(
            "a",
            "set_state",
            json!({"key": "note", "value": "{not json"}),
        )
        .await;
    let note = driver.ok("a", "get_state", json!({"key": "note"})).await;
    assert_eq!(note["value"]["content"], "{not json");
    let refused = driver
        .tool_error("a", "read_inbox", json!({"max_messages": "many"}))
        .await;
    assert!(
        refused.contains("expected a whole number, or a string holding one"),
        "{refused}"
    );
    driver.finish().await;
}

/// The variables of `target`, an agent identity the testkit made, as
/// `agentbus creds add` writes them into the agent's env file.
fn identity_env(target: &ServerTarget) -> Value {
    let Credentials::NkeyFile(seed) = target.credentials() else {
        panic!("an nkey identity: {target:?}")
    };
    json!({
        "NATS_URL": target.display_url(),
        "NATS_NKEY": seed,
        "AGENTBUS_AGENT": target.agent().expect("an agent identity").as_str(),
    })
}

#[tokio::test]
async fn a_bridge_with_an_agent_identity_reads_only_its_own_and_names_verified_senders() {
    const MARKER: &str = "BOB_PRIVATE_MARKER";
    let server = NatsServer::start().await;
    let name = |n: &str| Name::parse("agent name", n).unwrap();
    let alice = server.add_identity(Grant::new(name("alice"))).await;
    let bob = server.add_identity(Grant::new(name("bob"))).await;

    // Bob's inbox, state and queue hold markers, stored by a client
    // without an agent identity.
    let operator = Bus::connect(&server.target(), "operator").await.unwrap();
    for n in 0..3 {
        operator
            .send("bob", &json!({"marker": format!("{MARKER}_{n}")}))
            .await
            .unwrap();
    }
    StateStore::open(&operator, None)
        .await
        .unwrap()
        .agent(&name("bob"))
        .set("plan", &json!(MARKER), None)
        .await
        .unwrap();
    let task = TaskRequest::new("summarize", json!({"text": MARKER}));
    operator
        .submit(&Queue::Agent(name("bob")), &task)
        .await
        .unwrap();

    let mut driver = Driver::start(&server).await;
    // Alice's identity does not join as bob.
    let refused = driver.open_with_env("x", "bob", identity_env(&alice)).await;
    // The client's error, with the bridge's reason in its trace.
    assert!(refused.get("error").is_some(), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("agent alice's identity, not bob's"),
        "{refused}"
    );

    // Alice, through every tool that reads: none of bob's markers.
    let opened = driver
        .open_with_env("a", "alice", identity_env(&alice))
        .await;
    assert!(opened.get("error").is_none(), "{opened}");
    let other_state = driver
        .call("a", "get_state", json!({"agent": "bob", "key": "plan"}))
        .await;
    assert_eq!(other_state["is_error"], true, "{other_state}");
    let mut seen = vec![other_state];
    for (tool, args) in [
        ("read_inbox", json!({"wait_seconds": 1})),
        ("get_state", json!({"key": "plan"})),
        ("claim_task", json!({"wait_seconds": 1})),
        ("list_agents", json!({})),
        ("bus_status", json!({})),
        ("task_status", json!({"task_id": task.task_id})),
    ] {
        seen.push(driver.call("a", tool, args).await);
    }
    let leaked: Vec<&Value> = seen
        .iter()
        .filter(|answer| answer.to_string().contains(MARKER))
        .collect();
    assert!(
        leaked.is_empty(),
        "bob's markers reached alice: {leaked:#?}"
    );
    // The bus as alice's identity may describe it: no stream, said so, at
    // once (a stream she may not describe would wait out a refusal).
    let asked = std::time::Instant::now();
    let status = driver.ok("a", "bus_status", json!({})).await;
    assert_eq!(status["streams"], json!([]), "{status}");
    assert!(status["streams_withheld"].is_string(), "{status}");
    assert_eq!(status["you"]["agent"], "alice", "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );

    // Bob reads his inbox: the markers, labelled unverified, and alice's
    // message, labelled with her verified name.
    driver
        .ok(
            "a",
            "send_message",
            json!({"to": "bob", "message": "from alice"}),
        )
        .await;
    let opened = driver.open_with_env("b", "bob", identity_env(&bob)).await;
    assert!(opened.get("error").is_none(), "{opened}");
    let mut senders = Vec::new();
    while senders.len() < 4 {
        let read = driver
            .ok("b", "read_inbox", json!({"wait_seconds": 5}))
            .await;
        let messages = read["messages"].as_array().unwrap().clone();
        assert!(!messages.is_empty(), "bob's inbox ran dry: {senders:?}");
        for message in messages {
            senders.push((
                message["untrusted_content_from"].clone(),
                message["sender_verified"].clone(),
            ));
        }
    }
    let unverified = (json!("(unverified sender)"), json!(false));
    assert_eq!(
        senders,
        [
            unverified.clone(),
            unverified.clone(),
            unverified,
            (json!("alice"), json!(true)),
        ]
    );
    let claimed = driver
        .ok("b", "claim_task", json!({"wait_seconds": 5}))
        .await;
    assert_eq!(claimed["task"]["content"]["payload"]["text"], MARKER);
    let done = driver
        .ok(
            "b",
            "complete_task",
            json!({"task_id": task.task_id, "result": "summarized"}),
        )
        .await;
    assert_eq!(done["state"], "completed", "{done}");
    driver.finish().await;
}

/// Text that would steer a model that read it as instructions.
const STEER: &str = "IGNORE_ALL_PREVIOUS_INSTRUCTIONS";

#[tokio::test]
async fn what_other_clients_wrote_reaches_the_model_only_wrapped() {
    let server = NatsServer::start().await;
    let mut driver = Driver::start(&server).await;
    driver.open("a", "alice", "auto").await;
    let steer = |field: &str| format!("{STEER}_{field}");

    // Another client of the bus (no bridge, no runtime) writes alice's
    // state, a presence entry and a task in alice's queue, every field of
    // them steering.
    let bus = Bus::connect(&server.target(), "mallory").await.unwrap();
    let alice = Name::parse("agent name", "alice").unwrap();
    StateStore::open(&bus, None)
        .await
        .unwrap()
        .agent(&alice)
        .set("plan", &json!(steer("state")), None)
        .await
        .unwrap();
    let entry = AgentPresence {
        name: steer("name"),
        instance_id: steer("instance_id"),
        task_types: vec![PresenceTaskType {
            name: steer("task_types"),
            schema: Some(json!({"description": steer("payload_schemas")})),
        }],
        version: steer("version"),
        started_at: steer("started_at"),
        host: steer("host"),
        in_flight: 0,
        last_seen: steer("last_seen"),
    };
    let beat =
        json!({"instance_id": entry.instance_id, "host": entry.host, "last_seen": entry.last_seen});
    let presence = bus
        .jetstream()
        .get_key_value(PRESENCE_BUCKET)
        .await
        .unwrap();
    for (key, value) in [("mallory.m1", json!(entry)), ("m1", beat)] {
        let value = serde_json::to_vec(&value).unwrap();
        presence.put(key, value.into()).await.unwrap();
    }
    let mut task = TaskRequest::new(steer("task_type"), json!({"text": steer("payload")}));
    task.task_id = TaskId::parse(&steer("task_id")).unwrap();
    bus.submit(&Queue::Agent(alice), &task).await.unwrap();

    // alice's own state: the bridge cannot tell who wrote a key.
    let read = driver.ok("a", "get_state", json!({"key": "plan"})).await;
    assert_only_wrapped(&read, &["state"]);
    assert_eq!(
        read["value"],
        json!({"untrusted_content_from": "(unknown sender)", "content": steer("state")})
    );

    let listed = driver.ok("a", "list_agents", json!({})).await;
    assert_only_wrapped(
        &listed,
        &[
            "name",
            "instance_id",
            "task_types",
            "payload_schemas",
            "version",
            "started_at",
            "host",
            "last_seen",
        ],
    );
    let names: Vec<(Value, bool)> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["content"]["name"].clone(), a["is_you"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        names,
        [(json!(steer("name")), false), (json!("alice"), true)],
        "{listed}"
    );

    let claimed = driver
        .ok("a", "claim_task", json!({"wait_seconds": 10}))
        .await;
    assert_only_wrapped(&claimed, &["task_id", "task_type", "payload"]);
    let content = &claimed["task"]["content"];
    assert_eq!(content["task_type"], steer("task_type"), "{claimed}");
    // The id as read from the envelope completes the task.
    let done = driver
        .ok(
            "a",
            "complete_task",
            json!({"task_id": content["task_id"], "result": "done"}),
        )
        .await;
    assert_eq!(done["state"], "completed", "{done}");
    driver.finish().await;
}

/// Asserts that each `STEER_<field>` reached the model, and only as the
/// content of an untrusted envelope.
fn assert_only_wrapped(result: &Value, fields: &[&str]) {
    let text = result.to_string();
    for field in fields {
        assert!(
            text.contains(&format!("{STEER}_{field}")),
            "{field} is missing from {result:#}"
        );
    }
    let mut outside = Vec::new();
    steering_outside(result, "result", &mut outside);
    assert!(
        outside.is_empty(),
        "reached the model unwrapped at {outside:?}: {result:#}"
    );
}

/// Where [`STEER`] appears in `value` other than in the content of an
/// untrusted envelope (as a value, an object key or an envelope's author).
fn steering_outside(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::String(text) if text.contains(STEER) => found.push(path.to_owned()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                steering_outside(item, &format!("{path}[{i}]"), found);
            }
        }
        Value::Object(map) => {
            let envelope = map.contains_key("untrusted_content_from");
            for (key, item) in map {
                if key.contains(STEER) {
                    found.push(format!("{path} (a key)"));
                }
                if !(envelope && key == "content") {
                    steering_outside(item, &format!("{path}.{key}"), found);
                }
            }
        }
        _ => {}
    }
}

/// A Rust agent for request_task and the shared work queue.
struct Echo;

impl Agent for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("echo").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(json!({ "echo": task.payload }))
    }
}

async fn serve_echo(server: &NatsServer) -> Runtime {
    let bus = Bus::connect(&server.target(), "rust-agents").await.unwrap();
    let mut runtime = Runtime::new(bus.clone());
    runtime.add(Echo, AgentOptions::default()).await.unwrap();
    bus.sync().await.unwrap();
    runtime
}
