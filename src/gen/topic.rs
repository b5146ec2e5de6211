//! `strata gen --topic T`: the generated stream produced to Kafka, keyed by
//! `customer_id`. `{type}` in `T` is replaced by each event's type (`--topic
//! '{type}s'` fills the default input topics). Kafka's default (murmur2)
//! partitioner, as Java clients use, so every input topic places a customer in the
//! same partition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::config::Settings;
use crate::kafka::clients::gen_producer;
use crate::kafka::{broker, KafkaError};

/// Counts failed deliveries.
#[derive(Default)]
struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if r.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produce JSON Lines; returns how many were delivered.
pub fn produce_lines(
    settings: &Settings,
    input: &mut dyn std::io::BufRead,
    topic_pattern: &str,
) -> Result<u64, KafkaError> {
    let producer: ThreadedProducer<Failures> = gen_producer(settings)
        .create_with_context(Failures::default())
        .map_err(broker("cannot create the producer (check kafka.brokers)"))?;
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type")]
        ty: Option<&'a str>,
        customer_id: Option<&'a str>,
    }
    let mut n = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        if input
            .read_line(&mut line)
            .map_err(|e| KafkaError::Broker(format!("cannot read the generated events: {e}")))?
            == 0
        {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            continue;
        }
        let head: Head = serde_json::from_str(l).unwrap_or(Head {
            ty: None,
            customer_id: None,
        });
        let topic = topic_pattern.replace("{type}", head.ty.unwrap_or("unknown"));
        let mut rec: BaseRecord<'_, str, str> = BaseRecord::to(&topic).payload(l);
        if let Some(k) = head.customer_id {
            rec = rec.key(k);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(KafkaError::Broker(format!("cannot send to {topic:?}: {e}")))
                }
            }
        }
        n += 1;
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(broker("the producer did not deliver in 120 s"))?;
    let failed = producer.context().0.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(KafkaError::Broker(format!(
            "{failed} of {n} events were not delivered (do the topics exist?)"
        )));
    }
    Ok(n)
}
