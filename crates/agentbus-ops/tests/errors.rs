//! Errors of `agentbus_ops` against real servers: the kind callers match on,
//! the cause kept, and no password in anything an error shows.

use agentbus_ops::local_server::{LocalServerConfig, LocalServerErrorKind};
use agentbus_ops::monitor::{Monitor, MonitorErrorKind};
use agentbus_ops::topology::{StreamAction, Topology, TopologyErrorKind};
use agentbus_ops::{LocalBus, LocalBusError, LocalBusErrorKind};
use agentbus_testkit::NatsServer;
use async_nats::jetstream::context::CreateStreamError;
use std::error::Error;
use std::path::Path;

/// Everything an error can show: its message, its debug form, and its causes'.
fn everything_shown(err: &(dyn Error + 'static)) -> Vec<String> {
    let mut shown = Vec::new();
    let mut cause = Some(err);
    while let Some(next) = cause {
        shown.push(next.to_string());
        shown.push(format!("{next:?}"));
        cause = next.source();
    }
    shown
}

/// A topology of one stream capturing `subject`, stored in `storage`.
fn one_stream(name: &str, subject: &str, storage: &str) -> Topology {
    let text = format!(
        r#"
[[stream]]
name = "{name}"
subjects = ["{subject}"]
retention = "limits"
max_msgs = 100
max_bytes = "1MiB"
max_age = "1h"
storage = "{storage}"
"#
    );
    Topology::parse(&text, Path::new("test.toml")).unwrap()
}

#[tokio::test]
async fn monitor_errors_have_kinds_and_never_show_a_password() {
    let server = NatsServer::start_bare().await;
    let base = server.monitor_url();
    let varz = Monitor::new(base).varz().await.unwrap();
    assert!(!varz.version.is_empty(), "{varz:?}");

    // The server answers 404 outside its endpoints; the client's error would
    // quote the URL, password and all.
    let with_password = base.replacen("http://", "http://watcher:pw-never-shown@", 1);
    let err = Monitor::new(&format!("{with_password}/nowhere"))
        .varz()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), MonitorErrorKind::Status, "{err}");
    let masked = base.replacen("http://", "http://watcher:***@", 1);
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read the NATS monitoring endpoint {masked}/nowhere/varz: HTTP status client error (404 Not Found); check AGENTBUS_MONITOR_URL or that the server runs with monitoring (`agentbus up` enables it)"
        )
    );
    for text in everything_shown(&err) {
        assert!(!text.contains("pw-never-shown"), "{text}");
    }

    // `/healthz` answers JSON that is not `/varz` (the `?` makes the
    // `/varz` the client appends a query the server ignores).
    let err = Monitor::new(&format!("{base}/healthz?"))
        .varz()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), MonitorErrorKind::InvalidResponse, "{err}");
}

#[tokio::test]
async fn topology_errors_say_what_the_server_refused() {
    let server = NatsServer::start_bare().await;
    let js = server.jetstream().await;
    let on_file = one_stream("errors-test", "errors.>", "file");
    assert_eq!(
        on_file.apply(&js).await.unwrap(),
        [("errors-test".to_owned(), StreamAction::Created)]
    );

    let err = one_stream("errors-test", "errors.>", "memory")
        .apply(&js)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::Immutable, "{err}");
    assert!(
        err.to_string().starts_with(
            "stream \"errors-test\": storage cannot change in place (file on the server, memory in the topology)"
        ),
        "{err}"
    );

    // A second stream may not capture the first one's subjects.
    let err = one_stream("errors-other", "errors.x", "file")
        .apply(&js)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::JetStream, "{err}");
    let source = err
        .source()
        .and_then(|s| s.downcast_ref::<CreateStreamError>())
        .expect("JetStream's own error");
    assert_eq!(
        err.to_string(),
        format!("stream \"errors-other\": JetStream refused to create it: {source}")
    );
}

#[tokio::test]
async fn a_bus_that_cannot_start_says_which_step_failed() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalServerConfig {
        binary: "/nonexistent/nats-server".into(),
        dir: dir.path().to_owned(),
        host: "127.0.0.1".into(),
        port: 0,
        monitor_host: "127.0.0.1".into(),
        monitor_port: 0,
        user: "agentbus".into(),
        password: "pw-never-shown".into(),
        server_name: "errors".into(),
        cluster: None,
        identities_dir: None,
    };
    let err = LocalBus::start(&config, &Topology::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), LocalBusErrorKind::Start, "{err}");
    let LocalBusError::Start(start) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(start.kind(), LocalServerErrorKind::Spawn);
    for text in everything_shown(&err) {
        assert!(!text.contains("pw-never-shown"), "{text}");
    }
}
