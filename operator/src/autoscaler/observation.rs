//! What the operator reads from Kafka and Kubernetes at one tick, and the lag it implies.

use std::fmt;
use std::time::Duration;

use sluice_crds::pipeline::StartFrom;

/// One input partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Offsets of one input partition at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Which partition.
    pub id: PartitionId,
    /// Log-start offset (low watermark): records before it were deleted by retention.
    pub log_start: i64,
    /// Log-end offset (high watermark): the offset the next record will get.
    pub log_end: i64,
    /// The group's committed offset; `None` when the group never committed here.
    pub committed: Option<i64>,
}

impl PartitionOffsets {
    /// Log-start and log-end made consistent: never negative, start never after end.
    pub fn bounds(&self) -> (i64, i64) {
        let end = self.log_end.max(0);
        (self.log_start.clamp(0, end), end)
    }

    /// The committed offset when it still points into the log.
    pub fn valid_committed(&self) -> Option<i64> {
        let (start, end) = self.bounds();
        self.committed.filter(|c| (start..=end).contains(c))
    }

    /// Where the group reads next. Without a usable committed offset (never committed, or
    /// the records it points at were deleted) the consumer resets by its start policy:
    /// `earliest` to the log start (deleted records are not lag), `latest` to the log end
    /// (only records arriving after it starts are work).
    pub fn read_position(&self, start_from: StartFrom) -> i64 {
        let (start, end) = self.bounds();
        match (self.valid_committed(), start_from) {
            (Some(committed), _) => committed,
            (None, StartFrom::Earliest) => start,
            (None, StartFrom::Latest) => end,
        }
    }

    /// Records between the read position and the log end.
    pub fn lag(&self, start_from: StartFrom) -> u64 {
        let (_, end) = self.bounds();
        u64::try_from(end - self.read_position(start_from)).unwrap_or(0)
    }
}

/// Everything the autoscaler learns about one pipeline at one tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Monotonic time of the reading, from any fixed origin: only differences matter.
    pub now: Duration,
    /// Every input partition (all input topics).
    pub partitions: Vec<PartitionOffsets>,
    /// Replicas the Deployment asks for now.
    pub replicas: u32,
    /// Replicas that are ready (started and consuming).
    pub ready_replicas: u32,
    /// The consumer group is rebalancing (members joining or leaving).
    pub rebalancing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(log_start: i64, log_end: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            id: PartitionId {
                topic: "t".into(),
                partition: 0,
            },
            log_start,
            log_end,
            committed,
        }
    }

    #[test]
    fn new_group_on_earliest_counts_from_the_low_watermark() {
        // 1000 records written, the first 600 deleted by retention.
        assert_eq!(part(600, 1000, None).lag(StartFrom::Earliest), 400);
    }

    #[test]
    fn new_group_on_latest_has_no_lag() {
        assert_eq!(part(600, 1000, None).lag(StartFrom::Latest), 0);
    }

    #[test]
    fn committed_offset_behind_retention_is_reset_by_policy() {
        assert_eq!(part(600, 1000, Some(100)).lag(StartFrom::Earliest), 400);
        assert_eq!(part(600, 1000, Some(100)).lag(StartFrom::Latest), 0);
        assert_eq!(part(600, 1000, Some(700)).lag(StartFrom::Latest), 300);
    }

    #[test]
    fn nonsense_offsets_do_not_underflow() {
        assert_eq!(part(5, -3, Some(-1001)).lag(StartFrom::Earliest), 0);
        assert_eq!(part(900, 100, Some(50)).lag(StartFrom::Earliest), 0);
        assert_eq!(part(0, 100, Some(500)).lag(StartFrom::Earliest), 100);
    }
}
