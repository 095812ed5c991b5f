//! The decision: how many replicas one pipeline should run now.

use std::collections::VecDeque;
use std::time::Duration;

use humantime::format_duration;

use super::cost::ChangeCost;
use super::history::{History, Load, Rates};
use super::observation::{Observation, PartitionId};
use super::settings::ScalingSettings;
use super::sizing::{Demand, Sizing, TARGET_UTILIZATION, size};

/// Consumption rate for the status, and the steady part of the arrival rate.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Arrival rate that sees a surge within a few ticks.
const SHORT_RATE_WINDOW: Duration = Duration::from_secs(15);
/// How much history is kept.
const HISTORY: Duration = Duration::from_secs(120);
/// Weight of a new capacity measurement against the remembered estimate.
const CAPACITY_WEIGHT: f64 = 0.5;
/// How long to wait for new replicas to become ready before deciding without them.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Lag and rates, for the Pipeline's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LagMetrics {
    /// Records waiting across all input partitions.
    pub total_lag: u64,
    /// Records waiting on the most behind partition.
    pub max_partition_lag: u64,
    /// The most behind partition, when any partition is behind.
    pub worst_partition: Option<PartitionId>,
    /// Records consumed per second over the last minute.
    pub records_per_second: f64,
    /// Records appended per second over the last minute.
    pub arrival_per_second: f64,
    /// Records per second one replica was measured to consume when it had a backlog.
    pub capacity_per_replica: Option<f64>,
}

/// What the autoscaler decided at one tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Replicas the pipeline should run.
    pub replicas: u32,
    /// Replicas it ran when observed.
    pub previous: u32,
    /// `replicas != previous`.
    pub changed: bool,
    /// Why, in a sentence with the numbers.
    pub reason: String,
    /// Lag and rates behind the decision.
    pub metrics: LagMetrics,
}

/// A proposal before bounds and stabilization.
struct Plan {
    replicas: u32,
    reason: String,
    /// Applies at once, even when it lowers the count (bounds, scale to zero).
    immediate: bool,
}

impl Plan {
    fn recommend(replicas: u32, reason: String) -> Self {
        Self {
            replicas,
            reason,
            immediate: false,
        }
    }
    fn now(replicas: u32, reason: String) -> Self {
        Self {
            replicas,
            reason,
            immediate: true,
        }
    }
}

/// The lag autoscaler of one pipeline: feed it one [`Observation`] per tick, apply the
/// [`Decision`]. Pure: no I/O and no clock; time comes in with each observation.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    settings: ScalingSettings,
    history: History,
    capacity: Option<f64>,
    recommendations: VecDeque<(Duration, u32)>,
    first_seen: Option<Duration>,
    last_activity: Option<Duration>,
    last_change: Option<Duration>,
    unready_since: Option<Duration>,
    cost: ChangeCost,
}

