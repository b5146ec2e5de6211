//! Publishing the outboxes (Kafka Streams' record collector and its
//! `ProductionExceptionHandler`).
//!
//! Records leave through a [`Sink`] — the producer, or a fake in tests — and each
//! carries a [`Tag`] that tells, in its delivery report, which outbox record it was.
//! One send of one phase of a claimed range of a partition's outbox (a [`Sent`])
//! shares one [`Ticket`]: how many of its records are still in flight, which
//! failed, and whether for good. So a failure concerns the records that failed, not
//! the round, and only they are sent again: a healthy output goes out once, or
//! twice when a crash interrupts its round, never once per failed round.
//!
//! Under `at_least_once` ([`AtLeastOnce`]) a partition's claimed ranges pass three
//! phases, each sent once the previous is acknowledged:
//!
//! 1. **outputs**: tier changes, churn events, dead letters and the population
//!    summary (workers send them right after writing the batch);
//! 2. **changelog**: the range's changelog copies, each key once (its last value),
//!    but the marker;
//! 3. **marker**: the range's last marker.
//!
//! A batch on the changelog therefore has its outputs delivered (a takeover by
//! restore, which has no outbox, loses nothing), and a marker on the changelog has
//! every record of its round before it (a restore applies whole rounds only). Only
//! the oldest range of a partition is past phase 1, so rounds reach the changelog in
//! order. Once the marker is acknowledged the range's outbox entries are deleted.
//!
//! What the broker refuses for good ([`permanent`]: too large for the topic, not
//! authorised, no such topic) is decided per destination: an output, dead letter or
//! summary is reported (an ERROR naming topic, partition, key and size, and
//! `strata_records_undeliverable_total`) and dropped; a changelog record cannot be
//! dropped (a restore would give a state the partition never had), so its partition
//! is **blocked** — it takes no events, the others go on — and its record is tried
//! again every [`BLOCKED_RETRY`] (raise the topic's `max.message.bytes`, and it
//! resumes). Every other failure (librdkafka gives up only when
//! `message.timeout.ms` is set) is sent again.
//!
//! Under `exactly_once` ([`ExactlyOnce`]) one transaction per round holds every
//! partition's claimed outputs and changelog copies (marker last) and the consumed
//! offsets. A transaction that fails is aborted and everything sent again in the
//! next (read_committed consumers see it once); what failed for good is left out of
//! the next one (a changelog record blocks its partition). A commit that times out
//! (the broker away) is retried, round after round.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::changelog::{changelog_key, Dest, Marker, RecordRef, MARKER_KEY};
use super::events;
use super::outbox::Outbox;
use super::task::Partition;
use super::KafkaError;
use crate::cluster::owner_key;
use crate::config::TopicsConfig;
use crate::store::Cf;
use crate::telemetry::Metrics;

/// Records wait this long for the broker before the instance reports not ready.
pub const STALL: Duration = Duration::from_secs(10);
/// How often a blocked partition's undeliverable changelog record is tried again.
pub const BLOCKED_RETRY: Duration = Duration::from_secs(30);
/// Records handed to the producer and not yet acknowledged beyond which no new
/// range is claimed: during an outage the outbox (RocksDB) holds the rest, not
/// librdkafka's queue (`queue.buffering.max.messages`: 100,000 by default).
pub const MAX_IN_FLIGHT: usize = 50_000;
/// How long a round waits for acknowledgements before the loop goes on (polling,
/// serving the group, applying): a round normally waits for all of them. Behind,
/// the wait also ends when a worker gives a partition back (`Round::interrupt`),
/// so that it gets its next batch at once rather than idle until the round's
/// records are acknowledged.
const ROUND_WAIT: Duration = Duration::from_secs(1);

/// The publisher's clock: [`ROUND_WAIT`], [`STALL`], [`BLOCKED_RETRY`] (tests
/// shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub round_wait: Duration,
    pub stall: Duration,
    pub blocked_retry: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            round_wait: ROUND_WAIT,
            stall: STALL,
            blocked_retry: BLOCKED_RETRY,
        }
    }
}

/// One record to send.
pub struct Record<'a> {
    pub topic: &'a str,
    /// `None`: chosen by the producer's partitioner from the key.
    pub partition: Option<i32>,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Which outbox record a delivery report is about.
pub struct Tag {
    pub ticket: Arc<Ticket>,
    /// Outbox entry and place in it.
    pub seq: u64,
    pub idx: u32,
    pub dest: Dest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub seq: u64,
    pub idx: u32,
    pub dest: Dest,
    /// The broker will never take it ([`permanent`]).
    pub permanent: bool,
}

/// The records of one send: how many are in flight, which failed.
#[derive(Default)]
pub struct Ticket {
    pending: AtomicUsize,
    failed: Mutex<Vec<Failure>>,
}

impl Ticket {
    /// A record of this ticket was handed over.
    pub fn sent(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// A record's delivery report (`failed`: `Some(permanent)` when it failed).
    pub fn report(&self, tag: &Tag, failed: Option<bool>) {
        if let Some(permanent) = failed {
            self.failed.lock().unwrap().push(Failure {
                seq: tag.seq,
                idx: tag.idx,
                dest: tag.dest,
                permanent,
            });
        }
        // After the failure is recorded: whoever sees nothing pending sees it.
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Every record handed over was reported.
    pub fn done(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    pub fn failures(&self) -> Vec<Failure> {
        self.failed.lock().unwrap().clone()
    }
}

/// Where records go.
pub trait Sink: Send + Sync {
    /// Hand `r` over; its delivery is reported to `tag.ticket` (a record refused at
    /// once, e.g. larger than the producer allows, is reported as failed). Only an
    /// error that stops every send is returned.
    fn send(&self, r: &Record<'_>, tag: Tag) -> Result<(), KafkaError>;
    /// Records handed over whose delivery was not reported yet.
    fn in_flight(&self) -> usize;
}

/// Errors after which the broker will never take the record: it is reported and,
/// by destination, dropped or its partition blocked. Everything else is retried.
pub fn permanent(code: Option<RDKafkaErrorCode>) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::MessageBatchTooLarge
                | C::InvalidMessage
                | C::InvalidRecord
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::PolicyViolation
                | C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::UnknownPartition
                | C::InvalidRequiredAcks
        )
    )
}

/// The producer's context: delivery reports go to their tickets.
pub struct PCtx {
    pub metrics: Arc<Metrics>,
}

impl ClientContext for PCtx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        events::ClientError {
            client: "producer",
            error: &error,
            reason,
        }
        .emit(&self.metrics);
    }
}

