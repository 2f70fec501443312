//! The test endpoint's streamed answers: a chat completion as server-sent
//! events, written in chunked transfer encoding with a pause between events,
//! noticing a client that leaves before the end.

use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A streamed answer whose client went away before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbandonedStream {
    /// The events written before the client left.
    pub sent: usize,
    /// The events the answer had.
    pub total: usize,
}

/// How writing a streamed answer ended.
pub(crate) enum StreamEnd {
    /// Every event was written.
    Complete,
    /// The client left first.
    Abandoned(AbandonedStream),
}

/// How the endpoint cuts a content into tokens to stream: each run of
/// non-whitespace with the whitespace before it (`"Once upon"` is `"Once"`,
/// `" upon"`); whitespace at the end is a token of its own. Concatenated,
/// the tokens are the content.
///
/// ```
/// assert_eq!(agentbus_testkit::stream_tokens(" a b\n"), [" a", " b", "\n"]);
/// ```
pub fn stream_tokens(content: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for c in content.chars() {
        if c.is_whitespace() && in_word {
            tokens.push(std::mem::take(&mut current));
            in_word = false;
        }
        in_word |= !c.is_whitespace();
        current.push(c);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

/// The events of a streamed answer to `reply`, each a complete
/// `data: ...\n\n`; anything but a chat completion with content is one
/// "event" holding `reply` as it is.
pub(crate) fn events(reply: &str) -> Vec<String> {
    let completion: Value = serde_json::from_str(reply).unwrap_or(Value::Null);
    let Some(content) = completion
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
    else {
        // An empty answer is no event: an empty chunk would end the body.
        if reply.is_empty() {
            return Vec::new();
        }
        return vec![reply.to_owned()];
    };
    let model = completion["model"].as_str().unwrap_or("test-model");
    let chunk = |delta: Value, finish: Value| {
        let chunk = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {chunk}\n\n")
    };
    let mut events = vec![chunk(json!({"role": "assistant"}), Value::Null)];
    events.extend(
        stream_tokens(content)
            .into_iter()
            .map(|token| chunk(json!({ "content": token }), Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop")));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// Writes `events` as a `text/event-stream` answer, one HTTP chunk each,
/// pausing `delay` between them; stops when the client closes its side.
pub(crate) async fn write(stream: &mut TcpStream, events: &[String], delay: Duration) -> StreamEnd {
    let abandoned = |sent| {
        StreamEnd::Abandoned(AbandonedStream {
            sent,
            total: events.len(),
        })
    };
    let (mut reader, mut writer) = stream.split();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if writer.write_all(head.as_bytes()).await.is_err() {
        return abandoned(0);
    }
    for (sent, event) in events.iter().enumerate() {
        if sent > 0 && !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = closed(&mut reader) => return abandoned(sent),
            }
        }
        let chunk = format!("{:X}\r\n{event}\r\n", event.len());
        if writer.write_all(chunk.as_bytes()).await.is_err() {
            return abandoned(sent);
        }
    }
    if writer.write_all(b"0\r\n\r\n").await.is_err() {
        return abandoned(events.len());
    }
    let _ = writer.shutdown().await;
    StreamEnd::Complete
}

/// Resolves when the client closes the connection (it sends nothing more
/// after its request).
async fn closed(reader: &mut tokio::net::tcp::ReadHalf<'_>) {
    let mut buffer = [0u8; 1024];
    while let Ok(n) = reader.read(&mut buffer).await {
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_concatenate_to_the_content() {
        assert_eq!(
            stream_tokens("Once upon  a time"),
            ["Once", " upon", "  a", " time"]
        );
        assert_eq!(stream_tokens(""), Vec::<String>::new());
        assert_eq!(stream_tokens("   "), ["   "]);
        for text in ["a", " a b\n", "héllo wörld ", "x\ty"] {
            assert_eq!(stream_tokens(text).concat(), text);
        }
    }

    #[test]
    fn a_completion_streams_role_tokens_stop_and_done() {
        let reply = json!({"model": "m", "choices": [{"message": {"content": "a b"}}]});
        let events = events(&reply.to_string());
        assert_eq!(events.len(), 5, "{events:#?}");
        let data = |i: usize| -> Value {
            serde_json::from_str(events[i].strip_prefix("data: ").unwrap().trim()).unwrap()
        };
        assert_eq!(data(0)["choices"][0]["delta"], json!({"role": "assistant"}));
        assert_eq!(data(1)["choices"][0]["delta"]["content"], "a");
        assert_eq!(data(2)["choices"][0]["delta"]["content"], " b");
        assert_eq!(data(3)["choices"][0]["finish_reason"], "stop");
        assert_eq!(data(3)["model"], "m");
        assert_eq!(events[4], "data: [DONE]\n\n");
        assert_eq!(super::events("data: garbage\n\n"), ["data: garbage\n\n"]);
    }
}
