//! Cluster population statistics (SPEC §3): every partition's owner publishes the
//! partition's mergeable population summary (sums and a bounded histogram) to the
//! compacted stats topic, keyed by partition. Each instance reads the whole topic on
//! a thread of its own and keeps the latest summary of every partition; a
//! recalibration merges the other partitions' summaries with its own live one.
//!
//! Model histograms (key `model/<p>`, see `predict::model::Histogram`) come with
//! each partition's refit, for the other partitions' refits; segment summaries
//! (key `segments/<p>`, JSON [`crate::audience::PartitionSummary`]) every
//! `kafka.segments_interval_ms`, for `GET /v1/segments`.
//!
//! The same topic carries ownership announcements: key `owner/<p>`, value
//! `{"partition": p, "address": "<http.advertised_address>"}`, published by the
//! instance that opens partition p, so any instance can send a client asking for a
//! customer to the instance that owns the customer's partition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::task::PeerStats;
use super::KafkaError;
use crate::cluster::SharedStatus;
use crate::population::Population;
use crate::predict::model::Histogram;
use crate::telemetry::Metrics;

/// How often the reader checks that the cluster answers.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// The stats reader's context: librdkafka's errors are counted and throttled.
struct StatsCtx(Arc<Metrics>);

impl ClientContext for StatsCtx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::events::ClientError {
            client: "stats_reader",
            error: &error,
            reason,
        }
        .emit(&self.0);
    }
}

impl ConsumerContext for StatsCtx {}

pub fn spawn(
    mut client: ClientConfig,
    topic: String,
    partitions: usize,
    stats: PeerStats,
    status: SharedStatus,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> Result<JoinHandle<()>, KafkaError> {
    // Reads every partition itself: no group, nothing committed.
    client.set("enable.auto.commit", "false");
    client.set("group.id", "strata-stats-reader-unused");
    let consumer: BaseConsumer<StatsCtx> = client
        .create_with_context(StatsCtx(metrics))
        .map_err(|e| KafkaError::Broker(format!("cannot create the stats reader: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p as i32, Offset::Beginning)
            .map_err(|e| KafkaError::Broker(e.to_string()))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| KafkaError::Broker(format!("cannot read the stats topic {topic:?}: {e}")))?;
    Ok(std::thread::Builder::new()
        .name("strata-stats".into())
        .spawn(move || {
            let mut probed = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // Whether the cluster answers at all (readiness during an outage,
                // when nothing may be in flight to notice it by).
                if probed.elapsed() >= PROBE_EVERY {
                    let reachable = consumer
                        .fetch_metadata(Some(&topic), Duration::from_secs(3))
                        .is_ok();
                    probed = Instant::now();
                    let mut st = status.lock().unwrap();
                    if st.broker_unreachable == reachable {
                        st.broker_unreachable = !reachable;
                        drop(st);
                        match reachable {
                            true => tracing::info!("The Kafka cluster answers again."),
                            false => tracing::warn!("The Kafka cluster does not answer; /readyz reports not ready until it does."),
                        }
                    }
                }
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        if let Some((p, address)) = owner(&m) {
                            status.lock().unwrap().owners.insert(p, address);
                            continue;
                        }
                        if let Some(p) = prefixed(&m, "segments/") {
                            match m
                                .payload()
                                .map(serde_json::from_slice::<crate::audience::PartitionSummary>)
                            {
                                Some(Ok(sum)) => {
                                    status.lock().unwrap().segments.insert(p, sum);
                                }
                                _ => tracing::warn!(
                                    offset = m.offset(),
                                    partition = m.partition(),
                                    "Ignored an unreadable segment summary on the stats topic."
                                ),
                            }
                            continue;
                        }
                        if let Some(p) = prefixed(&m, "model/") {
                            match m.payload().map(Histogram::decode) {
                                Some(Ok(h)) => {
                                    stats.lock().unwrap().models.insert(p, h);
                                }
                                _ => tracing::warn!(
                                    offset = m.offset(),
                                    partition = m.partition(),
                                    "Ignored an unreadable model histogram on the stats topic."
                                ),
                            }
                            continue;
                        }
                        let part = m
                            .key()
                            .and_then(|k| std::str::from_utf8(k).ok())
                            .and_then(|k| k.parse::<i32>().ok());
                        match (part, m.payload().map(Population::decode)) {
                            (Some(p), Some(Ok(pop))) => {
                                stats.lock().unwrap().populations.insert(p, pop);
                            }
                            _ => tracing::warn!(
                                offset = m.offset(),
                                partition = m.partition(),
                                "Ignored an unreadable record on the stats topic."
                            ),
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "Stats reader poll error.")
                    }
                    None => {}
                }
            }
        })
        .expect("spawn a thread"))
}

/// The partition of a record keyed `<prefix><p>` (`model/`, `segments/`).
fn prefixed(m: &rdkafka::message::BorrowedMessage<'_>, prefix: &str) -> Option<i32> {
    std::str::from_utf8(m.key()?)
        .ok()?
        .strip_prefix(prefix)?
        .parse()
        .ok()
}

/// An ownership announcement: (partition, advertised address).
fn owner(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<(i32, String)> {
    let key = std::str::from_utf8(m.key()?).ok()?;
    let p: i32 = key.strip_prefix("owner/")?.parse().ok()?;
    let v: serde_json::Value = serde_json::from_slice(m.payload()?).ok()?;
    Some((p, v.get("address")?.as_str()?.to_string()))
}