impl ProducerContext for PCtx {
    type DeliveryOpaque = Box<Tag>;
    fn delivery(&self, r: &DeliveryResult<'_>, tag: Box<Tag>) {
        let failed = match r {
            Ok(_) => None,
            Err((e, m)) => {
                let permanent = permanent(e.rdkafka_error_code());
                events::DeliveryFailed {
                    topic: m.topic(),
                    partition: m.partition(),
                    key: m.key().unwrap_or_default(),
                    bytes: m.payload_len(),
                    dest: tag.dest,
                    error: e,
                    permanent,
                }
                .emit(&self.metrics);
                Some(permanent)
            }
        };
        tag.ticket.clone().report(&tag, failed);
    }
}

impl Sink for ThreadedProducer<PCtx> {
    fn send(&self, r: &Record<'_>, tag: Tag) -> Result<(), KafkaError> {
        tag.ticket.sent();
        let mut rec: BaseRecord<'_, [u8], [u8], Box<Tag>> =
            BaseRecord::with_opaque_to(r.topic, Box::new(tag)).key(r.key);
        if !r.headers.is_empty() {
            // Only dead letters have headers: no header list for the rest.
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (hk, hv) in r.headers {
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
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        loop {
            match ThreadedProducer::send(self, rec) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, back)) => {
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
                        return Err(KafkaError::Broker(format!(
                            "the producer failed for good ({e}): restart strata"
                        )));
                    }
                    let tag = back.delivery_opaque;
                    let permanent = permanent(e.rdkafka_error_code());
                    events::DeliveryFailed {
                        topic: r.topic,
                        partition: r.partition.unwrap_or(-1),
                        key: r.key,
                        bytes: r.value.map_or(0, <[u8]>::len),
                        dest: tag.dest,
                        error: &e,
                        permanent,
                    }
                    .emit(&self.context().metrics);
                    tag.ticket.clone().report(&tag, Some(permanent));
                    return Ok(());
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight_count().max(0) as usize
    }
}

/// Where an outbox record goes: changelog and stats records to the state
/// partition's own partition; outputs and dead letters by key.
fn route<'a>(
    t: &'a TopicsConfig,
    p: i32,
    r: &'a RecordRef<'a>,
    headers: &'a [(&'a str, &'a [u8])],
) -> Record<'a> {
    let (topic, partition) = match r.dest {
        Dest::TierChanges => (&t.tier_changes, None),
        Dest::ChurnWarnings | Dest::ChurnRecovered => (&t.churn_warnings, None),
        Dest::DeadLetter => (&t.dead_letter, None),
        Dest::Changelog => (&t.changelog, Some(p)),
        Dest::Stats => (&t.stats, Some(p)),
        Dest::CustomerTiers => (&t.customer_tiers, None),
    };
    Record {
        topic,
        partition,
        key: r.key,
        value: r.value,
        headers,
    }
}

fn send_ref(
    sink: &dyn Sink,
    t: &TopicsConfig,
    p: i32,
    ticket: &Arc<Ticket>,
    seq: u64,
    idx: u32,
    r: &RecordRef<'_>,
) -> Result<(), KafkaError> {
    let headers = r.headers.clone();
    sink.send(
        &route(t, p, r, &headers),
        Tag {
            ticket: ticket.clone(),
            seq,
            idx,
            dest: r.dest,
        },
    )
}

/// Which phase of a claimed range is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Outputs,
    Changelog,
    Marker,
}

/// One claimed range of a partition's outbox, on its way to the broker.
pub struct Sent {
    pub outbox: Outbox,
    pub range: Range<u64>,
    /// The outbox entries found in the range.
    pub keys: Vec<u64>,
    /// The marker of the last of them.
    pub last: Marker,
    /// Outputs by type (for `strata_outputs_published_total`).
    counts: BTreeMap<&'static str, u64>,
    /// The changelog copies to send, each key's last in the range, as (entry,
    /// place) in write order: found while the outputs are sent (on the worker), so
    /// that the changelog phase (on the loop) follows positions, not keys.
    copies: Vec<(u64, u32)>,
    /// The place of the range's last marker.
    marker_at: Option<(u64, u32)>,
    pub phase: Phase,
    /// The phase's outputs are all delivered (or dropped for good).
    outputs_done: bool,
    ticket: Arc<Ticket>,
    sent_at: Instant,
    /// Changelog records sent (the last round's, for the gauge).
    pub changelog: usize,
}

impl Sent {
    /// Claim a partition's outbox entries not sent yet (`None`: there are none).
    pub fn claim(part: &Partition) -> Option<Sent> {
        let range = part.claim_unsent()?;
        Some(Sent {
            outbox: part.outbox.clone(),
            range,
            keys: Vec::new(),
            last: part.marker(),
            counts: BTreeMap::new(),
            copies: Vec::new(),
            marker_at: None,
            phase: Phase::Outputs,
            outputs_done: false,
            ticket: Arc::default(),
            sent_at: Instant::now(),
            changelog: 0,
        })
    }

    pub fn partition(&self) -> i32 {
        self.outbox.partition()
    }

    fn fresh_ticket(&mut self) -> Arc<Ticket> {
        self.ticket = Arc::default();
        self.sent_at = Instant::now();
        self.ticket.clone()
    }

    /// Send everything but the changelog copies (outputs, dead letters, stats),
    /// leaving out `skip`; note where each changelog key was last written.
    pub fn send_outputs(
        &mut self,
        sink: &dyn Sink,
        t: &TopicsConfig,
        skip: &HashSet<(u64, u32)>,
    ) -> Result<(), KafkaError> {
        let ticket = self.fresh_ticket();
        let p = self.partition();
        let mut latest = rustc_hash::FxHashMap::<Vec<u8>, (u64, u32)>::default();
        let (mut failed, keys, counts) = (None, &mut self.keys, &mut self.counts);
        self.outbox.visit(&self.range, &mut |seq, idx, r| {
            if keys.last() != Some(&seq) {
                keys.push(seq);
            }
            if r.dest == Dest::Changelog {
                latest.insert(r.key.to_vec(), (seq, idx));
                return true;
            }
            if skip.contains(&(seq, idx)) {
                return true;
            }
            if let Some(ty) = r.dest.output_type() {
                *counts.entry(ty).or_default() += 1;
            }
            failed = send_ref(sink, t, p, &ticket, seq, idx, r).err();
            failed.is_none()
        })?;
        let marker = changelog_key(Cf::Meta, MARKER_KEY).expect("meta is replicated");
        self.marker_at = latest.get(&marker).copied();
        self.copies = latest.into_values().collect();
        self.copies.sort_unstable();
        failed.map_or(Ok(()), Err)
    }

