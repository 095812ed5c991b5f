//! The commit core: a plain struct, with no client inside, that is told what happened
//! (a record read, an output sent, acknowledged or refused, partitions assigned, the
//! commit interval ended, a commit done) and answers what to do next (process or skip a
//! record, begin a transaction, commit these offsets, dead-letter this record on replay,
//! pause these partitions while their state is restored, rewind).
//!
//! Every source and sink runs through it, so each gets exactly-once or at-least-once
//! from this one place:
//!
//! - `exactlyOnce`: everything between two commits is one transaction. The ledger opens
//!   it with the interval's first record and hands the interval's offsets to the commit
//!   of that transaction; the sink's transaction makes outputs and offsets atomic.
//! - `atLeastOnce`: the loop never waits for acknowledgements. Each output carries the
//!   number of the commit interval ("epoch") it was sent in; at the end of an interval
//!   the ledger seals the epoch with the offsets read in it, and releases a sealed
//!   epoch's offsets only once no output of it, or of an earlier epoch, awaits
//!   acknowledgement. An offset is never committed past an unacknowledged output.
//!
//! A refused output makes the next answer a rewind: everything not committed is
//! discarded, and the records whose outputs the sink refused for what they are
//! ("poison") are dead-lettered when they are read again, instead of being sent again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::engine::Failure;

/// Where an output came from: a record of a source partition, or (partition -1) none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The source topic (or stream) the record was read from.
    pub topic: Arc<str>,
    /// Its partition.
    pub partition: i32,
    /// Its offset (or position) in the partition.
    pub offset: i64,
}

impl Origin {
    /// The origin of internal records (dead letters of held-back outputs, changelog):
    /// never poisoned.
    pub fn internal() -> Origin {
        Origin {
            topic: Arc::from(""),
            partition: -1,
            offset: -1,
        }
    }

    /// Whether this is a record read from a source (not an internal one).
    pub fn is_record(&self) -> bool {
        self.partition >= 0
    }
}

/// Offsets to commit: the next offset per source partition.
pub type Offsets = Vec<(Arc<str>, i32, i64)>;

/// Sets `next` as the offset to commit for a partition.
pub fn advance(offsets: &mut Offsets, topic: Arc<str>, partition: i32, next: i64) {
    if let Some(e) = offsets
        .iter_mut()
        .find(|(t, p, _)| *p == partition && (Arc::ptr_eq(t, &topic) || **t == *topic))
    {
        e.2 = next;
    } else {
        offsets.push((topic, partition, next));
    }
}

/// An output of a group (`emit: onCommit`): its topic and key.
pub type OutputId = (String, Option<Vec<u8>>);

/// An output the sink refused after its retries.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The commit interval it was sent in.
    pub epoch: u64,
    /// The record it was sent for ([`Origin::internal`] for other outputs).
    pub origin: Origin,
    /// Where it was going, and why it was refused.
    pub error: String,
    /// For an `emit: onCommit` output: which one.
    pub output: Option<OutputId>,
    /// It was the dead letter of `origin`, which failed for this.
    pub dead_letter: Option<Failure>,
    /// The sink refused the output for what it is, so sending it again would fail again:
    /// it is dead-lettered on replay. Otherwise the failure passes (a timeout, a purge by
    /// an abort, a leader change) and the output is sent again.
    pub poison: bool,
}

/// The delivery promise the ledger keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Outputs and offsets commit together in one transaction of the sink.
    ExactlyOnce,
    /// Offsets commit once every output below them is acknowledged.
    AtLeastOnce,
}

/// What to do with a record just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Its partition is no longer this replica's: its new owner reads it, and committing
    /// it here too would duplicate it.
    Skip,
    /// Process it; first begin a transaction when asked.
    Process {
        /// `exactlyOnce`: the interval's first record opens its transaction.
        begin_transaction: bool,
    },
}

/// What a commit is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Nothing was processed since the last commit.
    Nothing,
    /// `exactlyOnce`: send these offsets to the open transaction (when any), then commit
    /// it; then tell [`Ledger::committed`].
    Transaction(Offsets),
    /// `atLeastOnce`: every output below these offsets is acknowledged: commit them
    /// (none may be empty).
    Offsets(Offsets),
}

