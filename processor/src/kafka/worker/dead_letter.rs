//! Writing a record that cannot be processed or delivered to the dead-letter topic.

use super::*;
use crate::kafka::acks::refuses_the_record;

/// A record that goes to the dead-letter topic: where it came from and what it held.
pub(super) struct DeadLetterSource {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: Option<i64>,
    /// An aggregate's held-back output: its coordinates are those of the last input of
    /// its group, which differ between replays and must not stand for that input.
    held_back: bool,
}

impl DeadLetterSource {
    /// A consumed record, as it was read.
    pub(super) fn of_message(m: &BorrowedMessage<'_>) -> DeadLetterSource {
        DeadLetterSource {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: headers_of(m),
            timestamp: m.timestamp().to_millis(),
            held_back: false,
        }
    }

    /// A record that went through the transform lane, as it was read.
    pub(super) fn of_input(batch: &Batch, input: &lane::Input) -> DeadLetterSource {
        DeadLetterSource {
            topic: input.topic.to_string(),
            partition: input.partition,
            offset: input.offset,
            key: batch.key(input).map(<[u8]>::to_vec),
            payload: batch.payload(input).map(<[u8]>::to_vec),
            headers: input.headers.clone(),
            timestamp: input.timestamp,
            held_back: false,
        }
    }

    /// A record the steps made (an aggregate's held-back output), with the coordinates
    /// of the input record it carries.
    pub(super) fn of_record(r: &Record, format: crate::format::RecordFormat) -> DeadLetterSource {
        DeadLetterSource {
            topic: r.topic.to_string(),
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            payload: format.encode(&r.value).ok(),
            headers: r.headers.clone(),
            timestamp: (r.timestamp > 0).then_some(r.timestamp),
            held_back: true,
        }
    }
}

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
            let rec = dead_letter_record(&dlq, src, failure, stripped.as_deref(), &origin, epoch);
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

/// The dead letter of `src`: the record as it was read, with headers saying why and where
/// it came from; with `stripped` (why the whole record was refused), its coordinates and
/// error alone.
fn dead_letter_record<'a>(
    dlq: &'a str,
    src: &'a DeadLetterSource,
    failure: &Failure,
    stripped: Option<&str>,
    origin: &Origin,
    epoch: u64,
) -> BaseRecord<'a, [u8], [u8], Box<Sent>> {
    let mut headers = OwnedHeaders::new();
    if stripped.is_none() {
        for (k, v) in &src.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
    }
    let partition = src.partition.to_string();
    let offset = src.offset.to_string();
    let dropped = stripped.map(|why| {
        format!("key, value and headers left out: the dead-letter topic refused the record ({why})")
    });
    for (k, v) in [
        ("sluice.error", Some(failure.error.as_str())),
        ("sluice.step", Some(failure.step.as_str())),
        ("sluice.source.topic", Some(src.topic.as_str())),
        ("sluice.source.partition", Some(partition.as_str())),
        ("sluice.source.offset", Some(offset.as_str())),
        ("sluice.dropped", dropped.as_deref()),
    ] {
        if let Some(v) = v {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
    }
    let sent = if src.held_back {
        Sent::boxed(Origin::internal(), epoch)
    } else {
        Sent::dead_letter(origin.clone(), epoch, failure.clone())
    };
    let mut rec = BaseRecord::with_opaque_to(dlq, sent).headers(headers);
    if stripped.is_none() {
        if let Some(k) = &src.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(p) = &src.payload {
            rec = rec.payload(p.as_slice());
        }
        if let Some(ts) = src.timestamp {
            rec = rec.timestamp(ts);
        }
    }
    rec
}
