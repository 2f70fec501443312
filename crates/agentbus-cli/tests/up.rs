//! `agentbus up` against real nats-server processes: provisioning, files and
//! secrets, authentication, monitoring, persistence, shutdown, bad input, and
//! the demo agents of `up --demo`.
//!
//! Every `up` runs with `--port 0 --monitor-port 0` in its own temporary data
//! directory; see `common::Up` for how it is started and always stopped.

mod common;

use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use common::{Up, run};
use futures::TryStreamExt;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const MIB: i64 = 1024 * 1024;
const DAY: u64 = 86_400;

/// The three documented streams: (name, subjects, retention, max_msgs, max_bytes, max_age days, discard).
///
/// agent-tasks is checked separately for subjects: the shipped topology widens
/// the documented `tasks.*`/`work.*` to `tasks.>`/`work.>` (priority sub-queues).
type Expected = (
    &'static str,
    &'static [&'static str],
    RetentionPolicy,
    i64,
    i64,
    u64,
    DiscardPolicy,
);

const EXPECTED: [Expected; 3] = [
    (
        "agent-messages",
        &[
            "agent.*.inbox",
            "agent.*.direct",
            "agent.*.inbox.*",
            "agent.*.direct.*",
        ],
        RetentionPolicy::Limits,
        10_000,
        100 * MIB,
        7,
        DiscardPolicy::New,
    ),
    (
        "agent-broadcast",
        &["broadcast.*", "announce.*", "broadcast.*.*", "announce.*.*"],
        RetentionPolicy::Limits,
        5_000,
        50 * MIB,
        3,
        DiscardPolicy::Old,
    ),
    (
        "agent-tasks",
        &["tasks.>", "work.>"],
        RetentionPolicy::WorkQueue,
        50_000,
        200 * MIB,
        14,
        DiscardPolicy::New,
    ),
];

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn up_creates_the_three_streams_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("bus"), &[]).await;

    assert_eq!(
        common::actions(up.ready()),
        common::all_with("created", &[]),
        "{}",
        up.ready()
    );

    let js = up.jetstream().await;
    let mut names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    names.sort();
    assert_eq!(names, common::server_stream_names());

    for (name, subjects, retention, max_msgs, max_bytes, days, discard) in EXPECTED {
        let mut stream = js.get_stream(name).await.unwrap();
        let config = &stream.info().await.unwrap().config;
        assert_eq!(config.subjects, subjects, "{name}: subjects");
        assert_eq!(config.retention, retention, "{name}: retention");
        assert_eq!(config.max_messages, max_msgs, "{name}: max_messages");
        assert_eq!(config.max_bytes, max_bytes, "{name}: max_bytes");
        assert_eq!(
            config.max_age,
            Duration::from_secs(days * DAY),
            "{name}: max_age"
        );
        assert_eq!(config.storage, StorageType::File, "{name}: storage");
        assert_eq!(config.discard, discard, "{name}: discard");
        assert_eq!(
            config.duplicate_window,
            Duration::from_secs(120),
            "{name}: duplicate_window"
        );
        assert_eq!(config.num_replicas, 1, "{name}: replicas");
    }

    // Every stream of the shipped topology (also the dead letters) as configured.
    let topology = agentbus_ops::topology::Topology::standard();
    for spec in &topology.streams {
        let mut stream = js.get_stream(&spec.name).await.unwrap();
        let config = &stream.info().await.unwrap().config;
        assert_eq!(spec.differences(config), [], "{}", spec.name);
    }

    // The documented subjects land in their streams.
    for (subject, stream) in [
        ("agent.a.inbox", "agent-messages"),
        ("agent.a.direct", "agent-messages"),
        ("broadcast.all", "agent-broadcast"),
        ("announce.all", "agent-broadcast"),
        ("tasks.a", "agent-tasks"),
        ("work.build", "agent-tasks"),
    ] {
        let ack = js
            .publish(subject, "x".into())
            .await
            .unwrap()
            .await
            .unwrap_or_else(|err| panic!("{subject}: {err}"));
        assert_eq!(ack.stream, stream, "{subject}");
    }
}