/// Why nothing can be committed: the loop must rewind to the last commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rewind {
    /// An output was refused (the first refusal, described).
    #[error("{0}")]
    Refused(String),
    /// A commit of everything found outputs still waiting for acknowledgement (the sink
    /// was flushed before and should have answered for all of them).
    #[error("{0} outputs still await acknowledgement after a flush")]
    Unacknowledged(i64),
}

/// What [`Ledger::discard`] found among the refused outputs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Outputs refused for a passing reason (sent again after the rewind), and the first
    /// reason.
    pub passing: Option<(usize, String)>,
    /// Records to be dead-lettered when read again.
    pub poisoned: usize,
}

/// How the state partitions change after an assignment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StateChange {
    /// Drop all state first (it no longer matches the committed offsets).
    pub clear: bool,
    /// Partitions lost: drop their state.
    pub dropped: Vec<i32>,
    /// Partitions lost while being restored: drop what the restore read of them.
    pub forgotten: Vec<i32>,
    /// Partitions gained: pause them and restore their state before processing them.
    pub gained: Vec<i32>,
}

/// Which state partitions are whole and which are being restored.
#[derive(Debug, Default)]
struct StatePartitions {
    owned: BTreeSet<i32>,
    restoring: BTreeSet<i32>,
    /// The state no longer matches the committed offsets: rebuild on the next assignment.
    invalid: bool,
}

/// The commit core. See the module documentation.
#[derive(Debug)]
pub struct Ledger {
    delivery: Delivery,
    commit_interval: Duration,
    /// The current commit interval's number: outputs sent in it carry it.
    epoch: u64,
    /// Next offset to commit per partition read in the current epoch.
    open: Offsets,
    /// Outputs of the current epoch sent and not yet acknowledged.
    open_unacked: i64,
    /// Outputs not yet acknowledged, per sealed epoch.
    unacked: BTreeMap<u64, i64>,
    /// Epochs below this were discarded (their records are replayed): their late reports
    /// change nothing.
    forgotten_below: u64,
    /// `atLeastOnce`: sealed epochs waiting for their outputs' acknowledgements.
    sealed: VecDeque<(u64, Offsets)>,
    in_transaction: bool,
    /// Records processed since the last commit.
    batch: u64,
    interval_start: Instant,
    /// The partitions this replica owns now.
    assigned: Vec<(Arc<str>, i32)>,
    /// Refused outputs not yet acted on.
    failed: Vec<Failed>,
    /// Records whose outputs could not be delivered: dead-letter them on replay.
    poisoned: HashMap<Origin, String>,
    /// `emit: onCommit` outputs refused, by topic and key, with why.
    refused_outputs: HashMap<OutputId, String>,
    /// Records whose dead letter was refused for what it was, with why, and why the record
    /// failed: on replay the record is not processed again, and its dead letter goes
    /// without key, value and headers.
    refused_dead_letters: HashMap<Origin, (String, Failure)>,
    state: StatePartitions,
}

impl Ledger {
    /// A ledger that keeps `delivery`, committing every `commit_interval`.
    pub fn new(delivery: Delivery, commit_interval: Duration, now: Instant) -> Ledger {
        Ledger {
            delivery,
            commit_interval,
            epoch: 0,
            open: Offsets::new(),
            open_unacked: 0,
            unacked: BTreeMap::new(),
            forgotten_below: 0,
            sealed: VecDeque::new(),
            in_transaction: false,
            batch: 0,
            interval_start: now,
            assigned: Vec::new(),
            failed: Vec::new(),
            poisoned: HashMap::new(),
            refused_outputs: HashMap::new(),
            refused_dead_letters: HashMap::new(),
            state: StatePartitions::default(),
        }
    }

