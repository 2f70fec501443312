//! `agentbus_ops::check` against real servers: a provisioned one (every check
//! passes, nothing is left behind), misconfigured ones (the right checks fail
//! and say why), one without streams and one without authentication.

use agentbus::connect::{ServerTarget, TargetSource};
use agentbus_ops::check::{self, CheckOptions, CheckReport, names};
use agentbus_ops::topology::{Discard, Storage, Topology};
use agentbus_testkit::{CustomNatsServer, NatsServer};
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

/// What the server holds, per stream: messages, last sequence, consumer names.
#[derive(Debug, PartialEq, Eq)]
struct StreamSnapshot {
    messages: u64,
    last_sequence: u64,
    consumers: Vec<String>,
}

async fn snapshot(js: &jetstream::Context) -> BTreeMap<String, StreamSnapshot> {
    let infos: Vec<stream::Info> = js.streams().try_collect().await.expect("list streams");
    let mut out = BTreeMap::new();
    for info in infos {
        let stream = js.get_stream(&info.config.name).await.unwrap();
        let mut consumers: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
        consumers.sort();
        out.insert(
            info.config.name.clone(),
            StreamSnapshot {
                messages: info.state.messages,
                last_sequence: info.state.last_sequence,
                consumers,
            },
        );
    }
    out
}

/// Every subject (with its message count) a stream holds that a check run made.
async fn check_subjects(js: &jetstream::Context) -> Vec<(String, usize)> {
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    let mut found = Vec::new();
    for name in names {
        let stream = js.get_stream(&name).await.unwrap();
        let mut subjects = stream.info_with_subjects(">").await.unwrap();
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry.unwrap();
            if subject.contains("check") {
                found.push((subject, count));
            }
        }
    }
    found
}

async fn run_checks(server: &NatsServer, topology: &Topology) -> CheckReport {
    let client = server.connect().await;
    check::run(&client, &server.target(), topology).await
}

fn assert_failed_exactly(report: &CheckReport, expected: &[&str]) {
    let failed: Vec<&str> = report.failed().map(|c| c.name).collect();
    assert_eq!(failed, expected, "{report:#?}");
    assert!(!report.passed);
}

fn detail<'a>(report: &'a CheckReport, name: &str) -> &'a str {
    &report.get(name).expect("the check is in the report").detail
}

#[tokio::test]
async fn every_check_passes_on_a_provisioned_server_and_leaves_nothing_behind() {
    let server = NatsServer::start().await;
    let js = server.jetstream().await;
    // An agent's durable inbox consumer, as the runtime makes it: the doctor
    // counts it, and the check must leave it alone.
    js.create_consumer_on_stream(
        pull::Config {
            durable_name: Some("inbox-alice".into()),
            filter_subject: "agent.alice.inbox".into(),
            ..Default::default()
        },
        "agent-messages",
    )
    .await
    .unwrap();
    let before = snapshot(&js).await;

    let started = Instant::now();
    let report = run_checks(&server, &Topology::standard()).await;
    assert!(report.passed, "{report:#?}");
    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, names::ALL);
    for check in &report.checks {
        assert!(
            !check.detail.is_empty() && !check.detail.contains('\n'),
            "{check:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        detail(&report, names::WORK_QUEUE).starts_with("50 tasks on tasks.check-"),
        "{report:#?}"
    );
    assert!(
        detail(&report, names::WORK_QUEUE).contains("across 3 workers"),
        "{report:#?}"
    );
    assert!(
        detail(&report, names::BROADCAST).contains("each of 3 durable consumers exactly once"),
        "{report:#?}"
    );
    assert!(
        detail(&report, names::DURABLE_CONSUMERS).starts_with("all 1 agentbus consumers"),
        "{report:#?}"
    );
    assert!(
        detail(&report, names::AUTHENTICATION).contains("refused a client without credentials"),
        "{report:#?}"
    );

    // Nothing left: the same consumers, no messages, and no check subject in
    // any stream; the sequences prove the run did store messages there.
    let after = snapshot(&js).await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (name, stream) in &after {
        let earlier = &before[name];
        assert_eq!(stream.consumers, earlier.consumers, "{name}: consumers");
        assert_eq!(stream.messages, earlier.messages, "{name}: messages");
    }
    assert_eq!(after["agent-messages"].consumers, ["inbox-alice"]);
    // 1 inbox message; 1 broadcast; 50 tasks plus 1 deduplicated task.
    assert_eq!(after["agent-messages"].last_sequence, 1);
    assert_eq!(after["agent-broadcast"].last_sequence, 1);
    assert_eq!(after["agent-tasks"].last_sequence, 51);
    assert_eq!(check_subjects(&js).await, []);
}

