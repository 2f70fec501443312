//! The topology on a JetStream cluster of three real nats-servers:
//! `replicas = "auto"` gives each stream three copies, and a bus set up
//! with one copy gets its copies raised in place by applying it again (what
//! `agentbus setup` does), its messages kept.

use agentbus_ops::topology::{Replicas, Topology};
use agentbus_testkit::NatsCluster;
use std::time::Duration;

#[tokio::test]
async fn setup_raises_the_copies_of_a_single_copy_bus_in_place() {
    let mut single = Topology::standard();
    for stream in &mut single.streams {
        stream.replicas = Replicas::Count(1);
    }
    for bucket in &mut single.buckets {
        bucket.replicas = Replicas::Count(1);
    }
    let cluster = NatsCluster::start_with_topology(3, &single).await;
    let js = async_nats::jetstream::new(cluster.connect().await);
    js.publish("tasks.kept", "a task".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let replicas = |name: &'static str| {
        let js = js.clone();
        async move {
            let info = js
                .get_stream(name)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .clone();
            (info.config.num_replicas, info.state.messages)
        }
    };
    assert_eq!(replicas("agent-tasks").await, (1, 1));

    let applied = Topology::standard().apply(&js).await.unwrap();
    assert!(
        applied
            .iter()
            .all(|(_, action)| action.to_string() == "updated"),
        "{applied:?}"
    );
    for name in agentbus::subject::STREAMS {
        assert_eq!(replicas(name).await.0, 3, "{name}");
    }
    assert_eq!(replicas("KV_agent-task-results").await.0, 3);
    assert_eq!(replicas("agent-tasks").await, (3, 1), "the task is kept");

    // Every copy catches up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = js.get_stream("agent-tasks").await.unwrap();
        let cluster_info = stream.info().await.unwrap().cluster.clone().unwrap();
        if cluster_info.replicas.len() == 2 && cluster_info.replicas.iter().all(|r| r.current) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{cluster_info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Applied again: nothing left to change.
    let again = Topology::standard().apply(&js).await.unwrap();
    assert!(
        again
            .iter()
            .all(|(_, action)| action.to_string() == "unchanged"),
        "{again:?}"
    );
}