    /// The current commit interval's number, for the outputs sent now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records processed since the last commit.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// A record was read at `partition`/`offset` of `topic`.
    pub fn admit(&mut self, topic: &Arc<str>, partition: i32) -> Admit {
        // Names are shared: the same name is almost always the same handle.
        if !self
            .assigned
            .iter()
            .any(|(t, p)| *p == partition && (Arc::ptr_eq(t, topic) || **t == **topic))
        {
            return Admit::Skip;
        }
        let begin_transaction = self.delivery == Delivery::ExactlyOnce && !self.in_transaction;
        self.in_transaction |= begin_transaction;
        Admit::Process { begin_transaction }
    }

    /// Why a record read again is not to be processed: its output, or its dead letter,
    /// was refused before the last rewind.
    pub fn replay_failure(&mut self, origin: &Origin) -> Option<Failure> {
        // Per record: both maps are almost always empty, and then nothing is hashed.
        if !self.refused_dead_letters.is_empty()
            && let Some((_, failure)) = self.refused_dead_letters.get(origin)
        {
            return Some(failure.clone());
        }
        if self.poisoned.is_empty() {
            return None;
        }
        self.poisoned
            .remove(origin)
            .map(|error| Failure::new("produce", error))
    }

    /// Why an `emit: onCommit` output of `topic` and `key` is to be dead-lettered rather
    /// than sent: the sink refused it before the last rewind.
    pub fn refused_output(&mut self, topic: &str, key: &Option<Vec<u8>>) -> Option<String> {
        if self.refused_outputs.is_empty() {
            return None;
        }
        self.refused_outputs
            .remove(&(topic.to_string(), key.clone()))
    }

    /// Why the dead letter of `origin` is to go without the record: the dead-letter topic
    /// refused it whole before (kept: the record is never replayed once committed).
    pub fn stripped_dead_letter(&self, origin: &Origin) -> Option<String> {
        if self.refused_dead_letters.is_empty() {
            return None;
        }
        self.refused_dead_letters
            .get(origin)
            .map(|(why, _)| why.clone())
    }

    /// The dead letter of `origin` was refused for what it was before it was sent: it
    /// goes stripped, now and on every replay.
    pub fn dead_letter_refused(&mut self, origin: Origin, why: String, failure: Failure) {
        self.refused_dead_letters.insert(origin, (why, failure));
    }

    /// An output was handed to the sink in the current epoch.
    pub fn sent(&mut self) {
        self.open_unacked += 1;
    }

    /// `n` outputs of `epoch` were acknowledged.
    pub fn acked(&mut self, epoch: u64, n: u64) {
        if epoch < self.forgotten_below {
            return;
        }
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        if epoch == self.epoch {
            self.open_unacked -= n;
        } else {
            add_to(&mut self.unacked, epoch, -n);
        }
    }

    /// An output was refused for good (it counts as answered).
    pub fn failed(&mut self, failed: Failed) {
        if failed.epoch < self.forgotten_below {
            return;
        }
        self.acked(failed.epoch, 1);
        self.failed.push(failed);
    }

    /// Whether anything was processed, or awaits its commit, since the last commit.
    pub fn has_uncommitted(&self) -> bool {
        self.batch > 0 || self.in_transaction || !self.sealed.is_empty()
    }

    /// Nothing was left to commit when a commit was due: the next interval starts now.
    pub fn nothing_to_commit(&mut self, now: Instant) {
        self.interval_start = now;
    }

    /// The first refusal since the last rewind, as the reason to rewind.
    fn refusal(&self) -> Rewind {
        let Some(f) = self.failed.first() else {
            return Rewind::Refused("an output was refused".into());
        };
        let o = &f.origin;
        let what = match (&f.dead_letter, o.is_record()) {
            (Some(_), true) => format!(
                "the dead letter of {}/{}@{}",
                o.topic, o.partition, o.offset
            ),
            (None, true) => format!("an output of {}/{}@{}", o.topic, o.partition, o.offset),
            _ => "an output".to_string(),
        };
        let more = match self.failed.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        Rewind::Refused(format!("{what} was not delivered: {}{more}", f.error))
    }

    /// Whether an output was refused since the last rewind.
    pub fn any_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// A record was handled (processed, filtered or dead-lettered): its partition's
    /// offset moves past it.
    pub fn processed(&mut self, origin: Origin) {
        advance(
            &mut self.open,
            origin.topic,
            origin.partition,
            origin.offset + 1,
        );
        self.batch += 1;
    }

