//! The `agentbus` command: a thin layer over the `agentbus` library.
//! Each subcommand lives in its own module under `commands/`.

mod commands;
mod output;

use clap::Parser;
use output::errln;
use std::io::IsTerminal;
use std::process::ExitCode;

/// mimalloc rather than the system allocator: message handling allocates many
/// small, short-lived buffers across threads, where glibc malloc contends.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// agentbus: messaging for multi-agent systems on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "agentbus", version, about, propagate_version = true)]
struct Cli {
    /// Log more (repeat for more detail); logs go to stderr. RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // Before the async runtime and dropped after it (locals drop in reverse):
    // the exporter's blocking HTTP client lives outside it.
    let _telemetry = match agentbus::telemetry::init_from_env("agentbus") {
        Ok(guard) => guard,
        Err(err) => {
            errln!("error: {err}; check OTEL_EXPORTER_OTLP_ENDPOINT");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            errln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The command runs on this (main) thread: child processes that are tied to
    // the life of their parent thread (nats-server under `up`) live as long as we do.
    match runtime.block_on(cli.command.exec()) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            errln!("error: {}", one_sentence(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes in one line. Library errors already quote their
/// cause in their own sentence, so a cause whose text is already there is
/// not repeated (`{:#}` would print it twice).
fn one_sentence(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        // async-nats logs a refused connection at ERROR; our own one-line error says it.
        0 => "warn,async_nats::connector=off",
        1 => "info,async_nats=warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        // A log line that cannot be written (stderr closed, as in
        // `agentbus -vv status 2>&1 | head`) is dropped: tracing would
        // otherwise report it with `eprintln!`, which panics there.
        .log_internal_errors(false)
        .init();
}

/// Colour only for a person at a terminal: not in a pipe or a file, and not
/// when `NO_COLOR` is set (<https://no-color.org>).
fn colour_logs() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that quotes its cause, as the library's errors do.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot publish: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let cause = std::io::Error::other("connection closed");
        let err = anyhow::Error::new(Quoting(cause)).context("cannot send the message");
        assert_eq!(
            one_sentence(&err),
            "cannot send the message: cannot publish: connection closed"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_sentence(&plain), "outer: inner");
    }
}
