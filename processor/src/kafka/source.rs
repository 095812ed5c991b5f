//! Kafka as a [`Source`] of the runtime: a consumer in a group (cooperative rebalancing,
//! read_committed), whose assignment changes the pump follows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_crds::pipeline::StartFrom;

use super::KafkaSettings;
use super::headers::headers_of;
use crate::runtime::ledger::{Offsets, Origin};
use crate::runtime::sink::SourceRecord;
use crate::runtime::source::{Partitions, Source, SourceError};

/// Notes that the assignment changed, for the pump to look at after the poll.
#[derive(Default)]
pub struct AssignmentWatch {
    changed: AtomicBool,
}

impl ClientContext for AssignmentWatch {}

impl ConsumerContext for AssignmentWatch {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) | Rebalance::Revoke(_) => {
                self.changed.store(true, Ordering::Release);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Topics read by a consumer group.
pub struct KafkaSource {
    consumer: BaseConsumer<AssignmentWatch>,
    start_from: StartFrom,
    topics: Vec<Arc<str>>,
}

fn failed(what: &str) -> impl Fn(KafkaError) -> SourceError + '_ {
    move |e| SourceError(format!("{what}: {e}"))
}

impl KafkaSource {
    /// Joins `group` and subscribes to `topics`.
    pub fn subscribe(
        settings: &KafkaSettings,
        group: &str,
        topics: &[String],
        start_from: StartFrom,
    ) -> Result<KafkaSource, SourceError> {
        let cfg = settings.group_consumer_config(group, start_from);
        let consumer: BaseConsumer<AssignmentWatch> = cfg
            .create_with_context(AssignmentWatch::default())
            .map_err(failed("cannot create the consumer"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(failed("cannot subscribe"))?;
        Ok(KafkaSource {
            consumer,
            start_from,
            topics: topics.iter().map(|t| Arc::from(t.as_str())).collect(),
        })
    }
}

/// The shared handle of `topic`'s name (made once per topic).
fn topic_arc(topics: &mut Vec<Arc<str>>, topic: &str) -> Arc<str> {
    if let Some(t) = topics.iter().find(|t| ***t == *topic) {
        return t.clone();
    }
    let t: Arc<str> = Arc::from(topic);
    topics.push(t.clone());
    t
}

/// `offsets` as a list to commit or seek to.
fn partition_list(offsets: &Offsets) -> Result<TopicPartitionList, SourceError> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (t, p, o) in offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))
            .map_err(failed("bad offset"))?;
    }
    Ok(tpl)
}

impl Source for KafkaSource {
    fn next(&mut self, timeout: Duration) -> Option<Result<SourceRecord, SourceError>> {
        let m = match self.consumer.poll(timeout)? {
            Ok(m) => m,
            Err(e) => return Some(Err(SourceError(format!("consumer error: {e}")))),
        };
        let (partition, offset) = (m.partition(), m.offset());
        let key = m.key().map(<[u8]>::to_vec);
        let value = m.payload().map(<[u8]>::to_vec);
        let headers = headers_of(&m);
        let timestamp = m.timestamp().to_millis();
        let topic = topic_arc(&mut self.topics, m.topic());
        drop(m);
        Some(Ok(SourceRecord {
            origin: Origin {
                topic,
                partition,
                offset,
            },
            key,
            value,
            headers,
            timestamp,
            destination: None,
            position: None,
        }))
    }

    fn assignment_changed(&mut self) -> Result<Option<Partitions>, SourceError> {
        if !self
            .consumer
            .context()
            .changed
            .swap(false, Ordering::AcqRel)
        {
            return Ok(None);
        }
        let tpl = self
            .consumer
            .assignment()
            .map_err(failed("cannot read the assignment"))?;
        let names: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        Ok(Some(
            names
                .into_iter()
                .map(|(t, p)| (topic_arc(&mut self.topics, &t), p))
                .collect(),
        ))
    }

    fn seek(&mut self, positions: &Offsets) -> Result<(), SourceError> {
        for (t, p, o) in positions {
            self.consumer
                .seek(t, *p, Offset::Offset(*o), Duration::from_secs(10))
                .map_err(failed("cannot seek"))?;
        }
        Ok(())
    }

    fn rewind(&mut self) -> Result<(), SourceError> {
        let assignment = self
            .consumer
            .assignment()
            .map_err(failed("cannot read the assignment"))?;
        let committed = self
            .consumer
            .committed_offsets(assignment, Duration::from_secs(30))
            .map_err(failed("cannot read the committed offsets"))?;
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => match self.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                },
            };
            self.consumer
                .seek(e.topic(), e.partition(), offset, Duration::from_secs(10))
                .map_err(failed("cannot seek"))?;
        }
        Ok(())
    }

    fn commit(&mut self, offsets: &Offsets, wait: bool) -> Result<(), SourceError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mode = if wait {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        self.consumer
            .commit(&partition_list(offsets)?, mode)
            .map_err(failed("cannot commit offsets"))
    }
}
