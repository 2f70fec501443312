//! The checks of agent identities: which agents are served without an
//! identity of their own, and whether nats-server enforces what an agent
//! identity may not do (probed with an identity made for the run).

use super::{Outcome, Run, failed};
use crate::identity::{self, Identities};
use crate::monitor::Monitor;
use agentbus::connect::{OPERATOR_USER, TargetSource};
use agentbus::permissions::Grant;
use agentbus::subject::{self, MESSAGES_STREAM};
use agentbus::{Bus, Name};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a refused probe waits for the answer that must not come.
const REFUSAL_WAIT: Duration = Duration::from_millis(500);

/// Every connection serving an agent's tasks (`agent.<name>.task`) must use
/// an nkey identity: one serving with a shared password user may read and
/// do everything that user may.
pub(super) async fn operator_agents(run: &Run<'_>) -> Outcome {
    let Some(url) = run.target.monitor_url() else {
        return Ok(
            "not looked at: no monitoring URL (AGENTBUS_MONITOR_URL, or the connection.env of `agentbus up`) to list the connections"
                .to_owned(),
        );
    };
    let connections = Monitor::new(url)
        .connections()
        .await
        .map_err(|err| err.to_string())?;
    let mut served = 0;
    let mut shared: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for connection in &connections {
        let agents: BTreeSet<String> = connection
            .subscriptions
            .iter()
            .filter_map(|s| served_agent(&s.subject, s.qgroup.as_deref()))
            .collect();
        served += agents.len();
        let user = connection.authorized_user.clone().unwrap_or_default();
        if !agents.is_empty() && !is_nkey(&user) {
            shared.entry(user).or_default().extend(agents);
        }
    }
    if shared.is_empty() {
        return Ok(format!(
            "every agent served here ({served}) connects with an identity of its own"
        ));
    }
    let list: Vec<String> = shared
        .iter()
        .map(|(user, agents)| {
            let agents: Vec<&str> = agents.iter().map(String::as_str).collect();
            format!("{} (user {user})", agents.join(", "))
        })
        .collect();
    Err(format!(
        "agents served with a shared password user, which may read every agent's messages: {}; give each an identity with `agentbus creds add <agent>` and run it with the env file",
        list.join("; ")
    ))
}

/// The agent whose tasks a subscription to `subject` in queue group
/// `qgroup` serves: agents serve in a queue group of their name, so one
/// outside it (`agentbus tail 'agent.bob.>'`) only listens.
fn served_agent(subject: &str, qgroup: Option<&str>) -> Option<String> {
    match subject.split('.').collect::<Vec<_>>().as_slice() {
        ["agent", name, "task"] | ["agent", name, "task", "*"] | ["agent", name, ">"]
            if *name != "*" && qgroup == Some(*name) =>
        {
            Some((*name).to_owned())
        }
        _ => None,
    }
}

