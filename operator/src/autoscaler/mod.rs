//! The lag autoscaler's decision core: from offsets read each tick to a replica count
//! and the sentence that explains it.
//!
//! Pure: no I/O and no clock (time comes in with each [`Observation`]), so the
//! controller does the reading and writing and this module can be tested and
//! benchmarked on its own.
//!
//! How it decides, per pipeline:
//! - Lag per partition is counted from where the group will read next: its committed
//!   offset, or, with none (or one that retention deleted), the start policy's position
//!   (`earliest`: the log start, so deleted records are not lag; `latest`: the log end).
//!   One record of lag on a partition whose log end did not move is a transaction
//!   marker, not work.
//! - Rates come from offset deltas over a short ring of readings: arrivals from log
//!   ends, consumption from committed offsets. When a partition holds more than a
//!   couple of seconds of its own traffic at both ends of an interval, the replicas
//!   reading it worked flat out: that measures one replica's capacity.
//! - Replicas are sized so each partition's backlog drains within the lag target while
//!   keeping up with arrivals (median rates, so a one-off batch is not also counted as a
//!   lasting rate), at 90% of the measured capacity, a partition counting for one
//!   replica at most, and the replica reading the hottest partition not overloaded. The
//!   records that arrive while new replicas start and the group rebalances are counted
//!   too; both delays are measured.
//! - Up at once, but only when the current count cannot meet the target even flat out;
//!   down only when the lower count was enough over the whole stabilization window and
//!   can absorb its own rebalance. The band between the two stops flapping. Hold during
//!   rebalances and until a change has taken effect (unless arrivals alone outgrow the
//!   count asked for). A backlog that appeared since the last reading is sized at once
//!   with the capacity known, or, before any measurement, with what the replicas just
//!   consumed as a floor when the backlog is more than they drain within the lag target;
//!   otherwise, without a capacity, wait one reading to measure; if nothing is consumed
//!   at all, double stepwise. A measurement with only some partitions behind is a floor
//!   too: it can raise the capacity, never lower it.
//! - To zero after `idleAfter` with no arrivals and no lag (when `minReplicas` is 0),
//!   and back as soon as a record arrives.
//! - [`sim`] replays load traces through this and through a model of KEDA's Kafka
//!   scaler with HPA (the `scaling-bench` binary).

mod cost;
mod history;
mod observation;
mod scaler;
mod settings;
pub mod sim;
mod sizing;

pub use observation::{Observation, PartitionId, PartitionOffsets};
pub use scaler::{Autoscaler, Decision, LagMetrics};
pub use settings::{ScalingSettings, SettingsError};

#[cfg(test)]
mod tests;
