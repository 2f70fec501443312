//! An OpenAI-compatible chat completions endpoint, played by a small HTTP
//! server on `127.0.0.1:0`, for tests of agents that call a language model.
//! Each request is captured for the test to inspect; the answer comes from
//! the test's `respond` function. A request with `"stream": true` that
//! `respond` answers with status 200 gets server-sent events (see
//! [`LlmServer::start_with`]).

use crate::llm_stream::{self, AbandonedStream, StreamEnd};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long [`LlmServer::next_request`] and [`LlmServer::next_abandoned`] wait.
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

    /// Whether the request asks for server-sent events (`"stream": true`).
    pub fn wants_stream(&self) -> bool {
        self.body["stream"] == Value::Bool(true)
    }
}

/// The endpoint; stops when dropped.
#[derive(Debug)]
pub struct LlmServer {
    base_url: String,
    requests: mpsc::UnboundedReceiver<LlmRequest>,
    abandoned: mpsc::UnboundedReceiver<AbandonedStream>,
    server: JoinHandle<()>,
}

/// How the endpoint answers a request: an HTTP status and a JSON body.
pub type Respond = fn(&LlmRequest) -> (u16, String);

/// How the endpoint streams, beyond what `respond` says.
#[derive(Debug, Clone, Copy)]
pub struct LlmServerOptions {
    /// The pause between the events of a streamed answer.
    pub token_delay: Duration,
    /// Whether `"stream": true` gets server-sent events; `false` plays an
    /// endpoint that ignores it and answers one JSON body.
    pub streams: bool,
}

impl Default for LlmServerOptions {
    /// Streams when asked, without pauses.
    fn default() -> Self {
        Self {
            token_delay: Duration::ZERO,
            streams: true,
        }
    }
}

impl LlmServer {
    /// Starts the endpoint on a free loopback port, with the default
    /// [`LlmServerOptions`].
    pub async fn start(respond: Respond) -> Self {
        Self::start_with(respond, LlmServerOptions::default()).await
    }

    /// Starts the endpoint on a free loopback port.
    ///
    /// A request with `"stream": true` that `respond` answers with status
    /// 200 gets `text/event-stream` in chunked transfer encoding: when the
    /// answer is a chat completion, a first chunk with `delta.role`, one
    /// `delta.content` chunk per token of its content (as
    /// [`crate::stream_tokens`] cuts it), a last one with
    /// `finish_reason: "stop"`, then `data: [DONE]`; any other answer is
    /// sent as it is, as the event stream (to test malformed events). Other
    /// answers are one JSON body, as without streaming.
    pub async fn start_with(respond: Respond, options: LlmServerOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base_url = format!("http://{}/v1", listener.local_addr().expect("bound"));
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (abandoned_tx, abandoned) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let requests = requests_tx.clone();
                let abandoned = abandoned_tx.clone();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let Some(request) = read_request(&mut stream).await else {
                        return;
                    };
                    let (status, reply) = respond(&request);
                    let wants_stream = request.wants_stream();
                    // Reported before answering: a streamed answer may take long.
                    let _ = requests.send(request);
                    if status == 200 && wants_stream && options.streams {
                        let events = llm_stream::events(&reply);
                        let end =
                            llm_stream::write(&mut stream, &events, options.token_delay).await;
                        if let StreamEnd::Abandoned(report) = end {
                            let _ = abandoned.send(report);
                        }
                    } else {
                        write_json(&mut stream, status, &reply).await;
                    }
                });
            }
        });
        Self {
            base_url,
            requests,
            abandoned,
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

    /// The next streamed answer whose client went away before its end;
    /// panics after 10 s without one.
    pub async fn next_abandoned(&mut self) -> AbandonedStream {
        tokio::time::timeout(WAIT, self.abandoned.recv())
            .await
            .expect("a client left a streamed answer before its end")
            .expect("the endpoint is running")
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Reads one HTTP/1.1 request.
async fn read_request(stream: &mut TcpStream) -> Option<LlmRequest> {
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
    Some(LlmRequest {
        method_and_path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// Writes `reply` as one JSON body with `status`, and closes.
async fn write_json(stream: &mut TcpStream, status: u16, reply: &str) {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}
