//! Short-lived entries: opaque values under keys made of names, each kept for
//! a TTL unless written again. Presence entries live here; what they mean is
//! [`crate::presence`]'s business.
//!
//! A watcher tells three changes apart, on both backends: an entry written,
//! an entry removed by its owner, and an entry that expired because nobody
//! wrote it again in time.

use crate::name::Name;
use std::fmt;

/// An entry's key: one or more validated names (for presence: the agent and
/// the instance). Names hold neither `.` nor `:`, so every backend can join
/// and split them unambiguously.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct EntryKey(Vec<Name>);

impl EntryKey {
    pub(crate) fn new(parts: Vec<Name>) -> Self {
        Self(parts)
    }

    /// The names the key is made of.
    pub(crate) fn parts(&self) -> &[Name] {
        &self.0
    }

    /// The key with its parts joined by `separator`.
    pub(super) fn join(&self, separator: &str) -> String {
        let parts: Vec<&str> = self.0.iter().map(Name::as_str).collect();
        parts.join(separator)
    }

    /// Reads a key joined by `separator`; `None` when a part is not a name.
    pub(super) fn split(text: &str, separator: char) -> Option<Self> {
        text.split(separator)
            .map(|part| Name::parse("entry key part", part).ok())
            .collect::<Option<Vec<_>>>()
            .map(Self)
    }
}

impl fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.join("."))
    }
}

/// A change to the entries, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryChange {
    /// An entry was written (or is there when watching starts).
    Put(EntryKey, Vec<u8>),
    /// Its owner removed the entry.
    Removed(EntryKey),
    /// The entry expired: nobody wrote it again within its TTL.
    Expired(EntryKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_and_split_back() {
        let key = EntryKey::new(vec![
            Name::parse("agent name", "llm_agent").unwrap(),
            Name::parse("instance id", "0a1b").unwrap(),
        ]);
        assert_eq!(key.join("."), "llm_agent.0a1b");
        assert_eq!(EntryKey::split("llm_agent.0a1b", '.'), Some(key.clone()));
        assert_eq!(EntryKey::split("llm_agent:0a1b", ':'), Some(key));
        assert_eq!(EntryKey::split("a.B*", '.'), None);
    }
}