#[tokio::test]
async fn connection_file_and_password_are_private_and_the_password_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let mut up = Up::start(&data_dir, &[]).await;

    let password_file = data_dir.join("password");
    let connection_env = up.connection_file();
    assert_eq!(mode(&password_file), 0o600, "password file mode");
    assert_eq!(mode(&connection_env), 0o600, "connection.env mode");

    let password = std::fs::read_to_string(&password_file).unwrap();
    let password = password.trim();
    assert!(
        password.len() >= 16,
        "password too short: {}",
        password.len()
    );

    let client_port = common::port_of(up.client_url());
    let monitor_port = common::port_of(up.monitor_url());
    assert_eq!(up.client_url(), format!("nats://127.0.0.1:{client_port}"));
    let token_file = data_dir.join("dashboard-token");
    assert_eq!(mode(&token_file), 0o600, "dashboard-token mode");
    let dashboard_token = std::fs::read_to_string(&token_file).unwrap();
    let dashboard_token = dashboard_token.trim();
    let text = std::fs::read_to_string(&connection_env).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            format!("NATS_URL=nats://agentbus:{password}@127.0.0.1:{client_port}"),
            format!("AGENTBUS_MONITOR_URL=http://127.0.0.1:{monitor_port}"),
            format!(
                "AGENTBUS_DASHBOARD_URL={}",
                up.ready()["dashboard_url"].as_str().unwrap()
            ),
            format!("AGENTBUS_DASHBOARD_TOKEN={dashboard_token}"),
        ],
        "connection.env:\n{text}"
    );

    // Use the bus, then stop it, so all of up's output is in.
    let client = up.client().await;
    assert_eq!(client.server_info().port, client_port);
    drop(client);
    let status = up.terminate().await;
    assert!(status.success(), "up exited with {status}");
    let (stdout, stderr) = (up.stdout(), up.stderr());
    assert!(stdout.contains("\"status\":\"ready\""), "stdout: {stdout}");
    assert!(
        !stdout.contains(password),
        "the password is on up's stdout: {stdout}"
    );
    assert!(
        !stderr.contains(password),
        "the password is on up's stderr: {stderr}"
    );
    for file in ["nats.conf", "nats-server.log"] {
        let text = std::fs::read_to_string(data_dir.join(file)).unwrap();
        assert!(!text.contains(password), "the password is in {file}");
        assert!(
            !text.contains(dashboard_token),
            "the dashboard token is in {file}"
        );
    }
    // The JSON ready line names the dashboard's URL, never its token.
    assert!(!stdout.contains(dashboard_token), "{stdout}");
    assert!(!stderr.contains(dashboard_token), "{stderr}");
}

#[tokio::test]
async fn the_ready_line_names_the_pids_of_up_and_of_its_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("bus"), &[]).await;
    let ready = up.ready();
    assert_eq!(
        ready["up_pid"].as_u64(),
        Some(u64::from(up.pid())),
        "{ready}"
    );
    let server_pid = ready["nats_server_pid"].as_u64().expect("nats_server_pid");
    assert_eq!(
        common::children(up.pid())
            .into_iter()
            .map(u64::from)
            .collect::<Vec<_>>(),
        [server_pid],
        "nats_server_pid is up's child: {ready}"
    );
    assert!(ready.get("pid").is_none(), "an ambiguous pid: {ready}");
}

#[tokio::test]
async fn clients_without_or_with_wrong_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("bus"), &[]).await;
    let url = up.client_url().to_owned();

    let err = async_nats::connect(&url)
        .await
        .expect_err("a client without credentials must be refused");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );

    let err = async_nats::ConnectOptions::with_user_and_password(
        "agentbus".into(),
        "not-the-password".into(),
    )
    .connect(&url)
    .await
    .expect_err("a wrong password must be refused");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );

    // The CLI says so in one line, without echoing the password it was given.
    let secret = "Sup3rSecretWrongPw";
    let host_port = common::host_port(&url);
    let out = run([
        "status",
        "--server",
        &format!("nats://wrong:{secret}@{host_port}"),
    ])
    .await;
    let stderr = out.assert_failure();
    let error = common::one_error_line(stderr);
    assert!(error.contains("refused the credentials"), "{stderr}");
    assert!(error.contains(host_port), "{stderr}");
    assert!(!stderr.contains(secret), "password echoed: {stderr}");
    assert!(!out.stdout.contains(secret), "password echoed: {out:?}");

    // The right credentials still work.
    let client = up.client().await;
    assert_eq!(client.server_info().server_name, "agentbus");
}