    /// Send the changelog copies, each key once (its last value in the range, in
    /// the order of the last writes); the marker too with `marker` (else it is the
    /// next phase's). Kafka Streams' record cache likewise forwards a key once per
    /// commit.
    pub fn send_changelog(
        &mut self,
        sink: &dyn Sink,
        t: &TopicsConfig,
        marker: bool,
        skip: &HashSet<(u64, u32)>,
    ) -> Result<(), KafkaError> {
        self.phase = Phase::Changelog;
        let places: Vec<(u64, u32)> = (self.copies.iter())
            .filter(|&&c| (marker || Some(c) != self.marker_at) && !skip.contains(&c))
            .copied()
            .collect();
        self.send_copies(sink, t, &places)
    }

    /// Send the range's last marker: every other record of the round was delivered.
    pub fn send_marker(&mut self, sink: &dyn Sink, t: &TopicsConfig) -> Result<(), KafkaError> {
        self.phase = Phase::Marker;
        // Only the marker is read (not the whole range again, nor its entry).
        let places: Vec<(u64, u32)> = self.marker_at.into_iter().collect();
        self.send_copies(sink, t, &places)
    }

    /// Send the changelog copies at `places` (in write order); only they are
    /// decoded.
    fn send_copies(
        &mut self,
        sink: &dyn Sink,
        t: &TopicsConfig,
        places: &[(u64, u32)],
    ) -> Result<(), KafkaError> {
        let ticket = self.fresh_ticket();
        let p = self.partition();
        let (mut failed, mut n) = (None, 0);
        self.outbox.visit_at(places, &mut |seq, idx, r| {
            n += 1;
            failed = send_ref(sink, t, p, &ticket, seq, idx, r).err();
            failed.is_none()
        })?;
        self.changelog = n;
        failed.map_or(Ok(()), Err)
    }

    /// Send these records of the range again (they failed), under a new ticket.
    fn resend(
        &mut self,
        failed: &[Failure],
        sink: &dyn Sink,
        t: &TopicsConfig,
    ) -> Result<(), KafkaError> {
        let again: HashSet<(u64, u32)> = failed.iter().map(|f| (f.seq, f.idx)).collect();
        let ticket = self.fresh_ticket();
        let p = self.partition();
        let mut err = None;
        self.outbox.visit(&self.range, &mut |seq, idx, r| {
            if again.contains(&(seq, idx)) {
                err = send_ref(sink, t, p, &ticket, seq, idx, r).err();
            }
            err.is_none()
        })?;
        err.map_or(Ok(()), Err)
    }

    /// Records of the current phase have waited longer than `stall` for the broker.
    fn stalled(&self, stall: Duration) -> bool {
        !self.ticket.done() && self.sent_at.elapsed() > stall
    }

