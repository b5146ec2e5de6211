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
pub mod partition;
pub mod pool;
pub mod stats;
pub mod topics;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::{Clock, Guarantee, Settings, TopicsConfig};
use crate::event::{parse_event, EventType, ParseContext};
use crate::store::rocks::RocksStore;
use crate::store::{Batch, Cf, Store, StoreError};
use crate::telemetry::Metrics;

use changelog::{Dest, Marker, RecordRef, Restorer, PUBLISHED_KEY};
use partition::{local_markers, peers_of, Msg, Outbox, Partition, PeerStats};
use pool::Pool;

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

fn broker(what: &str) -> impl Fn(rdkafka::error::KafkaError) -> KafkaError + '_ {
    move |e| KafkaError::Broker(format!("{what}: {e}"))
}

/// What the HTTP endpoints see of the service.
#[derive(Default)]
pub struct Status {
    /// Consuming: the group assigned partitions (or none) and startup is done.
    pub running: bool,
    pub assigned: BTreeSet<i32>,
    pub restoring: BTreeSet<i32>,
    /// Stores of the assigned partitions, for `GET /v1/customers/{id}`.
    pub stores: BTreeMap<i32, Arc<RocksStore>>,
    /// The input topics' partition count (0 until startup checked them).
    pub partitions: i32,
    /// Each partition's owner as last announced on the stats topic: its advertised
    /// HTTP address (`http.advertised_address`).
    pub owners: BTreeMap<i32, String>,
}

/// The partition Kafka's default partitioner (Java clients; librdkafka's
/// `murmur2_random`, which `gen --topic` uses) gives a keyed record:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= (*b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// The stats-topic key under which partition p's owner announces itself.
pub fn owner_key(p: i32) -> String {
    format!("owner/{p}")
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// The state dir of partition p.
pub fn partition_dir(state_dir: &std::path::Path, p: i32) -> PathBuf {
    state_dir.join("partitions").join(p.to_string())
}

enum Change {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Consumer context: hands each assignment of the lead (purchases) topic to the
/// loop, which assigns the same partitions of every input once their state is
/// ready; releases revoked partitions of every input at once.
struct Ctx {
    inputs: Vec<String>,
    changes: Mutex<Vec<Change>>,
    /// Whether `changes` has any (read for every message polled: no lock).
    changed: AtomicBool,
}

impl Ctx {
    fn new(inputs: Vec<String>) -> Ctx {
        Ctx {
            inputs,
            changes: Mutex::new(Vec::new()),
            changed: AtomicBool::new(false),
        }
    }

    fn push(&self, change: Change) {
        self.changes.lock().unwrap().push(change);
        self.changed.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<Change> {
        self.changed.store(false, Ordering::Release);
        std::mem::take(&mut *self.changes.lock().unwrap())
    }
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let parts: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.inputs[0])
            .map(|e| e.partition())
            .collect();
        // The other inputs are the loop's feeders' (see `Service::feeders`).
        let mut full = TopicPartitionList::new();
        for p in &parts {
            full.add_partition(&self.inputs[0], *p);
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                tracing::info!(partitions = ?parts, "Partitions assigned.");
                if parts.is_empty() {
                    // Nothing to open: complete the rebalance here.
                    if let Err(e) = take(c, &full) {
                        tracing::error!(error = %e, "Could not complete the rebalance.");
                    }
                } else {
                    // `Service::apply_changes` assigns them once their state is open.
                    self.push(Change::Assigned(parts));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = ?parts, lost = c.assignment_lost(), "Partitions revoked.");
                self.push(Change::Revoked(parts));
                // Only what the loop has assigned (a revocation can overtake an
                // assignment not yet applied; `close_partition` releases those).
                if let Err(e) = release(c, &full, true) {
                    tracing::warn!(error = %e, "Could not release revoked partitions.");
                }
            }
            other => tracing::error!(error = ?other, "Rebalance failed."),
        }
    }
}

fn cooperative(c: &BaseConsumer<Ctx>) -> bool {
    matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative)
}

/// Start fetching `tpl` (at its offsets): added to the assignment under the
/// cooperative protocol; under the eager one an assignment is always whole (it
/// follows a revocation of everything).
fn take(c: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) -> KafkaResult<()> {
    if cooperative(c) {
        c.incremental_assign(tpl)
    } else {
        c.assign(tpl)
    }
}

/// Stop fetching those of `tpl` that are assigned (everything under the eager
/// protocol, which only ever revokes everything). A revocation callback must
/// answer even when none is (`completes_rebalance`); elsewhere nothing is done then.
fn release(
    c: &BaseConsumer<Ctx>,
    tpl: &TopicPartitionList,
    completes_rebalance: bool,
) -> KafkaResult<()> {
    let held = c.assignment()?;
    let mut mine = TopicPartitionList::new();
    for e in tpl.elements() {
        if held.find_partition(e.topic(), e.partition()).is_some() {
            mine.add_partition(e.topic(), e.partition());
        }
    }
    if mine.count() == 0 && !completes_rebalance {
        Ok(())
    } else if cooperative(c) {
        c.incremental_unassign(&mine)
    } else {
        c.unassign()
    }
}

/// Producer context: counts failed deliveries, so an outbox is deleted only when
/// everything sent since the last check was acknowledged.
#[derive(Default)]
struct PCtx {
    failed: AtomicU64,
}

impl PCtx {
    /// Deliveries that failed so far.
    fn failures(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl ClientContext for PCtx {}

impl ProducerContext for PCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            // Counted here, reported once per round by `publish` (aborted
            // transactions purge every record they held).
            tracing::debug!(error = %e, "A record was not delivered.");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// librdkafka's last known high watermark of a partition (no broker round trip).
fn cached_high_watermark(c: &BaseConsumer<Ctx>, topic: &str, p: i32) -> Option<i64> {
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

fn random_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    xxhash_rust::xxh3::xxh3_64(format!("{t}-{}", std::process::id()).as_bytes())
}

/// Send one outbox record to its topic (the changelog and stats records to the state
/// partition's own partition; outputs and dead letters by key).
fn send_outbox_record(
    producer: &ThreadedProducer<PCtx>,
    t: &TopicsConfig,
    p: i32,
    r: &RecordRef<'_>,
) -> Result<(), KafkaError> {
    let (topic, partition) = match r.dest {
        Dest::TierChanges => (&t.tier_changes, None),
        Dest::ChurnWarnings | Dest::ChurnRecovered => (&t.churn_warnings, None),
        Dest::DeadLetter => (&t.dead_letter, None),
        Dest::Changelog => (&t.changelog, Some(p)),
        Dest::Stats => (&t.stats, Some(p)),
    };
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(r.key);
    if !r.headers.is_empty() {
        // Only dead letters have headers: no header list for the rest.
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (hk, hv) in &r.headers {
            headers = headers.insert(Header {
                key: hk,
                value: Some(*hv),
            });
        }
        rec = rec.headers(headers);
    }
    if let Some(v) = r.value {
        rec = rec.payload(v);
    }
    if let Some(pp) = partition {
        rec = rec.partition(pp);
    }
    send_retrying(producer, rec)
}

/// A connection-level error librdkafka recovers from by itself.
pub fn transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::BrokerTransportFailure | C::AllBrokersDown)
    )
}

