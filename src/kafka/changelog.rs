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
//! `[column family][key]`; a tombstone deletes. Restoring a partition replays it
//! from the start and applies records only up to the last marker seen: a batch whose
//! marker never made it (the writer died half-way through publishing) is dropped
//! whole, so a restored state is always one the writer had at a batch boundary, with
//! the offsets that go with it.

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
            _ => return None,
        })
    }
}

/// One record waiting in the outbox.
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

impl OutboxRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(32 + self.key.len() + self.value.as_ref().map_or(0, |v| v.len()));
        out.push(OUTBOX_VERSION);
        out.push(self.dest as u8);
        out.extend_from_slice(&self.batch_seq.to_be_bytes());
        put_bytes(&mut out, &self.key);
        match &self.value {
            Some(v) => {
                out.push(1);
                put_bytes(&mut out, v);
            }
            None => out.push(0),
        }
        out.push(self.headers.len() as u8);
        for (k, v) in &self.headers {
            put_bytes(&mut out, k.as_bytes());
            put_bytes(&mut out, v);
        }
        out
    }

    pub fn decode(mut b: &[u8]) -> Option<OutboxRecord> {
        let b = &mut b;
        if take(b, 1)?[0] != OUTBOX_VERSION {
            return None;
        }
        let dest = Dest::from_u8(take(b, 1)?[0])?;
        let batch_seq = u64::from_be_bytes(take(b, 8)?.try_into().ok()?);
        let key = take_bytes(b)?.to_vec();
        let value = match take(b, 1)?[0] {
            0 => None,
            _ => Some(take_bytes(b)?.to_vec()),
        };
        let mut headers = Vec::new();
        for _ in 0..take(b, 1)?[0] {
            let k = String::from_utf8(take_bytes(b)?.to_vec()).ok()?;
            headers.push((k, take_bytes(b)?.to_vec()));
        }
        Some(OutboxRecord {
            dest,
            batch_seq,
            key,
            value,
            headers,
        })
    }
}

const ENTRY_VERSION: u8 = 2;

/// One outbox entry per written batch: its records, length-prefixed, in one value
/// (one RocksDB key to insert and later delete per batch, not one per record).
pub fn encode_entry(recs: &[OutboxRecord]) -> Vec<u8> {
    let mut out = vec![ENTRY_VERSION];
    for r in recs {
        put_bytes(&mut out, &r.encode());
    }
    out
}

/// The records of an outbox entry; also reads an entry of one bare record, as
/// written before entries held a whole batch.
pub fn decode_entry(b: &[u8]) -> Option<Vec<OutboxRecord>> {
    match *b.first()? {
        OUTBOX_VERSION => Some(vec![OutboxRecord::decode(b)?]),
        ENTRY_VERSION => {
            let mut rest = &b[1..];
            let mut recs = Vec::new();
            while !rest.is_empty() {
                recs.push(OutboxRecord::decode(take_bytes(&mut rest)?)?);
            }
            Some(recs)
        }
        _ => None,
    }
}

/// Outbox keys: a big-endian sequence number, so a scan publishes in write order.
pub fn outbox_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// Whether a column family is replicated to the changelog: the customers, the
/// dedupe archive and meta. Not the outbox (the changelog's source), nor the timers
/// and indexes: they mirror fields of each customer record and a restore rebuilds
/// them ([`crate::processor::rebuild_derived`]): ~77 % fewer records to produce.
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
    // Older changelogs also carry timers and indexes: a restore rebuilds those.
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
}

impl Restorer {
    /// Feed one changelog record; returns a batch to write when enough whole batches
    /// have accumulated.
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) -> Option<Batch> {
        self.records += 1;
        let (cf, k) = parse_changelog_key(key)?;
        match value {
            Some(v) => self.pending.put(cf, k.to_vec(), v.to_vec()),
            None => self.pending.delete(cf, k.to_vec()),
        }
        if is_marker(cf, k) {
            if let Some(m) = value.and_then(Marker::decode) {
                self.last_marker = Some(m);
            }
            let p = std::mem::take(&mut self.pending);
            self.ready.ops.extend(p.ops);
            if self.ready.len() >= 20_000 {
                return Some(std::mem::take(&mut self.ready));
            }
        }
        None
    }

    /// The whole batches not yet returned. Records after the last marker (a batch
    /// that was never completely published) are dropped.
    pub fn finish(&mut self) -> Batch {
        self.pending = Batch::default();
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
        assert_eq!(OutboxRecord::decode(&r.encode()), Some(r.clone()));
        let t = OutboxRecord {
            dest: Dest::Changelog,
            batch_seq: 1,
            key: vec![0, 1, 2],
            value: None,
            headers: vec![],
        };
        assert_eq!(OutboxRecord::decode(&t.encode()), Some(t.clone()));
        assert_eq!(OutboxRecord::decode(&[9, 9]), None);
        let entry = encode_entry(&[r.clone(), t.clone()]);
        assert_eq!(decode_entry(&entry), Some(vec![r.clone(), t]));
        assert_eq!(decode_entry(&r.encode()), Some(vec![r]), "a bare record");
        assert_eq!(decode_entry(&entry[..entry.len() - 1]), None, "truncated");
        assert_eq!(decode_entry(&[7]), None);
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
        assert_eq!(
            b.ops[0],
            (Cf::Customers, b"a".to_vec(), Some(b"1".to_vec()))
        );
        assert_eq!(b.ops[1], (Cf::Customers, b"b".to_vec(), None));
        assert_eq!(r.last_marker, Some(marker(1)));
        assert_eq!(r.records, 4);
    }
}
