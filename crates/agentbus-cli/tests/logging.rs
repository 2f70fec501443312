//! The logs of `-v` / `-vv` on stderr: plain text when stderr is not a
//! terminal, and a closed pipe (`agentbus -vv setup 2>&1 | head`) ends the
//! command quietly instead of a panic.

mod common;

use agentbus_testkit::NatsServer;
use std::process::Stdio;

#[tokio::test]
async fn logs_to_a_pipe_have_no_colour() {
    let server = NatsServer::start().await;
    let url = server.url_with_credentials();
    let out = common::run(["-vv", "setup", "--server", &url]).await;
    out.assert_success();
    assert!(out.stderr.contains("DEBUG"), "{}", out.stderr);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "colour codes in piped logs: {:?}",
        out.stderr.lines().next()
    );
}

#[tokio::test]
async fn a_closed_pipe_ends_a_verbose_command_quietly() {
    let server = NatsServer::start().await;
    let url = server.url_with_credentials();

    // `agentbus -vv setup | head -0`: stdout is gone, logs still readable.
    let (reader, closed) = std::io::pipe().unwrap();
    drop(reader);
    let out = common::command()
        .args(["-vv", "setup", "--server", &url])
        .stdout(closed)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("DEBUG"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // `agentbus -vv setup 2>&1 | head -0`: logs and output both go nowhere.
    let (reader, closed) = std::io::pipe().unwrap();
    drop(reader);
    let status = common::command()
        .args(["-vv", "setup", "--server", &url])
        .stdout(closed.try_clone().unwrap())
        .stderr(closed)
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}