/// Under `exactly_once`, consumers see committed transactions only (aborted outputs
/// and changelog records stay invisible).
fn isolation_level(eos: bool) -> &'static str {
    if eos {
        "read_committed"
    } else {
        "read_uncommitted"
    }
}

/// The base librdkafka configuration: brokers, then `[kafka.client]` verbatim.
pub fn client_config(settings: &Settings) -> ClientConfig {
    let k = &settings.raw.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, v) in &k.client {
        c.set(key, v);
    }
    c
}

fn instance_id(settings: &Settings) -> String {
    let k = &settings.raw.kafka;
    if !k.instance_id.is_empty() {
        return k.instance_id.clone();
    }
    crate::config::host_name().unwrap_or_else(|| format!("pid{}", std::process::id()))
}

/// The changelog reader's context: "end of partition" is how it knows it is done,
/// not an error worth a log line.
struct ReaderCtx;

impl ClientContext for ReaderCtx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let eof = matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::warn!(error = %error, reason, "Changelog reader error.");
        }
    }
}

impl ConsumerContext for ReaderCtx {}

/// Sees each changelog record: (key, value or `None` for a tombstone).
type RecordVisitor<'a> = &'a mut dyn FnMut(&[u8], Option<&[u8]>) -> Result<(), KafkaError>;

/// Reads one changelog partition (no group).
struct ChangelogReader {
    consumer: BaseConsumer<ReaderCtx>,
    topic: String,
}

impl ChangelogReader {
    fn new(base: &ClientConfig, topic: &str, eos: bool) -> Result<Self, KafkaError> {
        let mut c = base.clone();
        c.set("group.id", "strata-changelog-reader-unused")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.max.bytes", "52428800")
            // The read ends at end-of-partition: do not let the last fetch wait
            // the default 500 ms for more (per partition opened).
            .set("fetch.wait.max.ms", "50")
            .set("isolation.level", isolation_level(eos));
        Ok(ChangelogReader {
            consumer: c
                .create_with_context(ReaderCtx)
                .map_err(broker("cannot create a changelog reader"))?,
            topic: topic.to_string(),
        })
    }

    /// Visit records of partition p to its end (the last `from_end` records, or
    /// all); returns whether any record was read. The end is where the broker says
    /// "end of partition" (not ListOffsets, which some Kafka-compatible brokers answer
    /// inexactly: it only picks where to start).
    fn read(
        &self,
        p: i32,
        from_end: Option<i64>,
        f: RecordVisitor<'_>,
    ) -> Result<bool, KafkaError> {
        let (lo, hi) = self
            .consumer
            .fetch_watermarks(&self.topic, p, Duration::from_secs(15))
            .map_err(broker("cannot read the changelog's offsets"))?;
        if hi <= lo {
            // Empty (a new partition): nothing to wait for the end of. Exact even on
            // brokers whose "latest" is inexact: a record makes it pass `lo`.
            return Ok(false);
        }
        let start = match from_end {
            Some(n) => (hi - n).max(lo),
            None => lo,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, Offset::Offset(start.max(0)))
            .map_err(broker("changelog offset"))?;
        self.consumer
            .assign(&tpl)
            .map_err(broker("cannot read the changelog"))?;
        let mut any = false;
        let mut deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match self.consumer.poll(Duration::from_secs(1)) {
                Some(Ok(m)) => {
                    any = true;
                    deadline = Instant::now() + Duration::from_secs(600);
                    if let Some(k) = m.key() {
                        f(k, m.payload())?;
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                // A broker of the cluster is unreachable (maybe not even this
                // partition's leader): librdkafka reconnects; the deadline bounds it.
                Some(Err(e)) if transient(&e) => {}
                Some(Err(e)) => {
                    return Err(KafkaError::Broker(format!("reading the changelog: {e}")))
                }
                None if Instant::now() > deadline => {
                    return Err(KafkaError::Broker(format!(
                        "reading changelog partition {p} made no progress for 10 minutes; check the broker"
                    )))
                }
                None => {}
            }
        }
        self.consumer.unassign().ok();
        Ok(any)
    }
}

/// One partition's outbox entries sent in one round.
struct Sent {
    outbox: Outbox,
    keys: Vec<u64>,
    /// The range of outbox keys they were claimed from.
    range: Range<u64>,
    /// The marker of the last of them.
    last: Marker,
    /// Their records, and their outputs by type.
    records: usize,
    counts: BTreeMap<&'static str, u64>,
    /// Where each changelog key was last written among their changelog copies
    /// (counted in write order): only that copy is sent ([`Sent::send_changelog`]).
    latest: HashMap<Vec<u8>, usize>,
    /// How many changelog records were sent for them.
    changelog: usize,
    /// The producer's count of failed deliveries before their latest sends began:
    /// a failure after it sends everything unpublished again.
    failed_before: u64,
}

impl Sent {
    /// Claim a partition's outbox entries not sent yet (`None`: there are none).
    fn claim(part: &Partition, producer: &ThreadedProducer<PCtx>) -> Option<Sent> {
        let failed_before = producer.context().failures();
        let range = part.claim_unsent()?;
        Some(Sent {
            outbox: part.outbox.clone(),
            keys: Vec::new(),
            range,
            last: part.marker(),
            records: 0,
            counts: BTreeMap::new(),
            latest: HashMap::new(),
            changelog: 0,
            failed_before,
        })
    }

    /// Claim a partition's outbox entries not sent yet and send their outputs (a
    /// worker, right after writing them).
    fn send_new(
        part: &Partition,
        producer: &ThreadedProducer<PCtx>,
        settings: &Settings,
    ) -> Result<Option<Sent>, KafkaError> {
        let Some(mut sent) = Sent::claim(part, producer) else {
            return Ok(None);
        };
        sent.send_outputs(producer, &settings.raw.kafka.topics)?;
        Ok(Some(sent).filter(|s| !s.keys.is_empty()))
    }

