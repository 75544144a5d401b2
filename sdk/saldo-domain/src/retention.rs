//! Retention horizons (ADR 0015): how long inbox receipts and idempotency
//! records are kept, which of them a host may purge, and whether a consumer
//! may start with its inbox horizon against its topics' retention.
//!
//! - An **inbox receipt** may be purged once it is older than the inbox
//!   horizon ([`Horizons::inbox_ms`], by default [`INBOX_RETENTION_MS`]).
//!   A consumer refuses to start when that horizon is shorter than the
//!   retention of a topic it consumes ([`check_inbox_horizon`]): a message
//!   the broker can still redeliver then always finds its receipt. Past the
//!   horizon, each decider absorbs a redelivery from the effect it recorded
//!   per order.
//! - An **idempotency record** may be purged once its own `expires_at`
//!   passed ([`IDEMPOTENCY_RETENTION_MS`] after it was written). A retry
//!   after that finds what the first request did through ids derived from
//!   the key: a top-up its posting, an order placement its order id.
//!
//! The rules live here; hosts only delete what [`Horizons`] names, at most
//! [`PURGE_BATCH_MAX`] rows per statement and [`PURGE_ROUNDS_MAX`]
//! statements per table and round, so a purge never holds a long
//! transaction or starves the service's own writes.

use saldo_idempotency::IdempotencyRecord;
use saldo_types::Timestamp;

pub use crate::inbox::INBOX_RETENTION_MS;
pub use crate::order::IDEMPOTENCY_RETENTION_MS;

/// The most rows one purge statement deletes.
pub const PURGE_BATCH_MAX: u32 = 1_000;
/// The most purge statements per table in one round; what is left waits
/// for the next round.
pub const PURGE_ROUNDS_MAX: u32 = 20;
/// How often a service purges, in milliseconds (every 10 minutes).
pub const PURGE_INTERVAL_MS: u64 = 600_000;

/// What a host keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizons {
    /// How long an inbox receipt is kept after the message was received.
    pub inbox_ms: u64,
}

impl Default for Horizons {
    fn default() -> Self {
        Horizons {
            inbox_ms: INBOX_RETENTION_MS,
        }
    }
}

impl Horizons {
    /// Receipts received strictly before this instant may be purged at `now`.
    pub fn inbox_cutoff(&self, now: Timestamp) -> Timestamp {
        Timestamp::from_unix_ms(now.unix_ms().saturating_sub(self.inbox_ms))
    }

    /// Whether a receipt received at `received_at` may be purged at `now`.
    pub fn receipt_purgeable(&self, received_at: Timestamp, now: Timestamp) -> bool {
        received_at < self.inbox_cutoff(now)
    }

    /// Whether an idempotency record may be purged at `now`: its own
    /// retention has passed.
    pub fn record_purgeable<O>(&self, record: &IdempotencyRecord<O>, now: Timestamp) -> bool {
        now >= record.expires_at
    }
}

/// How long a broker keeps a topic's messages, as far as it could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRetention {
    /// `retention.ms` of the topic.
    Finite {
        /// Milliseconds.
        retention_ms: u64,
    },
    /// `retention.ms = -1`: messages are kept forever.
    Unlimited,
    /// The broker did not answer (librdkafka's mock cluster has no
    /// DescribeConfigs); the operator's stated retention stands in.
    Unknown,
}

/// Why a consumer may not start with its inbox horizon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HorizonError {
    /// The horizon is shorter than a topic's retention.
    #[error(
        "inbox horizon {horizon_ms} ms is shorter than the retention of topic {topic} ({retention_ms} ms); raise --inbox-horizon"
    )]
    ShorterThanTopic {
        /// The topic.
        topic: String,
        /// The configured horizon.
        horizon_ms: u64,
        /// The topic's `retention.ms`.
        retention_ms: u64,
    },
    /// The broker could not say; the horizon is shorter than the stated retention.
    #[error(
        "inbox horizon {horizon_ms} ms is shorter than --topic-retention {assumed_ms} ms, which stands in for topic {topic} (the broker did not report its retention.ms)"
    )]
    ShorterThanStated {
        /// The topic.
        topic: String,
        /// The configured horizon.
        horizon_ms: u64,
        /// The stated retention.
        assumed_ms: u64,
    },
    /// The topic keeps messages forever, so no horizon covers it.
    #[error(
        "topic {topic} keeps messages forever (retention.ms=-1), so no inbox horizon covers it; give it a finite retention.ms"
    )]
    TopicUnlimited {
        /// The topic.
        topic: String,
    },
}

