//! Startup checks and internal topics.
//!
//! The three input topics must exist and be co-partitioned (SPEC §7): partition p of
//! each holds the same customers, so one state partition can own all three. The
//! changelog and stats topics are strata's own: created compacted with the inputs'
//! partition count when missing, refused when they exist with another count (their
//! partition p *is* state partition p). Output and dead-letter topics are created with
//! the broker's defaults when missing; the `customer_tiers` output topic compacted.
//! Every topic strata creates takes records (and batches) of up to 8 MiB
//! ([`CREATED_MAX_MESSAGE_BYTES`]) where the cluster allows it.

use std::time::Duration;

/// `min.compaction.lag.ms` of the changelog and stats topics strata creates.
pub const MIN_COMPACTION_LAG_MS: &str = "3600000";

/// `max.message.bytes` of every topic strata creates: 8 MiB (the most managed
/// clusters commonly allow, Confluent Cloud's limit), above the producer's 4 MiB
/// `message.max.bytes`, so a big customer's changelog record never blocks its
/// partition on a topic strata created (Kafka's default, 1 MiB, would). A cluster
/// that refuses the setting gets the topic with its default instead.
pub const CREATED_MAX_MESSAGE_BYTES: &str = "8388608";
const MAX_MESSAGE_BYTES: &str = "max.message.bytes";

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::KafkaError;
use crate::config::TopicsConfig;

/// Admin operations (topic creation).
const TIMEOUT: Duration = Duration::from_secs(15);
/// A metadata request: short, so that a start with the cluster away retries
/// (and says so) every few seconds.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Partition count of a topic, `None` if it does not exist.
pub fn partition_count(
    consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    topic: &str,
) -> Result<Option<usize>, KafkaError> {
    let md = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| KafkaError::Broker(format!("cannot read metadata of topic {topic:?}: {e}")))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

/// The input topics' common partition count, or an error naming each topic's count.
pub fn check_copartitioned(
    consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    inputs: &[String],
) -> Result<usize, KafkaError> {
    let mut counts = Vec::new();
    for t in inputs {
        counts.push((t.clone(), partition_count(consumer, t)?));
    }
    let missing: Vec<&str> = counts
        .iter()
        .filter(|(_, c)| c.is_none())
        .map(|(t, _)| t.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(KafkaError::Topology(format!(
            "input topic(s) {} do not exist: create them with the same partition count (or set kafka.topics.*)",
            missing.join(", ")
        )));
    }
    let first = counts[0].1.unwrap();
    if counts.iter().any(|(_, c)| *c != Some(first)) {
        let list: Vec<String> = counts
            .iter()
            .map(|(t, c)| format!("{t}: {}", c.unwrap()))
            .collect();
        return Err(KafkaError::Topology(format!(
            "input topics are not co-partitioned ({}): they must have the same partition count and be keyed by customer_id; repartition them to one count",
            list.join(", ")
        )));
    }
    Ok(first)
}

/// Create strata's internal topics (and missing output topics); check the internal
/// ones' partition counts.
pub fn ensure_topics(
    client: &ClientConfig,
    consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    topics: &TopicsConfig,
    partitions: usize,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|e| KafkaError::Broker(format!("cannot create an admin client: {e}")))?;
    let internal = [topics.changelog.as_str(), topics.stats.as_str()];
    let mut outputs = vec![topics.tier_changes.as_str(), topics.dead_letter.as_str()];
    if topics.churn_warnings != topics.tier_changes {
        outputs.push(topics.churn_warnings.as_str());
    }
    // (name, configs) of each topic to create.
    let mut create: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    for t in internal {
        match partition_count(consumer, t)? {
            Some(n) if n != partitions => {
                return Err(KafkaError::Topology(format!(
                    "internal topic {t:?} has {n} partitions but the input topics have {partitions}: delete it (it is rebuilt from the local state) or point kafka.topics at a new name"
                )))
            }
            Some(_) => {}
            // An hour before compaction may drop a superseded record: a batch left
            // half-published by a crash is dropped by a restore (whole batches
            // only), and the versions it superseded must still be there then.
            None => create.push((
                t,
                vec![
                    ("cleanup.policy", "compact"),
                    ("min.compaction.lag.ms", MIN_COMPACTION_LAG_MS),
                ],
            )),
        }
    }
    // Keyed by customer: any partition count works; compacted, so that reading
    // it from the start gives every customer's latest membership.
    if partition_count(consumer, &topics.customer_tiers)?.is_none() {
        create.push((&topics.customer_tiers, vec![("cleanup.policy", "compact")]));
    }
    for t in outputs {
        if partition_count(consumer, t)?.is_none() {
            create.push((t, Vec::new()));
        }
    }
    if create.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = create.iter().map(|(t, _)| t.to_string()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KafkaError::Broker(e.to_string()))?;
    let create_all = |specs: &[(&str, Vec<(&str, &str)>)]| {
        let new: Vec<NewTopic> = specs
            .iter()
            .map(|(t, configs)| {
                let n = NewTopic::new(t, partitions as i32, TopicReplication::Fixed(-1));
                configs.iter().fold(n, |n, (k, v)| n.set(k, v))
            })
            .collect();
        rt.block_on(
            admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(TIMEOUT))),
        )
        .map_err(|e| KafkaError::Broker(format!("cannot create topics {names:?}: {e}")))
    };
    for (_, configs) in &mut create {
        configs.push((MAX_MESSAGE_BYTES, CREATED_MAX_MESSAGE_BYTES));
    }
    let results = if refused_by_policy() {
        names
            .iter()
            .map(|t| Err((t.clone(), RDKafkaErrorCode::PolicyViolation)))
            .collect()
    } else {
        create_all(&create)?
    };
    // A cluster whose policy refuses the larger limit: those topics again,
    // without it (with its default).
    let mut retry = Vec::new();
    for r in results {
        match r {
            Err((t, e @ (RDKafkaErrorCode::InvalidConfig | RDKafkaErrorCode::PolicyViolation))) => {
                let Some((name, configs)) = create.iter().find(|(n, _)| *n == t) else {
                    created(Err((t, e)))?;
                    continue;
                };
                tracing::info!(topic = %t, "The cluster refuses max.message.bytes = {CREATED_MAX_MESSAGE_BYTES}; creating the topic with its default.");
                let mut configs = configs.clone();
                configs.retain(|(k, _)| *k != MAX_MESSAGE_BYTES);
                retry.push((*name, configs));
            }
            r => created(r)?,
        }
    }
    if !retry.is_empty() {
        for r in create_all(&retry)? {
            created(r)?;
        }
    }
    // Metadata may lag creation for a moment.
    for t in &names {
        for _ in 0..50 {
            if partition_count(consumer, t)?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// One topic's creation result: created, or there already (another instance
/// created it first), or an error an operator must fix.
fn created(r: Result<String, (String, RDKafkaErrorCode)>) -> Result<(), KafkaError> {
    match r {
        Ok(t) => tracing::info!(topic = %t, "Created topic."),
        Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
            tracing::debug!(topic = %t, "Topic exists already.")
        }
        Err((t, e)) => {
            return Err(KafkaError::Broker(format!(
                "cannot create topic {t:?}: {e} (create it by hand, compacted for the changelog and stats topics)"
            )))
        }
    }
    Ok(())
}

/// Test builds: the fail point `topics.refuse_max_message_bytes` plays a cluster whose
/// policy refuses [`CREATED_MAX_MESSAGE_BYTES`] (tansu accepts any topic config).
fn refused_by_policy() -> bool {
    fail::fail_point!("topics.refuse_max_message_bytes", |_| true);
    false
}
