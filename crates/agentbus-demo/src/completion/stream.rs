//! A completion streamed as server-sent events (`"stream": true`): each
//! `choices[0].delta.content` goes out as it arrives, up to `data: [DONE]`.

use super::error::CompletionError;
use super::sse::SseDecoder;
use super::{model_result, post, read_completion};
use crate::llm_endpoint::LlmEndpoint;
use crate::output::TextOutput;
use serde::Deserialize;
use serde_json::Value;
use std::future::Future;

/// One event of a chat-completions stream, as far as the agent reads it.
#[derive(Debug, Deserialize)]
struct Chunk {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    /// Set by endpoints that fail midway instead of sending the next chunk.
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    content: Option<String>,
}

/// Where a stream stands after an event.
enum Read {
    /// More may come.
    More,
    /// `data: [DONE]`: the answer is whole.
    Done,
}

/// Asks `endpoint` to stream a completion of `prompt` into `out`; the
/// result is `{"text", "model", "mode": "model"}` with the whole text.
///
/// `endpoint`'s timeout bounds each wait (for the answer to begin, then
/// between reads), not the whole answer. Once the task is stopped, the
/// answer is dropped, which closes the connection, and the result holds
/// the text so far. An endpoint that ignores `"stream"` and answers one JSON
/// completion is read whole, as one piece.
pub(crate) async fn stream_completion(
    endpoint: &LlmEndpoint,
    http: &reqwest::Client,
    prompt: &str,
    max_tokens: u64,
    out: &mut TextOutput<'_>,
) -> Result<Value, CompletionError> {
    let request = post(endpoint, http, prompt, max_tokens, true)
        .header(reqwest::header::ACCEPT, "text/event-stream");
    let Some(sent) = wait(endpoint, out, request.send()).await? else {
        return Ok(model_result(endpoint, String::new(), None));
    };
    let mut response = sent.map_err(|err| CompletionError::transport(endpoint, &err))?;
    let status = response.status();
    if !status.is_success() || is_json(&response) {
        let Some(text) = wait(endpoint, out, response.text()).await? else {
            return Ok(model_result(endpoint, String::new(), None));
        };
        let text = text.map_err(|err| CompletionError::transport(endpoint, &err))?;
        if !status.is_success() {
            return Err(CompletionError::status(endpoint, status, &text));
        }
        let (content, model) = read_completion(endpoint, &text)?;
        out.push(&content).await;
        return Ok(model_result(endpoint, out.text().to_owned(), model));
    }
    let mut stream = Stream::default();
    let mut decoder = SseDecoder::default();
    loop {
        let Some(read) = wait(endpoint, out, response.chunk()).await? else {
            break;
        };
        let bytes = read.map_err(|err| CompletionError::transport(endpoint, &err))?;
        let ended = bytes.is_none();
        let events = match &bytes {
            Some(bytes) => decoder.feed(bytes),
            None => decoder.finish().map(Vec::from_iter),
        }
        .map_err(|err| CompletionError::not_a_chunk(endpoint, &err.to_string()))?;
        for data in events {
            if out.stopped() {
                break;
            }
            if let Read::Done = stream.read(endpoint, &data, out).await? {
                return Ok(model_result(endpoint, out.text().to_owned(), stream.model));
            }
        }
        if out.stopped() {
            break;
        }
        if ended {
            if stream.finished {
                break;
            }
            return Err(CompletionError::unfinished(endpoint));
        }
    }
    Ok(model_result(endpoint, out.text().to_owned(), stream.model))
}

/// What the events read so far said.
#[derive(Debug, Default)]
struct Stream {
    /// The model the endpoint named.
    model: Option<String>,
    /// Whether a chunk gave a finish reason (the answer is whole even if
    /// the stream then ends without `data: [DONE]`).
    finished: bool,
}

impl Stream {
    /// Reads one event's data, putting its content into `out`.
    async fn read(
        &mut self,
        endpoint: &LlmEndpoint,
        data: &str,
        out: &mut TextOutput<'_>,
    ) -> Result<Read, CompletionError> {
        if data.trim() == "[DONE]" {
            return Ok(Read::Done);
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|err| CompletionError::not_a_chunk(endpoint, &err.to_string()))?;
        if let Some(error) = chunk.error {
            return Err(CompletionError::streamed_error(endpoint, &error));
        }
        if self.model.is_none() {
            self.model = chunk.model;
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return Ok(Read::More);
        };
        self.finished |= choice.finish_reason.is_some();
        if let Some(content) = choice.delta.and_then(|delta| delta.content)
            && !content.is_empty()
        {
            out.push(&content).await;
        }
        Ok(Read::More)
    }
}

/// Waits for `work` for at most the endpoint's timeout, or until the task
/// is stopped (`None`; `work` is dropped).
async fn wait<T>(
    endpoint: &LlmEndpoint,
    out: &TextOutput<'_>,
    work: impl Future<Output = T>,
) -> Result<Option<T>, CompletionError> {
    tokio::select! {
        biased;
        () = out.until_stopped() => Ok(None),
        done = tokio::time::timeout(endpoint.timeout(), work) => {
            done.map(Some).map_err(|_| CompletionError::silent(endpoint))
        }
    }
}

fn is_json(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"))
}
