//! One state partition on this instance (a Kafka Streams task): partition p of
//! every input topic feeds one RocksDB (`<state_dir>/partitions/<p>`) and one
//! [`Processor`], so a partition is restored, dropped or handed over on its own.
//!
//! Messages wait in one queue per input topic and are applied in event-time order
//! across the three (Kafka Streams' stream-time rule): the next event is the earliest
//! head of the queues, and the partition waits while a queue is empty but its topic
//! partition has more to fetch (see [`super::inputs::input_caught_up`]). So a
//! partition's order is a function of its input topics alone, whatever the fetch
//! interleaving — the same order `strata replay` sees when given the merged partition
//! (what the end-to-end tests compare).
//!
//! A message keyed other than by its event's `customer_id` is a dead letter
//! (`key_mismatch`, `missing_key`; `kafka.check_keys`), as is, with the event clock,
//! an event too far after the partition's stream clock (`future_timestamp`,
//! `engine.max_event_clock_jump_days`), checked in merge order as `replay` does.
//!
//! The processor's [`FlushHook`](crate::processor::FlushHook) adds to every state
//! write the batch marker (consumed offsets), and copies of the write, the outputs,
//! the dead letters and the population summary into the outbox (see [`changelog`],
//! [`super::outbox`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use crate::config::{Clock, Settings};
use crate::event::{check_clock_jump, check_key, Event, Rejection};
use crate::output::OutputType;
use crate::population::Population;
use crate::predict::model::Histogram;
use crate::processor::Processor;
use crate::processor::META_MODEL_HISTOGRAM;
use crate::store::rocks::RocksStore;
use crate::store::{Batch, Cf, Store, StoreError};
use crate::telemetry::Metrics;

use super::changelog::{
    changelog_key, Dest, EntryWriter, Marker, OutboxRecord, RecordRef, MARKER_KEY, PUBLISHED_KEY,
};
use super::outbox::Outbox;

/// One consumed message; parsed by the thread that drains it (a worker), not by
/// the loop that polls it.
pub struct Msg {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub raw: Vec<u8>,
    /// The record's Kafka timestamp and when strata polled it (ms since the
    /// epoch): `strata_record_e2e_latency_seconds`.
    pub times: Option<(i64, i64)>,
    /// `None` until the first drain after it was queued.
    parsed: Option<Result<Event, Rejection>>,
    /// The customer's handle in this partition's processor, when it had one at
    /// parsing (handles are never reused; the queue and the processor live and
    /// die together).
    handle: Option<u32>,
}

/// Parses input `i`'s message bytes (and counts them).
pub type Parser<'a> = &'a dyn Fn(usize, &[u8]) -> Result<Event, Rejection>;

impl Msg {
    pub fn new(offset: i64, key: Option<Vec<u8>>, raw: Vec<u8>) -> Msg {
        Msg {
            offset,
            key,
            raw,
            times: None,
            parsed: None,
            handle: None,
        }
    }

    /// With its record's timestamp and when it was polled (ms since the epoch).
    pub fn stamped(mut self, timestamp: Option<i64>, polled: i64) -> Msg {
        self.times = timestamp.map(|t| (t, polled));
        self
    }

    /// Event time for ordering; bad messages go first (they change nothing).
    fn order_key(&self) -> i64 {
        match &self.parsed {
            Some(Ok(e)) => e.ts_millis,
            _ => i64::MIN,
        }
    }
}

/// What the flush hook shares with the shell.
struct Pending {
    partition: i32,
    /// The marker the next write will carry (offsets are kept current).
    marker: Marker,
    nonce: u64,
    dead: Vec<OutboxRecord>,
    /// Writes of values the store already holds, for the next batch's changelog
    /// copies: keys an unfinished round left on the changelog (see
    /// [`Partition::republish`]).
    republish: Batch,
    /// The partition's segment summary for the next batch to publish on the stats
    /// topic (`segments/<p>`), when one is due.
    segments: Option<Vec<u8>>,
}

/// Dead-letter record (SPEC §2): the reason, the source, and the original bytes.
#[derive(serde::Serialize)]
struct DeadLetter<'a> {
    reason: String,
    detail: &'a str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    /// The original message as text (bytes that are not UTF-8 replaced by U+FFFD:
    /// base64 would hide why a message is bad), at most
    /// `kafka.dead_letter_max_raw_bytes` of it.
    raw: &'a str,
    raw_is_utf8: bool,
    /// `raw` is the beginning of the message only.
    raw_truncated: bool,
}

