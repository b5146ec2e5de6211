//! The changelog and the outbox: how a state partition's writes leave the instance.
//!
//! Every atomic state write of a partition (customers, timers, indexes, archived ids,
//! meta) ends with a **marker** — the meta record [`MARKER_KEY`] holding the batch's
//! sequence number, the writing instance's nonce and the consumed offsets. The same
//! write copies each of its records, marker last, into the `outbox` column family,
//! together with the batch's output events, dead letters and the partition's
//! population summary. Only once the broker has acknowledged all of them are they
//! deleted from the outbox. So the outbox, not memory, is what remembers unpublished
//! work, and a crash can only publish something again, never lose it.
//!
//! The changelog topic (compacted, co-partitioned with the inputs) is keyed by
//! `[column family][key]`; a tombstone deletes. A publishing round sends each key
//! once, its last value in the round, in the order of the last writes, so the
//! round's last marker comes last. Restoring a partition replays it from the start
//! and applies records only up to the last marker seen: records whose marker never
//! made it (the writer died half-way through publishing) are dropped whole, so a
//! restored state is always one the writer had at a batch boundary, with the offsets
//! that go with it.
//!
//! Such an unfinished round stays in the log, and the partition's next writer's
//! rounds follow it: their first marker would complete it for any later restore.
//! So the next writer, when it opens the partition, finds the records after the
//! changelog's last marker (the [`Restorer`]'s or the tail read's `orphans`) and
//! publishes, in its first round, each of their keys' values as it restored them
//! (a tombstone where it has none). Later offsets win in a restore and in
//! compaction, so the unfinished round is undone in the log itself; tagging records
//! by round instead would not survive compaction, which keeps a record and drops
//! the marker of its round.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::{Batch, Cf};

/// Meta key of the batch marker (written to the store and the changelog).
pub const MARKER_KEY: &[u8] = b"kafka.marker";
/// Meta key of the last marker whose batch the broker acknowledged (local only).
pub const PUBLISHED_KEY: &[u8] = b"kafka.published";

/// The end of one atomic batch of a state partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Marker {
    /// Batches of this partition, counted across instances.
    pub seq: u64,
    /// Random per process start: two instances never write the same (seq, nonce).
    pub nonce: u64,
    /// Next offset to consume, per input topic.
    pub offsets: BTreeMap<String, i64>,
}

impl Marker {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a marker serialises")
    }
    pub fn decode(b: &[u8]) -> Option<Marker> {
        serde_json::from_slice(b).ok()
    }
    pub fn same_batch(&self, other: &Marker) -> bool {
        self.seq == other.seq && self.nonce == other.nonce
    }
}

/// Where an outbox record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    TierChanges = 0,
    ChurnWarnings = 1,
    DeadLetter = 2,
    Changelog = 3,
    Stats = 4,
    /// `churn_recovered` (to the churn-warnings topic, counted apart).
    ChurnRecovered = 5,
    /// A customer's membership now (the compacted `customer_tiers` topic).
    CustomerTiers = 6,
}

impl Dest {
    /// The output type label of an output destination.
    pub fn output_type(self) -> Option<&'static str> {
        match self {
            Dest::TierChanges => Some("tier_changed"),
            Dest::ChurnWarnings => Some("churn_warning"),
            Dest::ChurnRecovered => Some("churn_recovered"),
            _ => None,
        }
    }

    fn from_u8(b: u8) -> Option<Dest> {
        Some(match b {
            0 => Dest::TierChanges,
            1 => Dest::ChurnWarnings,
            2 => Dest::DeadLetter,
            3 => Dest::Changelog,
            4 => Dest::Stats,
            5 => Dest::ChurnRecovered,
            6 => Dest::CustomerTiers,
            _ => return None,
        })
    }
}

/// One record waiting in the outbox (owned: a dead letter until its batch is
/// written, and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub dest: Dest,
    /// The batch that wrote it.
    pub batch_seq: u64,
    pub key: Vec<u8>,
    /// `None`: a tombstone (changelog deletes).
    pub value: Option<Vec<u8>>,
    /// Dead letters only: the source topic/partition/offset, as headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutboxRecord {
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            dest: self.dest,
            batch_seq: self.batch_seq,
            key: &self.key,
            value: self.value.as_deref(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect(),
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn take_bytes<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u32::from_be_bytes(take(b, 4)?.try_into().ok()?) as usize;
    take(b, n)
}

