//! The scenarios: a bus (one server or a cluster of three), worker
//! processes, a submitter in this process, and one fault injected once a
//! third of the tasks are submitted. What happened is then counted from the
//! workers' ledgers, the task records and what the submitter was told.

use crate::worker::{self, AGENT, POISON, WORK, WorkerFigures};
use agentbus::delivery::{Queue, TaskState};
use agentbus::subject::TASKS_STREAM;
use agentbus::{Bus, ServerTarget, TaskId, TaskRequest};
use agentbus_ops::topology::Topology;
use agentbus_testkit::{NatsCluster, NatsServer};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// Every scenario, in the order they run.
pub(crate) const ALL: [&str; 9] = [
    "server-kill",
    "server-restart",
    "worker-kill",
    "worker-pause",
    "dead-letters-full",
    "cluster-leader-kill",
    "cluster-leader-stepdown",
    "cluster-majority-lost",
    "cluster-partition",
];

/// How long the partition scenario keeps a node cut off once the others
/// have elected a new leader.
const PARTITION: Duration = Duration::from_secs(3);

/// How much work a run does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Profile {
    /// Tasks submitted per scenario.
    pub(crate) tasks: usize,
    /// How long each task's handler works.
    pub(crate) work: Duration,
    /// The workers' ack wait: how long a silent worker holds a task.
    pub(crate) ack_wait: Duration,
}

impl Profile {
    pub(crate) fn quick() -> Self {
        Self {
            tasks: 150,
            work: Duration::from_millis(20),
            ack_wait: Duration::from_secs(3),
        }
    }