/// `text` cut to at most `max` bytes at a character boundary; whether it was cut.
fn truncate(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

pub struct Partition {
    pub id: i32,
    pub store: Arc<RocksStore>,
    pub proc: Processor<Arc<RocksStore>>,
    pending: Arc<Mutex<Pending>>,
    /// One queue per input topic, in [`super::inputs::Inputs`] order.
    pub queues: Vec<VecDeque<Msg>>,
    /// What was sent and published of the outbox (shared with the publisher).
    pub outbox: Outbox,
    metrics: Arc<Metrics>,
    /// When the segment summary was last counted (`None`: not yet), and whether a
    /// write since changed what it counts.
    segments_counted: Option<std::time::Instant>,
    segments_stale: bool,
}

impl Partition {
    pub fn open(
        settings: Arc<Settings>,
        id: i32,
        store: Arc<RocksStore>,
        nonce: u64,
        topics: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Partition, StoreError> {
        let marker = match store.get(Cf::Meta, MARKER_KEY)? {
            Some(b) => Marker::decode(&b).ok_or_else(|| StoreError::Corrupt {
                key: "meta/kafka.marker".into(),
                source: crate::store::codec::CodecError("unreadable batch marker"),
            })?,
            None => Marker::default(),
        };
        let (mut first_outbox, mut next_outbox) = (None, 0);
        store.scan(Cf::Outbox, &[], None, &mut |k, _| {
            if let Ok(b) = <[u8; 8]>::try_from(k) {
                first_outbox.get_or_insert(u64::from_be_bytes(b));
                next_outbox = u64::from_be_bytes(b) + 1;
            }
            Ok(true)
        })?;
        let outbox = Outbox::new(
            id,
            store.clone(),
            first_outbox.unwrap_or(next_outbox),
            next_outbox,
            metrics.outbox_kept_bytes.clone(),
        );
        let pending = Arc::new(Mutex::new(Pending {
            partition: id,
            marker,
            nonce,
            dead: Vec::new(),
            republish: Batch::default(),
            segments: None,
        }));
        // Each partition store gets a quarter of the record cache, as it does of the
        // block cache and memtables (`restore::open_store`).
        let settings = {
            let mut s = (*settings).clone();
            s.raw.engine.record_cache_mb /= 4;
            Arc::new(s)
        };
        let mut proc = Processor::open(settings, store.clone())?;
        let (hook_pending, hook_outbox, hook_metrics) =
            (pending.clone(), outbox.clone(), metrics.clone());
        proc.keep_customer_tiers();
        proc.report_timers_to(metrics.timers_pending.clone());
        proc.set_flush_hook(Box::new(move |batch, outputs, tiers| {
            let mut p = hook_pending.lock().unwrap();
            p.marker.seq += 1;
            p.marker.nonce = p.nonce;
            let seq = p.marker.seq;
            // First, so that the batch's own writes of those keys come after them.
            if !p.republish.is_empty() {
                let mut first = std::mem::take(&mut p.republish);
                first.append(batch);
                *batch = first;
            }
            batch.put(Cf::Meta, MARKER_KEY, p.marker.encode());
            let bytes = batch.bytes() + 32 * batch.len();
            let mut entry = EntryWriter::with_capacity(bytes + outputs.len() * 320);
            let mut stats = None;
            let mut model_stats = None;
            for (cf, k, v) in batch.iter() {
                if cf == Cf::Meta && k == META_MODEL_HISTOGRAM {
                    // For the other partitions' refits, not for the changelog.
                    model_stats = v;
                    continue;
                }
                if let Some(key) = changelog_key(cf, k) {
                    entry.push(&RecordRef {
                        dest: Dest::Changelog,
                        batch_seq: seq,
                        key: &key,
                        value: v,
                        headers: Vec::new(),
                    });
                }
                if cf == Cf::Meta && k == b"population" {
                    stats = v;
                }
            }
            hook_metrics.observe_outputs(outputs.iter());
            for o in outputs.drain(..) {
                let dest = match o.kind {
                    OutputType::TierChanged => Dest::TierChanges,
                    OutputType::ChurnWarning => Dest::ChurnWarnings,
                    OutputType::ChurnRecovered => Dest::ChurnRecovered,
                };
                entry.push_value(dest, seq, o.customer_id.as_bytes(), |b| o.write_json(b));
            }
            // After the outputs; one per customer a batch (their latest).
            let mut latest: rustc_hash::FxHashMap<&str, usize> = Default::default();
            for (i, t) in tiers.iter().enumerate() {
                latest.insert(&t.customer_id, i);
            }
            for (i, t) in tiers.iter().enumerate() {
                if latest[t.customer_id.as_str()] == i {
                    entry.push_json(Dest::CustomerTiers, seq, t.customer_id.as_bytes(), t);
                }
            }
            tiers.clear();
            for d in p.dead.drain(..) {
                entry.push(&RecordRef {
                    batch_seq: seq,
                    ..d.as_ref()
                });
            }
            if let Some(v) = stats {
                entry.push(&RecordRef {
                    dest: Dest::Stats,
                    batch_seq: seq,
                    key: p.partition.to_string().as_bytes(),
                    value: Some(v),
                    headers: Vec::new(),
                });
            }
            if let Some(v) = p.segments.take() {
                entry.push(&RecordRef {
                    dest: Dest::Stats,
                    batch_seq: seq,
                    key: format!("segments/{}", p.partition).as_bytes(),
                    value: Some(&v),
                    headers: Vec::new(),
                });
            }
            if let Some(v) = model_stats {
                entry.push(&RecordRef {
                    dest: Dest::Stats,
                    batch_seq: seq,
                    key: format!("model/{}", p.partition).as_bytes(),
                    value: Some(v),
                    headers: Vec::new(),
                });
            }
            hook_outbox.stage(entry.finish(), batch);
        }));
        Ok(Partition {
            id,
            outbox,
            store,
            proc,
            pending,
            queues: (0..topics).map(|_| VecDeque::new()).collect(),
            metrics,
            segments_counted: None,
            // Opened or restored: count it once, even before any event.
            segments_stale: true,
        })
    }

    /// The marker of the last write (offsets consumed so far).
    pub fn marker(&self) -> Marker {
        self.pending.lock().unwrap().marker.clone()
    }

    /// Next offset to consume of an input topic (`None`: from the beginning).
    pub fn next_offset(&self, topic: &str) -> Option<i64> {
        self.pending
            .lock()
            .unwrap()
            .marker
            .offsets
            .get(topic)
            .copied()
    }

    /// Queue a message unless it was consumed already (a redelivery after a seek).
    pub fn enqueue(&mut self, topic_idx: usize, topic: &str, msg: Msg) {
        let next = self.next_offset(topic).unwrap_or(0);
        let last_queued = self.queues[topic_idx].back().map(|m| m.offset);
        if msg.offset < next || last_queued.is_some_and(|o| msg.offset <= o) {
            return;
        }
        self.queues[topic_idx].push_back(msg);
    }

    /// Apply queued messages in event-time order while the order is certain:
    /// `caught_up(i)` says whether topic i has nothing more to fetch right now, or
    /// the partition has waited long enough for it. Returns how many messages were
    /// taken (applied, duplicate or dead-lettered).
    pub fn drain(
        &mut self,
        topics: &[String],
        parse: Parser<'_>,
        caught_up: &dyn Fn(usize) -> bool,
        on_event: &mut dyn FnMut(&Event, &Msg),
    ) -> Result<usize, StoreError> {
        // Parse what was queued since the last drain (at the queues' ends), and warm
        // the cache for its customers with one multi-get.
        let mut fresh: Vec<u32> = Vec::new();
        let settings = self.proc.settings();
        let check_keys = settings.raw.kafka.check_keys;
        let max_jump = (settings.clock == Clock::Event)
            .then_some(settings.raw.engine.max_event_clock_jump_days);
        for (i, q) in self.queues.iter_mut().enumerate() {
            let new = q.iter().rev().take_while(|m| m.parsed.is_none()).count();
            let old = q.len() - new;
            for m in q.range_mut(old..) {
                let parsed = parse(i, &m.raw).and_then(|e| match check_keys {
                    true => check_key(m.key.as_deref(), &e).map(|()| e),
                    false => Ok(e),
                });
                if let Ok(e) = &parsed {
                    m.handle = self.proc.handle(&e.customer_id);
                    fresh.extend(m.handle);
                }
                m.parsed = Some(parsed);
            }
        }
        self.proc.warm(fresh)?;
        let mut n = 0;
        loop {
            let mut best: Option<usize> = None;
            for (i, q) in self.queues.iter().enumerate() {
                match q.front() {
                    None if !caught_up(i) => return Ok(n),
                    None => {}
                    Some(m)
                        if best.is_none_or(|b| {
                            m.order_key() < self.queues[b].front().unwrap().order_key()
                        }) =>
                    {
                        best = Some(i)
                    }
                    Some(_) => {}
                }
            }
            let Some(i) = best else { return Ok(n) };
            let msg = self.queues[i].pop_front().unwrap();
            // The next event is one of the queues' fronts: hint their customers'
            // memory while this one is applied (`Processor::hint_far`).
            for q in &self.queues {
                if let Some(h) = q.front().and_then(|m| m.handle) {
                    self.proc.hint_near(h);
                }
                if let Some(h) = q.get(1).and_then(|m| m.handle) {
                    self.proc.hint_far(h);
                }
            }
            let topic = &topics[i];
            let parsed = msg
                .parsed
                .as_ref()
                .expect("parsed at the start of the drain");
            // The stream clock as this event finds it (merge order, as replay).
            let parsed = parsed
                .as_ref()
                .map_err(Cow::Borrowed)
                .and_then(|ev| match max_jump {
                    Some(max) => check_clock_jump(self.proc.clock(), ev, max)
                        .map(|()| ev)
                        .map_err(Cow::Owned),
                    None => Ok(ev),
                });
            match parsed {
                Ok(ev) => {
                    // The offset moves after: a write inside `process` (before a
                    // clock move) records offsets without this event, as its state;
                    // one after applying it (a full cache) makes the redelivery a
                    // duplicate, caught by event_id.
                    self.proc.process_known(ev, msg.handle)?;
                    on_event(ev, &msg);
                }
                Err(rej) => {
                    let rej = rej.into_owned();
                    self.dead_letter(topic, &msg, &rej)
                }
            }
            let offsets = &mut self.pending.lock().unwrap().marker.offsets;
            match offsets.get_mut(topic) {
                Some(o) => *o = msg.offset + 1,
                None => {
                    offsets.insert(topic.clone(), msg.offset + 1);
                }
            }
            n += 1;
        }
    }

    fn dead_letter(&mut self, topic: &str, msg: &Msg, rej: &Rejection) {
        self.metrics.rejected(&rej.reason.to_string());
        let text = String::from_utf8_lossy(&msg.raw);
        let max = self.proc.settings().raw.kafka.dead_letter_max_raw_bytes;
        let (raw, raw_truncated) = truncate(&text, max);
        let dl = DeadLetter {
            reason: rej.reason.to_string(),
            detail: &rej.detail,
            topic,
            partition: self.id,
            offset: msg.offset,
            raw,
            raw_is_utf8: matches!(text, Cow::Borrowed(_)),
            raw_truncated,
        };
        let headers = vec![
            ("strata.reason".to_string(), dl.reason.clone().into_bytes()),
            ("strata.source.topic".to_string(), topic.as_bytes().to_vec()),
            (
                "strata.source.partition".to_string(),
                self.id.to_string().into_bytes(),
            ),
            (
                "strata.source.offset".to_string(),
                msg.offset.to_string().into_bytes(),
            ),
        ];
        let value = serde_json::to_vec(&dl).expect("dead letters serialise");
        self.pending.lock().unwrap().dead.push(OutboxRecord {
            dest: Dest::DeadLetter,
            batch_seq: 0,
            key: msg.key.clone().unwrap_or_default(),
            value: Some(value),
            headers,
        });
        self.proc.mark_dirty();
    }

    /// Have the next batch publish these keys' values as the store holds them (a
    /// tombstone for a key it does not hold): they are the keys of a round left
    /// unfinished at the end of the changelog, which this writer's first marker
    /// would otherwise complete for any later restore (see [`super::changelog`]).
    pub fn republish(&mut self, mut keys: Vec<(Cf, Vec<u8>)>) -> Result<(), StoreError> {
        keys.sort();
        keys.dedup();
        let mut ops = Batch::default();
        for (cf, k) in keys {
            let v = self.store.get(cf, &k)?;
            ops.push(cf, &k, v.as_deref());
        }
        self.pending.lock().unwrap().republish.append(&ops);
        self.proc.mark_dirty();
        Ok(())
    }

    /// Write everything applied so far (state, offsets, outbox) in one batch; then
    /// the partition's segment summary if one is due ([`Self::segments_due`]).
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.proc.mark_dirty();
        self.proc.flush()?;
        self.segments_stale = true;
        if self.segments_due() {
            self.publish_segments()?;
        }
        Ok(())
    }

    /// Whether the segment summary should be counted again: the state changed since
    /// the last count and `kafka.segments_interval_ms` has passed (0: never).
    pub fn segments_due(&self) -> bool {
        let every = self.proc.settings().raw.kafka.segments_interval_ms;
        every > 0
            && self.segments_stale
            && self
                .segments_counted
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(every))
    }

    /// Count the partition's segment summary over its written state (the thresholds
    /// in force at its clock) and write it to the outbox, for the stats topic
    /// (`segments/<p>`): a batch of its own, after the state it counts.
    pub fn publish_segments(&mut self) -> Result<(), StoreError> {
        self.segments_counted = Some(std::time::Instant::now());
        self.segments_stale = false;
        let Some((as_of, tally)) =
            crate::audience::summarize_in_force(&*self.store, self.proc.settings())?
        else {
            return Ok(());
        };
        let summary = crate::audience::PartitionSummary {
            partition: self.id,
            as_of,
            counted_at_ms: crate::day::now_millis(),
            tally,
        };
        self.pending.lock().unwrap().segments =
            Some(serde_json::to_vec(&summary).expect("summaries serialise"));
        self.proc.mark_dirty();
        self.proc.flush()
    }

    /// Claim the outbox entries not sent yet ([`Outbox::claim`]): only the thread
    /// holding the partition may, so never an entry whose write is under way.
    pub fn claim_unsent(&self) -> Option<Range<u64>> {
        self.outbox.claim()
    }

    /// Whether [`Partition::drain`] would apply anything now: a message is queued and
    /// every empty queue's input is `caught_up`.
    pub fn ready(&self, caught_up: &dyn Fn(usize) -> bool) -> bool {
        self.queues.iter().any(|q| !q.is_empty())
            && self
                .queues
                .iter()
                .enumerate()
                .all(|(i, q)| !q.is_empty() || caught_up(i))
    }

    /// Messages waiting in the queues.
    pub fn queued(&self) -> usize {
        self.queues.iter().map(|q| q.len()).sum()
    }
}