    /// Send everything but the changelog copies (outputs, dead letters, stats), and
    /// note where each changelog key was last written.
    fn send_outputs(
        &mut self,
        producer: &ThreadedProducer<PCtx>,
        t: &TopicsConfig,
    ) -> Result<(), KafkaError> {
        let (mut copies, mut failed) = (0, None);
        let Sent {
            outbox,
            keys,
            range,
            records,
            counts,
            latest,
            ..
        } = self;
        outbox.visit(range, &mut |seq, r| {
            if keys.last() != Some(&seq) {
                keys.push(seq);
            }
            *records += 1;
            if r.dest == Dest::Changelog {
                match latest.get_mut(r.key) {
                    Some(at) => *at = copies,
                    None => {
                        latest.insert(r.key.to_vec(), copies);
                    }
                }
                copies += 1;
                return true;
            }
            if let Some(ty) = r.dest.output_type() {
                *counts.entry(ty).or_default() += 1;
            }
            failed = send_outbox_record(producer, t, outbox.partition(), r).err();
            failed.is_none()
        })?;
        failed.map_or(Ok(()), Err)
    }

    /// Send the changelog copies, each key once: its last value in the round, in
    /// the order of the last writes. The round's last marker, which has one key, so
    /// comes last: a restore takes the round whole or not at all (Kafka Streams'
    /// record cache likewise forwards a key once per commit).
    fn send_changelog(
        &mut self,
        producer: &ThreadedProducer<PCtx>,
        t: &TopicsConfig,
    ) -> Result<(), KafkaError> {
        self.failed_before = producer.context().failures();
        let (mut nth, mut n, mut failed) = (0, 0, None);
        let Sent {
            outbox,
            range,
            latest,
            ..
        } = &*self;
        outbox.visit(range, &mut |_, r| {
            if r.dest != Dest::Changelog {
                return true;
            }
            nth += 1;
            if latest.get(r.key) != Some(&(nth - 1)) {
                return true;
            }
            n += 1;
            failed = send_outbox_record(producer, t, outbox.partition(), r).err();
            failed.is_none()
        })?;
        self.latest = HashMap::new();
        self.changelog = n;
        failed.map_or(Ok(()), Err)
    }
}

/// A partition handed to a worker: which of its inputs have nothing more to fetch
/// now (`caught`), the wall-clock day, the parse contexts of the moment.
struct Job {
    part: Partition,
    caught: Vec<bool>,
    today: Option<crate::day::Day>,
    contexts: Vec<ParseContext>,
}

/// A partition a worker gives back, with what it sent of its outbox
/// (at_least_once).
type Done = (Partition, Result<Option<Sent>, KafkaError>);

/// The running service.
struct Service {
    settings: Arc<Settings>,
    inputs: Vec<String>,
    contexts: Vec<ParseContext>,
    /// The group member: it consumes the lead (purchases) input.
    consumer: BaseConsumer<Ctx>,
    /// One consumer per other input (not group members: the loop assigns them
    /// partition p of their topic with the lead's partition p). A consumer per
    /// topic fetches the topics side by side: one consumer's fetch requests hold
    /// every partition, and a broker may fill a response with one topic's backlog
    /// (tansu serves the topics one after another), starving the event-time merge.
    feeders: Vec<BaseConsumer<Ctx>>,
    /// Shared with the workers, which send their partitions' outputs (at_least_once).
    producer: Arc<ThreadedProducer<PCtx>>,
    eos: bool,
    changelog: ChangelogReader,
    parts: BTreeMap<i32, Partition>,
    /// Next offset to apply per (input index, partition): a message below it was
    /// applied already; offsets above it may skip (markers, compaction).
    expected: BTreeMap<(usize, i32), i64>,
    /// When (on the `polled` clock) each partition's queue `i` began waiting empty
    /// for records the broker has.
    waiting_since: BTreeMap<(usize, i32), Duration>,
    /// Time spent waiting inside `consumer.poll`: the clock an input's idleness is
    /// measured on, so that the loop's own work (a restore, a long publish) never
    /// makes an input look idle while its records sit in librdkafka's queue.
    polled: Duration,
    stats: PeerStats,
    status: SharedStatus,
    metrics: Arc<Metrics>,
    nonce: u64,
    /// Offsets last committed to the group, to commit only what moved.
    hinted: BTreeMap<(String, i32), i64>,
    gauges_at: Instant,
    /// Partitions opened here whose ownership is still to be announced on the
    /// stats topic (with the next publish).
    announce: BTreeSet<i32>,
    /// Outbox entries whose outputs were delivered and whose changelog copies are
    /// on their way (at_least_once; see [`Service::publish`]).
    changelog_in_flight: Vec<Sent>,
    /// What workers sent of their partitions' outboxes since the last round.
    worker_sent: Vec<Sent>,
    /// The outboxes of the partitions here, busy or not.
    outboxes: BTreeMap<i32, Outbox>,
    /// The worker threads applying partitions (out of `parts` meanwhile).
    pool: Pool<Job, Done>,
    /// `kafka.threads`, 0 resolved to the number of cores.
    threads: usize,
    /// Messages polled for a busy partition, queued when it is back.
    staged: BTreeMap<i32, Vec<(usize, Msg)>>,
}

impl Service {
    /// Open (or restore) partition `p`'s state; add where each input resumes to `at`.
    fn open_partition(&mut self, p: i32, at: &mut TopicPartitionList) -> Result<(), KafkaError> {
        let started = Instant::now();
        self.status.lock().unwrap().restoring.insert(p);
        self.metrics.partitions_restoring.inc();
        let s = &self.settings;
        let dir = partition_dir(&s.raw.engine.state_dir, p);
        let open = |dir: &std::path::Path| -> Result<Arc<RocksStore>, KafkaError> {
            Ok(Arc::new(RocksStore::open(
                dir,
                (s.raw.engine.block_cache_mb / 4).max(8),
                (s.raw.engine.write_buffer_mb / 4).max(4),
            )?))
        };
        let mut store = open(&dir)?;
        let (local, published) = local_markers(&store)?;
        // The changelog's last whole batch (its marker is the batch's last record),
        // and the keys of the records after it: a round its writer never finished.
        let mut tail: Option<Marker> = None;
        let mut orphans = Vec::new();
        let has_records = self.changelog.read(p, Some(4096), &mut |k, v| {
            if let Some((cf, key)) = changelog::parse_changelog_key(k) {
                if changelog::is_marker(cf, key) {
                    tail = v.and_then(Marker::decode);
                    orphans.clear();
                } else {
                    orphans.push((cf, key.to_vec()));
                }
            }
            Ok(())
        })?;
        let keep = match (&tail, has_records) {
            (_, false) => true,
            (None, true) => false,
            (Some(cl), true) => {
                let same = |m: &Option<Marker>| m.as_ref().is_some_and(|m| m.same_batch(cl));
                let within = local.as_ref().is_some_and(|l| {
                    l.nonce == cl.nonce
                        && cl.seq <= l.seq
                        && published.as_ref().is_none_or(|pb| pb.seq < cl.seq)
                });
                same(&local) || same(&published) || within
            }
        };
        if keep {
            // Under exactly_once a batch's changelog records and outputs commit in one
            // transaction: outbox batches up to the changelog's last (committed)
            // marker were published, and sending them again would duplicate them.
            // Under at_least_once whatever the outbox holds is simply sent again
            // (re-published outputs keep their event_id).
            if let Some(cl) = tail.as_ref().filter(|_| self.eos) {
                let mut b = Batch::default();
                store.scan(Cf::Outbox, &[], None, &mut |k, v| {
                    let batch_seq = changelog::unpack(v).and_then(|e| {
                        changelog::entry_records(&e)
                            .next()
                            .flatten()
                            .map(|r| r.batch_seq)
                    });
                    if batch_seq.is_some_and(|s| s <= cl.seq) {
                        b.delete(Cf::Outbox, k.to_vec());
                    }
                    Ok(true)
                })?;
                if !b.is_empty() {
                    store.write(b)?;
                }
            }
            tracing::info!(
                partition = p,
                "Partition state is current; no restore needed."
            );
        } else {
            tracing::info!(
                partition = p,
                "Restoring partition state from the changelog."
            );
            drop(store);
            std::fs::remove_dir_all(&dir).ok();
            store = open(&dir)?;
            let mut r = Restorer::default();
            let metrics = self.metrics.clone();
            let st = store.clone();
            self.changelog.read(p, None, &mut |k, v| {
                metrics.restore_records.inc();
                if let Some(b) = r.push(k, v) {
                    st.write(b)?;
                }
                Ok(())
            })?;
            let mut b = r.finish();
            orphans = std::mem::take(&mut r.orphans);
            if let Some(m) = &r.last_marker {
                b.put(Cf::Meta, PUBLISHED_KEY.to_vec(), m.encode());
            }
            store.write(b)?;
            crate::processor::rebuild_derived(&*store)?;
            tracing::info!(
                partition = p,
                records = r.records,
                seconds = started.elapsed().as_secs_f64(),
                "Restored partition state from the changelog."
            );
        }
        self.metrics.add_population(&store, 1)?;
        let mut part = Partition::open(
            s.clone(),
            p,
            store.clone(),
            self.nonce,
            self.inputs.len(),
            self.metrics.clone(),
        )?;
        let stats = self.stats.clone();
        part.proc.set_peers(Box::new(move || peers_of(&stats, p)));
        if !orphans.is_empty() {
            tracing::info!(
                partition = p,
                records = orphans.len(),
                "The changelog ends with a round its writer never finished; publishing those keys' restored values over it."
            );
            part.republish(orphans)?;
        }
        // One write at once (marker and population summary): the next publish round
        // then has records, and this instance's ownership announcement rides with it
        // even if the partition stays idle.
        part.commit()?;
        // Every input resumes at the offset stored with the state.
        for (i, t) in self.inputs.iter().enumerate() {
            let next = match part.next_offset(t) {
                Some(o) => o,
                None => {
                    self.consumer
                        .fetch_watermarks(t, p, Duration::from_secs(15))
                        .map_err(broker("cannot read input offsets"))?
                        .0
                }
            };
            self.expected.insert((i, p), next);
            at.add_partition_offset(t, p, Offset::Offset(next))
                .map_err(broker("offset"))?;
        }
        self.outboxes.insert(p, part.outbox.clone());
        self.parts.insert(p, part);
        self.announce.insert(p);
        let mut st = self.status.lock().unwrap();
        st.restoring.remove(&p);
        st.assigned.insert(p);
        st.stores.insert(p, store);
        self.metrics.partitions_restoring.dec();
        self.metrics
            .partitions_assigned
            .set(st.assigned.len() as i64);
        Ok(())
    }