    pub(crate) fn full() -> Self {
        Self {
            tasks: 2_000,
            work: Duration::from_millis(20),
            ack_wait: Duration::from_secs(3),
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Counts {
    pub(crate) scenario: String,
    pub(crate) submitted: usize,
    /// Submissions the bus said it stored.
    pub(crate) acknowledged: usize,
    /// Handler runs.
    pub(crate) executed: usize,
    /// Effects made.
    pub(crate) effects: usize,
    /// Acknowledged tasks that did not end as they must (completed; for
    /// poison, dead-lettered).
    pub(crate) lost: usize,
    /// Runs beyond the first of a task.
    pub(crate) duplicate_executions: usize,
    /// Effects beyond the first of a task, except those below.
    pub(crate) duplicate_effects: usize,
    /// Effects made again because the process that made one first was
    /// killed (`kill -9`) before it stored the effect's result: the one
    /// case [`agentbus::TaskContext::once`] says leaves an effect unknown
    /// (a system taking its idempotency key closes it).
    pub(crate) effects_redone_after_kill: usize,
    /// Late outcomes of attempts another attempt had taken over.
    pub(crate) stale_results_discarded: u64,
    /// The longest the bus stood still after the fault: the longest time
    /// without an effect, from the fault on, in milliseconds.
    pub(crate) recovery_ms: Option<u64>,
    /// Submissions refused.
    pub(crate) errors: usize,
    /// Tasks run although their submission was refused (stored after all:
    /// the refusal came at the deadline, before the cluster settled it).
    pub(crate) refused_but_run: usize,
    /// What the submitter was told, each message once, with how often.
    pub(crate) error_messages: Vec<(String, usize)>,
}

/// The bus a scenario runs on.
enum Servers {
    One(Box<NatsServer>),
    Cluster(Box<NatsCluster>),
}

impl Servers {
    fn target(&self) -> ServerTarget {
        match self {
            Self::One(server) => server.target(),
            Self::Cluster(cluster) => cluster.target(),
        }
    }

    fn cluster(&mut self) -> &mut NatsCluster {
        match self {
            Self::Cluster(cluster) => cluster,
            Self::One(_) => unreachable!("a cluster scenario runs on a cluster"),
        }
    }

    fn one(&mut self) -> &mut NatsServer {
        match self {
            Self::One(server) => server,
            Self::Cluster(_) => unreachable!("a one-server scenario runs on one server"),
        }
    }
}

/// Runs `scenario`; `ledgers` is a directory of its own.
pub(crate) async fn run(
    scenario: &str,
    profile: Profile,
    ledgers: &Path,
) -> anyhow::Result<Counts> {
    let clustered = scenario.starts_with("cluster-");
    let mut servers = if scenario == "cluster-partition" {
        Servers::Cluster(Box::new(NatsCluster::start_behind_proxies(3).await))
    } else if clustered {
        Servers::Cluster(Box::new(NatsCluster::start(3).await))
    } else if scenario == "dead-letters-full" {
        let mut topology = Topology::standard();
        if let Some(dlq) = topology.streams.iter_mut().find(|s| s.name == "agent-dlq") {
            dlq.max_msgs = 10;
        }
        Servers::One(Box::new(NatsServer::start_with_topology(&topology).await))
    } else {
        Servers::One(Box::new(NatsServer::start().await))
    };
    let target = servers.target();
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(spawn_worker(&target, profile, ledgers).await?);
    }
    let poison = scenario == "dead-letters-full";
    let mut submitter = Bus::connect(&target, "faults-submitter").await?;
    if scenario == "cluster-majority-lost" {
        // Refusals while the majority is gone should come back soon.
        submitter = submitter.with_store_deadline(Duration::from_secs(3));
    }
    let (progress, mut submitted) = tokio::sync::watch::channel(0usize);
    let submitting = tokio::spawn(submit_all(
        submitter.clone(),
        profile.tasks,
        poison,
        progress,
    ));
    // The fault, once a third is submitted.
    let _ = submitted
        .wait_for(|count| *count >= profile.tasks / 3)
        .await;
    let fault_at = worker::now_ms();
    inject(scenario, &mut servers, &mut workers, &submitter, profile).await?;
    let (acknowledged, errors) = submitting.await?;

    // Every acknowledged task must end as it should.
    let expected = if poison {
        TaskState::DeadLettered
    } else {
        TaskState::Completed
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut lost = 0;
    for task_id in &acknowledged {
        // Most have ended by now: one read each; a wait for the others. A
        // record read from a replica that is still catching up (the node
        // that was cut off or down) may be behind: read again until the
        // deadline before counting the task lost.
        let mut waited = false;
        let ended = loop {
            let read = submitter.task_record(task_id).await.ok().flatten();
            let state = read.map(|record| record.state);
            if state == Some(expected) || Instant::now() >= deadline {
                break state;
            }
            if !waited && !state.is_some_and(|state| state.is_final()) {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = submitter.wait_task(task_id, left).await;
                waited = true;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if ended != Some(expected) {
            lost += 1;
            let record = submitter.task_record(task_id).await.ok().flatten();
            eprintln!(
                "{scenario}: task {task_id} did not end {expected}: {}",
                record.map_or_else(
                    || "no record".to_owned(),
                    |r| format!(
                        "{} after {} attempts, {:?}",
                        r.state,
                        r.attempts,
                        r.response.and_then(|r| r.error)
                    )
                )
            );
        }
    }
    for worker in &mut workers {
        stop_worker(worker).await;
    }
    let killed = (scenario == "worker-kill").then(|| workers[0].pid);
    let mut counts = tally(ledgers, fault_at, &acknowledged, killed)?;
    counts.scenario = scenario.to_owned();
    counts.submitted = profile.tasks;
    counts.acknowledged = acknowledged.len();
    counts.lost = lost;
    counts.errors = errors.values().sum();
    counts.error_messages = errors.into_iter().collect();
    counts.error_messages.sort();
    Ok(counts)
}

/// Submits `tasks` tasks, eight at a time, telling `progress` how many were
/// tried; returns the acknowledged task ids and each error message's count.
async fn submit_all(
    bus: Bus,
    tasks: usize,
    poison: bool,
    progress: tokio::sync::watch::Sender<usize>,
) -> (Vec<TaskId>, HashMap<String, usize>) {
    let queue = Queue::agent(AGENT).expect("a valid agent name");
    let mut acknowledged = Vec::new();
    let mut errors = HashMap::new();
    let mut tried = 0;
    while tried < tasks {
        let batch: Vec<TaskRequest> = (tried..(tried + 8).min(tasks))
            .map(|n| {
                TaskRequest::new(
                    if poison { POISON } else { WORK },
                    serde_json::json!({ "n": n }),
                )
            })
            .collect();
        tried += batch.len();
        let stored =
            futures::future::join_all(batch.iter().map(|task| bus.submit(&queue, task))).await;
        for (task, stored) in batch.into_iter().zip(stored) {
            match stored {
                Ok(_) => acknowledged.push(task.task_id),
                Err(err) => *errors.entry(err.to_string()).or_default() += 1,
            }
        }
        let _ = progress.send(tried);
        // Paced, so that the fault meets work in flight.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (acknowledged, errors)
}

/// A worker process: this program run as `worker`.
struct Worker {
    child: Child,
    pid: u32,
}

async fn spawn_worker(
    target: &ServerTarget,
    profile: Profile,
    ledgers: &Path,
) -> anyhow::Result<Worker> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("worker")
        .arg("--dir")
        .arg(ledgers)
        .arg("--ack-wait-ms")
        .arg(profile.ack_wait.as_millis().to_string())
        .arg("--work-ms")
        .arg(profile.work.as_millis().to_string())
        .env("NATS_URL", seed_url(target))
        // Held open by `child`: the worker stops when it closes, with this
        // program or after it was killed.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    anyhow::ensure!(
        matches!(ready, Ok(Ok(Some(ref line))) if line == "ready"),
        "worker {pid} did not get ready: {ready:?}"
    );
    Ok(Worker { child, pid })
}

/// The target's servers with its credentials in each URL, as `NATS_URL`
/// takes them.
fn seed_url(target: &ServerTarget) -> String {
    let agentbus::connect::Credentials::UserPassword { user, password } = target.credentials()
    else {
        unreachable!("test servers have a user and a password")
    };
    target
        .servers()
        .iter()
        .map(|url| url.replacen("nats://", &format!("nats://{user}:{password}@"), 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Sends `signal` (a `kill` option such as `-9`) to `pid`.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

async fn stop_worker(worker: &mut Worker) {
    if worker.child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = signal(worker.pid, "-CONT");
    let _ = signal(worker.pid, "-TERM");
    if tokio::time::timeout(Duration::from_secs(10), worker.child.wait())
        .await
        .is_err()
    {
        let _ = worker.child.kill().await;
    }
}

/// The fault of `scenario`.
async fn inject(
    scenario: &str,
    servers: &mut Servers,
    workers: &mut [Worker],
    bus: &Bus,
    profile: Profile,
) -> anyhow::Result<()> {
    match scenario {
        "server-kill" => {
            let server = servers.one();
            server.kill().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            server.start_again().await;
        }
        "server-restart" => servers.one().restart().await,
        "worker-kill" => signal(workers[0].pid, "-9")?,
        "worker-pause" => {
            signal(workers[0].pid, "-STOP")?;
            tokio::time::sleep(profile.ack_wait + Duration::from_secs(2)).await;
            signal(workers[0].pid, "-CONT")?;
        }
        // The fault is the dead-letter stream's size.
        "dead-letters-full" => {}
        "cluster-leader-kill" => {
            let cluster = servers.cluster();
            let leader = cluster.stream_leader(bus.jetstream(), TASKS_STREAM).await;
            cluster.kill(leader).await;
        }
        "cluster-leader-stepdown" => {
            let subject = format!("STREAM.LEADER.STEPDOWN.{TASKS_STREAM}");
            let answer: serde_json::Value = bus
                .jetstream()
                .request(subject, &serde_json::json!({}))
                .await?;
            anyhow::ensure!(answer["success"] == true, "step-down refused: {answer}");
        }
        "cluster-majority-lost" => {
            let cluster = servers.cluster();
            cluster.kill(1).await;
            cluster.kill(2).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            cluster.restart(1).await;
            cluster.restart(2).await;
        }
        "cluster-partition" => {
            let cluster = servers.cluster();
            let cut = cluster.stream_leader(bus.jetstream(), TASKS_STREAM).await;
            cluster.isolate(cut);
            // The others elect a leader among themselves: seen from one of
            // them, since the cut-off node's clients are cut off too.
            let other = cluster.connect_to((cut + 1) % cluster.len()).await;
            let js = async_nats::jetstream::new(other);
            let deadline = Instant::now() + Duration::from_secs(30);
            while cluster.stream_leader(&js, TASKS_STREAM).await == cut {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node {cut}, cut off, still leads {TASKS_STREAM} after 30 s: the partition did not take"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(PARTITION).await;
            cluster.rejoin(cut);
        }
        other => anyhow::bail!("no scenario {other}"),
    }
    Ok(())
}

/// Counts the runs, effects and stale results in `ledgers`; the recovery
/// time is the longest gap between effects from `fault_at` on. A task's
/// effects beyond its first are duplicates, unless its first was made by
/// the worker `killed` with `kill -9`.
fn tally(
    ledgers: &Path,
    fault_at: u128,
    acknowledged: &[TaskId],
    killed: Option<u32>,
) -> anyhow::Result<Counts> {
    let mut runs: HashMap<String, usize> = HashMap::new();
    let mut effects: HashMap<String, usize> = HashMap::new();
    // Each task's first effect: when, and whether the killed worker made it.
    let mut first_effects: HashMap<String, (u128, bool)> = HashMap::new();
    let mut after_fault: Vec<u128> = Vec::new();
    let mut stale = 0;
    for entry in std::fs::read_dir(ledgers)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("figures-") {
            let figures: WorkerFigures =
                serde_json::from_slice(&std::fs::read(&path)?).unwrap_or_default();
            stale += figures.stale_results;
            continue;
        }
        let Some(pid) = name
            .strip_prefix("ledger-")
            .and_then(|rest| rest.strip_suffix(".txt"))
        else {
            continue;
        };
        let by_killed = killed.is_some_and(|killed| pid == killed.to_string());
        for line in std::fs::read_to_string(&path)?.lines() {
            let mut parts = line.split(' ');
            let (Some(kind), Some(task), Some(at)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let at: u128 = at.parse().unwrap_or_default();
            match kind {
                "exec" => *runs.entry(task.to_owned()).or_default() += 1,
                "effect" => {
                    *effects.entry(task.to_owned()).or_default() += 1;
                    let first = first_effects
                        .entry(task.to_owned())
                        .or_insert((at, by_killed));
                    if at < first.0 {
                        *first = (at, by_killed);
                    }
                    if at >= fault_at {
                        after_fault.push(at);
                    }
                }
                _ => {}
            }
        }
    }
    let beyond_first = |counts: &HashMap<String, usize>| counts.values().map(|n| n - 1).sum();
    let (redone, duplicated): (Vec<_>, Vec<_>) = effects
        .iter()
        .map(|(task, n)| (first_effects.get(task).is_some_and(|f| f.1), n - 1))
        .partition(|(after_kill, _)| *after_kill);
    let sum = |counts: Vec<(bool, usize)>| counts.into_iter().map(|(_, n)| n).sum();
    let acknowledged: std::collections::HashSet<&str> =
        acknowledged.iter().map(TaskId::as_str).collect();
    Ok(Counts {
        executed: runs.values().sum(),
        effects: effects.values().sum(),
        duplicate_executions: beyond_first(&runs),
        duplicate_effects: sum(duplicated),
        effects_redone_after_kill: sum(redone),
        stale_results_discarded: stale,
        refused_but_run: runs
            .keys()
            .filter(|task| !acknowledged.contains(task.as_str()))
            .count(),
        recovery_ms: longest_gap(fault_at, after_fault),
        ..Counts::default()
    })
}

/// The longest time between `from` and the first of `times`, or between two
/// of them; `None` when there are none.
fn longest_gap(from: u128, mut times: Vec<u128>) -> Option<u64> {
    times.sort_unstable();
    let mut previous = from;
    let mut longest = None;
    for at in times {
        let gap = u64::try_from(at - previous).unwrap_or(u64::MAX);
        longest = Some(longest.map_or(gap, |longest: u64| longest.max(gap)));
        previous = at;
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::{longest_gap, tally};

    #[test]
    fn only_an_effect_first_made_by_the_killed_worker_is_counted_apart() {
        let dir = std::env::temp_dir().join(format!("faults-tally-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Worker 7 was killed: t1's first effect is its, t2's is worker 8's.
        std::fs::write(
            dir.join("ledger-7.txt"),
            "exec t1 90\neffect t1 100\neffect t2 300\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("ledger-8.txt"),
            "effect t1 200\neffect t2 150\neffect t3 120\n",
        )
        .unwrap();
        let counts = tally(&dir, 0, &[], Some(7)).unwrap();
        let not_killed = tally(&dir, 0, &[], None).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(counts.effects, 5);
        assert_eq!(
            (counts.effects_redone_after_kill, counts.duplicate_effects),
            (1, 1)
        );
        assert_eq!(
            (
                not_killed.effects_redone_after_kill,
                not_killed.duplicate_effects
            ),
            (0, 2)
        );
    }

    #[test]
    fn the_longest_gap_counts_from_the_fault() {
        assert_eq!(longest_gap(100, vec![]), None);
        assert_eq!(longest_gap(100, vec![150, 110, 400, 420]), Some(250));
        assert_eq!(longest_gap(100, vec![900]), Some(800));
    }
}