#[tokio::test]
async fn monitoring_endpoint_answers_varz() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("bus"), &[]).await;
    assert!(
        up.monitor_url().starts_with("http://127.0.0.1:"),
        "{}",
        up.ready()
    );

    let (code, body) = common::http_get(up.monitor_url(), "/varz").await;
    assert_eq!(code, 200, "{body}");
    let varz: serde_json::Value = serde_json::from_str(&body).expect("varz is JSON");
    let version = varz["version"].as_str().expect("varz has a version");
    assert_eq!(version, up.ready()["version"], "{varz}");
    assert_eq!(varz["server_name"], "agentbus");
    assert_eq!(
        varz["port"].as_u64(),
        Some(u64::from(common::port_of(up.client_url())))
    );

    // The library's client reads the same endpoint.
    let varz = agentbus_ops::monitor::Monitor::new(up.monitor_url())
        .varz()
        .await
        .expect("Monitor::varz");
    assert_eq!(varz.version, version);
}

/// Where the server says its HTTP monitoring port listens (`/varz` `http_host`).
async fn monitoring_host(up: &Up) -> String {
    let (code, body) = common::http_get(up.monitor_url(), "/varz").await;
    assert_eq!(code, 200, "{body}");
    let varz: serde_json::Value = serde_json::from_str(&body).expect("varz is JSON");
    assert_eq!(varz["host"], "0.0.0.0", "clients on every address: {varz}");
    varz["http_host"]
        .as_str()
        .expect("varz has http_host")
        .to_owned()
}

#[tokio::test]
async fn up_on_a_network_address_keeps_monitoring_on_loopback_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(&dir.path().join("bus"), &["--host", "0.0.0.0"]).await;
    assert!(
        up.monitor_url().starts_with("http://127.0.0.1:"),
        "{}",
        up.ready()
    );
    assert_eq!(monitoring_host(&up).await, "127.0.0.1");
    let status = up.terminate().await;
    assert!(status.success(), "up exited with {status}");
    let stderr = up.stderr();
    assert!(
        stderr.contains("monitoring port (no authentication) stays on 127.0.0.1")
            && stderr.contains("--monitor-host"),
        "up should say where monitoring is and how to move it: {stderr}"
    );

    // Asked for, monitoring goes to the network too, without that note.
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(
        &dir.path().join("bus"),
        &["--host", "0.0.0.0", "--monitor-host", "0.0.0.0"],
    )
    .await;
    assert_eq!(monitoring_host(&up).await, "0.0.0.0");
    let status = up.terminate().await;
    assert!(status.success(), "up exited with {status}");
    assert!(!up.stderr().contains("stays on"), "{}", up.stderr());
}

#[tokio::test]
async fn up_refuses_bad_topologies_without_touching_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let malformed = common::malformed_topology_file(dir.path());
    let request_reply = common::request_reply_topology_file(dir.path());
    let data_dir = dir.path().join("bus");

    let up_with = |file: &std::path::Path| {
        let args = [
            "up".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--port".as_ref(),
            "0".as_ref(),
            "--monitor-port".as_ref(),
            "0".as_ref(),
            "--topology".as_ref(),
            file.as_os_str(),
        ]
        .map(std::ffi::OsStr::to_owned);
        run(args)
    };
    let assert_untouched = || {
        assert!(
            !data_dir.exists(),
            "up created {} for a refused topology: {:?}",
            data_dir.display(),
            std::fs::read_dir(&data_dir)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
    };

    let out = up_with(&malformed).await;
    let stderr = out.assert_failure();
    assert!(
        stderr.contains(&malformed.display().to_string()),
        "the error does not name the file: {stderr}"
    );
    assert!(stderr.contains("line"), "{stderr}");
    assert_untouched();

    let out = up_with(&request_reply).await;
    let stderr = out.assert_failure();
    assert!(stderr.contains("request/reply"), "{stderr}");
    assert!(stderr.contains("agent.*.task"), "{stderr}");
    assert!(stderr.contains("agent-messages"), "{stderr}");
    assert_untouched();
}

