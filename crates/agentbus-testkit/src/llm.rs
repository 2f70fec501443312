//! An OpenAI-compatible chat completions endpoint, played by a small HTTP
//! server on `127.0.0.1:0`, for tests of agents that call a language model.
//! Each request is captured for the test to inspect; the answer comes from
//! the test's `respond` function.

use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long [`LlmServer::next_request`] waits for a request.
const WAIT: Duration = Duration::from_secs(10);

/// A request the endpoint received.
#[derive(Debug, Clone)]
pub struct LlmRequest {
    /// `POST /v1/chat/completions`.
    pub method_and_path: String,
    /// The headers, as sent.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`null` when it was not JSON).
    pub body: Value,
}

impl LlmRequest {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The content of the request's first chat message.
    pub fn prompt(&self) -> Option<&str> {
        self.body["messages"][0]["content"].as_str()
    }
}

/// The endpoint; stops when dropped.
#[derive(Debug)]
pub struct LlmServer {
    base_url: String,
    requests: mpsc::UnboundedReceiver<LlmRequest>,
    server: JoinHandle<()>,
}

/// How the endpoint answers a request: an HTTP status and a JSON body.
pub type Respond = fn(&LlmRequest) -> (u16, String);

impl LlmServer {
    /// Starts the endpoint on a free loopback port.
    pub async fn start(respond: Respond) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base_url = format!("http://{}/v1", listener.local_addr().expect("bound"));
        let (tx, requests) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(request) = answer(stream, respond).await {
                        let _ = tx.send(request);
                    }
                });
            }
        });
        Self {
            base_url,
            requests,
            server,
        }
    }

    /// The base URL to configure a client with (`http://127.0.0.1:<port>/v1`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The next request received; panics after 10 s without one.
    pub async fn next_request(&mut self) -> LlmRequest {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("the endpoint received a request")
            .expect("the endpoint is running")
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Reads one HTTP/1.1 request and writes `respond`'s answer.
async fn answer(mut stream: TcpStream, respond: Respond) -> Option<LlmRequest> {
    let mut buffer = Vec::new();
    let header_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let method_and_path = lines
        .next()?
        .rsplit_once(' ')
        .map(|(left, _version)| left.to_owned())?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let request = LlmRequest {
        method_and_path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let (status, reply) = respond(&request);
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    stream.write_all(response.as_bytes()).await.ok()?;
    let _ = stream.shutdown().await;
    Some(request)
}
