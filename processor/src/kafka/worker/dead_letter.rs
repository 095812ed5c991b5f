//! Writing a record that cannot be processed or delivered to the dead-letter topic.

use super::*;
use crate::kafka::acks::refuses_the_record;
pub(super) use crate::kafka::dead_letter::DeadLetterSource;
use crate::kafka::dead_letter::dead_letter_record;

impl Core {
    pub(super) fn dead_letter(
        &mut self,
        src: &DeadLetterSource,
        failure: &Failure,
    ) -> Result<(), WorkerError> {
        let Some(dlq) = self.opts.dead_letter.clone() else {
            return Err(WorkerError::NoDeadLetter {
                topic: src.topic.clone(),
                partition: src.partition,
                offset: src.offset,
                failure: failure.clone(),
            });
        };
        let origin = Origin {
            topic: Arc::from(src.topic.as_str()),
            partition: src.partition,
            offset: src.offset,
        };
        // A dead letter the broker refused for what it was goes again without the
        // record's key, value, headers and timestamp: its coordinates and error still say
        // which record failed and why, and the record stays in its source topic. One the
        // producer refuses at once (larger than its message.max.bytes) goes so right away.
        // Only a consumed record's own dead letter is remembered by its coordinates.
        let mut stripped = if src.held_back {
            None
        } else {
            // Kept (not taken): a stripped dead letter purged by an abort goes stripped
            // again; the record is never replayed once its offset is committed.
            self.ledger.stripped_dead_letter(&origin)
        };
        let epoch = self.ledger.epoch();
        loop {
            let rec =
                dead_letter_record(&dlq, src, failure, stripped.as_deref(), &origin, epoch, &[]);
            match send(&self.producer, rec) {
                Ok(()) => {
                    self.ledger.sent();
                    break;
                }
                Err(e) if stripped.is_none() && refuses_the_record(&e) => {
                    stripped = Some(format!("{dlq}: {e}"));
                }
                Err(source) => return Err(WorkerError::DeadLetter { topic: dlq, source }),
            }
        }
        self.engine.metrics().dead_lettered.inc();
        self.dead_lettered_logged += 1;
        if self.dead_lettered_logged <= 10 || self.dead_lettered_logged.is_multiple_of(1000) {
            tracing::warn!(
                step = %failure.step, error = %failure.error, topic = %src.topic, partition = src.partition,
                offset = src.offset, dead_lettered = self.dead_lettered_logged, "record dead-lettered"
            );
        }
        Ok(())
    }
}
