//! A bridge that could not start still speaks MCP, so the client can show
//! why: every request is answered with a JSON-RPC error carrying the
//! one-sentence reason, the `initialize` request first (MCP clients show a
//! failed `initialize` as the connection's error, where a process that just
//! exits shows as "Connection closed"). Pings are answered, notifications
//! ignored, until the client leaves.

use rmcp::RoleServer;
use rmcp::model::{
    ClientJsonRpcMessage, ClientRequest, EmptyResult, ErrorData, ServerJsonRpcMessage, ServerResult,
};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite};

/// Answers MCP on stdin/stdout with `message` as the error of every request,
/// until the client closes stdin or `shutdown` resolves.
pub async fn serve_stdio(message: &str, shutdown: impl Future<Output = ()> + Send) {
    let (read, write) = rmcp::transport::stdio_pipes();
    serve(message, read, write, shutdown).await;
}

/// [`serve_stdio`] over `read`/`write` (newline-delimited JSON-RPC).
pub(crate) async fn serve<R, W>(
    message: &str,
    read: R,
    write: W,
    shutdown: impl Future<Output = ()> + Send,
) where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut transport = AsyncRwTransport::<RoleServer, R, W>::new_server(read, write);
    let error = ErrorData::internal_error(message.to_owned(), None);
    tokio::pin!(shutdown);
    loop {
        let received = tokio::select! {
            received = transport.receive() => received,
            () = &mut shutdown => break,
        };
        let Some(received) = received else { break };
        let Some(answer) = answer(received, &error) else {
            continue;
        };
        if let Err(err) = transport.send(answer).await {
            tracing::debug!(%err, "cannot answer the MCP client; it has left");
            break;
        }
    }
    let _ = transport.close().await;
}

/// The answer to one message from the client: `error` for a request, an
/// empty result for a ping, nothing for the rest.
fn answer(received: ClientJsonRpcMessage, error: &ErrorData) -> Option<ServerJsonRpcMessage> {
    let ClientJsonRpcMessage::Request(request) = received else {
        return None;
    };
    Some(match request.request {
        ClientRequest::PingRequest(_) => {
            ServerJsonRpcMessage::response(ServerResult::EmptyResult(EmptyResult {}), request.id)
        }
        _ => ServerJsonRpcMessage::error(error.clone(), Some(request.id)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[tokio::test]
    async fn every_request_gets_the_reason_until_the_client_leaves() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(server);
        let serving = tokio::spawn(async move {
            serve(
                "cannot reach NATS at nats://127.0.0.1:1: connection refused",
                server_read,
                server_write,
                std::future::pending(),
            )
            .await;
        });
        let (client_read, mut client_write) = tokio::io::split(client);
        let mut lines = BufReader::new(client_read).lines();
        let initialize = json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        });
        let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
        let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
        for message in [initialize, ping, notification, call] {
            client_write
                .write_all(format!("{message}\n").as_bytes())
                .await
                .unwrap();
        }
        let mut answers = Vec::new();
        for _ in 0..3 {
            let line = lines.next_line().await.unwrap().unwrap();
            answers.push(serde_json::from_str::<Value>(&line).unwrap());
        }
        assert_eq!(answers[0]["id"], 1);
        assert_eq!(
            answers[0]["error"]["message"],
            "cannot reach NATS at nats://127.0.0.1:1: connection refused"
        );
        assert_eq!(answers[1], json!({"jsonrpc": "2.0", "id": 2, "result": {}}));
        assert_eq!(answers[2]["id"], 3);
        assert_eq!(answers[2]["error"]["code"], -32603);
        client_write.shutdown().await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), serving)
            .await
            .expect("it stops once the client leaves")
            .unwrap();
    }
}
