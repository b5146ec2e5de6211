//! One state partition on this instance: partition p of every input topic feeds one
//! RocksDB (`<state_dir>/partitions/<p>`) and one [`Processor`], so a partition is
//! restored, dropped or handed over on its own.
//!
//! Messages wait in one queue per input topic and are applied in event-time order
//! across the three (Kafka Streams' stream-time rule): the next event is the earliest
//! head of the queues, and the partition waits while a queue is empty but its topic
//! partition has more to fetch. So a partition's order is a function of its input
//! topics alone, whatever the fetch interleaving — the same order `strata replay` sees
//! when given the merged partition (what the end-to-end tests compare).
//!
//! The processor's [`FlushHook`](crate::processor::FlushHook) adds to every state
//! write the batch marker (consumed offsets), and copies of the write, the outputs,
//! the dead letters and the population summary into the outbox (see [`changelog`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Settings;
use crate::event::{Event, Rejection};
use crate::output::OutputType;
use crate::population::Population;
use crate::processor::Processor;
use crate::store::rocks::RocksStore;
use crate::store::{Batch, Cf, Store, StoreError};
use crate::telemetry::Metrics;

use super::changelog::{
    changelog_key, entry_records, outbox_key, pack, unpack, Dest, EntryWriter, Marker,
    OutboxRecord, RecordRef, MARKER_KEY, PUBLISHED_KEY,
};

/// One consumed message; parsed by the thread that drains it (a worker), not by
/// the loop that polls it.
pub struct Msg {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub raw: Vec<u8>,
    /// `None` until the first drain after it was queued.
    parsed: Option<Result<Event, Rejection>>,
}

/// Parses input `i`'s message bytes (and counts them).
pub type Parser<'a> = &'a dyn Fn(usize, &[u8]) -> Result<Event, Rejection>;

impl Msg {
    pub fn new(offset: i64, key: Option<Vec<u8>>, raw: Vec<u8>) -> Msg {
        Msg {
            offset,
            key,
            raw,
            parsed: None,
        }
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
    next_outbox: u64,
    /// Writes of values the store already holds, for the next batch's changelog
    /// copies: keys an unfinished round left on the changelog (see
    /// [`Partition::republish`]).
    republish: Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>,
}

/// Dead-letter record (SPEC §2): the reason, the source, and the original bytes.
#[derive(serde::Serialize)]
struct DeadLetter<'a> {
    reason: String,
    detail: &'a str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    /// The original message, as text when it is UTF-8.
    raw: String,
    /// Base64 would hide the reason a message is bad; bytes that are not UTF-8 are
    /// given as a lossy string here and exactly in the Kafka record's value below.
    raw_is_utf8: bool,
}

pub struct Partition {
    pub id: i32,
    pub store: Arc<RocksStore>,
    pub proc: Processor<Arc<RocksStore>>,
    pending: Arc<Mutex<Pending>>,
    /// One queue per input topic, in [`super::Inputs`] order.
    pub queues: Vec<VecDeque<Msg>>,
    /// What was sent and published of the outbox (shared with the publisher).
    pub outbox: Outbox,
}

/// A partition's outbox as the publisher sees it: confirming and re-sending work
/// while the partition itself is being applied on a worker thread.
#[derive(Clone)]
pub struct Outbox {
    partition: i32,
    store: Arc<RocksStore>,
    /// Outbox keys below this were published and deleted: claims start here.
    floor: Arc<AtomicU64>,
    /// Outbox keys below this were sent (perhaps not yet acknowledged): the next
    /// round sends from here. Back to the floor after a failed delivery.
    sent: Arc<AtomicU64>,
    /// The entries this process wrote and has not published yet, kept in memory
    /// (up to [`KEPT_BYTES`]) so the publisher need not read back from RocksDB what
    /// was just written (large entries rarely outlive a memtable).
    kept: Arc<Mutex<Kept>>,
}

/// Memory for unpublished outbox entries, per partition; beyond it (a long broker
/// outage) entries are read back from the store.
const KEPT_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Kept {
    entries: BTreeMap<u64, Arc<Vec<u8>>>,
    bytes: usize,
}

impl Kept {
    fn keep(&mut self, seq: u64, entry: Vec<u8>) {
        if self.bytes + entry.len() <= KEPT_BYTES {
            self.bytes += entry.len();
            self.entries.insert(seq, Arc::new(entry));
        }
    }