#[tokio::test]
async fn a_stored_message_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let mut up = Up::start(&data_dir, &[]).await;
    let first_env = common::connection_file(&data_dir);

    let payload = b"remember me across restarts".as_slice();
    let js = up.jetstream().await;
    let ack = js
        .publish("agent.someone.inbox", payload.into())
        .await
        .expect("publish")
        .await
        .expect("PubAck");
    assert_eq!(ack.stream, "agent-messages");
    assert_eq!(ack.sequence, 1);
    drop(js);

    let status = up.terminate().await;
    assert!(status.success(), "up exited with {status}");
    assert!(!up.connection_file().exists());
    assert!(common::wait_gone(up.server_pid(), common::EXIT_TIMEOUT).await);
    drop(up);

    let up = Up::start(&data_dir, &[]).await;
    assert_eq!(
        common::actions(up.ready()),
        common::all_with("unchanged", &[]),
        "{}",
        up.ready()
    );
    let second_env = common::connection_file(&data_dir);
    assert_eq!(
        second_env.nats_url,
        format!(
            "nats://agentbus:{}@{}",
            std::fs::read_to_string(data_dir.join("password"))
                .unwrap()
                .trim(),
            common::host_port(up.client_url())
        ),
        "connection.env must point at the new port"
    );
    // Same password (kept in the data dir); the ports may differ.
    assert_eq!(
        first_env.nats_url.rsplit_once('@').unwrap().0,
        second_env.nats_url.rsplit_once('@').unwrap().0
    );

    let js = up.jetstream().await;
    let mut stream = js.get_stream("agent-messages").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let message = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(message.subject.as_str(), "agent.someone.inbox");
    assert_eq!(message.payload.as_ref(), payload);
}

#[tokio::test]
async fn sigterm_stops_up_and_its_server_and_removes_connection_env() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(&dir.path().join("bus"), &[]).await;
    let server_pid = up.server_pid();
    assert!(up.connection_file().exists());

    let status = up.terminate().await;
    assert!(status.success(), "up exited with {status}: {}", up.stderr());
    assert!(
        common::wait_gone(server_pid, common::EXIT_TIMEOUT).await,
        "nats-server {server_pid} still runs after up stopped"
    );
    assert!(
        !up.connection_file().exists(),
        "connection.env is left behind"
    );
    assert!(
        up.stderr().contains("stopping nats-server"),
        "{}",
        up.stderr()
    );
}

#[tokio::test]
async fn sigkill_of_up_takes_its_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(&dir.path().join("bus"), &[]).await;
    let server_pid = up.server_pid();

    let status = up.kill().await;
    assert!(!status.success(), "a killed up reported {status}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    assert!(
        common::wait_gone(server_pid, common::EXIT_TIMEOUT).await,
        "nats-server {server_pid} outlived a killed up"
    );
}

#[tokio::test]
async fn a_second_up_on_a_data_dir_in_use_fails_fast_and_leaves_the_bus_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let mut up = Up::start(&data_dir, &[]).await;
    let before = std::fs::read_to_string(up.connection_file()).unwrap();

    common::ensure_nats_server().await;
    let out = run([
        "up".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--port".as_ref(),
        "0".as_ref(),
        "--monitor-port".as_ref(),
        "0".as_ref(),
        "--json".as_ref(),
    ])
    .await;
    let stderr = out.assert_failure();
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", up.pid())),
        "the error should name the holder: {stderr}"
    );
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    assert_eq!(
        std::fs::read_to_string(up.connection_file()).unwrap(),
        before,
        "connection.env changed"
    );
    assert!(up.is_running());
    assert!(agentbus_testkit::process_alive(up.server_pid()));
    let js = up.jetstream().await;
    let account = js.query_account().await.expect("the first bus answers");
    assert_eq!(account.streams, common::server_stream_names().len());
}

