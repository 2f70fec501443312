//! `agentbus check`: the delivery test and the configuration doctor, against
//! any server.

use super::{ServerArgs, load_topology};
use crate::output::outln;
use crate::output::{Table, print_json, spinner_for};
use agentbus_ops::check::{self, CheckOptions};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `agentbus check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Topology file (TOML) the streams should match; default: the standard topology.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,

    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs every check; exit status 0 only when all pass.
pub(super) async fn exec(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let topology = load_topology(args.topology.as_deref())?;
    let (target, client) = args.server.connect().await?;
    let progress = spinner_for(args.json, "checking");
    let report = check::run_with(
        &client,
        &target,
        &topology,
        &CheckOptions::default(),
        |name| progress.set_message(format!("checking {name}")),
    )
    .await;
    progress.finish_and_clear();
    if args.json {
        print_json(&report)?;
    } else {
        let mut table = Table::new(&["STATUS", "NAME", "DETAIL"]);
        for check in &report.checks {
            let status = if check.passed { "PASS" } else { "FAIL" };
            table.row(vec![status.into(), check.name.into(), check.detail.clone()]);
        }
        table.print()?;
        let passed = report.checks.iter().filter(|c| c.passed).count();
        outln!(
            "\n{passed} of {} checks passed against {}",
            report.checks.len(),
            target.display_url()
        )?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