/// Whether `user` is an nkey's public key (a user key: `U` and 55 more).
fn is_nkey(user: &str) -> bool {
    user.len() == 56 && user.starts_with('U') && user.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Makes an identity for the run's probe agent, checks that it may send
/// to another agent's inbox under its own name and may not read that inbox
/// (by subscribing or by sequence), send under another name, or create a
/// stream; then revokes it. Only where the server is `agentbus up`'s, found
/// through its data directory: identities are made there.
pub(super) async fn permissions(run: &Run<'_>) -> Outcome {
    let TargetSource::ConnectionFile(file) = run.target.source() else {
        return Ok(
            "not probed: identities are made in the data directory of `agentbus up`, and this server was not found through one (`--data-dir`)"
                .to_owned(),
        );
    };
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    let probe = Name::parse("agent name", &format!("{}-probe", run.names.name()))
        .map_err(|err| err.to_string())?;
    let mut ids = Identities::load(dir).map_err(|err| err.to_string())?;
    let enrolled = identity::enroll(
        &mut ids,
        Grant::new(probe.clone()),
        run.target,
        OPERATOR_USER,
    )
    .await
    .map_err(|err| failed("make the probe identity", err))?;
    let outcome = match enrolled.target {
        Some(target) => {
            match Bus::connect(&target.with_refusals_expected(), "agentbus-check-probe").await {
                Ok(bus) => probe_as(run, &bus, &probe).await,
                Err(err) => Err(failed("connect with the probe identity", err)),
            }
        }
        None => Err("the server of the data directory does not run".to_owned()),
    };
    identity::withdraw(&mut ids, probe.as_str(), Some(run.target), OPERATOR_USER)
        .await
        .map_err(|err| failed("revoke the probe identity", err))?;
    outcome
}

/// What `probe` may and may not do, through `bus` (its identity).
async fn probe_as(run: &Run<'_>, bus: &Bus, probe: &Name) -> Outcome {
    let victim = run.names.name();
    let inbox = subject::agent_inbox(victim);
    let own = subject::agent_inbox_from(victim, probe);
    run.will_publish(own.as_str());
    // Allowed: a message to another agent, under its own name.
    let stored = bus
        .send(victim.as_str(), &serde_json::json!({"probe": 1}))
        .await
        .map_err(|err| {
            format!("the probe identity could not send to another agent's inbox: {err}")
        })?;
    let client = bus.client();

    // Not allowed: reading that inbox by sequence, or by subscribing.
    let get = client.request(
        format!("$JS.API.STREAM.MSG.GET.{MESSAGES_STREAM}"),
        serde_json::json!({"seq": stored.sequence})
            .to_string()
            .into(),
    );
    if let Ok(Ok(answer)) = tokio::time::timeout(REFUSAL_WAIT, get).await
        && String::from_utf8_lossy(&answer.payload).contains("\"message\"")
    {
        return Err(
            "an agent identity read another agent's inbox by sequence ($JS.API.STREAM.MSG.GET): the server's permissions are not the ones `agentbus creds` writes".to_owned(),
        );
    }
    let mut listening = client
        .subscribe(format!("{inbox}.>"))
        .await
        .map_err(|err| failed("subscribe with the probe identity", err))?;
    client.flush().await.map_err(|err| failed("flush", err))?;
    // The victim's inbox under the victim's own name: the operator stores
    // one message there for the probe to overhear, and the probe may not
    // store one there in that name.
    let others = subject::agent_inbox_from(victim, victim);
    run.will_publish(others.as_str());
    run.client
        .publish(others.to_string(), "{}".into())
        .await
        .map_err(|err| failed("publish", err))?;
    run.client
        .flush()
        .await
        .map_err(|err| failed("flush", err))?;
    if tokio::time::timeout(REFUSAL_WAIT, listening.next())
        .await
        .is_ok_and(|message| message.is_some())
    {
        return Err(
            "an agent identity received another agent's inbox messages by subscribing: the server's permissions are not the ones `agentbus creds` writes".to_owned(),
        );
    }

    // Not allowed: sending under another agent's name.
    let sent = bus.jetstream().publish(others.to_string(), "{}".into());
    if let Ok(Ok(ack)) = tokio::time::timeout(REFUSAL_WAIT, sent).await
        && tokio::time::timeout(REFUSAL_WAIT, ack)
            .await
            .is_ok_and(|a| a.is_ok())
    {
        return Err(
            "an agent identity stored a message under another agent's name: the server's permissions are not the ones `agentbus creds` writes".to_owned(),
        );
    }

    // Not allowed: creating a stream (one no agentbus subject reaches).
    let name = format!("{}-probe", run.names.name());
    let config = serde_json::json!({"name": name, "subjects": [format!("agentbus.check.{name}")], "storage": "memory"});
    let create = client.request(
        format!("$JS.API.STREAM.CREATE.{name}"),
        config.to_string().into(),
    );
    if let Ok(Ok(answer)) = tokio::time::timeout(REFUSAL_WAIT, create).await
        && !String::from_utf8_lossy(&answer.payload).contains("\"error\"")
    {
        let _ = run.js.delete_stream(&name).await;
        return Err(
            "an agent identity created a stream: the server's permissions are not the ones `agentbus creds` writes".to_owned(),
        );
    }
    Ok(
        "a probe identity sent under its own name and was refused another agent's inbox (by sequence and by subscription), another agent's name and creating a stream"
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_found_by_the_task_subjects_they_serve() {
        let bob = Some("bob");
        assert_eq!(served_agent("agent.bob.task", bob).as_deref(), bob);
        assert_eq!(served_agent("agent.bob.task.*", bob).as_deref(), bob);
        assert_eq!(served_agent("agent.bob.>", bob).as_deref(), bob);
        assert_eq!(served_agent("agent.bob.>", None), None);
        assert_eq!(served_agent("agent.bob.task", Some("tail")), None);
        assert_eq!(served_agent("agent.*.task", Some("*")), None);
        assert_eq!(served_agent("agent.bob.inbox", bob), None);
        assert_eq!(served_agent("tasks.bob", bob), None);
    }

    #[test]
    fn nkey_users_are_told_from_password_users() {
        let key = format!("U{}", "A".repeat(55));
        assert!(is_nkey(&key));
        assert!(!is_nkey("agentbus"));
        assert!(!is_nkey(&format!("N{}", "A".repeat(55))));
    }
}