#[tokio::test]
async fn a_second_up_on_a_data_dir_in_use_names_the_running_up_before_the_ports() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let mut up = Up::start(&data_dir, &[]).await;
    // The first up's own ports: taken, as the default ports are when a second
    // up starts beside a first one with the defaults.
    let port = common::port_of(up.client_url()).to_string();
    let monitor_port = common::port_of(up.monitor_url()).to_string();

    let out = run([
        "up".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--port".as_ref(),
        port.as_ref(),
        "--monitor-port".as_ref(),
        monitor_port.as_ref(),
    ])
    .await;
    let error = out.assert_one_error("is in use by the running `agentbus up`");
    assert!(
        error.contains(&format!("(pid {})", up.pid())),
        "the error should name the running up: {error}"
    );
    assert!(
        error.contains("stop that one first or pass another --data-dir"),
        "{error}"
    );
    assert!(
        !error.contains("already in use"),
        "the error blames a port: {error}"
    );
    assert!(up.is_running());
}

#[tokio::test]
async fn ctrl_c_while_up_starts_stops_it_cleanly() {
    common::ensure_nats_server().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let mut command = common::command();
    command
        .arg("up")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--port", "0", "--monitor-port", "0", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A process group of its own, as a shell gives a foreground job: Ctrl-C
        // in a terminal sends SIGINT to the whole group.
        .process_group(0);
    let child = command.spawn().expect("spawn agentbus up");
    let up_pid = child.id().expect("up has a pid");

    // nats-server (not its `--version` probe) is held right after it starts,
    // so the Ctrl-C lands while up is starting, however fast the machine is.
    let server_pid = common::wait_for_child(up_pid, "nats.conf").await;
    common::send_signal("STOP", i64::from(server_pid));
    common::wait_for_signal_handler(up_pid, 2).await;
    common::send_signal("INT", -i64::from(up_pid));
    common::send_signal("CONT", i64::from(server_pid));

    let output = tokio::time::timeout(common::COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("up exits")
        .expect("wait for up");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a stop during startup is a normal stop: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "up got ready: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(
        stderr.trim(),
        "stopped before the bus was ready",
        "one short line, no crash report"
    );
    assert!(
        common::wait_gone(server_pid, common::EXIT_TIMEOUT).await,
        "nats-server {server_pid} still runs after up stopped"
    );
    assert!(!data_dir.join("connection.env").exists());
}

#[tokio::test]
async fn up_refuses_a_port_in_use() {
    common::ensure_nats_server().await;
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let data_dir = dir.path().join("bus");
    let out = run([
        "up".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--port".as_ref(),
        port.as_ref(),
        "--monitor-port".as_ref(),
        "0".as_ref(),
    ])
    .await;
    let stderr = out.assert_failure();
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(
        stderr.contains(&port),
        "the error should name the port: {stderr}"
    );
    assert!(!data_dir.join("connection.env").exists());
    drop(held);
}

#[tokio::test]
async fn up_refuses_an_unusable_data_dir() {
    let out = run([
        "up",
        "--data-dir",
        "/proc/nope",
        "--port",
        "0",
        "--monitor-port",
        "0",
    ])
    .await;
    let stderr = out.assert_failure();
    assert!(stderr.contains("pass --data-dir"), "{stderr}");
    assert!(stderr.contains("/proc/nope"), "{stderr}");
}

#[tokio::test]
async fn up_names_a_missing_nats_server_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let out = run([
        "up".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--port".as_ref(),
        "0".as_ref(),
        "--monitor-port".as_ref(),
        "0".as_ref(),
        "--nats-server".as_ref(),
        "/nonexistent".as_ref(),
    ])
    .await;
    let stderr = out.assert_failure();
    assert!(stderr.contains("/nonexistent"), "{stderr}");
    assert!(stderr.contains("cannot run nats-server"), "{stderr}");
}

