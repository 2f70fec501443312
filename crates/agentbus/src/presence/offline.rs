//! Who reports an agent that went offline without saying goodbye.
//!
//! Each runtime watches the presence entries once. When an entry expires,
//! each watcher removes it from its view, and the watcher that keeps the
//! smallest live entry, ordered by (agent name, instance id), publishes
//! `platform.events.agent_offline`. Watchers that have seen the same entries
//! agree on who that is, so the event fires once per disappearance in the
//! common case. It can fire twice when views differ (a watcher that started
//! within the last moments, or a network partition), and not at all when the
//! reporter dies at the same moment as the agent it would report. A graceful
//! shutdown publishes its own event and removes its entry as a goodbye, which
//! watchers do not report again.

use super::{AgentPresence, PresenceChange};
use crate::state::EntryKey;
use std::collections::{BTreeMap, BTreeSet};

/// One watcher's view of the live presence entries, and which are its own.
#[derive(Debug, Default)]
pub(super) struct OnlineView {
    own: BTreeSet<EntryKey>,
    entries: BTreeMap<EntryKey, AgentPresence>,
}

impl OnlineView {
    /// Counts `key` as an entry this watcher keeps.
    pub(super) fn own(&mut self, key: EntryKey) {
        self.own.insert(key);
    }

    /// This watcher no longer keeps `key`.
    pub(super) fn disown(&mut self, key: &EntryKey) {
        self.own.remove(key);
    }

    /// The instance id of this watcher's entries (what an event names as
    /// its reporter).
    pub(super) fn reporter(&self) -> Option<String> {
        self.own.first().and_then(|key| key.last_part())
    }

    /// Forgets every entry seen (before a new watch replays the current ones).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Applies a change; returns the entry this watcher must report as
    /// offline, if any.
    pub(super) fn apply(&mut self, change: PresenceChange) -> Option<AgentPresence> {
        match change {
            PresenceChange::Seen(presence) => {
                if let Some(id) = presence.id() {
                    self.entries.insert(id, presence);
                }
                None
            }
            PresenceChange::Left(id) => {
                self.entries.remove(&id);
                None
            }
            // Our own entry expired while we live (a stall): the next
            // heartbeat brings it back; others report the gap.
            PresenceChange::Expired(id) if self.own.contains(&id) => None,
            PresenceChange::Expired(id) => {
                let gone = self.entries.remove(&id)?;
                let ours = self.own.first()?;
                // The map is sorted: its first key is the smallest live entry.
                // Our own entries count even before the watch shows them.
                let we_report = self
                    .entries
                    .keys()
                    .next()
                    .is_none_or(|smallest| ours <= smallest);
                we_report.then_some(gone)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(agent: &str, instance: &str) -> AgentPresence {
        AgentPresence {
            name: agent.into(),
            instance_id: instance.into(),
            task_types: Vec::new(),
            version: "0".into(),
            started_at: String::new(),
            host: "h".into(),
            in_flight: 0,
            last_seen: String::new(),
        }
    }

    fn id(agent: &str, instance: &str) -> EntryKey {
        EntryKey::new(vec![
            crate::Name::parse("agent name", agent).unwrap(),
            crate::Name::parse("instance id", instance).unwrap(),
        ])
    }

    fn view(own: (&str, &str), live: &[(&str, &str)]) -> OnlineView {
        let mut view = OnlineView::default();
        view.own(id(own.0, own.1));
        for (agent, instance) in live {
            view.apply(PresenceChange::Seen(entry(agent, instance)));
        }
        view
    }

    #[test]
    fn only_the_smallest_live_entry_reports_an_expiry() {
        let live = [("a", "2"), ("b", "1"), ("c", "9")];
        let mut reports = 0;
        for own in [("a", "2"), ("b", "1")] {
            let mut v = view(own, &live);
            if let Some(gone) = v.apply(PresenceChange::Expired(id("c", "9"))) {
                assert_eq!(gone.name, "c");
                assert_eq!(own, ("a", "2"), "only a.2 is the smallest");
                reports += 1;
            }
        }
        assert_eq!(reports, 1);
    }

    #[test]
    fn when_the_smallest_expires_the_next_one_reports_it() {
        let live = [("a", "2"), ("b", "1")];
        let mut v = view(("b", "1"), &live);
        let gone = v.apply(PresenceChange::Expired(id("a", "2"))).unwrap();
        assert_eq!((gone.name.as_str(), gone.instance_id.as_str()), ("a", "2"));
    }

    #[test]
    fn goodbyes_and_unknown_entries_are_not_reported() {
        let live = [("a", "1"), ("b", "1")];
        let mut v = view(("a", "1"), &live);
        assert!(v.apply(PresenceChange::Left(id("b", "1"))).is_none());
        // The goodbye's own marker expiring later is not a second disappearance.
        assert!(v.apply(PresenceChange::Expired(id("b", "1"))).is_none());
        assert!(v.apply(PresenceChange::Expired(id("z", "1"))).is_none());
    }

    #[test]
    fn a_runtime_keeping_many_entries_reports_by_its_smallest() {
        // One runtime (instance 1) keeps b.1 and z.1; another keeps a.2.
        let live = [("a", "2"), ("b", "1"), ("c", "9"), ("z", "1")];
        let mut ours = view(("b", "1"), &live);
        ours.own(id("z", "1"));
        let theirs = &mut view(("a", "2"), &live);
        assert!(ours.apply(PresenceChange::Expired(id("c", "9"))).is_none());
        assert!(
            theirs
                .apply(PresenceChange::Expired(id("c", "9")))
                .is_some()
        );
        // Once a.2 is gone, b.1 is the smallest: runtime 1 reports.
        let gone = ours.apply(PresenceChange::Expired(id("a", "2"))).unwrap();
        assert_eq!(gone.name, "a");
        assert_eq!(ours.reporter().as_deref(), Some("1"));
        // Its own entries expiring (a stall) are not reported.
        assert!(ours.apply(PresenceChange::Expired(id("z", "1"))).is_none());
    }

    #[test]
    fn a_watcher_does_not_report_itself() {
        let mut v = view(("a", "1"), &[("a", "1")]);
        assert!(v.apply(PresenceChange::Expired(id("a", "1"))).is_none());
    }

    #[test]
    fn a_watcher_not_yet_seen_by_itself_still_counts() {
        // Our first heartbeat has not come back through the watch yet.
        let mut v = view(("a", "1"), &[("b", "1")]);
        assert!(v.apply(PresenceChange::Expired(id("b", "1"))).is_some());
    }
}