    /// Outputs dropped for good are not published.
    fn discount(&mut self, dropped: &[Failure]) {
        for f in dropped {
            if let Some(n) = f.dest.output_type().and_then(|ty| self.counts.get_mut(ty)) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Count the outputs as published (they were all acknowledged).
    fn count_published(&mut self, metrics: &Metrics) {
        for (ty, n) in std::mem::take(&mut self.counts) {
            metrics.outputs_published.with_label_values(&[ty]).inc_by(n);
        }
    }
}

/// What a publishing round works on: the partitions on the loop (the others are on
/// workers), the announcements of ownership to make, and (exactly_once) what goes
/// into the transaction with the outputs.
pub struct Round<'a> {
    pub parts: &'a mut dyn Iterator<Item = &'a Partition>,
    /// Partitions whose ownership is to be announced (done ones are removed).
    pub announce: &'a mut BTreeSet<i32>,
    pub address: &'a str,
    /// exactly_once: the group's metadata, for the consumed offsets.
    pub group: Option<ConsumerGroupMetadata>,
    /// True once the loop has something better to do than wait for
    /// acknowledgements (a worker gave a partition back to be handed on): the
    /// round's wait ends then. Caught up, the loop has taken every partition back
    /// before publishing, so a round waits for all its acknowledgements (latency).
    pub interrupt: &'a dyn Fn() -> bool,
}

/// How a round's outbox records reach the broker.
pub trait Publisher: Send {
    /// A range the worker that wrote it sent the outputs of (at_least_once).
    fn adopt(&mut self, sent: Sent);
    /// Send what is unsent, wait a little for acknowledgements, move each range a
    /// phase on.
    fn publish(&mut self, round: Round<'_>) -> Result<(), KafkaError>;
    /// Nothing is in flight or waiting for partition `p` (any, with `None`) that
    /// could still be delivered.
    fn settled(&self, p: Option<i32>) -> bool;
    /// Forget what was in flight for partition `p` (closed without handing over).
    fn forget(&mut self, p: i32);
    /// Records have waited longer than [`STALL`] for the broker.
    fn stalled(&self) -> bool;
    /// Partitions whose changelog the broker refuses: they take no events.
    fn blocked(&self) -> BTreeSet<i32>;
    /// Whether the workers send the outputs of what they wrote themselves.
    fn workers_send(&self) -> bool;
    /// Wait for every partition's work to be applied before publishing (a
    /// transaction covers every partition's consumed offsets).
    fn needs_all_parts(&self) -> bool;
}

/// Ownership announcements in flight: their ticket and partitions.
type Announced = (Arc<Ticket>, Vec<i32>);

/// Send the ownership announcements (for `GET /v1/customers/{id}` on other
/// instances) under one ticket.
fn announce(
    sink: &dyn Sink,
    t: &TopicsConfig,
    ps: &BTreeSet<i32>,
    address: &str,
) -> Result<Option<Announced>, KafkaError> {
    if ps.is_empty() {
        return Ok(None);
    }
    let ticket: Arc<Ticket> = Arc::default();
    for &p in ps {
        let key = owner_key(p);
        let value = serde_json::json!({"partition": p, "address": address}).to_string();
        sink.send(
            &Record {
                topic: &t.stats,
                partition: Some(p),
                key: key.as_bytes(),
                value: Some(value.as_bytes()),
                headers: &[],
            },
            Tag {
                ticket: ticket.clone(),
                seq: 0,
                idx: p as u32,
                dest: Dest::Stats,
            },
        )?;
    }
    Ok(Some((ticket, ps.iter().copied().collect())))
}

/// Wait until nothing is in flight, at most `max`, and no longer than
/// `interrupt` is false.
fn wait(sink: &dyn Sink, max: Duration, interrupt: &dyn Fn() -> bool) {
    let deadline = Instant::now() + max;
    while sink.in_flight() > 0 && Instant::now() < deadline && !interrupt() {
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// A partition whose changelog the broker refuses for good.
struct Blocked {
    retry_at: Instant,
}

pub struct AtLeastOnce {
    sink: Arc<dyn Sink>,
    topics: TopicsConfig,
    metrics: Arc<Metrics>,
    /// Per partition, its claimed ranges in outbox order: the first may be past
    /// the outputs phase.
    flows: BTreeMap<i32, VecDeque<Sent>>,
    blocked: BTreeMap<i32, Blocked>,
    /// Announcements in flight.
    announcing: Option<Announced>,
    timing: Timing,
}

impl AtLeastOnce {
    pub fn new(sink: Arc<dyn Sink>, topics: TopicsConfig, metrics: Arc<Metrics>) -> AtLeastOnce {
        AtLeastOnce {
            sink,
            topics,
            metrics,
            flows: BTreeMap::new(),
            blocked: BTreeMap::new(),
            announcing: None,
            timing: Timing::default(),
        }
    }

    #[cfg(test)]
    pub fn with_timing(mut self, timing: Timing) -> AtLeastOnce {
        self.timing = timing;
        self
    }

    /// Claim and send the outputs of a partition (a worker, right after its write):
    /// `None` when there is nothing to send, or while the producer holds
    /// [`MAX_IN_FLIGHT`] records (the outbox keeps them meanwhile).
    pub fn send_new(
        part: &Partition,
        sink: &dyn Sink,
        t: &TopicsConfig,
    ) -> Result<Option<Sent>, KafkaError> {
        if sink.in_flight() >= MAX_IN_FLIGHT {
            return Ok(None);
        }
        let Some(mut sent) = Sent::claim(part) else {
            return Ok(None);
        };
        sent.send_outputs(sink, t, &HashSet::new())?;
        Ok(Some(sent))
    }

    /// Move partition p's ranges on as far as their acknowledgements allow.
    fn advance(&mut self, p: i32) -> Result<(), KafkaError> {
        let (sink, t, metrics, retry) = (
            &*self.sink,
            &self.topics,
            &self.metrics,
            self.timing.blocked_retry,
        );
        let Some(flow) = self.flows.get_mut(&p) else {
            return Ok(());
        };
        for sent in flow.iter_mut() {
            if sent.phase != Phase::Outputs || sent.outputs_done || !sent.ticket.done() {
                continue;
            }
            let failures = sent.ticket.failures();
            let (dropped, again): (Vec<Failure>, Vec<Failure>) =
                failures.into_iter().partition(|f| f.permanent);
            // The dropped ones were reported; they stay dropped.
            sent.discount(&dropped);
            if !again.is_empty() {
                metrics.records_resent.inc_by(again.len() as u64);
                sent.resend(&again, sink, t)?;
                continue;
            }
            sent.count_published(metrics);
            sent.outputs_done = true;
        }
        while let Some(front) = flow.front_mut() {
            match front.phase {
                Phase::Outputs if !front.outputs_done => break,
                Phase::Outputs => {
                    front.send_changelog(sink, t, false, &HashSet::new())?;
                    if front.changelog > 0 {
                        break;
                    }
                    // Nothing but the marker (a batch of offsets only).
                    front.send_marker(sink, t)?;
                    break;
                }
                _ if !front.ticket.done() => break,
                phase => {
                    let failures = front.ticket.failures();
                    if failures.iter().any(|f| f.permanent) {
                        if let Some(b) = self.blocked.get_mut(&p) {
                            if Instant::now() < b.retry_at {
                                break;
                            }
                            b.retry_at = Instant::now() + retry;
                        } else {
                            events::PartitionBlocked { partition: p }.emit();
                            self.blocked.insert(
                                p,
                                Blocked {
                                    retry_at: Instant::now() + retry,
                                },
                            );
                            self.metrics
                                .partitions_blocked
                                .set(self.blocked.len() as i64);
                            break;
                        }
                    }
                    if !failures.is_empty() {
                        metrics.records_resent.inc_by(failures.len() as u64);
                        front.resend(&failures, sink, t)?;
                        break;
                    }
                    if self.blocked.remove(&p).is_some() {
                        events::PartitionUnblocked { partition: p }.emit();
                        self.metrics
                            .partitions_blocked
                            .set(self.blocked.len() as i64);
                    }
                    if phase == Phase::Changelog {
                        front.send_marker(sink, t)?;
                        break;
                    }
                    // The marker is on the changelog: the range is published.
                    front.outbox.published(&front.keys, &front.last)?;
                    flow.pop_front();
                }
            }
        }
        if flow.is_empty() {
            self.flows.remove(&p);
        }
        Ok(())
    }
}

impl Publisher for AtLeastOnce {
    fn adopt(&mut self, sent: Sent) {
        let flow = self.flows.entry(sent.partition()).or_default();
        let at = flow.partition_point(|s| s.range.start < sent.range.start);
        flow.insert(at, sent);
    }

    fn publish(&mut self, round: Round<'_>) -> Result<(), KafkaError> {
        for part in round.parts {
            if let Some(sent) = AtLeastOnce::send_new(part, &*self.sink, &self.topics)? {
                self.adopt(sent);
            }
        }
        // Ownership announcements ride along with a round that has records; they
        // never make a round of their own.
        if self.announcing.is_none() && !self.flows.is_empty() {
            self.announcing = announce(&*self.sink, &self.topics, round.announce, round.address)?;
        }
        if self.flows.is_empty() && self.announcing.is_none() {
            return Ok(());
        }
        wait(&*self.sink, self.timing.round_wait, round.interrupt);
        if let Some((ticket, ps)) = &self.announcing {
            if ticket.done() {
                if ticket.failures().is_empty() {
                    ps.iter().for_each(|p| {
                        round.announce.remove(p);
                    });
                }
                self.announcing = None;
            }
        }
        let parts: Vec<i32> = self.flows.keys().copied().collect();
        for p in parts {
            self.advance(p)?;
        }
        Ok(())
    }

    /// A blocked partition counts as settled: its round cannot complete, and its
    /// next owner applies its events again from the changelog's offsets.
    fn settled(&self, p: Option<i32>) -> bool {
        let done = |p: &i32| !self.flows.contains_key(p) || self.blocked.contains_key(p);
        match p {
            Some(p) => done(&p),
            None => self.flows.keys().all(done),
        }
    }

    fn forget(&mut self, p: i32) {
        self.flows.remove(&p);
        if self.blocked.remove(&p).is_some() {
            self.metrics
                .partitions_blocked
                .set(self.blocked.len() as i64);
        }
    }

    fn stalled(&self) -> bool {
        self.flows
            .iter()
            .filter(|(p, _)| !self.blocked.contains_key(p))
            .any(|(_, f)| f.iter().any(|s| s.stalled(self.timing.stall)))
    }

    fn blocked(&self) -> BTreeSet<i32> {
        self.blocked.keys().copied().collect()
    }

    fn workers_send(&self) -> bool {
        true
    }

    fn needs_all_parts(&self) -> bool {
        false
    }
}

/// The transaction of a round, once its records are sent.
struct Txn {
    sent: Vec<Sent>,
    announced: Option<Announced>,
    /// The consumed offsets are in it (the commit is what is left).
    offsets_sent: bool,
    offsets: TopicPartitionList,
    began: Instant,
}

pub struct ExactlyOnce {
    producer: Arc<ThreadedProducer<PCtx>>,
    topics: TopicsConfig,
    metrics: Arc<Metrics>,
    txn: Option<Txn>,
    /// An abort that has not succeeded yet (the broker away): retried each round.
    aborting: bool,
    /// Outboxes to send again from their floor once the abort succeeds.
    resend: Vec<Outbox>,
    /// Records that failed for good, left out of later transactions:
    /// (partition, entry, place).
    skip: HashSet<(i32, u64, u32)>,
    blocked: BTreeMap<i32, Blocked>,
}

impl ExactlyOnce {
    pub fn new(
        producer: Arc<ThreadedProducer<PCtx>>,
        topics: TopicsConfig,
        metrics: Arc<Metrics>,
    ) -> ExactlyOnce {
        ExactlyOnce {
            producer,
            topics,
            metrics,
            txn: None,
            aborting: false,
            resend: Vec::new(),
            skip: HashSet::new(),
            blocked: BTreeMap::new(),
        }
    }

    fn skip_of(&self, p: i32) -> HashSet<(u64, u32)> {
        self.skip
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|&(_, s, i)| (s, i))
            .collect()
    }

    /// Abort the transaction (again, if it timed out before); true once done.
    fn abort(&mut self) -> Result<bool, KafkaError> {
        match self.producer.abort_transaction(Duration::from_secs(5)) {
            Ok(()) => {
                self.aborting = false;
                self.metrics.transactions_aborted.inc();
                for o in self.resend.drain(..) {
                    o.resend();
                }
                Ok(true)
            }
            Err(e) if verdict(&e) == Verdict::Retry => {
                tracing::warn!(error = %e, "Could not abort the transaction yet; retrying.");
                Ok(false)
            }
            Err(e) => Err(KafkaError::Broker(format!(
                "cannot abort the transaction: {e} (restart strata; the outbox is sent again)"
            ))),
        }
    }

    /// The transaction failed: note what failed for good, abort, send the rest
    /// again in the next one.
    fn fail(&mut self, txn: Txn, why: &dyn std::fmt::Display) -> Result<(), KafkaError> {
        tracing::warn!(error = %why, "Transaction failed; aborting. The outbox is kept and sent again in the next transaction.");
        for sent in &txn.sent {
            let p = sent.partition();
            for f in sent.ticket.failures().into_iter().filter(|f| f.permanent) {
                if f.dest == Dest::Changelog {
                    if !self.blocked.contains_key(&p) {
                        events::PartitionBlocked { partition: p }.emit();
                    }
                    self.blocked.insert(
                        p,
                        Blocked {
                            retry_at: Instant::now() + BLOCKED_RETRY,
                        },
                    );
                } else {
                    self.skip.insert((p, f.seq, f.idx));
                }
            }
            self.resend.push(sent.outbox.clone());
        }
        self.metrics
            .partitions_blocked
            .set(self.blocked.len() as i64);
        self.aborting = true;
        self.abort().map(|_| ())
    }

    fn begin(
        &mut self,
        parts: &mut dyn Iterator<Item = &Partition>,
        announcements: &BTreeSet<i32>,
        address: &str,
    ) -> Result<Option<Txn>, KafkaError> {
        let now = Instant::now();
        let claimed: Vec<Sent> = parts
            .filter(|part| self.blocked.get(&part.id).is_none_or(|b| now >= b.retry_at))
            .filter_map(Sent::claim)
            .collect();
        if claimed.is_empty() && announcements.is_empty() {
            return Ok(None);
        }
        self.producer
            .begin_transaction()
            .map_err(|e| KafkaError::Broker(format!("cannot begin a transaction: {e}")))?;
        let mut offsets = TopicPartitionList::new();
        let mut sent_all = Vec::with_capacity(claimed.len());
        for mut sent in claimed {
            let skip = self.skip_of(sent.partition());
            sent.send_outputs(&*self.producer, &self.topics, &skip)?;
            sent.send_changelog(&*self.producer, &self.topics, true, &skip)?;
            for (topic, o) in &sent.last.offsets {
                offsets
                    .add_partition_offset(topic, sent.partition(), Offset::Offset(*o))
                    .ok();
            }
            sent_all.push(sent);
        }
        let announced = announce(&*self.producer, &self.topics, announcements, address)?;
        Ok(Some(Txn {
            sent: sent_all,
            announced,
            // A transaction of announcements only consumed nothing: no offsets.
            offsets_sent: offsets.count() == 0,
            offsets,
            began: now,
        }))
    }
}

/// What to do after a transactional call failed.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Call it again later (it timed out: the broker is away).
    Retry,
    /// Abort the transaction and send its records again in the next.
    Abort,
    /// The producer is unusable (fenced by another instance with this
    /// `transactional.id`, or a fatal idempotence error): stop.
    Fatal,
}

fn verdict(e: &rdkafka::error::KafkaError) -> Verdict {
    match e {
        rdkafka::error::KafkaError::Transaction(t) if t.is_fatal() => Verdict::Fatal,
        rdkafka::error::KafkaError::Transaction(t) if t.txn_requires_abort() => Verdict::Abort,
        rdkafka::error::KafkaError::Transaction(t) if t.is_retriable() => Verdict::Retry,
        _ => Verdict::Abort,
    }
}

fn fatal(e: &rdkafka::error::KafkaError) -> KafkaError {
    KafkaError::Broker(format!(
        "the transactional producer failed for good: {e} (is another instance running with this kafka.instance_id? restart strata)"
    ))
}

impl Publisher for ExactlyOnce {
    fn adopt(&mut self, _: Sent) {
        unreachable!("under exactly_once only the loop's transaction sends")
    }