    fn close_partition(&mut self, p: i32) {
        self.outboxes.remove(&p);
        self.staged.remove(&p);
        if let Some(part) = self.parts.remove(&p) {
            if let Err(e) = self.metrics.add_population(&part.store, -1) {
                tracing::warn!(error = %e, partition = p, "Could not read the released partition's populations.");
            }
        }
        for i in 0..self.inputs.len() {
            self.expected.remove(&(i, p));
            self.waiting_since.remove(&(i, p));
        }
        // Normally the revocation callback released the inputs already; not when
        // the revocation overtook an assignment the loop had not applied yet.
        let mut lead = TopicPartitionList::new();
        lead.add_partition(&self.inputs[0], p);
        if let Err(e) = release(&self.consumer, &lead, false) {
            tracing::warn!(error = %e, partition = p, "Could not release a revoked partition.");
        }
        for (f, t) in self.feeders.iter().zip(&self.inputs[1..]) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(t, p);
            if let Err(e) = f.incremental_unassign(&tpl) {
                tracing::warn!(error = %e, partition = p, topic = %t, "Could not release a revoked partition.");
            }
        }
        self.hinted.retain(|(_, q), _| *q != p);
        self.announce.remove(&p);
        let mut st = self.status.lock().unwrap();
        st.assigned.remove(&p);
        st.stores.remove(&p);
        self.metrics
            .partitions_assigned
            .set(st.assigned.len() as i64);
        tracing::info!(partition = p, "Released partition.");
    }

