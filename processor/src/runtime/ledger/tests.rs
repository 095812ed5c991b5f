//! The commit core driven through every order of events: acknowledgements out of order,
//! refusals, revokes with outputs in flight, failed commits; checked against a model of
//! the source and the sink.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn topic() -> Arc<str> {
    Arc::from("in")
}

fn origin(partition: i32, offset: i64) -> Origin {
    Origin {
        topic: topic(),
        partition,
        offset,
    }
}

fn ledger(delivery: Delivery) -> (Ledger, Instant) {
    let now = Instant::now();
    let mut l = Ledger::new(delivery, Duration::from_secs(1), now);
    l.assigned(vec![(topic(), 0), (topic(), 1)]);
    (l, now)
}

fn failed(epoch: u64, origin: Origin, poison: bool) -> Failed {
    Failed {
        epoch,
        origin,
        error: "out: refused".into(),
        output: None,
        dead_letter: None,
        poison,
    }
}

#[test]
fn an_epoch_is_released_only_when_it_and_every_earlier_one_are_acknowledged() {
    let (mut l, now) = ledger(Delivery::AtLeastOnce);
    let later = now + Duration::from_secs(1);
    // Epoch 0: record 0/0 with one output.
    assert_eq!(
        l.admit(&topic(), 0),
        Admit::Process {
            begin_transaction: false
        }
    );
    l.sent();
    l.processed(origin(0, 0));
    assert_eq!(
        l.end_interval(later),
        Ok(Commit::Nothing),
        "its output waits"
    );
    // Epoch 1: record 1/0 with one output, acknowledged before epoch 0's.
    l.admit(&topic(), 1);
    l.sent();
    l.processed(origin(1, 0));
    l.acked(1, 1);
    assert_eq!(
        l.end_interval(later + Duration::from_secs(1)),
        Ok(Commit::Nothing),
        "epoch 0 still waits, so epoch 1 does too"
    );
    l.acked(0, 1);
    assert_eq!(
        l.commit_acked(),
        Ok(Commit::Offsets(vec![(topic(), 0, 1), (topic(), 1, 1)]))
    );
    assert_eq!(l.commit_acked(), Ok(Commit::Nothing), "released once");
}

#[test]
fn an_acknowledgement_before_the_seal_counts_for_the_open_epoch() {
    let (mut l, now) = ledger(Delivery::AtLeastOnce);
    l.admit(&topic(), 0);
    l.sent();
    l.sent();
    l.acked(0, 1);
    l.processed(origin(0, 0));
    assert_eq!(
        l.end_interval(now + Duration::from_secs(1)),
        Ok(Commit::Nothing)
    );
    l.acked(0, 1);
    assert_eq!(l.commit_acked(), Ok(Commit::Offsets(vec![(topic(), 0, 1)])));
}

#[test]
fn a_refusal_stops_every_commit_until_the_rewind_and_poisons_the_record() {
    let (mut l, now) = ledger(Delivery::AtLeastOnce);
    l.admit(&topic(), 0);
    l.sent();
    l.processed(origin(0, 7));
    l.failed(failed(0, origin(0, 7), true));
    let refused = Err(Rewind::Refused(
        "an output of in/0@7 was not delivered: out: refused".into(),
    ));
    assert_eq!(l.end_interval(now + Duration::from_secs(1)), refused);
    assert_eq!(l.commit_everything(now), refused);
    let found = l.discard(now);
    assert_eq!(found.poisoned, 1);
    assert!(!l.any_failed());
    // Read again: dead-lettered, not processed; once only.
    let why = l.replay_failure(&origin(0, 7)).expect("poisoned");
    assert_eq!(why.error, "out: refused");
    assert_eq!(l.replay_failure(&origin(0, 7)), None);
}

#[test]
fn reports_of_discarded_epochs_change_nothing() {
    let (mut l, now) = ledger(Delivery::AtLeastOnce);
    l.admit(&topic(), 0);
    l.sent();
    l.processed(origin(0, 0));
    l.discard(now);
    // The discarded output's report arrives late; a refusal of it too.
    l.acked(0, 1);
    l.failed(failed(0, origin(0, 0), true));
    assert!(!l.any_failed());
    l.admit(&topic(), 0);
    l.sent();
    l.processed(origin(0, 0));
    assert_eq!(
        l.end_interval(now + Duration::from_secs(1)),
        Ok(Commit::Nothing),
        "the new output still waits: the late report was not counted for it"
    );
    l.acked(1, 1);
    assert_eq!(l.commit_acked(), Ok(Commit::Offsets(vec![(topic(), 0, 1)])));
}