#[tokio::test]
async fn up_rejects_an_unknown_flag() {
    let out = run(["up", "--no-such-flag"]).await;
    let stderr = out.assert_failure();
    assert_eq!(out.status.code(), Some(2), "clap's usage error code");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

// ---------------------------------------------------------------- --demo

/// How long `up --demo` may take to show a step of its first rounds (a round
/// normally takes well under a second; one starts every two seconds).
const DEMO_TIMEOUT: Duration = Duration::from_secs(15);

/// The demo's lines so far: with `--json`, `up` prints each as `{"demo": line}`.
fn demo_lines(up: &Up) -> Vec<String> {
    demo_lines_in(&up.stdout())
}

/// The demo's lines in `stdout`, up to its last complete line.
fn demo_lines_in(stdout: &str) -> Vec<String> {
    let complete = stdout.rfind('\n').map_or("", |end| &stdout[..end]);
    complete
        .lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("stdout line is not JSON ({err}): {line}"));
            value
                .get("demo")
                .and_then(|d| d.as_str())
                .map(str::to_owned)
        })
        .collect()
}

/// Waits until a line of the demo gives `find` something, and returns it.
async fn wait_for_line<T>(up: &Up, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
    let found = up
        .wait_for_stdout(DEMO_TIMEOUT, |stdout| {
            demo_lines_in(stdout).iter().find_map(|l| find(l))
        })
        .await;
    found.unwrap_or_else(|| {
        panic!(
            "no {what} line within {DEMO_TIMEOUT:?}; stdout:\n{}\nstderr:\n{}",
            up.stdout(),
            up.stderr()
        )
    })
}

/// The text between the first and the last double quote of `line`.
fn quoted(line: &str) -> Option<&str> {
    let (start, end) = (line.find('"')?, line.rfind('"')?);
    (end > start).then(|| &line[start + 1..end])
}