/// Stored markers of a partition's local state: (last written, last published).
pub fn local_markers(store: &RocksStore) -> Result<(Option<Marker>, Option<Marker>), StoreError> {
    let get = |k: &[u8]| -> Result<Option<Marker>, StoreError> {
        Ok(store.get(Cf::Meta, k)?.and_then(|b| Marker::decode(&b)))
    };
    Ok((get(MARKER_KEY)?, get(PUBLISHED_KEY)?))
}

/// Per-partition summaries received from the stats topic: population summaries
/// (key `<p>`) and model histograms as of each partition's last refit
/// (key `model/<p>`).
#[derive(Debug, Default)]
pub struct Peers {
    pub populations: BTreeMap<i32, Population>,
    pub models: BTreeMap<i32, Histogram>,
    /// The latest model fit of this instance's partitions (see
    /// [`crate::processor::FitShare`]).
    pub fit: crate::processor::FitShare,
}

pub type PeerStats = Arc<Mutex<Peers>>;

/// The other partitions' summaries, merged (`None` when there are none).
pub fn peers_of(stats: &PeerStats, me: i32) -> Option<Population> {
    let s = stats.lock().unwrap();
    let mut merged: Option<Population> = None;
    for (p, pop) in s.populations.iter() {
        if *p != me {
            merged = Some(merged.unwrap_or_default().merged(pop));
        }
    }
    merged
}

/// The other partitions' model histograms, merged (`None` when there are none).
pub fn model_peers_of(stats: &PeerStats, me: i32) -> Option<Histogram> {
    let s = stats.lock().unwrap();
    let mut merged: Option<Histogram> = None;
    for (p, h) in s.models.iter() {
        if *p != me {
            merged.get_or_insert_with(Histogram::default).merge(h);
        }
    }
    merged
}
