//! The demo agents take durable messages, against a real nats-server:
//! `chat_manager` its inbox, `enhancement_agent` the broadcasts on topic
//! `feedback`, both announcements; the demo prints one line for each.

use agentbus::{Bus, Runtime};
use agentbus_demo::{
    Arrival, ChatManager, DemoBuses, DemoOptions, EnhancementAgent, FEEDBACK_TOPIC, MessageLog,
    run_demo_with,
};
use agentbus_testkit::NatsServer;
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn inbox_messages_broadcasts_and_announcements_arrive_and_are_counted() {
    let server = NatsServer::start().await;
    let agent_bus = Bus::connect(&server.target(), "agents").await.unwrap();
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let chat_manager =
        ChatManager::new().with_message_log(MessageLog::with_listener(arrived.clone()));
    let chat_log = chat_manager.message_log().clone();
    let enhancement = EnhancementAgent::new().with_message_log(MessageLog::with_listener(arrived));
    let enhancement_log = enhancement.message_log().clone();
    let mut runtime = Runtime::new(agent_bus);
    runtime
        .add(chat_manager, ChatManager::options())
        .await
        .unwrap();
    runtime
        .add(enhancement, EnhancementAgent::options())
        .await
        .unwrap();

    let bus = Bus::connect(&server.target(), "users").await.unwrap();
    let first = bus
        .send("chat_manager", &json!({"text": "hi"}))
        .await
        .unwrap();
    let second = bus
        .send("chat_manager", &json!({"text": "again"}))
        .await
        .unwrap();
    // Not a topic enhancement_agent takes. Its broadcasts come in stream
    // order, one at a time: the count below shows this one was skipped.
    bus.broadcast("elsewhere", &json!({"rating": 1}))
        .await
        .unwrap();
    let broadcast = bus
        .broadcast(FEEDBACK_TOPIC, &json!({"rating": 5}))
        .await
        .unwrap();
    let announcement = bus
        .announce("news", &json!({"note": "to all"}))
        .await
        .unwrap();

    // chat_manager: two inbox messages and the announcement; enhancement_agent:
    // the broadcast on its topic and the announcement.
    let mut seen: Vec<(&str, String, Option<String>, String)> = Vec::new();
    for _ in 0..5 {
        let Arrival { agent, message } = tokio::time::timeout(WAIT, arrivals.recv())
            .await
            .expect("a message arrives")
            .expect("the agents are served");
        assert_eq!(message.attempt, 1, "{message:?}");
        seen.push((
            agent,
            message.subject,
            message.message_id,
            message.body.to_string(),
        ));
    }
    seen.sort();
    let id = |published: &agentbus::delivery::Published| Some(published.message_id.clone());
    let mut expected = vec![
        (
            "chat_manager",
            "agent.chat_manager.inbox".to_owned(),
            id(&first),
            r#"{"text":"hi"}"#.to_owned(),
        ),
        (
            "chat_manager",
            "agent.chat_manager.inbox".to_owned(),
            id(&second),
            r#"{"text":"again"}"#.to_owned(),
        ),
        (
            "chat_manager",
            "announce.news".to_owned(),
            id(&announcement),
            r#"{"note":"to all"}"#.to_owned(),
        ),
        (
            "enhancement_agent",
            "announce.news".to_owned(),
            id(&announcement),
            r#"{"note":"to all"}"#.to_owned(),
        ),
        (
            "enhancement_agent",
            "broadcast.feedback".to_owned(),
            id(&broadcast),
            r#"{"rating":5}"#.to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(chat_log.received(), 3);
    assert_eq!(enhancement_log.received(), 2);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_demo_prints_a_line_per_inbox_message_and_broadcast() {
    let server = NatsServer::start().await;
    let bus = Bus::connect(&server.target(), "demo").await.unwrap();
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let options = DemoOptions {
        // One round, at the start: the lines that follow are the messages'.
        interval: Duration::from_secs(3600),
        ..DemoOptions::default()
    };
    let demo = tokio::spawn(run_demo_with(
        DemoBuses::shared(bus),
        options,
        async {
            let _ = stop.await;
        },
        move |line| {
            let _ = lines_tx.send(line.to_owned());
        },
    ));
    let mut printed = Vec::new();
    let mut next_line = async || {
        let line = tokio::time::timeout(WAIT, lines.recv())
            .await
            .expect("the demo prints a line")
            .expect("the demo runs");
        printed.push(line.clone());
        line
    };
    let serving = next_line().await;
    assert!(serving.starts_with("demo: serving"), "{serving}");

    let users = Bus::connect(&server.target(), "users").await.unwrap();
    let sent = users
        .send("chat_manager", &json!({"text": "hi"}))
        .await
        .unwrap();
    let broadcast = users
        .broadcast(FEEDBACK_TOPIC, &json!({"rating": 5}))
        .await
        .unwrap();
    let inbox_line = format!(
        r#"agent.chat_manager.inbox -> chat_manager: message {}: {{"text":"hi"}}"#,
        &sent.message_id[..8]
    );
    let broadcast_line = format!(
        r#"broadcast.feedback -> enhancement_agent: message {}: {{"rating":5}}"#,
        &broadcast.message_id[..8]
    );
    let mut missing = vec![inbox_line.clone(), broadcast_line.clone()];
    while !missing.is_empty() {
        let line = next_line().await;
        missing.retain(|expected| *expected != line);
    }

    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, demo)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    printed.extend(std::iter::from_fn(|| lines.try_recv().ok()));
    assert_eq!(printed.last().map(String::as_str), Some("demo: stopping"));
    for expected in [&inbox_line, &broadcast_line] {
        let times = printed.iter().filter(|line| *line == expected).count();
        assert_eq!(times, 1, "{expected:?} in {printed:#?}");
    }
    let arrivals = printed
        .iter()
        .filter(|line| {
            line.contains(" -> chat_manager: ") || line.contains(" -> enhancement_agent: ")
        })
        .count();
    assert_eq!(arrivals, 2, "{printed:#?}");
}
