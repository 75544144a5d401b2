//! A simulated Kafka: one topic per consuming service, partitions keyed by
//! order id, one consumer group per topic with a committed offset and a read
//! position per partition.
//!
//! What it can do to messages, and only that (as a real broker can):
//! - deliver a message twice (a producer retry landing twice);
//! - redeliver everything after the last committed offset when a consumer
//!   crashes before committing its offset;
//! - interleave partitions in any order, so messages of *different* orders
//!   overtake each other.
//!
//! Within one partition (so within one order) the log order always holds:
//! a later message of the same order is never delivered before an earlier
//! one, except as a redelivery of the earlier one after the later one.

use std::collections::VecDeque;
use std::sync::Arc;

use saldo_domain::messages::{Envelope, Service};
use saldo_types::Timestamp;

use crate::rng::Rng;

/// One partition's log and its consumer's offsets.
#[derive(Debug, Clone, Default)]
struct Partition {
    /// Messages from offset `base` on; the prefix below the committed offset is dropped.
    log: VecDeque<Arc<Envelope>>,
    base: u64,
    committed: u64,
    position: u64,
    stalled_until: Timestamp,
}

impl Partition {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    fn deliverable(&self, now: Timestamp) -> bool {
        self.position < self.end() && self.stalled_until <= now
    }
}

/// The topics and their partitions.
#[derive(Debug, Clone)]
pub struct Broker {
    topics: Vec<Vec<Partition>>,
}

/// A message handed to a consumer, with where it came from.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The partition.
    pub partition: u32,
    /// The offset within it.
    pub offset: u64,
    /// The message.
    pub envelope: Arc<Envelope>,
}

/// A message on the broker that its consumer has not committed yet.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// The partition.
    pub partition: u32,
    /// The offset within it.
    pub offset: u64,
    /// The message.
    pub envelope: Arc<Envelope>,
    /// True when the consumer has read it (and not yet acknowledged it).
    pub read: bool,
    /// The partition delivers nothing before this instant.
    pub stalled_until: Timestamp,
}

fn topic_index(service: Service) -> usize {
    match service {
        Service::Order => 0,
        Service::Inventory => 1,
        Service::Payment => 2,
    }
}

/// The partition an order's messages go to (FNV-1a of the key, as stable as Kafka's murmur2).
pub fn partition_of(order_key: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in order_key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions
}

impl Broker {
    /// A broker with `partitions` partitions per topic.
    pub fn new(partitions: u32) -> Broker {
        assert!(partitions > 0, "a topic needs a partition");
        Broker {
            topics: (0..3)
                .map(|_| (0..partitions).map(|_| Partition::default()).collect())
                .collect(),
        }
    }

    /// Appends a message to its consumer's topic; returns the partition.
    pub fn publish(&mut self, consumer: Service, envelope: Arc<Envelope>) -> u32 {
        let partitions = &mut self.topics[topic_index(consumer)];
        let partition = partition_of(envelope.order_id.as_str(), partitions.len() as u32);
        partitions[partition as usize].log.push_back(envelope);
        partition
    }

    /// True when `consumer` has a message it could take now.
    pub fn has_deliverable(&self, consumer: Service, now: Timestamp) -> bool {
        self.topics[topic_index(consumer)]
            .iter()
            .any(|partition| partition.deliverable(now))
    }

    /// True when some message of `consumer`'s topic is not yet committed.
    pub fn has_uncommitted(&self, consumer: Service) -> bool {
        self.topics[topic_index(consumer)]
            .iter()
            .any(|partition| partition.committed < partition.end())
    }

    /// The earliest time a stalled partition with waiting messages resumes.
    pub fn next_unstall(&self, now: Timestamp) -> Option<Timestamp> {
        self.topics
            .iter()
            .flatten()
            .filter(|partition| {
                partition.position < partition.end() && partition.stalled_until > now
            })
            .map(|partition| partition.stalled_until)
            .min()
    }

    /// Takes the next message of a randomly chosen deliverable partition.
    pub fn take(&mut self, consumer: Service, now: Timestamp, rng: &mut Rng) -> Option<Delivery> {
        let partitions = &mut self.topics[topic_index(consumer)];
        let ready: Vec<usize> = (0..partitions.len())
            .filter(|index| partitions[*index].deliverable(now))
            .collect();
        if ready.is_empty() {
            return None;
        }
        let index = ready[rng.index(ready.len())];
        let partition = &mut partitions[index];
        let offset = partition.position;
        let envelope = Arc::clone(&partition.log[(offset - partition.base) as usize]);
        partition.position += 1;
        Some(Delivery {
            partition: index as u32,
            offset,
            envelope,
        })
    }

    /// Commits the consumer's offset past `offset` (after its transaction committed).
    pub fn commit_offset(&mut self, consumer: Service, partition: u32, offset: u64) {
        let partition = &mut self.topics[topic_index(consumer)][partition as usize];
        assert!(
            offset < partition.position,
            "only delivered messages are acknowledged"
        );
        partition.committed = partition.committed.max(offset + 1);
        // Committed messages are never read again: drop them to bound memory.
        while partition.base < partition.committed && !partition.log.is_empty() {
            partition.log.pop_front();
            partition.base += 1;
        }
    }

    /// A consumer crashed: it resumes from its committed offsets.
    pub fn rewind(&mut self, consumer: Service) {
        for partition in &mut self.topics[topic_index(consumer)] {
            partition.position = partition.committed;
        }
    }

    /// Stops delivery from one partition of `consumer` until `until`.
    pub fn stall(&mut self, consumer: Service, partition: u32, until: Timestamp) {
        let partitions = &mut self.topics[topic_index(consumer)];
        let count = partitions.len() as u32;
        partitions[(partition % count) as usize].stalled_until = until;
    }

    /// `consumer`'s messages that are published and not yet committed, by
    /// partition and offset, with whether the consumer has read them (and,
    /// for a partition that stalls, until when).
    pub fn in_flight(&self, consumer: Service) -> Vec<InFlight> {
        let mut messages = Vec::new();
        for (index, partition) in self.topics[topic_index(consumer)].iter().enumerate() {
            for offset in partition.committed.max(partition.base)..partition.end() {
                messages.push(InFlight {
                    partition: index as u32,
                    offset,
                    envelope: Arc::clone(&partition.log[(offset - partition.base) as usize]),
                    read: offset < partition.position,
                    stalled_until: partition.stalled_until,
                });
            }
        }
        messages
    }

    /// Messages published and not yet committed, over all topics.
    pub fn backlog(&self) -> u64 {
        self.topics
            .iter()
            .flatten()
            .map(|partition| partition.end() - partition.committed)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Proves one order always maps to one partition and keys spread out.
        assert_eq!(partition_of("order-1", 4), partition_of("order-1", 4));
        let used: std::collections::BTreeSet<u32> = (0..100)
            .map(|i| partition_of(&format!("order-{i}"), 4))
            .collect();
        assert_eq!(used.len(), 4);
    }
}
