//! `agentbus dlq`: list and replay dead letters.

use super::ServerArgs;
use crate::output::outln;
use crate::output::{Table, print_json, progress_bar_for};
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// Arguments of `agentbus dlq`.
#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first; those parked while the dead-letter stream was full are moved there first when it has room.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Put dead-lettered tasks back on their original queue; a task id that is not a dead letter (any more) is an error.
    Replay {
        #[command(flatten)]
        server: ServerArgs,
        /// The task id to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        task_id: Option<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
        /// Print one JSON document: {"replayed": N}.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn exec(args: DlqArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::List { server, json } => {
            let bus = server.bus().await?;
            bus.move_parked_dead_letters().await?;
            let entries = bus.dead_letters().await?;
            let parked = bus.parked_dead_letters().await?;
            if json {
                let parked: Vec<_> = parked.iter().map(|(_, letter)| letter).collect();
                print_json(&serde_json::json!({ "dead_letters": entries, "parked": parked }))?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&["SEQ", "TASK", "SUBJECT", "ATTEMPTS", "WHEN", "REASON"]);
            let stored = entries.iter().map(|entry| {
                let reason = match &entry.refused {
                    Some(refused) => format!("NOT REPLAYABLE: {refused}"),
                    None => entry.letter.reason.clone(),
                };
                (entry.sequence.to_string(), &entry.letter, reason)
            });
            let parked_rows = parked
                .iter()
                .map(|(_, letter)| ("parked".to_owned(), letter, letter.reason.clone()));
            for (sequence, letter, reason) in stored.chain(parked_rows) {
                table.row(vec![
                    sequence,
                    letter.task_id.clone().unwrap_or_else(|| "-".to_owned()),
                    letter.subject.clone(),
                    letter.attempts.to_string(),
                    letter.dead_lettered_at.clone(),
                    reason,
                ]);
            }
            table.print()?;
            if entries.is_empty() && parked.is_empty() {
                outln!("no dead letters")?;
            }
            if !parked.is_empty() {
                outln!(
                    "{} letter(s) parked: the dead-letter stream agent-dlq is full; replay or remove letters to make room, and they move there",
                    parked.len()
                )?;
            }
        }
        DlqCommand::Replay {
            server,
            task_id,
            all,
            json,
        } => {
            let bus = server.bus().await?;
            let replayed = match (&task_id, all) {
                (_, true) => {
                    let progress = progress_bar_for(json, 0);
                    progress.set_message("replaying dead letters");
                    let replayed = bus
                        .replay_all_dead_letters_with(|looked, total| {
                            progress.set_length(total as u64);
                            progress.set_position(looked as u64);
                        })
                        .await;
                    progress.finish_and_clear();
                    replayed?
                }
                (Some(task_id), false) => bus.replay_dead_letter(task_id).await?,
                (None, false) => anyhow::bail!("name a task id or pass --all"),
            };
            match (replayed, &task_id) {
                // Named, it was meant to be there: a typo or a second replay.
                (0, Some(task_id)) => anyhow::bail!(
                    "nothing to replay for task {task_id}: it is not a dead letter (never dead-lettered, or replayed already); `agentbus dlq list` shows what can be replayed"
                ),
                (n, _) if json => print_json(&serde_json::json!({ "replayed": n }))?,
                (0, None) => outln!("nothing to replay")?,
                (n, _) => outln!("replayed {n} dead letter(s) onto their original queues")?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