#[tokio::test]
async fn up_demo_shows_the_agents_at_work_serves_a_client_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    // LLM_BASE_URL, LLM_API_KEY and LLM_MODEL are removed from its environment (common::Up).
    let mut up = Up::start(&data_dir, &["--demo"]).await;
    let server_pid = up.server_pid();
    assert_eq!(
        common::actions(up.ready()),
        common::all_with("created", &[]),
        "{}",
        up.ready()
    );

    // 1. Ready means usable: right after the ready line, a client finds the
    //    bus through the data dir and uses llm_agent (echo mode).
    let out = run([
        "request",
        "llm_agent",
        "generate_text",
        r#"{"prompt": "hello there friend", "max_tokens": 2}"#,
        "--timeout",
        "10",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ])
    .await;
    out.assert_success();
    let response = out.json();
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(
        response["result"],
        serde_json::json!({
            "text": "hello there",
            "mode": "echo",
            "note": agentbus_demo::ECHO_NOTE,
        }),
        "{response}"
    );
    assert_eq!(response["error"], serde_json::Value::Null, "{response}");
    assert!(up.is_running(), "up stopped: {}", up.stderr());

    // 2. The demo says what it serves, then shows a round.
    let serving = wait_for_line(&up, "demo: serving", |l| {
        l.starts_with("demo: serving").then(|| l.to_owned())
    })
    .await;
    assert_eq!(
        serving,
        "demo: serving llm_agent (echo mode; set LLM_BASE_URL for a model), \
         chat_manager and enhancement_agent; a round every 2s"
    );
    let lines: Vec<String> = up.stdout().lines().map(str::to_owned).collect();
    assert!(lines[0].contains(r#""status":"ready""#), "{lines:#?}");
    assert_eq!(
        demo_lines(&up)[0],
        serving,
        "the demo's first line follows the ready line"
    );

    let generated = wait_for_line(&up, "generate_text", |l| {
        l.strip_prefix("orchestrator -> llm_agent generate_text: completed (echo) ")
            .and_then(quoted)
            .map(str::to_owned)
    })
    .await;
    let max_tokens = agentbus_demo::DemoOptions::default().max_tokens;
    assert_eq!(
        generated.split_whitespace().count() as u64,
        max_tokens,
        "the demo's prompt echoed and cut to {max_tokens} words: {generated:?}"
    );

    let message_id = wait_for_line(&up, "post_message", |l| {
        l.strip_prefix("orchestrator -> chat_manager post_message: completed (message ")
            .and_then(|rest| rest.strip_suffix(')'))
            .map(str::to_owned)
    })
    .await;
    assert_eq!(message_id.len(), 8, "a short message id: {message_id:?}");
    let event = format!("chat.message.new: session demo-session, message {message_id}: ");
    let content = wait_for_line(&up, "chat.message.new", |l| {
        l.strip_prefix(event.as_str())
            .and_then(quoted)
            .map(str::to_owned)
    })
    .await;
    assert_eq!(
        content, generated,
        "the announced message is the generated text"
    );
    let feedback = format!(" for message {message_id}");
    wait_for_line(&up, "enhancement.feedback", |l| {
        (l.starts_with("orchestrator -> enhancement.feedback: rating ") && l.ends_with(&feedback))
            .then_some(())
    })
    .await;
    let seen = wait_for_line(&up, "feedback_summary with feedback seen", |l| {
        l.strip_prefix("orchestrator -> enhancement_agent feedback_summary: completed (")
            .and_then(|rest| {
                rest.strip_suffix(" feedback events seen)")
                    .or_else(|| rest.strip_suffix(" feedback event seen)"))
            })
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&n| n >= 1)
    })
    .await;
    assert!(seen >= 1);

    // Each part of the demo ran on an identity of its own, made by `up`.
    assert_eq!(
        common::identities(&data_dir).await,
        [
            "chat_manager",
            "demo_orchestrator",
            "enhancement_agent",
            "llm_agent"
        ]
    );
    let (code, body) = common::http_get(up.monitor_url(), "/connz?auth=1").await;
    assert_eq!(code, 200, "{body}");
    let connz: serde_json::Value = serde_json::from_str(&body).unwrap();
    let demo_users: Vec<(String, bool)> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("agentbus-demo-"))
        })
        .map(|c| {
            let user = c["authorized_user"].as_str().unwrap_or_default();
            (
                c["name"].as_str().unwrap().to_owned(),
                user.starts_with('U'),
            )
        })
        .collect();
    assert_eq!(demo_users.len(), 4, "{connz}");
    assert!(
        demo_users.iter().all(|(_, nkey)| *nkey),
        "each demo part connects with its nkey: {demo_users:?}"
    );

    // 3. SIGTERM stops the demo, then the server; up exits 0.
    let status = up.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "up exited with {status}: {}",
        up.stderr()
    );
    assert!(
        common::wait_gone(server_pid, common::EXIT_TIMEOUT).await,
        "nats-server {server_pid} still runs after up --demo stopped"
    );
    assert!(
        !up.connection_file().exists(),
        "connection.env is left behind"
    );
    let (stdout, stderr) = (up.stdout(), up.stderr());
    assert_eq!(
        demo_lines(&up).last().map(String::as_str),
        Some("demo: stopping"),
        "stdout:\n{stdout}"
    );
    assert!(stderr.contains("stopping nats-server"), "{stderr}");
    assert!(
        !stderr.contains("warning") && !stderr.contains("error"),
        "stderr:\n{stderr}"
    );
}

