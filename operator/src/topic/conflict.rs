//! Which Topic resource owns a Kafka topic when several name it: the oldest. Pure.
//!
//! Creation times have one-second resolution, so two resources made in the same second tie;
//! then the one already managing the topic keeps it, and only then does the uid decide.

use k8s_openapi::jiff::Timestamp;
use sluice_crds::Topic;

/// One resource's claim on a Kafka topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`.
    pub key: String,
    /// The resource's uid (breaks ties between equal creation times).
    pub uid: String,
    /// When the resource was created; a claim without a time sorts last.
    pub created: Option<Timestamp>,
    /// The resource already manages the topic (its status names it, and not as a conflict).
    pub managing: bool,
}

impl Claim {
    /// The claim of `topic`.
    pub fn of(topic: &Topic) -> Self {
        Self {
            key: format!(
                "{}/{}",
                topic.metadata.namespace.as_deref().unwrap_or_default(),
                topic.metadata.name.as_deref().unwrap_or_default()
            ),
            uid: topic.metadata.uid.clone().unwrap_or_default(),
            created: topic.metadata.creation_timestamp.as_ref().map(|t| t.0),
            managing: topic.status.as_ref().is_some_and(|s| {
                s.topic_name.as_deref() == Some(topic.kafka_name().as_str())
                    && !s.conditions.iter().any(|c| c.reason == "ResourceConflict")
            }),
        }
    }

    fn order(&self) -> (bool, Option<Timestamp>, bool, &str, &str) {
        (
            self.created.is_none(),
            self.created,
            !self.managing,
            &self.uid,
            &self.key,
        )
    }
}

/// The owning claim: the oldest by creation time, then by uid.
pub fn owner<'a>(claims: impl IntoIterator<Item = &'a Claim>) -> Option<&'a Claim> {
    claims.into_iter().min_by(|a, b| a.order().cmp(&b.order()))
}

/// The owner of the Kafka topic `me` claims, when it is another resource.
pub fn other_owner<'a>(
    me: &Claim,
    claims: impl IntoIterator<Item = &'a Claim>,
) -> Option<&'a Claim> {
    owner(claims).filter(|o| o.key != me.key || o.uid != me.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(key: &str, uid: &str, secs: Option<i64>) -> Claim {
        Claim {
            key: key.into(),
            uid: uid.into(),
            created: secs.map(|s| Timestamp::from_second(s).unwrap()),
            managing: false,
        }
    }

    #[test]
    fn in_the_same_second_the_one_already_managing_keeps_the_topic() {
        let mut first = claim("ns/first", "zzz", Some(100));
        first.managing = true;
        let second = claim("ns/second", "aaa", Some(100));
        let claims = [first.clone(), second.clone()];
        assert_eq!(owner(&claims), Some(&first));
        assert_eq!(other_owner(&second, &claims), Some(&first));
        // An older resource still wins over one that manages the topic.
        let older = claim("ns/older", "zzz", Some(99));
        assert_eq!(owner(&[first, older.clone()]), Some(&older));
    }

    #[test]
    fn oldest_wins_across_namespaces() {
        let a = claim("team-a/orders", "u2", Some(200));
        let b = claim("team-b/orders", "u1", Some(100));
        let claims = [a.clone(), b.clone()];
        assert_eq!(owner(&claims), Some(&b));
        assert_eq!(other_owner(&a, &claims), Some(&b));
        assert_eq!(other_owner(&b, &claims), None);
    }

    #[test]
    fn equal_times_are_broken_by_uid_and_missing_times_lose() {
        let a = claim("ns/a", "bbb", Some(100));
        let b = claim("ns/b", "aaa", Some(100));
        let c = claim("ns/c", "000", None);
        let claims = [a.clone(), b.clone(), c.clone()];
        assert_eq!(owner(&claims), Some(&b));
        assert_eq!(
            other_owner(&c, &claims).map(|o| o.key.as_str()),
            Some("ns/b")
        );
    }

    #[test]
    fn a_lone_claim_owns() {
        let a = claim("ns/a", "u", Some(1));
        assert_eq!(other_owner(&a, [&a]), None);
        assert_eq!(owner(std::iter::empty()), None);
    }
}