#[test]
fn a_passing_refusal_is_sent_again_not_dead_lettered() {
    let (mut l, now) = ledger(Delivery::AtLeastOnce);
    l.admit(&topic(), 0);
    l.sent();
    l.processed(origin(0, 3));
    l.failed(failed(0, origin(0, 3), false));
    let found = l.discard(now);
    assert_eq!(found.poisoned, 0);
    assert_eq!(found.passing, Some((1, "out: refused".to_string())));
    assert_eq!(l.replay_failure(&origin(0, 3)), None);
}

#[test]
fn a_revoke_with_outputs_in_flight_commits_nothing_they_have_not_answered() {
    let (mut l, now) = ledger(Delivery::AtLeastOnce);
    l.admit(&topic(), 0);
    l.sent();
    l.processed(origin(0, 0));
    // The flush before the commit timed out with the output still in flight.
    assert_eq!(l.commit_everything(now), Err(Rewind::Unacknowledged(1)));
}

#[test]
fn a_record_of_a_partition_given_up_is_skipped_and_its_replays_forgotten() {
    let (mut l, now) = ledger(Delivery::ExactlyOnce);
    l.admit(&topic(), 1);
    l.sent();
    l.processed(origin(1, 4));
    l.failed(failed(0, origin(1, 4), true));
    l.discard(now);
    l.assigned(vec![(topic(), 0)]);
    assert_eq!(l.admit(&topic(), 1), Admit::Skip);
    assert_eq!(
        l.replay_failure(&origin(1, 4)),
        None,
        "the new owner's to replay"
    );
}

#[test]
fn exactly_once_opens_one_transaction_per_interval_and_commits_its_offsets() {
    let (mut l, now) = ledger(Delivery::ExactlyOnce);
    assert_eq!(
        l.admit(&topic(), 0),
        Admit::Process {
            begin_transaction: true
        }
    );
    l.processed(origin(0, 0));
    assert_eq!(
        l.admit(&topic(), 0),
        Admit::Process {
            begin_transaction: false
        }
    );
    l.processed(origin(0, 1));
    assert!(!l.due(now));
    let later = now + Duration::from_secs(1);
    assert!(l.due(later));
    assert_eq!(
        l.end_interval(later),
        Ok(Commit::Transaction(vec![(topic(), 0, 2)]))
    );
    l.committed(later);
    assert!(!l.in_transaction());
    assert_eq!(l.commit_everything(later), Ok(Commit::Nothing));
}

#[test]
fn state_partitions_follow_the_assignment_and_a_discard_rebuilds_them() {
    let (mut l, now) = ledger(Delivery::ExactlyOnce);
    let set = |v: &[i32]| v.iter().copied().collect::<BTreeSet<i32>>();
    let change = l.follow_state(&set(&[0, 1]));
    assert_eq!(change.gained, vec![0, 1]);
    assert!(l.restoring());
    assert!(!l.restored(&[0]));
    // Partition 1 goes while it is restored; 2 comes.
    let change = l.follow_state(&set(&[0, 2]));
    assert_eq!(
        change,
        StateChange {
            clear: false,
            dropped: vec![],
            forgotten: vec![1],
            gained: vec![2]
        }
    );
    assert!(l.restored(&[2]));
    assert_eq!(l.owned_state(), &set(&[0, 2]));
    let change = l.follow_state(&set(&[2]));
    assert_eq!(change.dropped, vec![0]);
    l.discard(now);
    let change = l.follow_state(&set(&[2]));
    assert!(change.clear);
    assert_eq!(change.gained, vec![2], "rebuilt from the changelog");
}

