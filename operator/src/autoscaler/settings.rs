//! The scaling settings of one pipeline, parsed and checked once.

use std::time::Duration;

use sluice_crds::pipeline::{Scaling, StartFrom};

/// What the autoscaler needs from a Pipeline's spec, with durations parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingSettings {
    /// Fewest replicas; 0 lets an idle pipeline scale to zero.
    pub min_replicas: u32,
    /// Most replicas (the input partition count caps it further).
    pub max_replicas: u32,
    /// The backlog should drain within this time.
    pub lag_target: Duration,
    /// Scale down only after the smaller count has been enough for this long.
    pub scale_down_stabilization: Duration,
    /// With `min_replicas == 0`: scale to zero after no records arrived and lag was zero
    /// for this long.
    pub idle_after: Duration,
    /// Where a group with no committed offset starts reading (and where the consumer
    /// resets to when its committed offset fell out of the log).
    pub start_from: StartFrom,
    /// How often the processor commits offsets: lag below a couple of commit intervals
    /// is records in flight, not a backlog.
    pub commit_interval: Duration,
}

/// A scaling setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A replica bound below zero.
    #[error("scaling.{field} is {value}: it must not be negative")]
    Negative {
        /// The field, as written in the manifest.
        field: &'static str,
        /// Its value.
        value: i32,
    },
    /// `maxReplicas` is zero.
    #[error("scaling.maxReplicas must be at least 1")]
    MaxZero,
    /// `minReplicas` above `maxReplicas`.
    #[error("scaling.minReplicas ({min}) exceeds scaling.maxReplicas ({max})")]
    MinAboveMax {
        /// minReplicas.
        min: i32,
        /// maxReplicas.
        max: i32,
    },
    /// A duration that does not parse.
    #[error("{field} {value:?} is not a duration (like 30s or 2m): {source}")]
    Duration {
        /// The field, as written in the manifest.
        field: &'static str,
        /// Its value.
        value: String,
        /// What the parser said.
        #[source]
        source: humantime::DurationError,
    },
    /// A lag target of zero cannot be met by any number of replicas.
    #[error("scaling.lagTarget must be longer than zero")]
    ZeroLagTarget,
}

impl ScalingSettings {
    /// Parses a Pipeline's `spec.scaling`, `spec.startFrom` and `spec.commitInterval`.
    pub fn from_spec(
        scaling: &Scaling,
        start_from: StartFrom,
        commit_interval: &str,
    ) -> Result<Self, SettingsError> {
        let min_replicas = non_negative("minReplicas", scaling.min_replicas)?;
        let max_replicas = non_negative("maxReplicas", scaling.max_replicas)?;
        if max_replicas == 0 {
            return Err(SettingsError::MaxZero);
        }
        if min_replicas > max_replicas {
            return Err(SettingsError::MinAboveMax {
                min: scaling.min_replicas,
                max: scaling.max_replicas,
            });
        }
        let lag_target = duration("scaling.lagTarget", &scaling.lag_target)?;
        if lag_target.is_zero() {
            return Err(SettingsError::ZeroLagTarget);
        }
        Ok(Self {
            min_replicas,
            max_replicas,
            lag_target,
            scale_down_stabilization: duration(
                "scaling.scaleDownStabilization",
                &scaling.scale_down_stabilization,
            )?,
            idle_after: duration("scaling.idleAfter", &scaling.idle_after)?,
            start_from,
            commit_interval: duration("commitInterval", commit_interval)?,
        })
    }
}

fn non_negative(field: &'static str, value: i32) -> Result<u32, SettingsError> {
    u32::try_from(value).map_err(|_| SettingsError::Negative { field, value })
}

fn duration(field: &'static str, value: &str) -> Result<Duration, SettingsError> {
    humantime::parse_duration(value).map_err(|source| SettingsError::Duration {
        field,
        value: value.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let s =
            ScalingSettings::from_spec(&Scaling::default(), StartFrom::Earliest, "100ms").unwrap();
        assert_eq!(s.min_replicas, 1);
        assert_eq!(s.max_replicas, 10);
        assert_eq!(s.lag_target, Duration::from_secs(30));
        assert_eq!(s.scale_down_stabilization, Duration::from_secs(120));
        assert_eq!(s.idle_after, Duration::from_secs(300));
        assert_eq!(s.commit_interval, Duration::from_millis(100));
    }

    #[test]
    fn bad_values_are_refused_with_the_field_name() {
        let mut scaling = Scaling {
            lag_target: "soon".into(),
            ..Scaling::default()
        };
        let err = ScalingSettings::from_spec(&scaling, StartFrom::Earliest, "1s").unwrap_err();
        assert!(
            err.to_string().contains("scaling.lagTarget \"soon\""),
            "{err}"
        );

        scaling.lag_target = "0s".into();
        let err = ScalingSettings::from_spec(&scaling, StartFrom::Earliest, "1s").unwrap_err();
        assert!(matches!(err, SettingsError::ZeroLagTarget));

        scaling.lag_target = "30s".into();
        scaling.min_replicas = 5;
        scaling.max_replicas = 2;
        let err = ScalingSettings::from_spec(&scaling, StartFrom::Earliest, "1s").unwrap_err();
        assert!(matches!(err, SettingsError::MinAboveMax { min: 5, max: 2 }));

        scaling.min_replicas = -1;
        let err = ScalingSettings::from_spec(&scaling, StartFrom::Earliest, "1s").unwrap_err();
        assert!(err.to_string().contains("minReplicas is -1"), "{err}");
    }
}
