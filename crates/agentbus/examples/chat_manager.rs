//! Announces one chat message on `chat.message.new`, as the requirements'
//! LiveChattingManager does, and prints its message id.
//!
//! ```text
//! agentbus up                                   # in one terminal
//! agentbus tail 'chat.>'                        # in another, to watch
//! cargo run -p agentbus --example chat_manager -- session-1 "Hello from the chat manager"
//! ```
//!
//! Arguments: the session id (default `session-1`) and the content. The
//! server comes from `NATS_URL` or the `connection.env` written by `agentbus up`.

use agentbus::demo::{CHAT_MESSAGE_NEW, ChatManager};
use agentbus::{Bus, ServerTarget};
use std::process::ExitCode;

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
    let mut args = std::env::args().skip(1);
    let session_id = args.next().unwrap_or_else(|| "session-1".to_owned());
    let content = args
        .next()
        .unwrap_or_else(|| "Hello from the chat manager".to_owned());
    let target = ServerTarget::resolve(None, &agentbus::connect::resolve_data_dir(None))?;
    let bus = Bus::connect(&target, "chat_manager-example").await?;
    let message_id = ChatManager::new()
        .announce(&bus, &session_id, &content)
        .await?;
    // Publishing only queues the message: flush before the process exits.
    bus.flush().await?;
    println!("published {CHAT_MESSAGE_NEW} for session {session_id}: message_id {message_id}");
    Ok(())
}
