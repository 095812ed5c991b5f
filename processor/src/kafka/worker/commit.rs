//! Ending commit intervals: changelog writes, transactions, offset commits, and the
//! rewind to the last commit after a failure.

use super::*;
use crate::runtime::ledger::{Commit, Rewind};

/// How long a rewind serves the delivery reports already queued.
const DELIVERY_REPORTS_WAIT: Duration = Duration::from_millis(100);

/// The transaction timeout for `commitInterval`: a transaction spans one interval plus
/// its commit, so three intervals, and never below 10 s (a commit after a slow poll or a
/// long record must not find its transaction aborted by the broker). Capped at 15
/// minutes, the brokers' default `transaction.max.timeout.ms`; the engine refuses longer
/// intervals ([`crate::engine::MAX_EXACTLY_ONCE_COMMIT_INTERVAL`]).
pub fn transaction_timeout(commit_interval: Duration) -> Duration {
    commit_interval
        .saturating_mul(3)
        .clamp(Duration::from_secs(10), Duration::from_secs(900))
}

impl Core {
    pub(super) fn due(&self) -> bool {
        self.ledger.due(Instant::now())
    }

    /// Sends the aggregate's changed state to its changelog (in the current epoch, so
    /// the offsets sealed with it wait for these too).
    pub(super) fn write_changelog(&mut self) -> Result<(), WorkerError> {
        let epoch = self.ledger.epoch();
        if let Some((_, changelog)) = self.opts.state.clone()
            && let Some(agg) = self.engine.aggregate_mut()
        {
            for (partition, key, value) in agg.take_changes() {
                let mut rec: BaseRecord<'_, str, [u8], Box<Sent>> =
                    BaseRecord::with_opaque_to(&changelog, Sent::boxed(Origin::internal(), epoch))
                        .partition(partition)
                        .key(key.as_str());
                if let Some(v) = &value {
                    rec = rec.payload(v.as_slice());
                }
                send(&self.producer, rec).map_err(WorkerError::Flush)?;
                self.ledger.sent();
            }
        }
        Ok(())
    }

    /// Ends the commit interval. `exactlyOnce` commits its transaction; `atLeastOnce`
    /// seals the epoch and commits, without waiting, whatever is acknowledged by now.
    pub(super) fn end_interval<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), WorkerError> {
        if self.opts.exactly_once {
            return self.commit(consumer);
        }
        self.flush_pending()?;
        self.write_changelog()?;
        self.report_deliveries();
        let batch = self.ledger.batch();
        let released = self.ledger.end_interval(Instant::now());
        self.engine.metrics().batch_size.observe(batch as f64);
        self.engine.report_state();
        self.commit_released(consumer, released)
    }

    /// `atLeastOnce`: commits (asynchronously) the offsets of sealed epochs whose outputs
    /// are all acknowledged; a failed delivery stops here so the loop rewinds.
    pub(super) fn commit_acked<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), WorkerError> {
        self.report_deliveries();
        let released = self.ledger.commit_acked();
        self.commit_released(consumer, released)
    }

    /// Commits, without waiting, the offsets the ledger released.
    fn commit_released<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        released: Result<Commit, Rewind>,
    ) -> Result<(), WorkerError> {
        if let Commit::Offsets(offsets) = released.map_err(WorkerError::Undelivered)?
            && !offsets.is_empty()
        {
            consumer
                .commit(&partition_list(&offsets)?, CommitMode::Async)
                .map_err(WorkerError::Commit)?;
            self.status.committed();
            self.engine.metrics().commits.inc();
        }
        Ok(())
    }

    /// Commits everything processed so far and waits for it: at a rebalance, at
    /// shutdown, and at the end of every `exactlyOnce` interval (outputs, changelog and
    /// offsets in one transaction).
    pub(super) fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), WorkerError> {
        if !self.ledger.has_uncommitted() {
            self.ledger.nothing_to_commit(Instant::now());
            return Ok(());
        }
        self.flush_pending()?;
        self.write_changelog()?;
        if !self.opts.exactly_once {
            self.producer
                .flush(TXN_TIMEOUT)
                .map_err(WorkerError::Flush)?;
        }
        self.report_deliveries();
        let batch = self.ledger.batch();
        match self
            .ledger
            .commit_everything(Instant::now())
            .map_err(WorkerError::Undelivered)?
        {
            Commit::Nothing => return Ok(()),
            Commit::Transaction(offsets) => {
                let tpl = partition_list(&offsets)?;
                let cgm =
                    consumer
                        .group_metadata()
                        .ok_or(WorkerError::Commit(KafkaError::Global(
                            RDKafkaErrorCode::State,
                        )))?;
                if tpl.count() > 0 {
                    self.producer
                        .send_offsets_to_transaction(&tpl, &cgm, TXN_TIMEOUT)
                        .map_err(WorkerError::Transaction)?;
                }
                commit_transaction(&self.producer).map_err(WorkerError::Transaction)?;
            }
            Commit::Offsets(offsets) => {
                if !offsets.is_empty() {
                    consumer
                        .commit(&partition_list(&offsets)?, CommitMode::Sync)
                        .map_err(WorkerError::Commit)?;
                }
            }
        }
        self.ledger.committed(Instant::now());
        self.status.committed();
        let metrics = self.engine.metrics();
        metrics.commits.inc();
        metrics.batch_size.observe(batch as f64);
        self.engine.report_state();
        Ok(())
    }

    /// Forgets everything not committed: aborts the transaction, remembers undeliverable
    /// records, and marks the state for rebuilding.
    pub(super) fn discard_uncommitted(&mut self) {
        self.engine.metrics().aborts.inc();
        if self.ledger.in_transaction()
            && let Err(e) = abort(&self.producer)
        {
            tracing::error!(error = %e, "abort failed");
            self.fatal.get_or_insert(WorkerError::Transaction(e));
        }
        // Delivery reports already queued (a record the broker refused, the records the
        // abort purged) are served before the ledger discards: after it, reports of this
        // epoch are ignored, and a refusal missed here would never be known.
        self.producer.poll(DELIVERY_REPORTS_WAIT);
        self.report_deliveries();
        if let Some((count, first)) = self.ledger.discard(Instant::now()).passing {
            tracing::warn!(count, first = %first, "outputs not delivered for a passing reason: they are produced again after the rewind");
        }
    }

    /// After a failed commit: abort, rebuild the state, and seek every assigned partition
    /// back to its committed offset.
    pub(super) fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        cause: &WorkerError,
    ) -> Result<(), WorkerError> {
        tracing::warn!(error = %cause, "rewinding to the last commit");
        self.status.rewound(&cause.to_string());
        self.discard_uncommitted();
        // The consumer goes back to the committed offsets and reads again what the lane
        // still holds.
        if let Some(lane) = self.lane.as_mut() {
            lane.discard()?;
        }
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        let assignment = consumer.assignment().map_err(WorkerError::Commit)?;
        self.on_assign(consumer, &assignment)?;
        if self.restoring.is_some() {
            self.status.ready.store(false, Ordering::Relaxed);
        }
        let committed = consumer
            .committed_offsets(assignment, Duration::from_secs(30))
            .map_err(WorkerError::Commit)?;
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => match self.opts.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                },
            };
            consumer
                .seek(e.topic(), e.partition(), offset, Duration::from_secs(10))
                .map_err(WorkerError::Commit)?;
        }
        Ok(())
    }
}

