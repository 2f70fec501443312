//! A worker process of the fault suite does not outlive the program that
//! started it: it stops when its stdin closes, as it does when that program
//! is killed.

use agentbus_testkit::NatsServer;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

#[tokio::test]
async fn a_worker_stops_when_its_stdin_closes() {
    let server = NatsServer::start().await;
    let ledgers = tempfile::tempdir().unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_agentbus-faults"))
        .args(["worker", "--dir"])
        .arg(ledgers.path())
        .args(["--ack-wait-ms", "3000", "--work-ms", "10"])
        .env("NATS_URL", server.url_with_credentials())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(worker.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the worker is ready within 30 s")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker stopped with its stdin open"
    );
    // (`wait` would close stdin too; closed here, to say so.)
    drop(worker.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(15), worker.wait())
        .await
        .expect("the worker stops within 15 s of its stdin closing")
        .unwrap();
    assert!(status.success(), "{status}");
}