#[tokio::test]
async fn two_runs_at_the_same_time_do_not_collide() {
    let server = NatsServer::start().await;
    let topology = Topology::standard();
    let (first, second) = tokio::join!(
        run_checks(&server, &topology),
        run_checks(&server, &topology)
    );
    assert!(first.passed, "{first:#?}");
    assert!(second.passed, "{second:#?}");
    let js = server.jetstream().await;
    assert_eq!(check_subjects(&js).await, []);
    for (name, stream) in snapshot(&js).await {
        assert_eq!(stream.messages, 0, "{name}");
        assert!(
            stream.consumers.is_empty(),
            "{name}: {:?}",
            stream.consumers
        );
    }
}

#[tokio::test]
async fn a_check_cut_short_by_its_timeout_fails_and_is_still_cleaned_up() {
    let server = NatsServer::start().await;
    let client = server.connect().await;
    let options = CheckOptions {
        // Cuts the work queue while its tasks are still being published (some
        // on their way to the stream when clean-up starts), and the broadcast
        // while it waits for a second copy.
        timeout: Duration::from_millis(100),
        tasks: 20_000,
        ..CheckOptions::default()
    };
    let mut started = Vec::new();
    let report = check::run_with(
        &client,
        &server.target(),
        &Topology::standard(),
        &options,
        |name| started.push(name),
    )
    .await;
    assert_eq!(started, names::ALL);
    for name in [names::WORK_QUEUE, names::BROADCAST] {
        let check = report.get(name).unwrap();
        assert!(!check.passed, "{report:#?}");
        assert_eq!(
            check.detail,
            "did not finish within 100ms; the server is overloaded or JetStream is not answering"
        );
    }
    let js = server.jetstream().await;
    assert_eq!(check_subjects(&js).await, []);
    for (name, stream) in snapshot(&js).await {
        assert_eq!(stream.messages, 0, "{name}");
        assert!(
            stream.consumers.is_empty(),
            "{name}: {:?}",
            stream.consumers
        );
    }
}

#[tokio::test]
async fn a_misconfigured_task_stream_fails_the_checks_naming_the_fields() {
    let mut misconfigured = Topology::standard();
    let tasks = misconfigured
        .streams
        .iter_mut()
        .find(|s| s.name == "agent-tasks")
        .unwrap();
    tasks.discard = Discard::Old;
    tasks.max_msgs = 40_000;
    let server = NatsServer::start_with_topology(&misconfigured).await;

    let report = run_checks(&server, &Topology::standard()).await;
    assert_failed_exactly(&report, &[names::STREAMS, names::DEDUP_AND_DISCARD]);
    let streams = detail(&report, names::STREAMS);
    assert!(
        streams.contains(
            "stream agent-tasks: max_msgs is 40000 on the server but 50000 in the topology"
        ),
        "{streams}"
    );
    assert!(streams.contains("and 1 more: discard"), "{streams}");
    let dedup = detail(&report, names::DEDUP_AND_DISCARD);
    assert!(dedup.contains("discard is Old"), "{dedup}");
    assert!(dedup.contains("discard = \"new\""), "{dedup}");

    // Against the topology it was given, the same server is healthy.
    let report = run_checks(&server, &misconfigured).await;
    assert_failed_exactly(&report, &[names::DEDUP_AND_DISCARD]);
    assert_eq!(check_subjects(&server.jetstream().await).await, []);
}

#[tokio::test]
async fn a_storage_change_setup_refuses_is_not_sent_to_setup() {
    let mut in_memory = Topology::standard();
    let tasks = in_memory
        .streams
        .iter_mut()
        .find(|s| s.name == "agent-tasks")
        .unwrap();
    tasks.storage = Storage::Memory;
    tasks.max_msgs = 40_000;
    let server = NatsServer::start_with_topology(&in_memory).await;

    let report = run_checks(&server, &Topology::standard()).await;
    assert_failed_exactly(&report, &[names::STREAMS]);
    let advice = "keep storage = \"memory\" in the topology, or delete stream agent-tasks with its messages (for example `nats stream rm agent-tasks`) and run `agentbus setup` to recreate it";
    assert_eq!(
        detail(&report, names::STREAMS),
        format!(
            "stream agent-tasks: storage is Memory on the server but File in the topology (and 1 more: max_msgs), which JetStream cannot change in place, so `agentbus setup` refuses it: {advice}"
        )
    );
    // setup refuses it indeed, with the same advice.
    let refused = Topology::standard()
        .apply(&server.jetstream().await)
        .await
        .unwrap_err();
    assert!(refused.to_string().ends_with(&advice), "{refused}");

    // With a stream setup can fix besides, the doctor says so after the advice.
    let js = server.jetstream().await;
    js.delete_stream("agent-dlq").await.unwrap();
    let report = run_checks(&server, &Topology::standard()).await;
    let streams = detail(&report, names::STREAMS);
    assert!(
        streams.ends_with(&format!(
            "{advice}; stream agent-dlq is missing (run `agentbus setup`); after that, `agentbus setup` applies the other changes"
        )),
        "{streams}"
    );
}