    fn apply_changes(&mut self) -> Result<(), KafkaError> {
        let changes = self.consumer.context().take();
        for c in changes {
            match c {
                Change::Revoked(ps) => {
                    // Finish the batches in hand; hand over a changelog that holds
                    // everything published.
                    self.reap(true)?;
                    self.settle()?;
                    ps.into_iter().for_each(|p| self.close_partition(p))
                }
                Change::Assigned(ps) => {
                    let mut at = TopicPartitionList::new();
                    for p in ps {
                        self.open_partition(p, &mut at)?;
                    }
                    tracing::debug!(offsets = ?at, "Assigning the inputs at the stored offsets.");
                    for (i, t) in self.inputs.iter().enumerate() {
                        let mut tpl = TopicPartitionList::new();
                        for e in at.elements_for_topic(t) {
                            tpl.add_partition_offset(t, e.partition(), e.offset())
                                .map_err(broker("offset"))?;
                        }
                        match i {
                            0 => take(&self.consumer, &tpl),
                            _ => self.feeders[i - 1].incremental_assign(&tpl),
                        }
                        .map_err(broker("cannot assign the input partitions"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Take up to `max_batch_events` messages, waiting at most `batch_wait_ms`.
    fn poll_batch(&mut self) -> Result<usize, KafkaError> {
        while self.staged.values().map(Vec::len).sum::<usize>() >= self.full()
            && self.pool.outstanding() > 0
        {
            // Busy partitions are far behind what is fetched: wait for one back
            // (its staged messages join its queue) and keep the workers fed.
            self.reap_one()?;
            self.process(false)?;
        }
        let (wait, max) = {
            let k = &self.settings.raw.kafka;
            (k.batch_wait_ms, k.max_batch_events)
        };
        let deadline = Instant::now() + Duration::from_millis(wait);
        let mut n = 0;
        // Round-robin over the inputs' consumers without waiting; once none has a
        // message, wait a little on the group member (whose poll also serves the
        // rebalance callbacks).
        let (mut next, mut empty) = (0, 0);
        let inputs = 1 + self.feeders.len();
        while n < max {
            // A rebalance happens inside poll: apply it before routing more messages.
            if self.consumer.context().changed.load(Ordering::Acquire) {
                self.apply_changes()?;
            }
            let k = next;
            next = (next + 1) % inputs;
            let waits = k == 0 && empty >= inputs;
            let mut left = Duration::ZERO;
            let r = match (k, waits) {
                (0, true) => {
                    // Only a waiting poll reads the clock (twice per message
                    // otherwise, for nothing).
                    let t0 = Instant::now();
                    left = deadline.saturating_duration_since(t0);
                    let r = self.consumer.poll(left.min(Duration::from_millis(1)));
                    self.polled += t0.elapsed();
                    r
                }
                (0, false) => self.consumer.poll(Duration::ZERO),
                (k, _) => self.feeders[k - 1].poll(Duration::ZERO),
            };
            let Some(r) = r else {
                if waits && left.is_zero() {
                    break;
                }
                if waits {
                    // Nothing fetched yet: keep the workers fed meanwhile.
                    self.process(false)?;
                }
                empty += 1;
                continue;
            };
            empty = 0;
            let m = match r {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "Consumer error; librdkafka retries.");
                    continue;
                }
            };
            let Some(i) = self.inputs.iter().position(|t| t == m.topic()) else {
                continue;
            };
            let p = m.partition();
            let Some(exp) = self.expected.get_mut(&(i, p)) else {
                tracing::trace!(partition = p, "Dropped a message of a partition not owned.");
                continue; // not ours (any more)
            };
            if m.offset() < *exp {
                // Cannot happen with fetching started at the stored offset; never
                // apply a message twice if it does.
                tracing::debug!(
                    topic = m.topic(),
                    partition = p,
                    offset = m.offset(),
                    expected = *exp,
                    "Dropped a message already applied."
                );
                continue;
            }
            // Offsets may skip (transaction markers, compacted input topics).
            *exp = m.offset() + 1;
            let msg = Msg::new(
                m.offset(),
                m.key().map(|k| k.to_vec()),
                m.payload().unwrap_or_default().to_vec(),
            );
            if let Some(part) = self.parts.get_mut(&p) {
                part.enqueue(i, &self.inputs[i], msg);
            } else if self.outboxes.contains_key(&p) {
                // Ours, but on a worker thread.
                self.staged.entry(p).or_default().push((i, msg));
            } else {
                continue;
            }
            n += 1;
            if n % 1024 == 0 {
                // A worker that finished gets its next partition now, not at the
                // end of the round.
                self.process(false)?;
            }
        }
        Ok(n)
    }

    /// Hand the partitions that can apply something to the workers, most queued
    /// first, and take back those the workers finished. A worker parses, applies,
    /// writes, and then sends its partition's new outputs, dead letters and summary
    /// (not under exactly_once, where only the loop's transaction sends); the loop
    /// meanwhile goes on polling and publishing.
    ///
    /// Behind, at most two partitions per worker are out at once (one being applied,
    /// one waiting for it): the others go on queueing what is polled for them, so a
    /// partition's drain takes everything queued by the time a worker is free for it
    /// (big drains write each customer once). With `all` (caught up), every ready
    /// partition goes, so this round's outputs leave in this round.
    fn process(&mut self, all: bool) -> Result<(), KafkaError> {
        self.reap(false)?;
        let room = match all {
            true => usize::MAX,
            false => (2 * self.threads).saturating_sub(self.pool.outstanding()),
        };
        if room == 0 {
            return Ok(());
        }
        let today = self.today();
        for (p, caught) in self.ready(today).into_iter().take(room) {
            let part = self.parts.remove(&p).expect("ready partitions are here");
            self.pool.submit(Job {
                part,
                caught,
                today,
                contexts: self.contexts.clone(),
            });
        }
        Ok(())
    }

    /// Apply every partition that can apply something, on this thread (shutdown).
    fn process_here(&mut self) -> Result<(), KafkaError> {
        self.reap(true)?;
        let today = self.today();
        for (p, caught) in self.ready(today) {
            let part = self.parts.get_mut(&p).expect("ready partitions are here");
            apply_batch(
                part,
                &self.inputs,
                &self.contexts,
                &caught,
                today,
                &self.metrics,
            )?;
        }
        Ok(())
    }

    /// Take back the partitions whose worker finished (all of them, waiting, with
    /// `wait`), with the messages polled for them meanwhile.
    fn reap(&mut self, wait: bool) -> Result<(), KafkaError> {
        let done = self.pool.collect(wait);
        self.returned(done)
    }

    /// Wait until a worker gives a partition back (none when none is out), and
    /// take back every other finished one.
    fn reap_one(&mut self) -> Result<(), KafkaError> {
        let done = self.pool.collect_one();
        self.returned(done)
    }

    fn returned(&mut self, done: Vec<Done>) -> Result<(), KafkaError> {
        let mut result = Ok(());
        for (mut part, r) in done {
            let p = part.id;
            for (i, msg) in self.staged.remove(&p).unwrap_or_default() {
                part.enqueue(i, &self.inputs[i], msg);
            }
            self.parts.insert(p, part);
            match r {
                Ok(sent) => self.worker_sent.extend(sent),
                Err(e) => result = result.and(Err(e)),
            }
        }
        result
    }

    /// Today on the wall clock, when the clock is the wall clock.
    fn today(&mut self) -> Option<crate::day::Day> {
        if self.settings.clock != Clock::Wall {
            return None;
        }
        let s = &self.settings;
        let limit = chrono::Utc::now().timestamp_millis()
            + s.raw.engine.max_future_skew_seconds as i64 * 1000;
        for c in &mut self.contexts {
            c.future_limit_millis = Some(limit);
        }
        Some(crate::day::today(self.settings.tz))
    }

    /// The partitions here that can apply something now — queued messages in
    /// event-time order as far as it is certain, or a wall-clock day to turn — most
    /// queued first, each with which of its inputs have nothing more to fetch (or
    /// waited long enough).
    fn ready(&mut self, today: Option<crate::day::Day>) -> Vec<(i32, Vec<bool>)> {
        let max_idle = Duration::from_millis(self.settings.raw.kafka.max_idle_ms);
        // A partition holding this many queued messages stops waiting for an empty
        // input (bounds memory when one input's fetching lags far behind).
        let full = self.full();
        let mut ready = Vec::new();
        for (&p, part) in &self.parts {
            let mut c = vec![false; self.inputs.len()];
            let crowded = part.queued() >= full;
            for (i, t) in self.inputs.iter().enumerate() {
                let exp = self.expected.get(&(i, p)).copied().unwrap_or(0);
                let hw = cached_high_watermark(self.input_consumer(i), t, p);
                let empty = part.queues[i].is_empty();
                let idle = if empty && hw.is_none_or(|h| exp < h) {
                    let since = *self.waiting_since.entry((i, p)).or_insert(self.polled);
                    let idle = self.polled - since >= max_idle || crowded;
                    if idle {
                        tracing::debug!(
                            partition = p,
                            topic = %t,
                            crowded,
                            "Input idle: applying the other inputs without waiting for it."
                        );
                    }
                    idle
                } else {
                    self.waiting_since.remove(&(i, p));
                    false
                };
                c[i] = hw.is_some_and(|h| exp >= h) || idle;
            }
            let day_turns = today.is_some_and(|d| part.proc.clock().is_none_or(|c| c < d));
            if day_turns || part.ready(&|i| c[i]) {
                ready.push((part.queued(), p, c));
            }
        }
        ready.sort_by_key(|r| std::cmp::Reverse(r.0));
        ready.into_iter().map(|(_, p, c)| (p, c)).collect()
    }

    /// The consumer that fetches input `i`.
    fn input_consumer(&self, i: usize) -> &BaseConsumer<Ctx> {
        match i {
            0 => &self.consumer,
            _ => &self.feeders[i - 1],
        }
    }

    /// Whether the broker holds records of an input partition here that are not
    /// polled yet (librdkafka's cached high watermarks: no round trip).
    fn behind(&self) -> bool {
        self.expected.iter().any(|(&(i, p), &exp)| {
            cached_high_watermark(self.input_consumer(i), &self.inputs[i], p)
                .is_some_and(|h| exp < h)
        })
    }

    /// Queued (and staged) messages at which a partition stops waiting for an empty
    /// input and polling stops until busy partitions are back.
    fn full(&self) -> usize {
        (10 * self.settings.raw.kafka.max_batch_events).max(100_000)
    }

    /// Wait until every record sent so far is acknowledged or has failed: until
    /// librdkafka holds neither records nor delivery reports. Not `producer.flush`:
    /// with the producer's own thread serving the reports, its poll can sleep
    /// 100 ms past the last one, and the loop waits here once per round.
    fn flush(&self) -> Result<(), KafkaError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                return Err(KafkaError::Broker(
                    "the producer did not deliver in 60 s (is the broker up?)".into(),
                ));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    }

    /// No delivery failed since the count was `failed_before` (else: say so).
    fn all_delivered(&self, failed_before: Option<u64>) -> bool {
        let now = self.producer.context().failures();
        let failed = failed_before.map_or(0, |b| now - b);
        if failed > 0 {
            tracing::warn!(
                failed,
                "Records were not delivered; they stay in the outbox and are sent again."
            );
        }
        failed == 0
    }

    /// Send what the outboxes hold that was not sent yet (workers sent their
    /// partitions' outputs already, see [`Service::process`]); delete what the
    /// broker acknowledged.
    ///
    /// Under at_least_once a round's changelog copies go only after the broker has
    /// acknowledged everything else of the round: a batch on the changelog then means
    /// its outputs were delivered, so an instance that takes the partition over by
    /// restoring from the changelog (without the old owner's outbox) loses nothing.
    /// They are not waited for: they travel while the next round is processed, and
    /// that round's flush (one per round) confirms them too, so their outbox entries
    /// are deleted one round later ([`Service::settle`] finishes a last round).
    /// Under exactly_once one transaction holds them all and the order is moot; it
    /// waits for busy partitions, so it covers every partition's work so far.
    fn publish(&mut self) -> Result<(), KafkaError> {
        if self.eos {
            // A transaction covers everything applied so far, with every assigned
            // partition's offsets: wait for the partitions being applied.
            self.reap(true)?;
        }
        let t = &self.settings.raw.kafka.topics;
        // What workers sent after applying, then what is left here.
        let mut fresh = std::mem::take(&mut self.worker_sent);
        let claimed: Vec<Sent> = self
            .parts
            .values()
            .filter_map(|part| Sent::claim(part, &self.producer))
            .collect();
        let began = self.eos && !claimed.is_empty();
        if began {
            self.producer
                .begin_transaction()
                .map_err(broker("cannot begin a transaction"))?;
        }
        for mut sent in claimed {
            sent.send_outputs(&self.producer, t)?;
            if self.eos {
                sent.send_changelog(&self.producer, t)?;
            }
            if !sent.keys.is_empty() {
                fresh.push(sent);
            }
        }
        let in_flight: usize = fresh.iter().map(|s| s.records).sum();
        let failed_before = fresh
            .iter()
            .chain(&self.changelog_in_flight)
            .map(|s| s.failed_before)
            .min();
        if fresh.is_empty() && self.changelog_in_flight.is_empty() && !began {
            return Ok(());
        }
        // Ownership announcements (for `GET /v1/customers/{id}` on other instances)
        // ride along with the next round that has records (inside its transaction
        // under exactly_once); they never make a round of their own.
        let announced: Vec<i32> = if fresh.is_empty() {
            Vec::new()
        } else {
            self.announce.iter().copied().collect()
        };
        for &p in &announced {
            let key = owner_key(p);
            let value = serde_json::json!({
                "partition": p,
                "address": self.settings.advertised_address,
            })
            .to_string();
            let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&t.stats)
                .key(key.as_bytes())
                .payload(value.as_bytes())
                .partition(p);
            send_retrying(&self.producer, rec)?;
        }
        self.metrics.outbox_pending.set(in_flight as i64);
        if self.eos {
            // Consumed offsets join the transaction (the group's view), with outputs
            // and changelog records; read_committed consumers see all or nothing.
            let mut tpl = TopicPartitionList::new();
            for (p, part) in &self.parts {
                for (topic, o) in part.marker().offsets {
                    tpl.add_partition_offset(&topic, *p, Offset::Offset(o)).ok();
                }
            }
            let gm = self
                .consumer
                .group_metadata()
                .ok_or_else(|| KafkaError::Broker("no consumer group metadata".into()))?;
            // A transaction of announcements only consumed nothing: no offsets.
            // Its records are delivered first (commit would wait for them anyway):
            // an abort then always concerns records already in the log, never ones
            // librdkafka still held and purges.
            let r = if in_flight > 0 {
                self.flush()?;
                self.producer
                    .send_offsets_to_transaction(&tpl, &gm, Duration::from_secs(30))
            } else {
                Ok(())
            }
            .and_then(|_| self.producer.commit_transaction(Duration::from_secs(60)));
            if let Err(e) = r {
                tracing::warn!(error = %e, "Transaction failed; aborting. The outbox is kept and sent again in the next transaction.");
                self.producer
                    .abort_transaction(Duration::from_secs(60))
                    .map_err(broker("cannot abort the transaction"))?;
                self.metrics.transactions_aborted.inc();
                self.outboxes.values().for_each(Outbox::resend);
                return Ok(());
            }
        } else {
            // This round's outputs, and the previous round's changelog copies.
            self.flush()?;
        }
        if !self.all_delivered(failed_before) {
            self.changelog_in_flight.clear();
            self.outboxes.values().for_each(Outbox::resend);
            return Ok(());
        }
        for (ty, n) in fresh.iter().flat_map(|s| &s.counts) {
            self.metrics
                .outputs_published
                .with_label_values(&[ty])
                .inc_by(*n);
        }
        let done = std::mem::take(&mut self.changelog_in_flight);
        for sent in done.iter().chain(if self.eos { &fresh[..] } else { &[] }) {
            sent.outbox.published(&sent.keys, &sent.last)?;
        }
        if !self.eos {
            for sent in &mut fresh {
                sent.send_changelog(&self.producer, t)?;
            }
            self.changelog_in_flight = fresh;
        }
        for p in announced {
            self.announce.remove(&p);
        }
        self.metrics.outbox_pending.set(
            self.changelog_in_flight
                .iter()
                .map(|s| s.changelog as i64)
                .sum(),
        );
        tracing::debug!(records = in_flight, "Published the outboxes.");
        Ok(())
    }

    /// Publish everything not yet published and finish the round in flight: wait
    /// for its changelog copies and delete their outbox entries (before partitions
    /// are released, so the changelog handed over holds all their work, and at
    /// shutdown).
    fn settle(&mut self) -> Result<(), KafkaError> {
        self.publish()?;
        while !self.changelog_in_flight.is_empty() {
            self.publish()?;
        }
        Ok(())
    }

    /// The group's committed offsets: a progress hint for lag dashboards only,
    /// committed after the work they cover is written and published.
    fn commit_hint(&mut self) {
        if self.eos {
            return; // committed inside the transaction
        }
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &self.parts {
            for (topic, o) in part.marker().offsets {
                if self.hinted.insert((topic.clone(), *p), o) != Some(o) {
                    tpl.add_partition_offset(&topic, *p, Offset::Offset(o)).ok();
                }
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "Offset commit (progress hint) failed.");
            }
        }
    }

    fn update_gauges(&mut self) {
        if self.gauges_at.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.gauges_at = Instant::now();
        let mut timers = 0i64;
        // Over every partition here, busy ones included (their stores are shared).
        for (&p, outbox) in &self.outboxes {
            timers += outbox.store().estimate_keys(Cf::Timers) as i64;
            for (i, t) in self.inputs.iter().enumerate() {
                let exp = self.expected.get(&(i, p)).copied().unwrap_or(0);
                if let Some(hw) = cached_high_watermark(self.input_consumer(i), t, p) {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[t.as_str(), &p.to_string()])
                        .set((hw - exp).max(0));
                }
            }
        }
        self.metrics.timers_pending.set(timers);
        let sum = |name: &str| -> i64 {
            self.outboxes
                .values()
                .map(|o| o.store().property(name) as i64)
                .sum()
        };
        self.metrics
            .rocksdb_live_data
            .set(sum("rocksdb.estimate-live-data-size"));
        self.metrics
            .rocksdb_pending_compaction
            .set(sum("rocksdb.estimate-pending-compaction-bytes"));
        self.metrics.rocksdb_block_cache.set(
            self.outboxes
                .values()
                .map(|o| o.store().memory().1 as i64)
                .sum(),
        );
    }
}

/// Run the service until `shutdown` is set (SIGTERM/SIGINT in the binary).
pub fn run(
    settings: Arc<Settings>,
    status: SharedStatus,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), KafkaError> {
    let k = &settings.raw.kafka;
    let eos = k.processing_guarantee == Guarantee::ExactlyOnce;
    let t = &k.topics;
    let inputs = vec![
        t.purchases.clone(),
        t.interactions.clone(),
        t.complaints.clone(),
    ];
    let base = client_config(&settings);

    let mut cc = ClientConfig::new();
    cc.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", isolation_level(eos));
    for (key, v) in base.config_map() {
        cc.set(key, v);
    }
    let consumer: BaseConsumer<Ctx> = cc
        .create_with_context(Ctx::new(inputs.clone()))
        .map_err(broker("cannot create the consumer (check [kafka.client])"))?;
    let feeders = inputs[1..]
        .iter()
        .map(|_| {
            cc.create_with_context(Ctx::new(inputs.clone()))
                .map_err(broker("cannot create the consumer (check [kafka.client])"))
        })
        .collect::<Result<Vec<BaseConsumer<Ctx>>, _>>()?;
    let partitions = topics::check_copartitioned(&consumer, &inputs)?;
    status.lock().unwrap().partitions = partitions as i32;
    topics::ensure_topics(&base, &consumer, t, partitions)?;
    tracing::info!(partitions, topics = ?inputs, "Input topics are co-partitioned.");

    let mut pc = ClientConfig::new();
    pc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", "4194304");
    if eos {
        pc.set(
            "transactional.id",
            format!("{}-{}", k.group_id, instance_id(&settings)),
        );
    }
    for (key, v) in base.config_map() {
        pc.set(key, v);
    }
    let producer: ThreadedProducer<PCtx> = pc
        .create_with_context(PCtx::default())
        .map_err(broker("cannot create the producer (check [kafka.client])"))?;
    if eos {
        producer
            .init_transactions(Duration::from_secs(60))
            .map_err(broker("cannot initialise transactions (does the broker support them? use processing_guarantee = \"at_least_once\" otherwise)"))?;
    }

    let stats: PeerStats = Arc::default();
    let stop_stats = Arc::new(AtomicBool::new(false));
    let stats_thread = stats::spawn(
        base.clone(),
        t.stats.clone(),
        partitions,
        stats.clone(),
        status.clone(),
        stop_stats.clone(),
    )?;

    let contexts = [
        EventType::Purchase,
        EventType::Interaction,
        EventType::Complaint,
    ]
    .into_iter()
    .map(|ty| {
        let mut c = ParseContext::for_files(&settings);
        if k.bind_topic_types {
            c.bound_type = Some(ty);
        }
        c
    })
    .collect();
    let producer = Arc::new(producer);
    let threads = match k.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let pool = {
        let (inputs, metrics, settings, producer) = (
            inputs.clone(),
            metrics.clone(),
            settings.clone(),
            producer.clone(),
        );
        Pool::new("strata-apply", threads, move |job: Job| {
            let Job {
                mut part,
                caught,
                today,
                contexts,
            } = job;
            let r = apply_batch(&mut part, &inputs, &contexts, &caught, today, &metrics).and_then(
                |()| match eos {
                    // Under exactly_once only the loop's transaction sends.
                    true => Ok(None),
                    false => Sent::send_new(&part, &producer, &settings),
                },
            );
            (part, r)
        })
        .map_err(|e| KafkaError::Broker(format!("cannot start a thread: {e}")))?
    };
    let mut svc = Service {
        changelog: ChangelogReader::new(&base, &t.changelog, eos)?,
        settings: settings.clone(),
        inputs: inputs.clone(),
        contexts,
        consumer,
        feeders,
        producer,
        eos,
        parts: BTreeMap::new(),
        expected: BTreeMap::new(),
        waiting_since: BTreeMap::new(),
        polled: Duration::ZERO,
        stats,
        status: status.clone(),
        metrics,
        nonce: random_nonce(),
        hinted: BTreeMap::new(),
        gauges_at: Instant::now(),
        announce: BTreeSet::new(),
        changelog_in_flight: Vec::new(),
        worker_sent: Vec::new(),
        outboxes: BTreeMap::new(),
        pool,
        threads,
        staged: BTreeMap::new(),
    };
    svc.consumer
        .subscribe(&[inputs[0].as_str()])
        .map_err(broker("cannot subscribe"))?;
    status.lock().unwrap().running = true;
    tracing::info!(group = %k.group_id, guarantee = ?k.processing_guarantee, "Consuming.");

    let result = (|| -> Result<(), KafkaError> {
        let full_batch = k.max_batch_events;
        while !shutdown.load(Ordering::Relaxed) {
            svc.apply_changes()?;
            let polled = svc.poll_batch()?;
            // Not behind (the broker has nothing more): this round's outputs go out
            // in this round (latency); behind, applying overlaps the next poll and
            // publish (throughput). A round that ends at `batch_wait_ms` with records
            // still on the broker is behind too.
            let caught_up = polled < full_batch && !svc.behind();
            svc.process(caught_up)?;
            if caught_up {
                svc.reap(true)?;
            }
            svc.publish()?;
            svc.commit_hint();
            svc.update_gauges();
        }
        // Finish the batch in hand, write, publish, commit, leave the group.
        tracing::info!("Shutting down: finishing the batch in hand.");
        svc.process_here()?;
        svc.settle()?;
        svc.commit_hint();
        Ok(())
    })();
    status.lock().unwrap().running = false;
    svc.consumer.unsubscribe();
    svc.apply_changes().ok();
    stop_stats.store(true, Ordering::Relaxed);
    stats_thread.join().ok();
    if result.is_ok() {
        tracing::info!("Left the group; stopped.");
    }
    result
}

/// One partition's share of a round: advance the wall clock, apply what the
/// partition can (`caught[i]`: input i has nothing more to fetch now), write it.
fn apply_batch(
    part: &mut Partition,
    inputs: &[String],
    contexts: &[ParseContext],
    caught: &[bool],
    today: Option<crate::day::Day>,
    metrics: &Metrics,
) -> Result<(), KafkaError> {
    if let Some(today) = today {
        part.proc.advance_to(today)?;
    }
    let before = part.proc.counters.clone();
    let started = Instant::now();
    let now = chrono::Utc::now().timestamp_millis();
    tracing::trace!(
        partition = part.id,
        ?caught,
        queued = part.queued(),
        "Draining."
    );
    // Counted here and added to the metrics every 1,024 (each labelled lookup
    // hashes and locks) and at the end.
    let consumed: [std::cell::Cell<u64>; 3] = Default::default();
    let parse = |i: usize, raw: &[u8]| {
        let parsed = parse_event(raw, &contexts[i]);
        match &parsed {
            Ok(e) => {
                let ty = e.kind.event_type();
                let c = &consumed[ty as usize];
                c.set(c.get() + 1);
                if c.get() == 1024 {
                    metrics.consumed(ty, c.take());
                }
            }
            Err(r) => metrics.rejected(&r.reason.to_string()),
        }
        parsed
    };
    let lag = metrics.event_lag.local();
    let n = part.drain(inputs, &parse, &|i| caught[i], &mut |ev| {
        lag.observe(((now - ev.ts_millis) as f64 / 1000.0).max(0.0));
    })?;
    lag.flush();
    for ty in EventType::ALL {
        metrics.consumed(ty, consumed[ty as usize].take());
    }
    if n > 0 {
        part.commit()?;
    }
    metrics.record_counters(&before, &part.proc.counters);
    if n > 0 {
        metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Send one record, waiting while librdkafka's local queue is full.
fn send_retrying<K, P>(
    producer: &ThreadedProducer<PCtx>,
    mut rec: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, back)) => {
                return Err(KafkaError::Broker(format!(
                    "cannot send to {:?}: {e}",
                    back.topic
                )))
            }
        }
    }
}

