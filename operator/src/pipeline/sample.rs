//! One look at Kafka for one pipeline: its consumer group's offsets over the inputs, and
//! which topics it needs are missing. The autoscaler's sampler takes one every tick;
//! reconcile acts on the latest (and takes one itself for a pipeline not sampled yet).

use kube::ResourceExt;
use sluice_crds::Pipeline;

use super::lag::{self, GroupReading};
use super::{render, topics};
use crate::context::Context;

/// What Kafka said of one pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The group's offsets over the inputs (`None` when Kafka could not be asked).
    pub reading: Option<GroupReading>,
    /// Topics besides the inputs that the pipeline needs and Kafka does not have.
    pub missing_others: Vec<String>,
    /// Kafka could not be asked (the error).
    pub kafka_error: Option<String>,
}

/// The part of a sample that decides what reconcile does (deploy or wait, and what
/// status says of the topics), apart from the figures that change every tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFacts {
    /// Whether Kafka answered.
    pub kafka_error: Option<String>,
    /// Input topics missing.
    pub missing_inputs: Vec<String>,
    /// Other topics missing.
    pub missing_others: Vec<String>,
}

impl Sample {
    /// Reads the offsets of `p`'s group and looks for the topics it needs.
    pub async fn take(ctx: &Context, p: &Pipeline) -> Sample {
        let group = render::group_id(&p.namespace().unwrap_or_default(), &p.name_any());
        let reading = lag::read(
            ctx.kafka.client(),
            group,
            p.spec.inputs.clone(),
            ctx.kafka.timeout(),
        )
        .await;
        let reading = match reading {
            Ok(r) => r,
            Err(err) => {
                return Sample {
                    reading: None,
                    missing_others: Vec::new(),
                    kafka_error: Some(err.to_string()),
                };
            }
        };
        let others = lag::missing(
            ctx.kafka.client(),
            topics::other_topics(p),
            ctx.kafka.timeout(),
        )
        .await;
        match others {
            Ok(missing_others) => Sample {
                reading: Some(reading),
                missing_others,
                kafka_error: None,
            },
            Err(err) => Sample {
                reading: Some(reading),
                missing_others: Vec::new(),
                kafka_error: Some(err.to_string()),
            },
        }
    }

    /// What reconcile acts on.
    pub fn facts(&self) -> TopicFacts {
        TopicFacts {
            kafka_error: self.kafka_error.clone(),
            missing_inputs: self.missing_inputs().to_vec(),
            missing_others: self.missing_others.clone(),
        }
    }

    /// Input topics missing.
    pub fn missing_inputs(&self) -> &[String] {
        self.reading
            .as_ref()
            .map_or(&[][..], |r| &r.missing_topics[..])
    }

    /// The reading, when every input exists: what the autoscaler sizes the pipeline on.
    pub fn runnable_reading(&self) -> Option<&GroupReading> {
        self.reading
            .as_ref()
            .filter(|r| r.missing_topics.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(missing: &[&str]) -> GroupReading {
        GroupReading {
            partitions: Vec::new(),
            missing_topics: missing.iter().map(|s| s.to_string()).collect(),
            rebalancing: false,
        }
    }

    #[test]
    fn figures_are_not_facts_but_missing_topics_and_errors_are() {
        let a = Sample {
            reading: Some(reading(&[])),
            missing_others: vec![],
            kafka_error: None,
        };
        let mut b = a.clone();
        b.reading.as_mut().unwrap().rebalancing = true;
        assert_eq!(a.facts(), b.facts(), "a rebalance is a figure");
        assert!(a.runnable_reading().is_some());
        let c = Sample {
            reading: Some(reading(&["orders"])),
            ..a.clone()
        };
        assert_ne!(a.facts(), c.facts());
        assert_eq!(c.missing_inputs(), ["orders"]);
        assert!(c.runnable_reading().is_none());
        let d = Sample {
            reading: None,
            missing_others: vec![],
            kafka_error: Some("down".into()),
        };
        assert_ne!(a.facts(), d.facts());
        assert!(d.runnable_reading().is_none());
    }
}
