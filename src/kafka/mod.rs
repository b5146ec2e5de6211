//! `strata run`: the Kafka shell around the same [`Processor`] that `replay` drives.
//!
//! One loop on one thread owns the consumer and the transactions (librdkafka and
//! RocksDB calls block; the HTTP server runs on its own runtime); parsing, applying
//! and sending a partition's outputs run on a pool of worker threads
//! (`kafka.threads`, [`pool`]), each owning the partition it was handed until it
//! gives it back:
//!
//! 1. **Rebalance.** The group subscribes to the purchases topic only, with
//!    cooperative-sticky assignment; when it assigns purchases partition p, the
//!    instance also takes partition p of the interactions and complaints topics
//!    (co-partitioned, checked at startup), so state partition p is consumed by
//!    exactly one instance. The callback only records the assignment; the loop
//!    opens each new partition's state — or restores it from the changelog when
//!    local state is missing or behind it — and only then assigns the inputs, at the
//!    offsets stored *in the state* (librdkafka waits for that call, heartbeating
//!    meanwhile). No fetch starts anywhere else, so nothing needs seeking or
//!    filtering. Interactions and complaints are fetched by a consumer each
//!    ([`Service::feeders`], assigned by the loop, never group members), so the
//!    topics arrive side by side. The group's committed offsets are only a progress hint for lag
//!    dashboards.
//! 2. **Batch.** Up to `kafka.max_batch_events` messages are polled and queued per
//!    partition as bytes; a worker parses a ready partition's messages, applies them
//!    in event-time order ([`partition`]) and writes state, consumed offsets and an
//!    outbox (outputs, dead letters, changelog records, its population summary) in
//!    one atomic RocksDB batch, then sends the outputs, dead letters and summary,
//!    while the loop polls on (messages for a busy partition are staged until it is
//!    back).
//! 3. **Publish.** The loop flushes the idempotent producer once per round; what
//!    the broker acknowledged is deleted from the outboxes, and only then do the
//!    round's changelog copies go, each key once (its last value in the round). Under
//!    `exactly_once` the loop sends everything itself, in one Kafka transaction with
//!    the consumed offsets. A crash can re-publish, with the same `event_id`s; it
//!    cannot lose anything.
//!
//! Revocation happens inside `poll`, between batches: the loop waits for its
//! workers, publishes what they wrote and the changelog copies in flight, so the
//! changelog handed over holds all of the partition's work, then closes it.
//! Shutdown stops polling, finishes the batch, publishes, commits and leaves the
//! group.

pub mod changelog;
pub mod clients;
mod events;
mod inputs;
mod outbox;
pub mod pool;
mod publish;
mod rebalance;
mod restore;
pub mod stats;
mod stream_loop;
pub mod task;
mod task_manager;
pub mod topics;

pub use clients::{client_config, transient};
pub use stream_loop::run;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The topics are not as strata needs them: an operator must act.
    #[error("{0}")]
    Topology(String),
    #[error("Kafka: {0}")]
    Broker(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn broker(what: &str) -> impl Fn(rdkafka::error::KafkaError) -> KafkaError + '_ {
    move |e| KafkaError::Broker(format!("{what}: {e}"))
}