    /// Whether the commit interval has ended with records to commit.
    pub fn due(&self, now: Instant) -> bool {
        self.batch > 0 && now.duration_since(self.interval_start) >= self.commit_interval
    }

    /// The commit interval ended (the outputs held back for it are sent).
    /// `exactlyOnce` commits its transaction; `atLeastOnce` seals the epoch and commits,
    /// without waiting, whatever is acknowledged by now.
    pub fn end_interval(&mut self, now: Instant) -> Result<Commit, Rewind> {
        match self.delivery {
            Delivery::ExactlyOnce => Ok(self.commit_all(now)),
            Delivery::AtLeastOnce => {
                if self.any_failed() {
                    return Err(self.refusal());
                }
                self.seal();
                self.interval_start = now;
                self.commit_acked()
            }
        }
    }

    /// `atLeastOnce`: the offsets of sealed epochs whose outputs are all acknowledged
    /// (`Commit::Nothing` when none).
    pub fn commit_acked(&mut self) -> Result<Commit, Rewind> {
        if self.any_failed() {
            return Err(self.refusal());
        }
        let mut merged = Offsets::new();
        while let Some((epoch, _)) = self.sealed.front() {
            if !self.acked_through(*epoch) {
                break;
            }
            if let Some((_, offsets)) = self.sealed.pop_front() {
                for (t, p, o) in offsets {
                    advance(&mut merged, t, p, o);
                }
            }
        }
        Ok(if merged.is_empty() {
            Commit::Nothing
        } else {
            Commit::Offsets(merged)
        })
    }

    /// Commits everything processed so far: at a rebalance, at shutdown, and at the end
    /// of every `exactlyOnce` interval. `atLeastOnce` expects the sink flushed (every
    /// output answered) first. Tell [`Ledger::committed`] once it is done.
    pub fn commit_everything(&mut self, now: Instant) -> Result<Commit, Rewind> {
        match self.delivery {
            Delivery::ExactlyOnce => Ok(self.commit_all(now)),
            Delivery::AtLeastOnce => {
                if self.batch == 0 && self.sealed.is_empty() {
                    self.interval_start = now;
                    return Ok(Commit::Nothing);
                }
                if self.any_failed() {
                    return Err(self.refusal());
                }
                self.seal();
                let waiting = self.open_unacked + self.unacked.values().sum::<i64>();
                match self.commit_acked()? {
                    _ if !self.sealed.is_empty() => Err(Rewind::Unacknowledged(waiting)),
                    // Nothing new was read, but the interval ended: say so.
                    Commit::Nothing => Ok(Commit::Offsets(Offsets::new())),
                    commit => Ok(commit),
                }
            }
        }
    }

    fn commit_all(&mut self, now: Instant) -> Commit {
        if self.batch == 0 && !self.in_transaction {
            self.interval_start = now;
            return Commit::Nothing;
        }
        Commit::Transaction(self.open.clone())
    }

    /// The commit [`Ledger::commit_everything`] or a transaction asked for was done.
    pub fn committed(&mut self, now: Instant) {
        if self.delivery == Delivery::ExactlyOnce {
            self.in_transaction = false;
            self.open.clear();
            self.batch = 0;
            self.seal_counts();
        }
        self.interval_start = now;
    }

    /// Closes the current epoch with the offsets read in it, and opens the next.
    fn seal(&mut self) {
        let offsets = std::mem::take(&mut self.open);
        if !offsets.is_empty() {
            self.sealed.push_back((self.epoch, offsets));
        }
        self.batch = 0;
        self.seal_counts();
    }

    fn seal_counts(&mut self) {
        let open = std::mem::take(&mut self.open_unacked);
        if open != 0 {
            add_to(&mut self.unacked, self.epoch, open);
        }
        self.epoch += 1;
    }

