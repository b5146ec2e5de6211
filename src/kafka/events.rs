//! What the Kafka shell reports, one struct per event whose `emit` both logs and
//! counts, so logs and metrics never disagree (Vector's `internal_events`). Messages
//! are sentences; figures are fields; ERROR only for what an operator must act on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::changelog::Dest;
use crate::telemetry::Metrics;

/// The destination label of an outbox record.
pub fn destination(d: Dest) -> &'static str {
    match d {
        Dest::TierChanges => "tier_changes",
        Dest::ChurnWarnings | Dest::ChurnRecovered => "churn_warnings",
        Dest::DeadLetter => "dead_letter",
        Dest::Changelog => "changelog",
        Dest::Stats => "stats",
        Dest::CustomerTiers => "customer_tiers",
    }
}

/// At most one log line per `every` from one call site (a broker outage makes
/// librdkafka report the same error many times a second); the count of the
/// suppressed ones goes with the next line.
pub struct Throttle {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&self, every: Duration) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < every.as_millis() as u64 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.last_ms.store(now, Ordering::Relaxed);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// The clients whose errors are counted apart (`strata_kafka_errors_total{client}`).
const CLIENTS: [&str; 5] = [
    "consumer",
    "producer",
    "changelog_reader",
    "stats_reader",
    "admin",
];

/// librdkafka reported an error to a client's context (all brokers down, a
/// connection refused...): it retries by itself. One WARN per client per 10 s
/// (an outage reports many a second), every one counted.
pub struct ClientError<'a> {
    pub client: &'static str,
    pub error: &'a rdkafka::error::KafkaError,
    pub reason: &'a str,
}

impl ClientError<'_> {
    pub fn emit(self, m: &Metrics) {
        static T: [Throttle; CLIENTS.len()] = [const { Throttle::new() }; CLIENTS.len()];
        m.kafka_errors.with_label_values(&[self.client]).inc();
        let i = CLIENTS.iter().position(|c| *c == self.client).unwrap_or(0);
        if let Some(suppressed) = T[i].allow(Duration::from_secs(10)) {
            tracing::warn!(
                client = self.client,
                error = %self.error,
                reason = self.reason,
                suppressed,
                "librdkafka reports an error; it retries by itself."
            );
        }
    }
}

/// A consumer poll returned an error (librdkafka retries by itself).
pub struct ConsumerError<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl ConsumerError<'_> {
    pub fn emit(self, m: &Metrics) {
        static T: Throttle = Throttle::new();
        m.kafka_errors.with_label_values(&["consumer"]).inc();
        if let Some(suppressed) = T.allow(Duration::from_secs(10)) {
            tracing::warn!(error = %self.error, suppressed, "Consumer error; librdkafka retries.");
        }
    }
}

/// The broker did not take a record.
pub struct DeliveryFailed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub key: &'a [u8],
    pub bytes: usize,
    pub dest: Dest,
    pub error: &'a rdkafka::error::KafkaError,
    /// It never will ([`super::publish::permanent`]).
    pub permanent: bool,
}

impl DeliveryFailed<'_> {
    pub fn emit(self, m: &Metrics) {
        let destination = destination(self.dest);
        let key = String::from_utf8_lossy(&self.key[..self.key.len().min(200)]);
        if self.permanent {
            m.records_undeliverable
                .with_label_values(&[destination])
                .inc();
            let what = match self.dest {
                Dest::Changelog => "its partition is blocked until the topic accepts it",
                _ => "it is dropped",
            };
            tracing::error!(
                topic = self.topic,
                partition = self.partition,
                key = %key,
                bytes = self.bytes,
                destination,
                error = %self.error,
                "A record cannot be delivered, ever: {what} (raise the topic's max.message.bytes, or check its ACLs)."
            );
        } else {
            static T: Throttle = Throttle::new();
            if let Some(suppressed) = T.allow(Duration::from_secs(10)) {
                tracing::warn!(
                    topic = self.topic,
                    partition = self.partition,
                    destination,
                    error = %self.error,
                    suppressed,
                    "A record was not delivered; it is sent again."
                );
            }
        }
    }
}

/// A partition's changelog record is refused for good: the partition takes no
/// events until it is accepted.
pub struct PartitionBlocked {
    pub partition: i32,
}

impl PartitionBlocked {
    pub fn emit(self) {
        tracing::error!(
            partition = self.partition,
            "A changelog record of this partition cannot be delivered: the partition takes no events (the others go on) and the record is tried again every 30 s. Raise the changelog topic's max.message.bytes."
        );
    }
}

pub struct PartitionUnblocked {
    pub partition: i32,
}

impl PartitionUnblocked {
    pub fn emit(self) {
        tracing::info!(
            partition = self.partition,
            "The changelog accepted the partition's record: the partition takes events again."
        );
    }
}

/// Startup could not reach the cluster; it retries.
pub struct BrokerUnreachable<'a> {
    pub attempt: u64,
    pub error: &'a super::KafkaError,
    pub retry_in: Duration,
}

impl BrokerUnreachable<'_> {
    pub fn emit(self, m: &Metrics) {
        m.kafka_connect_retries.inc();
        tracing::warn!(
            attempt = self.attempt,
            error = %self.error,
            retry_in_seconds = self.retry_in.as_secs_f64(),
            "Cannot reach the Kafka cluster; retrying (check kafka.brokers and the network)."
        );
    }
}

/// A partition's local state could not be opened or read: moved aside, restored.
pub struct StoreCorrupt<'a> {
    pub partition: i32,
    pub error: &'a dyn std::fmt::Display,
    pub moved_to: &'a std::path::Path,
}

impl StoreCorrupt<'_> {
    pub fn emit(self, m: &Metrics) {
        m.partitions_corrupt.inc();
        tracing::error!(
            partition = self.partition,
            error = %self.error,
            moved_to = %self.moved_to.display(),
            "The partition's local state is unreadable: moved aside and restored from the changelog (inspect or delete the moved dir)."
        );
    }
}

/// A partition could not be opened (the changelog unreachable, say); retried.
pub struct OpenFailed<'a> {
    pub partition: i32,
    pub error: &'a super::KafkaError,
    pub retry_in: Duration,
}

impl OpenFailed<'_> {
    pub fn emit(self, m: &Metrics) {
        m.partition_open_failures.inc();
        tracing::warn!(
            partition = self.partition,
            error = %self.error,
            retry_in_seconds = self.retry_in.as_secs_f64(),
            "Could not open the partition; retrying."
        );
    }
}

/// The state dir of a partition no longer owned here was deleted
/// (`kafka.state_cleanup_delay_ms` after it was released).
pub struct StateDirRemoved<'a> {
    pub dir: &'a std::path::Path,
}

impl StateDirRemoved<'_> {
    pub fn emit(self, m: &Metrics) {
        m.state_dirs_removed.inc();
        tracing::info!(dir = %self.dir.display(), "Deleted the state dir of a partition no longer owned here.");
    }
}
