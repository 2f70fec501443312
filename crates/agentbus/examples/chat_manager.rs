//! Posts one chat message: publishes a `chat.message.new` event with the
//! session, a new message id and the content, and prints the id.
//!
//! ```text
//! agentbus up                                   # in one terminal
//! agentbus tail 'chat.>'                        # in another, to watch
//! cargo run --release --example chat_manager -- session-1 "Hello from the chat manager"
//! ```
//!
//! Arguments: the session id (default `session-1`) and the content. The
//! server comes from `NATS_URL` or the `connection.env` written by `agentbus up`.

use agentbus::{Bus, ServerTarget};
use serde::Serialize;
use std::process::ExitCode;

/// The event announcing a new chat message.
const CHAT_MESSAGE_NEW: &str = "chat.message.new";

/// The body of a `chat.message.new` event.
#[derive(Serialize)]
struct ChatMessage {
    session_id: String,
    message_id: String,
    content: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chat_manager: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing otherwise.
    #[cfg(feature = "otlp")]
    let _telemetry = agentbus::telemetry::init_from_env("chat_manager")?;
    let mut args = std::env::args().skip(1);
    let message = ChatMessage {
        session_id: args.next().unwrap_or_else(|| "session-1".to_owned()),
        message_id: uuid::Uuid::new_v4().to_string(),
        content: args
            .next()
            .unwrap_or_else(|| "Hello from the chat manager".to_owned()),
    };
    let target = ServerTarget::resolve(None, &agentbus::connect::resolve_data_dir(None))?;
    let bus = Bus::connect(&target, "chat_manager-example").await?;
    bus.publish(CHAT_MESSAGE_NEW, &message).await?;
    // Publishing only queues the event: flush before the process exits.
    bus.flush().await?;
    println!(
        "published {CHAT_MESSAGE_NEW} for session {}: message_id {}",
        message.session_id, message.message_id
    );
    Ok(())
}