/// One event the model drives the ledger with.
#[derive(Debug, Clone)]
enum Event {
    /// Read the next record of a partition (each has 1 + offset % 3 outputs).
    Read(i32),
    /// Acknowledge the output in flight at this index (of the list, modulo its length).
    Ack(usize),
    /// The sink refuses the output in flight at this index, for good or for a passing
    /// reason.
    Refuse(usize, bool),
    /// The commit interval ends.
    Interval,
    /// Look for acknowledged checkpoints.
    CommitAcked,
    /// A revoke (or shutdown): flush (every output in flight is answered), then commit
    /// everything.
    Revoke,
    /// The commit the ledger asked for fails.
    CommitFails,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0..2i32).prop_map(Event::Read),
        4 => any::<usize>().prop_map(Event::Ack),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, p)| Event::Refuse(i, p)),
        1 => Just(Event::Interval),
        1 => Just(Event::CommitAcked),
        1 => Just(Event::Revoke),
        1 => Just(Event::CommitFails),
    ]
}

const RECORDS: i64 = 12;

/// A source of two partitions of [`RECORDS`] records and a sink, as the ledger sees them.
struct Model {
    ledger: Ledger,
    now: Instant,
    delivery: Delivery,
    /// Next offset to read per partition.
    position: [i64; 2],
    /// Committed offset per partition.
    committed: [i64; 2],
    /// Outputs in flight: the processing they belong to, and their epoch.
    in_flight: Vec<(usize, u64)>,
    /// Every processing of a record: (partition, offset, outputs still unanswered,
    /// refused, discarded).
    processings: Vec<(i32, i64, usize, bool, bool)>,
    /// `exactlyOnce`: processings in the open transaction.
    transaction: Vec<usize>,
    /// `exactlyOnce`: per record, how many committed transactions hold it.
    delivered: BTreeMap<(i32, i64), usize>,
    /// The commit the ledger asked for last, not yet done.
    pending: Option<Commit>,
}

impl Model {
    fn new(delivery: Delivery) -> Model {
        let (ledger, now) = ledger(delivery);
        Model {
            ledger,
            now,
            delivery,
            position: [0; 2],
            committed: [0; 2],
            in_flight: Vec::new(),
            processings: Vec::new(),
            transaction: Vec::new(),
            delivered: BTreeMap::new(),
            pending: None,
        }
    }

    fn read(&mut self, partition: i32) {
        let p = partition as usize;
        let offset = self.position[p];
        if offset >= RECORDS {
            return;
        }
        self.position[p] += 1;
        let Admit::Process { .. } = self.ledger.admit(&topic(), partition) else {
            panic!("every partition is assigned");
        };
        let o = origin(partition, offset);
        // A poisoned record is replaced by its dead letter: one output all the same.
        let outputs = if self.ledger.replay_failure(&o).is_some() {
            1
        } else {
            1 + (offset % 3) as usize
        };
        let id = self.processings.len();
        self.processings
            .push((partition, offset, outputs, false, false));
        for _ in 0..outputs {
            self.ledger.sent();
            self.in_flight.push((id, self.ledger.epoch()));
        }
        self.transaction.push(id);
        self.ledger.processed(o);
    }

    fn answer(&mut self, index: usize, refused: Option<bool>) {
        if self.in_flight.is_empty() {
            return;
        }
        let (id, epoch) = self.in_flight.remove(index % self.in_flight.len());
        let (partition, offset, ..) = self.processings[id];
        self.processings[id].2 -= 1;
        match refused {
            None => self.ledger.acked(epoch, 1),
            Some(poison) => {
                self.processings[id].3 = true;
                self.ledger
                    .failed(failed(epoch, origin(partition, offset), poison));
            }
        }
    }

    /// Carries out what the ledger answered.
    fn act(&mut self, answer: Result<Commit, Rewind>, everything: bool) {
        match answer {
            Ok(Commit::Nothing) => {}
            Ok(commit @ Commit::Offsets(_)) => self.apply(commit, everything),
            Ok(commit @ Commit::Transaction(_)) => self.pending = Some(commit),
            Err(_) => self.rewind(),
        }
    }

