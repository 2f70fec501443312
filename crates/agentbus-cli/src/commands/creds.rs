//! `agentbus creds`: agent identities of the local bus (add, list, revoke,
//! export), each an nkey with least-privilege permissions.

use crate::output::{Table, outln, print_json};
use agentbus::Name;
use agentbus::connect::{OPERATOR_USER, ServerTarget};
use agentbus::permissions::{EventPattern, Grant};
use agentbus_ops::identity::{self, Identities};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `agentbus creds`.
#[derive(Debug, Args)]
pub(crate) struct CredsArgs {
    #[command(subcommand)]
    command: CredsCommand,

    /// Data directory of `agentbus up` [env: AGENTBUS_DATA_DIR] [default: ./.agentbus]
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum CredsCommand {
    /// Make an identity for an agent (a new key if it had one) and write its env file.
    Add(AddArgs),
    /// List the agent identities.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an agent's identity: the server disconnects it and refuses it from then on.
    Revoke {
        /// The agent.
        agent: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the `authorization` block for another nats-server (a cluster you run):
    /// the operator user (password from $AGENTBUS_NATS_PASSWORD) and every agent identity.
    Export,
}

#[derive(Debug, Args)]
struct AddArgs {
    /// The agent.
    agent: String,
    /// A shared work queue (`work.<type>`) the agent takes tasks from; repeatable.
    #[arg(long = "work-type", value_name = "TYPE")]
    work_types: Vec<String>,
    /// Only these agents may be called (tasks) by it; repeatable. Default: every agent.
    #[arg(long = "may-call", value_name = "AGENT")]
    may_call: Vec<String>,
    /// Only these agents may get its inbox and direct messages; repeatable. Default: every agent.
    #[arg(long = "may-message", value_name = "AGENT")]
    may_message: Vec<String>,
    /// Application events (a subject pattern outside the bus's own, such as chat.>) it may publish and subscribe to; repeatable. Default: none.
    #[arg(long = "events", value_name = "PATTERN")]
    events: Vec<String>,
    /// Print `{"agent": ..., "env_file": ...}`.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: CredsArgs) -> anyhow::Result<ExitCode> {
    let dir = agentbus::connect::resolve_data_dir(args.data_dir.as_deref());
    let mut ids = Identities::load(&dir)?;
    match args.command {
        CredsCommand::Add(add) => {
            let grant = Grant {
                agent: Name::parse("agent name", &add.agent)?,
                work_types: parse_names("task type", &add.work_types)?,
                may_call: Some(parse_names("agent name", &add.may_call)?)
                    .filter(|names| !names.is_empty()),
                may_message: Some(parse_names("agent name", &add.may_message)?)
                    .filter(|names| !names.is_empty()),
                events: add
                    .events
                    .iter()
                    .map(|pattern| EventPattern::parse(pattern))
                    .collect::<Result<_, _>>()?,
            };
            let operator = ServerTarget::from_connection_file(&dir).with_context(|| {
                format!(
                    "no bus runs in {}; start it with `agentbus up` first",
                    dir.display()
                )
            })?;
            let enrolled =
                identity::enroll(&mut ids, grant.clone(), &operator, OPERATOR_USER).await?;
            let added = enrolled.added;
            if add.json {
                print_json(&serde_json::json!({
                    "agent": grant.agent,
                    "env_file": added.env_file,
                }))?;
            } else {
                outln!(
                    "agent {} has its own identity; run it with the variables in {}",
                    grant.agent,
                    added.env_file.display()
                )?;
            }
        }
        CredsCommand::List { json } => {
            if json {
                print_json(&serde_json::json!({ "identities": ids.list() }))?;
            } else {
                let mut table = Table::new(&[
                    "AGENT",
                    "WORK TYPES",
                    "MAY CALL",
                    "MAY MESSAGE",
                    "EVENTS",
                    "CREATED",
                ]);
                let show = |list: &Option<Vec<Name>>| match list {
                    None => "every agent".to_owned(),
                    Some(names) => join(names),
                };
                for id in ids.list() {
                    table.row(vec![
                        id.grant.agent.to_string(),
                        join(&id.grant.work_types),
                        show(&id.grant.may_call),
                        show(&id.grant.may_message),
                        join(&id.grant.events),
                        id.created.clone(),
                    ]);
                }
                table.print()?;
            }
        }
        CredsCommand::Revoke { agent, json } => {
            // Without a bus running, the files change and the next `up` reads them.
            let operator = ServerTarget::from_connection_file(&dir).ok();
            let withdrawn =
                identity::withdraw(&mut ids, &agent, operator.as_ref(), OPERATOR_USER).await?;
            if json {
                print_json(&serde_json::json!({
                    "agent": withdrawn.identity.grant.agent,
                    "revoked": true,
                    "server_reloaded": withdrawn.server_reloaded,
                }))?;
            } else {
                outln!(
                    "agent {agent}'s identity is revoked: the server disconnects it and refuses it from now on"
                )?;
            }
        }
        CredsCommand::Export => {
            outln!("{}", ids.authorization(OPERATOR_USER).trim_end())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Each of `values` as a name; the first invalid one is the error.
fn parse_names(what: &'static str, values: &[String]) -> Result<Vec<Name>, agentbus::InvalidName> {
    values
        .iter()
        .map(|value| Name::parse(what, value))
        .collect()
}

fn join(names: &[impl ToString]) -> String {
    if names.is_empty() {
        return "-".to_owned();
    }
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
