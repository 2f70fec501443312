//! `tls://` URLs use TLS, against a real nats-server that requires it (with a
//! certificate made for the test): the whole stack works over it when the
//! certificate is trusted (`NATS_CA`), and nothing connects when it is not.

use agentbus::connect::{ConnectError, ServerTarget, TargetSource};
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, Runtime, TaskContext, TaskError, TaskRequest,
    TaskStatus, TaskTypeSpec,
};
use agentbus_ops::topology::Topology;
use agentbus_testkit::{CustomNatsServer, NatsServer};
use futures::StreamExt;
use serde_json::{Value, json};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A nats-server that accepts TLS connections only, with a self-signed
/// certificate for 127.0.0.1; killed on drop.
struct TlsServer {
    _server: CustomNatsServer,
    dir: tempfile::TempDir,
    /// `tls://user:password@127.0.0.1:port`.
    url: String,
}

impl TlsServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        let password = format!("t{}", uuid::Uuid::new_v4().simple());
        let config = format!(
            "listen: \"127.0.0.1:-1\"\n\
             jetstream {{ store_dir: \"{store}\" }}\n\
             authorization {{ user: \"tls\", password: \"{password}\" }}\n\
             tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n",
            store = dir.path().join("js").display(),
            cert = dir.path().join("cert.pem").display(),
            key = dir.path().join("key.pem").display(),
        );
        let config_file = dir.path().join("nats.conf");
        std::fs::write(&config_file, config).unwrap();
        let server = CustomNatsServer::start([OsStr::new("-c"), config_file.as_os_str()]).await;
        Self {
            url: format!("tls://tls:{password}@{}", server.address()),
            _server: server,
            dir,
        }
    }

    fn certificate(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn target(&self, ca_file: Option<&Path>) -> ServerTarget {
        ServerTarget::from_url(&self.url, TargetSource::Explicit)
            .with_ca_file(ca_file.map(Path::to_path_buf))
    }
}

struct Echo;

impl Agent for Echo {
    fn name(&self) -> &str {
        "tls_echo"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("echo").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(json!({ "echo": task.payload }))
    }
}

#[tokio::test]
async fn agents_and_events_work_over_tls_with_the_ca_from_nats_ca() {
    let server = TlsServer::start().await;
    // NATS_CA, as `agentbus` and agents read it from the environment.
    let certificate = server.certificate();
    let target = ServerTarget::resolve_with(Some(&server.url), Path::new("/nonexistent"), |key| {
        (key == "NATS_CA").then(|| certificate.display().to_string())
    })
    .unwrap();
    assert_eq!(target.ca_file(), Some(certificate.as_path()));

    let client = Bus::connect(&target, "tls-client").await.unwrap();
    Topology::standard()
        .apply(client.jetstream())
        .await
        .unwrap();
    let mut runtime = Runtime::new(Bus::connect(&target, "tls-agent").await.unwrap());
    runtime.add(Echo, AgentOptions::default()).await.unwrap();

    let request = TaskRequest::new("echo", json!({ "secret": "over tls" }));
    let response = client
        .request("tls_echo", &request, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    assert_eq!(
        response.result,
        Some(json!({ "echo": { "secret": "over tls" } }))
    );

    let mut events = client.subscribe("app.>", None).await.unwrap();
    client.sync().await.unwrap();
    client
        .publish("app.tls.ping", &json!({ "n": 1 }))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the event arrives")
        .unwrap();
    assert_eq!(event.subject, "app.tls.ping");
    assert_eq!(event.json::<Value>().unwrap(), json!({ "n": 1 }));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_a_tls_error() {
    let server = TlsServer::start().await;
    let err = server
        .target(None)
        .connect("tls-untrusted")
        .await
        .expect_err("a self-signed certificate is not trusted by default");
    assert!(matches!(err, ConnectError::Tls { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("TLS to NATS at tls://127.0.0.1:"),
        "{message}"
    );
    assert!(!message.contains("tls:t"), "the password leaked: {message}");
}

#[tokio::test]
async fn a_tls_url_never_falls_back_to_plain_text() {
    // A server without TLS: a tls:// client must not talk to it in clear.
    let server = NatsServer::start().await;
    let url = server
        .url_with_credentials()
        .replacen("nats://", "tls://", 1);
    let err = ServerTarget::from_url(&url, TargetSource::Explicit)
        .connect("tls-to-plain")
        .await
        .expect_err("no TLS, no connection");
    assert!(matches!(err, ConnectError::Tls { .. }), "{err:?}");
}