const OUTBOX_VERSION: u8 = 1;

/// An outbox record read in place from its stored entry (publishing sends straight
/// from the store's bytes: librdkafka copies them anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub dest: Dest,
    pub batch_seq: u64,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, &'a [u8])>,
}

impl<'a> RecordRef<'a> {
    pub fn decode(mut b: &'a [u8]) -> Option<RecordRef<'a>> {
        let b = &mut b;
        if take(b, 1)?[0] != OUTBOX_VERSION {
            return None;
        }
        let dest = Dest::from_u8(take(b, 1)?[0])?;
        let batch_seq = u64::from_be_bytes(take(b, 8)?.try_into().ok()?);
        let key = take_bytes(b)?;
        let value = match take(b, 1)?[0] {
            0 => None,
            _ => Some(take_bytes(b)?),
        };
        let mut headers = Vec::new();
        for _ in 0..take(b, 1)?[0] {
            let k = std::str::from_utf8(take_bytes(b)?).ok()?;
            headers.push((k, take_bytes(b)?));
        }
        Some(RecordRef {
            dest,
            batch_seq,
            key,
            value,
            headers,
        })
    }

    pub fn to_owned(&self) -> OutboxRecord {
        OutboxRecord {
            dest: self.dest,
            batch_seq: self.batch_seq,
            key: self.key.to_vec(),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        }
    }
}

const ENTRY_VERSION: u8 = 2;

/// One outbox entry per written batch: its records, length-prefixed, in one value
/// (one RocksDB key to insert and later delete per batch, not one per record),
/// encoded in place (no buffer per record).
pub struct EntryWriter {
    buf: Vec<u8>,
}

impl EntryWriter {
    pub fn with_capacity(bytes: usize) -> EntryWriter {
        let mut buf = Vec::with_capacity(bytes + 1);
        buf.push(ENTRY_VERSION);
        EntryWriter { buf }
    }

    /// Start a record (after room for its length, which [`EntryWriter::end`] fills
    /// in).
    fn begin(&mut self, dest: Dest, batch_seq: u64, key: &[u8]) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.push(OUTBOX_VERSION);
        self.buf.push(dest as u8);
        self.buf.extend_from_slice(&batch_seq.to_be_bytes());
        put_bytes(&mut self.buf, key);
        at
    }