/// Aborts the open transaction. Aborting waits for the records in flight, whose
/// delivery reports only arrive when the producer is polled (this thread is the only one
/// that polls it): so abort in short attempts, serving the reports between them, until
/// done or `TXN_TIMEOUT` passes.
pub(super) fn abort(producer: &BaseProducer<DeliveryTracker>) -> Result<(), KafkaError> {
    until_settled(
        Instant::now() + TXN_TIMEOUT,
        || producer.abort_transaction(Duration::from_secs(1)),
        retriable_transaction_error,
        |_| producer.poll(Duration::from_millis(100)),
    )
}

/// Commits the open transaction. A retriable error (the commit timed out, the
/// coordinator moved) leaves the transaction committing: librdkafka's documented answer
/// is to call commit again, not to abort what may already be committed.
pub(super) fn commit_transaction(
    producer: &BaseProducer<DeliveryTracker>,
) -> Result<(), KafkaError> {
    until_settled(
        Instant::now() + TXN_TIMEOUT,
        || producer.commit_transaction(TXN_TIMEOUT),
        retriable_transaction_error,
        |e| tracing::warn!(error = %e, "committing the transaction again"),
    )
}

/// Whether a transactional call failed in a way that calling it again can finish.
fn retriable_transaction_error(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_retriable())
}

/// Makes `attempt` until it succeeds, fails for good (`retriable` says no), or
/// `deadline` passes (the last error is returned); `between` runs before each retry.
fn until_settled<E>(
    deadline: Instant,
    mut attempt: impl FnMut() -> Result<(), E>,
    retriable: impl Fn(&E) -> bool,
    mut between: impl FnMut(&E),
) -> Result<(), E> {
    loop {
        match attempt() {
            Err(e) if retriable(&e) && Instant::now() < deadline => between(&e),
            other => return other,
        }
    }
}

/// The offsets as a list to commit.
pub(super) fn partition_list(offsets: &Offsets) -> Result<TopicPartitionList, WorkerError> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (t, p, o) in offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))
            .map_err(WorkerError::Commit)?;
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retriable_commit_error_is_answered_by_committing_again_not_by_giving_up() {
        let mut calls = 0;
        let mut retried = Vec::new();
        let result = until_settled(
            Instant::now() + Duration::from_secs(60),
            || {
                calls += 1;
                if calls < 3 { Err("timed out") } else { Ok(()) }
            },
            |e| *e == "timed out",
            |e| retried.push(*e),
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            (calls, retried.len()),
            (3, 2),
            "committed again until it went through"
        );

        let mut calls = 0;
        let fenced = until_settled(
            Instant::now() + Duration::from_secs(60),
            || {
                calls += 1;
                Err("fenced")
            },
            |e| *e == "timed out",
            |_| {},
        );
        assert_eq!((fenced, calls), (Err("fenced"), 1), "a fatal error at once");

        let mut calls = 0;
        let late = until_settled(
            Instant::now(),
            || {
                calls += 1;
                Err("timed out")
            },
            |e| *e == "timed out",
            |_| {},
        );
        assert_eq!(
            (late, calls),
            (Err("timed out"), 1),
            "no retry past the deadline"
        );
    }

    #[test]
    fn the_transaction_timeout_outlasts_three_commit_intervals_within_the_brokers_limit() {
        assert_eq!(
            transaction_timeout(Duration::from_millis(100)),
            Duration::from_secs(10)
        );
        assert_eq!(
            transaction_timeout(Duration::from_secs(12)),
            Duration::from_secs(36)
        );
        assert_eq!(
            transaction_timeout(Duration::from_secs(300)),
            Duration::from_secs(900)
        );
    }
}