#[tokio::test]
async fn up_demo_prints_what_agentbus_send_and_broadcast_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let mut up = Up::start(&data_dir, &["--demo"]).await;
    let data_dir = data_dir.to_str().unwrap();

    // What the README suggests, through the CLI, found by the data dir.
    let sent = run([
        "send",
        "chat_manager",
        r#"{"text":"hi"}"#,
        "--json",
        "--data-dir",
        data_dir,
    ])
    .await;
    sent.assert_success();
    let sent = sent.json();
    let broadcast = run([
        "broadcast",
        agentbus_demo::FEEDBACK_TOPIC,
        r#"{"rating":5}"#,
        "--json",
        "--data-dir",
        data_dir,
    ])
    .await;
    broadcast.assert_success();
    let broadcast = broadcast.json();
    // The demo agents take both: no warning that nobody would.
    assert_eq!(sent.get("warning"), None, "{sent}");
    assert_eq!(broadcast.get("warning"), None, "{broadcast}");
    let short =
        |published: &serde_json::Value| published["message_id"].as_str().unwrap()[..8].to_owned();
    let inbox_line = format!(
        r#"agent.chat_manager.inbox -> chat_manager: message {}: {{"text":"hi"}}"#,
        short(&sent)
    );
    let broadcast_line = format!(
        r#"broadcast.feedback -> enhancement_agent: message {}: {{"rating":5}}"#,
        short(&broadcast)
    );
    for expected in [&inbox_line, &broadcast_line] {
        wait_for_line(&up, expected, |l| (l == expected).then_some(())).await;
    }

    let status = up.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}: {}", up.stderr());
    let lines = demo_lines(&up);
    for expected in [&inbox_line, &broadcast_line] {
        let times = lines.iter().filter(|line| *line == expected).count();
        assert_eq!(times, 1, "{expected:?} in {lines:#?}");
    }
    assert_eq!(lines.last().map(String::as_str), Some("demo: stopping"));
}

/// `up --cluster 3`: three nats-servers as one JetStream cluster, every
/// client URL in `connection.env`, three copies of each stream, identities
/// accepted by every node; one node killed, the bus goes on; Ctrl-C stops
/// the rest; the data directory then refuses to be run as one server.
#[tokio::test]
async fn up_cluster_runs_three_servers_that_go_on_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &["--cluster", "3"]).await;
    let ready = up.ready().clone();
    assert_eq!(ready["servers"], 3, "{ready}");
    let urls: Vec<&str> = ready["client_urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|url| url.as_str().unwrap())
        .collect();
    let pids: Vec<u32> = ready["nats_server_pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pid| u32::try_from(pid.as_u64().unwrap()).unwrap())
        .collect();
    assert_eq!((urls.len(), pids.len()), (3, 3), "{ready}");
    assert!(pids.iter().all(|pid| agentbus_testkit::process_alive(*pid)));
    assert_eq!(
        up.target().servers(),
        urls,
        "connection.env names every node"
    );
    let js = up.jetstream().await;
    let info = js
        .get_stream("agent-tasks")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);

    // An identity made now is accepted by the third node alone.
    let data_dir = dir.path().to_str().unwrap();
    run(["creds", "add", "alice", "--data-dir", data_dir])
        .await
        .assert_success();
    let alice =
        agentbus::ServerTarget::from_env_file(&dir.path().join("agents/alice.env")).unwrap();
    let third =
        agentbus::ServerTarget::from_url(urls[2], agentbus::connect::TargetSource::Explicit)
            .with_credentials(alice.credentials().clone())
            .with_agent(alice.agent().cloned());
    let bus = agentbus::Bus::connect(&third, "alice-on-n2").await.unwrap();
    bus.send("bob", &serde_json::json!({ "hi": 1 }))
        .await
        .unwrap();

    // A node dies: `up` says so and goes on; the bus stores and serves.
    let killed = std::process::Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    up.wait_for_stderr(Duration::from_secs(10), |stderr| {
        stderr.contains("nats-server 1 of the cluster exited")
    })
    .await;
    assert!(up.is_running());
    let operator = agentbus::Bus::connect(&up.target(), "operator")
        .await
        .unwrap();
    let queue = agentbus::delivery::Queue::agent("after_the_loss").unwrap();
    let task = agentbus::TaskRequest::new("t", serde_json::json!({}));
    operator.submit(&queue, &task).await.unwrap();

    assert!(up.terminate().await.success());
    for pid in [pids[0], pids[2]] {
        assert!(!agentbus_testkit::process_alive(pid), "node {pid} stopped");
    }
    let out = run([
        "up",
        "--data-dir",
        data_dir,
        "--port",
        "0",
        "--monitor-port",
        "0",
    ])
    .await;
    out.assert_one_error("holds a cluster of 3 servers; run `agentbus up --cluster 3` there");
}