    /// Write the length of what follows the 4 bytes at `at` into them.
    fn end(&mut self, at: usize) {
        let n = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&n.to_be_bytes());
    }

    pub fn push(&mut self, r: &RecordRef<'_>) {
        let at = self.begin(r.dest, r.batch_seq, r.key);
        match r.value {
            Some(v) => {
                self.buf.push(1);
                put_bytes(&mut self.buf, v);
            }
            None => self.buf.push(0),
        }
        self.buf.push(r.headers.len() as u8);
        for (hk, hv) in &r.headers {
            put_bytes(&mut self.buf, hk.as_bytes());
            put_bytes(&mut self.buf, hv);
        }
        self.end(at);
    }

    /// A record whose value is `value` as JSON, serialised into the entry.
    pub fn push_json<T: Serialize>(&mut self, dest: Dest, batch_seq: u64, key: &[u8], value: &T) {
        self.push_value(dest, batch_seq, key, |buf| {
            serde_json::to_writer(buf, value).expect("outputs serialise")
        })
    }

    /// A record whose value `write` appends (an output's hand-written JSON).
    pub fn push_value(
        &mut self,
        dest: Dest,
        batch_seq: u64,
        key: &[u8],
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let at = self.begin(dest, batch_seq, key);
        self.buf.push(1);
        let v = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        write(&mut self.buf);
        self.end(v);
        self.buf.push(0);
        self.end(at);
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// An entry as stored: `[ENTRY_LZ4][u32 LE length][LZ4 block]`.
const ENTRY_LZ4: u8 = 3;

/// The stored form of an outbox entry: LZ4-compressed. An entry is mostly output
/// JSON and copies of customer records (~6× the bytes of the state it goes with),
/// and every stored byte passes through RocksDB's WAL and a memtable; the publisher
/// sends from the uncompressed entry kept in memory and reads this back only after
/// a restart (or beyond the memory kept). One too large for LZ4 (2 GiB) is stored
/// as it is.
///
/// Appended to `out` (the write batch's buffer: no buffer, nor copy, of its own).
/// LZ4 writes into `out`'s spare capacity: room for the worst case (the entry's
/// size) is reserved, but only the ~1/6 it uses is ever written, so the rest's
/// pages are never faulted in (zero-filling that room first was ~2 % of `run`).
pub fn pack_into(entry: &[u8], out: &mut Vec<u8>) {
    use lz4::liblz4::{LZ4_compressBound, LZ4_compress_default};
    use std::ffi::{c_char, c_int};
    let start = out.len();
    let bound = c_int::try_from(entry.len())
        .ok()
        // SAFETY: a pure function of an integer.
        .map(|n| unsafe { LZ4_compressBound(n) })
        .filter(|&b| b > 0);
    if let Some(bound) = bound {
        out.reserve(1 + 4 + bound as usize);
        out.push(ENTRY_LZ4);
        out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        let dst = out.spare_capacity_mut();
        // SAFETY: `entry` is `entry.len()` readable bytes (< 2 GiB, checked above);
        // `dst` is at least `bound` writable bytes (reserved above); LZ4 writes at
        // most `bound` bytes there and returns how many (0 on failure), all of which
        // it initialised.
        let n = unsafe {
            LZ4_compress_default(
                entry.as_ptr() as *const c_char,
                dst.as_mut_ptr() as *mut c_char,
                entry.len() as c_int,
                bound,
            )
        };
        if n > 0 {
            // SAFETY: the n bytes after the header were written by LZ4 (above).
            unsafe { out.set_len(out.len() + n as usize) };
            return;
        }
        out.truncate(start);
    }
    out.extend_from_slice(entry);
}

/// An outbox entry as [`EntryWriter`] wrote it, from its stored form (`None`: an
/// unreadable one).
pub fn unpack(stored: &[u8]) -> Option<Cow<'_, [u8]>> {
    match stored.split_first() {
        Some((&ENTRY_LZ4, rest)) => {
            // A corrupt length must not allocate gigabytes: LZ4 expands at most 255×.
            let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            if n > rest.len().saturating_mul(255) {
                return None;
            }
            lz4::block::decompress(rest, None).ok().map(Cow::Owned)
        }
        _ => Some(Cow::Borrowed(stored)),
    }
}

/// The records of an outbox entry, in order; `None` for an unreadable one (and
/// nothing after it). A bare record (the format before entries) is an entry of one.
pub fn entry_records(b: &[u8]) -> impl Iterator<Item = Option<RecordRef<'_>>> {
    let mut dead = false;
    entry_raw(b).map_while(move |raw| {
        if dead {
            return None;
        }
        let r = raw.and_then(RecordRef::decode);
        dead = r.is_none();
        Some(r)
    })
}

/// The records of an outbox entry as their encoded bytes, in order, without
/// decoding them (stepping over a record costs reading its length); `None` for an
/// unreadable one (and nothing after it).
pub fn entry_raw(b: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    enum Next {
        Bare,
        Packed,
        Unreadable,
        Done,
    }
    let mut rest = b;
    let mut next = match b.first() {
        Some(&OUTBOX_VERSION) => Next::Bare,
        Some(&ENTRY_VERSION) => {
            rest = &b[1..];
            Next::Packed
        }
        _ => Next::Unreadable,
    };
    std::iter::from_fn(move || match next {
        Next::Bare => {
            next = Next::Done;
            Some(Some(rest))
        }
        Next::Unreadable => {
            next = Next::Done;
            Some(None)
        }
        Next::Packed if !rest.is_empty() => {
            let r = take_bytes(&mut rest);
            if r.is_none() {
                next = Next::Done;
            }
            Some(r)
        }
        _ => None,
    })
}

