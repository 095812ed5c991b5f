//! The pump against a source and a sink held in memory: partitions taken away and given
//! back at chosen moments, writes that fail, and a target that takes a while, so the
//! pump reads ahead while it waits. Whatever happens, a transactional sink ends with
//! every record exactly once and any other sink with every record at least once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::runtime::sink::{Refused, test_record};
use crate::runtime::source::Partitions;

const TOPIC: &str = "orders";

/// A record by partition and offset.
type Row = (i32, i64);

/// What a run of the pump left.
struct Outcome {
    /// The rows the target holds, sorted.
    rows: Vec<Row>,
    /// The group's committed offsets.
    committed: HashMap<i32, i64>,
    /// Records the source handed out while each write waited.
    read_during_writes: Vec<usize>,
}

/// A topic in memory read as a consumer group reads it: a partition gained is read from
/// the group's committed offset, and the assignment changes after chosen polls.
struct FakeSource {
    topic: Arc<str>,
    /// Records per partition.
    lengths: BTreeMap<i32, i64>,
    assigned: Vec<i32>,
    position: HashMap<i32, i64>,
    committed: Arc<Mutex<HashMap<i32, i64>>>,
    changed: bool,
    /// (after this many polls, the partitions then assigned), in order.
    schedule: Vec<(usize, Vec<i32>)>,
    polls: usize,
    turn: usize,
    /// Stops the pump after this many polls, should the sink never be whole.
    most_polls: usize,
    /// Records handed out so far.
    served: Arc<AtomicUsize>,
    status: Arc<Status>,
}

impl FakeSource {
    fn new(
        lengths: &[(i32, i64)],
        schedule: Vec<(usize, Vec<i32>)>,
        status: Arc<Status>,
    ) -> FakeSource {
        FakeSource {
            topic: Arc::from(TOPIC),
            lengths: lengths.iter().copied().collect(),
            assigned: Vec::new(),
            position: HashMap::new(),
            committed: Arc::default(),
            changed: false,
            schedule,
            polls: 0,
            turn: 0,
            most_polls: 200_000,
            served: Arc::default(),
            status,
        }
    }

    fn assign(&mut self, partitions: Vec<i32>) {
        let committed = self.committed.lock().unwrap().clone();
        for p in &partitions {
            if !self.assigned.contains(p) {
                self.position
                    .insert(*p, committed.get(p).copied().unwrap_or(0));
            }
        }
        self.position.retain(|p, _| partitions.contains(p));
        self.assigned = partitions;
        self.changed = true;
    }
}

impl Source for FakeSource {
    fn next(&mut self, _timeout: Duration) -> Option<Result<SourceRecord, SourceError>> {
        self.polls += 1;
        if self.polls >= self.most_polls {
            self.status.shutdown.store(true, Ordering::Relaxed);
        }
        if self
            .schedule
            .first()
            .is_some_and(|(at, _)| *at <= self.polls)
        {
            let (_, partitions) = self.schedule.remove(0);
            self.assign(partitions);
        }
        for _ in 0..self.assigned.len() {
            self.turn = (self.turn + 1) % self.assigned.len();
            let p = self.assigned[self.turn];
            let at = self.position[&p];
            if at < self.lengths[&p] {
                self.position.insert(p, at + 1);
                self.served.fetch_add(1, Ordering::Relaxed);
                return Some(Ok(test_record(TOPIC, p, at, Some("{}"))));
            }
        }
        None
    }

    fn assignment_changed(&mut self) -> Result<Option<Partitions>, SourceError> {
        if !std::mem::take(&mut self.changed) {
            return Ok(None);
        }
        Ok(Some(
            self.assigned
                .iter()
                .map(|p| (self.topic.clone(), *p))
                .collect(),
        ))
    }

    fn seek(&mut self, positions: &Offsets) -> Result<(), SourceError> {
        for (_, p, o) in positions {
            if self.assigned.contains(p) {
                self.position.insert(*p, *o);
            }
        }
        Ok(())
    }