    fn publish(&mut self, round: Round<'_>) -> Result<(), KafkaError> {
        let Round {
            parts,
            announce: announcements,
            address,
            group,
            interrupt,
        } = round;
        if self.aborting && !self.abort()? {
            return Ok(());
        }
        if self.txn.is_none() {
            self.txn = self.begin(parts, announcements, address)?;
        }
        let Some(mut txn) = self.txn.take() else {
            return Ok(());
        };
        // Its records are delivered first (the commit would wait for them anyway):
        // an abort then concerns records already in the log, never ones librdkafka
        // still holds and purges.
        wait(&*self.producer, ROUND_WAIT, interrupt);
        if self.producer.in_flight() > 0 {
            self.txn = Some(txn);
            return Ok(());
        }
        if txn
            .sent
            .iter()
            .any(|s| s.ticket.failures().iter().any(|f| f.permanent))
        {
            return self.fail(txn, &"a record of the transaction was refused for good");
        }
        if !txn.offsets_sent {
            let gm =
                group.ok_or_else(|| KafkaError::Broker("no consumer group metadata".into()))?;
            match self.producer.send_offsets_to_transaction(
                &txn.offsets,
                &gm,
                Duration::from_secs(10),
            ) {
                Ok(()) => txn.offsets_sent = true,
                Err(e) => match verdict(&e) {
                    Verdict::Retry => {
                        self.txn = Some(txn);
                        return Ok(());
                    }
                    Verdict::Abort => return self.fail(txn, &e),
                    Verdict::Fatal => return Err(fatal(&e)),
                },
            }
        }
        if let Err(e) = self.producer.commit_transaction(Duration::from_secs(10)) {
            return match verdict(&e) {
                Verdict::Retry => {
                    tracing::warn!(error = %e, seconds = txn.began.elapsed().as_secs(), "The transaction's commit is not confirmed yet; retrying.");
                    self.txn = Some(txn);
                    Ok(())
                }
                Verdict::Abort => self.fail(txn, &e),
                Verdict::Fatal => Err(fatal(&e)),
            };
        }
        for sent in &mut txn.sent {
            sent.count_published(&self.metrics);
            sent.outbox.published(&sent.keys, &sent.last)?;
            let (p, range) = (sent.partition(), sent.range.clone());
            self.skip.retain(|(q, s, _)| *q != p || !range.contains(s));
            if self.blocked.remove(&p).is_some() {
                events::PartitionUnblocked { partition: p }.emit();
            }
        }
        self.metrics
            .partitions_blocked
            .set(self.blocked.len() as i64);
        if let Some((ticket, ps)) = &txn.announced {
            if ticket.failures().is_empty() {
                for p in ps {
                    announcements.remove(p);
                }
            }
        }
        tracing::debug!(ranges = txn.sent.len(), "Committed a transaction.");
        Ok(())
    }

