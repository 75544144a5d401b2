//! What a run simulates: the workload and the faults, as named profiles.

use serde::{Deserialize, Serialize};

/// Probabilities of each fault, in parts per million, drawn at the moment
/// the fault could happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// A published message lands on the broker twice.
    pub duplicate_ppm: u32,
    /// A consumer crashes after its commit and before its offset commit: the
    /// partition is redelivered from the last committed offset.
    pub crash_before_ack_ppm: u32,
    /// A service crashes after deciding and before committing: the decision is lost.
    pub crash_before_commit_ppm: u32,
    /// A service crashes right after committing, before its publisher runs:
    /// the outbox rows wait until it restarts.
    pub crash_before_publish_ppm: u32,
    /// The publisher crashes after publishing a batch and before marking it:
    /// the batch is published again.
    pub crash_after_publish_ppm: u32,
    /// A partition or a publisher stalls for a while (a slow broker or GC pause).
    pub stall_ppm: u32,
    /// The clock jumps forward by up to a minute.
    pub clock_jump_ppm: u32,
    /// The client sends its request again with the same idempotency key.
    pub client_retry_ppm: u32,
}

impl Faults {
    /// No faults at all.
    pub const NONE: Faults = Faults {
        duplicate_ppm: 0,
        crash_before_ack_ppm: 0,
        crash_before_commit_ppm: 0,
        crash_before_publish_ppm: 0,
        crash_after_publish_ppm: 0,
        stall_ppm: 0,
        clock_jump_ppm: 0,
        client_retry_ppm: 0,
    };

    /// Occasional trouble, as on a good day in production.
    pub const LIGHT: Faults = Faults {
        duplicate_ppm: 20_000,
        crash_before_ack_ppm: 5_000,
        crash_before_commit_ppm: 5_000,
        crash_before_publish_ppm: 5_000,
        crash_after_publish_ppm: 5_000,
        stall_ppm: 2_000,
        clock_jump_ppm: 500,
        client_retry_ppm: 20_000,
    };

    /// Frequent trouble: deadlines fire, retries and compensations are common.
    pub const HEAVY: Faults = Faults {
        duplicate_ppm: 100_000,
        crash_before_ack_ppm: 30_000,
        crash_before_commit_ppm: 30_000,
        crash_before_publish_ppm: 30_000,
        crash_after_publish_ppm: 30_000,
        stall_ppm: 10_000,
        clock_jump_ppm: 3_000,
        client_retry_ppm: 100_000,
    };

    /// Everything, often.
    pub const CHAOS: Faults = Faults {
        duplicate_ppm: 250_000,
        crash_before_ack_ppm: 80_000,
        crash_before_commit_ppm: 80_000,
        crash_before_publish_ppm: 80_000,
        crash_after_publish_ppm: 80_000,
        stall_ppm: 30_000,
        clock_jump_ppm: 10_000,
        client_retry_ppm: 250_000,
    };
}

/// A named fault profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// [`Faults::NONE`].
    None,
    /// [`Faults::LIGHT`].
    Light,
    /// [`Faults::HEAVY`].
    Heavy,
    /// [`Faults::CHAOS`].
    Chaos,
}

impl Profile {
    /// Every profile, mildest first.
    pub const ALL: [Profile; 4] = [
        Profile::None,
        Profile::Light,
        Profile::Heavy,
        Profile::Chaos,
    ];

    /// The profile's fault probabilities.
    pub fn faults(self) -> Faults {
        match self {
            Profile::None => Faults::NONE,
            Profile::Light => Faults::LIGHT,
            Profile::Heavy => Faults::HEAVY,
            Profile::Chaos => Faults::CHAOS,
        }
    }

    /// The profile's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Light => "light",
            Profile::Heavy => "heavy",
            Profile::Chaos => "chaos",
        }
    }

    /// Looks a profile up by name.
    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL
            .into_iter()
            .find(|profile| profile.name() == name)
    }
}

/// One simulation run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimConfig {
    /// The seed: with the rest of this config, it fixes the whole run.
    pub seed: u64,
    /// How many orders the client places.
    pub orders: u32,
    /// The fault profile.
    pub profile: Profile,
    /// Partitions per topic.
    pub partitions: u32,
    /// The most messages a publisher moves per batch.
    pub publish_batch_max: u32,
}

/// The most orders one run may simulate (a bound on memory per run).
pub const ORDERS_MAX: u32 = 10_000_000;

impl SimConfig {
    /// A run of `orders` orders under `profile`, with the default broker shape.
    pub fn new(seed: u64, orders: u32, profile: Profile) -> SimConfig {
        assert!(orders <= ORDERS_MAX, "at most {ORDERS_MAX} orders per run");
        SimConfig {
            seed,
            orders,
            profile,
            partitions: 4,
            publish_batch_max: 16,
        }
    }
}
