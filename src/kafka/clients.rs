//! Every librdkafka client of the shell, with each property strata sets and why.
//! `[kafka.client]` is applied last, verbatim, so an operator can override any of
//! them (except where noted).

use std::ffi::CString;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientConfig;

use crate::config::Settings;

/// The base configuration: brokers, then `[kafka.client]` verbatim.
pub fn client_config(settings: &Settings) -> ClientConfig {
    let k = &settings.raw.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, v) in &k.client {
        c.set(key, v);
    }
    c
}

/// `ours`, then everything of `[kafka.client]` on top.
fn with_client(settings: &Settings, mut ours: ClientConfig) -> ClientConfig {
    for (key, v) in client_config(settings).config_map() {
        ours.set(key, v);
    }
    ours
}

/// Under `exactly_once`, consumers see committed transactions only (aborted outputs
/// and changelog records stay invisible).
pub fn isolation_level(eos: bool) -> &'static str {
    if eos {
        "read_committed"
    } else {
        "read_uncommitted"
    }
}

/// The group member (purchases) and the feeders (interactions, complaints).
pub fn input_consumer(settings: &Settings, eos: bool) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("group.id", &settings.raw.kafka.group_id)
        // Offsets live in the state; the group's are only a progress hint that
        // the loop commits after the work they cover is published.
        .set("enable.auto.commit", "false")
        // Used only for a partition whose state has no offset yet and whose
        // earliest offset could not be read: take everything.
        .set("auto.offset.reset", "earliest")
        // Partitions move one at a time; the others keep being consumed.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A broker that holds a fetch until this wait expires when it has less
        // than a full response (tansu does) would put up to librdkafka's 500 ms
        // on every event's latency; a Kafka broker answers as soon as data is
        // there, so this costs it only idle fetches (100/s per consumer). When
        // catching up, responses fill before the wait either way.
        .set("fetch.wait.max.ms", "10")
        .set("isolation.level", isolation_level(eos));
    with_client(settings, c)
}

/// The producer of outputs, dead letters, changelog and stats records.
pub fn producer(settings: &Settings, eos: bool) -> ClientConfig {
    let k = &settings.raw.kafka;
    let mut c = ClientConfig::new();
    // No duplicates or reordering from librdkafka's own retries.
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        // A round's records leave together; latency stays a few ms.
        .set("linger.ms", "5")
        // A customer's changelog record holds its day buckets and event ids
        // within retention: let big customers through (the broker's
        // max.message.bytes still applies; see the README's known limits).
        .set("message.max.bytes", "4194304");
    if !eos {
        // A record is retried until it is delivered, however long the broker is
        // away: the outbox keeps it anyway, and a record given up on would be
        // sent again after later ones of the same customer. (librdkafka's 300 s
        // default made a long outage fail every record in flight.) Records the
        // broker refuses for good (too large, not authorised) fail at once. A
        // transaction is bounded by `transaction.timeout.ms` instead (and its
        // failure aborts and resends it whole).
        c.set("message.timeout.ms", "0");
    }
    if eos {
        c.set(
            "transactional.id",
            format!("{}-{}", k.group_id, instance_id(settings)),
        );
    }
    with_client(settings, c)
}

/// Reads one changelog partition (no group; nothing committed).
pub fn changelog_reader(settings: &Settings, eos: bool) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("group.id", "strata-changelog-reader-unused")
        .set("enable.auto.commit", "false")
        // "End of partition" is how a restore knows it is done.
        .set("enable.partition.eof", "true")
        .set("fetch.max.bytes", "52428800")
        // The read ends at end-of-partition: do not let the last fetch wait the
        // default 500 ms for more (per partition opened).
        .set("fetch.wait.max.ms", "50")
        .set("isolation.level", isolation_level(eos));
    let mut c = with_client(settings, c);
    // Never a group member, whatever [kafka.client] says.
    c.set("group.id", "strata-changelog-reader-unused");
    c
}

/// Reads the whole stats topic (no group; nothing committed).
pub fn stats_reader(settings: &Settings) -> ClientConfig {
    let mut c = client_config(settings);
    c.set("enable.auto.commit", "false")
        .set("group.id", "strata-stats-reader-unused");
    c
}

/// `strata gen --topic`: Kafka's default partitioner, as Java clients use, so every
/// input topic places a customer in the same partition.
pub fn gen_producer(settings: &Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "1000000");
    with_client(settings, c)
}

/// Used for the producer's `transactional.id` with `exactly_once`.
pub fn instance_id(settings: &Settings) -> String {
    let k = &settings.raw.kafka;
    if !k.instance_id.is_empty() {
        return k.instance_id.clone();
    }
    crate::config::host_name().unwrap_or_else(|| format!("pid{}", std::process::id()))
}

/// A connection-level error librdkafka recovers from by itself.
pub fn transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::BrokerTransportFailure | C::AllBrokersDown)
    )
}

/// librdkafka's last known high watermark of a partition (no broker round trip).
pub fn cached_high_watermark(
    c: &BaseConsumer<impl ConsumerContext>,
    topic: &str,
    p: i32,
) -> Option<i64> {
    let t = CString::new(topic).ok()?;
    let (mut lo, mut hi) = (-1i64, -1i64);
    // SAFETY: a valid client handle and NUL-terminated topic; librdkafka only reads
    // its cache and writes the two out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            c.client().native_ptr(),
            t.as_ptr(),
            p,
            &mut lo,
            &mut hi,
        )
    };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0).then_some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[kafka.client]` overrides what strata sets, except the changelog reader's
    /// group (it must never join the service's group).
    #[test]
    fn client_properties_override_ours_but_not_the_readers_group() {
        let mut raw = crate::config::Config::default();
        raw.kafka
            .client
            .insert("message.timeout.ms".into(), "2000".into());
        raw.kafka.client.insert("group.id".into(), "other".into());
        let s = Settings::new(raw, crate::config::Clock::Wall).unwrap();
        assert_eq!(producer(&s, false).get("message.timeout.ms"), Some("2000"));
        assert_eq!(
            producer(&Settings::defaults(), false).get("message.timeout.ms"),
            Some("0"),
            "by default a record waits out any outage"
        );
        assert_eq!(
            changelog_reader(&s, true).get("group.id"),
            Some("strata-changelog-reader-unused")
        );
        assert_eq!(
            changelog_reader(&s, true).get("isolation.level"),
            Some("read_committed")
        );
        assert!(producer(&s, true).get("transactional.id").is_some());
        assert!(producer(&s, false).get("transactional.id").is_none());
    }
}
