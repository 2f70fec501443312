//! A worker process: one agent whose handler writes each run and each
//! effect to a ledger file of its own, the effect made through
//! [`agentbus::TaskContext::once`]. It runs until SIGTERM, or until its
//! stdin closes (the program that started it is gone, killed too), writing
//! its runtime's figures beside the ledger as it goes.

use agentbus::delivery::DeliveryOptions;
use agentbus::{
    Agent, AgentOptions, Bus, Runtime, ServerTarget, TaskContext, TaskError, TaskRequest,
    TaskTypeSpec,
};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The agent every worker serves.
pub(crate) const AGENT: &str = "faulty";
/// The task type that works: a run, a pause, an effect.
pub(crate) const WORK: &str = "work";
/// The task type that always fails for good (it is dead-lettered).
pub(crate) const POISON: &str = "poison";

/// Milliseconds since the epoch: ledger lines from several processes
/// compare by it.
pub(crate) fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// The ledger of one process: `exec <task id> <ms>` at each run,
/// `effect <task id> <ms>` at each effect.
#[derive(Debug, Clone)]
struct Ledger(Arc<Mutex<std::fs::File>>);

impl Ledger {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self(Arc::new(Mutex::new(file))))
    }

    fn write(&self, kind: &str, task_id: &str) {
        let line = format!("{kind} {task_id} {}\n", now_ms());
        let mut file = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // One write per line, appended: lines of one process never mix.
        if let Err(err) = file.write_all(line.as_bytes()) {
            tracing::error!(%err, "cannot write the ledger");
        }
    }
}

struct Faulty {
    ledger: Ledger,
    work: Duration,
}

impl Agent for Faulty {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        [WORK, POISON]
            .map(|t| TaskTypeSpec::new(t).expect("a valid task type"))
            .to_vec()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        if task.task_type == POISON {
            return Err(TaskError::permanent("poison: never digestible"));
        }
        self.ledger.write("exec", ctx.task_id());
        tokio::time::sleep(self.work).await;
        let ledger = self.ledger.clone();
        let task_id = ctx.task_id().to_owned();
        ctx.once("effect", || async move {
            ledger.write("effect", &task_id);
            Ok(())
        })
        .await?;
        Ok(json!({ "done": task.payload }))
    }
}

/// What a worker writes beside its ledger every 200 ms.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct WorkerFigures {
    pub(crate) completed: u64,
    pub(crate) stale_results: u64,
}

/// Runs a worker: connects as `NATS_URL` says (a seed list with
/// credentials), serves [`AGENT`], writes `ledger-<pid>.txt` and
/// `figures-<pid>.json` in `dir`, prints `ready` once it serves.
pub(crate) async fn run(dir: PathBuf, ack_wait: Duration, work: Duration) -> anyhow::Result<()> {
    let pid = std::process::id();
    let ledger = Ledger::open(&dir.join(format!("ledger-{pid}.txt")))?;
    let target = ServerTarget::resolve(None, Path::new("."))?;
    let bus = Bus::connect(&target, &format!("faults-worker-{pid}")).await?;
    let mut runtime = Runtime::new(bus);
    let options = AgentOptions {
        delivery: DeliveryOptions {
            ack_wait,
            retry_backoff: Duration::from_millis(100),
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(Faulty { ledger, work }, options).await?;
    println!("ready");
    let figures = dir.join(format!("figures-{pid}.json"));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let orphaned = async {
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut rest).await;
    };
    tokio::pin!(orphaned);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let stopping = tokio::select! {
            _ = terminate.recv() => true,
            () = &mut orphaned => true,
            _ = tick.tick() => false,
        };
        let stats = runtime.stats(AGENT).unwrap_or_default();
        let now = WorkerFigures {
            completed: stats.completed,
            stale_results: stats.stale_results,
        };
        std::fs::write(&figures, serde_json::to_vec(&now)?)?;
        if stopping {
            break;
        }
    }
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