    fn rewind(&mut self) -> Result<(), SourceError> {
        let committed = self.committed.lock().unwrap().clone();
        for p in &self.assigned {
            self.position
                .insert(*p, committed.get(p).copied().unwrap_or(0));
        }
        Ok(())
    }

    fn commit(&mut self, offsets: &Offsets, _wait: bool) -> Result<(), SourceError> {
        let mut committed = self.committed.lock().unwrap();
        for (_, p, o) in offsets {
            if self.assigned.contains(p) {
                committed.insert(*p, *o);
            }
        }
        Ok(())
    }
}

/// What the target holds: rows (partition, offset) and, for a transactional sink, the
/// positions stored with them.
#[derive(Default)]
struct Target {
    rows: Vec<(i32, i64)>,
    positions: HashMap<i32, i64>,
    /// Records the source handed out while each write waited.
    read_during_writes: Vec<usize>,
}

/// A target that takes a moment per write and per commit, fails the writes it is told
/// to, and stops the pump once it holds every record.
struct FakeSink {
    promise: Promise,
    target: Arc<Mutex<Target>>,
    pending: Vec<(i32, i64)>,
    writes: usize,
    failing_writes: Vec<usize>,
    records: usize,
    status: Arc<Status>,
    served: Arc<AtomicUsize>,
}

impl FakeSink {
    fn stop_when_whole(&self, target: &Target) {
        let mut distinct = target.rows.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() >= self.records {
            self.status.shutdown.store(true, Ordering::Relaxed);
        }
    }
}

impl Sink for FakeSink {
    fn promise(&self) -> Promise {
        self.promise
    }

    async fn positions(&mut self, partitions: &[(Arc<str>, i32)]) -> Result<Offsets, SinkError> {
        let target = self.target.lock().unwrap();
        Ok(partitions
            .iter()
            .filter_map(|(t, p)| target.positions.get(p).map(|o| (t.clone(), *p, *o)))
            .collect())
    }

    async fn write(&mut self, batch: &[SourceRecord]) -> Result<Vec<Refused>, SinkError> {
        self.writes += 1;
        let before = self.served.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let read = self.served.load(Ordering::Relaxed) - before;
        self.target.lock().unwrap().read_during_writes.push(read);
        if self.failing_writes.contains(&self.writes) {
            return Err(SinkError::Unavailable("the target went away".into()));
        }
        let written = batch.iter().map(|r| (r.origin.partition, r.origin.offset));
        if self.promise == Promise::Transactional {
            self.pending.extend(written);
        } else {
            let mut target = self.target.lock().unwrap();
            target.rows.extend(written);
            self.stop_when_whole(&target);
        }
        Ok(Vec::new())
    }

    async fn commit(&mut self, positions: &Offsets) -> Result<(), SinkError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if self.promise != Promise::Transactional {
            return Ok(());
        }
        let mut target = self.target.lock().unwrap();
        target.rows.append(&mut self.pending);
        for (_, p, o) in positions {
            target.positions.insert(*p, *o);
        }
        self.stop_when_whole(&target);
        Ok(())
    }

    async fn abort(&mut self) {
        self.pending.clear();
    }
}

/// Every record of `lengths`, in order.
fn every_record(lengths: &[(i32, i64)]) -> Vec<(i32, i64)> {
    lengths
        .iter()
        .flat_map(|(p, n)| (0..*n).map(move |o| (*p, o)))
        .collect()
}

