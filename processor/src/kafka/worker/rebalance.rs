//! Rebalances: commit on revoke; after each change, follow the assignment with the
//! state (restored outside the callback, a little at a time, by the loop).

use super::*;

/// Consumer callbacks: commit on revoke, restore on assign.
pub(super) struct RebalanceHandler {
    pub(super) core: Arc<Mutex<Core>>,
}

impl ClientContext for RebalanceHandler {}

impl ConsumerContext for RebalanceHandler {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = lock(&self.core);
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions revoked: committing");
            // Records still in the transform lane are of partitions held until now:
            // handle them, so the commit covers them.
            let drained = core.drain_lane();
            if let Err(e) = drained.and_then(|()| core.commit(consumer)) {
                tracing::warn!(error = %e, "commit on revoke failed: the new owner replays from the last commit");
                core.discard_uncommitted();
                // Nothing polled after the failure may be handled: the partitions kept go
                // back to their committed offsets (the loop rewinds), or the loop stops.
                if let Some(lane) = core.lane.as_mut()
                    && let Err(gone) = lane.discard()
                {
                    core.fatal.get_or_insert(gone.into());
                }
                if e.recoverable() {
                    core.rewind_due.get_or_insert(e);
                } else {
                    core.fatal.get_or_insert(e);
                }
            }
            core.status.ready.store(false, Ordering::Relaxed);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = lock(&self.core);
        match rebalance {
            Rebalance::Assign(tpl) => {
                core.engine.metrics().rebalances.inc();
                tracing::info!(partitions = ?partition_names(tpl), "partitions assigned");
                core.follow_assignment(consumer);
            }
            // Only the revoked partitions stopped (the protocol is always cooperative: the
            // strategy is set after the user's properties); the rest go on at once.
            Rebalance::Revoke(tpl) => {
                core.engine.metrics().rebalances.inc();
                tracing::info!(partitions = ?partition_names(tpl), "partitions given up");
                core.follow_assignment(consumer);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// `partitions` of `topic` as a list.
pub(super) fn partitions_of(topic: &str, partitions: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    tpl
}

pub(super) fn partition_names(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect()
}

impl Core {
    /// After a rebalance: keeps the state of the partitions still held, restores the
    /// gained ones, drops the lost ones, and is ready again. The callbacks of the
    /// cooperative protocol carry only the change, so this reads the whole assignment.
    pub(super) fn follow_assignment<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let assignment = match consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                self.fatal = Some(WorkerError::Commit(e));
                return;
            }
        };
        self.engine
            .metrics()
            .assigned_partitions
            .set(i64::try_from(assignment.count()).unwrap_or(0));
        let assigned = assignment
            .elements()
            .iter()
            .map(|e| (self.topic_arc(e.topic()), e.partition()))
            .collect();
        self.ledger.assigned(assigned);
        if let Err(e) = self.on_assign(consumer, &assignment) {
            self.fatal = Some(e);
            return;
        }
        self.status
            .ready
            .store(self.restoring.is_none(), Ordering::Relaxed);
    }

    /// Follows a new assignment with the state: drops the state of partitions lost (and
    /// what a restore under way read of them), and pauses the gained ones while their
    /// state is restored from the changelog by [`Core::advance_restore`], outside the
    /// rebalance callback and a little at a time, so the partitions kept go on meanwhile.
    /// A restore under way goes on for the partitions still held.
    pub(super) fn on_assign<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) -> Result<(), WorkerError> {
        let Some((state_topic, changelog)) = self.opts.state.clone() else {
            return Ok(());
        };
        let assigned: BTreeSet<i32> = tpl
            .elements_for_topic(&state_topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let change = self.ledger.follow_state(&assigned);
        if change.clear {
            self.restoring = None;
        }
        let Some(agg) = self.engine.aggregate_mut() else {
            return Ok(());
        };
        if change.clear {
            agg.clear();
        }
        for &p in change.dropped.iter().chain(&change.forgotten) {
            agg.drop_partition(p);
        }
        if let Some(restore) = self.restoring.as_mut() {
            restore.forget(&change.forgotten)?;
        }
        let gained = change.gained;
        if gained.is_empty() {
            self.engine.report_state();
            return Ok(());
        }
        consumer
            .pause(&partitions_of(&state_topic, &gained))
            .map_err(WorkerError::Commit)?;
        tracing::info!(partitions = ?gained, topic = %changelog, "restoring state: these partitions wait for it");
        match self.restoring.as_mut() {
            Some(restore) => restore.add(&gained),
            None => {
                self.restoring = Some(Restore::start(
                    &self.opts.settings,
                    &self.opts.group_id,
                    &changelog,
                    &gained,
                    self.opts.restore_timeout,
                )?);
            }
        }
        Ok(())
    }

    /// Reads the restore under way for a moment; resumes each partition whose state is
    /// whole, and says the replica is ready when all are.
    pub(super) fn advance_restore<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), WorkerError> {
        let (Some(restore), Some(agg), Some((state_topic, _))) = (
            self.restoring.as_mut(),
            self.engine.aggregate_mut(),
            self.opts.state.as_ref(),
        ) else {
            return Ok(());
        };
        let done = restore.step(agg, RESTORE_STEP)?;
        if !done.is_empty() {
            consumer
                .resume(&partitions_of(state_topic, &done))
                .map_err(WorkerError::Commit)?;
        }
        self.ledger.restored(&done);
        if restore.is_finished() {
            tracing::info!(partitions = ?self.ledger.owned_state(), records = restore.applied(), took_ms = restore.elapsed().as_millis() as u64, topic = %restore.topic(), "state restored");
            self.restoring = None;
            self.status.ready.store(true, Ordering::Relaxed);
        }
        if !done.is_empty() {
            self.engine.report_state();
        }
        Ok(())
    }
}
