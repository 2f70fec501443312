//! The configuration doctor: the topology's streams, request/reply subjects,
//! durable consumers, task deduplication and discard policy, authentication.

use super::delivery::publish;
use super::{Outcome, Run, failed, is_stream_not_found};
use crate::topology::{changes_in_place, recreate_advice, servers_in_cluster};
use agentbus::Priority;
use agentbus::connect::{ConnectErrorKind, ServerTarget, TargetSource};
use agentbus::subject::{self, REQUEST_REPLY_SUBJECTS, TASKS_STREAM, durable, overlaps};
use async_nats::jetstream::stream::{self, DiscardPolicy};
use futures::TryStreamExt;
use tracing::instrument::WithSubscriber;

/// (5) Every stream of the topology exists with the settings it declares.
/// A difference `agentbus setup` can apply points there; one JetStream cannot
/// change in place (storage, retention) points to recreating the stream.
pub(super) async fn streams(run: &Run<'_>) -> Outcome {
    // Each problem, and whether `agentbus setup` fixes it.
    let mut problems: Vec<(String, bool)> = Vec::new();
    let topology = run
        .topology
        .on_servers(servers_in_cluster(&run.js.client()));
    for spec in &topology.streams {
        let mut stream = match run.js.get_stream(&spec.name).await {
            Ok(stream) => stream,
            Err(err) if is_stream_not_found(&err) => {
                problems.push((
                    format!("stream {} is missing (run `agentbus setup`)", spec.name),
                    true,
                ));
                continue;
            }
            Err(err) => return Err(failed(&format!("look up stream {}", spec.name), err)),
        };
        let info = stream
            .info()
            .await
            .map_err(|err| failed(&format!("read stream {}", spec.name), err))?;
        let mut differences = spec.differences(&info.config);
        // The one setup cannot make comes first: it decides what to do.
        differences.sort_by_key(|(field, _, _)| changes_in_place(field));
        if let Some((field, server, wanted)) = differences.first() {
            let more = match differences.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more: {})", field_names(&differences[1..])),
            };
            let found = format!(
                "stream {}: {field} is {server} on the server but {wanted} in the topology{more}",
                spec.name
            );
            problems.push(if changes_in_place(field) {
                (found, true)
            } else {
                let advice = recreate_advice(&spec.name, field, &server.to_lowercase());
                (
                    format!(
                        "{found}, which JetStream cannot change in place, so `agentbus setup` refuses it: {advice}"
                    ),
                    false,
                )
            });
        }
    }
    if !problems.is_empty() {
        let by_setup = problems.iter().filter(|(_, by_setup)| *by_setup).count();
        let next = if by_setup == problems.len() {
            "; `agentbus setup` applies the topology"
        } else if by_setup > 0 {
            "; after that, `agentbus setup` applies the other changes"
        } else {
            ""
        };
        let problems: Vec<String> = problems.into_iter().map(|(text, _)| text).collect();
        return Err(format!("{}{next}", problems.join("; ")));
    }
    let names: Vec<&str> = run
        .topology
        .streams
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    Ok(format!(
        "{} streams match the topology ({})",
        names.len(),
        names.join(", ")
    ))
}

fn field_names(differences: &[(&str, String, String)]) -> String {
    differences
        .iter()
        .map(|(field, _, _)| *field)
        .collect::<Vec<_>>()
        .join(", ")
}

/// (6) No stream on the server, ours or not, captures a request/reply subject.
pub(super) async fn request_reply(run: &Run<'_>) -> Outcome {
    let streams: Vec<stream::Info> = run
        .js
        .streams()
        .try_collect()
        .await
        .map_err(|err| failed("list the streams", err))?;
    let mut problems = Vec::new();
    for info in &streams {
        for captured in &info.config.subjects {
            if let Some(rr) = REQUEST_REPLY_SUBJECTS
                .iter()
                .find(|rr| overlaps(captured, rr))
            {
                problems.push(format!(
                    "stream {} captures {captured}, which overlaps {rr}",
                    info.config.name
                ));
            }
        }
    }
    let request_reply = REQUEST_REPLY_SUBJECTS.join(" or ");
    if !problems.is_empty() {
        return Err(format!(
            "{}: requesters would get the stream's ack instead of the agent's reply; remove that subject from the stream",
            problems.join("; ")
        ));
    }
    Ok(format!(
        "none of the {} streams on the server captures {request_reply}",
        streams.len()
    ))
}