/// `strata gen --topic T`: produce JSON Lines to Kafka, keyed by `customer_id`.
/// `{type}` in `T` is replaced by each event's type (`--topic '{type}s'` fills the
/// default input topics). Kafka's default (murmur2) partitioner, as Java clients use,
/// so every input topic places a customer in the same partition.
pub fn produce_lines(
    settings: &Settings,
    input: &mut dyn std::io::BufRead,
    topic_pattern: &str,
) -> Result<u64, KafkaError> {
    let mut pc = ClientConfig::new();
    pc.set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "1000000");
    for (key, v) in client_config(settings).config_map() {
        pc.set(key, v);
    }
    let producer: ThreadedProducer<PCtx> = pc
        .create_with_context(PCtx::default())
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
        send_retrying(&producer, rec)?;
        n += 1;
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(broker("the producer did not deliver in 120 s"))?;
    let failed = producer.context().failures();
    if failed > 0 {
        return Err(KafkaError::Broker(format!(
            "{failed} of {n} events were not delivered (do the topics exist?)"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::partition_of;

    /// Our partitioner agrees with librdkafka's murmur2 (the one producers use) on
    /// keys of every length class and on customer-id-like keys.
    #[test]
    fn partition_of_matches_librdkafka_murmur2() {
        let mut keys: Vec<Vec<u8>> = (0..2000).map(|i| format!("C{i:06}").into_bytes()).collect();
        keys.extend((0..64).map(|n| (0..n).map(|i| (i * 37 + n) as u8).collect()));
        keys.push("客户-上海-0042".as_bytes().to_vec());
        for key in &keys {
            for n in [1, 3, 8, 24, 1000] {
                // SAFETY: the murmur2 partitioner reads only `key`; the topic and the
                // opaques are unused by it.
                let theirs = unsafe {
                    rdkafka::bindings::rd_kafka_msg_partitioner_murmur2(
                        std::ptr::null(),
                        key.as_ptr().cast(),
                        key.len(),
                        n,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                };
                assert_eq!(partition_of(key, n), theirs, "key {key:?}, {n} partitions");
            }
        }
    }
}