/// Pumps `lengths` through a sink promising `promise`, the assignment following
/// `schedule` and the writes numbered in `failing_writes` failing.
fn pump(
    promise: Promise,
    lengths: &[(i32, i64)],
    schedule: Vec<(usize, Vec<i32>)>,
    failing_writes: Vec<usize>,
) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = Arc::new(Status::default());
    let target = Arc::new(Mutex::new(Target::default()));
    let source = FakeSource::new(lengths, schedule, status.clone());
    let committed = source.committed.clone();
    let served = source.served.clone();
    let mut pump = Pump {
        source,
        sink: FakeSink {
            promise,
            target: target.clone(),
            pending: Vec::new(),
            writes: 0,
            failing_writes,
            records: every_record(lengths).len(),
            status: status.clone(),
            served,
        },
        dead_letters: None,
        options: PumpOptions {
            sink: "fake".into(),
            batch_records: 40,
            batch_interval: Duration::from_millis(1),
            batch_bytes: None,
        },
        status,
        metrics: PipelineMetrics::detached("pump"),
        sink_metrics: SinkMetrics::detached("fake"),
    };
    pump.run(&runtime).unwrap();
    let mut target = target.lock().unwrap();
    let mut rows = std::mem::take(&mut target.rows);
    rows.sort_unstable();
    let committed = committed.lock().unwrap().clone();
    Outcome {
        rows,
        committed,
        read_during_writes: std::mem::take(&mut target.read_during_writes),
    }
}

/// The records of `lengths` the target lacks, and those it holds more than once.
fn missing_and_repeated(rows: &[Row], lengths: &[(i32, i64)]) -> (Vec<Row>, Vec<Row>) {
    let mut seen: BTreeMap<Row, usize> = BTreeMap::new();
    for row in rows {
        *seen.entry(*row).or_default() += 1;
    }
    let missing = every_record(lengths)
        .into_iter()
        .filter(|r| !seen.contains_key(r))
        .collect();
    let repeated = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(r, _)| r)
        .collect();
    (missing, repeated)
}

const LENGTHS: [(i32, i64); 3] = [(0, 400), (1, 400), (2, 400)];

/// Partition 1 goes and comes back, then 0 and 2 do: each time the batch in hand holds
/// records of partitions kept as well as of those given up.
fn rebalances() -> Vec<(usize, Vec<i32>)> {
    vec![
        (1, vec![0, 1, 2]),
        (230, vec![0, 2]),
        (480, vec![0, 1, 2]),
        (650, vec![1]),
        (820, vec![0, 1, 2]),
    ]
}

#[test]
fn a_transactional_sink_gets_every_record_once_through_rebalances() {
    let Outcome { rows, .. } = pump(Promise::Transactional, &LENGTHS, rebalances(), Vec::new());
    assert_eq!(
        missing_and_repeated(&rows, &LENGTHS),
        (Vec::new(), Vec::new())
    );
}

#[test]
fn a_transactional_sink_gets_every_record_once_through_failed_writes_and_rebalances() {
    let Outcome { rows, .. } = pump(
        Promise::Transactional,
        &LENGTHS,
        rebalances(),
        vec![2, 5, 6, 11],
    );
    assert_eq!(
        missing_and_repeated(&rows, &LENGTHS),
        (Vec::new(), Vec::new())
    );
}

#[test]
fn an_at_least_once_sink_gets_every_record_and_the_group_commits_the_ends() {
    let Outcome {
        rows, committed, ..
    } = pump(Promise::AtLeastOnce, &LENGTHS, rebalances(), vec![3, 8]);
    let (missing, _) = missing_and_repeated(&rows, &LENGTHS);
    assert_eq!(missing, Vec::new());
    let ends: HashMap<i32, i64> = LENGTHS.iter().copied().collect();
    assert_eq!(committed, ends);
}

#[test]
fn the_next_batch_is_read_while_the_sink_writes_and_no_more_than_a_batch() {
    let Outcome {
        rows,
        read_during_writes: read,
        ..
    } = pump(
        Promise::Transactional,
        &LENGTHS,
        vec![(1, vec![0, 1, 2])],
        Vec::new(),
    );
    assert_eq!(
        missing_and_repeated(&rows, &LENGTHS),
        (Vec::new(), Vec::new())
    );
    // Batches of 40: a write waits long enough to read the whole next batch, and the
    // pump holds no more than that.
    assert_eq!(read.iter().max(), Some(&40), "{read:?}");
}