    /// Applies a commit to the source, checking that it commits nothing unsafe; `done`
    /// tells the ledger (for what [`Ledger::commit_everything`] or a transaction asked).
    fn apply(&mut self, commit: Commit, done: bool) {
        let (Commit::Offsets(offsets) | Commit::Transaction(offsets)) = commit else {
            return;
        };
        for (_, partition, next) in &offsets {
            let p = *partition as usize;
            assert!(
                *next >= self.committed[p],
                "partition {partition}: committed {next} after {}",
                self.committed[p]
            );
            if self.delivery == Delivery::AtLeastOnce {
                for offset in self.committed[p]..*next {
                    let safe = self
                        .processings
                        .iter()
                        .any(|&(pp, o, unanswered, refused, _)| {
                            pp == *partition && o == offset && unanswered == 0 && !refused
                        });
                    assert!(
                        safe,
                        "partition {partition}: offset {next} committed past record {offset}, \
                         whose outputs are not all acknowledged"
                    );
                }
            }
            self.committed[p] = *next;
        }
        if self.delivery == Delivery::ExactlyOnce {
            for id in std::mem::take(&mut self.transaction) {
                let (partition, offset, ..) = self.processings[id];
                *self.delivered.entry((partition, offset)).or_insert(0) += 1;
            }
            // Each transaction's offsets are exactly the records it holds.
            for p in 0..2 {
                assert_eq!(
                    self.committed[p], self.position[p],
                    "partition {p}: the transaction committed offsets other than what it read"
                );
            }
        }
        if done {
            self.ledger.committed(self.now);
        }
    }

    /// The loop rewinds: the transaction aborts, the source goes back to the commit.
    fn rewind(&mut self) {
        self.pending = None;
        for id in std::mem::take(&mut self.transaction) {
            self.processings[id].4 = true;
        }
        self.ledger.discard(self.now);
        self.position = self.committed;
    }

    fn step(&mut self, event: Event) {
        if let Some(commit) = self.pending.take() {
            // The transaction asked for commits, unless this event says it fails.
            if matches!(event, Event::CommitFails) {
                self.rewind();
                return;
            }
            // exactlyOnce: the commit flushes: every output is answered first.
            self.flush(false);
            if self.ledger.any_failed() {
                self.rewind();
            } else {
                self.apply(commit, true);
            }
        }
        match event {
            Event::Read(p) => self.read(p),
            Event::Ack(i) => self.answer(i, None),
            Event::Refuse(i, poison) => self.answer(i, Some(poison)),
            Event::Interval => {
                self.now += Duration::from_secs(1);
                if self.ledger.due(self.now) {
                    let answer = self.ledger.end_interval(self.now);
                    self.act(answer, false);
                }
            }
            Event::CommitAcked if self.delivery == Delivery::AtLeastOnce => {
                let answer = self.ledger.commit_acked();
                self.act(answer, false);
            }
            Event::Revoke => {
                self.flush(false);
                let answer = self.ledger.commit_everything(self.now);
                self.act(answer, true);
            }
            Event::CommitAcked | Event::CommitFails => {}
        }
    }

    /// Answers every output in flight (acknowledges them, unless `refuse_all`).
    fn flush(&mut self, refuse_all: bool) {
        while !self.in_flight.is_empty() {
            self.answer(0, refuse_all.then_some(true));
        }
    }

    /// Reads, flushes and commits until every record is committed.
    fn finish(&mut self) {
        for _ in 0..100 {
            if let Some(commit) = self.pending.take() {
                self.flush(false);
                self.apply(commit, true);
            }
            if self.committed == [RECORDS; 2] {
                return;
            }
            while self.position.iter().any(|&p| p < RECORDS) {
                self.read(0);
                self.read(1);
            }
            self.step(Event::Revoke);
        }
        panic!("never committed everything: {:?}", self.committed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn at_least_once_never_commits_past_an_unacknowledged_output_and_loses_nothing(
        events in proptest::collection::vec(event(), 0..200)
    ) {
        let mut model = Model::new(Delivery::AtLeastOnce);
        for e in events {
            model.step(e);
        }
        model.finish();
        // Every record was delivered by some processing whose outputs were all
        // acknowledged (the check in `apply` ran for each committed offset).
        for p in 0..2 {
            prop_assert_eq!(model.committed[p], RECORDS);
        }
    }

    #[test]
    fn exactly_once_commits_every_record_in_exactly_one_transaction(
        events in proptest::collection::vec(event(), 0..200)
    ) {
        let mut model = Model::new(Delivery::ExactlyOnce);
        for e in events {
            model.step(e);
        }
        model.finish();
        for p in 0..2 {
            for offset in 0..RECORDS {
                prop_assert_eq!(
                    model.delivered.get(&(p, offset)).copied(),
                    Some(1),
                    "record {}/{} in committed transactions", p, offset
                );
            }
        }
    }
}
