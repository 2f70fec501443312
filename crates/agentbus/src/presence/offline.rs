//! Who reports the agents of an instance that went offline without saying
//! goodbye.
//!
//! Each runtime watches the presence entries once. When an instance's
//! heartbeat expires, each watcher removes it from its view, and the watcher
//! of the smallest live instance id (ordered as text) reports each agent of
//! the dead instance with `platform.events.agent_offline`. Watchers that have
//! seen the same heartbeats agree on who that is, so each agent's death is
//! reported once in the common case. It can be reported twice when views
//! differ (a watcher that started within the last moments, or a network
//! partition), and not at all when the reporter dies at the same moment. A
//! graceful stop publishes its own events and removes its entries as
//! goodbyes, which watchers do not report again.

use super::{AgentPresence, InstanceBeat, PresenceChange};
use crate::state::EntryKey;
use std::collections::BTreeMap;

/// One watcher's view of the live instances and the agents they serve.
#[derive(Debug, Default)]
pub(super) struct OnlineView {
    /// This watcher's own instance, once it beats.
    own: Option<String>,
    /// Live instances and their last heartbeat.
    instances: BTreeMap<String, InstanceBeat>,
    agents: BTreeMap<EntryKey, AgentPresence>,
}

impl OnlineView {
    /// Sets this watcher's own instance.
    pub(super) fn own(&mut self, instance: String) {
        self.own = Some(instance);
    }

    /// This watcher's instance id (what an event names as its reporter).
    pub(super) fn reporter(&self) -> Option<String> {
        self.own.clone()
    }

    /// Forgets everything seen (before a new watch replays the current entries).
    pub(super) fn clear(&mut self) {
        self.instances.clear();
        self.agents.clear();
    }

    /// Applies a change; returns the agents this watcher must report as
    /// offline (with their instance's last heartbeat), if any.
    pub(super) fn apply(&mut self, change: PresenceChange) -> Vec<AgentPresence> {
        match change {
            PresenceChange::Seen(presence) => {
                if let Some(id) = presence.id() {
                    self.agents.insert(id, presence);
                }
            }
            PresenceChange::Left(id) | PresenceChange::Expired(id) => {
                self.agents.remove(&id);
            }
            PresenceChange::Alive(beat) => {
                self.instances.insert(beat.instance_id.clone(), beat);
            }
            PresenceChange::Stopped(instance) => {
                self.instances.remove(&instance);
            }
            // Our own heartbeat expired while we live (a stall): the next
            // one brings it back; others report the gap.
            PresenceChange::Died(instance) if self.own.as_ref() == Some(&instance) => {}
            PresenceChange::Died(instance) => {
                let last = self.instances.remove(&instance);
                let gone: Vec<EntryKey> = self
                    .agents
                    .iter()
                    .filter(|(_, agent)| agent.instance_id == instance)
                    .map(|(key, _)| key.clone())
                    .collect();
                let gone: Vec<AgentPresence> = gone
                    .iter()
                    .filter_map(|key| self.agents.remove(key))
                    .map(|mut agent| {
                        if let Some(last) = &last {
                            agent.last_seen = last.last_seen.clone();
                        }
                        agent
                    })
                    .collect();
                if self.we_report() {
                    return gone;
                }
            }
        }
        Vec::new()
    }

    /// Whether this watcher's instance is the smallest live one; its own
    /// instance counts even before the watch shows its heartbeat.
    fn we_report(&self) -> bool {
        let Some(own) = &self.own else {
            return false;
        };
        // The map is sorted: its first key is the smallest live instance.
        self.instances
            .keys()
            .next()
            .is_none_or(|smallest| own <= smallest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, instance: &str) -> AgentPresence {
        AgentPresence {
            name: name.into(),
            instance_id: instance.into(),
            task_types: Vec::new(),
            version: "0".into(),
            started_at: String::new(),
            host: "h".into(),
            in_flight: 0,
            last_seen: String::new(),
        }
    }

    fn beat(instance: &str, last_seen: &str) -> InstanceBeat {
        InstanceBeat {
            instance_id: instance.into(),
            host: "h".into(),
            last_seen: last_seen.into(),
        }
    }

    /// A view owned by `own`, having seen these instances and agents.
    fn view(own: &str, instances: &[&str], agents: &[(&str, &str)]) -> OnlineView {
        let mut view = OnlineView::default();
        view.own(own.into());
        for instance in instances {
            view.apply(PresenceChange::Alive(beat(instance, "t1")));
        }
        for (name, instance) in agents {
            view.apply(PresenceChange::Seen(agent(name, instance)));
        }
        view
    }

    fn names(agents: &[AgentPresence]) -> Vec<&str> {
        agents.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn the_smallest_live_instance_reports_each_agent_of_a_dead_one() {
        let instances = ["1", "2", "9"];
        let agents = [("a", "9"), ("b", "9"), ("c", "1")];
        let mut reports = Vec::new();
        for own in ["1", "2"] {
            let mut v = view(own, &instances, &agents);
            let gone = v.apply(PresenceChange::Died("9".into()));
            if !gone.is_empty() {
                reports.push((own, names(&gone).join(",")));
                assert!(gone.iter().all(|a| a.last_seen == "t1"), "{gone:?}");
            }
        }
        assert_eq!(reports, [("1", "a,b".to_owned())]);
    }

    #[test]
    fn when_the_smallest_dies_the_next_one_reports_it() {
        let mut v = view("2", &["1", "2"], &[("a", "1")]);
        assert_eq!(names(&v.apply(PresenceChange::Died("1".into()))), ["a"]);
    }

    #[test]
    fn goodbyes_and_unknown_instances_are_not_reported() {
        let mut v = view("1", &["1", "2"], &[("b", "2")]);
        v.apply(PresenceChange::Left(agent("b", "2").id().unwrap()));
        v.apply(PresenceChange::Stopped("2".into()));
        // The goodbye's own marker expiring later is not a second disappearance.
        assert!(v.apply(PresenceChange::Died("2".into())).is_empty());
        assert!(v.apply(PresenceChange::Died("7".into())).is_empty());
    }

    #[test]
    fn a_watcher_does_not_report_its_own_stall() {
        let mut v = view("1", &["1"], &[("a", "1")]);
        assert!(v.apply(PresenceChange::Died("1".into())).is_empty());
    }

    #[test]
    fn a_watcher_not_yet_seen_by_itself_still_counts() {
        // Our first heartbeat has not come back through the watch yet.
        let mut v = view("1", &["2"], &[("b", "2")]);
        assert_eq!(names(&v.apply(PresenceChange::Died("2".into()))), ["b"]);
    }
}