    /// Whether every output of `epoch` and of earlier epochs was acknowledged.
    fn acked_through(&self, epoch: u64) -> bool {
        let open_waits = epoch >= self.epoch && self.open_unacked > 0;
        !open_waits && self.unacked.iter().all(|(e, n)| *e > epoch || *n <= 0)
    }

    /// Forgets everything not committed (the caller aborted the transaction, if one was
    /// open, and served the reports already queued): the refused outputs are sorted into
    /// what to dead-letter on replay, the state is to be rebuilt, and reports of the
    /// discarded epochs count no more.
    pub fn discard(&mut self, now: Instant) -> Discarded {
        let mut found = Discarded::default();
        for failed in std::mem::take(&mut self.failed) {
            if !failed.poison {
                let (n, _) = found.passing.get_or_insert((0, failed.error));
                *n += 1;
                continue;
            }
            match (failed.output, failed.dead_letter) {
                (Some(output), _) => {
                    self.refused_outputs.insert(output, failed.error);
                }
                (None, Some(failure)) if failed.origin.is_record() => {
                    found.poisoned += 1;
                    self.refused_dead_letters
                        .insert(failed.origin, (failed.error, failure));
                }
                (None, None) if failed.origin.is_record() => {
                    found.poisoned += 1;
                    self.poisoned.insert(failed.origin, failed.error);
                }
                _ => {}
            }
        }
        self.in_transaction = false;
        self.open.clear();
        self.sealed.clear();
        self.unacked.clear();
        self.open_unacked = 0;
        self.forgotten_below = self.epoch + 1;
        self.epoch += 1;
        self.batch = 0;
        self.state.invalid = true;
        self.interval_start = now;
        found
    }

    /// The partitions this replica owns now. What is remembered for replays of
    /// partitions held no more goes: they are their new owner's.
    pub fn assigned(&mut self, partitions: Vec<(Arc<str>, i32)>) {
        self.assigned = partitions;
        let assigned = &self.assigned;
        let held = |o: &Origin| {
            assigned
                .iter()
                .any(|(t, p)| *p == o.partition && **t == *o.topic)
        };
        self.refused_dead_letters.retain(|o, _| held(o));
        self.poisoned.retain(|o, _| held(o));
    }

    /// Follows an assignment with the state: `partitions` are the assigned partitions of
    /// the topic the state follows. Keeps the state of the partitions still held, drops
    /// the lost ones, and names the gained ones to pause and restore. A restore under way
    /// goes on for the partitions still held.
    pub fn follow_state(&mut self, partitions: &BTreeSet<i32>) -> StateChange {
        let mut change = StateChange::default();
        let s = &mut self.state;
        if s.invalid {
            change.clear = true;
            s.owned.clear();
            s.restoring.clear();
            s.invalid = false;
        }
        change.dropped = s.owned.difference(partitions).copied().collect();
        change.forgotten = s.restoring.difference(partitions).copied().collect();
        s.owned.retain(|p| partitions.contains(p));
        s.restoring.retain(|p| partitions.contains(p));
        change.gained = partitions
            .iter()
            .filter(|p| !s.owned.contains(p) && !s.restoring.contains(p))
            .copied()
            .collect();
        s.restoring.extend(change.gained.iter().copied());
        change
    }

    /// The state of `partitions` is whole: process them. Whether no restore is left.
    pub fn restored(&mut self, partitions: &[i32]) -> bool {
        for p in partitions {
            if self.state.restoring.remove(p) {
                self.state.owned.insert(*p);
            }
        }
        self.state.restoring.is_empty()
    }

    /// Whether state partitions are being restored.
    pub fn restoring(&self) -> bool {
        !self.state.restoring.is_empty()
    }

    /// The state partitions that are whole.
    pub fn owned_state(&self) -> &BTreeSet<i32> {
        &self.state.owned
    }
}

/// Adds `n` to `epoch`'s count, dropping the entry when it reaches zero.
fn add_to(unacked: &mut BTreeMap<u64, i64>, epoch: u64, n: i64) {
    let count = unacked.entry(epoch).or_insert(0);
    *count = count.saturating_add(n);
    if *count == 0 {
        unacked.remove(&epoch);
    }
}

#[cfg(test)]
mod tests;
