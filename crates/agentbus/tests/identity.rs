//! Agent identities against a real nats-server: agent `alice` tries every
//! path to agent `bob`'s inbox, direct messages, queue and state (each
//! holding marker messages) and to bob's tasks, and gets none of them, while
//! everything an agent may do still works; senders are verified; a revoked
//! identity is cut off while others stay connected.

use agentbus::delivery::{DeliveryOptions, Queue};
use agentbus::permissions::{EventPattern, Grant};
use agentbus::state::StateStore;
use agentbus::{
    Agent, AgentMessage, AgentOptions, Bus, Name, Priority, Runtime, Sender, ServerTarget,
    TaskContext, TaskError, TaskRequest, TaskStatus, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MARKER: &str = "MARKER-of-bob";
/// How long a denied request is given before it counts as refused: the
/// server answers a permission violation with silence.
const DENIED_WAIT: Duration = Duration::from_millis(400);

fn name(value: &str) -> Name {
    Name::parse("agent name", value).unwrap()
}

/// Records who sent each task and message it gets.
#[derive(Clone)]
struct Recorder {
    name: &'static str,
    seen: Arc<Mutex<Vec<(String, Sender, Value)>>>,
}

impl Recorder {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<(String, Sender, Value)> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<(String, Sender, Value)> {
        for _ in 0..200 {
            if self.seen.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.seen()
    }
}

impl Agent for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("echo").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        self.seen.lock().unwrap().push((
            "task".into(),
            ctx.sender().clone(),
            task.payload.clone().into_value(),
        ));
        Ok(json!({ "served_by": self.name, "sender": ctx.sender() }))
    }

    async fn handle_message(
        &self,
        message: AgentMessage,
        _ctx: TaskContext,
    ) -> Result<(), TaskError> {
        self.seen
            .lock()
            .unwrap()
            .push(("message".into(), message.sender, message.body));
        Ok(())
    }
}

/// A bus with bob and alice identities; bob's inbox, direct channel, queue
/// and state hold markers, written while bob is offline.
struct World {
    server: NatsServer,
    alice: ServerTarget,
    bob: ServerTarget,
}

async fn world() -> World {
    let server = NatsServer::start().await;
    let mut bob = Grant::new(name("bob"));
    bob.work_types = vec![name("echo")];
    let bob = server.add_identity(bob).await;
    let alice = server.add_identity(Grant::new(name("alice"))).await;
    let carol = server.add_identity(Grant::new(name("carol"))).await;
    let carol_bus = Bus::connect(&carol, "carol").await.unwrap();
    for i in 0..10 {
        carol_bus
            .send("bob", &json!({ "text": MARKER, "i": i }))
            .await
            .unwrap();
        carol_bus
            .send_direct("bob", &json!({ "text": MARKER, "i": i }))
            .await
            .unwrap();
        let task = TaskRequest::new("echo", json!({ "text": MARKER, "i": i }));
        carol_bus
            .submit(&Queue::agent("bob").unwrap(), &task)
            .await
            .unwrap();
    }
    let bob_bus = Bus::connect(&bob, "bob").await.unwrap();
    let state = StateStore::open(&bob_bus, None).await.unwrap();
    for i in 0..10 {
        state
            .agent(&name("bob"))
            .set(&format!("k{i}"), &json!({ "text": MARKER }), None)
            .await
            .unwrap();
    }
    World { server, alice, bob }
}

/// Every payload a request brought back within [`DENIED_WAIT`], as text.
async fn ask(client: &async_nats::Client, subject: &str, body: Value) -> Option<String> {
    let request = client.request(subject.to_owned(), Bytes::from(body.to_string()));
    match tokio::time::timeout(DENIED_WAIT, request).await {
        Ok(Ok(message)) => Some(String::from_utf8_lossy(&message.payload).into_owned()),
        _ => None,
    }
}

fn markers(text: &str) -> usize {
    text.matches(MARKER).count()
}