/// Checks the inbox horizon against every consumed topic, in order; the
/// first topic that breaks the rule is reported. `stated_retention_ms`
/// stands in for a topic whose retention is [`TopicRetention::Unknown`].
/// Returns the topics that were checked against the stated retention, so
/// the host can warn about them.
pub fn check_inbox_horizon<'a>(
    horizons: &Horizons,
    stated_retention_ms: u64,
    topics: &'a [(String, TopicRetention)],
) -> Result<Vec<&'a str>, HorizonError> {
    let horizon_ms = horizons.inbox_ms;
    let mut unknown = Vec::new();
    for (topic, retention) in topics {
        match *retention {
            TopicRetention::Finite { retention_ms } if horizon_ms < retention_ms => {
                return Err(HorizonError::ShorterThanTopic {
                    topic: topic.clone(),
                    horizon_ms,
                    retention_ms,
                });
            }
            TopicRetention::Finite { .. } => {}
            TopicRetention::Unlimited => {
                return Err(HorizonError::TopicUnlimited {
                    topic: topic.clone(),
                });
            }
            TopicRetention::Unknown if horizon_ms < stated_retention_ms => {
                return Err(HorizonError::ShorterThanStated {
                    topic: topic.clone(),
                    horizon_ms,
                    assumed_ms: stated_retention_ms,
                });
            }
            TopicRetention::Unknown => unknown.push(topic.as_str()),
        }
    }
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const DAY_MS: u64 = 24 * 3_600_000;

    fn topics(retention: TopicRetention) -> Vec<(String, TopicRetention)> {
        vec![
            (
                "saldo.a".to_owned(),
                TopicRetention::Finite {
                    retention_ms: DAY_MS,
                },
            ),
            ("saldo.b".to_owned(), retention),
        ]
    }

    #[rstest]
    #[case::equal(TopicRetention::Finite { retention_ms: 7 * DAY_MS }, Ok(vec![]))]
    #[case::shorter_than_topic(TopicRetention::Finite { retention_ms: 7 * DAY_MS + 1 }, Err(HorizonError::ShorterThanTopic { topic: "saldo.b".to_owned(), horizon_ms: 7 * DAY_MS, retention_ms: 7 * DAY_MS + 1 }))]
    #[case::unlimited(TopicRetention::Unlimited, Err(HorizonError::TopicUnlimited { topic: "saldo.b".to_owned() }))]
    #[case::unknown_within_stated(TopicRetention::Unknown, Ok(vec!["saldo.b"]))]
    fn the_inbox_horizon_must_cover_every_consumed_topic(
        #[case] retention: TopicRetention,
        #[case] expected: Result<Vec<&str>, HorizonError>,
    ) {
        // Proves each topic retention is judged against the horizon, the
        // unknown one against the stated retention.
        let topics = topics(retention);
        assert_eq!(
            check_inbox_horizon(&Horizons::default(), 7 * DAY_MS, &topics),
            expected
        );
    }

    #[test]
    fn an_unknown_retention_is_judged_by_the_stated_one() {
        // Proves a horizon shorter than the operator's stated retention is
        // refused when the broker cannot report the topic's own.
        let topics = topics(TopicRetention::Unknown);
        let horizons = Horizons { inbox_ms: DAY_MS };
        assert_eq!(
            check_inbox_horizon(&horizons, 2 * DAY_MS, &topics),
            Err(HorizonError::ShorterThanStated {
                topic: "saldo.b".to_owned(),
                horizon_ms: DAY_MS,
                assumed_ms: 2 * DAY_MS,
            })
        );
    }

    #[test]
    fn receipts_are_purgeable_only_past_the_horizon() {
        // Proves the cutoff is strict and saturates near the epoch.
        let horizons = Horizons { inbox_ms: 1_000 };
        let now = Timestamp::from_unix_ms(10_000);
        assert!(horizons.receipt_purgeable(Timestamp::from_unix_ms(8_999), now));
        assert!(!horizons.receipt_purgeable(Timestamp::from_unix_ms(9_000), now));
        assert_eq!(
            horizons.inbox_cutoff(Timestamp::from_unix_ms(10)),
            Timestamp::from_unix_ms(0)
        );
    }
}
