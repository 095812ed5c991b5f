//! Where a change stream is, as the Kafka transaction that wrote a record stores it
//! beside the record's offset: in the initial snapshot, or after the `seq`-th change of
//! the transaction that commits at `commit`. Transactions come in commit order, so a
//! stored position names everything before it.

use serde::{Deserialize, Serialize};

/// The position after a record of the change stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Position {
    /// Within the initial snapshot: a restart reads the tables again.
    Snapshot,
    /// In the stream: through change `seq` (from 1) of the transaction whose commit
    /// record is at `commit`; `commit: None` is the slot's own start (after the snapshot's
    /// last row).
    Stream {
        /// The LSN of the transaction's commit record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<u64>,
        /// Changes of that transaction already written.
        seq: u64,
    },
}

impl Position {
    /// The position's stored text.
    pub fn to_text(self) -> String {
        // A plain enum of numbers always serializes.
        serde_json::to_string(&self).unwrap_or_default()
    }

    /// Reads a stored position.
    pub fn parse(text: &str) -> Result<Position, String> {
        serde_json::from_str(text).map_err(|e| format!("not a change stream position: {text}: {e}"))
    }
}

/// Which changes of a restarted stream were written before: the first `seq` changes of
/// the transaction committing at `commit`, when the server sends it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Skip {
    commit: Option<u64>,
    left: u64,
}

impl Skip {
    /// What to skip when streaming again from `position`.
    pub fn after(position: Position) -> Skip {
        match position {
            Position::Stream {
                commit: Some(commit),
                seq,
            } => Skip {
                commit: Some(commit),
                left: seq,
            },
            _ => Skip::default(),
        }
    }

    /// The LSN to start streaming from: the transaction to resume (the server sends every
    /// transaction that commits at or after it), or the slot's own position.
    pub fn start(&self) -> Option<u64> {
        self.commit
    }

    /// Whether the next change of the transaction committing at `commit` was written
    /// before (and so is skipped). A transaction that commits later ends the skipping.
    pub fn skips(&mut self, commit: u64) -> bool {
        match self.commit {
            Some(c) if c == commit && self.left > 0 => {
                self.left -= 1;
                true
            }
            Some(c) if c < commit => {
                *self = Skip::default();
                false
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_as_text() {
        for p in [
            Position::Snapshot,
            Position::Stream {
                commit: None,
                seq: 0,
            },
            Position::Stream {
                commit: Some(0x16B_3748),
                seq: 3,
            },
        ] {
            assert_eq!(Position::parse(&p.to_text()), Ok(p));
        }
        assert!(Position::parse("{\"phase\":\"elsewhere\"}").is_err());
    }

    #[test]
    fn a_resumed_transaction_skips_exactly_the_changes_written_before() {
        let mut skip = Skip::after(Position::Stream {
            commit: Some(500),
            seq: 2,
        });
        assert_eq!(skip.start(), Some(500));
        assert!(skip.skips(500));
        assert!(skip.skips(500));
        assert!(!skip.skips(500), "the third change was not written");
        assert!(!skip.skips(600));
    }

    #[test]
    fn a_transaction_the_server_does_not_send_again_ends_the_skipping() {
        // The whole transaction was written and confirmed: the server starts after it.
        let mut skip = Skip::after(Position::Stream {
            commit: Some(500),
            seq: 4,
        });
        assert!(!skip.skips(700));
        assert!(
            !skip.skips(500),
            "nothing is skipped after a later transaction"
        );
        let mut fresh = Skip::after(Position::Snapshot);
        assert_eq!(fresh.start(), None);
        assert!(!fresh.skips(1));
    }
}