/// Outbox keys: a big-endian sequence number, so a scan publishes in write order.
pub fn outbox_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// Whether a column family is replicated to the changelog: the customers, the
/// dedupe archive and meta. Not the outbox (the changelog's source), nor the
/// column families where strata kept timers and indexes before it kept them in
/// memory ([`crate::derived`], rebuilt from the customer records at open).
pub fn replicated(cf: Cf) -> bool {
    cf != Cf::Outbox && !crate::processor::DERIVED.contains(&cf)
}

/// A column family's code in changelog keys: its position in `Cf::ALL`.
fn cf_code(cf: Cf) -> Option<u8> {
    Cf::ALL
        .iter()
        .position(|&c| c == cf)
        .filter(|_| replicated(cf))
        .map(|i| i as u8)
}

/// The changelog key of a store record.
pub fn changelog_key(cf: Cf, key: &[u8]) -> Option<Vec<u8>> {
    let code = cf_code(cf)?;
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(code);
    k.extend_from_slice(key);
    Some(k)
}

/// The store record of a changelog key.
pub fn parse_changelog_key(k: &[u8]) -> Option<(Cf, &[u8])> {
    let (&code, rest) = k.split_first()?;
    let cf = *Cf::ALL.get(code as usize)?;
    // Older changelogs also carry timers and indexes: the processor's open rebuilds
    // those from the customer records.
    replicated(cf).then_some((cf, rest))
}

pub fn is_marker(cf: Cf, key: &[u8]) -> bool {
    cf == Cf::Meta && key == MARKER_KEY
}

/// Rebuilds a partition from changelog records, applying only whole batches.
#[derive(Default)]
pub struct Restorer {
    pending: Batch,
    ready: Batch,
    pub last_marker: Option<Marker>,
    pub records: u64,
    /// After [`Restorer::finish`]: the keys of the records after the last marker,
    /// which were not applied (see the module docs).
    pub orphans: Vec<(Cf, Vec<u8>)>,
}

