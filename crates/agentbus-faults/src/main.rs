//! The fault suite of agentbus: for each scenario it starts its own
//! nats-servers (one, or a cluster of three), two worker processes and a
//! submitter, injects one fault while tasks are in flight, and prints what
//! happened: tasks submitted, acknowledged, run and their effects, lost
//! (acknowledged and never completed), run twice, effects made twice, stale
//! results discarded, recovery time, and what the submitter was told.
//!
//! ```text
//! cargo run --release -p agentbus-faults -- [--scenario NAME] [--quick] [--json]
//! ```
//!
//! Effects are made through `TaskContext::once`; the run fails (exit 1)
//! when a task was lost or an effect made twice.

mod scenario;
mod worker;

use clap::{Parser, Subcommand};
use scenario::{Counts, Profile};
use std::process::ExitCode;
use std::time::Duration;

/// Injects faults into a real bus and counts what was lost or done twice.
#[derive(Debug, Parser)]
#[command(name = "agentbus-faults")]
struct Args {
    /// Run only this scenario (see --list).
    #[arg(long, value_name = "NAME")]
    scenario: Option<String>,
    /// A short run of every scenario (a few minutes in all).
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per scenario instead of the table.
    #[arg(long)]
    json: bool,
    /// List the scenarios.
    #[arg(long)]
    list: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the suite's agent until SIGTERM (what the suite runs in its worker processes).
    #[command(hide = true)]
    Worker {
        /// Where the ledger and figures go.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The ack wait of the agent's queue.
        #[arg(long)]
        ack_wait_ms: u64,
        /// How long each task works.
        #[arg(long)]
        work_ms: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Command::Worker {
        dir,
        ack_wait_ms,
        work_ms,
    }) = args.command
    {
        worker::run(
            dir,
            Duration::from_millis(ack_wait_ms),
            Duration::from_millis(work_ms),
        )
        .await?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.list {
        for name in scenario::ALL {
            println!("{name}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let scenarios: Vec<&str> = match &args.scenario {
        Some(name) => {
            let Some(found) = scenario::ALL.iter().find(|s| **s == name.as_str()) else {
                anyhow::bail!(
                    "no scenario named {name:?}; the scenarios are: {}",
                    scenario::ALL.join(", ")
                );
            };
            vec![*found]
        }
        None => scenario::ALL.to_vec(),
    };
    let profile = if args.quick {
        Profile::quick()
    } else {
        Profile::full()
    };
    let mut rows = Vec::new();
    for name in scenarios {
        if !args.json {
            eprintln!("running {name} ({} tasks)...", profile.tasks);
        }
        let ledgers = tempfile::tempdir()?;
        let counts = scenario::run(name, profile, ledgers.path()).await?;
        if args.json {
            println!("{}", serde_json::to_string(&counts)?);
        }
        rows.push(counts);
    }
    if !args.json {
        print_table(&rows);
    }
    let failed: Vec<&Counts> = rows
        .iter()
        .filter(|row| row.lost > 0 || row.duplicate_effects > 0)
        .collect();
    for row in &failed {
        eprintln!(
            "{}: {} lost, {} effects made twice",
            row.scenario, row.lost, row.duplicate_effects
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(rows: &[Counts]) {
    println!(
        "{:<24} {:>9} {:>6} {:>8} {:>7} {:>4} {:>8} {:>10} {:>11} {:>5} {:>11} {:>6} {:>11}",
        "SCENARIO",
        "SUBMITTED",
        "ACKED",
        "EXECUTED",
        "EFFECTS",
        "LOST",
        "DUP-RUNS",
        "DUP-EFFECT",
        "REDONE-KILL",
        "STALE",
        "RECOVERY",
        "ERRORS",
        "REFUSED-RAN"
    );
    for row in rows {
        let recovery = row
            .recovery_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"));
        println!(
            "{:<24} {:>9} {:>6} {:>8} {:>7} {:>4} {:>8} {:>10} {:>11} {:>5} {:>11} {:>6} {:>11}",
            row.scenario,
            row.submitted,
            row.acknowledged,
            row.executed,
            row.effects,
            row.lost,
            row.duplicate_executions,
            row.duplicate_effects,
            row.effects_redone_after_kill,
            row.stale_results_discarded,
            recovery,
            row.errors,
            row.refused_but_run
        );
    }
    for row in rows {
        for (message, count) in &row.error_messages {
            println!("{}: {count} x {message}", row.scenario);
        }
    }
}