#[tokio::test]
async fn alice_gets_none_of_bobs_markers_by_any_path() {
    let w = world().await;
    let alice = w.alice.connect("alice").await.unwrap();
    let mut got = 0;

    // Live: subscribing to bob's subjects (and to everything).
    let mut subs = Vec::new();
    for subject in [
        "agent.bob.inbox",
        "agent.bob.inbox.*",
        "agent.bob.direct.>",
        "tasks.bob",
        "$KV.agent-state.bob.>",
        ">",
        "_INBOX.>",
        "_INBOX.bob.>",
    ] {
        subs.push(alice.subscribe(subject.to_owned()).await.unwrap());
    }
    alice.flush().await.unwrap();
    let operator = w.server.connect().await;
    let js = async_nats::jetstream::new(operator.clone());
    for i in 0..10 {
        js.publish(
            "agent.bob.inbox.carol",
            json!({ "text": MARKER, "live": i }).to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for sub in &mut subs {
        while let Some(Some(message)) = sub.now_or_never_ext() {
            got += markers(&String::from_utf8_lossy(&message.payload));
        }
    }
    assert_eq!(got, 0, "markers read live");

    // JetStream: every way to read a stream's messages.
    let paths: Vec<(String, Value)> = vec![
        // A consumer on bob's inbox, in every create form.
        (
            "$JS.API.CONSUMER.CREATE.agent-messages".into(),
            json!({"stream_name": "agent-messages", "config": {"filter_subject": "agent.bob.inbox.*", "ack_policy": "none"}}),
        ),
        (
            "$JS.API.CONSUMER.CREATE.agent-messages.spy".into(),
            json!({"stream_name": "agent-messages", "config": {"name": "spy", "filter_subject": "agent.bob.inbox.*", "ack_policy": "none"}}),
        ),
        (
            "$JS.API.CONSUMER.CREATE.agent-messages.spy.agent.bob.inbox.carol".into(),
            json!({"stream_name": "agent-messages", "config": {"name": "spy", "filter_subject": "agent.bob.inbox.carol", "ack_policy": "none"}}),
        ),
        (
            "$JS.API.CONSUMER.DURABLE.CREATE.agent-messages.spy".into(),
            json!({"stream_name": "agent-messages", "config": {"durable_name": "spy", "ack_policy": "none"}}),
        ),
        // Alice's own consumer name with bob's filter.
        (
            "$JS.API.CONSUMER.CREATE.agent-messages.inbox-alice".into(),
            json!({"stream_name": "agent-messages", "config": {"durable_name": "inbox-alice", "filter_subject": "agent.bob.inbox.carol"}}),
        ),
        (
            "$JS.API.CONSUMER.CREATE.agent-tasks.tasks-alice-normal.tasks.bob".into(),
            json!({"stream_name": "agent-tasks", "config": {"durable_name": "tasks-alice-normal", "filter_subject": "tasks.bob"}}),
        ),
        // By sequence, and by subject.
        (
            "$JS.API.STREAM.MSG.GET.agent-messages".into(),
            json!({"seq": 1}),
        ),
        (
            "$JS.API.STREAM.MSG.GET.agent-tasks".into(),
            json!({"seq": 1}),
        ),
        (
            "$JS.API.DIRECT.GET.agent-messages".into(),
            json!({"seq": 1}),
        ),
        (
            "$JS.API.DIRECT.GET.agent-messages.agent.bob.inbox.carol".into(),
            json!(null),
        ),
        (
            "$JS.API.DIRECT.GET.KV_agent-state".into(),
            json!({"seq": 1}),
        ),
        (
            "$JS.API.DIRECT.GET.KV_agent-state.$KV.agent-state.bob.k1".into(),
            json!(null),
        ),
        // Bob's own consumers: pulling from them.
        (
            "$JS.API.CONSUMER.MSG.NEXT.agent-messages.inbox-bob".into(),
            json!({"batch": 10}),
        ),
        (
            "$JS.API.CONSUMER.MSG.NEXT.agent-messages.direct-bob".into(),
            json!({"batch": 10}),
        ),
        (
            "$JS.API.CONSUMER.MSG.NEXT.agent-tasks.tasks-bob-normal".into(),
            json!({"batch": 10}),
        ),
        // Reading the state bucket through a consumer on bob's keys.
        (
            "$JS.API.CONSUMER.CREATE.KV_agent-state.spy.$KV.agent-state.bob.>".into(),
            json!({"stream_name": "KV_agent-state", "config": {"name": "spy", "filter_subject": "$KV.agent-state.bob.>", "ack_policy": "none"}}),
        ),
    ];
    let mut answered = Vec::new();
    for (subject, body) in &paths {
        if let Some(text) = ask(&alice, subject, body.clone()).await {
            got += markers(&text);
            answered.push(subject.clone());
        }
    }
    assert_eq!(got, 0, "markers read through JetStream");
    assert!(answered.is_empty(), "alice was answered on {answered:?}");

    // Bob's state through the library, under bob's name.
    let alice_bus = Bus::connect(&w.alice, "alice").await.unwrap();
    let state = StateStore::open(&alice_bus, None).await.unwrap();
    let read =
        tokio::time::timeout(Duration::from_secs(3), state.agent(&name("bob")).get("k1")).await;
    assert!(
        !matches!(read, Ok(Ok(Some(_)))),
        "bob's state read: {read:?}"
    );
    let write = tokio::time::timeout(
        Duration::from_secs(3),
        state
            .agent(&name("bob"))
            .set("k1", &json!("overwritten"), None),
    )
    .await;
    assert!(
        !matches!(write, Ok(Ok(()))),
        "bob's state written: {write:?}"
    );
    let bob_bus = Bus::connect(&w.bob, "bob").await.unwrap();
    let bob_state = StateStore::open(&bob_bus, None).await.unwrap();
    let kept = bob_state.agent(&name("bob")).get("k1").await.unwrap();
    assert_eq!(
        kept,
        Some(json!({ "text": MARKER })),
        "bob's state is untouched"
    );

    // Streams and the system account.
    for subject in [
        "$JS.API.STREAM.DELETE.agent-dlq",
        "$JS.API.STREAM.PURGE.agent-messages",
        "$JS.API.STREAM.DELETE.KV_agent-state",
        "$JS.API.CONSUMER.DELETE.agent-messages.inbox-bob",
        "$SYS.REQ.SERVER.PING",
        // A letter forged for bob's queue, in the stream or parked.
        "dlq.tasks.bob",
        "$KV.agent-dlq-parked.tasks.bob.1",
        // Bob's presence: his entry and his runtime's heartbeat, also as
        // earlier versions keyed it (the instance id alone).
        "$KV.agent-presence.bob.bob1",
        "$KV.agent-presence.bob.bob1.alive",
        "$KV.agent-presence.bob1",
    ] {
        assert_eq!(ask(&alice, subject, json!({})).await, None, "{subject}");
    }
    // Her own deliveries' letters she may store, and her own presence.
    assert!(ask(&alice, "dlq.tasks.alice", json!({})).await.is_some());
    assert!(
        ask(&alice, "$KV.agent-presence.alice.alice1.alive", json!({}))
            .await
            .is_some()
    );
    let streams = js.stream_names().collect::<Vec<_>>().await;
    assert!(streams.len() >= 5, "streams survive: {streams:?}");
    js.get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
        "inbox-bob",
        "agent-messages",
    )
    .await
    .expect("bob's inbox consumer survives");

    // Bob, when he comes, finds all his markers: 20 messages and 10 tasks.
    let bob = Recorder::new("bob");
    let mut runtime = Runtime::new(bob_bus.clone());
    let options = AgentOptions {
        messages: true,
        ..AgentOptions::default()
    };
    runtime.add(bob.clone(), options).await.unwrap();
    let seen = bob.wait_for(40).await;
    let marked = seen
        .iter()
        .filter(|(_, _, v)| v.to_string().contains(MARKER));
    assert_eq!(
        marked.count(),
        40,
        "bob got all his markers (10 inbox, 10 direct, 10 live, 10 queued): {seen:?}"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// A stream's description can list every subject the stream holds, with a
/// count each: state keys, task keys, who messages whom, whose queue holds
/// how many tasks. Alice is described only the stream whose subjects tell
/// nothing of other agents (presence, which she reads whole), and her own
/// state works without any description.
#[tokio::test]
async fn alice_is_described_no_stream_whose_subjects_name_other_agents() {
    let w = world().await;
    // A key of bob's that names something, which a listing would show.
    let bob_bus = Bus::connect(&w.bob, "bob").await.unwrap();
    StateStore::open(&bob_bus, None)
        .await
        .unwrap()
        .agent(&name("bob"))
        .set(MARKER, &json!(1), None)
        .await
        .unwrap();
    let mut streams: Vec<&str> = agentbus::subject::STREAMS.to_vec();
    streams.extend([
        "KV_agent-state",
        "KV_agent-task-results",
        "KV_agent-presence",
        "KV_agent-dlq-parked",
    ]);
    let listing = json!({ "subjects_filter": ">" });
    let describe = |stream: &str| format!("$JS.API.STREAM.INFO.{stream}");

    // The operator is described the state bucket, bob's key with it: the
    // probe below would see a marker if alice were.
    let operator = w.server.connect().await;
    let described = ask(&operator, &describe("KV_agent-state"), listing.clone()).await;
    assert_eq!(described.as_deref().map(markers), Some(1), "{described:?}");

    let alice = w.alice.connect("alice").await.unwrap();
    let mut described = Vec::new();
    for stream in &streams {
        if let Some(text) = ask(&alice, &describe(stream), listing.clone()).await {
            assert_eq!(markers(&text), 0, "{stream}: {text}");
            assert!(!text.contains("carol"), "{stream}: {text}");
            assert!(!text.contains("tasks.bob"), "{stream}: {text}");
            described.push(*stream);
        }
    }
    assert_eq!(described, agentbus::permissions::DESCRIBABLE_STREAMS);

    // Her own state: written, read, listed, watched and deleted.
    let alice_bus = Bus::connect(&w.alice, "alice").await.unwrap();
    let state = StateStore::open(&alice_bus, None).await.unwrap();
    let mine = state.agent(&name("alice"));
    let mut changes = mine.watch().await.unwrap();
    mine.set("plan", &json!({ "step": 1 }), None).await.unwrap();
    mine.set("short", &json!(2), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(mine.get("plan").await.unwrap(), Some(json!({ "step": 1 })));
    assert_eq!(mine.list().await.unwrap(), ["plan", "short"]);
    mine.delete("short").await.unwrap();
    assert_eq!(mine.list().await.unwrap(), ["plan"]);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let change = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("a change within 5 s")
            .expect("the watch goes on");
        seen.push((change.key, change.value));
    }
    assert_eq!(
        seen,
        [
            ("plan".to_owned(), Some(json!({ "step": 1 }))),
            ("short".to_owned(), Some(json!(2))),
            ("short".to_owned(), None),
        ]
    );
}

/// `now_or_never` for a subscriber without pulling in `FutureExt` at the call site.
trait NowOrNever {
    fn now_or_never_ext(&mut self) -> Option<Option<async_nats::Message>>;
}

impl NowOrNever for async_nats::Subscriber {
    fn now_or_never_ext(&mut self) -> Option<Option<async_nats::Message>> {
        futures::FutureExt::now_or_never(self.next())
    }
}

#[tokio::test]
async fn only_bob_serves_bobs_tasks_and_senders_are_verified() {
    let w = world().await;
    let bob = Recorder::new("bob");
    let mut bob_runtime = Runtime::new(Bus::connect(&w.bob, "bob").await.unwrap());
    bob_runtime
        .add(
            bob.clone(),
            AgentOptions {
                work_queues: false,
                messages: false,
                ..AgentOptions::default()
            },
        )
        .await
        .unwrap();
    // Alice tries to join bob's queue group, on each subject bob's tasks
    // come on.
    let alice = w.alice.connect("alice").await.unwrap();
    let mut impostor = Vec::new();
    for subject in ["agent.bob.task", "agent.bob.task.*", "agent.bob.>"] {
        impostor.push(
            alice
                .queue_subscribe(subject.to_owned(), "bob".into())
                .await
                .unwrap(),
        );
    }
    alice.flush().await.unwrap();
    // And cannot serve as bob through a runtime either.
    let mut alice_runtime = Runtime::new(Bus::connect(&w.alice, "alice").await.unwrap());
    let err = alice_runtime
        .add(Recorder::new("bob"), AgentOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("identity"), "{err}");

    let alice_bus = Bus::connect(&w.alice, "alice").await.unwrap();
    let operator = Bus::from_client(w.server.connect().await);
    for i in 0..20 {
        let task = TaskRequest::new("echo", json!({ "i": i }));
        let from_alice = alice_bus
            .request("bob", &task, Default::default())
            .await
            .unwrap();
        assert_eq!(from_alice.result.unwrap()["served_by"], "bob");
        let task = TaskRequest::new("echo", json!({ "i": i }));
        let unverified = operator
            .request("bob", &task, Default::default())
            .await
            .unwrap();
        assert_eq!(unverified.result.unwrap()["sender"]["verified"], false);
    }
    let mut stolen = 0;
    for sub in &mut impostor {
        while let Some(Some(_)) = sub.now_or_never_ext() {
            stolen += 1;
        }
    }
    assert_eq!(stolen, 0, "requests taken by alice in bob's queue group");
    let seen = bob.seen();
    assert_eq!(seen.len(), 40);
    let from_alice = seen
        .iter()
        .filter(|(_, s, _)| *s == Sender::Agent(name("alice")))
        .count();
    let unverified = seen
        .iter()
        .filter(|(_, s, _)| *s == Sender::Unverified)
        .count();
    assert_eq!((from_alice, unverified), (20, 20));

    // Alice cannot send in bob's (or carol's) name, by subject or header.
    let js = async_nats::jetstream::new(alice.clone());
    for subject in [
        "agent.carol.inbox.bob",
        "agent.carol.task.bob",
        "broadcast.news.bob",
    ] {
        let sent = tokio::time::timeout(
            DENIED_WAIT,
            js.publish(
                subject.to_owned(),
                json!({"text": "from bob"}).to_string().into(),
            ),
        )
        .await;
        let acked = match sent {
            Ok(Ok(ack)) => tokio::time::timeout(DENIED_WAIT, ack)
                .await
                .is_ok_and(|a| a.is_ok()),
            _ => false,
        };
        assert!(!acked, "{subject} was stored");
    }
    // What alice sends carries alice, whatever her message claims.
    alice_bus
        .send("bob", &json!({ "from": "bob", "text": "hello" }))
        .await
        .unwrap();
    alice_bus
        .broadcast("news", &json!({ "from": "operator (trusted)" }))
        .await
        .unwrap();
    let bob_messages = Recorder::new("bob");
    let mut messages_runtime = Runtime::new(Bus::connect(&w.bob, "bob").await.unwrap());
    bob_runtime.shutdown(Duration::from_secs(5)).await;
    messages_runtime
        .add(
            bob_messages.clone(),
            AgentOptions {
                work_queues: false,
                messages: true,
                broadcast_topics: vec!["news".into()],
                ..AgentOptions::default()
            },
        )
        .await
        .unwrap();
    let seen = bob_messages.wait_for(22).await;
    let claimed: Vec<&Sender> = seen
        .iter()
        .filter(|(_, _, body)| body.get("from").is_some())
        .map(|(_, sender, _)| sender)
        .collect();
    assert_eq!(claimed, [&Sender::Agent(name("alice")); 2], "{seen:?}");
    let from_carol = seen
        .iter()
        .filter(|(_, s, _)| *s == Sender::Agent(name("carol")))
        .count();
    assert_eq!(from_carol, 20, "the markers carol sent carry carol");
    messages_runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_restricted_identity_is_refused_exactly_what_it_was_restricted_from() {
    let server = NatsServer::start().await;
    let mut grant = Grant::new(name("reader"));
    grant.may_call = Some(vec![name("search")]);
    grant.may_message = Some(vec![name("search")]);
    let reader = server.add_identity(grant).await;
    let serving = |agent: &str| {
        let mut grant = Grant::new(name(agent));
        grant.work_types = vec![name("echo")];
        if agent == "search" {
            grant.events = vec![EventPattern::parse("chat.>").unwrap()];
        }
        grant
    };
    let search = server.add_identity(serving("search")).await;
    let shell = server.add_identity(serving("shell")).await;
    let mut runtimes = Vec::new();
    let agents = [("search", &search), ("shell", &shell)].map(|(n, target)| {
        let recorder = Recorder::new(if n == "search" { "search" } else { "shell" });
        (recorder, target)
    });
    for (recorder, target) in &agents {
        let mut runtime = Runtime::new(Bus::connect(target, recorder.name).await.unwrap());
        let options = AgentOptions {
            messages: true,
            ..AgentOptions::default()
        };
        runtime.add(recorder.clone(), options).await.unwrap();
        runtimes.push(runtime);
    }
    let bus = Bus::connect(&reader, "reader").await.unwrap();
    let task = TaskRequest::new("echo", json!({}));
    let quick = agentbus::RequestOptions {
        timeout: Duration::from_secs(1),
        retries: 0,
    };
    assert!(bus.request("search", &task, quick).await.is_ok());
    assert!(bus.request("shell", &task, quick).await.is_err());
    assert!(bus.send("search", &json!({"m": 1})).await.is_ok());
    assert!(
        tokio::time::timeout(Duration::from_secs(2), bus.send("shell", &json!({"m": 1})))
            .await
            .map_or(true, |sent| sent.is_err())
    );
    assert!(
        tokio::time::timeout(
            Duration::from_secs(2),
            bus.submit(&Queue::agent("shell").unwrap(), &task)
        )
        .await
        .map_or(true, |sent| sent.is_err())
    );
    assert_eq!(
        agents[0].0.wait_for(2).await.len(),
        2,
        "search got the task and the message"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(agents[1].0.seen().is_empty(), "shell got nothing");
    // Broadcasts are not restricted.
    assert!(bus.broadcast("news", &json!({})).await.is_ok());
    // Application events: search was granted chat.>, the reader none.
    let operator = server.connect().await;
    let mut events = operator.subscribe("chat.>").await.unwrap();
    let mut others = operator.subscribe("orders.>").await.unwrap();
    operator.flush().await.unwrap();
    let searcher = Bus::connect(&search, "search-events").await.unwrap();
    let mut heard = searcher.subscribe("chat.>", None).await.unwrap();
    searcher
        .publish("chat.said", &json!({"n": 1}))
        .await
        .unwrap();
    searcher
        .publish("orders.made", &json!({"n": 2}))
        .await
        .unwrap();
    bus.publish("chat.said", &json!({"n": 3})).await.unwrap();
    searcher.flush().await.unwrap();
    bus.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload.as_ref(), br#"{"n":1}"#);
    let echoed = tokio::time::timeout(Duration::from_secs(2), heard.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed.subject, "chat.said");
    let none = async {
        tokio::select! {
            _ = events.next() => "a chat event from the reader",
            _ = others.next() => "an ungranted event",
        }
    };
    if let Ok(what) = tokio::time::timeout(Duration::from_millis(500), none).await {
        panic!("got {what}");
    }
    for runtime in runtimes {
        runtime.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn a_revoked_identity_is_cut_off_and_others_stay_connected() {
    let server = NatsServer::start().await;
    let mallory = server.add_identity(Grant::new(name("mallory"))).await;
    let bob = server.add_identity(Grant::new(name("bob"))).await;
    let bob_client = bob.connect("bob").await.unwrap();
    let mallory_client = mallory.connect("mallory").await.unwrap();
    // Keep a copy of mallory's seed: revoking removes the files.
    let agentbus::connect::Credentials::NkeyFile(seed_file) = mallory.credentials().clone() else {
        panic!("an nkey identity")
    };
    let kept = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(&seed_file, kept.path()).unwrap();
    let old = mallory
        .clone()
        .with_credentials(agentbus::connect::Credentials::NkeyFile(kept.path().into()));

    let started = std::time::Instant::now();
    server.revoke_identity("mallory").await;
    let mut cut = false;
    for _ in 0..100 {
        if mallory_client.connection_state() != async_nats::connection::State::Connected {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cut, "mallory is disconnected");
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = old.connect("mallory-again").await.unwrap_err();
    assert_eq!(
        err.kind(),
        agentbus::connect::ConnectErrorKind::Refused,
        "{err}"
    );
    // Bob never noticed.
    assert_eq!(
        bob_client.connection_state(),
        async_nats::connection::State::Connected
    );
    assert_eq!(
        bob_client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// A runtime on an identity works the shared queues its identity was
/// granted only: the others would time out each time work arrives, and
/// stall its queue while they did.
#[tokio::test]
async fn a_runtime_works_only_the_shared_queues_its_identity_was_granted() {
    let server = NatsServer::start().await;
    let operator = Bus::from_client(server.connect().await);
    // Recorder accepts `echo`; search was granted no shared queue.
    let search = server.add_identity(Grant::new(name("search"))).await;
    assert_eq!(search.work_types(), Some(&[][..]));
    let recorder = Recorder::new("search");
    let mut runtime = Runtime::new(Bus::connect(&search, "search").await.unwrap());
    runtime
        .add(recorder.clone(), AgentOptions::default())
        .await
        .unwrap();
    let shared = TaskRequest::new("echo", json!({"queue": "work"}));
    operator
        .submit(&Queue::TaskType(name("echo")), &shared)
        .await
        .unwrap();
    // Its own queue keeps flowing, one task after another.
    let started = std::time::Instant::now();
    for n in 0..3 {
        let own = TaskRequest::new("echo", json!({"n": n}));
        operator
            .submit(&Queue::agent("search").unwrap(), &own)
            .await
            .unwrap();
        assert_eq!(recorder.wait_for(n + 1).await.len(), n + 1);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the own queue took {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorder.seen().len(), 3, "the shared task was not taken");
    runtime.shutdown(Duration::from_secs(2)).await;

    // Granted, the same agent takes it.
    let mut grant = Grant::new(name("search"));
    grant.work_types = vec![name("echo")];
    let granted = server.add_identity(grant).await;
    let recorder = Recorder::new("search");
    let mut runtime = Runtime::new(Bus::connect(&granted, "search").await.unwrap());
    runtime
        .add(recorder.clone(), AgentOptions::default())
        .await
        .unwrap();
    let seen = recorder.wait_for(1).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].2, json!({"queue": "work"}));
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// Gives up on its first task for good, then does its work.
#[derive(Clone, Default)]
struct GivesUpOnce(Arc<Mutex<usize>>);

impl Agent for GivesUpOnce {
    fn name(&self) -> &str {
        "search"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("echo").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let run = {
            let mut runs = self.0.lock().unwrap();
            *runs += 1;
            *runs
        };
        ctx.progress(Some(0.5), Some("halfway")).await.ok();
        if run == 1 {
            return Err(TaskError::permanent("not today"));
        }
        Ok(task.payload.into_value())
    }
}

/// A task that became a dead letter under an agent identity, replayed by
/// the operator, runs again and logs its new run to the end: the replay
/// clears the earlier run's log, which the identity may not.
#[tokio::test]
async fn a_dead_letter_replayed_by_the_operator_runs_again_on_an_identity() {
    let server = NatsServer::start().await;
    let operator = Bus::from_client(server.connect().await);
    let mut grant = Grant::new(name("search"));
    grant.work_types = vec![name("echo")];
    let search = server.add_identity(grant).await;
    let agent = GivesUpOnce::default();
    let mut runtime = Runtime::new(Bus::connect(&search, "search").await.unwrap());
    runtime
        .add(agent.clone(), AgentOptions::default())
        .await
        .unwrap();
    let task = TaskRequest::new("echo", json!({"n": 1}));
    operator
        .submit(&Queue::agent("search").unwrap(), &task)
        .await
        .unwrap();
    let ended = operator
        .wait_task(&task.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ended.status, TaskStatus::Failed, "{ended:?}");
    assert_eq!(
        operator.task_state(&task.task_id).await.unwrap(),
        agentbus::delivery::TaskState::DeadLettered
    );

    let started = std::time::Instant::now();
    assert_eq!(
        operator
            .replay_dead_letter(task.task_id.as_str())
            .await
            .unwrap(),
        1
    );
    let ended = operator
        .wait_task(&task.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ended.status, TaskStatus::Completed, "{ended:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The log holds the new run alone, from its first event to its end.
    let mut watch = operator.watch(&task.task_id, 1).await.unwrap();
    let mut kinds = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
    {
        if let agentbus::task_log::Watched::Event(event) = item.unwrap() {
            kinds.push((event.seq, event.kind));
        }
    }
    assert_eq!(kinds.first().map(|k| k.0), Some(1), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|(_, kind)| kind.is_final()).count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(|k| k.1),
        Some(agentbus::task_log::EventType::Completed),
        "{kinds:?}"
    );
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// Asks its caller a question, streams the answer back in two parts, then
/// waits to be cancelled.
#[derive(Clone)]
struct Interviewer;

impl Agent for Interviewer {
    fn name(&self) -> &str {
        "writer"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("interview").unwrap()]
    }

    async fn handle(&self, _task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let answer = ctx.ask(json!("which colour?")).await?;
        ctx.partial(&json!({"heard": answer})).await.ok();
        ctx.partial(&json!({"from": ctx.sender()})).await.ok();
        ctx.cancelled().await;
        Err(TaskError::cancelled("stopped by the caller"))
    }
}

/// Agent `writer` (an identity) runs an [`Interviewer`]; `boss` (another)
/// has queued it a task, streamed, and follows its log.
struct Interview {
    server: NatsServer,
    runtime: Runtime,
    caller: Bus,
    task: TaskRequest,
    watch: agentbus::task_log::Watch,
}

async fn interview() -> Interview {
    let server = NatsServer::start().await;
    let mut grant = Grant::new(name("writer"));
    grant.work_types = vec![name("interview")];
    let writer = server.add_identity(grant).await;
    let boss = server.add_identity(Grant::new(name("boss"))).await;
    let mut runtime = Runtime::new(Bus::connect(&writer, "writer").await.unwrap());
    runtime
        .add(Interviewer, AgentOptions::default())
        .await
        .unwrap();
    let caller = Bus::connect(&boss, "boss").await.unwrap();
    let task = TaskRequest::new("interview", json!({})).streamed();
    let watch = caller.watch(&task.task_id, 1).await.unwrap();
    caller
        .submit(&Queue::agent("writer").unwrap(), &task)
        .await
        .unwrap();
    Interview {
        server,
        runtime,
        caller,
        task,
        watch,
    }
}

/// A long-running task between two agent identities: the caller follows
/// its log, answers its question and cancels it, all by the task's id.
#[tokio::test]
async fn a_long_task_between_identities_is_followed_answered_and_cancelled() {
    let Interview {
        server: _server,
        runtime,
        caller,
        task,
        mut watch,
    } = interview().await;

    let started = std::time::Instant::now();
    let mut kinds = Vec::new();
    let mut partials = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the log goes on")
    {
        let agentbus::task_log::Watched::Event(event) = item.unwrap() else {
            continue;
        };
        kinds.push(event.kind);
        match event.kind {
            agentbus::task_log::EventType::InputRequired => {
                caller.answer(&task.task_id, &json!("blue")).await.unwrap();
            }
            agentbus::task_log::EventType::Partial => {
                partials.push(event.data.clone());
                if partials.len() == 2 {
                    caller.cancel(&task.task_id).await.unwrap();
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        partials,
        [
            json!({"heard": "blue"}),
            json!({"from": {"agent": null, "verified": false}})
        ],
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last(),
        Some(&agentbus::task_log::EventType::Cancelled),
        "{kinds:?}"
    );
    // No step waited on a refused permission.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// The live instance that reports another agent's death may not remove
/// that agent's entry under an agent identity: it leaves it to expire, and
/// its own heartbeats go on (a refused removal would hold them past
/// `offline_after`).
#[tokio::test]
async fn an_identity_reporting_another_agents_death_stays_online() {
    let server = NatsServer::start().await;
    let operator = Bus::from_client(server.connect().await);
    // Reported in the reporting agent's name.
    let mut offline = operator
        .subscribe("platform.events.agent_offline.watcher", None)
        .await
        .unwrap();
    let watcher = server.add_identity(Grant::new(name("watcher"))).await;
    let mut runtime = Runtime::new(Bus::connect(&watcher, "watcher").await.unwrap());
    let options = AgentOptions {
        heartbeat: agentbus::presence::PresenceOptions {
            interval: Duration::from_millis(200),
            offline_after: Duration::from_secs(1),
        },
        work_queues: false,
        ..AgentOptions::default()
    };
    runtime
        .add(Recorder::new("watcher"), options)
        .await
        .unwrap();

    // A victim whose heartbeat lives one second, written by the operator.
    let presence = operator
        .jetstream()
        .get_key_value(agentbus::state::PRESENCE_BUCKET)
        .await
        .unwrap();
    let entry = json!({
        "name": "victim", "instance_id": "victim1", "task_types": [],
        "version": "0", "started_at": "2026-01-01T00:00:00Z", "host": "h",
        "in_flight": 0, "last_seen": "2026-01-01T00:00:00Z",
    });
    presence
        .put("victim.victim1", entry.to_string().into())
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_TTL, "1");
    let beat = json!({"instance_id": "victim1", "host": "h", "last_seen": "2026-01-01T00:00:00Z"});
    operator
        .jetstream()
        .publish_with_headers(
            format!("$KV.{}.victim1", agentbus::state::PRESENCE_BUCKET),
            headers,
            beat.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let event = tokio::time::timeout(Duration::from_secs(10), offline.next())
        .await
        .expect("the victim is reported offline")
        .unwrap();
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["agent"], "victim", "{event}");
    assert_eq!(event["reported_by"], runtime.instance_id());
    // Twice offline_after later, the reporter is still online.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = StateStore::open(&operator, None).await.unwrap();
    let online: Vec<String> = agentbus::presence::online_agents(&store)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(online, ["watcher"]);
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// A caller with an agent identity cancels a queued task without reading
/// the queue, which it may not: the task's record and log are marked, at
/// once.
#[tokio::test]
async fn a_queued_task_cancelled_by_an_identity_is_marked_at_once() {
    let server = NatsServer::start().await;
    let boss = Bus::connect(&server.add_identity(Grant::new(name("boss"))).await, "boss")
        .await
        .unwrap();
    let task = TaskRequest::new("echo", json!({"n": 1}));
    boss.submit_recorded(
        &Queue::agent("search").unwrap(),
        &task,
        agentbus::delivery::ResultRetention::Keep,
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let outcome = boss.cancel(&task.task_id).await.unwrap();
    assert_eq!(outcome, agentbus::task_log::CancelOutcome::Marked);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        boss.task_state(&task.task_id).await.unwrap(),
        agentbus::delivery::TaskState::Cancelled
    );
    // The worker that comes later finds the record and never runs it: the
    // task leaves the queue.
    let search = Recorder::new("search");
    let worker = Bus::connect(
        &server.add_identity(Grant::new(name("search"))).await,
        "search",
    )
    .await
    .unwrap();
    let mut runtime = Runtime::new(worker);
    runtime
        .add(search.clone(), AgentOptions::default())
        .await
        .unwrap();
    let tasks = server
        .jetstream()
        .await
        .get_stream(agentbus::subject::TASKS_STREAM)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tasks.get_info().await.unwrap().state.messages > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the task stays queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        search.seen.lock().unwrap().is_empty(),
        "the cancelled task ran"
    );
    assert_eq!(
        boss.task_state(&task.task_id).await.unwrap(),
        agentbus::delivery::TaskState::Cancelled
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// Under identities, an idle agent's queue is rung on its one subscription:
/// the tasks stream's republish reaches bob's `agent.bob.>`, and alice may
/// ring a task she queued at high priority. Bob's runtime holds no doorbell
/// and does not sweep during the test, so only the rings explain that the
/// tasks run.
#[tokio::test]
async fn an_identity_is_rung_on_its_one_subscription() {
    let server = NatsServer::start().await;
    let bob = server.add_identity(Grant::new(name("bob"))).await;
    let alice = server.add_identity(Grant::new(name("alice"))).await;
    let (recorder, runtime) = recording_bob(&bob, Duration::from_secs(600)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let subjects: Vec<String> = server
        .subscriptions("bob")
        .await
        .into_iter()
        .map(|s| s.subject)
        .collect();
    assert!(subjects.iter().any(|s| s == "agent.bob.>"), "{subjects:?}");
    assert!(
        !subjects.iter().any(|s| s.starts_with("tasks.")),
        "a doorbell: {subjects:?}"
    );
    let alice_bus = Bus::connect(&alice, "alice").await.unwrap();
    for (n, priority) in [Priority::Normal, Priority::High].into_iter().enumerate() {
        let task = TaskRequest::new("echo", json!({ "n": n })).with_priority(priority);
        alice_bus
            .submit(&Queue::agent("bob").unwrap(), &task)
            .await
            .unwrap();
        assert_eq!(recorder.wait_for(n + 1).await.len(), n + 1, "{priority:?}");
    }
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// What nothing rings (a task stored on a queue by a plain JetStream
/// publish at a priority the stream does not republish, as a redelivery
/// is) is found by the worker's sweep, which on an identity reads the last
/// task of each of its own queues: the identity may not have the tasks
/// stream described, nor read another agent's queue that way.
#[tokio::test]
async fn an_identity_sweeps_its_own_queues_without_describing_the_stream() {
    let server = NatsServer::start().await;
    let bob = server.add_identity(Grant::new(name("bob"))).await;
    let (recorder, runtime) = recording_bob(&bob, Duration::from_millis(200)).await;
    let operator = server.connect().await;
    let js = async_nats::jetstream::new(operator.clone());
    for (n, queue) in ["tasks.bob.high", "tasks.bob.low", "tasks.carol.high"]
        .into_iter()
        .enumerate()
    {
        store_unrung(&js, queue, n).await;
    }
    assert_eq!(recorder.wait_for(2).await.len(), 2);

    // Bob's sweep: his own queues' last tasks, not the stream's subjects.
    let bob_client = bob.connect("bob-probe").await.unwrap();
    let listing = json!({ "subjects_filter": ">" });
    let described = ask(&bob_client, "$JS.API.STREAM.INFO.agent-tasks", listing).await;
    assert_eq!(described, None, "bob was described the tasks stream");
    for (subject, readable) in [
        ("$JS.API.DIRECT.GET.agent-tasks.tasks.carol.high", false),
        ("$JS.API.DIRECT.GET.agent-tasks.tasks.carol.*", false),
        ("$JS.API.DIRECT.GET.agent-tasks.tasks.*.high", false),
        ("$JS.API.DIRECT.GET.agent-tasks.>", false),
        ("$JS.API.DIRECT.GET.agent-tasks.tasks.bob.*", true),
    ] {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            bob_client.request(subject.to_owned(), "".into()),
        )
        .await;
        let answered = matches!(&answer, Ok(Ok(message)) if message.status.is_none()
            || message.status == Some(async_nats::StatusCode::NOT_FOUND));
        assert_eq!(answered, readable, "{subject}: {answer:?}");
    }
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// An identity's worker whose queues were all empty at its last sweep
/// leaves the next nine out (nothing there can be redelivered, and new work
/// rings); a task nothing rang is still found, a few sweeps later.
#[tokio::test]
async fn an_idle_identity_sweeps_its_empty_queues_a_tenth_as_often() {
    let server = NatsServer::start().await;
    let bob = server.add_identity(Grant::new(name("bob"))).await;
    let operator = server.connect().await;
    let mut gets = operator
        .subscribe("$JS.API.DIRECT.GET.agent-tasks.>")
        .await
        .unwrap();
    operator.flush().await.unwrap();
    let idle_poll = Duration::from_millis(100);
    let (recorder, runtime) = recording_bob(&bob, idle_poll).await;
    // Three seconds of idle: thirty sweeps of two direct gets each, were
    // every one made.
    let idle = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut made = 0;
    while let Ok(Some(_)) = tokio::time::timeout_at(idle, gets.next()).await {
        made += 1;
    }
    assert!(
        (2..=12).contains(&made),
        "{made} direct gets of bob's queues in 3 s of idle"
    );

    let js = async_nats::jetstream::new(operator.clone());
    store_unrung(&js, "tasks.bob.high", 1).await;
    assert_eq!(recorder.wait_for(1).await.len(), 1);
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// Stores task `n` on `queue` by plain JetStream publish, as a client outside
/// agentbus may: nothing rings for a priority other than normal, so only a
/// sweep finds it.
async fn store_unrung(js: &async_nats::jetstream::Context, queue: &str, n: usize) {
    let task = TaskRequest::new("echo", json!({ "n": n }));
    js.publish(queue.to_owned(), task.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Asserts that alice's cancel of a task she did not send was not obeyed.
fn assert_not_cancelling(
    cancelled: Result<agentbus::task_log::CancelOutcome, agentbus::task_log::ControlError>,
) {
    assert!(
        !matches!(
            cancelled,
            Ok(agentbus::task_log::CancelOutcome::Cancelling { .. })
        ),
        "alice cancelled: {cancelled:?}"
    );
}

/// Every control request, heard as a runtime without an identity hears them.
async fn operator_hearing_controls(server: &NatsServer) -> async_nats::Subscriber {
    let operator = server.connect().await;
    let everything = operator
        .subscribe(agentbus::subject::ALL_TASK_CONTROLS)
        .await
        .unwrap();
    operator.flush().await.unwrap();
    everything
}

/// A tasks stream that answers no direct gets (a topology from before they
/// were allowed) fails an identity's sweeps at once, and the worker goes
/// on: a rung task runs without waiting out a request that no one answers.
/// Once the stream allows them again, the sweep finds what nothing rang.
#[tokio::test]
async fn an_identity_worker_goes_on_while_its_queues_cannot_be_read() {
    let server = NatsServer::start().await;
    let bob = server.add_identity(Grant::new(name("bob"))).await;
    let alice = server.add_identity(Grant::new(name("alice"))).await;
    let operator = server.connect().await;
    let js = async_nats::jetstream::new(operator.clone());
    let allow_direct = |allowed: bool| {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("agent-tasks").await.unwrap();
            let mut config = stream.info().await.unwrap().config.clone();
            config.allow_direct = allowed;
            js.update_stream(config).await.unwrap();
        }
    };
    allow_direct(false).await;
    let (recorder, runtime) = recording_bob(&bob, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alice_bus = Bus::connect(&alice, "alice").await.unwrap();
    let rung = TaskRequest::new("echo", json!({ "n": 0 }));
    let sent = std::time::Instant::now();
    alice_bus
        .submit(&Queue::agent("bob").unwrap(), &rung)
        .await
        .unwrap();
    assert_eq!(recorder.wait_for(1).await.len(), 1);
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "the rung task waited {:?}",
        sent.elapsed()
    );

    allow_direct(true).await;
    store_unrung(&js, "tasks.bob.low", 1).await;
    assert_eq!(recorder.wait_for(2).await.len(), 2);
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// Asserts that none of `listening` received a control request.
fn assert_heard_no_control(listening: &mut [async_nats::Subscriber]) {
    for subscription in listening {
        while let Some(Some(message)) = subscription.now_or_never_ext() {
            assert!(
                !message.subject.as_str().contains(".control."),
                "heard {}",
                message.subject
            );
        }
    }
}

/// Bob's runtime on his identity, recording his tasks, sweeping his queues
/// every `idle_poll`.
async fn recording_bob(
    bob: &agentbus::connect::ServerTarget,
    idle_poll: Duration,
) -> (Recorder, Runtime) {
    let recorder = Recorder::new("bob");
    let mut runtime = Runtime::new(Bus::connect(bob, "bob").await.unwrap());
    let options = AgentOptions {
        delivery: DeliveryOptions {
            idle_poll,
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(recorder.clone(), options).await.unwrap();
    (recorder, runtime)
}

/// Echoes its task's payload as a partial and as its result.
struct Echoer;

impl Agent for Echoer {
    fn name(&self) -> &str {
        "bob"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("echo").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let payload = task.payload.into_value();
        ctx.partial(&payload).await.ok();
        // Made once, kept beside the task's record with the runner's rights.
        ctx.once("echo", || async { Ok(payload) }).await
    }
}

/// The records and logs of the tasks carol sends bob (queued and over
/// request/reply, streamed, with results) are hers and bob's: alice, who
/// may call bob herself, gets none of them through any pattern, nor through
/// the library by their ids, while carol follows hers and reads their
/// results.
#[tokio::test]
async fn alice_reads_none_of_the_records_and_logs_of_tasks_between_carol_and_bob() {
    let server = NatsServer::start().await;
    let mut grant = Grant::new(name("bob"));
    grant.work_types = vec![name("echo")];
    let bob = server.add_identity(grant).await;
    let alice = server.add_identity(Grant::new(name("alice"))).await;
    let carol = server.add_identity(Grant::new(name("carol"))).await;
    let mut runtime = Runtime::new(Bus::connect(&bob, "bob").await.unwrap());
    runtime.add(Echoer, AgentOptions::default()).await.unwrap();

    let carol_bus = Bus::connect(&carol, "carol").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let queued = TaskRequest::new("echo", json!({ "text": MARKER, "i": i })).streamed();
        carol_bus
            .submit(&Queue::agent("bob").unwrap(), &queued)
            .await
            .unwrap();
        let shared = TaskRequest::new("echo", json!({ "text": MARKER, "shared": i })).streamed();
        carol_bus
            .submit(&Queue::task_type("echo").unwrap(), &shared)
            .await
            .unwrap();
        let asked = TaskRequest::new("echo", json!({ "text": MARKER, "asked": i })).streamed();
        let answer = carol_bus
            .request("bob", &asked, agentbus::RequestOptions::default())
            .await
            .unwrap();
        assert_eq!(answer.status, TaskStatus::Completed);
        ids.extend([queued.task_id, shared.task_id, asked.task_id]);
    }
    // Carol reads what she sent: results, logs and their markers.
    for (i, id) in ids.iter().enumerate() {
        if i % 3 != 2 {
            let response = carol_bus
                .wait_task(id, Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(markers(&response.result.unwrap().to_string()), 1);
        }
        // A queued task's final event follows its record.
        let mut last = None;
        for _ in 0..100 {
            last = carol_bus.last_task_event(id).await.unwrap();
            if last.as_ref().is_some_and(|event| event.kind.is_final()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            last.is_some_and(|event| markers(&event.data.to_string()) == 1),
            "carol reads the log of {id}"
        );
    }

    let alice_client = alice.connect("alice").await.unwrap();
    let records = "$KV.agent-task-results";
    let spy = |filter: &str, stream: &str| {
        (
            format!("$JS.API.CONSUMER.CREATE.{stream}.spy.{filter}"),
            json!({"stream_name": stream, "config": {"name": "spy", "filter_subject": filter, "ack_policy": "none", "deliver_subject": "_INBOX.alice.spy"}}),
        )
    };
    let mut paths: Vec<(String, Value)> = Vec::new();
    for filter in [
        format!("{records}.*"),
        format!("{records}.>"),
        format!("{records}.*.*.*.*"),
        format!("{records}.agent.bob.*.*"),
        format!("{records}.agent.bob.carol.*"),
        format!("{records}.work.echo.*.*"),
        format!("{records}.*.*.carol.*"),
    ] {
        paths.push(spy(&filter, "KV_agent-task-results"));
        paths.push((
            format!("$JS.API.DIRECT.GET.KV_agent-task-results.{filter}"),
            json!(null),
        ));
    }
    for filter in [
        "task.*.events",
        "task.>",
        "task.*.*.*.*.events",
        "task.agent.bob.*.*.events",
        "task.work.echo.*.*.events",
        "task.*.*.carol.*.events",
    ] {
        paths.push(spy(filter, "agent-task-events"));
        paths.push((
            format!("$JS.API.DIRECT.GET.agent-task-events.{filter}"),
            json!(null),
        ));
    }
    paths.push((
        format!(
            "$JS.API.DIRECT.GET.agent-task-events.task.agent.bob.carol.{}.events",
            ids[2]
        ),
        json!(null),
    ));
    // The caller may write her own task's record, not the result of an
    // effect its runner makes once for it.
    for (key, allowed) in [
        ("agent.bob.alice.t-forged", true),
        ("agent.bob.alice.t-forged.echo", false),
        ("work.echo.alice.t-forged.echo", false),
    ] {
        let answer = ask(
            &alice_client,
            &format!("{records}.{key}"),
            json!({"state": "made", "value": "forged"}),
        )
        .await;
        assert_eq!(answer.is_some(), allowed, "{key}: {answer:?}");
    }
    // Asked at once: each refusal is a wait for nothing.
    let replies = futures::future::join_all(
        paths
            .iter()
            .map(|(subject, body)| ask(&alice_client, subject, body.clone())),
    )
    .await;
    let mut got = 0;
    let mut answered = Vec::new();
    for ((subject, _), reply) in paths.iter().zip(replies) {
        if let Some(text) = reply {
            got += markers(&text);
            answered.push(subject.clone());
        }
    }
    assert_eq!(got, 0, "markers read from records and logs");
    assert!(answered.is_empty(), "alice was answered on {answered:?}");

    // Through the library, by the ids themselves.
    let alice_bus = Bus::connect(&alice, "alice").await.unwrap();
    for id in &ids {
        assert_eq!(alice_bus.task_record(id).await.unwrap(), None, "{id}");
        assert!(
            alice_bus.last_task_event(id).await.unwrap().is_none(),
            "{id}"
        );
        let report = alice_bus.task_report(id).await.unwrap();
        assert_eq!(report.record, None, "{id}");
        assert_eq!(report.last_event, None, "{id}");
    }
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// A task obeys the agent that sent it: another identity that learns its id
/// can neither answer its question nor cancel it, by the library or by hand
/// (in the caller's name or as the operator), while the caller does both.
#[tokio::test]
async fn only_the_caller_answers_and_cancels_its_task() {
    let Interview {
        server,
        runtime,
        caller,
        task,
        mut watch,
    } = interview().await;
    let alice = server.add_identity(Grant::new(name("alice"))).await;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the question comes")
            .expect("the log goes on")
            .unwrap();
        if let agentbus::task_log::Watched::Event(event) = item
            && event.kind == agentbus::task_log::EventType::InputRequired
        {
            break;
        }
    }

    let intruder = Bus::connect(&alice, "alice").await.unwrap();
    let answered = intruder.answer(&task.task_id, &json!("red")).await;
    assert!(answered.is_err(), "alice answered: {answered:?}");
    assert_not_cancelling(intruder.cancel(&task.task_id).await);
    let by_hand = alice.connect("alice-by-hand").await.unwrap();
    for from in ["boss", "_", "alice"] {
        for runner in ["agent.writer", "_._"] {
            for verb in ["cancel", "answer", "status"] {
                let subject = format!("task.{from}.{runner}.{}.control.{verb}", task.task_id);
                assert_eq!(
                    ask(&by_hand, &subject, json!("red")).await,
                    None,
                    "{subject} answered"
                );
            }
        }
    }

    // The task still waits for its caller's answer, and stops at its cancel.
    // Alice hears none of the caller's requests, on any subject she may or
    // may not subscribe to; the operator, listening as a runtime without an
    // identity does, hears them all.
    let mut everything = operator_hearing_controls(&server).await;
    let mut listening = Vec::new();
    for pattern in [
        agentbus::subject::ALL_TASK_CONTROLS,
        agentbus::subject::ANONYMOUS_UNADDRESSED_TASK_CONTROLS,
        "task.*._._.*.control.*",
        "task.*.agent.alice.*.control.*",
        "task.*.agent.writer.*.control.*",
        "task.boss.>",
        ">",
    ] {
        listening.push(by_hand.subscribe(pattern).await.unwrap());
    }
    by_hand.flush().await.unwrap();
    let status = caller.task_report(&task.task_id).await.unwrap();
    assert_eq!(status.state, agentbus::delivery::TaskState::InputRequired);
    caller.answer(&task.task_id, &json!("blue")).await.unwrap();
    let mut heard = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(300), everything.next()).await
    {
        let body = String::from_utf8_lossy(&message.payload).into_owned();
        assert!(
            !body.contains("blue"),
            "the answer went on the wire: {body}"
        );
        heard.push(message.subject.to_string());
    }
    // Addressed to the task's runner, in the caller's name.
    let answer = format!("task.boss.agent.writer.{}.control.answer", task.task_id);
    assert!(heard.contains(&answer), "{heard:?}");
    assert!(
        heard
            .iter()
            .all(|subject| subject.starts_with("task.boss.agent.writer.")),
        "{heard:?}"
    );
    assert_heard_no_control(&mut listening);
    let mut partials = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the log goes on")
    {
        let agentbus::task_log::Watched::Event(event) = item.unwrap() else {
            continue;
        };
        if event.kind == agentbus::task_log::EventType::Partial {
            partials.push(event.data.clone());
            if partials.len() == 2 {
                let outcome = caller.cancel(&task.task_id).await.unwrap();
                assert!(
                    matches!(
                        outcome,
                        agentbus::task_log::CancelOutcome::Cancelling { .. }
                    ),
                    "{outcome:?}"
                );
            }
        }
        if event.kind.is_final() {
            assert_eq!(event.kind, agentbus::task_log::EventType::Cancelled);
        }
    }
    assert_eq!(partials[0], json!({"heard": "blue"}));
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// Waits for its cancel, and logs nothing on the way.
struct Sleeper;

impl Agent for Sleeper {
    fn name(&self) -> &str {
        "sleeper"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("sleep").unwrap()]
    }

    async fn handle(&self, _task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        ctx.cancelled().await;
        Err(TaskError::cancelled("stopped by the caller"))
    }
}

/// A request/reply task that logs nothing has no record or log its caller
/// can find its runner in: the caller, waiting for it, knows whom it asked,
/// and its status request and cancel name that runner; a stranger's cancel,
/// which names none, reaches no runtime on an identity. No other agent
/// hears the caller's requests; the operator, listening as a runtime
/// without an identity does, hears them addressed.
#[tokio::test]
async fn an_identity_cancels_a_quiet_request_it_sent() {
    let server = NatsServer::start().await;
    let sleeper = server.add_identity(Grant::new(name("sleeper"))).await;
    let boss = server.add_identity(Grant::new(name("boss"))).await;
    let alice = server.add_identity(Grant::new(name("alice"))).await;
    let mut runtime = Runtime::new(Bus::connect(&sleeper, "sleeper").await.unwrap());
    runtime.add(Sleeper, AgentOptions::default()).await.unwrap();
    let mut everything = operator_hearing_controls(&server).await;
    let by_hand = alice.connect("alice-by-hand").await.unwrap();
    let mut listening = Vec::new();
    for pattern in ["task.*._._.*.control.*", "task.boss.>", ">"] {
        listening.push(by_hand.subscribe(pattern).await.unwrap());
    }
    by_hand.flush().await.unwrap();
    let caller = Bus::connect(&boss, "boss").await.unwrap();
    let task = TaskRequest::new("sleep", json!({}));
    let sent = {
        let (caller, task) = (caller.clone(), task.clone());
        tokio::spawn(async move {
            caller
                .request("sleeper", &task, agentbus::RequestOptions::default())
                .await
        })
    };
    let mut state = agentbus::delivery::TaskState::Unknown;
    for _ in 0..100 {
        state = caller.task_report(&task.task_id).await.unwrap().state;
        if state == agentbus::delivery::TaskState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, agentbus::delivery::TaskState::Running);
    let stranger = Bus::connect(&alice, "alice").await.unwrap();
    assert_not_cancelling(stranger.cancel(&task.task_id).await);
    let outcome = caller.cancel(&task.task_id).await.unwrap();
    assert!(
        matches!(
            outcome,
            agentbus::task_log::CancelOutcome::Cancelling { ref agent, .. } if agent == "sleeper"
        ),
        "{outcome:?}"
    );
    let response = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .expect("the request ends")
        .unwrap()
        .unwrap();
    assert_eq!(response.status, TaskStatus::Cancelled, "{response:?}");
    let mut heard = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(300), everything.next()).await
    {
        heard.push(message.subject.to_string());
    }
    let cancel = format!("task.boss.agent.sleeper.{}.control.cancel", task.task_id);
    let status = format!("task.boss.agent.sleeper.{}.control.status", task.task_id);
    assert!(heard.contains(&cancel), "{heard:?}");
    assert!(heard.contains(&status), "{heard:?}");
    assert!(
        heard
            .iter()
            .all(|subject| !subject.starts_with("task.boss._._.")),
        "{heard:?}"
    );
    assert_heard_no_control(&mut listening);
    runtime.shutdown(Duration::from_secs(2)).await;
}

/// Platform events carry who reported them: an agent identity publishes
/// them in its own name only, so another agent cannot report a task of
/// bob's finished or bob gone, and a runtime's own events name it.
#[tokio::test]
async fn platform_events_name_who_reported_them() {
    let w = world().await;
    let operator = w.server.connect().await;
    let mut events = operator.subscribe("platform.events.>").await.unwrap();
    operator.flush().await.unwrap();

    let alice = w.alice.connect("alice").await.unwrap();
    let forged = json!({"task_id": "t1", "agent": "bob", "task_type": "echo", "status": "completed", "duration_ms": 1.0, "instance_id": "i"});
    for subject in [
        "platform.events.task_completed",
        "platform.events.task_completed.bob",
        "platform.events.agent_offline",
        "platform.events.agent_offline.bob",
    ] {
        alice
            .publish(subject, forged.to_string().into())
            .await
            .unwrap();
    }
    alice
        .publish(
            "platform.events.task_completed.alice",
            forged.to_string().into(),
        )
        .await
        .unwrap();
    alice.flush().await.unwrap();

    // Bob's runtime registers and finishes a task: both in his name.
    let bob_bus = Bus::connect(&w.bob, "bob").await.unwrap();
    let mut runtime = Runtime::new(bob_bus);
    runtime
        .add(Recorder::new("bob"), AgentOptions::default())
        .await
        .unwrap();

    let mut seen = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(2), events.next()).await
    {
        let parsed = agentbus::events::PlatformEvent::parse(&message.subject, &message.payload);
        assert!(parsed.is_ok(), "{}: {parsed:?}", message.subject);
        seen.push((
            message.subject.to_string(),
            agentbus::subject::sender_of(&message.subject),
        ));
        if seen
            .iter()
            .filter(|(subject, _)| subject.starts_with("platform.events.task_completed.bob"))
            .count()
            >= 10
        {
            break;
        }
    }
    // Alice's own, in her name, is all that came of hers.
    let hers: Vec<_> = seen
        .iter()
        .filter(|(_, from)| *from != Sender::Agent(name("bob")))
        .collect();
    assert_eq!(
        hers,
        [&(
            "platform.events.task_completed.alice".to_owned(),
            Sender::Agent(name("alice"))
        )],
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(subject, _)| subject == "platform.events.agent_registered.bob"),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|(subject, _)| subject == "platform.events.task_completed.bob")
            .count(),
        10,
        "bob's queued tasks, each reported by him: {seen:?}"
    );
    runtime.shutdown(Duration::from_secs(2)).await;
}