    fn forget(&mut self, seq: u64) {
        if let Some(e) = self.entries.remove(&seq) {
            self.bytes -= e.len();
        }
    }
}

impl Outbox {
    /// The state partition whose outbox this is.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The partition's store.
    pub fn store(&self) -> &RocksStore {
        &self.store
    }

    /// Visit the records of the outbox entries in `range` in write order, each
    /// with its entry's sequence number, read in place; `f` returns false to stop.
    pub fn visit(
        &self,
        range: &Range<u64>,
        f: &mut dyn FnMut(u64, &RecordRef<'_>) -> bool,
    ) -> Result<(), StoreError> {
        for seq in range.clone() {
            let unreadable = || {
                StoreError::Backend(format!(
                    "partition {}: an outbox entry is unreadable (delete the partition's state dir to restore it from the changelog)",
                    self.partition
                ))
            };
            let kept = self.kept.lock().unwrap().entries.get(&seq).cloned();
            let stored = match kept {
                Some(_) => None,
                None => self.store.get(Cf::Outbox, &outbox_key(seq))?,
            };
            let entry = match (&kept, &stored) {
                (Some(k), _) => Cow::Borrowed(&k[..]),
                (None, Some(s)) => unpack(s).ok_or_else(unreadable)?,
                (None, None) => continue,
            };
            for r in entry_records(&entry) {
                let r = r.ok_or_else(unreadable)?;
                if !f(seq, &r) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A delivery failed: send every entry not yet published again.
    pub fn resend(&self) {
        self.sent
            .store(self.floor.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The broker acknowledged these outbox entries' records: delete them, and
    /// remember `last`, the marker of the last of them, as the last batch known to
    /// be published.
    pub fn published(&self, seqs: &[u64], last: &Marker) -> Result<(), StoreError> {
        let mut b = Batch::default();
        for &seq in seqs {
            b.delete(Cf::Outbox, outbox_key(seq));
        }
        b.put(Cf::Meta, PUBLISHED_KEY.to_vec(), last.encode());
        self.store.write(b)?;
        let mut kept = self.kept.lock().unwrap();
        seqs.iter().for_each(|&seq| kept.forget(seq));
        if let Some(last) = seqs.iter().max() {
            self.floor.fetch_max(last + 1, Ordering::Relaxed);
        }
        Ok(())
    }
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
            Some(b) => Marker::decode(&b).ok_or_else(|| StoreError::Backend(format!(
                "partition {id}: the stored batch marker is unreadable (delete the partition's state dir to restore it from the changelog)"
            )))?,
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
        let pending = Arc::new(Mutex::new(Pending {
            partition: id,
            marker,
            nonce,
            dead: Vec::new(),
            next_outbox,
            republish: Vec::new(),
        }));
        let mut proc = Processor::open(settings, store.clone())?;
        let hook_pending = pending.clone();
        let kept = Arc::new(Mutex::new(Kept::default()));
        let hook_kept = kept.clone();
        proc.set_flush_hook(Box::new(move |batch, outputs| {
            let mut p = hook_pending.lock().unwrap();
            p.marker.seq += 1;
            p.marker.nonce = p.nonce;
            let seq = p.marker.seq;
            // First, so that the batch's own writes of those keys come after them.
            let republish = std::mem::take(&mut p.republish);
            batch.ops.splice(0..0, republish);
            batch.put(Cf::Meta, MARKER_KEY.to_vec(), p.marker.encode());
            let bytes: usize = batch
                .ops
                .iter()
                .map(|(_, k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 32)
                .sum();
            let mut entry = EntryWriter::with_capacity(bytes + outputs.len() * 320);
            let mut stats = None;
            for (cf, k, v) in &batch.ops {
                if let Some(key) = changelog_key(*cf, k) {
                    entry.push(&RecordRef {
                        dest: Dest::Changelog,
                        batch_seq: seq,
                        key: &key,
                        value: v.as_deref(),
                        headers: Vec::new(),
                    });
                }
                if *cf == Cf::Meta && k == b"population" {
                    stats = v.as_deref();
                }
            }
            metrics.observe_outputs(outputs.iter());
            for o in outputs.drain(..) {
                let dest = match o.kind {
                    OutputType::TierChanged => Dest::TierChanges,
                    OutputType::ChurnWarning => Dest::ChurnWarnings,
                    OutputType::ChurnRecovered => Dest::ChurnRecovered,
                };
                entry.push_json(dest, seq, o.customer_id.as_bytes(), &o);
            }
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
            let (seq, entry) = (p.next_outbox, entry.finish());
            p.next_outbox += 1;
            batch.put(Cf::Outbox, outbox_key(seq), pack(&entry));
            hook_kept.lock().unwrap().keep(seq, entry);
        }));
        let first = first_outbox.unwrap_or(next_outbox);
        Ok(Partition {
            id,
            outbox: Outbox {
                partition: id,
                store: store.clone(),
                floor: Arc::new(first.into()),
                sent: Arc::new(first.into()),
                kept,
            },
            store,
            proc,
            pending,
            queues: (0..topics).map(|_| VecDeque::new()).collect(),
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
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<usize, StoreError> {
        // Parse what was queued since the last drain (at the queues' ends), and warm
        // the cache for its customers with one multi-get.
        let mut fresh = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            let new = q.iter().rev().take_while(|m| m.parsed.is_none()).count();
            let old = q.len() - new;
            for m in q.range_mut(old..) {
                let parsed = parse(i, &m.raw);
                if let Ok(e) = &parsed {
                    fresh.push(e.customer_id.clone());
                }
                m.parsed = Some(parsed);
            }
        }
        self.proc.prefetch(fresh.iter().map(|s| s.as_str()))?;
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
            let topic = &topics[i];
            match msg
                .parsed
                .as_ref()
                .expect("parsed at the start of the drain")
            {
                Ok(ev) => {
                    // The offset moves after: a write inside `process` (before a
                    // clock move) records offsets without this event, as its state;
                    // one after applying it (a full cache) makes the redelivery a
                    // duplicate, caught by event_id.
                    self.proc.process(ev)?;
                    on_event(ev);
                }
                Err(rej) => self.dead_letter(topic, &msg, rej),
            }
            self.pending
                .lock()
                .unwrap()
                .marker
                .offsets
                .insert(topic.clone(), msg.offset + 1);
            n += 1;
        }
    }

    fn dead_letter(&mut self, topic: &str, msg: &Msg, rej: &Rejection) {
        let text = std::str::from_utf8(&msg.raw);
        let dl = DeadLetter {
            reason: rej.reason.to_string(),
            detail: &rej.detail,
            topic,
            partition: self.id,
            offset: msg.offset,
            raw: String::from_utf8_lossy(&msg.raw).into_owned(),
            raw_is_utf8: text.is_ok(),
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
        let mut ops = Vec::with_capacity(keys.len());
        for (cf, k) in keys {
            let v = self.store.get(cf, &k)?;
            ops.push((cf, k, v));
        }
        self.pending.lock().unwrap().republish.extend(ops);
        self.proc.mark_dirty();
        Ok(())
    }

    /// Write everything applied so far (state, offsets, outbox) in one batch.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.proc.mark_dirty();
        self.proc.flush()
    }

    /// Claim the outbox entries not sent yet: they count as sent from now on (see
    /// [`Outbox::resend`]). `None` when there are none.
    pub fn claim_unsent(&self) -> Option<Range<u64>> {
        // [sent, next): exactly the keys not yet sent (after a restart, old
        // tombstones above `next` are out of range too; those below the floor, which
        // `sent` never is below, were published and deleted).
        let sent = self.outbox.sent.load(Ordering::Relaxed);
        let from = sent.max(self.outbox.floor.load(Ordering::Relaxed));
        let next = self.pending.lock().unwrap().next_outbox;
        self.outbox.sent.store(next, Ordering::Relaxed);
        (from < next).then_some(from..next)
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

/// Per-partition summaries received from the stats topic.
pub type PeerStats = Arc<Mutex<BTreeMap<i32, Population>>>;

/// The other partitions' summaries, merged (`None` when there are none).
pub fn peers_of(stats: &PeerStats, me: i32) -> Option<Population> {
    let s = stats.lock().unwrap();
    let mut merged: Option<Population> = None;
    for (p, pop) in s.iter() {
        if *p != me {
            merged = Some(merged.unwrap_or_default().merged(pop));
        }
    }
    merged
}
