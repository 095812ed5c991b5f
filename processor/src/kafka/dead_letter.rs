//! Dead letters: a record that cannot be processed or written goes to the dead-letter
//! topic as it was read, with headers that say why and where it came from.

use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::acks::{Origin, Sent};
use super::headers::headers_of;
use super::lane::{Batch, Input};
use crate::engine::Failure;
use crate::record::Record;
use crate::runtime::sink::SourceRecord;

/// A record that goes to the dead-letter topic: where it came from and what it held.
pub(crate) struct DeadLetterSource {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) timestamp: Option<i64>,
    /// An aggregate's held-back output: its coordinates are those of the last input of
    /// its group, which differ between replays and must not stand for that input.
    pub(crate) held_back: bool,
}

impl DeadLetterSource {
    /// A consumed record, as it was read.
    pub(crate) fn of_message(m: &BorrowedMessage<'_>) -> DeadLetterSource {
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
    pub(crate) fn of_input(batch: &Batch, input: &Input) -> DeadLetterSource {
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

    /// A record a sink refused, as it was read.
    pub(crate) fn of_source(r: &SourceRecord) -> DeadLetterSource {
        DeadLetterSource {
            topic: r.origin.topic.to_string(),
            partition: r.origin.partition,
            offset: r.origin.offset,
            key: r.key.clone(),
            payload: r.value.clone(),
            headers: r.headers.clone(),
            timestamp: r.timestamp,
            held_back: false,
        }
    }

    /// A record the steps made (an aggregate's held-back output), with the coordinates
    /// of the input record it carries.
    pub(crate) fn of_record(r: &Record, format: crate::format::RecordFormat) -> DeadLetterSource {
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

/// The dead letter of `src`: the record as it was read, with headers saying why and where
/// it came from (and the `extra` headers); with `stripped` (why the whole record was refused), its coordinates and
/// error alone.
pub(crate) fn dead_letter_record<'a>(
    dlq: &'a str,
    src: &'a DeadLetterSource,
    failure: &Failure,
    stripped: Option<&str>,
    origin: &Origin,
    epoch: u64,
    extra: &[(&str, &str)],
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
    ]
    .into_iter()
    .chain(extra.iter().map(|(k, v)| (*k, Some(*v))))
    {
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