#[tokio::test]
async fn a_stream_capturing_request_reply_subjects_is_named() {
    let server = NatsServer::start_bare().await;
    let js = server.jetstream().await;
    Topology::standard().apply(&js).await.unwrap();
    js.create_stream(stream::Config {
        name: "rogue".into(),
        subjects: vec!["agent.*.task".into()],
        ..Default::default()
    })
    .await
    .unwrap();

    let report = run_checks(&server, &Topology::standard()).await;
    assert_failed_exactly(&report, &[names::REQUEST_REPLY]);
    let detail = detail(&report, names::REQUEST_REPLY);
    assert!(
        detail.contains("stream rogue captures agent.*.task, which overlaps agent.*.task"),
        "{detail}"
    );
    assert!(detail.contains("instead of the agent's reply"), "{detail}");
}

#[tokio::test]
async fn a_consumer_that_expires_is_not_durable() {
    let server = NatsServer::start().await;
    let js = server.jetstream().await;
    js.create_consumer_on_stream(
        pull::Config {
            name: Some("tasks-bob-normal".into()),
            filter_subject: "tasks.bob".into(),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        },
        "agent-tasks",
    )
    .await
    .unwrap();

    let report = run_checks(&server, &Topology::standard()).await;
    assert_failed_exactly(&report, &[names::DURABLE_CONSUMERS]);
    let detail = detail(&report, names::DURABLE_CONSUMERS);
    assert!(
        detail.starts_with("1 of 1 agentbus consumers are not durable: agent-tasks/tasks-bob-normal (no durable name)"),
        "{detail}"
    );
}

#[tokio::test]
async fn missing_streams_fail_their_checks_without_stopping_the_run() {
    let server = NatsServer::start_bare().await;
    let started = Instant::now();
    let report = run_checks(&server, &Topology::standard()).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_failed_exactly(
        &report,
        &[
            names::OFFLINE_DELIVERY,
            names::WORK_QUEUE,
            names::BROADCAST,
            names::STREAMS,
            names::DEDUP_AND_DISCARD,
        ],
    );
    for name in [names::OFFLINE_DELIVERY, names::WORK_QUEUE, names::BROADCAST] {
        let detail = detail(&report, name);
        assert!(detail.starts_with("no stream stores "), "{name}: {detail}");
        assert!(detail.contains("agentbus setup"), "{name}: {detail}");
    }
    let streams = detail(&report, names::STREAMS);
    for name in [
        "agent-messages",
        "agent-broadcast",
        "agent-tasks",
        "agent-dlq",
    ] {
        assert!(
            streams.contains(&format!("stream {name} is missing")),
            "{streams}"
        );
    }
    assert_eq!(
        detail(&report, names::DEDUP_AND_DISCARD),
        "stream agent-tasks is missing; run `agentbus setup` to create the streams"
    );
    // Nothing was created on the way.
    let js = server.jetstream().await;
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    assert!(names.is_empty(), "{names:?}");
}

/// A `nats-server` with JetStream and no authorization at all; killed on drop.
struct OpenServer {
    _server: CustomNatsServer,
    _dir: tempfile::TempDir,
    url: String,
}

impl OpenServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let args = ["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"].map(OsString::from);
        let server = CustomNatsServer::start(args.into_iter().chain([dir.path().into()])).await;
        Self {
            url: format!("nats://{}", server.address()),
            _server: server,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn a_server_without_authentication_fails_the_authentication_check() {
    let server = OpenServer::start().await;
    let target = ServerTarget::from_url(&server.url, TargetSource::Explicit);
    let client = target.connect("check-test").await.unwrap();
    let js = jetstream::new(client.clone());
    Topology::standard().apply(&js).await.unwrap();

    let report = check::run(&client, &target, &Topology::standard()).await;
    assert_failed_exactly(&report, &[names::AUTHENTICATION]);
    let detail = detail(&report, names::AUTHENTICATION);
    assert!(
        detail.starts_with(&format!(
            "{} accepted a client without credentials",
            server.url
        )),
        "{detail}"
    );
}