impl Restorer {
    /// Feed one changelog record; returns a batch to write when enough whole batches
    /// have accumulated.
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) -> Option<Batch> {
        self.records += 1;
        let (cf, k) = parse_changelog_key(key)?;
        self.pending.push(cf, k, value);
        if is_marker(cf, k) {
            if let Some(m) = value.and_then(Marker::decode) {
                self.last_marker = Some(m);
            }
            let p = std::mem::take(&mut self.pending);
            self.ready.append(&p);
            if self.ready.len() >= 20_000 {
                return Some(std::mem::take(&mut self.ready));
            }
        }
        None
    }

    /// The whole batches not yet returned. Records after the last marker (a batch
    /// that was never completely published) are dropped; their keys are `orphans`.
    pub fn finish(&mut self) -> Batch {
        self.orphans = std::mem::take(&mut self.pending)
            .iter()
            .map(|(cf, k, _)| (cf, k.to_vec()))
            .collect();
        std::mem::take(&mut self.ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_records_round_trip() {
        let r = OutboxRecord {
            dest: Dest::DeadLetter,
            batch_seq: 7,
            key: b"c1".to_vec(),
            value: Some(b"{\"x\":1}".to_vec()),
            headers: vec![("strata.source.offset".into(), b"42".to_vec())],
        };
        let t = OutboxRecord {
            dest: Dest::Changelog,
            batch_seq: 1,
            key: vec![0, 1, 2],
            value: None,
            headers: vec![],
        };
        let mut w = EntryWriter::with_capacity(0);
        w.push(&r.as_ref());
        w.push(&t.as_ref());
        #[derive(Serialize)]
        struct Out {
            id: &'static str,
        }
        w.push_json(Dest::TierChanges, 9, b"c2", &Out { id: "c2" });
        let entry = w.finish();
        let j = OutboxRecord {
            dest: Dest::TierChanges,
            batch_seq: 9,
            key: b"c2".to_vec(),
            value: Some(br#"{"id":"c2"}"#.to_vec()),
            headers: vec![],
        };
        let owned = |e: &[u8]| -> Option<Vec<OutboxRecord>> {
            entry_records(e).map(|r| r.map(|r| r.to_owned())).collect()
        };
        assert_eq!(owned(&entry), Some(vec![r.clone(), t.clone(), j]));
        // A bare record (the format before entries): an entry of one.
        let bare = &entry[5..5 + u32::from_be_bytes(entry[1..5].try_into().unwrap()) as usize];
        assert_eq!(owned(bare), Some(vec![r]), "a bare record");
        assert_eq!(owned(&entry[..entry.len() - 1]), None, "truncated");
        assert_eq!(
            entry_records(&entry[..entry.len() - 1]).count(),
            3,
            "two records, then the unreadable one, then nothing"
        );
        assert_eq!(owned(&[7]), None);
        assert_eq!(owned(&[9, 9]), None);
        assert_eq!(owned(&[ENTRY_VERSION]), Some(vec![]));

        // Stored compressed, read back whole; the uncompressed form still reads.
        let pack = |e: &[u8]| {
            let mut out = Vec::new();
            pack_into(e, &mut out);
            out
        };
        let stored = pack(&entry);
        assert!(stored.len() < entry.len() && stored[0] == ENTRY_LZ4);
        // LZ4's block format with the length first (what builds before wrote),
        // appended after what the buffer holds.
        let block = lz4::block::compress(&entry, None, true).unwrap();
        assert_eq!(stored[1..], block[..]);
        let mut after = b"key".to_vec();
        pack_into(&entry, &mut after);
        assert_eq!((&after[..3], &after[3..]), (&b"key"[..], &stored[..]));
        assert_eq!(unpack(&stored).as_deref(), Some(&entry[..]));
        assert_eq!(unpack(&entry).as_deref(), Some(&entry[..]));
        let big: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        assert_eq!(unpack(&pack(&big)).as_deref(), Some(&big[..]));
        // Damaged: truncated, or a length LZ4 could not have produced.
        assert_eq!(unpack(&stored[..stored.len() - 1]), None);
        assert_eq!(unpack(&[ENTRY_LZ4, 1]), None);
        let mut huge = stored.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(unpack(&huge), None);
    }

    #[test]
    fn changelog_keys_name_their_column_family_and_skip_the_outbox_and_derived() {
        for cf in Cf::ALL {
            match changelog_key(cf, b"k") {
                Some(k) => assert_eq!(parse_changelog_key(&k), Some((cf, &b"k"[..]))),
                None => assert!(
                    !matches!(cf, Cf::Customers | Cf::Dedupe | Cf::Meta),
                    "{cf:?} is not replicated"
                ),
            }
        }
        // A timer record of an older changelog is skipped, not misread.
        let old = [
            Cf::ALL.iter().position(|&c| c == Cf::Timers).unwrap() as u8,
            1,
            2,
        ];
        assert_eq!(parse_changelog_key(&old), None);
    }

    #[test]
    fn restore_applies_whole_batches_only() {
        let marker = |seq| Marker {
            seq,
            nonce: 1,
            offsets: BTreeMap::new(),
        };
        let mut r = Restorer::default();
        let ck = |k: &[u8]| changelog_key(Cf::Customers, k).unwrap();
        let mk = changelog_key(Cf::Meta, MARKER_KEY).unwrap();
        assert!(r.push(&ck(b"a"), Some(b"1")).is_none());
        assert!(r.push(&ck(b"b"), None).is_none());
        assert!(r.push(&mk, Some(&marker(1).encode())).is_none());
        // A second batch that never got its marker.
        assert!(r.push(&ck(b"c"), Some(b"3")).is_none());
        let b = r.finish();
        assert_eq!(b.len(), 3);
        let ops: Vec<_> = b.iter().collect();
        assert_eq!(ops[0], (Cf::Customers, &b"a"[..], Some(&b"1"[..])));
        assert_eq!(ops[1], (Cf::Customers, &b"b"[..], None));
        assert_eq!(r.last_marker, Some(marker(1)));
        assert_eq!(r.records, 4);
        assert_eq!(r.orphans, vec![(Cf::Customers, b"c".to_vec())]);
    }
}