impl Autoscaler {
    /// A scaler with no history.
    pub fn new(settings: ScalingSettings) -> Self {
        Self {
            settings,
            history: History::new(HISTORY),
            capacity: None,
            recommendations: VecDeque::new(),
            first_seen: None,
            last_activity: None,
            last_change: None,
            unready_since: None,
            cost: ChangeCost::new(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ScalingSettings {
        &self.settings
    }

    /// Takes new settings (the spec changed), keeping the history and what was learnt.
    pub fn set_settings(&mut self, settings: ScalingSettings) {
        self.settings = settings;
    }

    /// Records per second one replica consumes, as last measured under a backlog.
    pub fn capacity_per_replica(&self) -> Option<f64> {
        self.capacity
    }

    /// Takes one reading and decides the replica count.
    pub fn observe(&mut self, obs: &Observation) -> Decision {
        if self.history.latest().is_some_and(|s| obs.now < s.at) {
            // The clock's origin changed: what was measured cannot be compared.
            self.history.clear();
            self.recommendations.clear();
            self.first_seen = None;
            self.last_activity = None;
            self.last_change = None;
            self.unready_since = None;
            self.cost.reset_pending();
        }
        self.history.push(obs, self.settings.start_from);
        self.cost.observe(obs);
        self.first_seen.get_or_insert(obs.now);

        let load = self.history.load(self.backlog_secs());
        if let Load::Saturated { per_replica, exact } = load {
            self.capacity = Some(match self.capacity {
                Some(c) if exact => c + CAPACITY_WEIGHT * (per_replica - c),
                // A floor only ever raises the estimate (replicas that were not all
                // behind did less than they could), and as smoothly as a measurement:
                // one interval's bunched commits must not ratchet it up.
                Some(c) => c + CAPACITY_WEIGHT * (per_replica.max(c) - c),
                None => per_replica,
            });
        }
        let long = self.history.rates(RATE_WINDOW);
        let short = self.history.rates(SHORT_RATE_WINDOW);
        let metrics = self.metrics(&long);
        let demand = self.demand(&short, &long);

        if self.last_activity.is_none()
            || metrics.total_lag > 0
            || self.history.arrived_last_interval()
        {
            self.last_activity = Some(obs.now);
        }
        if obs.ready_replicas < obs.replicas {
            self.unready_since.get_or_insert(obs.now);
        } else {
            self.unready_since = None;
        }

        let plan = self.plan(obs, &load, &metrics, &demand, &short, &long);
        let (replicas, reason) = self.stabilize(obs, plan);
        let changed = replicas != obs.replicas;
        if changed {
            self.last_change = Some(obs.now);
            if replicas > obs.replicas {
                self.cost.scaled_up(obs.now);
            }
        }
        Decision {
            replicas,
            previous: obs.replicas,
            changed,
            reason,
            metrics,
        }
    }

    /// Lag below this many seconds of a partition's own traffic is records in flight
    /// between commits, not a backlog.
    fn backlog_secs(&self) -> f64 {
        (2.0 * self.settings.commit_interval.as_secs_f64()).max(2.0)
    }

    fn metrics(&self, long: &Rates) -> LagMetrics {
        let Some(latest) = self.history.latest() else {
            return LagMetrics::default();
        };
        let worst = latest.worst().filter(|(_, lag)| *lag > 0);
        LagMetrics {
            total_lag: latest.total_lag(),
            max_partition_lag: worst.map_or(0, |(_, lag)| lag),
            worst_partition: worst.map(|(id, _)| id.clone()),
            records_per_second: long.consumption,
            arrival_per_second: long.arrival,
            capacity_per_replica: self.capacity,
        }
    }

    /// Per partition: arrivals (the higher of the medians over the last 15 s and the
    /// last minute, so a surge counts within two readings and a one-off batch, already in
    /// the lag, does not count twice) plus the backlog spread over the lag target.
    fn demand(&self, short: &Rates, long: &Rates) -> Demand {
        let Some(latest) = self.history.latest() else {
            return Demand::default();
        };
        let target = self.settings.lag_target.as_secs_f64().max(f64::EPSILON);
        let rate = |rates: &Rates, id: &PartitionId| {
            rates.arrival_by_partition.get(id).copied().unwrap_or(0.0)
        };
        let mut arrivals = Vec::with_capacity(latest.parts.len());
        let by_partition = latest
            .parts
            .iter()
            .map(|(id, p)| {
                let rate = rate(short, id).max(rate(long, id));
                arrivals.push(rate);
                (id.clone(), rate + p.lag as f64 / target)
            })
            .collect();
        Demand {
            by_partition,
            arrival: arrivals.iter().sum(),
            arrivals,
        }
    }

    fn plan(
        &self,
        obs: &Observation,
        load: &Load,
        metrics: &LagMetrics,
        demand: &Demand,
        short: &Rates,
        long: &Rates,
    ) -> Plan {
        let current = obs.replicas;
        let lag = metrics.total_lag;
        let arrival = demand.arrival;
        if obs.rebalancing {
            return Plan::recommend(
                current,
                format!("consumer group is rebalancing: holding {}", count(current)),
            );
        }
        if obs.partitions.is_empty() {
            return Plan::recommend(
                current,
                format!("no input partitions seen: holding {}", count(current)),
            );
        }
        let (lower, upper) = self.bounds(obs);
        if current > upper {
            return Plan::now(upper, format!("{} is above the limit", count(current)));
        }
        if current < lower {
            return Plan::now(lower, format!("{} is below minReplicas", count(current)));
        }

        let idle_for = obs
            .now
            .saturating_sub(self.last_activity.unwrap_or(obs.now));
        if current > 0
            && self.settings.min_replicas == 0
            && lag == 0
            && idle_for >= self.settings.idle_after
        {
            return Plan::now(
                0,
                format!(
                    "no records arrived and no lag for {}: scaling to zero",
                    format_duration(whole_secs(idle_for))
                ),
            );
        }
        if let Some(changed_at) = self.last_change.filter(|_| current > 0) {
            let since = obs.now.saturating_sub(changed_at);
            if since < SETTLE_TIMEOUT && !self.history.settled_since(changed_at) {
                if let Some(plan) = self.surge(current, demand, lag) {
                    return plan;
                }
                return Plan::recommend(
                    current,
                    format!(
                        "waiting for the change to {} to take effect ({} of {current} ready)",
                        count(current),
                        obs.ready_replicas
                    ),
                );
            }
        }
        if current > 0 && obs.ready_replicas < current {
            let waiting = self
                .unready_since
                .map_or(Duration::ZERO, |since| obs.now.saturating_sub(since));
            if waiting < SETTLE_TIMEOUT {
                if let Some(plan) = self.surge(current, demand, lag) {
                    return plan;
                }
                return Plan::recommend(
                    current,
                    format!(
                        "waiting for replicas to start: {} of {current} ready",
                        obs.ready_replicas
                    ),
                );
            }
        }

        let active = lag > 0 || short.any_arrival || long.any_arrival;
        if !active {
            let mut reason = format!(
                "no records arriving and no lag for {}",
                format_duration(whole_secs(idle_for))
            );
            if self.settings.min_replicas == 0 && current > 0 {
                reason.push_str(&format!(
                    " (zero after {})",
                    format_duration(self.settings.idle_after)
                ));
            }
            return Plan::recommend(current.min(1), reason);
        }
        if current == 0 {
            // Records keep arriving while the first replica starts. Right after a quiet
            // spell the medians are still zero: the mean of the last 15 s says more.
            let recent = short.arrival.max(demand.arrival);
            let starting = recent * self.cost.delay_secs();
            let n = self
                .capacity
                .map_or(1, |c| {
                    let demand = demand.plus_arriving(starting, self.target_secs());
                    size(&demand, c, TARGET_UTILIZATION).replicas
                })
                .max(1);
            return Plan::now(
                n,
                format!("records arrived (lag {lag}, arrival {recent:.0}/s): waking to {n}"),
            );
        }

        if let Load::Rising { per_replica_floor } = *load
            && let Some(plan) = self.rising(current, demand, lag, per_replica_floor)
        {
            return plan;
        }
        match (load.behind(), self.capacity) {
            (true, Some(c)) => {
                // Up only when the current count cannot do it even flat out; then size
                // with headroom. The gap is the hysteresis that stops flapping.
                if size(demand, c, 1.0).replicas > current {
                    let (n, reason) = self.up(current, demand, lag, c);
                    Plan::now(n, reason)
                } else {
                    Plan::recommend(
                        current,
                        format!(
                            "lag {lag} records, draining {c:.0}/s per replica, arrival \
                             {arrival:.0}/s: {}",
                            self.drains(current, lag, arrival, c)
                        ),
                    )
                }
            }
            (true, None) => {
                let since = obs
                    .now
                    .saturating_sub(self.last_change.or(self.first_seen).unwrap_or(obs.now));
                if *load == Load::Stalled && since >= self.settings.lag_target {
                    let n = current.saturating_mul(2);
                    Plan::now(
                        n,
                        format!(
                            "lag {lag} records and nothing consumed for {}: capacity unknown, \
                             doubling to {n}",
                            format_duration(whole_secs(since))
                        ),
                    )
                } else {
                    Plan::recommend(
                        current,
                        format!(
                            "lag {lag} records: measuring what one replica consumes before \
                             sizing"
                        ),
                    )
                }
            }
            (false, known) => {
                // Keeping up. What the replicas consume now is a floor on what they can.
                let floor = if obs.ready_replicas > 0 {
                    long.consumption / f64::from(obs.ready_replicas)
                } else {
                    0.0
                };
                let c = known.unwrap_or(0.0).max(floor);
                // A smaller count runs at the target utilization, and must also drain,
                // flat out, what arrives while the rebalance of scaling down stops the
                // group: otherwise the change itself puts it behind and it scales back up.
                let pause = arrival * self.cost.pause_secs();
                let after_pause = demand.plus_arriving(pause, self.target_secs());
                let n = size(demand, c, TARGET_UTILIZATION)
                    .replicas
                    .max(size(&after_pause, c, 1.0).replicas)
                    .max(1);
                if c > 0.0 && n < current {
                    Plan::recommend(
                        n,
                        format!("lag {lag} records, arrival {arrival:.0}/s, {c:.0}/s per replica"),
                    )
                } else {
                    Plan::recommend(
                        current,
                        format!(
                            "keeping up: lag {lag} records, arrival {arrival:.0}/s with {}",
                            count(current)
                        ),
                    )
                }
            }
        }
    }

    /// While a change settles, lag grows for reasons that pass (replicas starting, the
    /// rebalance), so only a rise in arrivals alone beyond what the replicas asked for
    /// can take, flat out, scales up again: it would stay behind whatever the lag does.
    fn surge(&self, current: u32, demand: &Demand, lag: u64) -> Option<Plan> {
        let c = self.capacity?;
        if size(&demand.arrivals_only(), c, 1.0).replicas <= current {
            return None;
        }
        let (n, reason) = self.up(current, demand, lag, c);
        Some(Plan::now(
            n,
            format!("arrivals alone outgrow {}: {reason}", count(current)),
        ))
    }

    /// A backlog appeared since the last reading, so the interval cannot measure what a
    /// replica does flat out. With a capacity learnt before, it scales up as when behind.
    /// Without one it does not wait a reading to measure when the backlog alone (arrivals
    /// aside) is more than the replicas could drain within the lag target at the rate
    /// they just consumed: that rate is a floor on their capacity, so sizing with it errs
    /// towards more replicas, never fewer. A smaller backlog may be a pause (a slow
    /// commit, a collection); the next reading measures.
    fn rising(&self, current: u32, demand: &Demand, lag: u64, floor: f64) -> Option<Plan> {
        let c = self.capacity.unwrap_or(floor);
        if c.is_nan() || c <= 0.0 || size(demand, c, 1.0).replicas <= current {
            return None;
        }
        if self.capacity.is_some() {
            let (n, reason) = self.up(current, demand, lag, c);
            return Some(Plan::now(n, reason));
        }
        let drain_secs = lag as f64 / (floor * f64::from(current.max(1)));
        if drain_secs <= self.target_secs() {
            return None;
        }
        let (n, reason) = self.up(current, demand, lag, floor);
        Some(Plan::now(
            n,
            format!(
                "a backlog appeared since the last reading, before a replica's capacity was \
                 measured; {floor:.0}/s per replica consumed meanwhile is taken as a floor: \
                 {reason}"
            ),
        ))
    }

    /// Scales up from `current` for `demand` at `c` records/s per replica, with headroom,
    /// counting what arrives before the new replicas consume (the backlog grows while
    /// they start, and the rebalance stops everyone for a moment).
    fn up(&self, current: u32, demand: &Demand, lag: u64, c: f64) -> (u32, String) {
        let arrival = demand.arrival;
        let extra = (arrival - f64::from(current) * c).max(0.0) * self.cost.delay_secs()
            + arrival * self.cost.pause_secs();
        let sizing = size(
            &demand.plus_arriving(extra, self.target_secs()),
            c,
            TARGET_UTILIZATION,
        );
        let n = sizing.replicas.max(current.saturating_add(1));
        (n, self.explain(&sizing, n, lag, arrival, c, extra))
    }

    fn target_secs(&self) -> f64 {
        self.settings.lag_target.as_secs_f64()
    }

    fn explain(
        &self,
        sizing: &Sizing,
        n: u32,
        lag: u64,
        arrival: f64,
        c: f64,
        extra: f64,
    ) -> String {
        let target = format_duration(self.settings.lag_target);
        let arriving = if extra >= 1.0 {
            format!(" (with the {extra:.0} records arriving while they start)")
        } else {
            String::new()
        };
        let mut reason =
            format!("lag {lag} records, draining {c:.0}/s per replica, arrival {arrival:.0}/s: ");
        match &sizing.hot {
            None => reason.push_str(&format!("{}{arriving}", self.drains(n, lag, arrival, c))),
            Some((id, hot, _)) => reason.push_str(&format!(
                "{} carry the total within {target}{arriving}, but partition {id} alone needs \
                 {hot:.0}/s, so {} keep the one reading it from falling behind",
                count(sizing.total.max(1)),
                count(n)
            )),
        }
        reason
    }

    /// "3 replicas drain it within 30s", or, when `n` replicas at `c` records/s each
    /// cannot (past one replica per partition more do not help), how long they take:
    /// the reason never promises the target it cannot meet.
    fn drains(&self, n: u32, lag: u64, arrival: f64, c: f64) -> String {
        let target = format_duration(self.settings.lag_target);
        let rate = f64::from(n) * c - arrival;
        let drain = (rate > 0.0)
            .then(|| Duration::try_from_secs_f64(lag as f64 / rate).ok())
            .flatten();
        match drain {
            Some(d) if d.as_secs_f64() > self.target_secs() * 1.01 => format!(
                "{} drain it in about {} at best (a partition is read by one replica at a \
                 time), longer than the {target} target",
                count(n),
                format_duration(Duration::from_secs(d.as_secs().saturating_add(1)))
            ),
            _ => format!("{} drain it within {target}", count(n)),
        }
    }

    /// Replica bounds: `[min, max]`, never above the input partition count (a partition
    /// is read by one replica; more would idle). When `minReplicas` exceeds the
    /// partitions, the partitions win.
    fn bounds(&self, obs: &Observation) -> (u32, u32) {
        let partitions = self
            .history
            .latest()
            .map_or(obs.partitions.len(), |s| s.partition_count());
        let partitions = u32::try_from(partitions).unwrap_or(u32::MAX);
        let upper = self.settings.max_replicas.min(partitions);
        (self.settings.min_replicas.min(upper), upper)
    }

    /// Clamps a plan to the bounds and applies the scale-down stabilization window: a
    /// lower count is applied only once every recommendation over the window was at most
    /// that count (the highest of them is used, as HPA does).
    fn stabilize(&mut self, obs: &Observation, plan: Plan) -> (u32, String) {
        let current = obs.replicas;
        if obs.rebalancing || obs.partitions.is_empty() {
            self.remember(obs.now, current);
            return (current, plan.reason);
        }
        let (lower, upper) = self.bounds(obs);
        let rec = plan.replicas.clamp(lower, upper);
        let mut reason = plan.reason;
        if plan.replicas > upper {
            reason.push_str(&format!(
                " (capped at {upper}: {} input partitions, maxReplicas {})",
                self.history
                    .latest()
                    .map_or(obs.partitions.len(), |s| s.partition_count()),
                self.settings.max_replicas
            ));
        } else if plan.replicas < lower {
            reason.push_str(&format!(" (minReplicas {lower})"));
        }
        self.remember(obs.now, rec);
        if rec >= current || plan.immediate {
            return (rec, reason);
        }
        let window = self.settings.scale_down_stabilization;
        let covered = self
            .recommendations
            .front()
            .is_some_and(|(at, _)| obs.now.saturating_sub(*at) >= window);
        let highest = self
            .recommendations
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(current);
        let window = format_duration(window);
        if covered && highest < current {
            let held = if highest > rec {
                format!(
                    "{} would do now, but {} were needed within the last {window}",
                    count(rec),
                    count(highest)
                )
            } else {
                let verb = if rec == 1 { "has" } else { "have" };
                format!("{} {verb} been enough for {window}", count(rec))
            };
            (highest, format!("{reason}: {held}"))
        } else {
            (
                current,
                format!(
                    "{reason}: {} would do; scaling down waits for the {window} \
                     stabilization window",
                    count(rec)
                ),
            )
        }
    }

    /// Keeps recommendations covering the stabilization window, plus the one just before
    /// it (so "covered" means a full window of evidence).
    fn remember(&mut self, now: Duration, replicas: u32) {
        self.recommendations.push_back((now, replicas));
        let window = self.settings.scale_down_stabilization;
        while self.recommendations.len() > 1
            && self
                .recommendations
                .get(1)
                .is_some_and(|(at, _)| now.saturating_sub(*at) >= window)
        {
            self.recommendations.pop_front();
        }
    }
}

/// "1 replica", "3 replicas".
fn count(n: u32) -> String {
    if n == 1 {
        "1 replica".to_string()
    } else {
        format!("{n} replicas")
    }
}

fn whole_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