/// (7) Every agentbus consumer (by name) on the topology's streams is durable
/// and has no inactive threshold, so it keeps its place while its agent is offline.
pub(super) async fn durable_consumers(run: &Run<'_>) -> Outcome {
    let mut total = 0;
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    let mut streams = 0;
    for spec in &run.topology.streams {
        let stream = match run.js.get_stream(&spec.name).await {
            Ok(stream) => stream,
            Err(err) if is_stream_not_found(&err) => {
                missing.push(spec.name.as_str());
                continue;
            }
            Err(err) => return Err(failed(&format!("look up stream {}", spec.name), err)),
        };
        streams += 1;
        let consumers: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|err| failed(&format!("list the consumers of {}", spec.name), err))?;
        for consumer in consumers {
            if !durable::PREFIXES
                .iter()
                .any(|prefix| consumer.name.starts_with(prefix))
            {
                continue;
            }
            total += 1;
            let config = &consumer.config;
            let why = match (&config.durable_name, config.inactive_threshold.is_zero()) {
                (None, _) => "no durable name".to_owned(),
                (Some(_), false) => format!(
                    "inactive threshold {}",
                    humantime::format_duration(config.inactive_threshold)
                ),
                (Some(_), true) => continue,
            };
            problems.push(format!("{}/{} ({why})", spec.name, consumer.name));
        }
    }
    let skipped = if missing.is_empty() {
        String::new()
    } else {
        format!("; skipped missing streams {}", missing.join(", "))
    };
    if !problems.is_empty() {
        return Err(format!(
            "{} of {total} agentbus consumers are not durable: {}; such a consumer is deleted while its agent is offline, which then misses messages{skipped}",
            problems.len(),
            problems.join(", "),
        ));
    }
    let kinds = format!("{}*", durable::PREFIXES.join("*, "));
    if total == 0 {
        return Ok(format!(
            "no agentbus consumers ({kinds}) on the {streams} streams yet, so none that could expire{skipped}"
        ));
    }
    Ok(format!(
        "all {total} agentbus consumers ({kinds}) on {streams} streams are durable without an inactive threshold{skipped}"
    ))
}

/// (8) The work-queue stream has a duplicate window and really deduplicates
/// (the same `Nats-Msg-Id` twice is stored once), and refuses new tasks when
/// full instead of dropping unprocessed ones (a configuration check only: the
/// stream is not filled to prove it).
pub(super) async fn dedup_and_discard(run: &Run<'_>) -> Outcome {
    let mut stream = match run.js.get_stream(TASKS_STREAM).await {
        Ok(stream) => stream,
        Err(err) if is_stream_not_found(&err) => {
            return Err(format!(
                "stream {TASKS_STREAM} is missing; run `agentbus setup` to create the streams"
            ));
        }
        Err(err) => return Err(failed(&format!("look up stream {TASKS_STREAM}"), err)),
    };
    let config = stream
        .info()
        .await
        .map_err(|err| failed(&format!("read stream {TASKS_STREAM}"), err))?
        .config
        .clone();
    let mut problems = Vec::new();
    let window = humantime::format_duration(config.duplicate_window).to_string();
    if config.duplicate_window.is_zero() {
        problems.push(
            "duplicate_window is 0: a resubmitted task would be stored twice; set duplicate_window = \"2m\"".to_owned(),
        );
    }
    if config.discard != DiscardPolicy::New {
        problems.push(format!(
            "discard is {:?}: a full queue silently deletes its oldest unprocessed tasks; set discard = \"new\"",
            config.discard
        ));
    }

    // Deduplication, for real: on a subject of this run's own.
    let agent = run.names.dedup_agent();
    let subject = subject::task_queue(&agent, Priority::Normal);
    run.will_publish(&subject);
    let message_id = agent.to_string();
    let body = || bytes::Bytes::from(format!("agentbus {agent}: the same task twice"));
    let first = publish(run, &subject, body(), Some(&message_id)).await?;
    let second = publish(run, &subject, body(), Some(&message_id)).await?;
    if first.stream != TASKS_STREAM {
        problems.push(format!(
            "{subject} is stored in stream {}, not in {TASKS_STREAM}",
            first.stream
        ));
    } else if first.duplicate || !second.duplicate || second.sequence != first.sequence {
        problems.push(format!(
            "the same Nats-Msg-Id sent twice was stored twice (sequences {} and {}): within the duplicate window ({window}) the second must be a duplicate",
            first.sequence, second.sequence
        ));
    }
    if !problems.is_empty() {
        return Err(format!("stream {TASKS_STREAM}: {}", problems.join("; ")));
    }
    Ok(format!(
        "stream {TASKS_STREAM} stored a repeated Nats-Msg-Id once (duplicate window {window}) and has discard policy new, so a full queue refuses new tasks instead of dropping old ones (configuration checked, not filled)"
    ))
}

/// (9) The server refuses a client that brings no credentials.
pub(super) async fn authentication(run: &Run<'_>) -> Outcome {
    let url = run.target.display_url();
    let anonymous = ServerTarget::from_url(url, TargetSource::Explicit);
    // The refusal is the expected outcome; async-nats would log it as an error.
    let attempt = anonymous
        .connect("agentbus-check-anonymous")
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
    match attempt {
        Err(err) if err.kind() == ConnectErrorKind::Refused => {
            Ok(format!("{url} refused a client without credentials"))
        }
        Ok(client) => {
            drop(client);
            Err(format!(
                "{url} accepted a client without credentials, so anyone who reaches it can read and send every agent's messages; enable authorization (`agentbus up` does)"
            ))
        }
        Err(err) => Err(format!(
            "connecting to {url} without credentials failed for another reason than a refusal: {err}"
        )),
    }
}

/// (12) Every dead letter is in the dead-letter stream: none waits parked
/// because the stream was full when it was written.
pub(super) async fn dead_letters(run: &Run<'_>) -> Outcome {
    let bus = agentbus::Bus::from_client(run.client.clone());
    let parked = bus
        .parked_dead_letters()
        .await
        .map_err(|err| failed("read the parked dead letters", err))?;
    match parked.first() {
        None => Ok(
            "no dead letter is parked: the dead-letter stream had room for every one".to_owned(),
        ),
        Some((_, first)) => Err(format!(
            "{} dead letter(s) wait in agent-dlq-parked because the dead-letter stream agent-dlq is full (the first from {}); replay or remove dead letters to make room (`agentbus dlq list` shows them and moves what fits)",
            parked.len(),
            first.subject
        )),
    }
}