    fn settled(&self, _: Option<i32>) -> bool {
        self.txn.is_none() && !self.aborting
    }

    fn forget(&mut self, p: i32) {
        self.skip.retain(|(q, _, _)| *q != p);
        self.blocked.remove(&p);
        self.metrics
            .partitions_blocked
            .set(self.blocked.len() as i64);
    }

    fn stalled(&self) -> bool {
        self.aborting || self.txn.as_ref().is_some_and(|t| t.began.elapsed() > STALL)
    }

    fn blocked(&self) -> BTreeSet<i32> {
        self.blocked.keys().copied().collect()
    }

    fn workers_send(&self) -> bool {
        false
    }

    fn needs_all_parts(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    //! The publishing decisions against a fake sink: a real partition (RocksDB in a
    //! temporary dir) writes batches; the fake holds each record until the test
    //! reports it delivered, failed, or failed for good.

    use super::*;
    use crate::config::Settings;
    use crate::event::{parse_event, ParseContext};
    use crate::kafka::changelog::{parse_changelog_key, MARKER_KEY};
    use crate::kafka::task::Msg;
    use crate::store::rocks::RocksStore;
    use crate::store::{Cf, Store};

    #[derive(Debug, Clone, PartialEq)]
    struct Rec {
        topic: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    }

    impl Rec {
        fn is_marker(&self) -> bool {
            parse_changelog_key(&self.key).is_some_and(|(cf, k)| cf == Cf::Meta && k == MARKER_KEY)
        }
    }

    /// Holds what it is given until `deliver`.
    #[derive(Default)]
    struct Fake {
        held: Mutex<Vec<(Rec, Tag)>>,
        log: Mutex<Vec<Rec>>,
    }

    impl Sink for Fake {
        fn send(&self, r: &Record<'_>, tag: Tag) -> Result<(), KafkaError> {
            tag.ticket.sent();
            let rec = Rec {
                topic: r.topic.to_string(),
                key: r.key.to_vec(),
                value: r.value.map(<[u8]>::to_vec),
            };
            self.log.lock().unwrap().push(rec.clone());
            self.held.lock().unwrap().push((rec, tag));
            Ok(())
        }
        fn in_flight(&self) -> usize {
            self.held.lock().unwrap().len()
        }
    }

    impl Fake {
        /// Report every held record: `outcome` says `None` (delivered) or
        /// `Some(permanent)` (failed).
        fn deliver(&self, outcome: impl Fn(&Rec) -> Option<bool>) {
            for (r, tag) in self.held.lock().unwrap().drain(..) {
                tag.ticket.clone().report(&tag, outcome(&r));
            }
        }
        fn take_log(&self) -> Vec<Rec> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    fn topics() -> TopicsConfig {
        TopicsConfig::default()
    }

    fn timing() -> Timing {
        Timing {
            round_wait: Duration::ZERO,
            stall: Duration::from_secs(3600),
            blocked_retry: Duration::ZERO,
        }
    }

    /// A partition that applied `batches` of purchases, each written as one batch.
    fn partition(dir: &std::path::Path, batches: &[&[(&str, f64)]]) -> Partition {
        // No segment summaries: each batch is one outbox entry.
        let mut settings = Settings::defaults();
        settings.raw.kafka.segments_interval_ms = 0;
        let settings = Arc::new(settings);
        let store = Arc::new(RocksStore::open(dir, 8, 4).unwrap());
        let metrics = Arc::new(Metrics::new());
        let mut part = Partition::open(settings.clone(), 0, store, 7, 1, metrics).unwrap();
        let ctx = ParseContext::for_files(&settings);
        let topics = vec!["purchases".to_string()];
        let mut offset = 0;
        for (day, batch) in batches.iter().enumerate() {
            for (customer, amount) in batch.iter() {
                let raw = format!(
                    r#"{{"event_id":"e{offset}","customer_id":"{customer}","type":"purchase","ts":"2026-03-{:02}T10:00:00Z","amount":{amount}}}"#,
                    day + 1
                );
                part.enqueue(
                    0,
                    "purchases",
                    Msg::new(offset, Some(customer.as_bytes().to_vec()), raw.into_bytes()),
                );
                offset += 1;
            }
            let parse = |_: usize, raw: &[u8]| parse_event(raw, &ctx);
            part.drain(&topics, &parse, &|_| true, &mut |_, _| {})
                .unwrap();
            part.commit().unwrap();
        }
        part
    }

    fn publish(p: &mut AtLeastOnce) {
        publish_until(p, &|| false);
    }

    /// A round with nothing new, whose wait ends when `interrupt` says so.
    fn publish_until(p: &mut AtLeastOnce, interrupt: &dyn Fn() -> bool) {
        let mut none = std::iter::empty::<&Partition>();
        p.publish(Round {
            parts: &mut none,
            announce: &mut BTreeSet::new(),
            address: "http://here",
            group: None,
            interrupt,
        })
        .unwrap();
    }

    fn outbox_entries(part: &Partition) -> usize {
        let mut n = 0;
        part.store
            .scan(Cf::Outbox, &[], None, &mut |_, _| {
                n += 1;
                Ok(true)
            })
            .unwrap();
        n
    }

    fn publisher(sink: &Arc<Fake>) -> (AtLeastOnce, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (
            AtLeastOnce::new(sink.clone(), topics(), metrics.clone()).with_timing(timing()),
            metrics,
        )
    }

    /// A partition that applied `batches`, a publisher over a fake sink that holds
    /// the partition's outputs (sent, not yet reported), and those outputs.
    struct Started {
        _dir: tempfile::TempDir,
        part: Partition,
        sink: Arc<Fake>,
        p: AtLeastOnce,
        metrics: Arc<Metrics>,
        outputs: Vec<Rec>,
    }

    fn started(batches: &[&[(&str, f64)]], timing: Timing) -> Started {
        let dir = tempfile::tempdir().unwrap();
        let part = partition(dir.path(), batches);
        let sink = Arc::new(Fake::default());
        let metrics = Arc::new(Metrics::new());
        let mut p = AtLeastOnce::new(sink.clone(), topics(), metrics.clone()).with_timing(timing);
        p.adopt(
            AtLeastOnce::send_new(&part, &*sink, &topics())
                .unwrap()
                .unwrap(),
        );
        let outputs = sink.take_log();
        Started {
            _dir: dir,
            part,
            sink,
            p,
            metrics,
            outputs,
        }
    }

    /// The first tier change among `recs`.
    fn first_tier_change(recs: &[Rec]) -> Rec {
        recs.iter()
            .find(|r| r.topic == topics().tier_changes)
            .unwrap()
            .clone()
    }

    /// Outputs, then the changelog (each key once, its last value), then the
    /// marker, each phase only once the previous one is acknowledged; then the
    /// outbox is empty.
    #[test]
    fn phases_go_in_order_and_a_round_sends_each_key_once() {
        let dir = tempfile::tempdir().unwrap();
        // Two batches, both writing customer a: one outbox range of two entries.
        let part = partition(dir.path(), &[&[("a", 10.0), ("b", 5.0)], &[("a", 7.0)]]);
        let sink = Arc::new(Fake::default());
        let (mut p, metrics) = publisher(&sink);
        let sent = AtLeastOnce::send_new(&part, &*sink, &topics())
            .unwrap()
            .unwrap();
        assert_eq!(sent.keys.len(), 2, "both batches' entries");
        p.adopt(sent);
        let outputs = sink.take_log();
        assert!(!outputs.is_empty());
        assert!(
            outputs.iter().all(|r| r.topic != topics().changelog),
            "outputs first"
        );
        let tier_changes = outputs
            .iter()
            .filter(|r| r.topic == topics().tier_changes)
            .count();
        // Not acknowledged yet: nothing moves on.
        publish(&mut p);
        assert!(sink.take_log().is_empty());
        sink.deliver(|_| None);
        publish(&mut p);
        let changelog = sink.take_log();
        assert!(!changelog.is_empty() && changelog.iter().all(|r| r.topic == topics().changelog));
        assert!(
            !changelog.iter().any(Rec::is_marker),
            "the marker waits for the rest"
        );
        let mut keys: Vec<&Vec<u8>> = changelog.iter().map(|r| &r.key).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "each key once per round");
        let a = changelog_key_of(b"a");
        let a_value = changelog.iter().find(|r| r.key == a).unwrap().value.clone();
        assert_eq!(
            a_value,
            part.store.get(Cf::Customers, b"a").unwrap(),
            "a's last value"
        );
        assert_eq!(
            outbox_entries(&part),
            2,
            "kept until the marker is acknowledged"
        );
        sink.deliver(|_| None);
        publish(&mut p);
        let marker = sink.take_log();
        assert_eq!(marker.len(), 1);
        assert!(marker[0].is_marker());
        assert!(!p.settled(None));
        sink.deliver(|_| None);
        publish(&mut p);
        assert!(p.settled(None));
        assert_eq!(outbox_entries(&part), 0, "published entries are deleted");
        assert!(sink.take_log().is_empty(), "nothing sent twice");
        assert_eq!(
            metrics
                .outputs_published
                .with_label_values(&["tier_changed"])
                .get() as usize,
            tier_changes
        );
    }

    fn changelog_key_of(id: &[u8]) -> Vec<u8> {
        crate::kafka::changelog::changelog_key(Cf::Customers, id).unwrap()
    }

    /// A record that failed (not for good) is sent again, alone: the healthy ones
    /// of its round are not.
    #[test]
    fn only_failed_records_are_sent_again() {
        let Started {
            sink,
            mut p,
            metrics,
            outputs: first,
            ..
        } = started(&[&[("a", 10.0), ("b", 5.0), ("c", 1.0)]], timing());
        let victim = first_tier_change(&first);
        sink.deliver(|r| (*r == victim).then_some(false));
        publish(&mut p);
        assert_eq!(
            sink.take_log(),
            vec![victim.clone()],
            "the failed output alone, again"
        );
        assert_eq!(metrics.records_resent.get(), 1);
        // Fails again; then the broker takes it.
        sink.deliver(|r| (*r == victim).then_some(false));
        publish(&mut p);
        assert_eq!(sink.take_log(), vec![victim.clone()]);
        sink.deliver(|_| None);
        publish(&mut p);
        let next = sink.take_log();
        assert!(
            next.iter().all(|r| r.topic == topics().changelog),
            "then the changelog"
        );
        // Every healthy output went out once.
        for r in first.iter().filter(|r| **r != victim) {
            assert!(!next.contains(r));
        }
    }

    /// An output the broker refuses for good is dropped (not sent again, not
    /// counted as published), and the round goes on.
    #[test]
    fn an_undeliverable_output_is_dropped_and_the_round_goes_on() {
        let Started {
            sink,
            mut p,
            metrics,
            outputs: first,
            ..
        } = started(&[&[("a", 10.0), ("b", 5.0)]], timing());
        let tier_changes = first
            .iter()
            .filter(|r| r.topic == topics().tier_changes)
            .count();
        let victim = first_tier_change(&first);
        sink.deliver(|r| (*r == victim).then_some(true));
        publish(&mut p);
        let next = sink.take_log();
        assert!(!next.is_empty() && next.iter().all(|r| r.topic == topics().changelog));
        for _ in 0..2 {
            sink.deliver(|_| None);
            publish(&mut p);
        }
        assert!(p.settled(None));
        assert!(p.blocked().is_empty());
        assert_eq!(
            metrics
                .outputs_published
                .with_label_values(&["tier_changed"])
                .get() as usize,
            tier_changes - 1
        );
    }

    /// A changelog record refused for good blocks its partition (no marker goes,
    /// nothing is deleted) and is tried again, alone, until it is accepted.
    #[test]
    fn an_undeliverable_changelog_record_blocks_its_partition_until_accepted() {
        let Started {
            part, sink, mut p, ..
        } = started(&[&[("a", 10.0), ("b", 5.0)]], timing());
        sink.deliver(|_| None);
        publish(&mut p);
        let a = changelog_key_of(b"a");
        sink.take_log();
        sink.deliver(|r| (r.key == a).then_some(true));
        publish(&mut p);
        assert_eq!(p.blocked(), BTreeSet::from([0]));
        assert!(sink.take_log().is_empty(), "blocked: no marker");
        // Retried (the test's retry delay is zero): a's record alone, refused again.
        publish(&mut p);
        let retried = sink.take_log();
        assert_eq!(retried.len(), 1);
        assert_eq!(retried[0].key, a);
        sink.deliver(|_| Some(true));
        publish(&mut p);
        assert_eq!(p.blocked(), BTreeSet::from([0]));
        publish(&mut p);
        assert_eq!(sink.take_log().len(), 1, "a once more");
        // The topic accepts it now: unblocked, then the marker.
        sink.deliver(|_| None);
        publish(&mut p);
        assert!(p.blocked().is_empty());
        let marker = sink.take_log();
        assert!(marker.len() == 1 && marker[0].is_marker());
        sink.deliver(|_| None);
        publish(&mut p);
        assert!(p.settled(None));
        assert_eq!(outbox_entries(&part), 0);
    }

    /// While the broker is away nothing is reported: rounds send nothing more,
    /// the wait is reported (readiness), and once it is back everything goes
    /// through, once.
    #[test]
    fn an_outage_stalls_and_then_resumes_without_resending() {
        let stall = Timing {
            stall: Duration::from_millis(20),
            ..timing()
        };
        let Started {
            sink,
            mut p,
            outputs: first,
            ..
        } = started(&[&[("a", 10.0), ("b", 5.0)]], stall);
        for _ in 0..3 {
            publish(&mut p);
        }
        assert!(sink.take_log().is_empty(), "nothing sent again meanwhile");
        assert!(!p.stalled());
        std::thread::sleep(Duration::from_millis(30));
        assert!(p.stalled(), "records waited longer than the stall time");
        sink.deliver(|_| None);
        publish(&mut p);
        assert!(!p.stalled());
        let next = sink.take_log();
        assert!(next.iter().all(|r| r.topic == topics().changelog));
        assert!(first.iter().all(|r| !next.contains(r)));
    }

    /// A round waits for its acknowledgements until the loop has something else
    /// to do (`interrupt`), not to `round_wait`; what is in flight stays there.
    #[test]
    fn a_round_stops_waiting_when_interrupted() {
        let long = Timing {
            // Ignoring the interrupt, the round would end here, with `asked` 0.
            round_wait: Duration::from_secs(30),
            ..timing()
        };
        let Started { sink, mut p, .. } = started(&[&[("a", 10.0)]], long);
        let asked = std::cell::Cell::new(0);
        publish_until(&mut p, &|| {
            asked.set(asked.get() + 1);
            true
        });
        assert_eq!(asked.get(), 1, "the wait asked once and ended");
        assert!(sink.in_flight() > 0, "nothing was acknowledged meanwhile");
        assert!(!p.settled(None));
        sink.deliver(|_| None);
        publish(&mut p);
        assert!(sink
            .take_log()
            .iter()
            .all(|r| r.topic == topics().changelog));
    }

    /// With the producer full, nothing new is claimed: the outbox keeps it, and
    /// the next claim takes it (in order).
    #[test]
    fn a_full_producer_leaves_new_work_in_the_outbox() {
        struct Full;
        impl Sink for Full {
            fn send(&self, _: &Record<'_>, _: Tag) -> Result<(), KafkaError> {
                unreachable!("nothing is claimed while full")
            }
            fn in_flight(&self) -> usize {
                MAX_IN_FLIGHT
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let part = partition(dir.path(), &[&[("a", 10.0)], &[("b", 5.0)]]);
        assert!(AtLeastOnce::send_new(&part, &Full, &topics())
            .unwrap()
            .is_none());
        let sink = Fake::default();
        let sent = AtLeastOnce::send_new(&part, &sink, &topics())
            .unwrap()
            .unwrap();
        assert_eq!(sent.keys.len(), 2, "both entries, from the first");
    }

    #[test]
    fn refusals_for_good_are_told_from_the_rest() {
        use RDKafkaErrorCode as C;
        for c in [
            C::MessageSizeTooLarge,
            C::TopicAuthorizationFailed,
            C::UnknownTopicOrPartition,
            C::InvalidRecord,
        ] {
            assert!(permanent(Some(c)), "{c:?}");
        }
        for c in [
            C::MessageTimedOut,
            C::NotEnoughReplicas,
            C::BrokerTransportFailure,
            C::PurgeQueue,
            C::RequestTimedOut,
        ] {
            assert!(!permanent(Some(c)), "{c:?}");
        }
        assert!(!permanent(None));
    }
}
